//! Claims of pods that were bound without the scheduler (DaemonSet pods, a `nodeName` in
//! git): pinned to the pod's node like the scheduler pins them before its bind (see
//! `crate::claims`), so the kubelet there may use them.

use kube::ResourceExt;

use super::Ctx;
use crate::claims::{pin, pinning};
use crate::pods::is_active;
use crate::queue::Next;
use crate::Error;

/// `key` is a pod's.
pub(super) async fn reconcile(ctx: &Ctx, key: &str) -> Result<Next, Error> {
    let Some(pod) = ctx.pods.get(key) else { return Ok(Next::Done) };
    let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()) else { return Ok(Next::Done) };
    if !is_active(&pod) {
        return Ok(Next::Done);
    }
    // A missing claim or one of another node: the kubelet says why the pod waits.
    let Ok((pinned, unpinned)) = pinning(&pod, &ctx.claims) else { return Ok(Next::Done) };
    if let Some(other) = pinned.filter(|p| *p != node) {
        ctx.events.record(pod.as_ref(), true, "FailedAttachVolume", format!("the pod's persistentvolumeclaims keep their data on node {other}, not {node}"));
        return Ok(Next::Done);
    }
    for c in unpinned {
        pin(&ctx.client, &c, &node).await?;
        tracing::info!(claim = %c.name_any(), %node, "claim pinned to the node of its bound pod");
    }
    Ok(Next::Done)
}
