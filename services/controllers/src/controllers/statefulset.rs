//! StatefulSet: pods `<name>-0 … <name>-(n-1)` with stable names, hostnames and claims
//! (`<template>-<name>-<ordinal>`, kept when pods go); OrderedReady starts them one at a time
//! in order and stops them from the highest ordinal, Parallel does not wait; rolling
//! update replaces pods of an old template from the highest ordinal, one at a time.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::{Ctx};
use crate::pods::{controller_ref, from_template, is_available, is_ready, now_unix, phase, template_hash};
use crate::cache::split_key;
use crate::queue::Next;
use crate::Error;

const HASH_LABEL: &str = "controller-revision-hash";
const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";

fn ordinal(sts: &str, pod: &str) -> Option<usize> {
    pod.strip_prefix(sts)?.strip_prefix('-')?.parse().ok()
}

fn running_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none() && phase(p) == "Running" && is_ready(p)
}

pub(crate) async fn reconcile(ctx: &Ctx, key: &str) -> Result<Next, Error> {
    let Some(sts) = ctx.statefulsets.get(key) else { return Ok(Next::Done) };
    if sts.metadata.deletion_timestamp.is_some() {
        return Ok(Next::Done);
    }
    let (ns, name) = split_key(key);
    let spec = sts.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0) as usize;
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let hash = template_hash(&spec.template);
    let mut pods: BTreeMap<usize, Arc<Pod>> = BTreeMap::new();
    for p in ctx.pods.owned_by(&sts.uid().unwrap_or_default()) {
        if let Some(i) = ordinal(name, &p.name_any()) {
            pods.insert(i, p);
        }
    }
    if ctx.expect.satisfied(key, &ctx.pods) {
        // Finished pods are replaced (a StatefulSet's pods always run).
        if let Some(p) = pods.values().find(|p| p.metadata.deletion_timestamp.is_none() && matches!(phase(p), "Failed" | "Succeeded")) {
            ctx.delete_pods(key, std::slice::from_ref(p)).await?;
            return Ok(Next::Done);
        }
        // Start: in ordinal order, waiting for each to be Running and Ready (OrderedReady).
        for i in 0..replicas {
            match pods.get(&i) {
                None => {
                    let pod_name = format!("{name}-{i}");
                    ensure_claims(ctx, &sts, ns, i).await?;
                    let mut pod = from_template(
                        &spec.template,
                        controller_ref(sts.as_ref()),
                        ns,
                        Some(pod_name.clone()),
                        &[(HASH_LABEL, &hash), (POD_NAME_LABEL, &pod_name), ("apps.kubernetes.io/pod-index", &i.to_string())],
                    );
                    let ps = pod.spec.get_or_insert_with(Default::default);
                    ps.hostname = Some(pod_name.clone());
                    ps.subdomain = spec.service_name.clone().filter(|s| !s.is_empty());
                    for t in spec.volume_claim_templates.iter().flatten() {
                        let tname = t.name_any();
                        let vols = ps.volumes.get_or_insert_with(Vec::new);
                        vols.retain(|v| v.name != tname);
                        vols.push(Volume {
                            name: tname.clone(),
                            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource { claim_name: format!("{tname}-{name}-{i}"), read_only: None }),
                            ..Default::default()
                        });
                    }
                    ctx.create_pods(key, ns, vec![pod]).await?;
                    ctx.events.record(sts.as_ref(), false, "SuccessfulCreate", format!("create Pod {pod_name} in StatefulSet {name} successful"));
                    if !parallel {
                        return Ok(Next::Done);
                    }
                }
                Some(p) if !parallel && !running_ready(p) => return Ok(Next::Done),
                Some(_) => {}
            }
        }
        // Stop: from the highest ordinal, one at a time, once the rest are Running and Ready.
        let extra: Vec<usize> = pods.keys().copied().filter(|i| *i >= replicas).collect();
        if let Some(&top) = extra.iter().max() {
            let p = &pods[&top];
            let rest_ready = pods.iter().filter(|(i, _)| **i < top).all(|(_, p)| running_ready(p));
            if p.metadata.deletion_timestamp.is_none() && (parallel || rest_ready) {
                ctx.delete_pods(key, std::slice::from_ref(p)).await?;
                ctx.events.record(sts.as_ref(), false, "SuccessfulDelete", format!("delete Pod {} in StatefulSet {name} successful", p.name_any()));
            }
            if !parallel {
                return status(ctx, &sts, &pods, &hash).await;
            }
        }
        // Rolling update: all up and ready, replace the highest pod of an old revision.
        let rolling = spec.update_strategy.as_ref().and_then(|s| s.type_.as_deref()).unwrap_or("RollingUpdate") == "RollingUpdate";
        let partition = spec.update_strategy.as_ref().and_then(|s| s.rolling_update.as_ref()).and_then(|r| r.partition).unwrap_or(0).max(0) as usize;
        if rolling && pods.values().all(|p| running_ready(p)) && pods.len() == replicas {
            if let Some((_, p)) = pods.iter().rev().find(|(i, p)| **i >= partition && p.labels().get(HASH_LABEL) != Some(&hash)) {
                ctx.delete_pods(key, std::slice::from_ref(p)).await?;
            }
        }
    }
    status(ctx, &sts, &pods, &hash).await
}

async fn ensure_claims(ctx: &Ctx, sts: &StatefulSet, ns: &str, i: usize) -> Result<(), Error> {
    let api: Api<PersistentVolumeClaim> = ctx.api(ns);
    for t in sts.spec.as_ref().and_then(|s| s.volume_claim_templates.as_ref()).into_iter().flatten() {
        let claim = format!("{}-{}-{i}", t.name_any(), sts.name_any());
        if ctx.claims.get(&format!("{ns}/{claim}")).is_some() {
            continue;
        }
        let mut labels = t.labels().clone();
        labels.extend(sts.spec.as_ref().and_then(|s| s.selector.match_labels.clone()).unwrap_or_default());
        let pvc = PersistentVolumeClaim {
            metadata: ObjectMeta { name: Some(claim), namespace: Some(ns.into()), labels: Some(labels), ..Default::default() },
            spec: t.spec.clone(),
            status: None,
        };
        match api.create(&PostParams::default(), &pvc).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn status(ctx: &Ctx, sts: &StatefulSet, pods: &BTreeMap<usize, Arc<Pod>>, hash: &str) -> Result<Next, Error> {
    let min_ready = sts.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let now = now_unix();
    let live: Vec<&Arc<Pod>> = pods.values().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
    let updated = live.iter().filter(|p| p.labels().get(HASH_LABEL).map(String::as_str) == Some(hash)).count() as i32;
    let status = StatefulSetStatus {
        replicas: live.len() as i32,
        ready_replicas: Some(live.iter().filter(|p| is_ready(p)).count() as i32),
        available_replicas: Some(live.iter().filter(|p| is_available(p, min_ready, now)).count() as i32),
        current_replicas: Some(updated),
        updated_replicas: Some(updated),
        current_revision: Some(format!("{}-{hash}", sts.name_any())),
        update_revision: Some(format!("{}-{hash}", sts.name_any())),
        observed_generation: sts.metadata.generation,
        collision_count: None,
        conditions: None,
    };
    if sts.status.as_ref() != Some(&status) {
        let api: Api<StatefulSet> = ctx.api(&sts.namespace().unwrap_or_default());
        api.patch_status(&sts.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await?;
    }
    Ok(Next::Done)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ordinals_come_from_the_name() {
        assert_eq!(super::ordinal("web", "web-12"), Some(12));
        assert_eq!(super::ordinal("web", "webx-1"), None);
        assert_eq!(super::ordinal("web", "web-a"), None);
    }
}
