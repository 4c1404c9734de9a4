//! kapp's scheduler core: which node should a pod run on? Pure functions over a
//! snapshot of the cluster, no IO; the watch-and-bind loop lives elsewhere and drives it.
//!
//! The loop feeds watch events into the [`Snapshot`] (`upsert_node`, `remove_node`,
//! `upsert_pod`, `remove_pod`, `upsert_service`, `upsert_namespace`, …), calls
//! [`Scheduler::schedule`] for each pending pod, then [`Snapshot::assume`] with the
//! chosen node before the binding is seen, and [`Snapshot::remove_pod`] if binding fails.
//! An [`Unschedulable`] error displays kube-scheduler's message and tells, through
//! [`Unschedulable::may_be_resolved_by`], which [`ClusterEvent`]s are worth a retry.
//!
//! Module map:
//! - `quantity`: resource quantities ("100m", "128Mi", "1e3") read exactly.
//! - `resources`: resource amounts, a pod's effective requests, a node's allocatable.
//! - `selectors`: label selectors and node selector terms.
//! - `pod_info`: a pod read once for the filters and scores (affinity terms, tolerations).
//! - `snapshot`: nodes, bound and assumed pods, services, namespaces; kept incrementally.
//! - `filters`: readiness, cordon, taints, node affinity, resource fit, inter-pod affinity.
//! - `scores`: least-allocated, balanced allocation, selector spread, preferred node
//!   affinity, PreferNoSchedule taints, image locality.
//! - `message`: why a pod fits nowhere, and what could change that.
//! - `scheduler`: filter, score, pick; kube-scheduler's percentageOfNodesToScore.

mod filters;
mod message;
mod pod_info;
pub mod quantity;
mod resources;
mod scheduler;
mod scores;
mod selectors;
mod snapshot;

#[cfg(test)]
mod tests;

pub use message::{ClusterEvent, Reason, Unschedulable};
pub use resources::{pod_requests, PodRequests, ResourceError, Resources};
pub use scheduler::{Config, ScheduleError, Scheduler};
pub use scores::Weights;
pub use snapshot::Snapshot;

pub use pod_info::tolerates;

/// Whether `pod` may run on `node` by the node's labels and taints: its node selector and
/// required node affinity match, and it tolerates every NoSchedule and NoExecute taint.
/// (The DaemonSet controller's placement predicate; resources are left to the kubelet.)
pub fn node_eligible(pod: &k8s_openapi::api::core::v1::Pod, node: &k8s_openapi::api::core::v1::Node) -> bool {
    let Ok(info) = pod_info::PodInfo::new(pod) else { return false };
    let name = node.metadata.name.clone().unwrap_or_default();
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let labels: selectors::Labels = labels.into_iter().collect();
    let terms_fit = info.required_node_terms.as_ref().is_none_or(|terms| terms.iter().any(|t| t.matches(&name, &labels)));
    let taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    info.node_selector.matches(&labels)
        && terms_fit
        && taints.iter().filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute").all(|t| info.tolerates(t))
}
