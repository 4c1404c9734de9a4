//! Probes and lifecycle hooks as plain values: a container's `startupProbe`,
//! `livenessProbe`, `readinessProbe` and `lifecycle.postStart`/`preStop` checked, defaulted
//! (Kubernetes' defaults, since the apiserver does not default yet) and with named ports
//! resolved; and the threshold rule that turns single probe results into a verdict. Pure.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, LifecycleHandler, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// A probe or hook the kubelet cannot run, naming the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidProbe {
    pub field: String,
    pub reason: String,
}

fn invalid(field: &str, reason: impl Into<String>) -> InvalidProbe {
    InvalidProbe { field: field.to_string(), reason: reason.into() }
}

/// What a probe or hook does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `GET http://<host or pod IP>:<port><path>`; 2xx and 3xx succeed.
    Http(HttpGet),
    /// A TCP connection to `<host or pod IP>:<port>` succeeds.
    Tcp { host: Option<String>, port: u16 },
    /// The command, run inside the container, exits 0.
    Exec(Vec<String>),
    /// Hooks only: wait this long.
    Sleep(Duration),
    /// Valid in Kubernetes but not run here: fails at run time with this message (the
    /// deprecated `tcpSocket` hook fails in Kubernetes too).
    Unsupported(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpGet {
    pub host: Option<String>,
    pub port: u16,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

/// Which probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    pub fn field(self) -> &'static str {
        match self {
            Kind::Startup => "startupProbe",
            Kind::Liveness => "livenessProbe",
            Kind::Readiness => "readinessProbe",
        }
    }

    /// The verdict before any result: not started, alive, not ready.
    pub fn initial(self) -> Option<bool> {
        match self {
            Kind::Startup => None,
            Kind::Liveness => Some(true),
            Kind::Readiness => Some(false),
        }
    }
}

/// One probe, defaulted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    pub kind: Kind,
    pub action: Action,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    /// The probe's own `terminationGracePeriodSeconds` (liveness and startup only).
    pub termination_grace: Option<Duration>,
}

/// A container's probes and hooks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checks {
    pub startup: Option<ProbeSpec>,
    pub liveness: Option<ProbeSpec>,
    pub readiness: Option<ProbeSpec>,
    pub post_start: Option<Action>,
    pub pre_stop: Option<Action>,
}

impl Checks {
    /// Every probe and hook of `c` (`field` is its path, e.g. `spec.containers[0]`).
    pub fn of(c: &Container, field: &str) -> Result<Checks, InvalidProbe> {
        let probe = |p: &Option<Probe>, kind: Kind| p.as_ref().map(|p| probe_spec(p, kind, c, &format!("{field}.{}", kind.field()))).transpose();
        let lifecycle = c.lifecycle.clone().unwrap_or_default();
        let hook = |h: &Option<LifecycleHandler>, name: &str| h.as_ref().map(|h| hook_action(h, c, &format!("{field}.lifecycle.{name}"))).transpose();
        Ok(Checks {
            startup: probe(&c.startup_probe, Kind::Startup)?,
            liveness: probe(&c.liveness_probe, Kind::Liveness)?,
            readiness: probe(&c.readiness_probe, Kind::Readiness)?,
            post_start: hook(&lifecycle.post_start, "postStart")?,
            pre_stop: hook(&lifecycle.pre_stop, "preStop")?,
        })
    }
}

/// A seconds field: absent or 0 means `default`; negative is invalid.
fn seconds(v: Option<i32>, default: u64, field: &str) -> Result<Duration, InvalidProbe> {
    match v {
        None | Some(0) => Ok(Duration::from_secs(default)),
        Some(n) if n < 0 => Err(invalid(field, format!("must be greater than or equal to 0, not {n}"))),
        Some(n) => Ok(Duration::from_secs(n as u64)),
    }
}

fn threshold(v: Option<i32>, default: u32, field: &str) -> Result<u32, InvalidProbe> {
    match v {
        None | Some(0) => Ok(default),
        Some(n) if n < 0 => Err(invalid(field, format!("must be greater than or equal to 0, not {n}"))),
        Some(n) => Ok(n as u32),
    }
}

/// `p` with Kubernetes' defaults (period 10 s, timeout 1 s, success 1, failure 3).
pub fn probe_spec(p: &Probe, kind: Kind, c: &Container, field: &str) -> Result<ProbeSpec, InvalidProbe> {
    let f = |name: &str| format!("{field}.{name}");
    let handlers = [p.exec.is_some(), p.http_get.is_some(), p.tcp_socket.is_some(), p.grpc.is_some()].iter().filter(|h| **h).count();
    if handlers != 1 {
        return Err(invalid(field, format!("must specify exactly one of exec, httpGet, tcpSocket, grpc (has {handlers})")));
    }
    let action = if let Some(e) = &p.exec {
        exec_action(e.command.as_deref(), &f("exec.command"))?
    } else if let Some(h) = &p.http_get {
        http_action(h, c, &f("httpGet"))?
    } else if let Some(t) = &p.tcp_socket {
        Action::Tcp { host: t.host.clone().filter(|h| !h.is_empty()), port: port(&t.port, c, &f("tcpSocket.port"))? }
    } else {
        return Err(invalid(&f("grpc"), "gRPC probes are not supported yet"));
    };
    let success_threshold = threshold(p.success_threshold, 1, &f("successThreshold"))?;
    if kind != Kind::Readiness && success_threshold != 1 {
        return Err(invalid(&f("successThreshold"), format!("must be 1 for a {}", kind.field())));
    }
    let termination_grace = match p.termination_grace_period_seconds {
        None => None,
        Some(_) if kind == Kind::Readiness => return Err(invalid(&f("terminationGracePeriodSeconds"), "must not be set for a readinessProbe")),
        Some(n) if n <= 0 => return Err(invalid(&f("terminationGracePeriodSeconds"), format!("must be greater than 0, not {n}"))),
        Some(n) => Some(Duration::from_secs(n as u64)),
    };
    Ok(ProbeSpec {
        kind,
        action,
        initial_delay: match p.initial_delay_seconds {
            Some(n) if n < 0 => return Err(invalid(&f("initialDelaySeconds"), format!("must be greater than or equal to 0, not {n}"))),
            n => Duration::from_secs(n.unwrap_or(0) as u64),
        },
        period: seconds(p.period_seconds, 10, &f("periodSeconds"))?,
        timeout: seconds(p.timeout_seconds, 1, &f("timeoutSeconds"))?,
        success_threshold,
        failure_threshold: threshold(p.failure_threshold, 3, &f("failureThreshold"))?,
        termination_grace,
    })
}

/// A lifecycle hook's action.
pub fn hook_action(h: &LifecycleHandler, c: &Container, field: &str) -> Result<Action, InvalidProbe> {
    let handlers = [h.exec.is_some(), h.http_get.is_some(), h.sleep.is_some(), h.tcp_socket.is_some()].iter().filter(|x| **x).count();
    if handlers != 1 {
        return Err(invalid(field, format!("must specify exactly one of exec, httpGet, sleep (has {handlers})")));
    }
    if let Some(e) = &h.exec {
        exec_action(e.command.as_deref(), &format!("{field}.exec.command"))
    } else if let Some(g) = &h.http_get {
        http_action(g, c, &format!("{field}.httpGet"))
    } else if let Some(s) = &h.sleep {
        if s.seconds < 0 {
            return Err(invalid(&format!("{field}.sleep.seconds"), format!("must be greater than or equal to 0, not {}", s.seconds)));
        }
        Ok(Action::Sleep(Duration::from_secs(s.seconds as u64)))
    } else {
        Ok(Action::Unsupported("tcpSocket is not supported as a lifecycle hook".into()))
    }
}

fn exec_action(command: Option<&[String]>, field: &str) -> Result<Action, InvalidProbe> {
    match command {
        Some(c) if !c.is_empty() => Ok(Action::Exec(c.to_vec())),
        _ => Err(invalid(field, "must name a command")),
    }
}

fn http_action(h: &HTTPGetAction, c: &Container, field: &str) -> Result<Action, InvalidProbe> {
    match h.scheme.as_deref() {
        None | Some("") | Some("HTTP") => {}
        Some(s) => return Err(invalid(&format!("{field}.scheme"), format!("{s} is not supported (HTTP only)"))),
    }
    let mut path = h.path.clone().unwrap_or_default();
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    let headers = h.http_headers.clone().unwrap_or_default().into_iter().map(|h| (h.name, h.value)).collect();
    Ok(Action::Http(HttpGet { host: h.host.clone().filter(|h| !h.is_empty()), port: port(&h.port, c, &format!("{field}.port"))?, path, headers }))
}

/// A port by number, or by the name of one of the container's ports (a name that is a
/// number is taken as one, as the kubelet does).
pub fn port(p: &IntOrString, c: &Container, field: &str) -> Result<u16, InvalidProbe> {
    let n = match p {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => match c.ports.iter().flatten().find(|cp| cp.name.as_deref() == Some(name.as_str())) {
            Some(cp) => cp.container_port,
            None => name.parse().map_err(|_| invalid(field, format!("no container port named {name:?}")))?,
        },
    };
    u16::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| invalid(field, format!("{n} is not a valid port number")))
}

/// The threshold rule: a verdict changes only after `success_threshold` consecutive
/// successes or `failure_threshold` consecutive failures.
#[derive(Clone, Debug)]
pub struct Tracker {
    success_threshold: u32,
    failure_threshold: u32,
    /// The current run of equal results.
    run: Option<(bool, u32)>,
    verdict: Option<bool>,
}

impl Tracker {
    pub fn new(spec: &ProbeSpec) -> Tracker {
        Tracker { success_threshold: spec.success_threshold.max(1), failure_threshold: spec.failure_threshold.max(1), run: None, verdict: spec.kind.initial() }
    }

    pub fn verdict(&self) -> Option<bool> {
        self.verdict
    }

    /// Record one result; the new verdict when it changes.
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        let n = match self.run {
            Some((r, n)) if r == ok => n.saturating_add(1),
            _ => 1,
        };
        self.run = Some((ok, n));
        let needed = if ok { self.success_threshold } else { self.failure_threshold };
        if n >= needed && self.verdict != Some(ok) {
            self.verdict = Some(ok);
            return Some(ok);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container(v: serde_json::Value) -> Container {
        let mut v = v;
        v["name"] = json!("c");
        v["ports"] = json!([{"name": "http", "containerPort": 8080}, {"name": "metrics", "containerPort": 9090}]);
        serde_json::from_value(v).unwrap()
    }

    fn checks(v: serde_json::Value) -> Result<Checks, InvalidProbe> {
        Checks::of(&container(v), "spec.containers[0]")
    }

    #[test]
    fn defaults_are_kubernetes_defaults() {
        let c = checks(json!({"readinessProbe": {"httpGet": {"port": "http"}}, "livenessProbe": {"tcpSocket": {"port": 9090}}})).unwrap();
        let r = c.readiness.unwrap();
        assert_eq!(r.action, Action::Http(HttpGet { host: None, port: 8080, path: "/".into(), headers: vec![] }));
        assert_eq!((r.initial_delay, r.period, r.timeout), (Duration::ZERO, Duration::from_secs(10), Duration::from_secs(1)));
        assert_eq!((r.success_threshold, r.failure_threshold, r.termination_grace), (1, 3, None));
        assert_eq!(c.liveness.unwrap().action, Action::Tcp { host: None, port: 9090 });
        assert!(c.startup.is_none() && c.post_start.is_none() && c.pre_stop.is_none());
    }

    #[test]
    fn explicit_values_and_hooks() {
        let c = checks(json!({
            "startupProbe": {"exec": {"command": ["cat", "/ready"]}, "initialDelaySeconds": 2, "periodSeconds": 1, "timeoutSeconds": 5, "failureThreshold": 30, "terminationGracePeriodSeconds": 7},
            "readinessProbe": {"httpGet": {"path": "healthz", "port": "9090", "httpHeaders": [{"name": "X-A", "value": "b"}]}, "successThreshold": 2},
            "lifecycle": {"postStart": {"sleep": {"seconds": 1}}, "preStop": {"exec": {"command": ["sh", "-c", "x"]}}},
        }))
        .unwrap();
        let s = c.startup.unwrap();
        assert_eq!(s.action, Action::Exec(vec!["cat".into(), "/ready".into()]));
        assert_eq!((s.initial_delay, s.period, s.timeout, s.failure_threshold), (Duration::from_secs(2), Duration::from_secs(1), Duration::from_secs(5), 30));
        assert_eq!(s.termination_grace, Some(Duration::from_secs(7)));
        let r = c.readiness.unwrap();
        assert_eq!(r.action, Action::Http(HttpGet { host: None, port: 9090, path: "/healthz".into(), headers: vec![("X-A".into(), "b".into())] }));
        assert_eq!(r.success_threshold, 2);
        assert_eq!(c.post_start, Some(Action::Sleep(Duration::from_secs(1))));
        assert_eq!(c.pre_stop, Some(Action::Exec(vec!["sh".into(), "-c".into(), "x".into()])));
        let t = checks(json!({"lifecycle": {"preStop": {"tcpSocket": {"port": 1}}}})).unwrap();
        assert!(matches!(t.pre_stop, Some(Action::Unsupported(_))));
    }

    #[test]
    fn invalid_probes_name_their_field() {
        let err = |v| checks(v).unwrap_err().to_string();
        assert_eq!(err(json!({"livenessProbe": {"exec": {"command": ["true"]}, "successThreshold": 2}})), "spec.containers[0].livenessProbe.successThreshold: must be 1 for a livenessProbe");
        assert!(err(json!({"startupProbe": {"tcpSocket": {"port": 1}, "successThreshold": 3}})).starts_with("spec.containers[0].startupProbe.successThreshold"));
        assert_eq!(err(json!({"readinessProbe": {"tcpSocket": {"port": "grpc"}}})), "spec.containers[0].readinessProbe.tcpSocket.port: no container port named \"grpc\"");
        assert!(err(json!({"readinessProbe": {"tcpSocket": {"port": 70000}}})).contains("70000 is not a valid port number"));
        assert!(err(json!({"readinessProbe": {}})).contains("exactly one of"));
        assert!(err(json!({"readinessProbe": {"exec": {"command": ["true"]}, "tcpSocket": {"port": 1}}})).contains("has 2"));
        assert!(err(json!({"readinessProbe": {"exec": {"command": []}}})).ends_with("readinessProbe.exec.command: must name a command"));
        assert!(err(json!({"readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": -1}})).contains("readinessProbe.periodSeconds"));
        assert!(err(json!({"readinessProbe": {"exec": {"command": ["true"]}, "terminationGracePeriodSeconds": 3}})).contains("must not be set for a readinessProbe"));
        assert!(err(json!({"livenessProbe": {"httpGet": {"port": 80, "scheme": "HTTPS"}}})).contains("livenessProbe.httpGet.scheme"));
        assert!(err(json!({"livenessProbe": {"grpc": {"port": 80}}})).contains("livenessProbe.grpc"));
        assert!(err(json!({"lifecycle": {"postStart": {}}})).starts_with("spec.containers[0].lifecycle.postStart"));
    }

    fn tracker(kind: Kind, success: u32, failure: u32) -> Tracker {
        Tracker::new(&ProbeSpec { kind, action: Action::Exec(vec!["true".into()]), initial_delay: Duration::ZERO, period: Duration::ZERO, timeout: Duration::ZERO, success_threshold: success, failure_threshold: failure, termination_grace: None })
    }

    #[test]
    fn readiness_flips_after_thresholds() {
        let mut t = tracker(Kind::Readiness, 2, 3);
        assert_eq!(t.verdict(), Some(false));
        assert_eq!(t.observe(false), None, "already not ready");
        assert_eq!(t.observe(true), None, "one success of two");
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), Some(true));
        assert_eq!(t.observe(true), None, "reported once");
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), None, "a success breaks the failure run");
        assert_eq!((t.observe(false), t.observe(false), t.observe(false)), (None, None, Some(false)));
        assert_eq!(t.verdict(), Some(false));
    }

    #[test]
    fn liveness_and_startup_verdicts() {
        let mut l = tracker(Kind::Liveness, 1, 2);
        assert_eq!(l.observe(true), None, "alive from the start");
        assert_eq!((l.observe(false), l.observe(false)), (None, Some(false)));
        let mut s = tracker(Kind::Startup, 1, 3);
        assert_eq!(s.verdict(), None);
        assert_eq!(s.observe(true), Some(true), "started at the first success");
        let mut s = tracker(Kind::Startup, 1, 2);
        assert_eq!((s.observe(false), s.observe(false)), (None, Some(false)), "a startup failure is a verdict too");
    }
}
