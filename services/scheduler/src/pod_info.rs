//! What the filters and scores need to know about a pod, read once from the `Pod`.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm, Taint, Toleration};

use crate::resources::{pod_key, pod_requests, PodRequests, ResourceError};
use crate::selectors::{Labels, NodeTerm, Selector};

/// A pod as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct PodInfo {
    /// `namespace/name`
    pub key: String,
    pub namespace: String,
    pub labels: Labels,
    pub requests: PodRequests,
    /// `spec.nodeSelector`
    pub node_selector: Selector,
    /// Required node affinity terms (ORed); `None` when the pod has none.
    pub required_node_terms: Option<Vec<NodeTerm>>,
    /// Preferred node affinity terms with their weights.
    pub preferred_node_terms: Vec<(i64, NodeTerm)>,
    pub tolerations: Vec<Toleration>,
    /// Required pod affinity and anti-affinity terms.
    pub affinity: Vec<AffinityTerm>,
    pub anti_affinity: Vec<AffinityTerm>,
    /// Images of init containers and containers, with `:latest` added when untagged.
    pub images: Vec<String>,
    /// uid of the controlling owner (ownerReferences with `controller: true`).
    pub owner_uid: Option<String>,
    /// The pod has a deletionTimestamp.
    pub terminating: bool,
    /// The node its volume claims keep their data on (local volumes), when one is chosen
    /// already: the only node it may go to. Known to the caller, not the `Pod`.
    pub volume_node: Option<String>,
}

impl PodInfo {
    pub fn new(pod: &Pod) -> Result<Self, ResourceError> {
        Ok(Self::with_requests(pod, pod_requests(pod)?))
    }

    /// Everything but the requests, which the caller has computed (or replaced).
    pub fn with_requests(pod: &Pod, requests: PodRequests) -> Self {
        let meta = &pod.metadata;
        let namespace = meta.namespace.clone().unwrap_or_else(|| "default".to_owned());
        let spec = pod.spec.as_ref();
        let affinity = spec.and_then(|s| s.affinity.as_ref());
        let node_affinity = affinity.and_then(|a| a.node_affinity.as_ref());
        let required_node_terms = node_affinity
            .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref())
            .map(|r| r.node_selector_terms.iter().map(NodeTerm::new).collect());
        let preferred_node_terms = node_affinity
            .and_then(|n| n.preferred_during_scheduling_ignored_during_execution.as_ref())
            .into_iter()
            .flatten()
            .map(|p| (i64::from(p.weight), NodeTerm::new(&p.preference)))
            .filter(|(weight, term)| *weight != 0 && !term.is_empty())
            .collect();
        let terms = |list: Option<&Vec<PodAffinityTerm>>| -> Vec<AffinityTerm> {
            list.into_iter().flatten().map(|t| AffinityTerm::new(t, &namespace)).collect()
        };
        let pod_affinity = affinity.and_then(|a| a.pod_affinity.as_ref());
        let pod_anti_affinity = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        let images = spec
            .into_iter()
            .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
            .map(|c| normalized_image(c.image.as_deref().unwrap_or_default()))
            .collect();
        let owner_uid = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone());
        PodInfo {
            key: pod_key(pod),
            labels: meta.labels.clone().unwrap_or_default(),
            requests,
            node_selector: Selector::from_map(&spec.and_then(|s| s.node_selector.clone()).unwrap_or_default()),
            required_node_terms,
            preferred_node_terms,
            tolerations: spec.and_then(|s| s.tolerations.clone()).unwrap_or_default(),
            affinity: terms(pod_affinity.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref())),
            anti_affinity: terms(
                pod_anti_affinity.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref()),
            ),
            images,
            owner_uid,
            terminating: meta.deletion_timestamp.is_some(),
            volume_node: None,
            namespace,
        }
    }

    /// Whether the pod tolerates `taint` (Kubernetes' `ToleratesTaint`): an empty effect
    /// matches every effect, an empty key with `Exists` matches every taint.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        self.tolerations.iter().any(|t| tolerates(t, taint))
    }
}

pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or_default();
    let key = toleration.key.as_deref().unwrap_or_default();
    if !effect.is_empty() && effect != taint.effect || !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => toleration.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default(),
        _ => false,
    }
}

/// kube-scheduler's image name normalisation: an image without a tag is `:latest`.
fn normalized_image(name: &str) -> String {
    let colon = name.rfind(':');
    let slash = name.rfind('/');
    if colon.is_none() || colon <= slash {
        format!("{name}:latest")
    } else {
        name.to_owned()
    }
}

/// A required pod (anti-)affinity term, its namespaces resolved against the pod it
/// belongs to.
#[derive(Debug, Clone)]
pub struct AffinityTerm {
    /// `None`: no labelSelector, which selects no pod.
    selector: Option<Selector>,
    namespaces: Vec<String>,
    /// `None`: no namespaceSelector (only `namespaces` count); empty: every namespace.
    namespace_selector: Option<Selector>,
    pub topology_key: String,
}

impl AffinityTerm {
    fn new(term: &PodAffinityTerm, own_namespace: &str) -> Self {
        let mut namespaces = term.namespaces.clone().unwrap_or_default();
        let namespace_selector = term.namespace_selector.as_ref().map(Selector::new);
        if namespaces.is_empty() && namespace_selector.is_none() {
            namespaces.push(own_namespace.to_owned());
        }
        AffinityTerm {
            selector: term.label_selector.as_ref().map(Selector::new),
            namespaces,
            namespace_selector,
            topology_key: term.topology_key.clone(),
        }
    }

    /// Whether a pod in `namespace` (whose labels are `namespace_labels`) with `labels`
    /// is one this term is about.
    pub fn matches(&self, namespace: &str, labels: &Labels, namespace_labels: &HashMap<String, Labels>) -> bool {
        let Some(selector) = &self.selector else { return false };
        let in_namespace = self.namespaces.iter().any(|n| n == namespace)
            || self.namespace_selector.as_ref().is_some_and(|s| {
                static EMPTY: BTreeMap<String, String> = BTreeMap::new();
                s.matches(namespace_labels.get(namespace).unwrap_or(&EMPTY))
            });
        in_namespace && selector.matches(labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn toleration_matching() {
        let taint: Taint = serde_json::from_value(json!({"key": "k", "value": "v", "effect": "NoSchedule"})).unwrap();
        let cases = [
            (json!({"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}), true),
            (json!({"key": "k", "value": "v"}), true),
            (json!({"key": "k", "operator": "Equal", "value": "w"}), false),
            (json!({"key": "k", "operator": "Exists"}), true),
            (json!({"key": "k", "operator": "Exists", "effect": "NoExecute"}), false),
            (json!({"operator": "Exists"}), true),
            (json!({"key": "other", "operator": "Exists"}), false),
            (json!({"key": "k", "operator": "Lt", "value": "v"}), false),
        ];
        for (toleration, want) in cases {
            let t: Toleration = serde_json::from_value(toleration.clone()).unwrap();
            assert_eq!(tolerates(&t, &taint), want, "{toleration}");
        }
    }

    #[test]
    fn image_names() {
        assert_eq!(normalized_image("nginx"), "nginx:latest");
        assert_eq!(normalized_image("nginx:1.25"), "nginx:1.25");
        assert_eq!(normalized_image("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(normalized_image("localhost:5000/app:v1"), "localhost:5000/app:v1");
    }
}
