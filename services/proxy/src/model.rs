//! Services + EndpointSlices → the desired model: one [`ServicePort`] per (service, port,
//! IP family). Pure: no IO, no clock.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Kubernetes' default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// nft's name (`meta l4proto tcp`).
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    /// The EndpointSlice `addressType` of this family.
    pub fn address_type(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// What names one programmed service port: chain, map and set names derive from it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    pub namespace: String,
    pub name: String,
    /// The port's name, or `p<port>` for an unnamed port.
    pub port: String,
    pub protocol: Protocol,
    pub family: Family,
}

impl fmt::Display for PortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}/{}", self.namespace, self.name, self.port, self.protocol.nft())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
}

/// One service port of one IP family as it should be programmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub cluster_ip: IpAddr,
    pub port: u16,
    pub node_port: Option<u16>,
    /// Ready endpoints (or, when none is ready, serving terminating ones), sorted, unique.
    pub endpoints: Vec<Endpoint>,
    /// ClientIP session affinity and its timeout in seconds.
    pub affinity: Option<u32>,
    /// `spec.externalIPs` and LoadBalancer ingress IPs of this family: served like the
    /// ClusterIP (same port, same endpoints), sorted, unique.
    pub external_ips: Vec<IpAddr>,
}

impl ServicePort {
    /// The ClusterIP, then the external addresses.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        std::iter::once(self.cluster_ip).chain(self.external_ips.iter().copied())
    }
}

/// Everything the proxy should program.
pub type Desired = BTreeMap<PortKey, ServicePort>;

/// Service ports of every Service with a cluster IP (headless and ExternalName Services
/// have none to proxy), with their endpoints from `slices`.
pub fn desired<'a>(services: impl IntoIterator<Item = &'a Service>, slices: impl IntoIterator<Item = &'a EndpointSlice>) -> Desired {
    let mut by_service: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices {
        let (Some(ns), Some(svc)) = (s.metadata.namespace.as_deref(), s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL))) else {
            continue;
        };
        by_service.entry((ns, svc.as_str())).or_default().push(s);
    }
    let mut out = Desired::new();
    for svc in services {
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        let Some(name) = svc.metadata.name.as_deref() else { continue };
        let slices = by_service.get(&(ns, name)).map(Vec::as_slice).unwrap_or(&[]);
        for (key, port) in service_ports(ns, name, svc, slices) {
            out.insert(key, port);
        }
    }
    out
}

/// The service ports of one Service.
pub fn service_ports(ns: &str, name: &str, svc: &Service, slices: &[&EndpointSlice]) -> Vec<(PortKey, ServicePort)> {
    let Some(spec) = &svc.spec else { return vec![] };
    if spec.type_.as_deref() == Some("ExternalName") {
        return vec![];
    }
    let mut ips: Vec<IpAddr> = spec.cluster_ips.clone().unwrap_or_default().iter().filter_map(|s| s.parse().ok()).collect();
    if ips.is_empty() {
        ips.extend(spec.cluster_ip.as_deref().and_then(|s| s.parse::<IpAddr>().ok()));
    }
    let node_ports = matches!(spec.type_.as_deref(), Some("NodePort") | Some("LoadBalancer"));
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .filter(|t| *t > 0)
            .map_or(DEFAULT_AFFINITY_SECONDS, |t| t as u32)
    });
    let lb_ips = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref()).into_iter().flatten().filter_map(|i| i.ip.clone());
    let externals: BTreeSet<IpAddr> = spec.external_ips.iter().flatten().cloned().chain(lb_ips).filter_map(|s| s.parse().ok()).collect();
    let mut out = vec![];
    let mut seen_family = BTreeSet::new();
    for ip in ips {
        let family = Family::of(&ip);
        if !seen_family.insert(family) {
            continue;
        }
        for p in spec.ports.iter().flatten() {
            let (Some(protocol), Ok(port)) = (Protocol::parse(p.protocol.as_deref()), u16::try_from(p.port)) else { continue };
            let port_name = p.name.clone().unwrap_or_default();
            let key = PortKey {
                namespace: ns.to_string(),
                name: name.to_string(),
                port: if port_name.is_empty() { format!("p{port}") } else { port_name.clone() },
                protocol,
                family,
            };
            let node_port = if node_ports { p.node_port.and_then(|n| u16::try_from(n).ok()).filter(|n| *n > 0) } else { None };
            let endpoints = endpoints(slices, family, &port_name, protocol, p.target_port.as_ref(), port);
            let external_ips = externals.iter().copied().filter(|e| Family::of(e) == family && *e != ip).collect();
            out.push((key, ServicePort { cluster_ip: ip, port, node_port, endpoints, affinity, external_ips }));
        }
    }
    out
}

/// Ready endpoints of the service port `port_name`/`protocol` in `slices` of `family`;
/// when none is ready, serving and terminating ones (kube-proxy's fallback).
fn endpoints(slices: &[&EndpointSlice], family: Family, port_name: &str, protocol: Protocol, target: Option<&IntOrString>, port: u16) -> Vec<Endpoint> {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for s in slices {
        if s.address_type != family.address_type() {
            continue;
        }
        let target_port = match s.ports.as_deref() {
            // A slice without ports (a selector-less Service's hand-made slice): the
            // Service's own numeric targetPort, or its port.
            None | Some([]) => match target {
                None => Some(port),
                Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
                Some(IntOrString::String(_)) => None,
            },
            // The slice carries the resolved port (named targetPorts are resolved per pod
            // by whoever wrote it) under the service port's name.
            Some(ports) => ports
                .iter()
                .find(|sp| sp.name.as_deref().unwrap_or("") == port_name && Protocol::parse(sp.protocol.as_deref()) == Some(protocol))
                .and_then(|sp| sp.port)
                .and_then(|n| u16::try_from(n).ok()),
        };
        let Some(target_port) = target_port.filter(|p| *p > 0) else { continue };
        for e in &s.endpoints {
            let Some(ip) = e.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else { continue };
            if Family::of(&ip) != family {
                continue;
            }
            let c = e.conditions.as_ref();
            let is_ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(is_ready);
            let is_terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let ep = Endpoint { ip, port: target_port };
            if is_ready {
                ready.insert(ep);
            } else if serving && is_terminating {
                terminating.insert(ep);
            }
        }
    }
    if ready.is_empty() { terminating } else { ready }.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }
    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }

    fn web() -> Service {
        svc(json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {
            "type": "NodePort", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
            "sessionAffinity": "ClientIP",
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080},
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353, "nodePort": 30053}
            ]}}))
    }

    #[test]
    fn named_ports_ready_endpoints_affinity_and_node_ports() {
        let s1 = slice(json!({"metadata": {"name": "web-a", "namespace": "default", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}],
            "endpoints": [
                {"addresses": ["10.244.1.5"], "conditions": {"ready": true}},
                {"addresses": ["10.244.1.6"], "conditions": {"ready": false}},
                {"addresses": ["10.244.1.7"]}
            ]}));
        // A second slice whose pods resolve the named port differently.
        let s2 = slice(json!({"metadata": {"name": "web-b", "namespace": "default", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 9090}],
            "endpoints": [{"addresses": ["10.244.2.9"], "conditions": {"ready": true}}]}));
        let other = slice(json!({"metadata": {"name": "x", "namespace": "other", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 1}], "endpoints": [{"addresses": ["10.244.9.9"]}]}));
        let d = desired([&web()], [&s1, &s2, &other]);
        assert_eq!(d.len(), 2);
        let http = d.iter().find(|(k, _)| k.port == "http").unwrap().1;
        assert_eq!(http.cluster_ip, "10.96.0.10".parse::<IpAddr>().unwrap());
        assert_eq!(http.node_port, Some(30080));
        assert_eq!(http.affinity, Some(DEFAULT_AFFINITY_SECONDS));
        let eps: Vec<String> = http.endpoints.iter().map(|e| format!("{}:{}", e.ip, e.port)).collect();
        assert_eq!(eps, ["10.244.1.5:8080", "10.244.1.7:8080", "10.244.2.9:9090"]);
        let dns = d.iter().find(|(k, _)| k.port == "dns").unwrap();
        assert_eq!(dns.0.protocol, Protocol::Udp);
        assert_eq!(dns.1.endpoints.len(), 2, "only the first slice has the dns port");
    }

    #[test]
    fn terminating_fallback_headless_and_external_name() {
        let s = svc(json!({"metadata": {"name": "a", "namespace": "n"}, "spec": {"clusterIP": "10.96.0.11", "ports": [{"port": 80}]}}));
        let sl = slice(json!({"metadata": {"name": "a-1", "namespace": "n", "labels": {SERVICE_NAME_LABEL: "a"}},
            "addressType": "IPv4", "ports": [{"port": 8080}],
            "endpoints": [
                {"addresses": ["10.244.0.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.244.0.3"], "conditions": {"ready": false, "serving": false, "terminating": true}}
            ]}));
        let d = desired([&s], [&sl]);
        let (k, p) = d.iter().next().unwrap();
        assert_eq!(k.port, "p80");
        assert_eq!(p.endpoints, vec![Endpoint { ip: "10.244.0.2".parse().unwrap(), port: 8080 }]);
        assert_eq!(p.node_port, None);

        let headless = svc(json!({"metadata": {"name": "h", "namespace": "n"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}));
        let ext = svc(json!({"metadata": {"name": "e", "namespace": "n"}, "spec": {"type": "ExternalName", "externalName": "example.com"}}));
        assert!(desired([&headless, &ext], []).is_empty());
    }

    #[test]
    fn external_and_load_balancer_ips_by_family() {
        let s = svc(json!({"metadata": {"name": "lb", "namespace": "n"}, "spec": {
            "type": "LoadBalancer", "clusterIP": "10.96.0.13", "clusterIPs": ["10.96.0.13", "fd00::d"],
            "externalIPs": ["203.0.113.10", "2001:db8::10", "203.0.113.10", "not-an-ip"],
            "ports": [{"port": 80, "nodePort": 30081}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}, {"hostname": "lb.example"}]}}}));
        let d = desired([&s], []);
        let v4 = d.iter().find(|(k, _)| k.family == Family::V4).unwrap().1;
        assert_eq!(v4.external_ips, ["198.51.100.7".parse::<IpAddr>().unwrap(), "203.0.113.10".parse().unwrap()]);
        assert_eq!(v4.addresses().count(), 3);
        let v6 = d.iter().find(|(k, _)| k.family == Family::V6).unwrap().1;
        assert_eq!(v6.external_ips, ["2001:db8::10".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn dual_stack_and_slice_without_ports() {
        let s = svc(json!({"metadata": {"name": "d", "namespace": "n"}, "spec": {
            "clusterIP": "10.96.0.12", "clusterIPs": ["10.96.0.12", "fd00::c"],
            "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
            "ports": [{"port": 80, "targetPort": 8081}]}}));
        let v4 = slice(json!({"metadata": {"name": "d-1", "namespace": "n", "labels": {SERVICE_NAME_LABEL: "d"}},
            "addressType": "IPv4", "endpoints": [{"addresses": ["10.244.0.4"]}]}));
        let v6 = slice(json!({"metadata": {"name": "d-2", "namespace": "n", "labels": {SERVICE_NAME_LABEL: "d"}},
            "addressType": "IPv6", "endpoints": [{"addresses": ["fd00::4"]}]}));
        let d = desired([&s], [&v4, &v6]);
        assert_eq!(d.len(), 2);
        for (k, p) in &d {
            assert_eq!(p.affinity, Some(60));
            assert_eq!(p.endpoints.len(), 1);
            assert_eq!(Family::of(&p.endpoints[0].ip), k.family);
            assert_eq!(p.endpoints[0].port, 8081);
        }
    }
}
