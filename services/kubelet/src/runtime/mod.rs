//! Containers: overlayfs root filesystems over the image layers, run by youki's libcontainer
//! (no daemon) in a single-threaded child forked from this process (see [`forked`]). For a
//! container, that child stays as its [`shim`]: the init's parent, which copies its output
//! to the log and records its exit, and outlives the kubelet, so a restarted kubelet adopts
//! running containers ([`Runtime::adoptable`]). A small thread per container waits for the
//! shim.
//!
//! cgroups: libcontainer (without systemd) creates `<cgroupsPath>` in every v1 hierarchy on a
//! hybrid host (this development machine: v1 controllers plus an empty cgroup2 at
//! `/sys/fs/cgroup/unified`), or in the unified hierarchy on a cgroup2-only host (the
//! appliance), where containers also get a private cgroup namespace. The kubelet removes
//! the pod-level parents libcontainer leaves behind.

pub mod logs;
pub mod shim;
pub mod spec;

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::oci_spec::runtime::Spec;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

pub use spec::{BindMount, ContainerParams};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("container {id}: {reason}")]
    Container { id: String, reason: String },
    #[error("mount {}: {reason}", target.display())]
    Mount { target: PathBuf, reason: String },
    #[error("{}: {reason}", path.display())]
    Io { path: PathBuf, reason: String },
    #[error("invalid runtime spec: {0}")]
    Spec(String),
}

/// Which cgroup hierarchy the host has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupLayout {
    /// cgroup2 only (`/sys/fs/cgroup/cgroup.controllers` exists).
    Unified,
    /// v1 controllers, maybe with an empty cgroup2 beside them.
    Legacy,
}

impl CgroupLayout {
    pub fn detect() -> CgroupLayout {
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            CgroupLayout::Unified
        } else {
            CgroupLayout::Legacy
        }
    }
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How a container ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or 128 + signal.
    pub code: i32,
    pub signal: Option<i32>,
}

impl Exit {
    /// The process and how it ended, if `status` says it did. Pure.
    pub fn of(status: WaitStatus) -> Option<(Pid, Exit)> {
        match status {
            WaitStatus::Exited(pid, code) => Some((pid, Exit { code, signal: None })),
            WaitStatus::Signaled(pid, sig, _) => Some((pid, Exit { code: 128 + sig as i32, signal: Some(sig as i32) })),
            _ => None,
        }
    }
}

/// The bundle file naming a container's shim: `<pid> <start time> <startedAt>`.
const SHIM_FILE: &str = "shim";
/// The bundle file a shim writes the container's exit to.
const EXIT_FILE: &str = "exit";

/// A container's stdout and stderr pipes: (read end, write end) each.
pub struct Output {
    pub stdout: (OwnedFd, OwnedFd),
    pub stderr: (OwnedFd, OwnedFd),
}

/// A container's shim, as [`Runtime::run`] started it or an earlier kubelet left it
/// ([`Runtime::adoptable`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shim {
    /// The shim's pid; None when it has ended (the container's exit is in the bundle).
    pub pid: Option<i32>,
    pub bundle: PathBuf,
    /// When the container started (RFC 3339, seconds).
    pub started_at: String,
}

impl Shim {
    /// When the shim ends, how the container ended (on a small thread of its own). A shim
    /// that vanished without writing the exit (killed) counts as 137: the container is lost.
    pub fn wait(&self) -> tokio::sync::oneshot::Receiver<Exit> {
        let (pid, exit_file) = (self.pid, self.bundle.join(EXIT_FILE));
        on_wait_thread(format!("shim-{}", pid.unwrap_or(0)), move || {
            if let Some(pid) = pid {
                wait_end(pid);
            }
            shim::read_exit(&exit_file).unwrap_or_else(|| {
                tracing::warn!(file = %exit_file.display(), "the container's shim ended without its exit");
                Exit { code: 137, signal: None }
            })
        })
    }
}

/// The in-process container runtime.
pub struct Runtime {
    /// libcontainer's state directories (`<root>/<id>/state.json`).
    root: PathBuf,
    pub cgroups: CgroupLayout,
    /// Set (under [`CREATE`]) once closed: nothing is created any more.
    closed: AtomicBool,
}

/// Runs the image's program, first restoring the signal dispositions exec does not reset:
/// Rust ignores SIGPIPE in this process, and an ignored signal stays ignored across exec.
#[derive(Clone)]
struct KubeletExecutor;

impl Executor for KubeletExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        restore_signals();
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

#[allow(unsafe_code)]
fn restore_signals() {
    // SAFETY: runs in the single-threaded container init just before exec; setting a
    // disposition to SIG_DFL installs no handler.
    unsafe {
        let _ = nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl);
    }
    let _ = nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(&nix::sys::signal::SigSet::empty()), None);
}

/// Container creations and execs, one at a time in this process.
static CREATE: Mutex<()> = Mutex::new(());

/// The pid of the process that runs containers (0: not yet known).
static RUNTIME_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" {
    /// glibc: like atexit, with the exit status.
    fn on_exit(function: extern "C" fn(libc::c_int, *mut libc::c_void), arg: *mut libc::c_void) -> libc::c_int;
}

extern "C" fn exit_at_once_in_clones(status: libc::c_int, _arg: *mut libc::c_void) {
    let runtime = RUNTIME_PID.load(std::sync::atomic::Ordering::Relaxed);
    if runtime != 0 && nix::unistd::getpid().as_raw() != runtime {
        #[allow(unsafe_code)]
        // SAFETY: _exit ends the process without running further exit handlers.
        unsafe {
            libc::_exit(status)
        }
    }
}

/// libcontainer's intermediate and init processes are clones of this multi-threaded
/// process and leave with `exit()`, which runs every exit handler the process registered —
/// including ones that wait for threads that do not exist in the clone (RocksDB's thread
/// pools, when a store runs in the same process, as in tests). Exit handlers run last
/// registered first: this one, registered once when the first runtime is made, ends a clone
/// at once. Handlers registered after it (none in the kubelet) would still run.
#[allow(unsafe_code)]
fn guard_clone_exits() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        RUNTIME_PID.store(nix::unistd::getpid().as_raw(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: registers a handler with static lifetime and no captured state.
        let rc = unsafe { on_exit(exit_at_once_in_clones, std::ptr::null_mut()) };
        if rc != 0 {
            tracing::warn!("on_exit failed: clones may hang in exit handlers");
        }
    });
}

impl Runtime {
    pub fn new(root: &Path) -> Result<Runtime, RuntimeError> {
        guard_clone_exits();
        std::fs::create_dir_all(root).map_err(|e| RuntimeError::Io { path: root.to_path_buf(), reason: e.to_string() })?;
        Ok(Runtime { root: root.to_path_buf(), cgroups: CgroupLayout::detect(), closed: AtomicBool::new(false) })
    }

    /// Write `config.json` into `bundle`, create and start container `id` with its output
    /// on `output`'s pipes, copied to `log` by the container's [`shim`], which outlives this
    /// process (see [`Runtime::adoptable`]); the init's pid and the shim. Blocking: call
    /// from a blocking thread.
    pub fn run(&self, id: &str, bundle: &Path, spec: &serde_json::Value, output: Output, log: &Path, log_max: u64) -> Result<(i32, Shim), RuntimeError> {
        let err = |reason: String| RuntimeError::Container { id: id.to_string(), reason };
        let spec: Spec = serde_json::from_value(spec.clone()).map_err(|e| RuntimeError::Spec(e.to_string()))?;
        std::fs::create_dir_all(bundle).map_err(|e| RuntimeError::Io { path: bundle.to_path_buf(), reason: e.to_string() })?;
        spec.save(bundle.join("config.json")).map_err(|e| err(format!("writing config.json: {e}")))?;
        for f in [SHIM_FILE, EXIT_FILE] {
            let _ = std::fs::remove_file(bundle.join(f));
        }
        // A leftover of an earlier attempt under the same id.
        if self.root.join(id).exists() {
            self.delete(id);
        }
        let Output { stdout: (out_r, out_w), stderr: (err_r, err_w) } = output;
        let builder = self.builder(id, out_w, err_w)?;
        let _one = self.one_at_a_time(id)?;
        let shim = ShimStart { log: log.to_path_buf(), log_max, exit_file: bundle.join(EXIT_FILE), out: out_r, err: err_r };
        let started = forked(HelperWaits::Shim(shim), move || {
            let mut c = builder.as_init(bundle).with_systemd(false).with_detach(true).build().map_err(|e| format!("create: {e}"))?;
            c.start().map_err(|e| format!("start: {e}"))?;
            c.pid().map(|p| p.as_raw()).ok_or_else(|| "no pid after start".to_string())
        });
        match started {
            Ok((pid, shim)) => {
                let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                let record = format!("{} {} {started_at}\n", shim.as_raw(), start_time(shim.as_raw()).unwrap_or(0));
                std::fs::write(bundle.join(SHIM_FILE), record).map_err(|e| RuntimeError::Io { path: bundle.join(SHIM_FILE), reason: e.to_string() })?;
                Ok((pid, Shim { pid: Some(shim.as_raw()), bundle: bundle.to_path_buf(), started_at }))
            }
            Err(e) => {
                self.delete(id);
                Err(err(e))
            }
        }
    }

    /// Whether container `id`, left by an earlier kubelet, can be taken over: its state and
    /// bundle are there, and its shim still runs (the same process: pid and start time) or
    /// wrote the container's exit.
    pub fn adoptable(&self, id: &str) -> Option<Shim> {
        let c = Container::load(self.root.join(id)).ok()?;
        let bundle = c.bundle().to_path_buf();
        let record = std::fs::read_to_string(bundle.join(SHIM_FILE)).ok()?;
        let mut f = record.split_whitespace();
        let (shim, since, started_at) = (f.next()?.parse::<i32>().ok()?, f.next()?.parse::<u64>().ok()?, f.next()?.to_string());
        let alive = start_time(shim) == Some(since) && !is_zombie(shim);
        let exited = bundle.join(EXIT_FILE).exists();
        (alive || exited).then_some(Shim { pid: alive.then_some(shim), bundle, started_at })
    }

    /// Start `args` inside running container `id` as its own process runs (namespaces,
    /// cgroup, user, capabilities, environment, working directory), through libcontainer's
    /// tenant support: a clone joins the container's namespaces — after `setns` into its
    /// mount namespace the root is the container's pivoted root — and its cgroup, then
    /// execs. Returns the process's pid (to kill it) and the pid of this process's child
    /// that exits with the process's exit code (128 + signal if killed). Blocking: call
    /// from a blocking thread.
    pub fn exec(&self, id: &str, args: &[String], stdout: OwnedFd, stderr: OwnedFd) -> Result<(i32, i32), RuntimeError> {
        let err = |reason: String| RuntimeError::Container { id: id.to_string(), reason };
        let c = Container::load(self.root.join(id)).map_err(|e| err(e.to_string()))?;
        let spec = Spec::load(c.bundle().join("config.json")).map_err(|e| err(format!("config.json: {e}")))?;
        let process = spec.process().clone().ok_or_else(|| err("config.json has no process".into()))?;
        let user = process.user().clone();
        let builder = self.builder(id, stdout, stderr)?;
        let _one = self.one_at_a_time(id)?;
        let args = args.to_vec();
        forked(HelperWaits::Yes, move || {
            let tenant = builder
                .as_tenant()
                .with_container_args(args.clone())
                .with_cwd(Some(process.cwd()))
                .with_user(Some(user.uid()))
                .with_group(Some(user.gid()))
                .with_additional_gids(user.additional_gids().clone().unwrap_or_default())
                .with_detach(true)
                .build()
                .map_err(|e| format!("exec {args:?}: {e}"))?;
            Ok(tenant.as_raw())
        })
        .map(|(pid, helper)| (pid, helper.as_raw()))
        .map_err(err)
    }

    /// A libcontainer builder for `id` (stdin from /dev/null).
    fn builder(&self, id: &str, stdout: OwnedFd, stderr: OwnedFd) -> Result<ContainerBuilder, RuntimeError> {
        let err = |reason: String| RuntimeError::Container { id: id.to_string(), reason };
        let stdin = File::open("/dev/null").map_err(|e| err(e.to_string()))?;
        Ok(ContainerBuilder::new(id.to_string(), SyscallType::Linux)
            .with_root_path(&self.root)
            .map_err(|e| err(e.to_string()))?
            .with_executor(KubeletExecutor)
            .with_stdin(stdin)
            .with_stdout(stdout)
            .with_stderr(stderr))
    }

    /// The creation lock; refused once the runtime is closed.
    fn one_at_a_time(&self, id: &str) -> Result<MutexGuard<'static, ()>, RuntimeError> {
        let one = CREATE.lock().unwrap_or_else(|e| e.into_inner());
        if self.closed.load(Ordering::Relaxed) {
            return Err(RuntimeError::Container { id: id.to_string(), reason: "the runtime is closed".into() });
        }
        Ok(one)
    }

    /// Create nothing more (waits for a creation under way): a stopped kubelet's workers
    /// may still be finishing one when the next kubelet starts.
    pub fn close(&self) {
        let _one = CREATE.lock().unwrap_or_else(|e| e.into_inner());
        self.closed.store(true, Ordering::Relaxed);
    }

    /// Send `signal` to the container's init (or, `all`, to every process of its cgroup).
    pub fn kill(&self, id: &str, signal: Signal, all: bool) -> Result<(), RuntimeError> {
        let mut c = Container::load(self.root.join(id)).map_err(|e| RuntimeError::Container { id: id.to_string(), reason: e.to_string() })?;
        c.kill(signal, all).map_err(|e| RuntimeError::Container { id: id.to_string(), reason: e.to_string() })
    }

    /// The pid of a container libcontainer still knows (for adoption after a restart).
    pub fn pid(&self, id: &str) -> Option<i32> {
        let c = Container::load(self.root.join(id)).ok()?;
        c.pid().map(|p| p.as_raw())
    }

    /// Ids of every container with state on this node.
    pub fn list(&self) -> Vec<String> {
        std::fs::read_dir(&self.root).map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).collect()).unwrap_or_default()
    }

    /// Kill what is left and remove the container's cgroup and state. Never fails: what
    /// cannot be removed is logged.
    pub fn delete(&self, id: &str) {
        let dir = self.root.join(id);
        match Container::load(dir.clone()) {
            Ok(mut c) => {
                if let Err(e) = c.delete(true) {
                    tracing::warn!(id, %e, "libcontainer delete failed");
                }
            }
            Err(e) => tracing::debug!(id, %e, "no libcontainer state"),
        }
        if dir.exists() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    /// Whether the kernel's OOM killer killed a process of cgroup `path` (read before delete).
    pub fn oom_killed(&self, cgroups_path: &str) -> bool {
        let rel = cgroups_path.trim_start_matches('/');
        let file = match self.cgroups {
            CgroupLayout::Unified => Path::new(CGROUP_ROOT).join(rel).join("memory.events"),
            CgroupLayout::Legacy => Path::new(CGROUP_ROOT).join("memory").join(rel).join("memory.oom_control"),
        };
        std::fs::read_to_string(file).map(|s| oom_count(&s) > 0).unwrap_or(false)
    }

    /// The RLIMIT_NOFILE containers get: this process's hard limit for both (capped at 1M).
    pub fn nofile(&self) -> (u64, u64) {
        let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(1024, |(_, h)| h).min(1 << 20);
        (hard, hard)
    }

    /// Whether memory+swap can be limited (v1 needs swap accounting).
    pub fn swap_accounting(&self) -> bool {
        match self.cgroups {
            // The root has no memory.swap.max: look at this process's own cgroup.
            CgroupLayout::Unified => std::fs::read_to_string("/proc/self/cgroup")
                .ok()
                .and_then(|s| s.lines().find_map(|l| l.strip_prefix("0::")).map(|p| Path::new(CGROUP_ROOT).join(p.trim_start_matches('/')).join("memory.swap.max")))
                .is_some_and(|p| p.exists()),
            CgroupLayout::Legacy => Path::new(CGROUP_ROOT).join("memory/memory.memsw.limit_in_bytes").exists(),
        }
    }

    /// Remove an (empty) cgroup directory `rel` from every hierarchy; true if none is left.
    pub fn remove_cgroup(&self, rel: &str) -> bool {
        let rel = rel.trim_start_matches('/');
        let dirs: Vec<PathBuf> = match self.cgroups {
            CgroupLayout::Unified => vec![Path::new(CGROUP_ROOT).join(rel)],
            CgroupLayout::Legacy => std::fs::read_dir(CGROUP_ROOT)
                .map(|rd| rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path().join(rel)).collect())
                .unwrap_or_default(),
        };
        let mut clean = true;
        for d in dirs {
            if d.exists() && std::fs::remove_dir(&d).is_err() {
                clean = false;
                tracing::warn!(dir = %d.display(), "cgroup not removed");
            }
        }
        clean
    }

    /// Every hierarchy directory of cgroup `rel` that exists (for tests and diagnostics).
    pub fn cgroup_dirs(&self, rel: &str) -> Vec<PathBuf> {
        let rel = rel.trim_start_matches('/');
        let candidates: Vec<PathBuf> = match self.cgroups {
            CgroupLayout::Unified => vec![Path::new(CGROUP_ROOT).join(rel)],
            CgroupLayout::Legacy => std::fs::read_dir(CGROUP_ROOT).map(|rd| rd.flatten().map(|e| e.path().join(rel)).collect()).unwrap_or_default(),
        };
        candidates.into_iter().filter(|p| p.is_dir()).collect()
    }
}

/// What the helper of [`forked`] does once it started the process.
enum HelperWaits {
    /// It waits for the process and exits with its exit code (128 + signal).
    Yes,
    /// It becomes the process's [`shim`] (it is a subreaper in a session of its own).
    Shim(ShimStart),
}

/// What a helper needs to become a shim.
struct ShimStart {
    log: PathBuf,
    log_max: u64,
    exit_file: PathBuf,
    out: OwnedFd,
    err: OwnedFd,
}

/// How long a helper may take to report what it started.
const HELPER_REPORT: Duration = Duration::from_secs(60);

/// Run `start` (libcontainer, which returns the pid it started) in a child forked from this
/// thread. libcontainer clones the calling process with a raw `clone`: from this
/// multi-threaded process such a clone inherits every allocator lock another thread holds
/// at that instant and can hang for ever (it did, under exec probes every second). glibc's
/// `fork` leaves the child's allocator usable, and the child has one thread, so the clones
/// libcontainer makes from it are safe. It also keeps libcontainer's `chdir`s (around its
/// notify sockets) out of this process. The child reports the pid through a pipe; returns
/// it and the helper's pid (this process's child until it exits: wait for it).
#[allow(unsafe_code)]
fn forked(waits: HelperWaits, start: impl FnOnce() -> Result<i32, String>) -> Result<(i32, Pid), String> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // No command is being spawned while we fork: std holds its environment lock while it
    // spawns, and the helper's libcontainer sets the environment.
    let no_spawns = crate::fork::exclusive();
    // SAFETY: the child runs libcontainer (the allocator is consistent after glibc's fork;
    // tracing is switched off in it, since another thread may have held a subscriber's lock)
    // and leaves with `_exit`; it never returns into this process's code.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(format!("fork: {e}")),
        Ok(nix::unistd::ForkResult::Child) => {
            drop(r);
            let _quiet = tracing::dispatcher::set_default(&tracing::Dispatch::none());
            if matches!(waits, HelperWaits::Shim(_)) {
                // The container's init must become our child, and the shim must not get the
                // signals of the kubelet's process group.
                let _ = nix::sys::prctl::set_child_subreaper(true);
                let _ = nix::unistd::setsid();
            }
            let started = start();
            let report = match &started {
                Ok(pid) => format!("ok {pid}\n"),
                Err(e) => format!("err {}\n", e.replace('\n', " ")),
            };
            let _ = nix::unistd::write(&w, report.as_bytes());
            drop(w);
            let code = match (started, waits) {
                (Ok(pid), HelperWaits::Shim(s)) => {
                    let args = shim::ShimArgs { log: s.log, log_max: s.log_max, exit_file: s.exit_file, pid };
                    shim::exec(&args, s.out.as_raw_fd(), s.err.as_raw_fd())
                }
                (Ok(pid), HelperWaits::Yes) => wait_end(pid).map_or(255, |e| e.code),
                (Err(_), _) => 1,
            };
            // SAFETY: ends the child without running this process's exit handlers.
            unsafe { libc::_exit(code) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(no_spawns);
            drop(start);
            // The pipes' ends are the helper's (and the container's) now.
            drop(waits);
            drop(w);
            let report = read_report(r);
            if report.is_err() {
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                let _ = waitpid(child, None);
            }
            report.map(|pid| (pid, child))
        }
    }
}

/// The helper's one line: `ok <pid>` or `err <message>`, within [`HELPER_REPORT`].
fn read_report(r: OwnedFd) -> Result<i32, String> {
    use std::os::fd::AsFd;
    let deadline = std::time::Instant::now() + HELPER_REPORT;
    let mut line = Vec::new();
    while !line.ends_with(b"\n") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut fds = [nix::poll::PollFd::new(r.as_fd(), nix::poll::PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::try_from(left).unwrap_or(nix::poll::PollTimeout::MAX)) {
            Ok(0) => return Err(format!("no answer from the runtime helper in {HELPER_REPORT:?}")),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("poll: {e}")),
        }
        let mut buf = [0u8; 512];
        match nix::unistd::read(r.as_fd().as_raw_fd(), &mut buf) {
            Ok(0) => break,
            Ok(n) => line.extend_from_slice(&buf[..n]),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&line);
    match line.trim_end().split_once(' ') {
        Some(("ok", pid)) => pid.parse().map_err(|_| format!("runtime helper: {line:?}")),
        Some(("err", e)) => Err(e.to_string()),
        _ => Err(format!("the runtime helper died: {line:?}")),
    }
}

/// `oom_kill N` from memory.events (v2) or memory.oom_control (v1). Pure.
pub fn oom_count(text: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

/// Wait for child `pid` on a small thread of its own; the exit arrives on the channel (137
/// for a process that is not this one's child, once it is gone).
pub fn wait_exit(pid: i32) -> tokio::sync::oneshot::Receiver<Exit> {
    on_wait_thread(format!("wait-{pid}"), move || wait_end(pid).unwrap_or(Exit { code: 137, signal: None }))
}

/// Run `wait` on a small thread of its own; what it returns arrives on the channel.
fn on_wait_thread(name: String, wait: impl FnOnce() -> Exit + Send + 'static) -> tokio::sync::oneshot::Receiver<Exit> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if let Err(e) = std::thread::Builder::new().name(name).stack_size(128 << 10).spawn(move || {
        let _ = tx.send(wait());
    }) {
        tracing::error!(%e, "cannot start a wait thread");
    }
    rx
}

/// Block until process `pid` ends: how, if it is this process's child (reaped here); None
/// when it is not (then once it is gone).
fn wait_end(pid: i32) -> Option<Exit> {
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(status) => match Exit::of(status) {
                Some((_, exit)) => return Some(exit),
                None => continue,
            },
            Err(nix::errno::Errno::EINTR) => continue,
            // Not our child (a restarted kubelet's, or reaped by an earlier one in this process).
            Err(_) => {
                wait_gone(pid);
                return None;
            }
        }
    }
}

/// Block until process `pid` (not a child) is gone: a pidfd when the kernel has them,
/// else a look every 200 ms.
fn wait_gone(pid: i32) {
    #[allow(unsafe_code)]
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
    if fd >= 0 {
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        #[allow(unsafe_code)]
        // SAFETY: one valid pollfd; the fd is ours and closed once.
        unsafe {
            while libc::poll(&mut p, 1, -1) < 0 && nix::errno::Errno::last() == nix::errno::Errno::EINTR {}
            libc::close(fd);
        }
        return;
    }
    while Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A process's start time (clock ticks after boot, `/proc/<pid>/stat` field 22): with the
/// pid, it names one process.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z'))).unwrap_or(true)
}

/// Mount an overlay of `lower` (top layer first) with `upper`/`work` at `target`.
pub fn mount_overlay(lower: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<(), RuntimeError> {
    let merr = |reason: String| RuntimeError::Mount { target: target.to_path_buf(), reason };
    for d in [upper, work, target] {
        std::fs::create_dir_all(d).map_err(|e| merr(format!("{}: {e}", d.display())))?;
    }
    if lower.is_empty() {
        return Err(merr("an image without layers".into()));
    }
    let lowers: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
    if lowers.iter().any(|l| l.contains(':') || l.contains(',')) {
        return Err(merr("a layer path contains ':' or ','".into()));
    }
    let data = format!("lowerdir={},upperdir={},workdir={}", lowers.join(":"), upper.display(), work.display());
    if data.len() >= 4000 {
        return Err(merr(format!("overlay options are {} bytes (a page at most)", data.len())));
    }
    nix::mount::mount(Some("overlay"), target, Some("overlay"), nix::mount::MsFlags::empty(), Some(data.as_str())).map_err(|e| merr(e.to_string()))
}

/// Unmount `target` if mounted (lazily: nothing may hold it any more).
pub fn unmount(target: &Path) {
    loop {
        match nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => break,
            Err(e) => {
                tracing::warn!(target = %target.display(), %e, "unmount failed");
                break;
            }
        }
    }
}

/// A new IPC namespace kept alive by a bind mount at `file` (containers of a pod join it by
/// path). A short-lived thread unshares its own IPC namespace and mounts it.
pub fn new_ipc_namespace(file: &Path) -> Result<(), RuntimeError> {
    let merr = |reason: String| RuntimeError::Mount { target: file.to_path_buf(), reason };
    File::create(file).map_err(|e| merr(e.to_string()))?;
    let target = file.to_path_buf();
    let joined = std::thread::Builder::new()
        .name("ipc-ns".into())
        .spawn(move || -> Result<(), String> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWIPC).map_err(|e| format!("unshare: {e}"))?;
            nix::mount::mount(Some("/proc/thread-self/ns/ipc"), &target, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>).map_err(|e| format!("bind: {e}"))
        })
        .map_err(|e| merr(e.to_string()))?
        .join();
    match joined {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(merr(e)),
        Err(_) => Err(merr("the namespace thread panicked".into())),
    }
}

/// Whether something is mounted at `path` (from /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let p = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo").map(|s| s.lines().any(|l| l.split(' ').nth(4) == Some(p.as_str()))).unwrap_or(false)
}

/// Every mount point at or below `dir`.
pub fn mounts_below(dir: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|s| s.lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| *m == d || m.starts_with(&format!("{d}/"))).map(str::to_string).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_counters() {
        assert_eq!(oom_count("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"), 1);
        assert_eq!(oom_count("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"), 0);
        assert_eq!(oom_count(""), 0);
    }
}
