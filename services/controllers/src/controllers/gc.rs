//! Garbage collection by owner references (the controlling owner): when an owner is gone,
//! its dependents are deleted (Background); an owner being deleted with the
//! `foregroundDeletion` finalizer goes after its dependents, with `orphan` its dependents
//! lose their reference to it and stay. A periodic scan finds dependents whose owner
//! vanished while nobody watched.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Service;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Patch, PatchParams, PropagationPolicy};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::{delete_exact, propagation, requeue, Ctx};
use crate::cache::{key_of, Cache};
use crate::queue::Next;
use crate::Error;

const FOREGROUND: &str = "foregroundDeletion";
const ORPHAN: &str = "orphan";

trait Kind: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug + serde::Serialize + Send + Sync + 'static {}
impl<K> Kind for K where K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug + serde::Serialize + Send + Sync + 'static {}

/// Keys: `gone/<uid>` (an owner vanished) or `owner/<Kind>/<ns>/<name>` (an owner being
/// deleted with a policy).
pub(crate) fn wire(ctx: &Arc<Ctx>) {
    fn owner_hooks<K: Kind>(cache: &Cache<K>, q: &Arc<crate::queue::Queue>) {
        let q = q.clone();
        cache.on_change(move |old, new| match (old, new) {
            (Some(o), None) => q.add(format!("gone/{}", o.uid().unwrap_or_default())),
            (_, Some(n)) if n.meta().deletion_timestamp.is_some() && n.finalizers().iter().any(|f| f == FOREGROUND || f == ORPHAN) => {
                q.add(format!("owner/{}/{}", K::kind(&()), key_of(n)));
            }
            _ => {}
        });
    }
    let q = &ctx.q.gc;
    owner_hooks(&ctx.deployments, q);
    owner_hooks(&ctx.replicasets, q);
    owner_hooks(&ctx.daemonsets, q);
    owner_hooks(&ctx.statefulsets, q);
    owner_hooks(&ctx.jobs, q);
    owner_hooks(&ctx.cronjobs, q);
    owner_hooks(&ctx.services, q);
    // A dependent deleted while its owner waits in the foreground: look at the owner again.
    fn dependent_hooks<K: Kind>(cache: &Cache<K>, q: &Arc<crate::queue::Queue>) {
        let q = q.clone();
        cache.on_change(move |old, new| {
            if let (Some(o), None) = (old, new) {
                for r in o.owner_references().iter().filter(|r| r.controller == Some(true)) {
                    q.add(format!("owner/{}/{}/{}", r.kind, o.namespace().unwrap_or_default(), r.name));
                }
            }
        });
    }
    dependent_hooks(&ctx.pods, q);
    dependent_hooks(&ctx.replicasets, q);
    dependent_hooks(&ctx.jobs, q);
}

/// Whether the controlling owner (by kind, name and uid) of `obj` is in its cache.
fn owner_exists<K: Resource>(ctx: &Ctx, obj: &K) -> Option<bool> {
    let r = obj.meta().owner_references.as_ref()?.iter().find(|r| r.controller == Some(true))?;
    let key = format!("{}/{}", obj.meta().namespace.clone().unwrap_or_default(), r.name);
    let uid = |o: Option<String>| o.as_deref() == Some(r.uid.as_str());
    Some(match r.kind.as_str() {
        "Deployment" => uid(ctx.deployments.get(&key).and_then(|o| o.uid())),
        "ReplicaSet" => uid(ctx.replicasets.get(&key).and_then(|o| o.uid())),
        "DaemonSet" => uid(ctx.daemonsets.get(&key).and_then(|o| o.uid())),
        "StatefulSet" => uid(ctx.statefulsets.get(&key).and_then(|o| o.uid())),
        "Job" => uid(ctx.jobs.get(&key).and_then(|o| o.uid())),
        "CronJob" => uid(ctx.cronjobs.get(&key).and_then(|o| o.uid())),
        "Service" => uid(ctx.services.get(&key).and_then(|o| o.uid())),
        _ => true, // an owner kind not cached here: not ours to judge
    })
}

/// The resync's scan: every dependent whose owner is not cached gets a look.
pub(crate) fn enqueue_orphans(ctx: &Ctx) {
    fn scan<K: Kind>(ctx: &Ctx, cache: &Cache<K>) {
        for o in cache.list() {
            if owner_exists(ctx, o.as_ref()) == Some(false) {
                if let Some(uid) = crate::cache::controller_uid(o.as_ref()) {
                    ctx.q.gc.add(format!("gone/{uid}"));
                }
            }
        }
    }
    scan(ctx, &ctx.pods);
    scan(ctx, &ctx.replicasets);
    scan(ctx, &ctx.jobs);
    scan(ctx, &ctx.slices);
}

async fn delete_orphaned<K: Kind>(ctx: &Ctx, cache: &Cache<K>, uid: &str) -> Result<(), Error> {
    for d in cache.owned_by(uid) {
        if owner_exists(ctx, d.as_ref()) != Some(false) || d.meta().deletion_timestamp.is_some() {
            continue;
        }
        let api: Api<K> = ctx.api(&d.namespace().unwrap_or_default());
        delete_exact(&api, d.as_ref(), &propagation(PropagationPolicy::Background)).await?;
    }
    Ok(())
}

/// For an owner deleted with a policy: how many dependents are left (Foreground: after
/// asking them to go; Orphan: after releasing them).
async fn handle_dependents<K: Kind>(ctx: &Ctx, cache: &Cache<K>, uid: &str, orphan: bool) -> Result<usize, Error> {
    let deps = cache.owned_by(uid);
    for d in &deps {
        let api: Api<K> = ctx.api(&d.namespace().unwrap_or_default());
        if orphan {
            let refs: Vec<_> = d.owner_references().iter().filter(|r| r.uid != uid).cloned().collect();
            api.patch(&d.name_any(), &PatchParams::default(), &Patch::Merge(json!({"metadata": {"ownerReferences": refs, "resourceVersion": d.resource_version()}}))).await?;
        } else if d.meta().deletion_timestamp.is_none() {
            // Owners among the dependents go in the foreground too; leaves (pods, slices)
            // have no dependents to wait for.
            let policy = if matches!(K::kind(&()).as_ref(), "ReplicaSet" | "Job") { PropagationPolicy::Foreground } else { PropagationPolicy::Background };
            delete_exact(&api, d.as_ref(), &propagation(policy)).await?;
        }
    }
    Ok(if orphan { 0 } else { deps.len() })
}

async fn finish<K: Kind>(ctx: &Ctx, cache: &Cache<K>, key: &str) -> Result<Next, Error> {
    let Some(owner) = cache.get(key) else { return Ok(Next::Done) };
    if owner.meta().deletion_timestamp.is_none() {
        return Ok(Next::Done);
    }
    let uid = owner.uid().unwrap_or_default();
    let fins = owner.finalizers().to_vec();
    let (orphan, foreground) = (fins.iter().any(|f| f == ORPHAN), fins.iter().any(|f| f == FOREGROUND));
    if !orphan && !foreground {
        return Ok(Next::Done);
    }
    let mut left = 0;
    left += handle_dependents(ctx, &ctx.pods, &uid, orphan).await?;
    left += handle_dependents(ctx, &ctx.replicasets, &uid, orphan).await?;
    left += handle_dependents(ctx, &ctx.jobs, &uid, orphan).await?;
    left += handle_dependents(ctx, &ctx.slices, &uid, orphan).await?;
    if left > 0 {
        return requeue(std::time::Duration::from_secs(1));
    }
    let rest: Vec<&String> = fins.iter().filter(|f| *f != ORPHAN && *f != FOREGROUND).collect();
    let api: Api<K> = ctx.api(&owner.namespace().unwrap_or_default());
    api.patch(&owner.name_any(), &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": rest, "resourceVersion": owner.resource_version()}}))).await?;
    Ok(Next::Done)
}

pub(crate) async fn reconcile(ctx: &Ctx, key: &str) -> Result<Next, Error> {
    if let Some(uid) = key.strip_prefix("gone/") {
        delete_orphaned(ctx, &ctx.pods, uid).await?;
        delete_orphaned(ctx, &ctx.replicasets, uid).await?;
        delete_orphaned(ctx, &ctx.jobs, uid).await?;
        delete_orphaned(ctx, &ctx.slices, uid).await?;
        return Ok(Next::Done);
    }
    let Some(rest) = key.strip_prefix("owner/") else { return Ok(Next::Done) };
    let Some((kind, key)) = rest.split_once('/') else { return Ok(Next::Done) };
    match kind {
        "Deployment" => finish::<Deployment>(ctx, &ctx.deployments, key).await,
        "ReplicaSet" => finish::<ReplicaSet>(ctx, &ctx.replicasets, key).await,
        "DaemonSet" => finish::<DaemonSet>(ctx, &ctx.daemonsets, key).await,
        "StatefulSet" => finish::<StatefulSet>(ctx, &ctx.statefulsets, key).await,
        "Job" => finish::<Job>(ctx, &ctx.jobs, key).await,
        "CronJob" => finish::<CronJob>(ctx, &ctx.cronjobs, key).await,
        "Service" => finish::<Service>(ctx, &ctx.services, key).await,
        _ => Ok(Next::Done),
    }
}

