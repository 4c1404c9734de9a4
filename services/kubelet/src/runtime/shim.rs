//! The container shim: one small process per container that outlives the kubelet. It is the
//! container init's parent (a child subreaper), copies the container's stdout and stderr
//! pipes into its CRI log file (with rotation), and when the init exits writes how it ended
//! to a file in the bundle and exits with its code. A restarted kubelet therefore finds its
//! containers running, still logging, and learns their exits: it adopts them instead of
//! killing them (`Kubelet::start`).
//!
//! The shim starts life as the forked helper that ran libcontainer ([`super::forked`]), in a
//! session of its own (so a signal to the kubelet's process group does not reach it). A
//! fork keeps a copy of every page of the kubelet it does not share any more, so it then
//! re-executes this same program (`/proc/self/exe`, which may be the `kapp` binary or a
//! test binary) with [`FLAG`]: the constructor [`entry`], run by the loader before `main`,
//! recognises the flag and runs [`monitor`] instead of the program. The stdout and stderr
//! pipes arrive as fds 3 and 4.

use std::ffi::{CStr, CString};
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::logs::{LineSplitter, LogFile};
use super::Exit;

/// `argv[1]` of a shim.
pub const FLAG: &str = "--kapp-container-shim";
/// How long output is still copied after the init exited (other holders of the pipes,
/// which the init's death normally kills with its pid namespace).
const DRAIN: Duration = Duration::from_secs(2);
/// The fds the pipes arrive on.
const STDOUT_FD: RawFd = 3;
const STDERR_FD: RawFd = 4;

/// What a shim is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShimArgs {
    /// The CRI log file of this run.
    pub log: PathBuf,
    pub log_max: u64,
    /// Where the exit is written (`<code> <signal or ->`).
    pub exit_file: PathBuf,
    /// The container's init, this process's child.
    pub pid: i32,
}

impl ShimArgs {
    fn to_argv(&self) -> Vec<String> {
        vec!["kapp-shim".into(), FLAG.into(), self.log.display().to_string(), self.log_max.to_string(), self.exit_file.display().to_string(), self.pid.to_string()]
    }

    /// From the arguments after [`FLAG`]. Pure.
    fn parse(args: &[String]) -> Option<ShimArgs> {
        match args {
            [log, max, exit, pid] => Some(ShimArgs { log: log.into(), log_max: max.parse().ok()?, exit_file: exit.into(), pid: pid.parse().ok()? }),
            _ => None,
        }
    }
}

type Constructor = extern "C" fn(libc::c_int, *const *const libc::c_char, *const *const libc::c_char);

/// Run by the loader (glibc passes argc, argv and envp to `.init_array` functions) in every
/// program that links the kubelet; returns at once unless `argv[1]` is [`FLAG`].
// SAFETY: `.init_array` holds pointers to functions of this signature, which glibc calls with
// (argc, argv, envp) before `main`; `entry` only reads argv and returns, or never returns.
#[allow(unsafe_code)]
#[used]
#[link_section = ".init_array"]
static ENTRY: Constructor = entry;

#[allow(unsafe_code)]
extern "C" fn entry(argc: libc::c_int, argv: *const *const libc::c_char, _envp: *const *const libc::c_char) {
    if argc < 2 || argv.is_null() {
        return;
    }
    // SAFETY: the loader's argv holds argc valid C strings.
    let arg = |i: libc::c_int| unsafe { CStr::from_ptr(*argv.add(i as usize)) }.to_string_lossy().into_owned();
    if arg(1) != FLAG {
        return;
    }
    let rest: Vec<String> = (2..argc).map(arg).collect();
    let code = match ShimArgs::parse(&rest) {
        Some(a) => monitor(&a, STDOUT_FD, STDERR_FD),
        None => 2,
    };
    // SAFETY: ends the process before `main`; nothing of the program has run.
    unsafe { libc::_exit(code) }
}

/// In the forked helper, once the container runs: put the pipes on fds 3 and 4, /dev/null
/// on 0–2, close everything else (the kubelet's sockets and files must not live on in the
/// shim), and execute the shim. If the exec fails, monitor from here.
#[allow(unsafe_code)]
pub(super) fn exec(args: &ShimArgs, out: RawFd, err: RawFd) -> ! {
    let argv: Vec<CString> = args.to_argv().into_iter().map(|a| CString::new(a).unwrap_or_default()).collect();
    let exe = CString::new("/proc/self/exe").expect("no NUL");
    // SAFETY: fd juggling on fds this process owns; it is single-threaded (a fork).
    unsafe {
        let hi_out = libc::fcntl(out, libc::F_DUPFD, 100);
        let hi_err = libc::fcntl(err, libc::F_DUPFD, 100);
        libc::dup2(hi_out, STDOUT_FD);
        libc::dup2(hi_err, STDERR_FD);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        for fd in 0..3 {
            libc::dup2(null, fd);
        }
        libc::syscall(libc::SYS_close_range, 5u32, u32::MAX, 0u32);
        let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        let envp: [*const libc::c_char; 1] = [std::ptr::null()];
        libc::execve(exe.as_ptr(), ptrs.as_ptr(), envp.as_ptr());
        let code = monitor(args, STDOUT_FD, STDERR_FD);
        libc::_exit(code)
    }
}

/// One output pipe being copied.
struct Stream {
    fd: RawFd,
    name: &'static str,
    open: bool,
    lines: LineSplitter,
}

/// Copy the pipes into the log until the init has exited (and the pipes closed, or
/// [`DRAIN`] passed), write the exit file and return the exit code (128 + signal).
pub fn monitor(args: &ShimArgs, out: RawFd, err: RawFd) -> i32 {
    let mut log = LogFile::create(&args.log, args.log_max).ok();
    let mut streams = [Stream { fd: out, name: "stdout", open: true, lines: LineSplitter::default() }, Stream { fd: err, name: "stderr", open: true, lines: LineSplitter::default() }];
    let init = Pid::from_raw(args.pid);
    let mut exit: Option<Exit> = None;
    let mut drain_until: Option<Instant> = None;
    let mut buf = vec![0u8; 32 << 10];
    loop {
        if exit.is_none() {
            exit = reap(init);
            if exit.is_some() {
                drain_until = Some(Instant::now() + DRAIN);
            }
        }
        let open: Vec<usize> = (0..2).filter(|i| streams[*i].open).collect();
        if exit.is_some() && (open.is_empty() || drain_until.is_some_and(|t| Instant::now() >= t)) {
            break;
        }
        let mut fds: Vec<libc::pollfd> = open.iter().map(|i| libc::pollfd { fd: streams[*i].fd, events: libc::POLLIN, revents: 0 }).collect();
        // Exits are noticed by polling waitpid: 200 ms at most late.
        #[allow(unsafe_code)]
        // SAFETY: `fds` is a valid array of its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 200) };
        if n <= 0 {
            continue;
        }
        for (slot, i) in open.iter().enumerate() {
            if fds[slot].revents == 0 {
                continue;
            }
            let s = &mut streams[*i];
            match nix::unistd::read(s.fd, &mut buf) {
                Ok(0) => s.open = false,
                Ok(n) => s.lines.push(&buf[..n], |partial, line| write(&mut log, s.name, partial, line)),
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                Err(_) => s.open = false,
            }
        }
    }
    for s in &mut streams {
        s.lines.finish(|partial, line| write(&mut log, s.name, partial, line));
    }
    let exit = exit.unwrap_or(Exit { code: 137, signal: None });
    write_exit(&args.exit_file, exit);
    exit.code & 0xff
}

fn write(log: &mut Option<LogFile>, stream: &str, partial: bool, line: &[u8]) {
    if let Some(l) = log {
        let _ = l.record(stream, partial, line);
    }
}

/// Reap whatever children ended (libcontainer's intermediate process too); the init's exit
/// if it was among them, or if it is gone without being ours to reap.
fn reap(init: Pid) -> Option<Exit> {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return None,
            Ok(status) => match Exit::of(status) {
                Some((pid, exit)) if pid == init => return Some(exit),
                _ => continue,
            },
            Err(nix::errno::Errno::EINTR) => continue,
            // No children at all: the init never became ours (or went already).
            Err(_) => return (!Path::new(&format!("/proc/{}", init.as_raw())).exists()).then_some(Exit { code: 137, signal: None }),
        }
    }
}

/// Write `<code> <signal or ->` to `path` atomically.
pub fn write_exit(path: &Path, exit: Exit) {
    let tmp = path.with_extension("tmp");
    let text = format!("{} {}\n", exit.code, exit.signal.map_or("-".to_string(), |s| s.to_string()));
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// The exit a shim wrote, if it did. Pure but for the read.
pub fn read_exit(path: &Path) -> Option<Exit> {
    let text = std::fs::read_to_string(path).ok()?;
    let (code, signal) = text.trim().split_once(' ')?;
    Some(Exit { code: code.parse().ok()?, signal: if signal == "-" { None } else { Some(signal.parse().ok()?) } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_and_exit_files_round_trip() {
        let a = ShimArgs { log: "/var/log/p/c/0.log".into(), log_max: 1 << 20, exit_file: "/b/exit".into(), pid: 42 };
        let argv = a.to_argv();
        assert_eq!(argv[1], FLAG);
        assert_eq!(ShimArgs::parse(&argv[2..]), Some(a));
        assert_eq!(ShimArgs::parse(&argv[2..5]), None);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("exit");
        assert_eq!(read_exit(&f), None);
        write_exit(&f, Exit { code: 137, signal: Some(9) });
        assert_eq!(read_exit(&f), Some(Exit { code: 137, signal: Some(9) }));
        write_exit(&f, Exit { code: 3, signal: None });
        assert_eq!(read_exit(&f), Some(Exit { code: 3, signal: None }));
    }

    /// This test binary, run with the flag, is a shim before its `main` runs: the
    /// constructor is linked in. Its "init" is no child of it and gone: it reports 137.
    #[test]
    fn the_program_becomes_a_shim_before_main() {
        let dir = tempfile::tempdir().unwrap();
        let a = ShimArgs { log: dir.path().join("c/0.log"), log_max: 4096, exit_file: dir.path().join("exit"), pid: i32::MAX - 1 };
        let argv = a.to_argv();
        let status = std::process::Command::new("/proc/self/exe").args(&argv[1..]).status().unwrap();
        assert_eq!(status.code(), Some(137));
        assert_eq!(read_exit(&a.exit_file), Some(Exit { code: 137, signal: None }));
    }
}
