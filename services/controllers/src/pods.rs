//! What the controllers read off pods, and how they make pods from templates.

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

/// Not being deleted and not finished: it counts towards its owner's replicas.
pub fn is_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase(pod), "Succeeded" | "Failed")
}

pub fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending")
}

/// The pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    condition(pod, "Ready").is_some_and(|c| c.status == "True")
}

pub fn condition<'a>(pod: &'a Pod, ty: &str) -> Option<&'a k8s_openapi::api::core::v1::PodCondition> {
    pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == ty)
}

/// Ready for at least `min_ready_seconds` (at `now`, Unix seconds).
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: i64) -> bool {
    if !is_ready(pod) || pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    let since = condition(pod, "Ready").and_then(|c| c.last_transition_time.as_ref()).map(|t| t.0.as_second());
    since.is_some_and(|t| now - t >= i64::from(min_ready_seconds))
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// An owner reference marking `owner` as the controller of what carries it.
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).to_string(),
        kind: K::kind(&()).to_string(),
        name: owner.name_any(),
        uid: owner.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A pod from `template`, owned by `owner`, in `namespace`, named `name` (or generated
/// from `<owner>-` when `None`), with `extra` labels on top of the template's.
pub fn from_template(template: &PodTemplateSpec, owner: OwnerReference, namespace: &str, name: Option<String>, extra: &[(&str, &str)]) -> Pod {
    let tm = template.metadata.clone().unwrap_or_default();
    let mut labels = tm.labels.unwrap_or_default();
    for (k, v) in extra {
        labels.insert((*k).to_string(), (*v).to_string());
    }
    let generate_name = if name.is_none() { Some(format!("{}-", owner.name)) } else { None };
    Pod {
        metadata: ObjectMeta {
            name,
            generate_name,
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            annotations: tm.annotations,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// A stable hash of a pod template (FNV-1a over its JSON), written as Kubernetes writes
/// pod-template-hash: from an alphabet without vowels.
pub fn template_hash(template: &PodTemplateSpec) -> String {
    let json = serde_json::to_vec(template).expect("a template serialises");
    let mut h: u64 = 0xcbf29ce484222325;
    for b in json {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut out = String::new();
    let mut x = h as u32;
    for _ in 0..10 {
        out.push(ALPHABET[(x % ALPHABET.len() as u32) as usize] as char);
        x /= ALPHABET.len() as u32;
        if x == 0 {
            break;
        }
    }
    out
}

/// Which pods to delete first when scaling down: not yet on a node, then pending, then not
/// ready, then ready for the shortest time; the youngest first among equals.
pub fn deletion_order(a: &Pod, b: &Pod) -> std::cmp::Ordering {
    let rank = |p: &Pod| -> (u8, u8, u8) {
        let unbound = p.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_none_or(str::is_empty);
        (u8::from(!unbound), u8::from(phase(p) != "Pending"), u8::from(is_ready(p)))
    };
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()).unwrap_or(0);
    rank(a).cmp(&rank(b)).then_with(|| created(b).cmp(&created(a)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn unready_and_unbound_pods_go_first() {
        let ready = pod(json!({"metadata": {"name": "r"}, "spec": {"nodeName": "n", "containers": []}, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}));
        let unready = pod(json!({"metadata": {"name": "u"}, "spec": {"nodeName": "n", "containers": []}, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}}));
        let unbound = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": []}}));
        let mut v = vec![ready.clone(), unready.clone(), unbound.clone()];
        v.sort_by(deletion_order);
        let names: Vec<_> = v.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
        assert_eq!(names, ["p", "u", "r"]);
    }

    #[test]
    fn template_hash_is_stable_and_changes_with_the_template() {
        let t1: PodTemplateSpec = serde_json::from_value(json!({"spec": {"containers": [{"name": "c", "image": "a"}]}})).unwrap();
        let t2: PodTemplateSpec = serde_json::from_value(json!({"spec": {"containers": [{"name": "c", "image": "b"}]}})).unwrap();
        assert_eq!(template_hash(&t1), template_hash(&t1.clone()));
        assert_ne!(template_hash(&t1), template_hash(&t2));
        assert!(template_hash(&t1).chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }
}
