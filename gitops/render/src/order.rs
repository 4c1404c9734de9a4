//! kustomize's default ("legacy") output order: some kinds first (Namespace, ..., Deployment,
//! ...), webhooks last, the rest in between; ties by group/version/kind, then namespace and
//! name (`api/internal/builtins/SortOrderTransformer.go`).

use std::cmp::Ordering;

use crate::resource::Res;

const FIRST: &[&str] = &[
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
];
const LAST: &[&str] = &["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"];

fn rank(kind: &str) -> i64 {
    if let Some(i) = FIRST.iter().position(|k| *k == kind) {
        return i as i64 - FIRST.len() as i64;
    }
    LAST.iter().position(|k| *k == kind).map_or(0, |i| i as i64 + 1)
}

fn gvk_string(r: &Res) -> String {
    let (g, v) = r.group_version();
    let or = |s: &str, d: &str| if s.is_empty() { d.to_string() } else { s.to_string() };
    format!("{}_{}_{}", or(g, "~G"), or(v, "~V"), or(r.kind(), "~K"))
}

fn id_string(r: &Res) -> String {
    let or = |s: &str, d: &str| if s.is_empty() { d.to_string() } else { s.to_string() };
    format!("{}|{}", or(r.namespace(), "~X"), or(r.name(), "~N"))
}

pub(crate) fn compare(a: &Res, b: &Res) -> Ordering {
    let (ga, gb) = (gvk_string(a), gvk_string(b));
    if ga != gb {
        let (ra, rb) = (rank(a.kind()), rank(b.kind()));
        if ra != rb {
            return ra.cmp(&rb);
        }
        if a.kind() == "Namespace" && b.kind() == "Namespace" && (a.group_version().0.is_empty() || b.group_version().0.is_empty()) {
            return gb.cmp(&ga);
        }
        return ga.cmp(&gb);
    }
    id_string(a).cmp(&id_string(b))
}
