//! Namespaces: every active namespace gets a `default` ServiceAccount; a deleted namespace
//! (Terminating, finalizer `kubernetes`) has everything inside deleted, kind by kind, and
//! goes once it is empty.

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::{requeue, Ctx};
use crate::queue::Next;
use crate::Error;

const FINALIZER: &str = "kubernetes";

pub(crate) async fn reconcile(ctx: &Ctx, name: &str) -> Result<Next, Error> {
    let Some(ns) = ctx.namespaces.get(name) else { return Ok(Next::Done) };
    if ns.metadata.deletion_timestamp.is_none() {
        if ctx.accounts.get(&format!("{name}/default")).is_none() {
            let api: Api<ServiceAccount> = ctx.api(name);
            let sa = ServiceAccount { metadata: ObjectMeta { name: Some("default".into()), namespace: Some(name.into()), ..Default::default() }, ..Default::default() };
            match api.create(&PostParams::default(), &sa).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 || e.code == 403 => {}
                Err(e) => return Err(e.into()),
            }
        }
        return Ok(Next::Done);
    }
    // Terminating: delete what is inside (pods go last, so their owners do not recreate them).
    let mut left = 0usize;
    let mut kinds: Vec<&kapp_api::resource::Resource> = kapp_api::resource::RESOURCES.iter().filter(|r| r.namespaced).collect();
    kinds.sort_by_key(|r| r.kind == "Pod");
    for r in kinds {
        let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(r.group, r.version, r.kind), r.plural);
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), name, &ar);
        let list = api.list(&ListParams::default()).await?;
        for o in list.items {
            left += 1;
            if o.metadata.deletion_timestamp.is_some() {
                continue;
            }
            match api.delete(&o.name_any(), &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    if left > 0 {
        return requeue(std::time::Duration::from_millis(500));
    }
    let rest: Vec<String> = ns.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    if rest.len() != ns.finalizers().len() {
        let api: Api<Namespace> = Api::all(ctx.client.clone());
        api.patch(name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": rest, "resourceVersion": ns.resource_version()}}))).await?;
    }
    Ok(Next::Done)
}
