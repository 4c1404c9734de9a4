//! Filters: can this node take this pod at all? Run in kube-scheduler's order; a node
//! fails at the first filter that rejects it.
//!
//! Readiness → NodeUnschedulable → TaintToleration → NodeAffinity (nodeSelector and
//! required terms) → NodeResourcesFit → InterPodAffinity.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Taint;

use crate::message::Reason;
use crate::pod_info::PodInfo;
use crate::snapshot::{NodeInfo, Snapshot};

/// Counts per topology key and value (`zone` → `a` → 2).
#[derive(Debug, Default)]
pub(crate) struct Topology(HashMap<String, HashMap<String, u32>>);

impl Topology {
    fn add(&mut self, key: &str, value: &str) {
        *self.0.entry(key.to_owned()).or_default().entry(value.to_owned()).or_default() += 1;
    }

    fn get(&self, key: &str, value: &str) -> u32 {
        self.0.get(key).and_then(|values| values.get(value)).copied().unwrap_or(0)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the node's value for any counted key has a count.
    fn hits(&self, node: &NodeInfo) -> bool {
        self.0.iter().any(|(key, values)| node.labels.get(key).is_some_and(|v| values.contains_key(v)))
    }
}

/// What inter-pod affinity needs, computed once per pod over the whole snapshot
/// (kube-scheduler's InterPodAffinity PreFilter).
#[derive(Debug, Default)]
pub(crate) struct PreFilter {
    /// Topologies where a placed pod's required anti-affinity forbids this pod.
    existing_anti: Topology,
    /// Per topology, placed pods matching all of this pod's required affinity terms.
    affinity: Topology,
    /// Per topology, placed pods matching one of this pod's required anti-affinity terms.
    anti: Topology,
    /// The pod matches all its own affinity terms (it may start a group with itself).
    affinity_matches_self: bool,
}

impl PreFilter {
    pub fn new(snapshot: &Snapshot, pod: &PodInfo) -> Self {
        let namespaces = &snapshot.namespaces;
        let mut pre = PreFilter::default();
        for placed in snapshot.anti_affinity_pods.values() {
            for term in &placed.info.anti_affinity {
                if !term.matches(&pod.namespace, &pod.labels, namespaces) {
                    continue;
                }
                let value = snapshot.node(&placed.node).and_then(|n| n.labels.get(&term.topology_key));
                if let Some(value) = value {
                    pre.existing_anti.add(&term.topology_key, value);
                }
            }
        }
        if pod.affinity.is_empty() && pod.anti_affinity.is_empty() {
            return pre;
        }
        pre.affinity_matches_self =
            pod.affinity.iter().all(|t| t.matches(&pod.namespace, &pod.labels, namespaces));
        for node in &snapshot.nodes {
            for placed in &node.usage.pods {
                let (ns, labels) = (&placed.info.namespace, &placed.info.labels);
                if !pod.affinity.is_empty() && pod.affinity.iter().all(|t| t.matches(ns, labels, namespaces)) {
                    for term in &pod.affinity {
                        if let Some(value) = node.labels.get(&term.topology_key) {
                            pre.affinity.add(&term.topology_key, value);
                        }
                    }
                }
                for term in &pod.anti_affinity {
                    if term.matches(ns, labels, namespaces) {
                        if let Some(value) = node.labels.get(&term.topology_key) {
                            pre.anti.add(&term.topology_key, value);
                        }
                    }
                }
            }
        }
        pre
    }
}

fn synthetic_taint(key: &str) -> Taint {
    Taint { key: key.to_owned(), effect: "NoSchedule".to_owned(), ..Default::default() }
}

/// Pushes why `node` cannot take `pod` onto `reasons`; pushes nothing if it can.
pub(crate) fn filter(node: &NodeInfo, pod: &PodInfo, pre: &PreFilter, reasons: &mut Vec<Reason>) {
    // A pod that tolerates the taint the node lifecycle controller would set may go to
    // a node that is not ready (or cordoned), as in Kubernetes.
    if !node.ready && !pod.tolerates(&synthetic_taint("node.kubernetes.io/not-ready")) {
        return reasons.push(Reason::NotReady);
    }
    if node.unschedulable && !pod.tolerates(&synthetic_taint("node.kubernetes.io/unschedulable")) {
        return reasons.push(Reason::Unschedulable);
    }
    let untolerated = node.taints.iter().find(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute") && !pod.tolerates(t));
    if let Some(taint) = untolerated {
        let value = taint.value.clone().unwrap_or_default();
        return reasons.push(Reason::UntoleratedTaint { key: taint.key.clone(), value });
    }
    if !node_affinity_fits(node, pod) {
        return reasons.push(Reason::NodeAffinity);
    }
    if pod.volume_node.as_ref().is_some_and(|n| *n != node.name) {
        return reasons.push(Reason::VolumeNodeAffinity);
    }
    let before = reasons.len();
    fit(node, pod, reasons);
    if reasons.len() > before {
        return;
    }
    if let Some(reason) = inter_pod_affinity(node, pod, pre) {
        reasons.push(reason);
    }
}

fn node_affinity_fits(node: &NodeInfo, pod: &PodInfo) -> bool {
    pod.node_selector.matches(&node.labels)
        && pod.required_node_terms.as_ref().is_none_or(|terms| terms.iter().any(|t| t.matches(&node.name, &node.labels)))
}

/// NodeResourcesFit: pod slots, then every requested resource against what is left.
fn fit(node: &NodeInfo, pod: &PodInfo, reasons: &mut Vec<Reason>) {
    let used = &node.usage.requested;
    let alloc = &node.allocatable;
    if node.usage.pods.len() as i64 + 1 > node.allowed_pods {
        reasons.push(Reason::TooManyPods);
    }
    let want = &pod.requests.requests;
    if want.milli_cpu > 0 && want.milli_cpu > alloc.milli_cpu - used.milli_cpu {
        reasons.push(Reason::Insufficient("cpu".to_owned()));
    }
    if want.memory > 0 && want.memory > alloc.memory - used.memory {
        reasons.push(Reason::Insufficient("memory".to_owned()));
    }
    for (name, amount) in &want.other {
        let free = alloc.other.get(name).copied().unwrap_or(0) - used.other.get(name).copied().unwrap_or(0);
        if *amount > 0 && *amount > free {
            reasons.push(Reason::Insufficient(name.clone()));
        }
    }
}

fn inter_pod_affinity(node: &NodeInfo, pod: &PodInfo, pre: &PreFilter) -> Option<Reason> {
    if !pod.affinity.is_empty() {
        let mut all_present = true;
        for term in &pod.affinity {
            match node.labels.get(&term.topology_key) {
                Some(value) => all_present &= pre.affinity.get(&term.topology_key, value) > 0,
                None => return Some(Reason::PodAffinity), // the node lacks the topology
            }
        }
        // The first pod of a group with affinity to itself may go anywhere with the
        // topologies, or it would wait forever.
        let starts_group = pre.affinity.is_empty() && pre.affinity_matches_self;
        if !all_present && !starts_group {
            return Some(Reason::PodAffinity);
        }
    }
    let anti = pod.anti_affinity.iter().any(|term| {
        node.labels.get(&term.topology_key).is_some_and(|value| pre.anti.get(&term.topology_key, value) > 0)
    });
    if anti {
        return Some(Reason::PodAntiAffinity);
    }
    pre.existing_anti.hits(node).then_some(Reason::ExistingPodAntiAffinity)
}
