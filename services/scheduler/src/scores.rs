//! Scores: how good is each feasible node? Each score is 0..=100 and the node's total is
//! their weighted sum. The formulas are kube-scheduler's.

use std::collections::HashMap;

use crate::pod_info::{tolerates, PodInfo};
use crate::selectors::Selector;
use crate::snapshot::NodeInfo;

pub const MAX_SCORE: i64 = 100;

/// How much each score counts. The defaults are kube-scheduler's weights; selector
/// spread takes the weight of PodTopologySpread, which replaced it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weights {
    pub least_allocated: i64,
    pub balanced_allocation: i64,
    pub selector_spread: i64,
    pub node_affinity: i64,
    pub taint_toleration: i64,
    pub image_locality: i64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            least_allocated: 1,
            balanced_allocation: 1,
            selector_spread: 2,
            node_affinity: 2,
            taint_toleration: 3,
            image_locality: 1,
        }
    }
}

/// Who a pod is spread against: pods of its controlling owner and pods selected by the
/// Services that select it, in its namespace.
pub(crate) struct Spread<'a> {
    pub owner_uid: Option<&'a str>,
    pub services: Vec<&'a Selector>,
}

/// The whole cluster's figures some scores need.
pub(crate) struct Cluster<'a> {
    pub node_count: usize,
    pub zones: usize,
    pub image_nodes: &'a HashMap<String, usize>,
}

impl Cluster<'_> {
    /// For each of the pod's images, the share of nodes that have it.
    pub fn image_shares(&self, pod: &PodInfo) -> Vec<f64> {
        let share = |image: &String| self.image_nodes.get(image).map_or(0, |n| *n) as f64 / self.node_count.max(1) as f64;
        pod.images.iter().map(share).collect()
    }
}

/// The weighted total for each of `nodes`.
pub(crate) fn score(nodes: &[&NodeInfo], pod: &PodInfo, spread: &Spread, cluster: &Cluster, weights: &Weights) -> Vec<i64> {
    let mut totals = vec![0; nodes.len()];
    let mut add = |weight: i64, scores: &[i64]| {
        totals.iter_mut().zip(scores).for_each(|(total, score)| *total += weight * score);
    };
    let per_node = |f: &dyn Fn(&NodeInfo) -> i64| nodes.iter().map(|n| f(n)).collect::<Vec<_>>();

    add(weights.least_allocated, &per_node(&|n| least_allocated(n, pod)));
    if !pod.requests.requests.is_zero() {
        add(weights.balanced_allocation, &per_node(&|n| balanced_allocation(n, pod)));
    }
    if spread.owner_uid.is_some() || !spread.services.is_empty() {
        let counts = per_node(&|n| spread_count(n, pod, spread));
        add(weights.selector_spread, &normalize_spread(nodes, cluster.zones, counts));
    }
    if !pod.preferred_node_terms.is_empty() {
        let mut scores = per_node(&|n| preferred_node_affinity(n, pod));
        normalize(&mut scores, false);
        add(weights.node_affinity, &scores);
    }
    if nodes.iter().any(|n| n.taints.iter().any(|t| t.effect == "PreferNoSchedule")) {
        let mut scores = per_node(&|n| intolerable_taints(n, pod));
        normalize(&mut scores, true);
        add(weights.taint_toleration, &scores);
    }
    let shares = cluster.image_shares(pod);
    if shares.iter().any(|s| *s > 0.0) {
        add(weights.image_locality, &per_node(&|n| image_locality(n, pod, &shares)));
    }
    totals
}

/// `(allocatable - requested) * 100 / allocatable`, 0 when over.
fn least_requested(requested: i64, allocatable: i64) -> i64 {
    if allocatable == 0 || requested > allocatable {
        return 0;
    }
    (allocatable - requested) * MAX_SCORE / allocatable
}

/// NodeResourcesFit LeastAllocated: cpu and memory free after placing the pod, counting
/// containers without requests as 100m / 200Mi.
pub(crate) fn least_allocated(node: &NodeInfo, pod: &PodInfo) -> i64 {
    let cpu = node.usage.non_zero_milli_cpu + pod.requests.non_zero_milli_cpu;
    let memory = node.usage.non_zero_memory + pod.requests.non_zero_memory;
    (least_requested(cpu, node.allocatable.milli_cpu) + least_requested(memory, node.allocatable.memory)) / 2
}

/// NodeResourcesBalancedAllocation: `(1 - |cpu fraction - memory fraction| / 2) * 100`
/// after placing the pod.
pub(crate) fn balanced_allocation(node: &NodeInfo, pod: &PodInfo) -> i64 {
    let (used, want, alloc) = (&node.usage.requested, &pod.requests.requests, &node.allocatable);
    let fraction = |requested: i64, alloc: i64| (alloc != 0).then(|| (requested as f64 / alloc as f64).min(1.0));
    let cpu = fraction(used.milli_cpu + want.milli_cpu, alloc.milli_cpu);
    let memory = fraction(used.memory + want.memory, alloc.memory);
    // With one resource (or none) there is nothing to balance.
    let deviation = match (cpu, memory) {
        (Some(a), Some(b)) => ((a - b) / 2.0).abs(),
        _ => 0.0,
    };
    ((1.0 - deviation) * MAX_SCORE as f64) as i64
}

/// Pods on the node the pod should be spread from (not terminating, same namespace).
pub(crate) fn spread_count(node: &NodeInfo, pod: &PodInfo, spread: &Spread) -> i64 {
    if spread.services.is_empty() {
        let (Some(uid), false) = (spread.owner_uid, node.usage.owner_counts.is_empty()) else { return 0 };
        return node.usage.owner_counts.get(uid).copied().map_or(0, i64::from);
    }
    let selected = node.usage.pods.iter().filter(|placed| {
        let p = &placed.info;
        p.namespace == pod.namespace
            && !p.terminating
            && (spread.owner_uid.is_some_and(|uid| p.owner_uid.as_deref() == Some(uid))
                || spread.services.iter().any(|s| s.matches(&p.labels)))
    });
    selected.count() as i64
}

/// SelectorSpread's normalisation: fewer matching pods on the node scores higher, and
/// when nodes have zones, fewer in the node's zone counts for two thirds.
/// `zones`: how many zone numbers there are.
pub(crate) fn normalize_spread(nodes: &[&NodeInfo], zones: usize, counts: Vec<i64>) -> Vec<i64> {
    const ZONE_WEIGHTING: f64 = 2.0 / 3.0;
    let max_by_node = counts.iter().copied().max().unwrap_or(0);
    let mut by_zone = vec![0; zones];
    for (node, count) in nodes.iter().zip(&counts) {
        if let Some(zone) = node.zone {
            by_zone[zone] += count;
        }
    }
    let max_by_zone = by_zone.iter().copied().max().unwrap_or(0);
    let max = MAX_SCORE as f64;
    nodes
        .iter()
        .zip(&counts)
        .map(|(node, count)| {
            let mut score = max;
            if max_by_node > 0 {
                score = max * (max_by_node - count) as f64 / max_by_node as f64;
            }
            if let Some(zone) = node.zone {
                let mut zone_score = max;
                if max_by_zone > 0 {
                    zone_score = max * (max_by_zone - by_zone[zone]) as f64 / max_by_zone as f64;
                }
                score = score * (1.0 - ZONE_WEIGHTING) + ZONE_WEIGHTING * zone_score;
            }
            score as i64
        })
        .collect()
}

/// Sum of the weights of preferred node affinity terms the node matches.
pub(crate) fn preferred_node_affinity(node: &NodeInfo, pod: &PodInfo) -> i64 {
    let matching = pod.preferred_node_terms.iter().filter(|(_, term)| term.matches(&node.name, &node.labels));
    matching.map(|(weight, _)| weight).sum()
}

/// PreferNoSchedule taints the pod does not tolerate (tolerations with an empty or
/// PreferNoSchedule effect count).
pub(crate) fn intolerable_taints(node: &NodeInfo, pod: &PodInfo) -> i64 {
    let tolerations: Vec<_> = pod
        .tolerations
        .iter()
        .filter(|t| matches!(t.effect.as_deref(), None | Some("") | Some("PreferNoSchedule")))
        .collect();
    let taints = node.taints.iter().filter(|t| t.effect == "PreferNoSchedule");
    taints.filter(|taint| !tolerations.iter().any(|t| tolerates(t, taint))).count() as i64
}

/// ImageLocality: the sizes of the pod's images already on the node, each scaled by the
/// share of nodes that have it (`shares`, from [`Cluster::image_shares`]), mapped from
/// 23MB..1000MB per container onto 0..100.
pub(crate) fn image_locality(node: &NodeInfo, pod: &PodInfo, shares: &[f64]) -> i64 {
    const MB: i64 = 1024 * 1024;
    const MIN_THRESHOLD: i64 = 23 * MB;
    const MAX_CONTAINER_THRESHOLD: i64 = 1000 * MB;
    let sum: i64 = (pod.images.iter().zip(shares))
        .filter(|(_, share)| **share > 0.0)
        .filter_map(|(image, share)| Some((*node.images.get(image)? as f64 * share) as i64))
        .sum();
    let max_threshold = MAX_CONTAINER_THRESHOLD * pod.images.len() as i64;
    let sum = sum.clamp(MIN_THRESHOLD, max_threshold.max(MIN_THRESHOLD));
    if max_threshold <= MIN_THRESHOLD {
        return 0;
    }
    MAX_SCORE * (sum - MIN_THRESHOLD) / (max_threshold - MIN_THRESHOLD)
}

/// kube-scheduler's `DefaultNormalizeScore`: scale so the best is 100 (`reverse`: so the
/// best is 0 and the rest count up from there).
pub(crate) fn normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX_SCORE);
        }
        return;
    }
    for score in scores {
        *score = MAX_SCORE * *score / max;
        if reverse {
            *score = MAX_SCORE - *score;
        }
    }
}
