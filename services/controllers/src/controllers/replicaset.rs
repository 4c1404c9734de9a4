//! ReplicaSet: exactly `replicas` active pods, created and deleted in capped bursts;
//! status counts ready and available pods.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};

use super::{requeue, Ctx};
use crate::pods::{controller_ref, deletion_order, from_template, is_active, is_available, is_ready, now_unix};
use crate::cache::split_key;
use crate::queue::Next;
use crate::Error;

pub(crate) async fn reconcile(ctx: &Ctx, key: &str) -> Result<Next, Error> {
    let Some(rs) = ctx.replicasets.get(key) else { return Ok(Next::Done) };
    if rs.metadata.deletion_timestamp.is_some() {
        return Ok(Next::Done);
    }
    let (ns, _) = split_key(key);
    let uid = rs.uid().unwrap_or_default();
    let owned: Vec<Arc<Pod>> = ctx.pods.owned_by(&uid);
    let want = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0) as usize;
    let active: Vec<Arc<Pod>> = owned.iter().filter(|p| is_active(p)).cloned().collect();
    if ctx.expect.satisfied(key, &ctx.pods) {
        if active.len() < want {
            let Some(template) = rs.spec.as_ref().and_then(|s| s.template.as_ref()) else {
                return Err(Error::Invalid(format!("replicaset {key}: spec.template is required")));
            };
            let n = want - active.len();
            let pods: Vec<Pod> = (0..n).map(|_| from_template(template, controller_ref(rs.as_ref()), ns, None, &[])).collect();
            let made = ctx.create_pods(key, ns, pods).await;
            match &made {
                Ok(m) => ctx.events.record(rs.as_ref(), false, "SuccessfulCreate", format!("Created {m} pod(s)")),
                Err(e) => ctx.events.record(rs.as_ref(), true, "FailedCreate", format!("Error creating pods: {e}")),
            }
            made?;
        } else if active.len() > want {
            let mut by_order = active.clone();
            by_order.sort_by(|a, b| deletion_order(a, b));
            let doomed: Vec<Arc<Pod>> = by_order.into_iter().take((active.len() - want).min(ctx.cfg.burst)).collect();
            ctx.delete_pods(key, &doomed).await?;
            let names: Vec<String> = doomed.iter().map(|p| p.name_any()).collect();
            ctx.events.record(rs.as_ref(), false, "SuccessfulDelete", format!("Deleted pod(s): {}", names.join(", ")));
        }
    }
    // Status from the cache as it is now.
    let min_ready = rs.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let now = now_unix();
    let status = ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(active.len() as i32),
        ready_replicas: Some(active.iter().filter(|p| is_ready(p)).count() as i32),
        available_replicas: Some(active.iter().filter(|p| is_available(p, min_ready, now)).count() as i32),
        observed_generation: rs.metadata.generation,
        conditions: None,
        terminating_replicas: None,
    };
    if rs.status.as_ref() != Some(&status) {
        let api: Api<ReplicaSet> = ctx.api(ns);
        api.patch_status(&rs.name_any(), &PatchParams::default(), &Patch::Merge(serde_json::json!({"status": status}))).await?;
    }
    // Pods becoming available after minReadySeconds need another look.
    let waiting = min_ready > 0 && active.iter().any(|p| is_ready(p) && !is_available(p, min_ready, now));
    if waiting {
        return requeue(std::time::Duration::from_secs(1));
    }
    Ok(Next::Done)
}
