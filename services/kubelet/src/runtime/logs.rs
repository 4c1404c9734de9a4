//! Container logs: stdout and stderr arrive on pipes and are written, line by line, to one
//! file per container run in the CRI format (`<RFC 3339 time> <stream> <F|P> <text>`). A file
//! that grows past its bound is rotated once (`<file>.1`), so a run keeps at most two
//! bounds' worth.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// Longest line written as one record; longer ones are split into partial (`P`) records.
const MAX_LINE: usize = 16 << 10;

/// One log file with rotation.
pub struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
    max: u64,
}

impl LogFile {
    pub fn create(path: &Path, max: u64) -> std::io::Result<LogFile> {
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogFile { path: path.to_path_buf(), file, size, max: max.max(4096) })
    }

    /// Append one record.
    pub fn record(&mut self, stream: &str, partial: bool, text: &[u8]) -> std::io::Result<()> {
        let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let mut line = Vec::with_capacity(text.len() + 48);
        line.extend_from_slice(ts.as_bytes());
        line.push(b' ');
        line.extend_from_slice(stream.as_bytes());
        line.extend_from_slice(if partial { b" P " } else { b" F " });
        line.extend_from_slice(text);
        line.push(b'\n');
        if self.size + line.len() as u64 > self.max {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        std::fs::rename(&self.path, rotated(&self.path))?;
        self.file = OpenOptions::new().create(true).append(true).truncate(false).open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn rotated(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// Splits a stream's bytes into log records: whole lines, and parts of lines longer than
/// [`MAX_LINE`] as partial records.
#[derive(Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Add bytes; `record(partial, text)` for every record they complete.
    pub fn push(&mut self, bytes: &[u8], mut record: impl FnMut(bool, &[u8])) {
        self.pending.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(i) = self.pending[start..].iter().position(|b| *b == b'\n') {
            record(false, &self.pending[start..start + i]);
            start += i + 1;
        }
        while self.pending.len() - start >= MAX_LINE {
            record(true, &self.pending[start..start + MAX_LINE]);
            start += MAX_LINE;
        }
        self.pending.drain(..start);
    }

    /// The stream ended: what is left is a last (unterminated) line.
    pub fn finish(&mut self, mut record: impl FnMut(bool, &[u8])) {
        if !self.pending.is_empty() {
            record(false, &self.pending);
            self.pending.clear();
        }
    }
}

/// One parsed record.
#[derive(Debug, PartialEq, Eq)]
pub struct Record {
    pub time: String,
    pub stream: String,
    pub partial: bool,
    pub text: String,
}

/// Parse one CRI log line. Pure.
pub fn parse_line(line: &str) -> Option<Record> {
    let mut it = line.splitn(4, ' ');
    let time = it.next()?.to_string();
    let stream = it.next()?.to_string();
    let tag = it.next()?;
    let text = it.next().unwrap_or("").to_string();
    Some(Record { time, stream, partial: tag == "P", text })
}

/// The text of a run's log (rotated part first), optionally only the last `tail` lines,
/// with timestamps if asked. At most `limit` bytes (the newest).
pub fn read(path: &Path, tail: Option<usize>, timestamps: bool, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut lines: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut current = String::new();
    for p in [rotated(path), path.to_path_buf()] {
        let Ok(f) = File::open(&p) else { continue };
        for line in BufReader::new(f).lines() {
            let Some(r) = parse_line(&line?) else { continue };
            if current.is_empty() && timestamps {
                current.push_str(&r.time);
                current.push(' ');
            }
            current.push_str(&r.text);
            if !r.partial {
                current.push('\n');
                lines.push_back(std::mem::take(&mut current));
                if tail.is_some_and(|t| lines.len() > t) {
                    lines.pop_front();
                }
            }
        }
    }
    let mut out: Vec<u8> = lines.into_iter().flat_map(String::into_bytes).collect();
    if out.len() > limit {
        out.drain(..out.len() - limit);
    }
    Ok(out)
}

/// Bytes of a run's current log file from `offset` (for following).
pub fn read_from(path: &Path, offset: u64) -> std::io::Result<(Vec<u8>, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let start = if offset > len { 0 } else { offset };
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.take(1 << 20).read_to_end(&mut buf)?;
    // Only whole lines.
    let end = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    buf.truncate(end);
    Ok((buf.clone(), start + end as u64))
}

/// Turn raw CRI lines into text. Pure.
pub fn texts(raw: &[u8], timestamps: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for line in String::from_utf8_lossy(raw).lines() {
        if let Some(r) = parse_line(line) {
            if timestamps {
                out.extend_from_slice(r.time.as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(r.text.as_bytes());
            if !r.partial {
                out.push(b'\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_rotate_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/0.log");
        let mut f = LogFile::create(&path, 4096).unwrap();
        for i in 0..200 {
            f.record(if i % 2 == 0 { "stdout" } else { "stderr" }, false, format!("line {i}").as_bytes()).unwrap();
        }
        f.record("stdout", true, b"part-").unwrap();
        f.record("stdout", false, b"end").unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() <= 4096);
        assert!(rotated(&path).exists());
        let all = String::from_utf8(read(&path, None, false, 1 << 20).unwrap()).unwrap();
        assert!(all.ends_with("line 199\npart-end\n"), "{all}");
        let two = String::from_utf8(read(&path, Some(2), false, 1 << 20).unwrap()).unwrap();
        assert_eq!(two, "line 199\npart-end\n");
        let ts = String::from_utf8(read(&path, Some(1), true, 1 << 20).unwrap()).unwrap();
        assert!(ts.ends_with("Z part-end\n") && ts.starts_with("20"), "{ts}");
        let r = parse_line("2024-01-01T00:00:00.000000001Z stderr F oops: x y").unwrap();
        assert_eq!((r.stream.as_str(), r.partial, r.text.as_str()), ("stderr", false, "oops: x y"));
        assert_eq!(texts(b"t stdout P a\nt stdout F b\n", false), b"ab\n");
    }

    #[test]
    fn lines_are_split_and_long_ones_cut_into_parts() {
        let mut got: Vec<(bool, Vec<u8>)> = Vec::new();
        let mut s = LineSplitter::default();
        s.push(b"one\ntw", |p, l| got.push((p, l.to_vec())));
        s.push(b"o\n\nthree", |p, l| got.push((p, l.to_vec())));
        s.push(&vec![b'x'; MAX_LINE + 5], |p, l| got.push((p, l.to_vec())));
        s.finish(|p, l| got.push((p, l.to_vec())));
        let mut long = b"three".to_vec();
        long.extend(vec![b'x'; MAX_LINE - 5]);
        assert_eq!(got, vec![(false, b"one".to_vec()), (false, b"two".to_vec()), (false, vec![]), (true, long), (false, vec![b'x'; 10])]);
    }
}
