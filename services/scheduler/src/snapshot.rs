//! The scheduler's view of the cluster, kept up to date event by event.
//!
//! Nodes are read once into [`NodeInfo`] (allocatable, labels, taints, readiness,
//! images); pods bound to a node add to its [`Usage`]. A pod the scheduler has placed but
//! not yet seen bound is *assumed*, so the next pod sees its resources as taken.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, Taint};

use crate::pod_info::PodInfo;
use crate::resources::{node_allocatable, pod_key, pod_requests, ResourceError, Resources};
use crate::selectors::{Labels, Selector};

/// A pod bound (or assumed bound) to a node.
#[derive(Debug)]
pub(crate) struct PodEntry {
    pub info: PodInfo,
    pub node: String,
    pub assumed: bool,
}

/// What the pods bound to one node take.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    pub requested: Resources,
    pub non_zero_milli_cpu: i64,
    pub non_zero_memory: i64,
    pub pods: Vec<Arc<PodEntry>>,
    /// Pods that are not terminating, by controlling owner uid.
    pub owner_counts: HashMap<String, u32>,
}

impl Usage {
    fn add(&mut self, pod: &Arc<PodEntry>) {
        let requests = &pod.info.requests;
        self.requested.add(&requests.requests);
        self.non_zero_milli_cpu += requests.non_zero_milli_cpu;
        self.non_zero_memory += requests.non_zero_memory;
        if let (Some(uid), false) = (&pod.info.owner_uid, pod.info.terminating) {
            *self.owner_counts.entry(uid.clone()).or_default() += 1;
        }
        self.pods.push(Arc::clone(pod));
    }

    fn remove(&mut self, key: &str) {
        let Some(at) = self.pods.iter().position(|p| p.info.key == key) else { return };
        let pod = self.pods.swap_remove(at);
        let requests = &pod.info.requests;
        self.requested.sub(&requests.requests);
        self.non_zero_milli_cpu -= requests.non_zero_milli_cpu;
        self.non_zero_memory -= requests.non_zero_memory;
        if let (Some(uid), false) = (&pod.info.owner_uid, pod.info.terminating) {
            if let Some(count) = self.owner_counts.get_mut(uid) {
                *count -= 1;
                if *count == 0 {
                    self.owner_counts.remove(uid);
                }
            }
        }
    }
}

/// One node, read for the filters and scores.
#[derive(Debug)]
pub(crate) struct NodeInfo {
    pub name: String,
    pub labels: Labels,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub ready: bool,
    pub allocatable: Resources,
    pub allowed_pods: i64,
    /// Image name → size in bytes, for every name of every image the node reports.
    pub images: HashMap<String, i64>,
    /// kube-scheduler's zone key (region and zone labels) as an index into
    /// `Snapshot::zones`, for spreading.
    pub zone: Option<usize>,
    pub usage: Usage,
}

impl NodeInfo {
    fn new(node: &Node) -> Result<Self, ResourceError> {
        let (allocatable, allowed_pods) = node_allocatable(node)?;
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let spec = node.spec.as_ref();
        let status = node.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        let mut images = HashMap::new();
        for image in status.and_then(|s| s.images.as_ref()).into_iter().flatten() {
            for name in image.names.iter().flatten() {
                images.insert(name.clone(), image.size_bytes.unwrap_or(0));
            }
        }
        Ok(NodeInfo {
            name: node.metadata.name.clone().unwrap_or_default(),
            zone: None,
            labels,
            taints: spec.and_then(|s| s.taints.clone()).unwrap_or_default(),
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            ready,
            allocatable,
            allowed_pods,
            images,
            usage: Usage::default(),
        })
    }
}

/// `region:\0:zone` from the topology labels (or their deprecated beta names), as
/// kube-scheduler's `GetZoneKey`; `None` when the node has neither.
fn zone_key(labels: &Labels) -> Option<String> {
    let get = |key: &str, beta: &str| labels.get(key).or_else(|| labels.get(beta)).map(String::as_str).unwrap_or("");
    let region = get("topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region");
    let zone = get("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone");
    (!region.is_empty() || !zone.is_empty()).then(|| format!("{region}:\x00:{zone}"))
}

/// A Service's selector, for spreading the pods it selects.
#[derive(Debug)]
pub(crate) struct ServiceSelector {
    pub namespace: String,
    pub selector: Selector,
}

/// The cluster as the scheduler sees it. Feed it every Node, Pod, Service and Namespace
/// event (adds and updates through `upsert_*`, deletions through `remove_*`).
#[derive(Debug, Default)]
pub struct Snapshot {
    pub(crate) nodes: Vec<NodeInfo>,
    node_index: HashMap<String, usize>,
    /// Usage of pods bound to nodes the snapshot has no Node for (yet or any more).
    orphans: HashMap<String, Usage>,
    pods: HashMap<String, Arc<PodEntry>>,
    /// Bound pods with required anti-affinity terms, which every placement must respect.
    pub(crate) anti_affinity_pods: HashMap<String, Arc<PodEntry>>,
    pub(crate) services: HashMap<String, ServiceSelector>,
    pub(crate) namespaces: HashMap<String, Labels>,
    /// Image name → how many nodes have it.
    pub(crate) image_nodes: HashMap<String, usize>,
    /// Zone keys seen, numbered so spreading counts per zone without hashing strings.
    zones: HashMap<String, usize>,
}

impl Snapshot {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a node. A node whose allocatable cannot be read is taken out of
    /// the snapshot (no pod is placed on it) and the error names the field.
    pub fn upsert_node(&mut self, node: &Node) -> Result<(), ResourceError> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let mut info = match NodeInfo::new(node) {
            Ok(info) => info,
            Err(e) => {
                self.remove_node(&name);
                return Err(e);
            }
        };
        if let Some(zone) = zone_key(&info.labels) {
            let next = self.zones.len();
            info.zone = Some(*self.zones.entry(zone).or_insert(next));
        }
        self.count_images(&info, 1);
        match self.node_index.get(&name) {
            Some(&at) => {
                let old = std::mem::replace(&mut self.nodes[at], info);
                self.count_images(&old, -1);
                self.nodes[at].usage = old.usage;
            }
            None => {
                info.usage = self.orphans.remove(&name).unwrap_or_default();
                self.node_index.insert(name, self.nodes.len());
                self.nodes.push(info);
            }
        }
        Ok(())
    }

    pub fn remove_node(&mut self, name: &str) {
        let Some(at) = self.node_index.remove(name) else { return };
        let node = self.nodes.swap_remove(at);
        if let Some(moved) = self.nodes.get(at) {
            self.node_index.insert(moved.name.clone(), at);
        }
        self.count_images(&node, -1);
        if !node.usage.pods.is_empty() {
            self.orphans.insert(node.name, node.usage);
        }
    }

    fn count_images(&mut self, node: &NodeInfo, delta: isize) {
        for name in node.images.keys() {
            let count = self.image_nodes.entry(name.clone()).or_default();
            *count = count.saturating_add_signed(delta);
            if *count == 0 {
                self.image_nodes.remove(name);
            }
        }
    }

    /// Records a pod from the watch. Pods bound to a node take its resources; unbound
    /// pods are not recorded (the caller queues them), except that an assumed pod stays
    /// until it is seen bound or removed; pods that have finished (`Succeeded`,
    /// `Failed`) free what they took. A bound pod whose requests cannot be read still
    /// takes a pod slot, and the error says what is wrong.
    pub fn upsert_pod(&mut self, pod: &Pod) -> Result<(), ResourceError> {
        let key = pod_key(pod);
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty());
        let finished = matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
        let Some(node) = node.filter(|_| !finished) else {
            if finished || !self.pods.get(&key).is_some_and(|p| p.assumed) {
                self.remove_key(&key);
            }
            return Ok(());
        };
        let (requests, error) = match pod_requests(pod) {
            Ok(requests) => (requests, None),
            Err(e) => (Default::default(), Some(e)),
        };
        self.insert(PodEntry { info: PodInfo::with_requests(pod, requests), node, assumed: false });
        error.map_or(Ok(()), Err)
    }

    /// Records that `pod` has been placed on `node` before the watch shows it bound, so
    /// later placements see its resources as taken. If the binding fails, call
    /// [`Snapshot::remove_pod`].
    pub fn assume(&mut self, pod: &Pod, node: &str) -> Result<(), ResourceError> {
        let info = PodInfo::new(pod)?;
        self.insert(PodEntry { info, node: node.to_owned(), assumed: true });
        Ok(())
    }

    pub fn remove_pod(&mut self, namespace: &str, name: &str) {
        self.remove_key(&format!("{namespace}/{name}"));
    }

    fn insert(&mut self, entry: PodEntry) {
        self.remove_key(&entry.info.key);
        let entry = Arc::new(entry);
        match self.node_index.get(&entry.node) {
            Some(&at) => self.nodes[at].usage.add(&entry),
            None => self.orphans.entry(entry.node.clone()).or_default().add(&entry),
        }
        if !entry.info.anti_affinity.is_empty() {
            self.anti_affinity_pods.insert(entry.info.key.clone(), Arc::clone(&entry));
        }
        self.pods.insert(entry.info.key.clone(), entry);
    }

    fn remove_key(&mut self, key: &str) {
        let Some(entry) = self.pods.remove(key) else { return };
        self.anti_affinity_pods.remove(key);
        match self.node_index.get(&entry.node) {
            Some(&at) => self.nodes[at].usage.remove(key),
            None => {
                if let Some(usage) = self.orphans.get_mut(&entry.node) {
                    usage.remove(key);
                    if usage.pods.is_empty() {
                        self.orphans.remove(&entry.node);
                    }
                }
            }
        }
    }

    /// Services spread the pods they select. One without a selector selects nothing.
    pub fn upsert_service(&mut self, service: &Service) {
        let namespace = service.metadata.namespace.clone().unwrap_or_else(|| "default".to_owned());
        let key = format!("{namespace}/{}", service.metadata.name.as_deref().unwrap_or(""));
        match service.spec.as_ref().and_then(|s| s.selector.as_ref()).filter(|s| !s.is_empty()) {
            Some(selector) => {
                self.services.insert(key, ServiceSelector { namespace, selector: Selector::from_map(selector) });
            }
            None => {
                self.services.remove(&key);
            }
        }
    }

    pub fn remove_service(&mut self, namespace: &str, name: &str) {
        self.services.remove(&format!("{namespace}/{name}"));
    }

    /// Namespace labels, for pod affinity terms with a namespaceSelector.
    pub fn upsert_namespace(&mut self, namespace: &Namespace) {
        let name = namespace.metadata.name.clone().unwrap_or_default();
        self.namespaces.insert(name, namespace.metadata.labels.clone().unwrap_or_default());
    }

    pub fn remove_namespace(&mut self, name: &str) {
        self.namespaces.remove(name);
    }

    pub(crate) fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.node_index.get(name).map(|&at| &self.nodes[at])
    }

    pub(crate) fn zone_count(&self) -> usize {
        self.zones.len()
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// What the pods on `node` request, and how many there are (assumed ones included).
    pub fn requested(&self, node: &str) -> Option<(Resources, usize)> {
        let usage = &self.node(node)?.usage;
        Some((usage.requested.clone(), usage.pods.len()))
    }

    /// The node a pod is bound or assumed to, and whether it is only assumed.
    pub fn pod_node(&self, namespace: &str, name: &str) -> Option<(&str, bool)> {
        self.pods.get(&format!("{namespace}/{name}")).map(|p| (p.node.as_str(), p.assumed))
    }
}
