//! Deployment: one ReplicaSet per pod template (named `<deployment>-<pod-template-hash>`);
//! RollingUpdate moves pods from the old ReplicaSets to the new one within maxSurge and
//! maxUnavailable, Recreate stops all old pods first; revision history, minReadySeconds,
//! progressDeadlineSeconds and the Available/Progressing conditions as Kubernetes has them.
//! Rollback is a revert in git: the old template comes back and its ReplicaSet with it.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::{delete_exact, requeue, Ctx};
use crate::pods::{controller_ref, is_active, is_available, now_unix, template_hash};
use crate::cache::split_key;
use crate::queue::Next;
use crate::Error;

pub const HASH_LABEL: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";

fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations().get(REVISION).and_then(|r| r.parse().ok()).unwrap_or(0)
}

/// maxSurge / maxUnavailable: a count or a percentage of `replicas` (surge rounds up,
/// unavailable down, as Kubernetes does).
pub fn resolve(v: Option<&IntOrString>, replicas: i32, round_up: bool, default: &str) -> i32 {
    let v = v.cloned().unwrap_or_else(|| IntOrString::String(default.into()));
    match v {
        IntOrString::Int(i) => i.max(0),
        IntOrString::String(s) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            let x = pct * i64::from(replicas);
            (if round_up { (x + 99) / 100 } else { x / 100 }) as i32
        }
    }
}

pub(crate) async fn reconcile(ctx: &Ctx, key: &str) -> Result<Next, Error> {
    let Some(d) = ctx.deployments.get(key) else { return Ok(Next::Done) };
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Next::Done);
    }
    let (ns, name) = split_key(key);
    let spec = d.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let hash = template_hash(&spec.template);
    let mut all: Vec<Arc<ReplicaSet>> = ctx.replicasets.owned_by(&d.uid().unwrap_or_default());
    all.retain(|r| r.metadata.deletion_timestamp.is_none());
    all.sort_by_key(|r| revision(r));
    let new_rs = all.iter().find(|r| r.labels().get(HASH_LABEL) == Some(&hash)).cloned();
    let old: Vec<Arc<ReplicaSet>> = all.iter().filter(|r| r.labels().get(HASH_LABEL) != Some(&hash)).cloned().collect();
    let rs_api: Api<ReplicaSet> = ctx.api(ns);
    let now = now_unix();
    // The pods of every ReplicaSet, counted once for this pass.
    let counts: HashMap<String, PodCounts> = all.iter().map(|r| (r.uid().unwrap_or_default(), PodCounts::of(ctx, r, min_ready, now))).collect();
    let count = |rs: &ReplicaSet| counts.get(&rs.uid().unwrap_or_default()).copied().unwrap_or_default();
    let spec_of = |rs: &ReplicaSet| rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    // Available pods an old ReplicaSet keeps: pods above its size are about to go.
    let available_of = |rs: &ReplicaSet| -> i32 { count(rs).available.min(spec_of(rs)) };
    let active_of = |rs: &ReplicaSet| -> i32 { count(rs).active };
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let ru = spec.strategy.as_ref().and_then(|s| s.rolling_update.clone()).unwrap_or_default();
    let surge = if recreate { 0 } else { resolve(ru.max_surge.as_ref(), replicas, true, "25%") };
    let mut unavailable = if recreate { replicas } else { resolve(ru.max_unavailable.as_ref(), replicas, false, "25%") };
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    let scale = |rs: Arc<ReplicaSet>, to: i32| {
        let api = rs_api.clone();
        async move {
            api.patch(&rs.name_any(), &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": to}}))).await.map(|_| ())
        }
    };

    if !spec.paused.unwrap_or(false) {
        // The new ReplicaSet, created at the size the strategy allows now.
        let new_rs = match new_rs.clone() {
            Some(r) => r,
            None => {
                let total: i32 = all.iter().map(|r| spec_of(r)).sum();
                let old_active: i32 = old.iter().map(|r| active_of(r)).sum();
                let initial = if recreate {
                    if old_active > 0 { 0 } else { replicas }
                } else {
                    (replicas + surge - total).clamp(0, replicas)
                };
                let next_revision = all.iter().map(|r| revision(r)).max().unwrap_or(0) + 1;
                let rs = new_replicaset(&d, &hash, initial, next_revision);
                let made = match rs_api.create(&PostParams::default(), &rs).await {
                    Ok(r) => r,
                    Err(kube::Error::Api(e)) if e.code == 409 => rs_api.get(&rs.name_any()).await?,
                    Err(e) => return Err(e.into()),
                };
                ctx.events.record(d.as_ref(), false, "ScalingReplicaSet", format!("Scaled up replica set {} to {initial}", made.name_any()));
                Arc::new(made)
            }
        };
        if d.annotations().get(REVISION) != new_rs.annotations().get(REVISION) {
            let api: Api<Deployment> = ctx.api(ns);
            api.patch(name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {REVISION: new_rs.annotations().get(REVISION)}}}))).await?;
        }
        if recreate {
            let mut waiting = false;
            for r in &old {
                if spec_of(r) > 0 {
                    scale(r.clone(), 0).await?;
                    ctx.events.record(d.as_ref(), false, "ScalingReplicaSet", format!("Scaled down replica set {} to 0", r.name_any()));
                }
                waiting |= active_of(r) > 0;
            }
            if !waiting && spec_of(&new_rs) != replicas {
                scale(new_rs.clone(), replicas).await?;
                ctx.events.record(d.as_ref(), false, "ScalingReplicaSet", format!("Scaled up replica set {} to {replicas}", new_rs.name_any()));
            }
        } else {
            // Scale up the new ReplicaSet within maxSurge.
            let total: i32 = all.iter().filter(|r| r.uid() != new_rs.uid()).map(|r| spec_of(r)).sum::<i32>() + spec_of(&new_rs);
            let cur = spec_of(&new_rs);
            // The new ReplicaSet's size after this step, which the scale-down counts with.
            let mut new_spec = cur;
            if cur > replicas {
                scale(new_rs.clone(), replicas).await?;
                new_spec = replicas;
            } else if cur < replicas && total < replicas + surge {
                let to = (cur + replicas + surge - total).min(replicas);
                scale(new_rs.clone(), to).await?;
                ctx.events.record(d.as_ref(), false, "ScalingReplicaSet", format!("Scaled up replica set {} to {to}", new_rs.name_any()));
                new_spec = to;
            }
            // Scale down old ReplicaSets, never below replicas - maxUnavailable available.
            let min_available = replicas - unavailable;
            let new_available = count(&new_rs).available.min(new_spec);
            let new_unavailable = new_spec - new_available;
            let old_specs: i32 = old.iter().map(|r| spec_of(r)).sum();
            // First the old pods that are not available anyway.
            let mut cleanup = (new_spec + old_specs - min_available - new_unavailable).max(0);
            let mut reduced: Vec<(Arc<ReplicaSet>, i32)> = old.iter().map(|r| (r.clone(), spec_of(r))).collect();
            for (r, s) in reduced.iter_mut() {
                if cleanup == 0 {
                    break;
                }
                let unhealthy = (*s - available_of(r)).max(0).min(cleanup);
                *s -= unhealthy;
                cleanup -= unhealthy;
            }
            let available: i32 = reduced.iter().map(|(r, s)| available_of(r).min(*s)).sum::<i32>() + new_available;
            let mut down = (available - min_available).max(0);
            for (_, s) in reduced.iter_mut() {
                let by = (*s).min(down);
                *s -= by;
                down -= by;
            }
            for (r, s) in reduced {
                if s != spec_of(&r) {
                    scale(r.clone(), s).await?;
                    ctx.events.record(d.as_ref(), false, "ScalingReplicaSet", format!("Scaled down replica set {} to {s}", r.name_any()));
                }
            }
        }
        // Revision history: old, empty ReplicaSets beyond the limit go, oldest first.
        let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
        let empty: Vec<&Arc<ReplicaSet>> = old.iter().filter(|r| spec_of(r) == 0 && active_of(r) == 0).collect();
        if empty.len() > limit {
            for r in &empty[..empty.len() - limit] {
                delete_exact(&rs_api, r.as_ref(), &Default::default()).await?;
            }
        }
    }

    // Status, from the same counts (a ReplicaSet created in this pass has no pods yet).
    let cur = all.iter().find(|r| r.labels().get(HASH_LABEL) == Some(&hash));
    let total: i32 = counts.values().map(|c| c.active).sum();
    let ready: i32 = counts.values().map(|c| c.ready).sum();
    let available: i32 = counts.values().map(|c| c.available).sum();
    let updated: i32 = cur.map(|r| count(r).active).unwrap_or(0);
    let old_status = d.status.clone().unwrap_or_default();
    let complete = updated == replicas && available >= replicas && total == replicas;
    let progressed = old_status.updated_replicas != Some(updated) || old_status.available_replicas != Some(available) || old_status.replicas != Some(total);
    let ts = Time(k8s_openapi::jiff::Timestamp::now());
    let prev = |ty: &str| old_status.conditions.iter().flatten().find(|c| c.type_ == ty).cloned();
    let cond = |ty: &str, status: bool, reason: &str, message: String, touch: bool| {
        let status = if status { "True" } else { "False" }.to_string();
        let p = prev(ty);
        let transition = match &p {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => Some(ts.clone()),
        };
        let update = match &p {
            Some(p) if !touch && p.reason.as_deref() == Some(reason) => p.last_update_time.clone(),
            _ => Some(ts.clone()),
        };
        DeploymentCondition { type_: ty.into(), status, reason: Some(reason.into()), message: Some(message), last_transition_time: transition, last_update_time: update }
    };
    let deadline = spec.progress_deadline_seconds.unwrap_or(600);
    let last_progress = prev("Progressing").and_then(|c| c.last_update_time).map(|t| t.0.as_second()).unwrap_or(now);
    let rs_name = cur.map(|r| r.name_any()).unwrap_or_default();
    let progressing = if complete {
        cond("Progressing", true, "NewReplicaSetAvailable", format!("ReplicaSet \"{rs_name}\" has successfully progressed."), false)
    } else if progressed || now - last_progress <= i64::from(deadline) {
        cond("Progressing", true, "ReplicaSetUpdated", format!("ReplicaSet \"{rs_name}\" is progressing."), progressed)
    } else {
        cond("Progressing", false, "ProgressDeadlineExceeded", format!("ReplicaSet \"{rs_name}\" has timed out progressing."), false)
    };
    let is_available_now = available >= replicas - unavailable;
    let available_cond = if is_available_now {
        cond("Available", true, "MinimumReplicasAvailable", "Deployment has minimum availability.".into(), false)
    } else {
        cond("Available", false, "MinimumReplicasUnavailable", "Deployment does not have minimum availability.".into(), false)
    };
    let status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(total),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((replicas - available).max(0)),
        conditions: Some(vec![available_cond, progressing.clone()]),
        collision_count: old_status.collision_count,
        terminating_replicas: None,
    };
    let same = |a: &DeploymentStatus, b: &DeploymentStatus| {
        let strip = |s: &DeploymentStatus| {
            let mut s = s.clone();
            for c in s.conditions.iter_mut().flatten() {
                c.last_update_time = None;
                c.last_transition_time = None;
            }
            s
        };
        strip(a) == strip(b)
    };
    if !same(&status, &old_status) {
        let api: Api<Deployment> = ctx.api(ns);
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await?;
        if progressing.reason.as_deref() == Some("ProgressDeadlineExceeded") {
            ctx.events.record(d.as_ref(), true, "ProgressDeadlineExceeded", format!("Deployment {name} has timed out progressing."));
        }
    }
    if !complete {
        // minReadySeconds and the progress deadline are timers.
        return requeue(std::time::Duration::from_secs(if min_ready > 0 { 1 } else { 5 }));
    }
    Ok(Next::Done)
}

/// What a ReplicaSet's pods are, counted once per pass.
#[derive(Debug, Clone, Copy, Default)]
struct PodCounts {
    active: i32,
    ready: i32,
    available: i32,
}

impl PodCounts {
    fn of(ctx: &Ctx, rs: &ReplicaSet, min_ready: i32, now: i64) -> PodCounts {
        let mut c = PodCounts::default();
        for p in ctx.pods.owned_by(&rs.uid().unwrap_or_default()) {
            if is_active(&p) {
                c.active += 1;
                c.ready += i32::from(crate::pods::is_ready(&p));
            }
            c.available += i32::from(is_available(&p, min_ready, now));
        }
        c
    }
}

fn new_replicaset(d: &Deployment, hash: &str, replicas: i32, revision: i64) -> ReplicaSet {
    let spec = d.spec.clone().unwrap_or_default();
    let mut template = spec.template.clone();
    let mut tm = template.metadata.clone().unwrap_or_default();
    tm.labels.get_or_insert_with(Default::default).insert(HASH_LABEL.into(), hash.into());
    template.metadata = Some(tm.clone());
    let mut selector: LabelSelector = spec.selector.clone();
    selector.match_labels.get_or_insert_with(Default::default).insert(HASH_LABEL.into(), hash.into());
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{}-{hash}", d.name_any())),
            namespace: d.namespace(),
            labels: tm.labels.clone(),
            annotations: Some([(REVISION.to_string(), revision.to_string())].into()),
            owner_references: Some(vec![controller_ref(d)]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec { replicas: Some(replicas), min_ready_seconds: spec.min_ready_seconds, selector, template: Some(template) }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surge_rounds_up_and_unavailable_down() {
        assert_eq!(resolve(Some(&IntOrString::String("25%".into())), 10, true, "25%"), 3);
        assert_eq!(resolve(Some(&IntOrString::String("25%".into())), 10, false, "25%"), 2);
        assert_eq!(resolve(None, 4, false, "25%"), 1);
        assert_eq!(resolve(Some(&IntOrString::Int(2)), 10, false, "25%"), 2);
    }
}
