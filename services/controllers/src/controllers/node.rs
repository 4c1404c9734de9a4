//! Node lifecycle (Kubernetes' node controller, seed 000's timings): every monitor period
//! each node's heartbeat (its Lease in kube-node-lease, or its Ready condition) is checked
//! against the time *this controller* saw it change; after the grace period without one
//! the node is marked Ready=Unknown, tainted unreachable (NoExecute, NoSchedule) and its
//! pods marked not ready; after the eviction timeout (or a pod's own tolerationSeconds)
//! its pods are deleted so their owners replace them. A node that comes back is untainted.
//! Pods bound to a node that no longer exists are deleted at once (pod GC).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::Ctx;
use crate::pods::is_ready;
use crate::queue::Next;
use crate::Error;

const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const NOT_READY: &str = "node.kubernetes.io/not-ready";

#[derive(Default)]
pub(crate) struct Monitor(Mutex<HashMap<String, Seen>>);

struct Seen {
    heartbeat: String,
    at: Instant,
    unhealthy_since: Option<Instant>,
}

fn heartbeat(ctx: &Ctx, node: &Node) -> String {
    let lease = ctx.leases.get(&format!("kube-node-lease/{}", node.name_any()));
    let renew = lease.and_then(|l| l.spec.as_ref()?.renew_time.clone()).map(|t| t.0.to_string()).unwrap_or_default();
    let ready = ready_condition(node).and_then(|c| c.last_heartbeat_time.clone()).map(|t| t.0.to_string()).unwrap_or_default();
    format!("{renew}|{ready}")
}

fn ready_condition(node: &Node) -> Option<&k8s_openapi::api::core::v1::NodeCondition> {
    node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")
}

/// How long a pod tolerates `taint_key` NoExecute: its own tolerationSeconds, forever if it
/// tolerates without seconds, else `default`.
fn tolerance(pod: &Pod, taint_key: &str, default: Duration) -> Option<Duration> {
    let taint = Taint { key: taint_key.into(), effect: "NoExecute".into(), value: None, time_added: None };
    let tols = pod.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
    match tols.iter().find(|t| kapp_scheduler::tolerates(t, &taint)) {
        Some(t) => t.toleration_seconds.map(|s| Duration::from_secs(s.max(0) as u64)),
        None => Some(default),
    }
}

pub(crate) async fn reconcile(ctx: &Ctx, name: &str) -> Result<Next, Error> {
    let pods_on = || ctx.pods.indexed(name);
    let Some(node) = ctx.nodes.get(name) else {
        ctx.node_state.0.lock().expect("monitor lock").remove(name);
        // Pod GC: nothing can run these any more.
        for p in pods_on() {
            let api: Api<Pod> = ctx.api(&p.namespace().unwrap_or_default());
            match api.delete(&p.name_any(), &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        return Ok(Next::Done);
    };
    let beat = heartbeat(ctx, &node);
    let (fresh, unhealthy_for) = {
        let mut m = ctx.node_state.0.lock().expect("monitor lock");
        let seen = m.entry(name.to_string()).or_insert_with(|| Seen { heartbeat: beat.clone(), at: Instant::now(), unhealthy_since: None });
        if seen.heartbeat != beat {
            seen.heartbeat = beat;
            seen.at = Instant::now();
        }
        let fresh = seen.at.elapsed() <= ctx.cfg.node_monitor_grace;
        let kubelet_ready = ready_condition(&node).map(|c| c.status.as_str()) != Some("False");
        if fresh && kubelet_ready {
            seen.unhealthy_since = None;
        } else if seen.unhealthy_since.is_none() {
            seen.unhealthy_since = Some(Instant::now());
        }
        (fresh, seen.unhealthy_since.map(|s| s.elapsed()))
    };
    let node_api: Api<Node> = Api::all(ctx.client.clone());
    let taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    let ours = |t: &Taint| t.key == UNREACHABLE || t.key == NOT_READY;
    let want_key = match (fresh, ready_condition(&node).map(|c| c.status.as_str())) {
        (false, _) => Some(UNREACHABLE),
        (true, Some("False")) => Some(NOT_READY),
        _ => None,
    };
    // Taints: exactly ours for the node's state, everybody else's untouched.
    let mut want: Vec<Taint> = taints.iter().filter(|t| !ours(t)).cloned().collect();
    if let Some(k) = want_key {
        let now = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));
        for effect in ["NoSchedule", "NoExecute"] {
            let kept = taints.iter().find(|t| t.key == k && t.effect == effect).cloned();
            want.push(kept.unwrap_or(Taint { key: k.into(), effect: effect.into(), value: None, time_added: now.clone() }));
        }
    }
    if want != taints {
        node_api.patch(name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"taints": want}}))).await?;
    }
    if !fresh {
        if ready_condition(&node).map(|c| c.status.as_str()) != Some("Unknown") {
            let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
            let mut conds = node.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
            for c in conds.iter_mut() {
                if c.status != "Unknown" {
                    c.status = "Unknown".into();
                    c.reason = Some("NodeStatusUnknown".into());
                    c.message = Some("Kubelet stopped posting node status.".into());
                    c.last_transition_time = Some(now.clone());
                }
            }
            node_api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": {"conditions": conds}}))).await?;
            ctx.events.record(node.as_ref(), true, "NodeNotReady", format!("Node {name} status is now: NodeNotReady"));
        }
        // Its pods are not ready any more (so Services stop sending them traffic).
        for p in pods_on().iter().filter(|p| is_ready(p)) {
            let api: Api<Pod> = ctx.api(&p.namespace().unwrap_or_default());
            let mut conds = p.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
            for c in conds.iter_mut().filter(|c| c.type_ == "Ready") {
                c.status = "False".into();
                c.reason = Some("NodeUnreachable".into());
            }
            match api.patch_status(&p.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": {"conditions": conds}}))).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    // Eviction once the pods' tolerance of the taint ran out.
    let mut next = Next::Done;
    if let (Some(k), Some(for_)) = (want_key, unhealthy_for) {
        for p in pods_on().into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
            let Some(tol) = tolerance(&p, k, ctx.cfg.pod_eviction_timeout) else { continue };
            if for_ >= tol {
                let api: Api<Pod> = ctx.api(&p.namespace().unwrap_or_default());
                match api.delete(&p.name_any(), &DeleteParams::default()).await {
                    Ok(_) => ctx.events.record(p.as_ref(), false, "TaintManagerEviction", format!("Marking for deletion Pod {}/{}", p.namespace().unwrap_or_default(), p.name_any())),
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            } else {
                let left = tol - for_;
                next = match next {
                    Next::After(d) => Next::After(d.min(left)),
                    Next::Done => Next::After(left),
                };
            }
        }
    }
    Ok(next)
}
