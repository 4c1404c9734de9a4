//! Why a pod fits nowhere, said the way kube-scheduler says it, and which cluster
//! changes could make it fit.

use std::fmt;

/// Why one node was filtered out. A node fails at the first filter that rejects it
/// (the resource filter may give several `Insufficient` reasons at once).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The node's Ready condition is not True.
    NotReady,
    /// `spec.unschedulable` (cordoned).
    Unschedulable,
    /// The first NoSchedule or NoExecute taint the pod does not tolerate.
    UntoleratedTaint { key: String, value: String },
    /// nodeSelector or required node affinity.
    NodeAffinity,
    TooManyPods,
    /// Not enough of a resource left (`cpu`, `memory`, `ephemeral-storage`, …).
    Insufficient(String),
    /// The pod's required pod affinity.
    PodAffinity,
    /// The pod's required pod anti-affinity.
    PodAntiAffinity,
    /// Required anti-affinity of pods already there, against this pod.
    ExistingPodAntiAffinity,
    /// The pod's volume claims hold data on another node (local volumes).
    VolumeNodeAffinity,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NotReady => f.write_str("node(s) were not ready"),
            Reason::Unschedulable => f.write_str("node(s) were unschedulable"),
            Reason::UntoleratedTaint { key, value } => write!(f, "node(s) had untolerated taint {{{key}: {value}}}"),
            Reason::NodeAffinity => f.write_str("node(s) didn't match Pod's node affinity/selector"),
            Reason::TooManyPods => f.write_str("Too many pods"),
            Reason::Insufficient(resource) => write!(f, "Insufficient {resource}"),
            Reason::PodAffinity => f.write_str("node(s) didn't match pod affinity rules"),
            Reason::PodAntiAffinity => f.write_str("node(s) didn't match pod anti-affinity rules"),
            Reason::ExistingPodAntiAffinity => f.write_str("node(s) didn't satisfy existing pods anti-affinity rules"),
            Reason::VolumeNodeAffinity => f.write_str("node(s) had volume node affinity conflict"),
        }
    }
}

/// No node can take the pod. Displays as kube-scheduler's message, e.g. `0/3 nodes are
/// available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: },
/// 2 Insufficient cpu.`
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Unschedulable {
    /// How many nodes the snapshot had.
    pub nodes: usize,
    /// Each reason with the number of nodes that gave it.
    pub reasons: Vec<(Reason, usize)>,
}

impl fmt::Display for Unschedulable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nodes == 0 {
            return f.write_str("no nodes available to schedule pods");
        }
        // Sorted as strings, as kube-scheduler sorts them (so "10 …" comes before "2 …").
        let mut parts: Vec<String> = self.reasons.iter().map(|(reason, count)| format!("{count} {reason}")).collect();
        parts.sort();
        write!(f, "0/{} nodes are available: {}.", self.nodes, parts.join(", "))
    }
}

/// A change to the cluster, for deciding whether to try an unschedulable pod again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterEvent {
    NodeAdded,
    NodeUpdated,
    /// A pod was bound to a node (or seen bound).
    PodAdded,
    /// A bound pod was deleted or finished.
    PodDeleted,
    /// A Namespace's labels changed (pod affinity namespaceSelectors).
    NamespaceChanged,
}

impl Unschedulable {
    /// Whether `event` might make the pod fit, so it is worth another attempt. Ers on the
    /// side of yes: any node change may, a deleted pod may free resources or lift
    /// anti-affinity, an added pod may satisfy affinity. A caller that does not want to
    /// decide can retry every unschedulable pod on every such event.
    pub fn may_be_resolved_by(&self, event: ClusterEvent) -> bool {
        let any = |pred: fn(&Reason) -> bool| self.reasons.iter().any(|(r, _)| pred(r));
        match event {
            ClusterEvent::NodeAdded | ClusterEvent::NodeUpdated => true,
            ClusterEvent::PodDeleted => any(|r| {
                matches!(
                    r,
                    Reason::TooManyPods
                        | Reason::Insufficient(_)
                        | Reason::PodAffinity // the last matching pod gone: self-affinity may apply
                        | Reason::PodAntiAffinity
                        | Reason::ExistingPodAntiAffinity
                )
            }),
            ClusterEvent::PodAdded => any(|r| matches!(r, Reason::PodAffinity)),
            ClusterEvent::NamespaceChanged => {
                any(|r| matches!(r, Reason::PodAffinity | Reason::PodAntiAffinity | Reason::ExistingPodAntiAffinity))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_like_kube_scheduler() {
        let taint = Reason::UntoleratedTaint { key: "node-role.kubernetes.io/control-plane".into(), value: "".into() };
        let cases = [
            (
                Unschedulable { nodes: 3, reasons: vec![(Reason::Insufficient("cpu".into()), 2), (taint, 1)] },
                "0/3 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, 2 Insufficient cpu.",
            ),
            (
                Unschedulable {
                    nodes: 12,
                    reasons: vec![
                        (Reason::Insufficient("memory".into()), 2),
                        (Reason::NodeAffinity, 10),
                        (Reason::Insufficient("cpu".into()), 2),
                    ],
                },
                "0/12 nodes are available: 10 node(s) didn't match Pod's node affinity/selector, 2 Insufficient cpu, 2 Insufficient memory.",
            ),
            (
                Unschedulable { nodes: 1, reasons: vec![(Reason::TooManyPods, 1)] },
                "0/1 nodes are available: 1 Too many pods.",
            ),
            (Unschedulable { nodes: 0, reasons: vec![] }, "no nodes available to schedule pods"),
        ];
        for (unschedulable, want) in cases {
            assert_eq!(unschedulable.to_string(), want);
        }
    }

    #[test]
    fn requeue_hints() {
        let of = |reason: Reason| Unschedulable { nodes: 1, reasons: vec![(reason, 1)] };
        let cpu = of(Reason::Insufficient("cpu".into()));
        assert!(cpu.may_be_resolved_by(ClusterEvent::NodeAdded));
        assert!(cpu.may_be_resolved_by(ClusterEvent::PodDeleted));
        assert!(!cpu.may_be_resolved_by(ClusterEvent::PodAdded));
        let taint = of(Reason::UntoleratedTaint { key: "k".into(), value: "v".into() });
        assert!(taint.may_be_resolved_by(ClusterEvent::NodeUpdated));
        assert!(!taint.may_be_resolved_by(ClusterEvent::PodDeleted));
        let affinity = of(Reason::PodAffinity);
        assert!(affinity.may_be_resolved_by(ClusterEvent::PodAdded));
        assert!(affinity.may_be_resolved_by(ClusterEvent::NamespaceChanged));
        assert!(!of(Reason::NodeAffinity).may_be_resolved_by(ClusterEvent::NamespaceChanged));
        assert!(of(Reason::ExistingPodAntiAffinity).may_be_resolved_by(ClusterEvent::PodDeleted));
    }
}
