//! DaemonSet: one pod on every node the template fits (node selector, required node
//! affinity, taints; the usual DaemonSet tolerations added), bound directly to its node;
//! rolling update replaces pods of an old template, at most maxUnavailable at a time.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, Toleration};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::{deployment::resolve, requeue, Ctx};
use crate::pods::{controller_ref, from_template, is_active, is_available, is_ready, now_unix, template_hash};
use crate::cache::split_key;
use crate::queue::Next;
use crate::Error;

pub const HASH_LABEL: &str = "controller-revision-hash";

/// The tolerations Kubernetes gives every DaemonSet pod, so it stays on troubled nodes.
fn with_daemon_tolerations(template: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = template.clone();
    let spec = t.spec.get_or_insert_with(Default::default);
    let tol = spec.tolerations.get_or_insert_with(Vec::new);
    for (key, effect) in [
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ] {
        if !tol.iter().any(|x| x.key.as_deref() == Some(key)) {
            tol.push(Toleration { key: Some(key.into()), operator: Some("Exists".into()), effect: Some(effect.into()), ..Default::default() });
        }
    }
    t
}

pub(crate) async fn reconcile(ctx: &Ctx, key: &str) -> Result<Next, Error> {
    let Some(ds) = ctx.daemonsets.get(key) else { return Ok(Next::Done) };
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Next::Done);
    }
    let (ns, name) = split_key(key);
    let spec = ds.spec.clone().unwrap_or_default();
    let template = with_daemon_tolerations(&spec.template);
    let hash = template_hash(&spec.template);
    let probe = Pod { metadata: Default::default(), spec: template.spec.clone(), status: None };
    let nodes = ctx.nodes.list();
    let eligible: BTreeMap<String, bool> = nodes.iter().map(|n| (n.name_any(), kapp_scheduler::node_eligible(&probe, n))).collect();
    let mut by_node: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
    let owned = ctx.pods.owned_by(&ds.uid().unwrap_or_default());
    for p in owned.iter().filter(|p| is_active(p)) {
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        by_node.entry(node).or_default().push(p.clone());
    }
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let now = now_unix();
    if ctx.expect.satisfied(key, &ctx.pods) {
        let mut create = Vec::new();
        let mut delete: Vec<Arc<Pod>> = Vec::new();
        for (node, ok) in &eligible {
            let pods = by_node.get(node).cloned().unwrap_or_default();
            if *ok && pods.is_empty() {
                let mut pod = from_template(&template, controller_ref(ds.as_ref()), ns, None, &[(HASH_LABEL, &hash)]);
                pod.spec.get_or_insert_with(Default::default).node_name = Some(node.clone());
                create.push(pod);
            } else if *ok && pods.len() > 1 {
                let mut pods = pods;
                pods.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()));
                delete.extend(pods.into_iter().skip(1));
            } else if !*ok {
                delete.extend(pods);
            }
        }
        // Pods on nodes that no longer exist.
        for (node, pods) in &by_node {
            if !eligible.contains_key(node) {
                delete.extend(pods.iter().cloned());
            }
        }
        // Rolling update: replace old-template pods while few enough are unavailable.
        let rolling = spec.update_strategy.as_ref().and_then(|s| s.type_.as_deref()).unwrap_or("RollingUpdate") == "RollingUpdate";
        if rolling && delete.is_empty() && create.is_empty() {
            let desired = eligible.values().filter(|v| **v).count() as i32;
            let max_unavailable = resolve(
                spec.update_strategy.as_ref().and_then(|s| s.rolling_update.as_ref()).and_then(|r| r.max_unavailable.as_ref()),
                desired,
                false,
                "1",
            )
            .max(1);
            let mut unavailable = eligible
                .iter()
                .filter(|(n, ok)| **ok && !by_node.get(*n).is_some_and(|ps| ps.iter().any(|p| is_available(p, min_ready, now))))
                .count() as i32;
            let mut old: Vec<Arc<Pod>> = by_node.values().flatten().filter(|p| p.labels().get(HASH_LABEL) != Some(&hash)).cloned().collect();
            old.sort_by_key(|p| is_ready(p));
            for p in old {
                if !is_available(&p, min_ready, now) {
                    delete.push(p);
                } else if unavailable < max_unavailable {
                    unavailable += 1;
                    delete.push(p);
                }
            }
        }
        if !delete.is_empty() {
            ctx.delete_pods(key, &delete).await?;
            ctx.events.record(ds.as_ref(), false, "SuccessfulDelete", format!("Deleted {} daemon pod(s)", delete.len()));
        }
        if !create.is_empty() {
            let n = ctx.create_pods(key, ns, create).await?;
            ctx.events.record(ds.as_ref(), false, "SuccessfulCreate", format!("Created {n} daemon pod(s)"));
        }
    }
    let desired = eligible.values().filter(|v| **v).count() as i32;
    let scheduled = by_node.iter().filter(|(n, _)| eligible.get(*n) == Some(&true)).count() as i32;
    let misscheduled = by_node.iter().filter(|(n, _)| eligible.get(*n) != Some(&true)).count() as i32;
    let pods: Vec<&Arc<Pod>> = by_node.iter().filter(|(n, _)| eligible.get(*n) == Some(&true)).flat_map(|(_, ps)| ps).collect();
    let ready = pods.iter().filter(|p| is_ready(p)).count() as i32;
    let available = pods.iter().filter(|p| is_available(p, min_ready, now)).count() as i32;
    let updated = pods.iter().filter(|p| p.labels().get(HASH_LABEL) == Some(&hash)).count() as i32;
    let status = DaemonSetStatus {
        desired_number_scheduled: desired,
        current_number_scheduled: scheduled,
        number_misscheduled: misscheduled,
        number_ready: ready,
        number_available: Some(available),
        number_unavailable: Some((desired - available).max(0)),
        updated_number_scheduled: Some(updated),
        observed_generation: ds.metadata.generation,
        collision_count: None,
        conditions: None,
    };
    if ds.status.as_ref() != Some(&status) {
        let api: Api<DaemonSet> = ctx.api(ns);
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await?;
    }
    if min_ready > 0 && available < ready {
        return requeue(std::time::Duration::from_secs(1));
    }
    Ok(Next::Done)
}
