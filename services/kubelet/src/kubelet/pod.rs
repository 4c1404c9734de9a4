//! One worker per pod (by uid): it owns the pod's sandbox (network, IPC namespace, files,
//! volumes) and containers, starts init containers in order and then the app containers
//! (each after the previous one's postStart hook), runs their probes, restarts by policy
//! with back-off (also after a failed liveness or startup probe or postStart hook), stops
//! gracefully on deletion (preStop hooks within the grace period), and reports status.
//! Every pass re-reads the pod from the watch cache; events only wake it. A worker started
//! by a restarted kubelet takes over what the pod's status says its containers did.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Container, ContainerStatus, EnvVar, Pod, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::Api;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};

use super::plan::{self, Seen};
use super::probe::{Checks, Kind};
use super::prober::{self, Probes, Report, Target, Task};
use super::volumes;
use super::Shared;
use crate::runtime::{self, BindMount, ContainerParams, Exit};

/// A pod is re-synced at least this often.
const RESYNC: Duration = Duration::from_secs(10);
/// A container that ran this long resets its crash back-off.
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// After SIGKILL, how long to wait for exits before deleting regardless.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// A postStart hook that runs longer fails (Kubernetes sets no bound; we bound every wait).
const POST_START_TIMEOUT: Duration = Duration::from_secs(120);
/// The grace period when the pod names none.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// What reaches a pod worker besides wake-ups.
#[derive(Debug)]
pub(crate) enum Event {
    /// Container run `id` exited.
    Exit(String, Exit),
    /// A probe or hook of container run `id` has news.
    Check(String, Report),
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[derive(Clone, Debug, PartialEq)]
enum State {
    Waiting { reason: String, message: String },
    Running { started_at: String },
    Terminated { code: i32, signal: Option<i32>, reason: String, started_at: String, finished_at: String },
}

impl State {
    fn to_json(&self) -> Value {
        match self {
            State::Waiting { reason, message } => {
                let mut w = json!({});
                if !reason.is_empty() {
                    w["reason"] = json!(reason);
                }
                if !message.is_empty() {
                    w["message"] = json!(message);
                }
                json!({"waiting": w})
            }
            State::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            State::Terminated { code, signal, reason, started_at, finished_at } => {
                let mut t = json!({"exitCode": code, "reason": reason, "startedAt": started_at, "finishedAt": finished_at});
                if let Some(s) = signal {
                    t["signal"] = json!(s);
                }
                json!({"terminated": t})
            }
        }
    }
}

/// A running instance of a container.
struct Run {
    id: String,
    cgroup: String,
    dir: PathBuf,
    rootfs: PathBuf,
    started: Instant,
    started_at: String,
    checks: Checks,
    /// The postStart hook finished (or there is none); probes run from then on.
    post_started: bool,
    /// `containerStatuses[].started`: the startup probe succeeded (or there is none).
    startup_done: bool,
    /// `containerStatuses[].ready`.
    ready: bool,
    /// The postStart hook, then the probes; dropping them stops them.
    hook: Option<Task>,
    probes: Option<Probes>,
    /// The stop sequence, once begun, and why the kubelet stopped the container (a failed
    /// probe or hook: it is restarted unless the policy is Never).
    stopping: Option<Task>,
    killed_for: Option<&'static str>,
}

impl Run {
    /// Run `id` in bundle `dir` (root filesystem `dir/rootfs`), running since `started`;
    /// hooks and probes not begun.
    fn new(id: String, dir: PathBuf, cgroup: String, checks: Checks, started: Instant, started_at: String) -> Run {
        Run {
            startup_done: checks.startup.is_none(),
            checks,
            id,
            cgroup,
            rootfs: dir.join("rootfs"),
            dir,
            started,
            started_at,
            post_started: false,
            ready: false,
            hook: None,
            probes: None,
            stopping: None,
            killed_for: None,
        }
    }

    /// The postStart hook is done (or there is none): start the probes. Without a readiness
    /// (and startup) probe the container is ready from now on.
    fn begin_probes(&mut self, shared: &Arc<Shared>, ip: Option<Ipv4Addr>, events: &mpsc::Sender<Event>) {
        self.post_started = true;
        self.hook = None;
        self.ready = self.startup_done && self.checks.readiness.is_none();
        let c = &self.checks;
        self.probes = Some(Probes::start(shared, &Target { id: self.id.clone(), ip }, self.started, [c.startup.as_ref(), c.liveness.as_ref(), c.readiness.as_ref()], events));
    }

    /// Begin the stop sequence (preStop hook, SIGTERM, SIGKILL after `grace`; at once when
    /// `grace` is zero) unless it is under way; the exit arrives as usual.
    fn stop(&mut self, shared: &Arc<Shared>, ip: Option<Ipv4Addr>, grace: Duration, why: Option<&'static str>) {
        if self.stopping.is_some() {
            return;
        }
        self.probes = None;
        self.hook = None;
        self.killed_for = why;
        let hook = self.checks.pre_stop.clone().filter(|_| !grace.is_zero());
        self.stopping = Some(Task::spawn(prober::stop(shared.clone(), Target { id: self.id.clone(), ip }, hook, grace)));
    }
}

/// The pod's `terminationGracePeriodSeconds` (30 s when unset).
fn grace_period(pod: &Pod) -> Duration {
    pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).map_or(DEFAULT_GRACE, |g| Duration::from_secs(g.max(0) as u64))
}

struct Ctr {
    spec: Container,
    init: bool,
    state: State,
    last: Option<State>,
    restarts: u32,
    /// Consecutive crashes (for back-off).
    crashes: u32,
    not_before: Option<Instant>,
    run: Option<Run>,
    /// Finished for good (an init container that succeeded, or an app container not restarted).
    done: bool,
    started_once: bool,
    image_id: String,
    /// A run an earlier kubelet started, still running (or ended while no kubelet was
    /// there), to be taken over once the sandbox is back.
    adopt: Option<(String, runtime::Shim)>,
    /// The status said the startup probe had succeeded (for an adopted run).
    started_reported: bool,
}

impl Ctr {
    fn seen(&self, policy: &str) -> Seen {
        if self.run.is_some() {
            return Seen::Running;
        }
        match (&self.state, &self.last) {
            (State::Terminated { code, .. }, _) => Seen::Exited(*code, !self.done),
            // An init container waiting to be restarted has not succeeded yet.
            (State::Waiting { .. }, Some(State::Terminated { .. })) if self.init => Seen::Waiting,
            (State::Waiting { .. }, Some(State::Terminated { code, .. })) => Seen::Exited(*code, plan::restarts(policy, *code)),
            _ => Seen::Waiting,
        }
    }
}

/// A container as an earlier kubelet left it.
struct Restored {
    state: State,
    last: Option<State>,
    restarts: u32,
    started_once: bool,
    done: bool,
}

/// A reported terminated state as the worker keeps it. Pure.
fn terminated(t: &k8s_openapi::api::core::v1::ContainerStateTerminated) -> State {
    State::Terminated {
        code: t.exit_code,
        signal: t.signal,
        reason: t.reason.clone().unwrap_or_default(),
        started_at: t.started_at.as_ref().map(|x| x.0.to_string()).unwrap_or_default(),
        finished_at: t.finished_at.as_ref().map(|x| x.0.to_string()).unwrap_or_default(),
    }
}

/// What a restarted kubelet takes over from the status an earlier one reported for a
/// container it could not adopt (`fresh`: the state of one that never ran). A container
/// that was running is lost (its shim is gone, and with it its output): it ended as
/// Kubernetes reports a container it lost (137, `ContainerStatusUnknown`) and is restarted
/// unless the policy is Never. Finished containers stay finished. Pure.
fn restore(s: &ContainerStatus, init: bool, policy: &str, fresh: State) -> Restored {
    let restarts = s.restart_count.max(0) as u32;
    let restartable = |code: i32| if init { code != 0 && policy != "Never" } else { plan::restarts(policy, code) };
    let state = s.state.clone().unwrap_or_default();
    let ended = if let Some(t) = &state.terminated {
        Some((terminated(t), t.exit_code))
    } else {
        state.running.as_ref().map(|r| {
            let started_at = r.started_at.as_ref().map(|x| x.0.to_string()).unwrap_or_default();
            (State::Terminated { code: 137, signal: None, reason: "ContainerStatusUnknown".into(), started_at, finished_at: now() }, 137)
        })
    };
    match ended {
        Some((t, code)) if !restartable(code) => Restored { state: t, last: None, restarts, started_once: true, done: true },
        Some((t, _)) => Restored { state: State::Waiting { reason: String::new(), message: String::new() }, last: Some(t), restarts, started_once: true, done: false },
        None => {
            let last = s.last_state.as_ref().and_then(|l| l.terminated.as_ref()).map(terminated);
            Restored { state: fresh, started_once: restarts > 0 || last.is_some(), last, restarts, done: false }
        }
    }
}

/// What a restarted kubelet takes over of a container run it adopts (`id`, from the run's
/// number its restart count): running since it started, the last state as reported. Pure.
fn adopted(prior: Option<&ContainerStatus>, id: &str, a: &runtime::Shim) -> Restored {
    let run_no: u32 = id.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let last = prior.and_then(|s| s.last_state.as_ref()).and_then(|l| l.terminated.as_ref()).map(terminated);
    Restored { state: State::Running { started_at: a.started_at.clone() }, last, restarts: run_no, started_once: true, done: false }
}

struct Sandbox {
    dir: PathBuf,
    ip: Option<Ipv4Addr>,
    netns: Option<PathBuf>,
    ipcns: PathBuf,
    volumes: HashMap<String, volumes::Prepared>,
}

pub(crate) struct Worker {
    shared: Arc<Shared>,
    uid: String,
    ctrs: Vec<Ctr>,
    sandbox: Option<Sandbox>,
    sandbox_error: Option<String>,
    events: mpsc::Sender<Event>,
    reported: Option<Value>,
    transitions: HashMap<String, (String, String)>,
    start_time: Option<String>,
    /// The pod had finished before this worker started (e.g. a kubelet restart): run nothing.
    finished_before: bool,
    /// When the content volumes were last written.
    volumes_at: Instant,
}

/// Run pod `uid` until it is deleted and cleaned up.
pub(crate) async fn run(shared: Arc<Shared>, uid: String, wake: Arc<Notify>) {
    let (tx, mut rx) = mpsc::channel::<Event>(64);
    let mut w = Worker { shared, uid: uid.clone(), ctrs: Vec::new(), sandbox: None, sandbox_error: None, events: tx, reported: None, transitions: HashMap::new(), start_time: None, finished_before: false, volumes_at: Instant::now() };
    loop {
        let pod = w.shared.pod(&uid);
        let next = match &pod {
            None => {
                w.teardown(Duration::ZERO, &mut rx).await;
                break;
            }
            Some(p) if p.metadata.deletion_timestamp.is_some() => {
                let grace = p.metadata.deletion_grace_period_seconds.unwrap_or(30).max(0) as u64;
                w.teardown(Duration::from_secs(grace), &mut rx).await;
                w.report(p).await;
                w.final_delete(p).await;
                break;
            }
            Some(p) => {
                let next = w.sync(p).await;
                w.report(p).await;
                next
            }
        };
        let sleep = next.map_or(RESYNC, |t| t.saturating_duration_since(Instant::now()).min(RESYNC));
        tokio::select! {
            _ = wake.notified() => {}
            Some(ev) = rx.recv() => {
                if let Some(p) = w.shared.pod(&uid) {
                    match ev {
                        Event::Exit(id, exit) => w.on_exit(&p, &id, exit).await,
                        Event::Check(id, report) => w.on_check(&p, &id, report),
                    }
                }
            }
            _ = tokio::time::sleep(sleep) => {}
        }
    }
    w.shared.workers.lock().expect("workers lock").remove(&uid);
    tracing::info!(uid = %uid, "pod worker done");
}

fn pod_key(p: &Pod) -> (String, String) {
    (p.metadata.namespace.clone().unwrap_or_else(|| "default".into()), p.metadata.name.clone().unwrap_or_default())
}

impl Worker {
    fn policy(pod: &Pod) -> String {
        pod.spec.as_ref().and_then(|s| s.restart_policy.clone()).unwrap_or_else(|| "Always".into())
    }

    fn init_ctrs(&mut self, pod: &Pod) {
        if !self.ctrs.is_empty() {
            return;
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let status = pod.status.clone().unwrap_or_default();
        let policy = Self::policy(pod);
        for (init, list) in [(true, spec.init_containers.clone().unwrap_or_default()), (false, spec.containers.clone())] {
            let reported = if init { &status.init_container_statuses } else { &status.container_statuses };
            for c in list {
                let prior = reported.as_ref().and_then(|l| l.iter().find(|s| s.name == c.name));
                let fresh = State::Waiting { reason: if init { "PodInitializing".into() } else { "ContainerCreating".into() }, message: String::new() };
                let adopt = self.shared.take_adoptable(&self.uid, &c.name);
                let r = match (&adopt, prior) {
                    (Some((id, a)), _) => {
                        tracing::info!(container = %c.name, id = %id, running = a.pid.is_some(), "adopting a container of an earlier kubelet");
                        adopted(prior, id, a)
                    }
                    (None, Some(s)) => restore(s, init, &policy, fresh),
                    (None, None) => Restored { state: fresh, last: None, restarts: 0, started_once: false, done: false },
                };
                if adopt.is_none() && prior.is_some_and(|s| s.state.as_ref().is_some_and(|st| st.running.is_some())) {
                    tracing::info!(container = %c.name, restart = !r.done, "container of an earlier kubelet was running and is gone");
                }
                self.ctrs.push(Ctr {
                    init,
                    state: r.state,
                    last: r.last,
                    restarts: r.restarts,
                    crashes: 0,
                    not_before: None,
                    run: None,
                    done: r.done,
                    started_once: r.started_once,
                    image_id: prior.map(|s| s.image_id.clone()).unwrap_or_default(),
                    started_reported: prior.and_then(|s| s.started).unwrap_or(false),
                    adopt,
                    spec: c,
                });
            }
        }
        for c in status.conditions.iter().flatten() {
            if let Some(t) = &c.last_transition_time {
                self.transitions.insert(c.type_.clone(), (c.status.clone(), t.0.to_string()));
            }
        }
        let phase = status.phase.unwrap_or_default();
        self.finished_before = phase == "Succeeded" || phase == "Failed";
        if self.finished_before {
            for c in &mut self.ctrs {
                if let Some((id, _)) = c.adopt.take() {
                    self.shared.runtime.delete(&id);
                }
            }
        }
        self.start_time = status.start_time.map(|t| t.0.to_string());
    }

    fn pod_dir(&self) -> PathBuf {
        self.shared.cfg.state_dir.join("pods").join(&self.uid)
    }

    fn log_dir(&self, pod: &Pod) -> PathBuf {
        let (ns, name) = pod_key(pod);
        self.shared.cfg.state_dir.join("logs").join(format!("{ns}_{name}_{}", self.uid))
    }

    fn pod_cgroup(&self) -> String {
        format!("/{}/pod{}", self.shared.cfg.cgroup_parent, self.uid)
    }

    /// One pass: sandbox, then init containers in order, then app containers. Returns when
    /// the next timed action (a back-off ending) is due.
    async fn sync(&mut self, pod: &Pod) -> Option<Instant> {
        self.init_ctrs(pod);
        if self.finished_before {
            return None;
        }
        if self.start_time.is_none() {
            self.start_time = Some(now());
        }
        if self.sandbox.is_none() {
            match self.make_sandbox(pod).await {
                Ok(s) => {
                    self.sandbox = Some(s);
                    self.sandbox_error = None;
                }
                Err(e) => {
                    tracing::warn!(uid = %self.uid, error = %e, "pod sandbox");
                    self.sandbox_error = Some(e);
                    return Some(Instant::now() + Duration::from_secs(5));
                }
            }
        }
        self.adopt_runs(pod);
        let now_i = Instant::now();
        let refresh = (volumes::has_contents(pod) && self.ctrs.iter().any(|c| c.run.is_some())).then(|| self.volumes_at + self.shared.cfg.volume_refresh);
        if refresh.is_some_and(|t| t <= now_i) {
            self.volumes_at = now_i;
            if let Some(sb) = &self.sandbox {
                if let Err(e) = volumes::refresh(&self.shared.client, pod, &sb.dir).await {
                    tracing::warn!(uid = %self.uid, error = %e, "volume refresh");
                }
            }
        }
        let refresh = refresh.map(|_| self.volumes_at + self.shared.cfg.volume_refresh);
        let next = self.sync_containers(pod, now_i).await;
        match (next, refresh) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    async fn sync_containers(&mut self, pod: &Pod, now_i: Instant) -> Option<Instant> {
        // Init containers: one at a time, in order; a failed one (not restarted) ends the pod.
        for i in 0..self.ctrs.len() {
            let c = &self.ctrs[i];
            if !c.init {
                continue;
            }
            if c.done {
                if matches!(c.state, State::Terminated { code: 0, .. }) {
                    continue;
                }
                return None;
            }
            if c.run.is_some() {
                return None;
            }
            if let Some(t) = c.not_before.filter(|t| *t > now_i) {
                return Some(t);
            }
            self.start(pod, i).await;
            return self.ctrs[i].not_before.filter(|t| *t > Instant::now());
        }
        let mut next: Option<Instant> = None;
        for i in 0..self.ctrs.len() {
            let c = &self.ctrs[i];
            if c.run.as_ref().is_some_and(|r| !r.post_started) {
                // As in Kubernetes, the next container starts after this one's postStart hook.
                break;
            }
            if c.init || c.done || c.run.is_some() {
                continue;
            }
            if let Some(t) = c.not_before.filter(|t| *t > now_i) {
                next = Some(next.map_or(t, |n| n.min(t)));
                continue;
            }
            self.start(pod, i).await;
            if let Some(t) = self.ctrs[i].not_before.filter(|t| *t > Instant::now()) {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        next
    }

    async fn make_sandbox(&mut self, pod: &Pod) -> Result<Sandbox, String> {
        let dir = self.pod_dir();
        std::fs::create_dir_all(dir.join("etc")).map_err(|e| format!("{}: {e}", dir.display()))?;
        let spec = pod.spec.clone().unwrap_or_default();
        let host_network = spec.host_network.unwrap_or(false);
        let (ip, netns) = if host_network {
            (Some(self.shared.cfg.node_ip), None)
        } else {
            let ip = self.shared.ipam.lock().await.allocate(&self.uid).map_err(|e| e.to_string())?;
            let pn = self.shared.net.add_pod(&self.uid, ip).await.map_err(|e| e.to_string())?;
            (Some(pn.ip), Some(pn.netns_path))
        };
        let ipcns = dir.join("ipc");
        if !runtime::is_mounted(&ipcns) {
            runtime::new_ipc_namespace(&ipcns).map_err(|e| e.to_string())?;
        }
        let (ns, name) = pod_key(pod);
        let hostname = spec.hostname.clone().unwrap_or_else(|| name.clone());
        let write = |f: &str, s: String| std::fs::write(dir.join("etc").join(f), s).map_err(|e| format!("{f}: {e}"));
        write("hosts", crate::net::hosts_file(&hostname, ip))?;
        write("hostname", format!("{hostname}\n"))?;
        let resolv = match spec.dns_policy.as_deref() {
            Some("Default") => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            _ => crate::net::resolv_conf(&self.shared.cfg.cluster_dns, &ns, &self.shared.cfg.cluster_domain),
        };
        write("resolv.conf", resolv)?;
        let cfg = &self.shared.cfg;
        let volumes = volumes::prepare(&self.shared.client, pod, &dir, &cfg.node_name, &cfg.state_dir.join(volumes::CLAIMS_DIR)).await?;
        Ok(Sandbox { dir, ip, netns, ipcns, volumes })
    }

    /// Pull, prepare and start container `i`. Failures leave it waiting with a reason and a
    /// back-off.
    async fn start(&mut self, pod: &Pod, i: usize) {
        let backoff = self.shared.backoff;
        let fail = |c: &mut Ctr, reason: &str, message: String| {
            tracing::warn!(container = %c.spec.name, reason, %message, "container not started");
            c.crashes += 1;
            c.not_before = Some(Instant::now() + backoff.delay(c.crashes + 1).max(Duration::from_secs(1)));
            c.state = State::Waiting { reason: reason.into(), message };
        };
        let image_name = self.ctrs[i].spec.image.clone().unwrap_or_default();
        let policy = self.ctrs[i].spec.image_pull_policy.clone();
        let creds = self.pull_credentials(pod).await;
        let image = match self.shared.images.ensure(&image_name, policy.as_deref(), &creds).await {
            Ok(img) => img,
            Err(e) => {
                let reason = if matches!(self.ctrs[i].state, State::Waiting { ref reason, .. } if reason == "ErrImagePull" || reason == "ImagePullBackOff") { "ImagePullBackOff" } else { "ErrImagePull" };
                fail(&mut self.ctrs[i], reason, e.to_string());
                return;
            }
        };
        let env = match self.resolve_env(pod, &self.ctrs[i].spec.clone()).await {
            Ok(e) => e,
            Err(e) => {
                fail(&mut self.ctrs[i], "CreateContainerConfigError", e);
                return;
            }
        };
        // Init containers have no probes or hooks (Kubernetes refuses them there).
        let checks = match self.checks(i) {
            Ok(c) => c,
            Err(e) => {
                fail(&mut self.ctrs[i], "CreateContainerConfigError", e);
                return;
            }
        };
        let Some(sb) = &self.sandbox else { return };
        let pod_ip = sb.ip;
        let c = &self.ctrs[i];
        let run_no = if c.started_once { c.restarts + 1 } else { 0 };
        let id = format!("{}-{}-{}", self.uid, c.spec.name, run_no);
        let cdir = sb.dir.join("containers").join(&c.spec.name);
        let _ = std::fs::remove_dir_all(&cdir);
        let rootfs = cdir.join("rootfs");
        let lower: Vec<PathBuf> = image.layers.iter().rev().map(|l| self.shared.images.layer_dir(l)).collect();
        if let Err(e) = runtime::mount_overlay(&lower, &cdir.join("upper"), &cdir.join("work"), &rootfs) {
            fail(&mut self.ctrs[i], "CreateContainerError", e.to_string());
            return;
        }
        let params = match self.params(pod, i, &image, &env, &rootfs, &id) {
            Ok(p) => p,
            Err(e) => {
                runtime::unmount(&rootfs);
                fail(&mut self.ctrs[i], "CreateContainerConfigError", e);
                return;
            }
        };
        let spec = runtime::spec::oci_spec(&params);
        let log_path = self.log_dir(pod).join(&self.ctrs[i].spec.name).join(format!("{run_no}.log"));
        if let Err(e) = std::fs::create_dir_all(log_path.parent().unwrap_or(Path::new("/"))) {
            runtime::unmount(&rootfs);
            fail(&mut self.ctrs[i], "CreateContainerError", format!("log directory: {e}"));
            return;
        }
        let pipes = (nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC), nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC));
        let output = match pipes {
            (Ok(stdout), Ok(stderr)) => runtime::Output { stdout, stderr },
            _ => {
                runtime::unmount(&rootfs);
                fail(&mut self.ctrs[i], "CreateContainerError", "pipes".into());
                return;
            }
        };
        let shared = self.shared.clone();
        let bundle = cdir.clone();
        let id2 = id.clone();
        let log_max = self.shared.cfg.log_max_bytes;
        let started = tokio::task::spawn_blocking(move || shared.runtime.run(&id2, &bundle, &spec, output, &log_path, log_max)).await;
        let started = match started {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                runtime::unmount(&rootfs);
                self.shared.runtime.remove_cgroup(&params.cgroups_path);
                fail(&mut self.ctrs[i], "RunContainerError", e.to_string());
                return;
            }
            Err(e) => {
                runtime::unmount(&rootfs);
                fail(&mut self.ctrs[i], "RunContainerError", e.to_string());
                return;
            }
        };
        let (pid, shim) = started;
        self.watch_exit(&id, shim.wait());
        let c = &mut self.ctrs[i];
        if c.started_once {
            c.restarts += 1;
        }
        c.started_once = true;
        c.image_id = format!("{}@{}", image.name.split(['@']).next().unwrap_or("").rsplit_once(':').map_or(image.name.as_str(), |(n, _)| n), image.digest);
        let started_at = shim.started_at;
        tracing::info!(container = %c.spec.name, id = %id, pid, shim = shim.pid, "container started");
        c.state = State::Running { started_at: started_at.clone() };
        c.not_before = None;
        let post_start = checks.post_start.clone();
        let mut run = Run::new(id, cdir, params.cgroups_path, checks, Instant::now(), started_at);
        match post_start {
            None => run.begin_probes(&self.shared, pod_ip, &self.events),
            Some(hook) => {
                let (shared, events, target) = (self.shared.clone(), self.events.clone(), Target { id: run.id.clone(), ip: pod_ip });
                run.hook = Some(Task::spawn(async move {
                    let r = prober::check(&shared, &target, &hook, POST_START_TIMEOUT).await;
                    let _ = events.send(Event::Check(target.id, Report::PostStart(r))).await;
                }));
            }
        }
        c.run = Some(run);
    }

    /// Container `i`'s probes and hooks (none for init containers: Kubernetes refuses them
    /// there), errors naming the field.
    fn checks(&self, i: usize) -> Result<Checks, String> {
        if self.ctrs[i].init {
            return Ok(Checks::default());
        }
        let index = self.ctrs[..i].iter().filter(|c| !c.init).count();
        Checks::of(&self.ctrs[i].spec, &format!("spec.containers[{index}]")).map_err(|e| e.to_string())
    }

    /// Deliver the exit of run `id` (when its shim ends) as an event.
    fn watch_exit(&self, id: &str, exit: tokio::sync::oneshot::Receiver<Exit>) {
        let (tx, id) = (self.events.clone(), id.to_string());
        tokio::spawn(async move {
            if let Ok(e) = exit.await {
                let _ = tx.send(Event::Exit(id, e)).await;
            }
        });
    }

    /// Take over the runs an earlier kubelet left (the sandbox is back): their probes start
    /// again (readiness from not ready, as after any kubelet restart), their exits are
    /// watched; one that ended meanwhile is handled as an exit at once.
    fn adopt_runs(&mut self, pod: &Pod) {
        let ip = self.pod_ip();
        let pod_cgroup = self.pod_cgroup();
        for i in 0..self.ctrs.len() {
            let Some((id, a)) = self.ctrs[i].adopt.take() else { continue };
            // They parsed when the run started.
            let checks = self.checks(i).unwrap_or_default();
            let c = &mut self.ctrs[i];
            let since = chrono::DateTime::parse_from_rfc3339(&a.started_at).ok().and_then(|t| (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).to_std().ok()).unwrap_or_default();
            let started = Instant::now().checked_sub(since).unwrap_or_else(Instant::now);
            let mut run = Run::new(id.clone(), a.bundle.clone(), format!("{pod_cgroup}/{id}"), checks, started, a.started_at.clone());
            run.startup_done |= c.started_reported;
            if a.pid.is_some() {
                run.begin_probes(&self.shared, ip, &self.events);
            }
            c.run = Some(run);
            tracing::info!(pod = %pod_key(pod).1, container = %c.spec.name, id = %id, "container adopted");
            self.watch_exit(&id, a.wait());
        }
    }

    fn pod_ip(&self) -> Option<Ipv4Addr> {
        self.sandbox.as_ref().and_then(|s| s.ip)
    }

    /// A probe or hook of container run `id` has news: readiness, started, or a failure
    /// that stops the container (to be restarted by policy).
    fn on_check(&mut self, pod: &Pod, id: &str, report: Report) {
        let (_, name) = pod_key(pod);
        let policy = Self::policy(pod);
        let grace = grace_period(pod);
        let (shared, events, ip) = (self.shared.clone(), self.events.clone(), self.pod_ip());
        let Some(c) = self.ctrs.iter_mut().find(|c| c.run.as_ref().is_some_and(|r| r.id == id)) else { return };
        let run = c.run.as_mut().expect("found by its run");
        if run.stopping.is_some() {
            return;
        }
        let then = if policy == "Never" { "will be stopped" } else { "will be restarted" };
        match report {
            Report::PostStart(Ok(())) => run.begin_probes(&shared, ip, &events),
            Report::PostStart(Err(e)) => {
                tracing::warn!(pod = %name, container = %c.spec.name, error = %e, "FailedPostStartHook: container {} {then}", c.spec.name);
                run.stop(&shared, ip, grace, Some("postStart"));
            }
            Report::Verdict { kind: Kind::Readiness, ok, message } => {
                tracing::info!(pod = %name, container = %c.spec.name, ready = ok, %message, "readiness changed");
                run.ready = ok;
            }
            Report::Verdict { kind: Kind::Startup, ok: true, .. } => {
                run.startup_done = true;
                run.ready = run.checks.readiness.is_none();
            }
            Report::Verdict { kind, ok: false, message } => {
                tracing::warn!(pod = %name, container = %c.spec.name, %message, "Unhealthy: container {} failed {} probe, {then}", c.spec.name, kind.field());
                let probe = if kind == Kind::Startup { &run.checks.startup } else { &run.checks.liveness };
                let grace = probe.as_ref().and_then(|p| p.termination_grace).unwrap_or(grace);
                run.stop(&shared, ip, grace, Some(kind.field()));
            }
            Report::Verdict { .. } => {}
        }
    }

    /// Container run `id` exited: record it, clean up its instance, decide on a restart.
    async fn on_exit(&mut self, pod: &Pod, id: &str, exit: Exit) {
        let policy = Self::policy(pod);
        let backoff = self.shared.backoff;
        let Some(c) = self.ctrs.iter_mut().find(|c| c.run.as_ref().is_some_and(|r| r.id == id)) else { return };
        let run = c.run.take().expect("found by its run");
        let oom = self.shared.runtime.oom_killed(&run.cgroup);
        let shared = self.shared.clone();
        let rid = run.id.clone();
        let _ = tokio::task::spawn_blocking(move || shared.runtime.delete(&rid)).await;
        runtime::unmount(&run.rootfs);
        let _ = std::fs::remove_dir_all(&run.dir);
        // A container whose main process outlived an OOM kill of a child and exited 0 completed.
        let reason = if exit.code == 0 { "Completed" } else if oom { "OOMKilled" } else { "Error" };
        tracing::info!(container = %c.spec.name, id, code = exit.code, reason, killed_for = run.killed_for.unwrap_or(""), "container exited");
        let term = State::Terminated { code: exit.code, signal: exit.signal, reason: reason.into(), started_at: run.started_at.clone(), finished_at: now() };
        // A container the kubelet stopped for a failed probe or hook restarts unless Never.
        let restart = if c.init { exit.code != 0 && policy != "Never" } else if run.killed_for.is_some() { policy != "Never" } else { plan::restarts(&policy, exit.code) };
        if c.init && exit.code == 0 {
            c.done = true;
            c.state = term;
            return;
        }
        if !restart {
            c.done = true;
            c.state = term;
            return;
        }
        if run.started.elapsed() >= BACKOFF_RESET {
            c.crashes = 0;
        }
        c.crashes += 1;
        let delay = backoff.delay(c.crashes);
        c.last = Some(term);
        c.not_before = Some(Instant::now() + delay);
        c.state = if delay.is_zero() {
            State::Waiting { reason: String::new(), message: String::new() }
        } else {
            let (_, name) = pod_key(pod);
            State::Waiting { reason: "CrashLoopBackOff".into(), message: format!("back-off {}s restarting failed container={} pod={name}", delay.as_secs(), c.spec.name) }
        };
    }

    async fn pull_credentials(&self, pod: &Pod) -> HashMap<String, crate::image::Credentials> {
        let (ns, _) = pod_key(pod);
        let names: Vec<String> = pod.spec.as_ref().and_then(|s| s.image_pull_secrets.clone()).unwrap_or_default().into_iter().map(|r| r.name).collect();
        let api: Api<Secret> = Api::namespaced(self.shared.client.clone(), &ns);
        let mut secrets = Vec::new();
        for n in names {
            if let Ok(Some(s)) = api.get_opt(&n).await {
                secrets.push(s);
            }
        }
        volumes::docker_credentials(&secrets)
    }

    /// The container's environment: envFrom, then env (literal, configMapKeyRef,
    /// secretKeyRef, fieldRef), with `$(VAR)` expanded against what came before.
    async fn resolve_env(&self, pod: &Pod, c: &Container) -> Result<Vec<(String, String)>, String> {
        let (ns, _) = pod_key(pod);
        let cms: Api<ConfigMap> = Api::namespaced(self.shared.client.clone(), &ns);
        let secrets: Api<Secret> = Api::namespaced(self.shared.client.clone(), &ns);
        let mut cm_cache: HashMap<String, Option<ConfigMap>> = HashMap::new();
        let mut secret_cache: HashMap<String, Option<Secret>> = HashMap::new();
        let mut out: Vec<(String, String)> = Vec::new();
        let set = |out: &mut Vec<(String, String)>, k: String, v: String| match out.iter_mut().find(|(ek, _)| *ek == k) {
            Some(e) => e.1 = v,
            None => out.push((k, v)),
        };
        for from in c.env_from.clone().unwrap_or_default() {
            let prefix = from.prefix.clone().unwrap_or_default();
            if let Some(r) = &from.config_map_ref {
                let cm = get_cached(&cms, &mut cm_cache, &r.name).await?;
                match cm {
                    Some(cm) => cm.data.unwrap_or_default().into_iter().for_each(|(k, v)| set(&mut out, format!("{prefix}{k}"), v)),
                    None if r.optional.unwrap_or(false) => {}
                    None => return Err(format!("configmap \"{}\" not found", r.name)),
                }
            }
            if let Some(r) = &from.secret_ref {
                match get_cached(&secrets, &mut secret_cache, &r.name).await? {
                    Some(s) => volumes::secret_data(&s).into_iter().for_each(|(k, v)| set(&mut out, format!("{prefix}{k}"), String::from_utf8_lossy(&v).into_owned())),
                    None if r.optional.unwrap_or(false) => {}
                    None => return Err(format!("secret \"{}\" not found", r.name)),
                }
            }
        }
        for e in c.env.clone().unwrap_or_default() {
            let EnvVar { name, value, value_from } = e;
            let v = match (value, value_from) {
                (Some(v), _) => {
                    let so_far: HashMap<String, String> = out.iter().cloned().collect();
                    Some(plan::expand(&v, &so_far))
                }
                (None, None) => Some(String::new()),
                (None, Some(src)) => {
                    if let Some(r) = src.config_map_key_ref {
                        match get_cached(&cms, &mut cm_cache, &r.name).await? {
                            Some(cm) => match cm.data.as_ref().and_then(|d| d.get(&r.key)) {
                                Some(v) => Some(v.clone()),
                                None if r.optional.unwrap_or(false) => None,
                                None => return Err(format!("key {:?} not found in configmap \"{}\"", r.key, r.name)),
                            },
                            None if r.optional.unwrap_or(false) => None,
                            None => return Err(format!("configmap \"{}\" not found", r.name)),
                        }
                    } else if let Some(r) = src.secret_key_ref {
                        match get_cached(&secrets, &mut secret_cache, &r.name).await? {
                            Some(s) => match volumes::secret_data(&s).into_iter().find(|(k, _)| *k == r.key) {
                                Some((_, v)) => Some(String::from_utf8_lossy(&v).into_owned()),
                                None if r.optional.unwrap_or(false) => None,
                                None => return Err(format!("key {:?} not found in secret \"{}\"", r.key, r.name)),
                            },
                            None if r.optional.unwrap_or(false) => None,
                            None => return Err(format!("secret \"{}\" not found", r.name)),
                        }
                    } else if let Some(f) = src.field_ref {
                        Some(self.field(pod, &f.field_path)?)
                    } else if let Some(r) = src.resource_field_ref {
                        let res = c.resources.clone().unwrap_or_default();
                        let (kind, what) = r.resource.split_once('.').ok_or_else(|| format!("resource {:?}", r.resource))?;
                        let q = if kind == "limits" { res.limits } else { res.requests }.and_then(|m| m.get(what).cloned());
                        Some(match (what, q) {
                            ("cpu", Some(q)) => plan::parse_millicores(&q.0).map(|m| ((m + 999) / 1000).to_string()).unwrap_or_default(),
                            ("memory", Some(q)) => plan::parse_bytes(&q.0).map(|b| b.to_string()).unwrap_or_default(),
                            (_, Some(q)) => q.0,
                            (_, None) => "0".into(),
                        })
                    } else {
                        None
                    }
                }
            };
            if let Some(v) = v {
                set(&mut out, name, v);
            }
        }
        Ok(out)
    }

    /// A downward-API field of the pod.
    fn field(&self, pod: &Pod, path: &str) -> Result<String, String> {
        let m = &pod.metadata;
        let sb = self.sandbox.as_ref();
        Ok(match path {
            "metadata.name" => m.name.clone().unwrap_or_default(),
            "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
            "metadata.uid" => m.uid.clone().unwrap_or_default(),
            "spec.nodeName" => self.shared.cfg.node_name.clone(),
            "spec.serviceAccountName" => pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
            "status.podIP" => sb.and_then(|s| s.ip).map(|i| i.to_string()).unwrap_or_default(),
            "status.hostIP" => self.shared.cfg.node_ip.to_string(),
            p => {
                let key = |prefix: &str| p.strip_prefix(prefix).and_then(|r| r.strip_suffix("']")).map(str::to_string);
                if let Some(k) = key("metadata.labels['") {
                    m.labels.as_ref().and_then(|l| l.get(&k).cloned()).unwrap_or_default()
                } else if let Some(k) = key("metadata.annotations['") {
                    m.annotations.as_ref().and_then(|l| l.get(&k).cloned()).unwrap_or_default()
                } else {
                    return Err(format!("unsupported fieldRef {p:?}"));
                }
            }
        })
    }

    fn params(&self, pod: &Pod, i: usize, image: &crate::image::Image, env: &[(String, String)], rootfs: &Path, id: &str) -> Result<ContainerParams, String> {
        let sb = self.sandbox.as_ref().ok_or("no sandbox")?;
        let c = &self.ctrs[i].spec;
        let spec = pod.spec.clone().unwrap_or_default();
        let merged = plan::merge_env(&image.config.env, env);
        let env_map: HashMap<String, String> = merged.iter().cloned().collect();
        let args = plan::argv(c.command.as_deref().unwrap_or(&[]), c.args.as_deref().unwrap_or(&[]), &image.config, &env_map);
        if args.is_empty() {
            return Err("no command: neither the container nor the image names one".into());
        }
        let psc = spec.security_context.clone().unwrap_or_default();
        let sc = c.security_context.clone().unwrap_or_default();
        let read = |f: &str| std::fs::read_to_string(rootfs.join(f)).unwrap_or_default();
        let (img_uid, img_gid) = plan::resolve_user(&image.config.user, &read("etc/passwd"), &read("etc/group")).ok_or_else(|| format!("image user {:?} not found in the image", image.config.user))?;
        let uid = sc.run_as_user.or(psc.run_as_user).map_or(img_uid, |u| u as u32);
        let gid = sc.run_as_group.or(psc.run_as_group).map_or(if sc.run_as_user.or(psc.run_as_user).is_some() && image.config.user.is_empty() { 0 } else { img_gid }, |g| g as u32);
        if sc.run_as_non_root.or(psc.run_as_non_root).unwrap_or(false) && uid == 0 {
            return Err("container has runAsNonRoot and would run as root".into());
        }
        let mut gids: Vec<u32> = psc.supplemental_groups.clone().unwrap_or_default().into_iter().map(|g| g as u32).collect();
        if let Some(fs) = psc.fs_group {
            gids.push(fs as u32);
        }
        let res = c.resources.clone().unwrap_or_default();
        let limit = |k: &str| res.limits.as_ref().and_then(|m| m.get(k)).map(|q| q.0.clone());
        let request = |k: &str| res.requests.as_ref().and_then(|m| m.get(k)).map(|q| q.0.clone());
        let caps = sc.capabilities.clone().unwrap_or_default();
        let mut mounts = vec![
            BindMount { source: sb.dir.join("etc/hosts"), destination: "/etc/hosts".into(), readonly: false },
            BindMount { source: sb.dir.join("etc/resolv.conf"), destination: "/etc/resolv.conf".into(), readonly: false },
            BindMount { source: sb.dir.join("etc/hostname"), destination: "/etc/hostname".into(), readonly: false },
        ];
        for vm in c.volume_mounts.clone().unwrap_or_default() {
            let v = sb.volumes.get(&vm.name).ok_or_else(|| format!("volumeMount {:?} names no volume", vm.name))?;
            let mut source = v.path.clone();
            if let Some(sp) = vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
                if sp.starts_with('/') || sp.split('/').any(|p| p == "..") {
                    return Err(format!("invalid subPath {sp:?}"));
                }
                source = source.join(sp);
                if !source.exists() {
                    std::fs::create_dir_all(&source).map_err(|e| format!("subPath {sp}: {e}"))?;
                }
            }
            mounts.push(BindMount { source, destination: vm.mount_path.clone(), readonly: v.readonly || vm.read_only.unwrap_or(false) });
        }
        let hostname = spec.hostname.clone().unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default());
        Ok(ContainerParams {
            rootfs: rootfs.to_path_buf(),
            args,
            env: merged.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd: c.working_dir.clone().filter(|w| !w.is_empty()).unwrap_or_else(|| image.config.working_dir.clone()),
            uid,
            gid,
            additional_gids: gids,
            hostname,
            netns: sb.netns.clone(),
            ipcns: Some(sb.ipcns.clone()),
            readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
            privileged: sc.privileged.unwrap_or(false),
            cap_add: caps.add.unwrap_or_default(),
            cap_drop: caps.drop.unwrap_or_default(),
            memory_limit: limit("memory").and_then(|q| plan::parse_bytes(&q)),
            limit_swap: self.shared.runtime.swap_accounting(),
            cpu_limit_millis: limit("cpu").and_then(|q| plan::parse_millicores(&q)),
            cpu_request_millis: request("cpu").or(limit("cpu")).and_then(|q| plan::parse_millicores(&q)),
            pids_limit: Some(self.shared.cfg.pids_limit),
            nofile: self.shared.runtime.nofile(),
            cgroups_path: format!("{}/{id}", self.pod_cgroup()),
            cgroup_ns: self.shared.runtime.cgroups == runtime::CgroupLayout::Unified,
            mounts,
        })
    }

    /// Stop every container (preStop hooks, SIGTERM, SIGKILL when `grace` is over, all at
    /// once) and remove everything the pod had.
    async fn teardown(&mut self, grace: Duration, rx: &mut mpsc::Receiver<Event>) {
        if self.ctrs.iter().any(|c| c.run.is_some()) {
            tracing::info!(uid = %self.uid, grace = grace.as_secs(), "stopping pod");
            let (shared, ip) = (self.shared.clone(), self.pod_ip());
            for run in self.ctrs.iter_mut().filter_map(|c| c.run.as_mut()) {
                run.stop(&shared, ip, grace, None);
            }
            // The stop sequences SIGKILL at the end of the grace period; this bounds the wait
            // for their exits.
            let deadline = Instant::now() + grace + KILL_WAIT;
            while self.ctrs.iter().any(|c| c.run.is_some()) {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, rx.recv()).await {
                    Ok(Some(Event::Exit(id, exit))) => self.stopped(&id, exit).await,
                    Ok(Some(Event::Check(..))) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            // Whatever did not report its exit: delete (SIGKILL) regardless.
            let left: Vec<Run> = self.ctrs.iter_mut().filter_map(|c| c.run.take()).collect();
            for r in left {
                let shared = self.shared.clone();
                let id = r.id.clone();
                let _ = tokio::task::spawn_blocking(move || shared.runtime.delete(&id)).await;
                runtime::unmount(&r.rootfs);
            }
        }
        self.cleanup().await;
    }

    /// A container stopped during teardown.
    async fn stopped(&mut self, id: &str, exit: Exit) {
        let Some(c) = self.ctrs.iter_mut().find(|c| c.run.as_ref().is_some_and(|r| r.id == id)) else { return };
        let run = c.run.take().expect("found by its run");
        let shared = self.shared.clone();
        let rid = run.id.clone();
        let _ = tokio::task::spawn_blocking(move || shared.runtime.delete(&rid)).await;
        runtime::unmount(&run.rootfs);
        c.state = State::Terminated { code: exit.code, signal: exit.signal, reason: if exit.code == 0 { "Completed".into() } else { "Error".into() }, started_at: run.started_at, finished_at: now() };
        c.done = true;
    }

    /// Remove the sandbox: mounts, IPC and network namespaces, address, cgroup, files.
    async fn cleanup(&mut self) {
        let dir = self.pod_dir();
        super::unmount_all(&dir);
        if let Err(e) = self.shared.net.remove_pod(&self.uid).await {
            tracing::warn!(uid = %self.uid, error = %e, "removing the pod network");
        }
        if let Err(e) = self.shared.ipam.lock().await.release(&self.uid) {
            tracing::warn!(uid = %self.uid, error = %e, "releasing the pod address");
        }
        self.shared.runtime.remove_cgroup(&self.pod_cgroup());
        let _ = std::fs::remove_dir_all(&dir);
        self.sandbox = None;
    }

    async fn final_delete(&self, pod: &Pod) {
        let (ns, name) = pod_key(pod);
        let _ = std::fs::remove_dir_all(self.log_dir(pod));
        let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), &ns);
        let dp = DeleteParams { grace_period_seconds: Some(0), preconditions: Some(Preconditions { uid: Some(self.uid.clone()), resource_version: None }), ..Default::default() };
        match api.delete(&name, &dp).await {
            Ok(_) => tracing::info!(pod = %format!("{ns}/{name}"), "pod deleted"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "final delete"),
        }
    }

    /// The status as the apiserver should see it.
    fn status(&mut self, pod: &Pod) -> Value {
        let policy = Self::policy(pod);
        let inits: Vec<Seen> = self.ctrs.iter().filter(|c| c.init).map(|c| if c.done && matches!(c.state, State::Terminated { code: 0, .. }) { Seen::Exited(0, false) } else { c.seen(&policy) }).collect();
        let apps: Vec<Seen> = self.ctrs.iter().filter(|c| !c.init).map(|c| c.seen(&policy)).collect();
        let phase = if self.finished_before { pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default() } else { plan::phase(&inits, &apps).to_string() };
        let status_of = |c: &Ctr| {
            let mut s = json!({
                "name": c.spec.name,
                "image": c.spec.image.clone().unwrap_or_default(),
                "imageID": c.image_id,
                "ready": !c.init && c.run.as_ref().is_some_and(|r| r.ready),
                "started": c.run.as_ref().is_some_and(|r| r.startup_done),
                "restartCount": c.restarts,
                "state": c.state.to_json(),
                "lastState": c.last.as_ref().map_or(json!({}), State::to_json),
            });
            if let Some(r) = &c.run {
                s["containerID"] = json!(format!("kapp://{}", r.id));
            }
            s
        };
        let initialized = inits.iter().all(|s| matches!(s, Seen::Exited(0, _)));
        let unready: Vec<&str> = self.ctrs.iter().filter(|c| !c.init && !c.run.as_ref().is_some_and(|r| r.ready)).map(|c| c.spec.name.as_str()).collect();
        let ready = !apps.is_empty() && unready.is_empty();
        let unready = format!("containers with unready status: [{}]", unready.join(" "));
        let mut conds = vec![("PodScheduled", true, "", String::new()), ("Initialized", initialized, if initialized { "" } else { "ContainersNotInitialized" }, String::new())];
        conds.push(("ContainersReady", ready, if ready { "" } else { "ContainersNotReady" }, if ready { String::new() } else { unready.clone() }));
        conds.push(("Ready", ready, if ready { "" } else { "ContainersNotReady" }, if ready { String::new() } else { unready }));
        let conditions: Vec<Value> = conds
            .into_iter()
            .map(|(t, ok, reason, message)| {
                let st = if ok { "True" } else { "False" }.to_string();
                let entry = self.transitions.entry(t.to_string()).or_insert_with(|| (st.clone(), now()));
                if entry.0 != st {
                    *entry = (st.clone(), now());
                }
                let mut c = json!({"type": t, "status": st, "lastTransitionTime": entry.1});
                if !reason.is_empty() {
                    c["reason"] = json!(reason);
                }
                if !message.is_empty() {
                    c["message"] = json!(message);
                }
                c
            })
            .collect();
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.shared.cfg.node_ip.to_string(),
            "hostIPs": [{"ip": self.shared.cfg.node_ip.to_string()}],
            "initContainerStatuses": self.ctrs.iter().filter(|c| c.init).map(status_of).collect::<Vec<_>>(),
            "containerStatuses": self.ctrs.iter().filter(|c| !c.init).map(status_of).collect::<Vec<_>>(),
            "qosClass": qos(pod),
        });
        if let Some(t) = &self.start_time {
            status["startTime"] = json!(t);
        }
        if let Some(ip) = self.sandbox.as_ref().and_then(|s| s.ip) {
            status["podIP"] = json!(ip.to_string());
            status["podIPs"] = json!([{"ip": ip.to_string()}]);
        }
        if let Some(e) = &self.sandbox_error {
            status["message"] = json!(e);
            status["reason"] = json!("SandboxNotReady");
        }
        if self.finished_before {
            return pod.status.as_ref().map(|s| serde_json::to_value(s).unwrap_or_default()).unwrap_or_default();
        }
        status
    }

    /// Write the status if it changed since the last successful write.
    async fn report(&mut self, pod: &Pod) {
        if self.ctrs.is_empty() {
            self.init_ctrs(pod);
        }
        let status = self.status(pod);
        if self.reported.as_ref() == Some(&status) || self.finished_before {
            return;
        }
        let (ns, name) = pod_key(pod);
        let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), &ns);
        let body = json!({"status": status});
        match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&body)).await {
            Ok(_) => self.reported = Some(status),
            Err(e) => tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "status update"),
        }
    }
}

async fn get_cached<K>(api: &Api<K>, cache: &mut HashMap<String, Option<K>>, name: &str) -> Result<Option<K>, String>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if let Some(v) = cache.get(name) {
        return Ok(v.clone());
    }
    let v = api.get_opt(name).await.map_err(|e| format!("reading {name}: {e}"))?;
    cache.insert(name.to_string(), v.clone());
    Ok(v)
}

/// Kubernetes' QoS class. Pure.
pub fn qos(pod: &Pod) -> &'static str {
    let cs = pod.spec.as_ref().map(|s| s.containers.clone()).unwrap_or_default();
    let mut any = false;
    let mut guaranteed = true;
    for c in &cs {
        let r = c.resources.clone().unwrap_or_default();
        let limits = r.limits.unwrap_or_default();
        let requests = r.requests.unwrap_or_default();
        if !limits.is_empty() || !requests.is_empty() {
            any = true;
        }
        for k in ["cpu", "memory"] {
            match (limits.get(k), requests.get(k).or(limits.get(k))) {
                (Some(l), Some(q)) if l == q => {}
                _ => guaranteed = false,
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(v: Value) -> ContainerStatus {
        let mut v = v;
        v["name"] = json!("c");
        v["image"] = json!("i");
        v["imageID"] = json!("");
        v["ready"] = json!(false);
        serde_json::from_value(v).unwrap()
    }

    fn fresh() -> State {
        State::Waiting { reason: "ContainerCreating".into(), message: String::new() }
    }

    #[test]
    fn a_running_container_restarts_unless_never() {
        let s = status(json!({"restartCount": 2, "state": {"running": {"startedAt": "2024-05-01T10:00:00Z"}}}));
        for policy in ["Always", "OnFailure"] {
            let r = restore(&s, false, policy, fresh());
            assert!(!r.done && r.started_once && r.restarts == 2, "{policy}");
            assert!(matches!(r.last, Some(State::Terminated { code: 137, ref reason, ref started_at, .. }) if reason == "ContainerStatusUnknown" && started_at == "2024-05-01T10:00:00Z"));
        }
        let r = restore(&s, false, "Never", fresh());
        assert!(r.done && r.last.is_none());
        assert!(matches!(r.state, State::Terminated { code: 137, .. }));
    }

    #[test]
    fn finished_containers_stay_finished() {
        let done = status(json!({"restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": "2024-05-01T10:00:00Z", "finishedAt": "2024-05-01T10:00:01Z"}}}));
        let r = restore(&done, true, "Always", fresh());
        assert!(r.done && matches!(r.state, State::Terminated { code: 0, .. }), "a completed init container is not rerun");
        assert!(restore(&done, false, "OnFailure", fresh()).done);
        assert!(!restore(&done, false, "Always", fresh()).done, "Always restarts even a completed container");
        let failed = status(json!({"restartCount": 1, "state": {"terminated": {"exitCode": 3}}}));
        assert!(restore(&failed, false, "Never", fresh()).done);
        let r = restore(&failed, false, "OnFailure", fresh());
        assert!(!r.done && matches!(r.last, Some(State::Terminated { code: 3, .. })));
    }

    #[test]
    fn waiting_containers_keep_their_history() {
        let s = status(json!({"restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"exitCode": 1}}}));
        let r = restore(&s, false, "Always", fresh());
        assert!(!r.done && r.started_once && r.restarts == 4 && r.state == fresh());
        assert!(matches!(r.last, Some(State::Terminated { code: 1, .. })));
        let never_ran = restore(&status(json!({"restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}})), false, "Always", fresh());
        assert!(!never_ran.started_once && never_ran.last.is_none());
    }
}
