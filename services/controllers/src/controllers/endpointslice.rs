//! EndpointSlice: for each Service with a selector, the addresses of the pods it selects
//! (ready, serving, terminating), with target ports resolved per pod (named ports looked
//! up in the pod's containers), grouped by port mapping, at most 100 endpoints a slice.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::PostParams;
use kube::{Api, ResourceExt};

use super::{delete_exact, Ctx};
use crate::pods::{controller_ref, is_ready, phase};
use crate::cache::split_key;
use crate::queue::Next;
use crate::Error;

pub const SERVICE_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGER: &str = "endpointslice-controller.k8s.io";
const MAX_ENDPOINTS: usize = 100;

/// Whether `svc`'s selector selects `pod` (a Service without selector selects nothing).
pub fn selects(svc: &Service, pod: &Pod) -> bool {
    let Some(sel) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()).filter(|s| !s.is_empty()) else { return false };
    if svc.namespace() != pod.namespace() {
        return false;
    }
    let labels = pod.labels();
    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The port a pod serves a Service port on, if it has it.
fn target_port(pod: &Pod, port: &k8s_openapi::api::core::v1::ServicePort) -> Option<i32> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(p)) => Some(*p),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()) && p.protocol.as_deref().unwrap_or("TCP") == port.protocol.as_deref().unwrap_or("TCP"))
            .map(|p| p.container_port),
    }
}

/// The slices `svc` should have, given the pods of its namespace.
pub fn desired(svc: &Service, pods: &[std::sync::Arc<Pod>]) -> Vec<EndpointSlice> {
    let ports = svc.spec.as_ref().and_then(|s| s.ports.clone()).unwrap_or_default();
    let publish_unready = svc.spec.as_ref().and_then(|s| s.publish_not_ready_addresses).unwrap_or(false);
    let mut groups: BTreeMap<Vec<Option<i32>>, Vec<Endpoint>> = BTreeMap::new();
    let mut sorted: Vec<&std::sync::Arc<Pod>> = pods.iter().filter(|p| selects(svc, p)).collect();
    sorted.sort_by_key(|p| p.name_any());
    for pod in sorted {
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).filter(|ip| !ip.is_empty()) else { continue };
        if matches!(phase(pod), "Succeeded" | "Failed") {
            continue;
        }
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let serving = is_ready(pod) || publish_unready;
        let key: Vec<Option<i32>> = ports.iter().map(|p| target_port(pod, p)).collect();
        groups.entry(key).or_default().push(Endpoint {
            addresses: vec![ip],
            conditions: Some(EndpointConditions { ready: Some(serving && !terminating), serving: Some(serving), terminating: Some(terminating) }),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(ObjectReference { kind: Some("Pod".into()), name: Some(pod.name_any()), namespace: pod.namespace(), uid: pod.uid(), ..Default::default() }),
            hostname: pod.spec.as_ref().and_then(|s| s.hostname.clone()),
            ..Default::default()
        });
    }
    let name = svc.name_any();
    let mut out = Vec::new();
    for (key, endpoints) in groups {
        let eports: Vec<EndpointPort> = ports
            .iter()
            .zip(&key)
            .filter_map(|(p, t)| t.map(|t| EndpointPort { name: Some(p.name.clone().unwrap_or_default()), port: Some(t), protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())), app_protocol: p.app_protocol.clone() }))
            .collect();
        let tag: String = key.iter().map(|k| k.map_or("x".to_string(), |p| p.to_string())).collect::<Vec<_>>().join("-");
        for (i, chunk) in endpoints.chunks(MAX_ENDPOINTS).enumerate() {
            out.push(slice(svc, format!("{name}-{}{}", if tag.is_empty() { "none".into() } else { tag.clone() }, if i == 0 { String::new() } else { format!("-{i}") }), chunk.to_vec(), eports.clone()));
        }
    }
    if out.is_empty() {
        // An empty slice says "no endpoints" (rather than "not computed yet").
        out.push(slice(svc, format!("{name}-none"), Vec::new(), Vec::new()));
    }
    out
}

fn slice(svc: &Service, name: String, endpoints: Vec<Endpoint>, ports: Vec<EndpointPort>) -> EndpointSlice {
    let labels = [(SERVICE_LABEL.to_string(), svc.name_any()), (MANAGED_BY.to_string(), MANAGER.to_string())].into();
    let family = svc.spec.as_ref().and_then(|s| s.ip_families.as_ref()).and_then(|f| f.first().cloned()).unwrap_or_else(|| "IPv4".into());
    EndpointSlice {
        metadata: ObjectMeta { name: Some(name), namespace: svc.namespace(), labels: Some(labels), owner_references: Some(vec![controller_ref(svc)]), ..Default::default() },
        address_type: family,
        endpoints,
        ports: Some(ports),
    }
}

pub(crate) async fn reconcile(ctx: &Ctx, key: &str) -> Result<Next, Error> {
    let (ns, name) = split_key(key);
    let api: Api<EndpointSlice> = ctx.api(ns);
    let mine = |s: &EndpointSlice| s.labels().get(SERVICE_LABEL).map(String::as_str) == Some(name) && s.labels().get(MANAGED_BY).map(String::as_str) == Some(MANAGER);
    let existing: Vec<_> = ctx.slices.list_namespace(ns).into_iter().filter(|s| mine(s)).collect();
    let svc = ctx.services.get(key);
    let want = match svc.as_deref() {
        Some(svc) if svc.spec.as_ref().and_then(|s| s.selector.as_ref()).is_some_and(|s| !s.is_empty()) => desired(svc, &ctx.pods.list_namespace(ns)),
        _ => Vec::new(),
    };
    for w in &want {
        let wname = w.name_any();
        match existing.iter().find(|e| e.name_any() == wname) {
            None => match api.create(&PostParams::default(), w).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => return Err(Error::Invalid(format!("endpointslice {ns}/{wname} exists but is not in the cache yet"))),
                Err(e) => return Err(e.into()),
            },
            Some(e) if e.endpoints != w.endpoints || e.ports != w.ports || e.metadata.labels != w.metadata.labels => {
                let mut next = w.clone();
                next.metadata.resource_version = e.resource_version();
                api.replace(&wname, &PostParams::default(), &next).await?;
            }
            Some(_) => {}
        }
    }
    for e in existing.iter().filter(|e| !want.iter().any(|w| w.name_any() == e.name_any())) {
        delete_exact(&api, e.as_ref(), &Default::default()).await?;
    }
    Ok(Next::Done)
}
