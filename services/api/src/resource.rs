//! The resources the apiserver serves: enough to build discovery documents, route URLs and
//! lay out storage keys. One static table; adding a kind is adding a row.

/// Subresources a resource may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subresource {
    Status,
    Scale,
    Binding,
    Log,
    /// kapp's transactional apply of a whole commit (gitops only).
    Apply,
}

impl Subresource {
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
            Subresource::Binding => "binding",
            Subresource::Log => "log",
            Subresource::Apply => "apply",
        }
    }
}

/// One served resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resource {
    /// API group ("" for the core group).
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// URL and storage name (lower-case plural).
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    pub namespaced: bool,
    pub subresources: &'static [Subresource],
    /// Object names must be DNS-1123 labels (≤ 63) rather than subdomains (≤ 253).
    pub label_names: bool,
}

impl Resource {
    /// `apiVersion` as written in manifests: `v1` for the core group, `group/version` else.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The URL prefix of this resource's group version: `/api/v1` or `/apis/<group>/<version>`.
    pub fn group_version_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    pub fn has(&self, sub: Subresource) -> bool {
        self.subresources.contains(&sub)
    }
}

/// kapp's own API group.
pub const KAPP_GROUP: &str = "kapp.dev";

const fn res(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    short_names: &'static [&'static str],
    namespaced: bool,
    subresources: &'static [Subresource],
) -> Resource {
    Resource { group, version, kind, plural, singular, short_names, namespaced, subresources, label_names: false }
}

use Subresource::*;

/// Every resource served, in discovery order.
pub static RESOURCES: &[Resource] = &[
    Resource { label_names: true, ..res("", "v1", "Namespace", "namespaces", "namespace", &["ns"], false, &[Status]) },
    res("", "v1", "Pod", "pods", "pod", &["po"], true, &[Status, Binding, Log]),
    Resource { label_names: true, ..res("", "v1", "Service", "services", "service", &["svc"], true, &[Status]) },
    res("", "v1", "Endpoints", "endpoints", "endpoints", &["ep"], true, &[]),
    res("", "v1", "ConfigMap", "configmaps", "configmap", &["cm"], true, &[]),
    res("", "v1", "Secret", "secrets", "secret", &[], true, &[]),
    res("", "v1", "Node", "nodes", "node", &["no"], false, &[Status]),
    res("", "v1", "Event", "events", "event", &["ev"], true, &[]),
    res("", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", &["sa"], true, &[]),
    res("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", "persistentvolumeclaim", &["pvc"], true, &[Status]),
    res("apps", "v1", "Deployment", "deployments", "deployment", &["deploy"], true, &[Status, Scale]),
    res("apps", "v1", "ReplicaSet", "replicasets", "replicaset", &["rs"], true, &[Status, Scale]),
    res("apps", "v1", "DaemonSet", "daemonsets", "daemonset", &["ds"], true, &[Status]),
    res("apps", "v1", "StatefulSet", "statefulsets", "statefulset", &["sts"], true, &[Status, Scale]),
    res("batch", "v1", "Job", "jobs", "job", &[], true, &[Status]),
    res("batch", "v1", "CronJob", "cronjobs", "cronjob", &["cj"], true, &[Status]),
    res("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", "endpointslice", &[], true, &[]),
    res("coordination.k8s.io", "v1", "Lease", "leases", "lease", &[], true, &[]),
    res(KAPP_GROUP, "v1", "GitSync", "gitsyncs", "gitsync", &["gs"], false, &[Status, Apply]),
    res(KAPP_GROUP, "v1", "ClusterSettings", "clustersettings", "clustersettings", &["cs"], false, &[]),
];

/// The resource served at `group`/`version` under `plural`.
pub fn by_plural(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource of a manifest's `apiVersion` and `kind`.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static Resource> {
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.kind == kind)
}

/// The groups served, each with its versions, in discovery order (core group first).
pub fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}
