//! What `kappctl status` knows, without IO:
//!
//! - [`Raw`]: what the gather layer read from the apiserver (objects as JSON, the heads, and
//!   which reads failed). Fixture files for tests are `Raw` documents.
//! - [`ClusterView`]: the facts a person wants, derived from a `Raw` by [`build`] (a pure
//!   function of its input, so the same fixture always gives the same view). Its JSON form is
//!   `kappctl status -o json`; fields are only ever added to it.
//! - [`Health`]: the verdict and the reasons for it, computed by [`assess`].

use std::collections::BTreeMap;

use kapp_api::heads::HeadList;
use kapp_api::kapp::{CommitInfo, GitSyncStatus, SyncError};
use kapp_api::table::parse_rfc3339;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `apiVersion` and `kind` of `kappctl status -o json`.
pub const API_VERSION: &str = "kappctl.kapp.dev/v1";
pub const KIND: &str = "ClusterStatus";

/// Warning events older than this (before the observation) are not "recent".
pub const RECENT_EVENTS_SECS: i64 = 3600;
/// At most this many warning events are shown.
pub const MAX_EVENTS: usize = 10;
/// A head more than this many log entries behind the leader's commit index is lagging.
pub const MAX_LAG: u64 = 1000;

/// What the gather layer read. `None` sections were not read; `errors` says why, by section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Raw {
    /// RFC 3339 time of the reads; ages are relative to it.
    pub observed_at: String,
    pub server: String,
    pub cluster: String,
    /// The `/version` answer.
    #[serde(default)]
    pub version: Value,
    #[serde(default)]
    pub heads: Option<HeadList>,
    #[serde(default)]
    pub nodes: Option<Vec<Value>>,
    #[serde(default)]
    pub pods: Option<Vec<Value>>,
    #[serde(default)]
    pub deployments: Option<Vec<Value>>,
    #[serde(default)]
    pub daemonsets: Option<Vec<Value>>,
    #[serde(default)]
    pub statefulsets: Option<Vec<Value>>,
    #[serde(default)]
    pub jobs: Option<Vec<Value>>,
    #[serde(default)]
    pub gitsyncs: Option<Vec<Value>>,
    /// Warning events.
    #[serde(default)]
    pub events: Option<Vec<Value>>,
    /// `metrics.k8s.io` NodeMetrics (None when the apiserver serves none).
    #[serde(default)]
    pub node_metrics: Option<Vec<Value>>,
    /// Section name → why it could not be read.
    #[serde(default)]
    pub errors: BTreeMap<String, String>,
    /// Section name → why it is missing without that being a fault (e.g. not served).
    #[serde(default)]
    pub notes: BTreeMap<String, String>,
}

/// `kappctl status`'s answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    pub api_version: String,
    pub kind: String,
    pub observed_at: String,
    pub cluster: ClusterInfo,
    pub health: Health,
    pub heads: Section<HeadView>,
    pub nodes: Section<NodeView>,
    pub gitops: Section<GitSyncView>,
    /// Deployments, DaemonSets and StatefulSets.
    pub workloads: Section<WorkloadView>,
    pub jobs: Section<JobView>,
    /// Every pod that is neither Running and Ready nor Succeeded (`total`: all pods).
    pub pods: Section<PodProblem>,
    /// Recent Warning events, newest last (`total`: all recent ones).
    pub warnings: Section<EventView>,
}

/// One part of the status: its items, how many objects it covers, and whether it was read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Section<T> {
    pub total: usize,
    pub items: Vec<T>,
    /// Could not be read (counts against health).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Not available, and that is no fault (e.g. an older apiserver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl<T> Default for Section<T> {
    fn default() -> Self {
        Section { total: 0, items: Vec::new(), error: None, note: None }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInfo {
    pub name: String,
    pub server: String,
    pub kapp_version: String,
    pub kubernetes_version: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    #[default]
    Healthy,
    Degraded,
}

impl Verdict {
    /// 0 healthy, 1 degraded.
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Healthy => crate::error::exit::OK,
            Verdict::Degraded => crate::error::exit::DEGRADED,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub verdict: Verdict,
    /// Why it is degraded, most important first.
    pub reasons: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeadView {
    pub id: Option<u64>,
    pub endpoint: String,
    /// Leader / Follower / Candidate / Learner / Shutdown, "" when unreachable.
    pub role: String,
    pub term: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Entries behind the leader's commit index.
    pub lag: Option<u64>,
    pub leader: Option<u64>,
    pub healthy: bool,
    /// What is wrong ("" when healthy).
    pub problem: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    pub name: String,
    /// Ready / NotReady / Unknown.
    pub status: String,
    pub schedulable: bool,
    pub roles: Vec<String>,
    /// The kubelet's (kapp's) version from nodeInfo.
    pub version: String,
    pub os_image: String,
    /// Pods bound to the node, finished ones excluded.
    pub pods: usize,
    /// CPU in use (None until kubelets report it).
    pub cpu: Option<String>,
    pub memory: Option<String>,
    pub healthy: bool,
    /// The Ready condition's message when not ready.
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GitSyncView {
    pub name: String,
    pub url: String,
    /// `branch main`, `tag v1`, `commit 1a2b…` or "" (the repository's HEAD).
    pub reference: String,
    pub path: String,
    /// Synced / Applying / Failed / Suspended ("" before the first pass).
    pub state: String,
    pub message: String,
    pub fetched: Option<CommitInfo>,
    pub applied: Option<CommitInfo>,
    pub errors: Vec<SyncError>,
    pub last_apply_time: String,
    pub healthy: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadView {
    /// Deployment / DaemonSet / StatefulSet.
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub desired: i64,
    pub ready: i64,
    pub healthy: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub namespace: String,
    pub name: String,
    pub completions: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub active: i64,
    /// Complete / Failed / Running / Suspended.
    pub state: String,
    pub message: String,
    pub healthy: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodProblem {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub phase: String,
    /// CrashLoopBackOff, ImagePullBackOff, Unschedulable, NotReady, Terminating, …
    pub reason: String,
    pub message: String,
    /// The container the reason is about ("" when it is about the pod).
    pub container: String,
    pub restarts: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    pub namespace: String,
    /// `Kind/name` of the object the event is about.
    pub object: String,
    pub reason: String,
    pub message: String,
    pub count: i64,
    /// RFC 3339 time it was last seen.
    pub last_seen: String,
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn items(list: &Option<Vec<Value>>) -> &[Value] {
    list.as_deref().unwrap_or(&[])
}

/// A section from a list read, or from the reason it could not be read.
fn section<T>(raw: &Raw, name: &str, read: bool, total: usize, items: Vec<T>) -> Section<T> {
    Section {
        total,
        items,
        error: raw.errors.get(name).cloned().or_else(|| (!read && !raw.notes.contains_key(name)).then(|| "not read".to_string())),
        note: raw.notes.get(name).cloned(),
    }
}

/// The view of `raw`, health included.
pub fn build(raw: &Raw) -> ClusterView {
    let now = parse_rfc3339(&raw.observed_at).unwrap_or(0);
    let git_version = s(&raw.version["gitVersion"]);
    let (kube_version, kapp_from_version) = match git_version.split_once("-kapp.") {
        Some((k, v)) => (k.to_string(), v.to_string()),
        None => (git_version.clone(), String::new()),
    };
    let kapp_version = raw.heads.as_ref().map(|h| h.kapp_version.clone()).filter(|v| !v.is_empty()).unwrap_or(kapp_from_version);

    let heads = heads(raw);
    let nodes = nodes(raw);
    let gitops = gitops(raw);
    let workloads = workloads(raw);
    let jobs = jobs(raw);
    let problems: Vec<PodProblem> = items(&raw.pods).iter().filter_map(pod_problem).collect();
    let pods = section(raw, "pods", raw.pods.is_some(), items(&raw.pods).len(), problems);
    let warnings = warnings(raw, now);

    let mut view = ClusterView {
        api_version: API_VERSION.into(),
        kind: KIND.into(),
        observed_at: raw.observed_at.clone(),
        cluster: ClusterInfo { name: raw.cluster.clone(), server: raw.server.clone(), kapp_version, kubernetes_version: kube_version },
        health: Health::default(),
        heads,
        nodes,
        gitops,
        workloads,
        jobs,
        pods,
        warnings,
    };
    view.health = assess(&view);
    view
}

fn heads(raw: &Raw) -> Section<HeadView> {
    let list = raw.heads.as_ref().map(|h| h.items.clone()).unwrap_or_default();
    let leader = list.iter().find(|h| h.reachable && h.state == "Leader");
    let leader_commit = leader.and_then(|l| l.committed);
    let views: Vec<HeadView> = list
        .iter()
        .map(|h| {
            let lag = match (leader_commit, h.applied) {
                (Some(c), Some(a)) if h.reachable => Some(c.saturating_sub(a)),
                (Some(_), None) if h.reachable => Some(leader_commit.unwrap_or(0)),
                _ => None,
            };
            let problem = if !h.reachable {
                format!("down: {}", if h.error.is_empty() { "unreachable" } else { h.error.as_str() })
            } else if !h.initialized {
                "not initialised".to_string()
            } else if h.leader.is_none() {
                "no leader".to_string()
            } else if !matches!(h.state.as_str(), "Leader" | "Follower" | "Learner") {
                h.state.to_lowercase()
            } else if lag.is_some_and(|l| l > MAX_LAG) {
                format!("lagging {} entries", lag.unwrap_or(0))
            } else {
                String::new()
            };
            HeadView {
                id: h.id,
                endpoint: h.endpoint.clone(),
                role: h.state.clone(),
                term: h.reachable.then_some(h.term),
                commit_index: h.committed,
                applied_index: h.applied,
                lag,
                leader: h.leader,
                healthy: problem.is_empty(),
                problem,
            }
        })
        .collect();
    section(raw, "heads", raw.heads.is_some(), views.len(), views)
}

/// A CPU quantity (`2`, `250m`, `1500u`, `250000000n`) in billionths of a core. Pure.
pub fn cpu_nanos(q: &str) -> Option<u64> {
    let (num, scale) = match q.char_indices().last()? {
        (i, 'n') => (&q[..i], 1.0),
        (i, 'u') => (&q[..i], 1e3),
        (i, 'm') => (&q[..i], 1e6),
        _ => (q, 1e9),
    };
    num.parse::<f64>().ok().filter(|v| *v >= 0.0).map(|v| (v * scale) as u64)
}

/// A memory quantity (`512Mi`, `1843148Ki`, `1G`, `1024`) in bytes. Pure.
pub fn bytes(q: &str) -> Option<u64> {
    let units: [(&str, u64); 8] = [("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("Ti", 1 << 40), ("k", 1_000), ("M", 1_000_000), ("G", 1_000_000_000), ("T", 1_000_000_000_000)];
    let (num, mul) = units.iter().find_map(|(suffix, mul)| q.strip_suffix(suffix).map(|n| (n, *mul))).unwrap_or((q, 1));
    num.parse::<f64>().ok().filter(|v| *v >= 0.0).map(|v| (v * mul as f64) as u64)
}

/// `250m (12%)`: the figure and its share of the capacity when known.
fn with_share(figure: String, used: u64, capacity: Option<u64>) -> String {
    match capacity.filter(|c| *c > 0) {
        Some(c) => format!("{figure} ({}%)", used * 100 / c),
        None => figure,
    }
}

fn condition<'a>(obj: &'a Value, ty: &str) -> Option<&'a Value> {
    obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == ty)
}

fn nodes(raw: &Raw) -> Section<NodeView> {
    let mut views: Vec<NodeView> = items(&raw.nodes)
        .iter()
        .map(|n| {
            let name = s(&n["metadata"]["name"]);
            let ready = condition(n, "Ready");
            let status = match ready.map(|c| s(&c["status"])).as_deref() {
                Some("True") => "Ready",
                Some("False") => "NotReady",
                _ => "Unknown",
            };
            let mut roles: Vec<String> = n["metadata"]["labels"]
                .as_object()
                .map(|l| l.keys().filter_map(|k| k.strip_prefix("node-role.kubernetes.io/")).filter(|r| !r.is_empty()).map(String::from).collect())
                .unwrap_or_default();
            roles.sort();
            let pods = items(&raw.pods)
                .iter()
                .filter(|p| p["spec"]["nodeName"].as_str() == Some(name.as_str()) && !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
                .count();
            let info = &n["status"]["nodeInfo"];
            let usage = raw.node_metrics.iter().flatten().find(|m| m["metadata"]["name"].as_str() == Some(name.as_str())).map(|m| &m["usage"]);
            let capacity = &n["status"]["capacity"];
            let cpu = usage.and_then(|u| cpu_nanos(u["cpu"].as_str()?)).map(|used| with_share(format!("{}m", used / 1_000_000), used, capacity["cpu"].as_str().and_then(cpu_nanos)));
            let memory = usage.and_then(|u| bytes(u["memory"].as_str()?)).map(|used| with_share(format!("{}Mi", used >> 20), used, capacity["memory"].as_str().and_then(bytes)));
            NodeView {
                status: status.into(),
                schedulable: n["spec"]["unschedulable"].as_bool() != Some(true),
                roles,
                version: s(&info["kubeletVersion"]),
                os_image: s(&info["osImage"]),
                pods,
                cpu,
                memory,
                healthy: status == "Ready",
                message: if status == "Ready" { String::new() } else { ready.map(|c| s(&c["message"])).unwrap_or_else(|| "the node has not reported Ready".into()) },
                name,
            }
        })
        .collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    section(raw, "nodes", raw.nodes.is_some(), views.len(), views)
}

fn gitops(raw: &Raw) -> Section<GitSyncView> {
    let mut views: Vec<GitSyncView> = items(&raw.gitsyncs)
        .iter()
        .map(|g| {
            let spec = &g["spec"];
            let r = &spec["ref"];
            let reference = if let Some(b) = r["branch"].as_str() {
                format!("branch {b}")
            } else if let Some(t) = r["tag"].as_str() {
                format!("tag {t}")
            } else if let Some(c) = r["commit"].as_str() {
                format!("commit {c}")
            } else {
                String::new()
            };
            let (st, unreadable) = match serde_json::from_value::<GitSyncStatus>(g["status"].clone()) {
                Ok(st) => (st, None),
                Err(_) if g["status"].is_null() => (GitSyncStatus::default(), None),
                Err(e) => (GitSyncStatus::default(), Some(format!("unreadable status: {e}"))),
            };
            let healthy = unreadable.is_none() && st.state != "Failed" && st.errors.is_empty();
            GitSyncView {
                name: s(&g["metadata"]["name"]),
                url: s(&spec["url"]),
                reference,
                path: s(&spec["path"]),
                message: unreadable.unwrap_or(st.message),
                state: st.state,
                fetched: st.fetched_commit,
                applied: st.applied_commit,
                errors: st.errors,
                last_apply_time: st.last_apply_time,
                healthy,
            }
        })
        .collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    section(raw, "gitsyncs", raw.gitsyncs.is_some(), views.len(), views)
}

fn workloads(raw: &Raw) -> Section<WorkloadView> {
    let mut views = Vec::new();
    let mut read = true;
    let mut error = None;
    for (kind, list, name) in [("Deployment", &raw.deployments, "deployments"), ("DaemonSet", &raw.daemonsets, "daemonsets"), ("StatefulSet", &raw.statefulsets, "statefulsets")] {
        read &= list.is_some();
        if let Some(e) = raw.errors.get(name) {
            error = Some(format!("{name}: {e}"));
        }
        for w in items(list) {
            let (desired, ready) = if kind == "DaemonSet" {
                (int(&w["status"]["desiredNumberScheduled"]), int(&w["status"]["numberReady"]))
            } else {
                (w["spec"]["replicas"].as_i64().unwrap_or(1), int(&w["status"]["readyReplicas"]))
            };
            views.push(WorkloadView { kind: kind.into(), namespace: s(&w["metadata"]["namespace"]), name: s(&w["metadata"]["name"]), desired, ready, healthy: ready >= desired });
        }
    }
    views.sort_by(|a, b| (&a.namespace, &a.name, &a.kind).cmp(&(&b.namespace, &b.name, &b.kind)));
    let total = views.len();
    Section { total, items: views, error: error.or_else(|| (!read).then(|| "not read".to_string())), note: None }
}

fn jobs(raw: &Raw) -> Section<JobView> {
    let mut views: Vec<JobView> = items(&raw.jobs)
        .iter()
        .map(|j| {
            let st = &j["status"];
            let failed_cond = condition(j, "Failed").filter(|c| c["status"] == "True");
            let complete = condition(j, "Complete").is_some_and(|c| c["status"] == "True");
            let state = if let Some(_c) = failed_cond {
                "Failed"
            } else if complete {
                "Complete"
            } else if j["spec"]["suspend"].as_bool() == Some(true) {
                "Suspended"
            } else {
                "Running"
            };
            JobView {
                namespace: s(&j["metadata"]["namespace"]),
                name: s(&j["metadata"]["name"]),
                completions: j["spec"]["completions"].as_i64().unwrap_or(1),
                succeeded: int(&st["succeeded"]),
                failed: int(&st["failed"]),
                active: int(&st["active"]),
                message: failed_cond.map(|c| format!("{}: {}", s(&c["reason"]), s(&c["message"]))).unwrap_or_default(),
                healthy: state != "Failed",
                state: state.into(),
            }
        })
        .collect();
    views.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    section(raw, "jobs", raw.jobs.is_some(), views.len(), views)
}

/// Why a pod is neither Running and Ready nor Succeeded; None when it is fine.
pub fn pod_problem(pod: &Value) -> Option<PodProblem> {
    let st = &pod["status"];
    let phase = st["phase"].as_str().unwrap_or("Pending").to_string();
    if phase == "Succeeded" {
        return None;
    }
    let statuses: Vec<&Value> = st["initContainerStatuses"].as_array().into_iter().chain(st["containerStatuses"].as_array()).flatten().collect();
    let restarts: i64 = statuses.iter().map(|c| int(&c["restartCount"])).sum();
    let mut p = PodProblem {
        namespace: s(&pod["metadata"]["namespace"]),
        name: s(&pod["metadata"]["name"]),
        node: s(&pod["spec"]["nodeName"]),
        phase: phase.clone(),
        restarts,
        ..PodProblem::default()
    };
    if pod["metadata"]["deletionTimestamp"].is_string() {
        p.reason = "Terminating".into();
        p.message = format!("deletion requested at {}", s(&pod["metadata"]["deletionTimestamp"]));
        return Some(p);
    }
    // A container that is waiting says why (CrashLoopBackOff, ImagePullBackOff, …).
    if let Some(c) = statuses.iter().find(|c| c["state"]["waiting"]["reason"].is_string()) {
        p.reason = s(&c["state"]["waiting"]["reason"]);
        p.container = s(&c["name"]);
        let mut msg = s(&c["state"]["waiting"]["message"]);
        let last = &c["lastState"]["terminated"];
        if last.is_object() {
            let why = format!("last exit: {} (code {})", last["reason"].as_str().unwrap_or("Terminated"), int(&last["exitCode"]));
            msg = if msg.is_empty() { why } else { format!("{msg}; {why}") };
        }
        p.message = msg;
        return Some(p);
    }
    let all_ready = !statuses.is_empty() && st["containerStatuses"].as_array().is_some_and(|cs| cs.iter().all(|c| c["ready"].as_bool() == Some(true)));
    if phase == "Running" && all_ready {
        // Its containers were ready when last heard of, but the pod is not (the node
        // controller marks the pods of an unreachable node not ready).
        let ready = condition(pod, "Ready").filter(|c| c["status"] == "False");
        let Some(c) = ready else { return None };
        p.reason = c["reason"].as_str().filter(|r| !r.is_empty()).unwrap_or("NotReady").to_string();
        p.message = if p.reason == "NodeUnreachable" { format!("node {} is unreachable", p.node) } else { s(&c["message"]) };
        return Some(p);
    }
    if let Some(c) = condition(pod, "PodScheduled").filter(|c| c["status"] == "False") {
        p.reason = c["reason"].as_str().filter(|r| !r.is_empty()).unwrap_or("Unschedulable").to_string();
        p.message = s(&c["message"]);
        return Some(p);
    }
    if phase == "Failed" {
        p.reason = st["reason"].as_str().unwrap_or("Failed").to_string();
        p.message = s(&st["message"]);
        if p.message.is_empty() {
            if let Some(c) = statuses.iter().find(|c| c["state"]["terminated"].is_object()) {
                let t = &c["state"]["terminated"];
                p.container = s(&c["name"]);
                p.message = format!("{} (exit code {})", t["reason"].as_str().unwrap_or("Terminated"), int(&t["exitCode"]));
            }
        }
        return Some(p);
    }
    if let Some(c) = statuses.iter().find(|c| c["state"]["terminated"].is_object()) {
        let t = &c["state"]["terminated"];
        p.reason = t["reason"].as_str().unwrap_or("Terminated").to_string();
        p.container = s(&c["name"]);
        p.message = format!("exit code {}", int(&t["exitCode"]));
        return Some(p);
    }
    if phase == "Running" {
        let not_ready: Vec<String> = st["containerStatuses"].as_array().map(|cs| cs.iter().filter(|c| c["ready"].as_bool() != Some(true)).map(|c| s(&c["name"])).collect()).unwrap_or_default();
        p.reason = "NotReady".into();
        p.message = condition(pod, "Ready").map(|c| s(&c["message"])).filter(|m| !m.is_empty()).unwrap_or_else(|| format!("containers not ready: {}", not_ready.join(", ")));
        return Some(p);
    }
    if p.node.is_empty() {
        p.reason = "Pending".into();
        p.message = "not scheduled yet".into();
    } else {
        p.reason = phase;
        p.message = s(&st["message"]);
    }
    Some(p)
}

/// When an event was last seen (RFC 3339).
fn event_time(e: &Value) -> String {
    for t in [&e["lastTimestamp"], &e["series"]["lastObservedTime"], &e["eventTime"], &e["firstTimestamp"], &e["metadata"]["creationTimestamp"]] {
        if let Some(t) = t.as_str().filter(|t| !t.is_empty()) {
            return t.to_string();
        }
    }
    String::new()
}

/// An event as shown.
pub fn event_view(e: &Value) -> EventView {
    let obj = &e["involvedObject"];
    let count = e["count"].as_i64().or_else(|| e["series"]["count"].as_i64()).unwrap_or(1);
    EventView {
        namespace: s(&e["metadata"]["namespace"]),
        object: format!("{}/{}", s(&obj["kind"]), s(&obj["name"])),
        reason: s(&e["reason"]),
        message: s(&e["message"]).trim().to_string(),
        count,
        last_seen: event_time(e),
    }
}

fn warnings(raw: &Raw, now: i64) -> Section<EventView> {
    let mut recent: Vec<EventView> = items(&raw.events)
        .iter()
        .filter(|e| e["type"].as_str().unwrap_or("Warning") == "Warning")
        .map(event_view)
        .filter(|e| parse_rfc3339(&e.last_seen).is_some_and(|t| now - t <= RECENT_EVENTS_SECS))
        .collect();
    recent.sort_by(|a, b| (parse_rfc3339(&a.last_seen), &a.namespace, &a.object).cmp(&(parse_rfc3339(&b.last_seen), &b.namespace, &b.object)));
    let total = recent.len();
    let items = recent.split_off(total.saturating_sub(MAX_EVENTS));
    section(raw, "events", raw.events.is_some(), total, items)
}

/// Healthy, or degraded and why: a head down or without a leader, a node not Ready, a GitSync
/// that failed, a workload short of ready replicas, a failed Job, a pod not running, or a
/// part of the cluster that could not be read. Warning events alone do not degrade.
pub fn assess(v: &ClusterView) -> Health {
    let mut reasons = Vec::new();
    let mut unread = |what: &str, e: &Option<String>| {
        if let Some(e) = e {
            reasons.push(format!("{what} could not be read: {e}"));
        }
    };
    unread("heads", &v.heads.error);
    unread("nodes", &v.nodes.error);
    unread("gitops", &v.gitops.error);
    unread("workloads", &v.workloads.error);
    unread("jobs", &v.jobs.error);
    unread("pods", &v.pods.error);
    unread("events", &v.warnings.error);
    if v.heads.error.is_none() && v.heads.note.is_none() && !v.heads.items.iter().any(|h| h.role == "Leader" && h.healthy) {
        reasons.push("no head is a healthy raft leader".into());
    }
    for h in v.heads.items.iter().filter(|h| !h.healthy) {
        reasons.push(format!("head {} ({}) {}", h.id.map_or("?".into(), |i| i.to_string()), h.endpoint, h.problem));
    }
    for n in v.nodes.items.iter().filter(|n| !n.healthy) {
        reasons.push(format!("node {} is {}{}", n.name, n.status, if n.message.is_empty() { String::new() } else { format!(": {}", n.message) }));
    }
    for g in v.gitops.items.iter().filter(|g| !g.healthy) {
        let first = g.errors.first().map(|e| format!(": {}", sync_error_line(e))).unwrap_or_else(|| if g.message.is_empty() { String::new() } else { format!(": {}", g.message) });
        reasons.push(format!("gitops {} is {}{first}", g.name, if g.state.is_empty() { "failing" } else { g.state.as_str() }));
    }
    for w in v.workloads.items.iter().filter(|w| !w.healthy) {
        reasons.push(format!("{} {}/{} has {}/{} ready", w.kind, w.namespace, w.name, w.ready, w.desired));
    }
    for j in v.jobs.items.iter().filter(|j| !j.healthy) {
        reasons.push(format!("Job {}/{} failed{}", j.namespace, j.name, if j.message.is_empty() { String::new() } else { format!(": {}", j.message) }));
    }
    if !v.pods.items.is_empty() {
        let mut why: Vec<&str> = v.pods.items.iter().map(|p| p.reason.as_str()).collect();
        why.sort();
        why.dedup();
        let n = v.pods.items.len();
        reasons.push(format!("{n} pod{} not running/ready ({})", if n == 1 { " is" } else { "s are" }, why.join(", ")));
    }
    Health { verdict: if reasons.is_empty() { Verdict::Healthy } else { Verdict::Degraded }, reasons }
}

/// `file#document Kind/ns/name field: reason`.
pub fn sync_error_line(e: &SyncError) -> String {
    let mut out = String::new();
    if !e.file.is_empty() {
        out.push_str(&e.file);
        if let Some(d) = e.document {
            out.push_str(&format!(" (document {d})"));
        }
    }
    // gitops' reasons often begin with the field already; say it once.
    let field = if e.reason.starts_with(e.field.as_str()) { "" } else { e.field.as_str() };
    for part in [e.object.as_str(), field] {
        if !part.is_empty() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(part);
        }
    }
    if out.is_empty() {
        e.reason.clone()
    } else {
        format!("{out}: {}", e.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sync_errors_name_the_field_once() {
        let e = SyncError { file: "web.yaml".into(), document: Some(2), object: "Service/shop/web".into(), field: "spec.ports[0].port".into(), reason: "spec.ports[0].port: Invalid value".into() };
        assert_eq!(sync_error_line(&e), "web.yaml (document 2) Service/shop/web: spec.ports[0].port: Invalid value");
        let e = SyncError { reason: "Invalid value".into(), ..e };
        assert_eq!(sync_error_line(&e), "web.yaml (document 2) Service/shop/web spec.ports[0].port: Invalid value");
        assert_eq!(sync_error_line(&SyncError { reason: "fetch failed".into(), ..SyncError::default() }), "fetch failed");
    }

    #[test]
    fn pod_reasons() {
        let crash = json!({"metadata": {"name": "a", "namespace": "n"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running", "containerStatuses": [
            {"name": "web", "ready": false, "restartCount": 7, "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s restarting failed container"}}, "lastState": {"terminated": {"reason": "Error", "exitCode": 1}}}]}});
        let p = pod_problem(&crash).unwrap();
        assert_eq!((p.reason.as_str(), p.container.as_str(), p.restarts), ("CrashLoopBackOff", "web", 7));
        assert_eq!(p.message, "back-off 5m0s restarting failed container; last exit: Error (code 1)");
        let unsched = json!({"metadata": {"name": "b"}, "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available: 3 Insufficient cpu."}]}});
        let p = pod_problem(&unsched).unwrap();
        assert_eq!((p.reason.as_str(), p.message.as_str()), ("Unschedulable", "0/3 nodes are available: 3 Insufficient cpu."));
        let fine = json!({"status": {"phase": "Running", "containerStatuses": [{"name": "c", "ready": true, "state": {"running": {}}}]}});
        assert!(pod_problem(&fine).is_none());
        assert!(pod_problem(&json!({"status": {"phase": "Succeeded"}})).is_none());
        let not_ready = json!({"spec": {"nodeName": "n1"}, "status": {"phase": "Running", "containerStatuses": [{"name": "c", "ready": false, "state": {"running": {}}}]}});
        assert_eq!(pod_problem(&not_ready).unwrap().reason, "NotReady");
        let mut unreachable = fine.clone();
        unreachable["spec"]["nodeName"] = json!("w2");
        unreachable["status"]["conditions"] = json!([{"type": "Ready", "status": "False", "reason": "NodeUnreachable"}]);
        let p = pod_problem(&unreachable).unwrap();
        assert_eq!((p.reason.as_str(), p.message.as_str()), ("NodeUnreachable", "node w2 is unreachable"));
    }

    #[test]
    fn quantities_and_node_use() {
        assert_eq!(cpu_nanos("2"), Some(2_000_000_000));
        assert_eq!(cpu_nanos("250m"), Some(250_000_000));
        assert_eq!(cpu_nanos("137085693n"), Some(137_085_693));
        assert_eq!(cpu_nanos("x"), None);
        assert_eq!(bytes("1843148Ki"), Some(1843148 << 10));
        assert_eq!(bytes("1Gi"), Some(1 << 30));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        let raw = Raw {
            nodes: Some(vec![json!({"metadata": {"name": "w1"}, "status": {"capacity": {"cpu": "2", "memory": "2Gi"}, "conditions": [{"type": "Ready", "status": "True"}]}})]),
            node_metrics: Some(vec![json!({"metadata": {"name": "w1"}, "usage": {"cpu": "500000000n", "memory": "524288Ki"}})]),
            ..Raw::default()
        };
        let n = &nodes(&raw).items[0];
        assert_eq!((n.cpu.as_deref(), n.memory.as_deref()), (Some("500m (25%)"), Some("512Mi (25%)")));
        assert_eq!(pod_problem(&json!({"metadata": {"name": "x"}})).unwrap().reason, "Pending");
    }

    #[test]
    fn an_empty_cluster_that_was_read_is_not_healthy_without_a_leader() {
        let raw = Raw { observed_at: "2026-01-01T00:00:00Z".into(), nodes: Some(vec![]), pods: Some(vec![]), deployments: Some(vec![]), daemonsets: Some(vec![]), statefulsets: Some(vec![]), jobs: Some(vec![]), gitsyncs: Some(vec![]), events: Some(vec![]), heads: Some(HeadList::default()), ..Raw::default() };
        let v = build(&raw);
        assert_eq!(v.health.verdict, Verdict::Degraded);
        assert_eq!(v.health.reasons, ["no head is a healthy raft leader"]);
        let mut raw = raw;
        raw.heads = None;
        raw.notes.insert("heads".into(), "not served".into());
        assert_eq!(build(&raw).health.verdict, Verdict::Healthy);
    }
}
