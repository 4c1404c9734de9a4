//! A service's output: its pipe read line by line into a ring, a rotated log file and,
//! optionally, our stderr.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use super::{Policy, SuperviseError};

/// Longest line kept, in bytes; the rest of a longer line is dropped.
pub(super) const MAX_LINE: usize = 8 * 1024;
/// Appended to a line that was cut.
pub(super) const CUT: &str = " [line cut]";

/// Where one service's lines go. Shared by every run (and by processes of an earlier run that
/// still write to their pipe).
pub(super) struct Output {
    name: String,
    echo: bool,
    ring_lines: usize,
    ring: Mutex<VecDeque<String>>,
    file: Option<Mutex<LogFile>>,
}

impl Output {
    pub fn open(name: &str, policy: &Policy) -> Result<Output, SuperviseError> {
        let file = match &policy.log_dir {
            None => None,
            Some(dir) => {
                let path = dir.join(format!("{name}.log"));
                let error = |e: std::io::Error| SuperviseError::LogFile {
                    service: name.to_string(),
                    path: path.clone(),
                    reason: e.to_string(),
                };
                std::fs::create_dir_all(dir).map_err(error)?;
                let file = append(&path).map_err(error)?;
                let size = file.metadata().map_err(error)?.len();
                Some(Mutex::new(LogFile { path, file, size, max: policy.log_max_bytes, failing: false }))
            }
        };
        Ok(Output {
            name: name.to_string(),
            echo: policy.echo,
            ring_lines: policy.ring_lines,
            ring: Mutex::new(VecDeque::with_capacity(policy.ring_lines.min(1024))),
            file,
        })
    }

    pub fn recent(&self) -> Vec<String> {
        lock(&self.ring).iter().cloned().collect()
    }

    fn line(&self, line: String) {
        if let Some(file) = &self.file {
            lock(file).write(&self.name, &line);
        }
        if self.echo {
            let _ = writeln!(std::io::stderr().lock(), "{}| {line}", self.name);
        }
        if self.ring_lines > 0 {
            let mut ring = lock(&self.ring);
            if ring.len() == self.ring_lines {
                ring.pop_front();
            }
            ring.push_back(line);
        }
    }
}

/// Reads `pipe` to its end, line by line, into `output`; calls `on_match` once, after the
/// first line containing its text has been kept.
pub(super) async fn forward(
    mut pipe: pipe::Receiver,
    output: Arc<Output>,
    mut on_match: Option<(String, Box<dyn FnOnce() + Send>)>,
) {
    let mut lines = Lines::default();
    let mut buf = vec![0; 8192];
    let mut handle = |line: String| {
        let matched = on_match.as_ref().is_some_and(|(text, _)| line.contains(text.as_str()));
        output.line(line);
        if matched {
            if let Some((_, notify)) = on_match.take() {
                notify();
            }
        }
    };
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => lines.push(&buf[..n], &mut handle),
            Err(e) => {
                tracing::warn!(service = %output.name, error = %e, "reading output failed");
                break;
            }
        }
    }
    lines.finish(&mut handle);
}

/// Splits bytes into lines of at most [`MAX_LINE`] bytes (longer ones are cut and marked),
/// without the line end (`\n` or `\r\n`).
#[derive(Default)]
pub(super) struct Lines {
    partial: Vec<u8>,
    /// The current line was cut: drop bytes up to its end.
    cut: bool,
}

impl Lines {
    pub fn push(&mut self, mut data: &[u8], emit: &mut impl FnMut(String)) {
        while !data.is_empty() {
            let end = data.iter().position(|&b| b == b'\n');
            let take = end.unwrap_or(data.len());
            if !self.cut {
                let room = MAX_LINE - self.partial.len();
                self.partial.extend_from_slice(&data[..take.min(room)]);
                if take > room {
                    emit(text(&std::mem::take(&mut self.partial), true));
                    self.cut = true;
                }
            }
            match end {
                Some(end) => {
                    if !std::mem::replace(&mut self.cut, false) {
                        emit(text(&std::mem::take(&mut self.partial), false));
                    }
                    data = &data[end + 1..];
                }
                None => data = &[],
            }
        }
    }

    /// The last line, if the output did not end with a line end.
    pub fn finish(&mut self, emit: &mut impl FnMut(String)) {
        if !self.partial.is_empty() && !self.cut {
            emit(text(&std::mem::take(&mut self.partial), false));
        }
    }
}

fn text(bytes: &[u8], cut: bool) -> String {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let mut line = String::from_utf8_lossy(bytes).into_owned();
    if cut {
        line.push_str(CUT);
    }
    line
}

struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
    max: u64,
    /// A write failed and was reported; report again only after one succeeds.
    failing: bool,
}

impl LogFile {
    fn write(&mut self, service: &str, line: &str) {
        let len = line.len() as u64 + 1;
        let result = self.rotate_for(len).and_then(|()| {
            self.file.write_all(format!("{line}\n").as_bytes())?;
            self.size += len;
            Ok(())
        });
        match result {
            Ok(()) => self.failing = false,
            Err(e) if !self.failing => {
                self.failing = true;
                tracing::warn!(service, path = %self.path.display(), error = %e, "writing the log file failed");
            }
            Err(_) => {}
        }
    }

    /// Moves the file to `<name>.log.1` (replacing it) when `len` more bytes would pass the
    /// limit; a line longer than the limit alone still goes into a fresh file.
    fn rotate_for(&mut self, len: u64) -> std::io::Result<()> {
        if self.size == 0 || self.size + len <= self.max {
            return Ok(());
        }
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, &old)?;
        self.file = append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn append(path: &std::path::Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// A poisoned lock only means a writer panicked mid-line: the data is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        for chunk in chunks {
            lines.push(chunk, &mut |l| out.push(l));
        }
        lines.finish(&mut |l| out.push(l));
        out
    }

    #[test]
    fn lines_across_chunks_and_line_ends() {
        assert_eq!(split(&[b"a\nb", b"c\r\n\nd"]), ["a", "bc", "", "d"]);
        assert_eq!(split(&[b"x\n"]), ["x"]);
        assert!(split(&[b""]).is_empty());
    }

    #[test]
    fn long_lines_are_cut_once_and_the_next_line_is_whole() {
        let long = vec![b'y'; MAX_LINE * 3];
        let out = split(&[b"start\n", &long[..MAX_LINE - 1], &long[MAX_LINE..], b"\nnext\n"]);
        assert_eq!(out.len(), 3, "{:?}", out.iter().map(String::len).collect::<Vec<_>>());
        assert_eq!(out[1], format!("{}{CUT}", "y".repeat(MAX_LINE)));
        assert_eq!(out[2], "next");
        // Exactly MAX_LINE bytes is not cut.
        let exact = vec![b'z'; MAX_LINE];
        assert_eq!(split(&[&exact, b"\n"]), [String::from_utf8(exact).unwrap()]);
    }
}
