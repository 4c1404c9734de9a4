//! The kind's schema: an object must deserialise into its Kubernetes type (k8s-openapi), so
//! a wrong type anywhere (a string where a port number belongs, a map where a list does) is
//! refused with the path of the offending field.

use serde_json::Value;

use crate::resource::Resource;
use crate::validation::{ErrorType, FieldError};

fn typed<T: serde::de::DeserializeOwned>(obj: &Value) -> Result<(), FieldError> {
    serde_path_to_error::deserialize::<_, T>(obj).map(|_| ()).map_err(|e| {
        let path = e.path().to_string();
        FieldError {
            field: if path == "." { String::new() } else { path },
            kind: ErrorType::Invalid,
            detail: e.into_inner().to_string(),
        }
    })
}

/// Check `obj` against the schema of `r`'s kind.
pub fn check(r: &Resource, obj: &Value) -> Result<(), FieldError> {
    use k8s_openapi::api::{apps::v1 as apps, batch::v1 as batch, coordination::v1 as coord, core::v1 as core, discovery::v1 as disc};
    match (r.group, r.kind) {
        ("", "Namespace") => typed::<core::Namespace>(obj),
        ("", "Pod") => typed::<core::Pod>(obj),
        ("", "Service") => typed::<core::Service>(obj),
        ("", "Endpoints") => typed::<core::Endpoints>(obj),
        ("", "ConfigMap") => typed::<core::ConfigMap>(obj),
        ("", "Secret") => typed::<core::Secret>(obj),
        ("", "Node") => typed::<core::Node>(obj),
        ("", "Event") => typed::<core::Event>(obj),
        ("", "ServiceAccount") => typed::<core::ServiceAccount>(obj),
        ("", "PersistentVolumeClaim") => typed::<core::PersistentVolumeClaim>(obj),
        ("apps", "Deployment") => typed::<apps::Deployment>(obj),
        ("apps", "ReplicaSet") => typed::<apps::ReplicaSet>(obj),
        ("apps", "DaemonSet") => typed::<apps::DaemonSet>(obj),
        ("apps", "StatefulSet") => typed::<apps::StatefulSet>(obj),
        ("batch", "Job") => typed::<batch::Job>(obj),
        ("batch", "CronJob") => typed::<batch::CronJob>(obj),
        ("discovery.k8s.io", "EndpointSlice") => typed::<disc::EndpointSlice>(obj),
        ("coordination.k8s.io", "Lease") => typed::<coord::Lease>(obj),
        (crate::resource::KAPP_GROUP, "GitSync") => typed::<crate::kapp::GitSync>(obj),
        (crate::resource::KAPP_GROUP, "ClusterSettings") => typed::<crate::kapp::ClusterSettings>(obj),
        _ => Ok(()),
    }
}
