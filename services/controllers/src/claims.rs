//! Local volumes, the way k3s' local-path provisioner with `WaitForFirstConsumer` behaves:
//! a PersistentVolumeClaim has no node until the first pod using it is scheduled; then it
//! is pinned to that pod's node (annotation `volume.kubernetes.io/selected-node`, phase
//! Bound) and every later pod using it may only go there, where the kubelet keeps its data.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::cache::Cache;

/// The annotation naming the node a claim's data lives on (Kubernetes' own name for it).
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// The claims `pod` mounts.
pub fn claim_names(pod: &Pod) -> Vec<String> {
    pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()).filter_map(|v| v.persistent_volume_claim.as_ref().map(|c| c.claim_name.clone())).collect()
}

/// Where `pod`'s claims keep their data: the node they are pinned to (if any) and the
/// claims not pinned yet. An error is a message for the pod's PodScheduled condition.
pub fn pinning(pod: &Pod, claims: &Cache<PersistentVolumeClaim>) -> Result<(Option<String>, Vec<Arc<PersistentVolumeClaim>>), String> {
    let ns = pod.namespace().unwrap_or_default();
    let mut node: Option<String> = None;
    let mut unpinned = Vec::new();
    for name in claim_names(pod) {
        let Some(c) = claims.get(&format!("{ns}/{name}")) else {
            return Err(format!("persistentvolumeclaim \"{name}\" not found"));
        };
        if c.metadata.deletion_timestamp.is_some() {
            return Err(format!("persistentvolumeclaim \"{name}\" is being deleted"));
        }
        match c.annotations().get(SELECTED_NODE).filter(|n| !n.is_empty()) {
            Some(n) => match &node {
                Some(other) if other != n => return Err(format!("the pod's persistentvolumeclaims keep their data on different nodes ({other}, {n})")),
                _ => node = Some(n.clone()),
            },
            None => unpinned.push(c),
        }
    }
    Ok((node, unpinned))
}

/// Pin `claim` to `node` and mark it Bound. The write carries the claim's resourceVersion,
/// so of two racing pins one gets 409.
pub async fn pin(client: &kube::Client, claim: &PersistentVolumeClaim, node: &str) -> Result<(), kube::Error> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &claim.namespace().unwrap_or_default());
    let name = claim.name_any();
    let meta = json!({"metadata": {"resourceVersion": claim.resource_version(), "annotations": {SELECTED_NODE: node}}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(meta)).await?;
    let spec = claim.spec.as_ref();
    let capacity = spec.and_then(|s| s.resources.as_ref()).and_then(|r| r.requests.as_ref()).and_then(|r| r.get("storage")).map(|q| json!({"storage": q}));
    let modes = spec.and_then(|s| s.access_modes.clone()).unwrap_or_else(|| vec!["ReadWriteOnce".into()]);
    let status = json!({"status": {"phase": "Bound", "accessModes": modes, "capacity": capacity}});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status)).await?;
    Ok(())
}
