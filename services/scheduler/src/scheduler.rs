//! One scheduling decision: filter nodes, score the feasible ones, pick the best.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;

use crate::filters::{filter, PreFilter};
use crate::message::{Reason, Unschedulable};
use crate::pod_info::PodInfo;
use crate::resources::ResourceError;
use crate::scores::{score, Cluster, Spread, Weights};
use crate::snapshot::{NodeInfo, Snapshot};

/// kube-scheduler's floor on how many feasible nodes to find before scoring.
const MIN_FEASIBLE_NODES: usize = 100;
/// …and on the adaptive percentage.
const MIN_FEASIBLE_PERCENTAGE: usize = 5;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub weights: Weights,
    /// Stop filtering after this percentage of the nodes were found feasible (at least
    /// 100 nodes). `None`: kube-scheduler's adaptive rule, 50% minus 1% per 125 nodes,
    /// at least 5% (10% at 5,000 nodes). `Some(100)` checks every node.
    pub percentage_of_nodes_to_score: Option<u32>,
}

/// Why a pod was not placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// No node fits; the message says why, node by node.
    #[error(transparent)]
    Unschedulable(#[from] Unschedulable),
    /// The pod's own requests cannot be read.
    #[error(transparent)]
    InvalidPod(#[from] ResourceError),
}

/// The snapshot plus the state that makes successive decisions fair: where the next
/// search starts (so the nodes that are searched rotate) and a counter breaking ties
/// round-robin.
#[derive(Debug, Default)]
pub struct Scheduler {
    snapshot: Snapshot,
    config: Config,
    next_start: usize,
    ties: usize,
}

impl Scheduler {
    pub fn new(config: Config) -> Self {
        Scheduler { config, ..Default::default() }
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Feed watch events here.
    pub fn snapshot_mut(&mut self) -> &mut Snapshot {
        &mut self.snapshot
    }

    /// Picks the node for `pod`. Does not change the snapshot: after binding (or just
    /// before), call [`Snapshot::assume`] so the next pod sees the resources taken.
    pub fn schedule(&mut self, pod: &Pod) -> Result<String, ScheduleError> {
        self.schedule_pinned(pod, None)
    }

    /// [`Scheduler::schedule`] for a pod whose volume claims keep their data on
    /// `volume_node` (local volumes): only that node is feasible.
    pub fn schedule_pinned(&mut self, pod: &Pod, volume_node: Option<&str>) -> Result<String, ScheduleError> {
        let mut pod = PodInfo::new(pod)?;
        pod.volume_node = volume_node.map(str::to_owned);
        let snapshot = &self.snapshot;
        let all = snapshot.nodes.len();
        if all == 0 {
            return Err(Unschedulable { nodes: 0, reasons: Vec::new() }.into());
        }
        let pre = PreFilter::new(snapshot, &pod);
        let wanted = self.feasible_nodes_to_find(all);
        let mut feasible: Vec<&NodeInfo> = Vec::with_capacity(wanted.min(all));
        let mut failures: HashMap<Reason, usize> = HashMap::new();
        let mut reasons = Vec::new();
        let mut searched = 0;
        for i in 0..all {
            let node = &snapshot.nodes[(self.next_start + i) % all];
            searched += 1;
            filter(node, &pod, &pre, &mut reasons);
            if reasons.is_empty() {
                feasible.push(node);
                if feasible.len() >= wanted {
                    break;
                }
            }
            for reason in reasons.drain(..) {
                *failures.entry(reason).or_default() += 1;
            }
        }
        self.next_start = (self.next_start + searched) % all;
        if feasible.is_empty() {
            let mut reasons: Vec<(Reason, usize)> = failures.into_iter().collect();
            reasons.sort();
            return Err(Unschedulable { nodes: all, reasons }.into());
        }
        if let [only] = feasible[..] {
            return Ok(only.name.clone());
        }
        let spread = Spread {
            owner_uid: pod.owner_uid.as_deref(),
            services: snapshot
                .services
                .values()
                .filter(|s| s.namespace == pod.namespace && s.selector.matches(&pod.labels))
                .map(|s| &s.selector)
                .collect(),
        };
        let cluster = Cluster { node_count: all, zones: snapshot.zone_count(), image_nodes: &snapshot.image_nodes };
        let totals = score(&feasible, &pod, &spread, &cluster, &self.config.weights);
        let best = totals.iter().copied().max().unwrap_or(0);
        let ties: Vec<usize> = (0..totals.len()).filter(|&i| totals[i] == best).collect();
        let pick = ties[self.ties % ties.len()];
        self.ties = self.ties.wrapping_add(1);
        Ok(feasible[pick].name.clone())
    }

    /// kube-scheduler's `numFeasibleNodesToFind`.
    pub(crate) fn feasible_nodes_to_find(&self, all: usize) -> usize {
        if all < MIN_FEASIBLE_NODES {
            return all;
        }
        let percentage = match self.config.percentage_of_nodes_to_score {
            Some(p) if p > 0 => (p as usize).min(100),
            _ => 50usize.saturating_sub(all / 125).max(MIN_FEASIBLE_PERCENTAGE),
        };
        (all * percentage / 100).max(MIN_FEASIBLE_NODES)
    }
}
