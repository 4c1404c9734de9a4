//! Where objects live in the store: `/registry/<group>/<plural>/<namespace>/<name>` (the core
//! group is written `core`), so one prefix lists a resource in one namespace or in all.

use crate::resource::Resource;

fn group_segment(r: &Resource) -> &'static str {
    if r.group.is_empty() {
        "core"
    } else {
        r.group
    }
}

/// The key of one object (`namespace` is ignored for cluster-scoped resources).
pub fn object_key(r: &Resource, namespace: &str, name: &str) -> String {
    if r.namespaced {
        format!("/registry/{}/{}/{namespace}/{name}", group_segment(r), r.plural)
    } else {
        format!("/registry/{}/{}/{name}", group_segment(r), r.plural)
    }
}

/// The prefix holding every object of `r` in `namespace` (or everywhere, with `None`).
pub fn list_prefix(r: &Resource, namespace: Option<&str>) -> String {
    match (r.namespaced, namespace) {
        (true, Some(ns)) => format!("/registry/{}/{}/{ns}/", group_segment(r), r.plural),
        _ => format!("/registry/{}/{}/", group_segment(r), r.plural),
    }
}
