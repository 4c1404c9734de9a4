//! Service supervision: run a fixed set of services as child processes, start them in
//! dependency order, restart them with backoff, keep their output, reap orphans, and stop
//! them in reverse dependency order.
//!
//! `kapp up` runs it as an ordinary process; the node image runs the same code as PID 1.
//!
//! # What it guarantees
//!
//! - **Validation.** [`Supervisor::start`] refuses names outside `[a-z0-9-]+`, duplicate
//!   names, dependencies on unknown services and dependency cycles, with an error naming the
//!   service, before anything runs.
//! - **Start order.** A service is first started only when every service in its `after`
//!   list is [`ServiceState::Ready`] at that moment. Readiness is per run: started
//!   ([`Ready::Started`]), a TCP connect that succeeds (polled every 100 ms) or a line of its
//!   output containing a text. Only the first start waits: a dependency that later restarts
//!   does not restart or hold back its dependents.
//! - **Restart.** Every exit of a service (or failure to spawn it) outside shutdown leads to
//!   [`ServiceState::Backoff`] and a restart after `backoff_min`, doubling per consecutive
//!   failure up to `backoff_max`; a run longer than `reset_after` starts the doubling anew.
//! - **Isolation.** Each child runs in its own process group (so a terminal's Ctrl-C reaches
//!   only the supervising process), with stdin on `/dev/null` and `PR_SET_PDEATHSIG(SIGTERM)`
//!   (so it goes away if the supervisor is killed). Children are forked by one dedicated
//!   thread that lives as long as the supervisor: the kernel sends the parent-death signal
//!   when the *thread* that forked a child ends. With [`Policy::cgroup`] the child moves
//!   itself into `<cgroup>/<name>` (cgroup2) before it execs.
//! - **Exit statuses.** A service's exit is collected by pid (`waitid`), never with
//!   `waitpid(-1)`, so children that other code in this process starts and waits for keep
//!   their statuses. The exited service is first looked at without reaping it, so its pid
//!   (and so its process group) cannot be reused while we still signal it.
//! - **Orphans.** The supervising process becomes a child subreaper (unless it is PID 1,
//!   which is one already), so processes whose parent died inside a service's tree are
//!   reparented to it. On every `SIGCHLD` (and every 10 s) it lists its children; a zombie
//!   that is not a service is reaped once it has stayed a zombie for 1 s (time for code that
//!   started it in this process to collect it first) and logged as "reaped orphan pid N".
//!   So other code in the same process may start and wait for children of its own, as long
//!   as it collects them within that second (blocking `wait`, tokio::process, polling).
//! - **Output.** stdout and stderr share one pipe per run, read line by line; lines longer
//!   than 8 KiB are cut. Each line goes to a ring of the last `ring_lines` lines
//!   ([`Supervisor::recent_lines`]), to `<log_dir>/<name>.log` when a log directory is set
//!   (moved to `<name>.log.1` before it would pass `log_max_bytes`; one old file is kept),
//!   and, when `echo` is set, to our stderr as `<name>| line`. Output of processes that
//!   outlive a run (they still hold the pipe) keeps being read until they close it.
//! - **Shutdown.** [`Supervisor::shutdown`] (or dropping the [`Supervisor`]) stops services
//!   that were never started or are waiting to restart at once, then sends `SIGTERM` to a
//!   service's whole process group only when every service depending on it has stopped;
//!   services that do not depend on each other stop concurrently. A group still alive
//!   `stop_timeout` later gets `SIGKILL`, and so does whatever is left of a group once its
//!   main process has exited. `shutdown` returns when every service's main process has
//!   exited and its output has been read (the latter waited for 1 s at most).
//! - **Bounds.** Lines (8 KiB), the ring (`ring_lines`), log files (two of `log_max_bytes`),
//!   the backoff (`backoff_max`) and the final output drain (1 s) are bounded. Nothing is
//!   queued between the tasks: readiness is a flag per run and one wake-up.

mod graph;
mod manager;
mod output;
mod reap;
mod spawn;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub use reap::become_subreaper;

/// One service: a program run as a child process.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    /// Unique, `[a-z0-9-]+`.
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Added to the inherited environment.
    pub env: Vec<(String, String)>,
    /// Services that must be Ready before this one starts (first start only; a dependency's
    /// later restart does not restart dependents).
    pub after: Vec<String>,
    pub ready: Ready,
    /// SIGTERM, then SIGKILL after this.
    pub stop_timeout: Duration,
}

impl ServiceSpec {
    /// A service with no arguments, environment or dependencies, ready once started, given
    /// 10 s to stop.
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            after: Vec::new(),
            ready: Ready::Started,
            stop_timeout: Duration::from_secs(10),
        }
    }
}

/// When a started service counts as ready.
#[derive(Clone, Debug, PartialEq)]
pub enum Ready {
    /// As soon as it is spawned.
    Started,
    /// Once a TCP connect to this address succeeds (tried every 100 ms).
    Tcp(SocketAddr),
    /// Once a line of its stdout or stderr contains this text.
    LogLine(String),
}

/// How every service is restarted and how its output is kept.
#[derive(Clone, Debug)]
pub struct Policy {
    /// First restart delay (default 250 ms).
    pub backoff_min: Duration,
    /// Cap (default 30 s); the delay doubles per consecutive failure.
    pub backoff_max: Duration,
    /// A run longer than this resets the backoff (default 10 s).
    pub reset_after: Duration,
    /// Each service's stdout+stderr appended to `<log_dir>/<name>.log`, rotated to
    /// `<name>.log.1` past `log_max_bytes`.
    pub log_dir: Option<PathBuf>,
    /// Default 8 MiB.
    pub log_max_bytes: u64,
    /// Last lines kept in memory per service (default 200).
    pub ring_lines: usize,
    /// Also copy each line to our stderr prefixed with `<name>| ` (default true).
    pub echo: bool,
    /// A cgroup2 directory: each service runs in `<cgroup>/<name>` (made when it first
    /// starts). Default none: services stay in ours.
    pub cgroup: Option<PathBuf>,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            reset_after: Duration::from_secs(10),
            log_dir: None,
            log_max_bytes: 8 * 1024 * 1024,
            ring_lines: 200,
            echo: true,
            cgroup: None,
        }
    }
}

/// A service's state as [`Supervisor::states`] reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum ServiceState {
    /// Not started yet: these dependencies are not ready.
    Waiting {
        on: Vec<String>,
    },
    /// Spawned, not ready yet.
    Starting {
        pid: u32,
    },
    Ready {
        pid: u32,
    },
    /// Exited (or failed to spawn); started again after `retry_in`. `restarts` counts every
    /// restart since the supervisor started, this one included; `last_exit` reads like
    /// "exit code 1", "killed by SIGKILL" or "spawn failed: …".
    Backoff {
        restarts: u32,
        last_exit: String,
        retry_in: Duration,
    },
    /// Sent SIGTERM during shutdown.
    Stopping,
    /// Stopped during shutdown; `None` if it never ran.
    Stopped {
        last_exit: Option<String>,
    },
}

/// Why the supervisor did not start.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("service {service:?}: name must be non-empty and use only a-z, 0-9 and '-'")]
    InvalidName { service: String },
    #[error("service {service:?} is defined twice")]
    DuplicateName { service: String },
    #[error("service {service:?} starts after {dependency:?}, which is not a service")]
    UnknownDependency { service: String, dependency: String },
    #[error("service {service:?} is part of a dependency cycle: {}", cycle.join(" -> "))]
    DependencyCycle { service: String, cycle: Vec<String> },
    #[error("service {service:?}: log file {}: {reason}", path.display())]
    LogFile { service: String, path: PathBuf, reason: String },
    #[error("the supervisor must be started inside a tokio runtime (with IO and time enabled)")]
    NoRuntime,
    #[error("cannot handle SIGCHLD: {reason}")]
    ChildSignal { reason: String },
    #[error("cannot become a child subreaper: {reason}")]
    Subreaper { reason: String },
    #[error("cannot start the spawner thread: {reason}")]
    SpawnerThread { reason: String },
}

/// Runs the services; see the module documentation for what it guarantees.
pub struct Supervisor {
    stop: oneshot::Sender<()>,
    manager: JoinHandle<()>,
    states: watch::Receiver<BTreeMap<String, ServiceState>>,
    outputs: BTreeMap<String, Arc<output::Output>>,
}

impl Supervisor {
    /// Validate (unique names, known dependencies, no cycles → typed error naming the
    /// service) and start everything in dependency order. Must be called inside a tokio
    /// runtime. Also makes this process a child subreaper (see [`become_subreaper`]).
    pub fn start(specs: Vec<ServiceSpec>, policy: Policy) -> Result<Supervisor, SuperviseError> {
        let graph = graph::Graph::new(&specs)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| SuperviseError::NoRuntime)?;
        let _enter = runtime.enter();
        let outputs = specs
            .iter()
            .map(|spec| output::Output::open(&spec.name, &policy).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
            .map_err(|e| SuperviseError::ChildSignal { reason: e.to_string() })?;
        become_subreaper()?;
        let spawner = spawn::Spawner::start()?;
        let by_name = specs.iter().map(|s| s.name.clone()).zip(outputs.iter().cloned()).collect();
        let (manager, states) = manager::Manager::new(specs, graph, policy, outputs, spawner);
        let (stop, stopped) = oneshot::channel();
        let manager = runtime.spawn(manager.run(sigchld, stopped));
        Ok(Supervisor { stop, manager, states, outputs: by_name })
    }

    /// Every service's state, updated on each change.
    pub fn states(&self) -> watch::Receiver<BTreeMap<String, ServiceState>> {
        self.states.clone()
    }

    /// The last lines (up to `ring_lines`) a service printed; none for an unknown name.
    pub fn recent_lines(&self, name: &str) -> Vec<String> {
        self.outputs.get(name).map(|o| o.recent()).unwrap_or_default()
    }

    /// Ordered stop: dependents before their dependencies (reverse start order); each gets
    /// SIGTERM and SIGKILL after its stop_timeout; services that don't depend on each other
    /// may stop concurrently. Returns when every child has exited.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        if let Err(e) = self.manager.await {
            tracing::error!(error = %e, "supervisor task failed");
        }
    }
}
