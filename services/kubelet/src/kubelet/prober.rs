//! Running probes and hooks against a container: `httpGet` and `tcpSocket` to the pod IP
//! from the node's network namespace, `exec` inside the running container (libcontainer's
//! tenant processes), each bounded by its timeout; the probe loops of one container run,
//! which tell the pod worker when a verdict changes; and the stop sequence (preStop hook,
//! SIGTERM, SIGKILL at the end of the grace period).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use nix::sys::signal::Signal;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::pod::Event;
use super::probe::{Action, HttpGet, Kind, ProbeSpec, Tracker};
use super::Shared;

/// At most this much of an exec's output is kept for messages.
const OUTPUT_LIMIT: usize = 4096;
/// After a preStop hook, SIGTERM gets at least this long before SIGKILL (as in Kubernetes).
const MIN_GRACE_AFTER_HOOK: Duration = Duration::from_secs(2);

/// A spawned task that ends when this is dropped.
pub(crate) struct Task<T = ()>(JoinHandle<T>);

impl<T: Send + 'static> Task<T> {
    pub fn spawn(f: impl std::future::Future<Output = T> + Send + 'static) -> Task<T> {
        Task(tokio::spawn(f))
    }

    /// Its result, if it finishes within `limit`.
    async fn result_within(&mut self, limit: Duration) -> Option<T> {
        tokio::time::timeout(limit, &mut self.0).await.ok()?.ok()
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where checks go: a container run and its pod's address.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// The container (run) id.
    pub id: String,
    pub ip: Option<Ipv4Addr>,
}

/// What a container's checks tell its pod worker.
#[derive(Debug)]
pub(crate) enum Report {
    /// A probe's verdict changed (`message`: the failure, if any).
    Verdict { kind: Kind, ok: bool, message: String },
    /// The postStart hook ended.
    PostStart(Result<(), String>),
}

/// Run `action` once against `target`, bounded by `timeout` (a `sleep` hook is cut short,
/// anything else fails): `Err` says why it failed.
pub(crate) async fn check(shared: &Arc<Shared>, target: &Target, action: &Action, timeout: Duration) -> Result<(), String> {
    let run = async {
        match action {
            Action::Exec(cmd) => exec(shared, &target.id, cmd).await,
            Action::Http(h) => http_get(shared, target, h, timeout).await,
            Action::Tcp { host, port } => {
                let addr = address(host.as_deref(), target.ip, *port).await?;
                shared.net.connect(addr, timeout).await.map(drop).map_err(|e| e.to_string())
            }
            Action::Sleep(d) => {
                tokio::time::sleep(*d).await;
                Ok(())
            }
            Action::Unsupported(why) => Err(why.clone()),
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => match action {
            Action::Sleep(_) => Ok(()),
            Action::Exec(cmd) => Err(format!("command {:?} timed out after {timeout:?}", cmd.join(" "))),
            Action::Http(h) => Err(format!("HTTP GET {} on port {} timed out after {timeout:?}", h.path, h.port)),
            Action::Tcp { port, .. } => Err(format!("TCP connection to port {port} timed out after {timeout:?}")),
            Action::Unsupported(why) => Err(why.clone()),
        },
    }
}

/// `host` (or the pod IP) and `port` as a socket address.
async fn address(host: Option<&str>, pod_ip: Option<Ipv4Addr>, port: u16) -> Result<SocketAddr, String> {
    let Some(host) = host else {
        return pod_ip.map(|ip| SocketAddr::from((ip, port))).ok_or_else(|| "the pod has no IP yet".to_string());
    };
    let mut found = tokio::net::lookup_host((host, port)).await.map_err(|e| format!("resolving {host}: {e}"))?;
    found.find(SocketAddr::is_ipv4).ok_or_else(|| format!("{host} has no IPv4 address"))
}

async fn http_get(shared: &Arc<Shared>, target: &Target, h: &HttpGet, timeout: Duration) -> Result<(), String> {
    let addr = address(h.host.as_deref(), target.ip, h.port).await?;
    let stream = shared.net.connect(addr, timeout).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await.map_err(|e| format!("HTTP GET {addr}: {e}"))?;
    let _conn = Task::spawn(async move {
        let _ = conn.await;
    });
    let has = |name: &str| h.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    let mut req = http::Request::get(h.path.as_str());
    if !has("host") {
        req = req.header(http::header::HOST, format!("{}:{}", h.host.clone().unwrap_or_else(|| addr.ip().to_string()), h.port));
    }
    if !has("user-agent") {
        req = req.header(http::header::USER_AGENT, "kube-probe/1.33");
    }
    if !has("accept") {
        req = req.header(http::header::ACCEPT, "*/*");
    }
    for (k, v) in &h.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req.body(Empty::new()).map_err(|e| format!("HTTP GET {}: {e}", h.path))?;
    let resp = sender.send_request(req).await.map_err(|e| format!("HTTP GET http://{addr}{}: {e}", h.path))?;
    let code = resp.status().as_u16();
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// Kills an exec process whose exit was not seen when dropped (a timeout or cancellation).
struct ExecGuard(Option<i32>);

impl Drop for ExecGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Run `cmd` inside container `id`; success is exit code 0.
async fn exec(shared: &Arc<Shared>, id: &str, cmd: &[String]) -> Result<(), String> {
    let shown = cmd.join(" ");
    let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("exec {shown:?}: pipe: {e}"))?;
    let err_w = out_w.try_clone().map_err(|e| format!("exec {shown:?}: pipe: {e}"))?;
    let (s, id2, args) = (shared.clone(), id.to_string(), cmd.to_vec());
    let (pid, helper) = tokio::task::spawn_blocking(move || s.runtime.exec(&id2, &args, out_w, err_w)).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    let mut guard = ExecGuard(Some(pid));
    let exit = crate::runtime::wait_exit(helper);
    // The output, up to a bound, until every writer closed it.
    let mut reader = Task::spawn(async move {
        let mut out = Vec::new();
        if let Ok(rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(out_r) {
            let _ = rx.take(OUTPUT_LIMIT as u64).read_to_end(&mut out).await;
        }
        out
    });
    let exit = exit.await.map_err(|_| format!("exec {shown:?}: its exit was lost"))?;
    guard.0 = None;
    // A child that keeps the pipe open must not hold the result back.
    let output = reader.result_within(Duration::from_millis(200)).await.unwrap_or_default();
    if exit.code == 0 {
        return Ok(());
    }
    let output = String::from_utf8_lossy(&output).trim().to_string();
    Err(format!("command {shown:?} exited with {}{}{output}", exit.code, if output.is_empty() { "" } else { ": " }))
}

/// The probes of one container run; dropping this stops them.
pub(crate) struct Probes {
    _tasks: Vec<Task>,
}

impl Probes {
    /// Start `probes` of the run `target`, started at `started`: a startup probe first, the
    /// others once it succeeded. Verdict changes go to `events`.
    pub fn start(shared: &Arc<Shared>, target: &Target, started: Instant, probes: [Option<&ProbeSpec>; 3], events: &mpsc::Sender<Event>) -> Probes {
        let has_startup = probes.iter().flatten().any(|p| p.kind == Kind::Startup);
        let (gate_tx, gate) = watch::channel(!has_startup);
        let mut gate_tx = Some(gate_tx);
        let mut tasks = Vec::new();
        for spec in probes.into_iter().flatten() {
            let opened = if spec.kind == Kind::Startup { gate_tx.take() } else { None };
            let run = ProbeLoop { shared: shared.clone(), target: target.clone(), spec: spec.clone(), started, events: events.clone() };
            tasks.push(Task::spawn(run.run(gate.clone(), opened)));
        }
        Probes { _tasks: tasks }
    }
}

struct ProbeLoop {
    shared: Arc<Shared>,
    target: Target,
    spec: ProbeSpec,
    started: Instant,
    events: mpsc::Sender<Event>,
}

impl ProbeLoop {
    /// Probe every period until the verdict ends this probe's job: a startup probe's first
    /// verdict (opening `gate` on success), a liveness failure; readiness never ends.
    async fn run(self, mut gate: watch::Receiver<bool>, opens: Option<watch::Sender<bool>>) {
        if opens.is_none() && gate.wait_for(|open| *open).await.is_err() {
            // The startup probe failed: the container is being stopped.
            return;
        }
        let first = self.started + self.spec.initial_delay;
        tokio::time::sleep_until(first.into()).await;
        let mut tracker = Tracker::new(&self.spec);
        let mut tick = tokio::time::interval(self.spec.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let result = check(&self.shared, &self.target, &self.spec.action, self.spec.timeout).await;
            if let Err(e) = &result {
                tracing::debug!(id = %self.target.id, probe = self.spec.kind.field(), error = %e, "probe failed");
            }
            let Some(ok) = tracker.observe(result.is_ok()) else { continue };
            if let (Some(g), true) = (&opens, ok) {
                let _ = g.send(true);
            }
            let report = Report::Verdict { kind: self.spec.kind, ok, message: result.err().unwrap_or_default() };
            if self.events.send(Event::Check(self.target.id.clone(), report)).await.is_err() || self.spec.kind != Kind::Readiness {
                return;
            }
        }
    }
}

/// Stop a container run: the preStop hook (bounded by `grace`), SIGTERM, then SIGKILL once
/// `grace` is over (at least 2 s after a hook). The exit reaches the worker as usual.
pub(crate) async fn stop(shared: Arc<Shared>, target: Target, pre_stop: Option<Action>, grace: Duration) {
    let begun = Instant::now();
    let mut left = grace;
    if let Some(hook) = pre_stop {
        if let Err(e) = check(&shared, &target, &hook, grace).await {
            tracing::warn!(id = %target.id, error = %e, "FailedPreStopHook");
        }
        left = grace.saturating_sub(begun.elapsed()).max(MIN_GRACE_AFTER_HOOK);
    }
    if let Err(e) = shared.runtime.kill(&target.id, Signal::SIGTERM, false) {
        tracing::debug!(id = %target.id, error = %e, "SIGTERM");
    }
    tokio::time::sleep(left).await;
    tracing::info!(id = %target.id, grace = grace.as_secs(), "grace period over: SIGKILL");
    if let Err(e) = shared.runtime.kill(&target.id, Signal::SIGKILL, true) {
        tracing::debug!(id = %target.id, error = %e, "SIGKILL");
    }
}
