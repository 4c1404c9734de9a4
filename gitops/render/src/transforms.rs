//! The builtin transformers: namespace, name prefix/suffix, labels, annotations and images,
//! each driven by kustomize's own field specs (`api/internal/konfig/builtinpluginconsts`).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::kustomization::{Image, Labels};
use crate::resource::{meta, Res};

/// A place a transformer writes: objects of `kind` (any when "") in `group` (any when
/// "*"), at `path` (segments split by '/'; lists on the way are walked element by element),
/// creating missing maps when `create`.
pub(crate) struct FieldSpec {
    pub group: &'static str,
    pub kind: &'static str,
    pub path: &'static str,
    pub create: bool,
}

const fn fs(group: &'static str, kind: &'static str, path: &'static str, create: bool) -> FieldSpec {
    FieldSpec { group, kind, path, create }
}

impl FieldSpec {
    pub fn applies(&self, r: &Res) -> bool {
        (self.kind.is_empty() || self.kind == r.kind()) && (self.group == "*" || self.group == r.group_version().0)
    }
}

/// Labels every resource gets, and the pod templates' (`templateLabels` / metadataLabels).
const METADATA_LABELS: &[FieldSpec] = &[
    fs("*", "", "metadata/labels", true),
    fs("", "ReplicationController", "spec/template/metadata/labels", true),
    fs("*", "Deployment", "spec/template/metadata/labels", true),
    fs("*", "ReplicaSet", "spec/template/metadata/labels", true),
    fs("*", "DaemonSet", "spec/template/metadata/labels", true),
    fs("apps", "StatefulSet", "spec/template/metadata/labels", true),
    fs("batch", "Job", "spec/template/metadata/labels", true),
    fs("batch", "CronJob", "spec/jobTemplate/metadata/labels", true),
    fs("batch", "CronJob", "spec/jobTemplate/spec/template/metadata/labels", true),
    fs("apps", "StatefulSet", "spec/volumeClaimTemplates/metadata/labels", true),
];

/// Selectors `commonLabels` (and `labels` with `includeSelectors`) also write.
const SELECTOR_LABELS: &[FieldSpec] = &[
    fs("", "Service", "spec/selector", true),
    fs("", "ReplicationController", "spec/selector", true),
    fs("*", "Deployment", "spec/selector/matchLabels", true),
    fs("*", "ReplicaSet", "spec/selector/matchLabels", true),
    fs("*", "DaemonSet", "spec/selector/matchLabels", true),
    fs("apps", "StatefulSet", "spec/selector/matchLabels", true),
    fs("batch", "Job", "spec/selector/matchLabels", false),
    fs("batch", "CronJob", "spec/jobTemplate/spec/selector/matchLabels", false),
    fs("policy", "PodDisruptionBudget", "spec/selector/matchLabels", false),
    fs("networking.k8s.io", "NetworkPolicy", "spec/podSelector/matchLabels", false),
    fs("networking.k8s.io", "NetworkPolicy", "spec/ingress/from/podSelector/matchLabels", false),
    fs("networking.k8s.io", "NetworkPolicy", "spec/egress/to/podSelector/matchLabels", false),
    fs("apps", "Deployment", "spec/template/spec/affinity/podAffinity/preferredDuringSchedulingIgnoredDuringExecution/podAffinityTerm/labelSelector/matchLabels", false),
    fs("apps", "Deployment", "spec/template/spec/affinity/podAffinity/requiredDuringSchedulingIgnoredDuringExecution/labelSelector/matchLabels", false),
    fs("apps", "Deployment", "spec/template/spec/affinity/podAntiAffinity/preferredDuringSchedulingIgnoredDuringExecution/podAffinityTerm/labelSelector/matchLabels", false),
    fs("apps", "Deployment", "spec/template/spec/affinity/podAntiAffinity/requiredDuringSchedulingIgnoredDuringExecution/labelSelector/matchLabels", false),
    fs("apps", "Deployment", "spec/template/spec/topologySpreadConstraints/labelSelector/matchLabels", false),
    fs("apps", "StatefulSet", "spec/template/spec/affinity/podAffinity/preferredDuringSchedulingIgnoredDuringExecution/podAffinityTerm/labelSelector/matchLabels", false),
    fs("apps", "StatefulSet", "spec/template/spec/affinity/podAffinity/requiredDuringSchedulingIgnoredDuringExecution/labelSelector/matchLabels", false),
    fs("apps", "StatefulSet", "spec/template/spec/affinity/podAntiAffinity/preferredDuringSchedulingIgnoredDuringExecution/podAffinityTerm/labelSelector/matchLabels", false),
    fs("apps", "StatefulSet", "spec/template/spec/affinity/podAntiAffinity/requiredDuringSchedulingIgnoredDuringExecution/labelSelector/matchLabels", false),
    fs("apps", "StatefulSet", "spec/template/spec/topologySpreadConstraints/labelSelector/matchLabels", false),
];

const ANNOTATIONS: &[FieldSpec] = &[
    fs("*", "", "metadata/annotations", true),
    fs("", "ReplicationController", "spec/template/metadata/annotations", true),
    fs("*", "Deployment", "spec/template/metadata/annotations", true),
    fs("*", "ReplicaSet", "spec/template/metadata/annotations", true),
    fs("*", "DaemonSet", "spec/template/metadata/annotations", true),
    fs("*", "StatefulSet", "spec/template/metadata/annotations", true),
    fs("batch", "Job", "spec/template/metadata/annotations", true),
    fs("batch", "CronJob", "spec/jobTemplate/metadata/annotations", true),
    fs("batch", "CronJob", "spec/jobTemplate/spec/template/metadata/annotations", true),
];

/// Kinds without a namespace, from kustomize's built-in schema. Anything else (custom
/// resources included) is namespaced, as in kustomize.
const CLUSTER_SCOPED: &[&str] = &[
    "APIService",
    "CertificateSigningRequest",
    "ClusterRole",
    "ClusterRoleBinding",
    "ComponentStatus",
    "CSIDriver",
    "CSINode",
    "CustomResourceDefinition",
    "FlowSchema",
    "IngressClass",
    "MutatingWebhookConfiguration",
    "Namespace",
    "Node",
    "PersistentVolume",
    "PodSecurityPolicy",
    "PriorityClass",
    "PriorityLevelConfiguration",
    "RuntimeClass",
    "SelfSubjectAccessReview",
    "SelfSubjectRulesReview",
    "StorageClass",
    "SubjectAccessReview",
    "TokenReview",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "ValidatingWebhookConfiguration",
    "VolumeAttachment",
];

pub(crate) fn cluster_scoped(kind: &str) -> bool {
    CLUSTER_SCOPED.contains(&kind)
}

/// Call `f` on every value at `path` in `v`, walking lists on the way; with `create`,
/// missing maps are made (never through lists).
pub(crate) fn visit(v: &mut Value, path: &[&str], create: bool, f: &mut dyn FnMut(&mut Value)) {
    match v {
        Value::Array(items) => {
            for item in items {
                visit(item, path, create, f);
            }
        }
        Value::Object(m) => {
            let Some((first, rest)) = path.split_first() else {
                f(v);
                return;
            };
            if !m.contains_key(*first) {
                if !create {
                    return;
                }
                m.insert(first.to_string(), Value::Object(Map::new()));
            }
            let child = m.get_mut(*first).expect("present");
            if rest.is_empty() {
                f(child);
            } else if !child.is_null() {
                visit(child, rest, create, f);
            }
        }
        _ => {}
    }
}

fn set_map_entries(r: &mut Res, specs: &[FieldSpec], entries: &BTreeMap<String, String>) {
    if entries.is_empty() {
        return;
    }
    let applicable: Vec<&FieldSpec> = specs.iter().filter(|s| s.applies(r)).collect();
    for spec in applicable {
        let path: Vec<&str> = spec.path.split('/').collect();
        visit(&mut r.obj, &path, spec.create, &mut |target| {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let m = target.as_object_mut().expect("object");
            for (k, v) in entries {
                m.insert(k.clone(), Value::String(v.clone()));
            }
        });
    }
}

/// `commonLabels`: metadata, pod templates and selectors.
pub(crate) fn common_labels(list: &mut [Res], labels: &BTreeMap<String, String>) {
    for r in list {
        set_map_entries(r, METADATA_LABELS, labels);
        set_map_entries(r, SELECTOR_LABELS, labels);
    }
}

/// `labels` entries: metadata always, selectors with `includeSelectors` (which implies the
/// templates), templates with `includeTemplates`.
pub(crate) fn labels(list: &mut [Res], sets: &[Labels]) {
    for set in sets {
        for r in list.iter_mut() {
            if set.include_selectors {
                set_map_entries(r, METADATA_LABELS, &set.pairs);
                set_map_entries(r, SELECTOR_LABELS, &set.pairs);
            } else if set.include_templates {
                set_map_entries(r, METADATA_LABELS, &set.pairs);
            } else {
                set_map_entries(r, &METADATA_LABELS[..1], &set.pairs);
            }
        }
    }
}

pub(crate) fn annotations(list: &mut [Res], annotations: &BTreeMap<String, String>) {
    for r in list {
        set_map_entries(r, ANNOTATIONS, annotations);
    }
}

/// `namespace`: namespaced resources move into it, a v1 Namespace is renamed to it, and
/// (cluster) role binding subjects named `default` follow.
pub(crate) fn namespace(list: &mut [Res], ns: &str) {
    for r in list {
        let kind = r.kind().to_string();
        if kind == "Namespace" && r.api_version() == "v1" {
            r.set_name(ns.to_string());
        } else if !cluster_scoped(&kind) {
            r.set_namespace(ns);
        }
        if kind == "RoleBinding" || kind == "ClusterRoleBinding" {
            if let Some(Value::Array(subjects)) = r.obj.get_mut("subjects") {
                for s in subjects.iter_mut().filter(|s| s.get("name").and_then(Value::as_str) == Some("default")) {
                    if let Some(m) = s.as_object_mut() {
                        m.insert("namespace".into(), Value::String(ns.to_string()));
                    }
                }
            }
        }
        if kind == "CustomResourceDefinition" {
            let path = ["spec", "conversion", "webhook", "clientConfig", "service", "namespace"];
            set_existing(&mut r.obj, &path, ns);
        }
        if kind == "APIService" {
            if let Some(Value::Object(svc)) = r.obj.pointer_mut("/spec/service") {
                svc.insert("namespace".into(), Value::String(ns.to_string()));
            }
        }
    }
}

fn set_existing(v: &mut Value, path: &[&str], to: &str) {
    let (last, parent) = path.split_last().expect("non-empty path");
    visit(v, parent, false, &mut |m| {
        if let Some(Value::String(s)) = m.get_mut(*last) {
            *s = to.to_string();
        }
    });
}

/// `namePrefix` / `nameSuffix` (not on CRDs, APIServices and Namespaces, as in kustomize).
pub(crate) fn affixes(list: &mut [Res], prefix: &str, suffix: &str) {
    if prefix.is_empty() && suffix.is_empty() {
        return;
    }
    for r in list {
        let skip = matches!(r.kind(), "CustomResourceDefinition" | "Namespace") || (r.kind() == "APIService" && r.group_version().0 == "apiregistration.k8s.io");
        if skip {
            continue;
        }
        let name = format!("{prefix}{}{suffix}", r.name());
        r.set_name(name);
        r.affixes.push(format!("{prefix}\u{0}{suffix}"));
    }
}

/// `images`: every `image` of every element of every `containers` / `initContainers` list,
/// anywhere in the object (kustomize's legacy image filter; CRDs are left alone).
pub(crate) fn images(list: &mut [Res], images: &[Image]) {
    for r in list {
        if r.kind() == "CustomResourceDefinition" {
            continue;
        }
        walk_containers(&mut r.obj, &mut |image| {
            for i in images {
                if let Some(new) = retag(image, i) {
                    *image = new;
                }
            }
        });
    }
}

fn walk_containers(v: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                walk_containers(child, f);
                if k == "containers" || k == "initContainers" {
                    if let Value::Array(items) = child {
                        for item in items {
                            if let Some(Value::String(image)) = item.get_mut("image") {
                                f(image);
                            }
                        }
                    }
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| walk_containers(i, f)),
        _ => {}
    }
}

/// The new image reference when `image` is one `rule` names (kustomize's `IsImageMatched`
/// and `imageTagUpdater`).
fn retag(image: &str, rule: &Image) -> Option<String> {
    let rest = image.strip_prefix(rule.name.as_str())?;
    let tag_chars = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || "_.{}-".contains(c));
    let (tag_part, digest_part) = match rest.find("@sha256:") {
        Some(i) => (&rest[..i], Some(&rest[i + "@sha256:".len()..])),
        None => (rest, None),
    };
    let tag_ok = tag_part.is_empty() || tag_part.strip_prefix(':').is_some_and(tag_chars);
    if !tag_ok || !digest_part.is_none_or(tag_chars) {
        return None;
    }
    let (mut name, mut tag, mut digest) = split_image(image);
    if let Some(n) = rule.new_name.as_deref().filter(|n| !n.is_empty()) {
        name = n.to_string();
    }
    let new_tag = rule.new_tag.as_deref().unwrap_or("");
    let new_digest = rule.digest.as_deref().unwrap_or("");
    match (new_tag.is_empty(), new_digest.is_empty()) {
        (false, false) => (tag, digest) = (new_tag.to_string(), new_digest.to_string()),
        (false, true) => (tag, digest) = (new_tag.to_string(), String::new()),
        (true, false) => (tag, digest) = (String::new(), new_digest.to_string()),
        (true, true) => {}
    }
    if !tag.is_empty() {
        name = format!("{name}:{tag}");
    }
    if !digest.is_empty() {
        name = format!("{name}@{digest}");
    }
    Some(name)
}

/// kustomize's `image.Split`: `(name, tag, digest)`; a `:` before the first `/` is a port.
fn split_image(image: &str) -> (String, String, String) {
    let slash = image.find('/').filter(|&i| i > 0).unwrap_or(0);
    let search = &image[slash..];
    let at = search.find('@').map(|i| i + slash);
    let colon = search.find(':').map(|i| i + slash);
    match (colon, at) {
        (None, None) => (image.to_string(), String::new(), String::new()),
        (None, Some(a)) => (image[..a].to_string(), String::new(), image[a + 1..].to_string()),
        (Some(c), Some(a)) if a < c => (image[..a].to_string(), String::new(), image[a + 1..].to_string()),
        (Some(c), Some(a)) => (image[..c].to_string(), image[c + 1..a].to_string(), image[a + 1..].to_string()),
        (Some(c), None) => (image[..c].to_string(), image[c + 1..].to_string(), String::new()),
    }
}

/// The labels of a resource's metadata, for selectors.
pub(crate) fn meta_map<'a>(r: &'a Res, field: &str) -> Option<&'a Map<String, Value>> {
    r.obj.get("metadata")?.get(field)?.as_object()
}

/// Set `metadata.<field>` entries (generator options).
pub(crate) fn set_meta_entries(obj: &mut Value, field: &str, entries: &BTreeMap<String, String>) {
    if entries.is_empty() {
        return;
    }
    let m = meta(obj).entry(field).or_insert_with(|| Value::Object(Map::new()));
    if let Some(m) = m.as_object_mut() {
        for (k, v) in entries {
            m.insert(k.clone(), Value::String(v.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, new_name: Option<&str>, tag: Option<&str>, digest: Option<&str>) -> Image {
        Image { name: name.into(), new_name: new_name.map(Into::into), new_tag: tag.map(Into::into), digest: digest.map(Into::into) }
    }

    #[test]
    fn images_follow_kustomize() {
        let cases = [
            ("nginx", rule("nginx", None, Some("1.2"), None), Some("nginx:1.2")),
            ("nginx:1.0", rule("nginx", Some("reg:5000/nginx"), None, None), Some("reg:5000/nginx:1.0")),
            ("nginx:1.0@sha256:abc", rule("nginx", None, None, Some("sha256:def")), Some("nginx@sha256:def")),
            ("nginx-extra:1", rule("nginx", None, Some("2"), None), None),
            ("reg:5000/app:1", rule("reg:5000/app", None, Some("2"), None), Some("reg:5000/app:2")),
        ];
        for (image, r, want) in cases {
            assert_eq!(retag(image, &r).as_deref(), want, "{image}");
        }
        assert_eq!(split_image("reg:5000/app"), ("reg:5000/app".into(), String::new(), String::new()));
    }
}
