//! The one task that owns every service's state: it starts, restarts and stops services and
//! collects their exits. Everything else (output readers, TCP probes) only raises a run's
//! readiness flag and wakes it.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::signal::unix::Signal as SignalStream;
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::graph::Graph;
use super::output::{self, Output};
use super::reap::{self, Orphans};
use super::spawn::Spawner;
use super::{Policy, Ready, ServiceSpec, ServiceState};

/// How often a TCP readiness probe tries, and how long one connect may take.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often children are looked over even without a SIGCHLD (the kernel's list of a
/// thread's children may miss one that is being reparented at that moment).
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// How long shutdown waits for the last output of the stopped services to be read.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// The delay before restart number `failures` in a row (1-based): doubling from `min`,
/// capped at `max`.
pub(super) fn backoff(policy: &Policy, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    policy.backoff_min.saturating_mul(1 << doublings).min(policy.backoff_max)
}

/// Raised by whatever finds a run ready; the manager reads it when woken.
struct ReadyFlag {
    ready: AtomicBool,
    wake: Arc<Notify>,
}

impl ReadyFlag {
    fn raise(&self) {
        self.ready.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn is_raised(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

enum Phase {
    /// Never started.
    Waiting,
    Running {
        pid: u32,
        since: Instant,
        ready: bool,
        flag: Arc<ReadyFlag>,
        probe: Option<JoinHandle<()>>,
    },
    Backoff {
        at: Instant,
        delay: Duration,
    },
    /// Sent SIGTERM; SIGKILL at `kill_at` unless `killed` already.
    Stopping {
        pid: u32,
        kill_at: Instant,
        killed: bool,
    },
    Stopped,
}

struct Service {
    spec: ServiceSpec,
    output: Arc<Output>,
    phase: Phase,
    /// Restarts since the supervisor started.
    restarts: u32,
    /// Failures in a row (reset by a run longer than `reset_after`).
    failures: u32,
    last_exit: Option<String>,
    /// The reader of the latest run's output.
    reader: Option<JoinHandle<()>>,
}

impl Service {
    fn pid(&self) -> Option<u32> {
        match self.phase {
            Phase::Running { pid, .. } | Phase::Stopping { pid, .. } => Some(pid),
            _ => None,
        }
    }

    fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Running { ready: true, .. })
    }
}

pub(super) struct Manager {
    services: Vec<Service>,
    graph: Graph,
    policy: Policy,
    spawner: Spawner,
    wake: Arc<Notify>,
    orphans: Orphans,
    states: watch::Sender<BTreeMap<String, ServiceState>>,
    stopping: bool,
}

impl Manager {
    pub fn new(
        specs: Vec<ServiceSpec>,
        graph: Graph,
        policy: Policy,
        outputs: Vec<Arc<Output>>,
        spawner: Spawner,
    ) -> (Manager, watch::Receiver<BTreeMap<String, ServiceState>>) {
        let services = specs
            .into_iter()
            .zip(outputs)
            .map(|(spec, output)| Service {
                spec,
                output,
                phase: Phase::Waiting,
                restarts: 0,
                failures: 0,
                last_exit: None,
                reader: None,
            })
            .collect();
        let (states, receiver) = watch::channel(BTreeMap::new());
        let mut manager = Manager {
            services,
            graph,
            policy,
            spawner,
            wake: Arc::new(Notify::new()),
            orphans: Orphans::default(),
            states,
            stopping: false,
        };
        manager.publish();
        (manager, receiver)
    }

    /// Runs until shutdown is asked for (or the supervisor is dropped) and every service
    /// has stopped.
    pub async fn run(mut self, mut sigchld: SignalStream, mut stop: oneshot::Receiver<()>) {
        loop {
            self.advance().await;
            self.publish();
            if self.stopping && self.services.iter().all(|s| matches!(s.phase, Phase::Stopped)) {
                break;
            }
            let due = self.due();
            tokio::select! {
                Some(()) = sigchld.recv() => self.reap(),
                _ = self.wake.notified() => {}
                _ = &mut stop, if !self.stopping => self.begin_stop(),
                // A restart or a SIGKILL is due, an orphan's grace is over, or it is time to sweep.
                _ = tokio::time::sleep_until(due) => self.reap(),
            }
        }
        self.drain().await;
        tracing::info!("every service stopped");
    }

    /// Starts, restarts, readies and stops whatever is due now.
    async fn advance(&mut self) {
        let now = Instant::now();
        for i in self.graph.order.clone() {
            let service = &mut self.services[i];
            match &mut service.phase {
                Phase::Running { ready: ready @ false, flag, probe, .. } if flag.is_raised() => {
                    *ready = true;
                    if let Some(probe) = probe.take() {
                        probe.abort();
                    }
                    tracing::info!(service = %service.spec.name, "ready");
                }
                Phase::Stopping { pid, kill_at, killed: killed @ false } if *kill_at <= now => {
                    *killed = true;
                    tracing::warn!(service = %service.spec.name, pid, "did not stop in time: SIGKILL");
                    reap::signal_group(*pid, Signal::SIGKILL);
                }
                _ => {}
            }
            let start = match service.phase {
                Phase::Waiting => !self.stopping && self.graph.deps[i].iter().all(|&d| self.services[d].is_ready()),
                Phase::Backoff { at, .. } => !self.stopping && at <= now,
                _ => false,
            };
            if start {
                self.launch(i).await;
            }
        }
        // A running service gets SIGTERM once every service depending on it has stopped.
        if self.stopping {
            for i in self.graph.order.clone().into_iter().rev() {
                self.stop_if_free(i, now);
            }
        }
    }

    async fn launch(&mut self, i: usize) {
        let service = &mut self.services[i];
        let name = service.spec.name.clone();
        match self.spawner.spawn(&service.spec, self.policy.cgroup.as_deref()).await {
            Ok((pid, pipe)) => {
                tracing::info!(service = %name, pid, restarts = service.restarts, "started");
                let flag = Arc::new(ReadyFlag { ready: AtomicBool::new(false), wake: self.wake.clone() });
                let mut on_match = None;
                let mut probe = None;
                match &service.spec.ready {
                    Ready::Started => {}
                    Ready::Tcp(addr) => probe = Some(tokio::spawn(probe_tcp(*addr, flag.clone()))),
                    Ready::LogLine(text) => {
                        let flag = flag.clone();
                        on_match = Some((text.clone(), Box::new(move || flag.raise()) as Box<dyn FnOnce() + Send>));
                    }
                }
                service.reader = Some(tokio::spawn(output::forward(pipe, service.output.clone(), on_match)));
                // Ready::Started is ready in this same pass, so its dependents start at once.
                let ready = service.spec.ready == Ready::Started;
                service.phase = Phase::Running { pid, since: Instant::now(), ready, flag, probe };
            }
            Err(e) => {
                tracing::warn!(service = %name, program = %service.spec.program.display(), error = %e, "spawn failed");
                self.exited(i, format!("spawn failed: {e}"), Instant::now());
            }
        }
    }

    /// Records the end of service `i`'s run: stopped during shutdown, else a restart after
    /// the backoff.
    fn exited(&mut self, i: usize, how: String, now: Instant) {
        let service = &mut self.services[i];
        let name = &service.spec.name;
        let ran = match std::mem::replace(&mut service.phase, Phase::Stopped) {
            Phase::Running { since, probe, .. } => {
                if let Some(probe) = probe {
                    probe.abort();
                }
                now.duration_since(since)
            }
            _ => Duration::ZERO,
        };
        if self.stopping {
            tracing::info!(service = %name, exit = %how, "stopped");
            service.last_exit = Some(how);
            return;
        }
        if ran > self.policy.reset_after {
            service.failures = 0;
        }
        service.failures = service.failures.saturating_add(1);
        service.restarts = service.restarts.saturating_add(1);
        let delay = backoff(&self.policy, service.failures);
        tracing::warn!(service = %name, exit = %how, restarts = service.restarts, retry_in = ?delay, "exited; restarting after backoff");
        service.last_exit = Some(how);
        service.phase = Phase::Backoff { at: now + delay, delay };
    }

    /// Collects the exits of services and reaps orphans.
    fn reap(&mut self) {
        let now = Instant::now();
        for i in 0..self.services.len() {
            let Some(pid) = self.services[i].pid() else { continue };
            let Some(how) = reap::exited(pid) else { continue };
            if self.stopping {
                // What is left of its group would otherwise outlive the supervisor.
                reap::signal_group(pid, Signal::SIGKILL);
            }
            reap::collect(pid);
            self.exited(i, how, now);
        }
        let services: HashSet<u32> = self.services.iter().filter_map(Service::pid).collect();
        self.orphans.sweep(&services, now);
    }

    fn begin_stop(&mut self) {
        tracing::info!("stopping services");
        self.stopping = true;
        for service in &mut self.services {
            if matches!(service.phase, Phase::Waiting | Phase::Backoff { .. }) {
                service.phase = Phase::Stopped;
            }
        }
    }

    /// Sends SIGTERM to running service `i` once every service depending on it has stopped.
    fn stop_if_free(&mut self, i: usize, now: Instant) {
        let free = self.graph.dependents[i].iter().all(|&d| matches!(self.services[d].phase, Phase::Stopped));
        let service = &mut self.services[i];
        if let (true, Phase::Running { pid, probe, .. }) = (free, &mut service.phase) {
            if let Some(probe) = probe.take() {
                probe.abort();
            }
            let pid = *pid;
            tracing::info!(service = %service.spec.name, pid, "stopping: SIGTERM");
            reap::signal_group(pid, Signal::SIGTERM);
            service.phase = Phase::Stopping { pid, kill_at: now + service.spec.stop_timeout, killed: false };
        }
    }

    /// The next moment something is due: a restart, a SIGKILL, an orphan to reap, a sweep.
    fn due(&self) -> Instant {
        let phases = self.services.iter().filter_map(|s| match s.phase {
            Phase::Backoff { at, .. } if !self.stopping => Some(at),
            Phase::Stopping { kill_at, killed: false, .. } => Some(kill_at),
            _ => None,
        });
        phases.chain(self.orphans.due()).fold(Instant::now() + SWEEP_EVERY, Instant::min)
    }

    /// Waits (bounded) for the output of the last runs to be read to its end.
    async fn drain(&mut self) {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        for reader in self.services.iter_mut().filter_map(|s| s.reader.take()) {
            if tokio::time::timeout_at(deadline, reader).await.is_err() {
                tracing::debug!("output still open after shutdown (a leftover process holds it)");
                break;
            }
        }
    }

    fn publish(&mut self) {
        let states: BTreeMap<String, ServiceState> =
            (0..self.services.len()).map(|i| (self.services[i].spec.name.clone(), self.state(i))).collect();
        self.states.send_if_modified(|current| {
            let changed = *current != states;
            if changed {
                *current = states;
            }
            changed
        });
    }

    fn state(&self, i: usize) -> ServiceState {
        let service = &self.services[i];
        match &service.phase {
            Phase::Waiting => ServiceState::Waiting {
                on: self.graph.deps[i]
                    .iter()
                    .filter(|&&d| !self.services[d].is_ready())
                    .map(|&d| self.services[d].spec.name.clone())
                    .collect(),
            },
            Phase::Running { pid, ready: false, .. } => ServiceState::Starting { pid: *pid },
            Phase::Running { pid, ready: true, .. } => ServiceState::Ready { pid: *pid },
            Phase::Backoff { delay, .. } => ServiceState::Backoff {
                restarts: service.restarts,
                last_exit: service.last_exit.clone().unwrap_or_default(),
                retry_in: *delay,
            },
            Phase::Stopping { .. } => ServiceState::Stopping,
            Phase::Stopped => ServiceState::Stopped { last_exit: service.last_exit.clone() },
        }
    }
}

/// Tries a TCP connect every [`PROBE_INTERVAL`] until one succeeds.
async fn probe_tcp(addr: SocketAddr, flag: Arc<ReadyFlag>) {
    loop {
        if let Ok(Ok(_)) = tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            flag.raise();
            return;
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap() {
        let policy = Policy {
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(1),
            ..Policy::default()
        };
        let delays: Vec<u128> = (1..=5).map(|n| backoff(&policy, n).as_millis()).collect();
        assert_eq!(delays, [250, 500, 1000, 1000, 1000]);
        assert_eq!(backoff(&policy, u32::MAX), Duration::from_secs(1));
    }
}
