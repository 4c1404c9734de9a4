//! Services, EndpointSlices and Pods → the records of the cluster's zones, per the
//! Kubernetes DNS specification. Pure: no IO, no clock.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SRV};
use hickory_proto::rr::{LowerName, Name, RData, RecordSet, RrKey};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the zones look like.
#[derive(Clone, Debug)]
pub struct ZoneConfig {
    /// The cluster domain, `cluster.local.`.
    pub domain: Name,
    /// TTL of every answer (and of negative answers, through the SOA minimum).
    pub ttl: u32,
    /// Reverse zones kapp is authoritative for (from the service and pod CIDRs); PTR
    /// queries outside them are forwarded.
    pub reverse_zones: Vec<Name>,
}

impl ZoneConfig {
    pub fn new(domain: &str, ttl: u32, reverse_cidrs: &[(IpAddr, u8)]) -> Result<ZoneConfig, hickory_proto::ProtoError> {
        let mut domain = Name::from_ascii(domain)?;
        domain.set_fqdn(true);
        let mut reverse_zones = vec![];
        for (ip, len) in reverse_cidrs {
            reverse_zones.extend(reverse_zones_of(*ip, *len));
        }
        reverse_zones.sort();
        reverse_zones.dedup();
        Ok(ZoneConfig { domain, ttl, reverse_zones })
    }

    /// Every zone origin: the domain first, then the reverse zones.
    pub fn origins(&self) -> Vec<Name> {
        std::iter::once(self.domain.clone()).chain(self.reverse_zones.iter().cloned()).collect()
    }
}

/// The zones' records: origin → (name, type) → record set. SOAs are not included.
pub type Records = BTreeMap<Name, BTreeMap<RrKey, RecordSet>>;

/// The reverse zones (on label boundaries: octets, IPv6 nibbles) covering `ip/len`; at
/// most 256 of them (a wider range gets its enclosing zone).
pub fn reverse_zones_of(ip: IpAddr, len: u8) -> Vec<Name> {
    let (step, bits, width) = match ip {
        IpAddr::V4(_) => (8u32, 32u32, 8u32),
        IpAddr::V6(_) => (4, 128, 4),
    };
    let len = u32::from(len).min(bits);
    let mut aligned = len.div_ceil(step) * step;
    if aligned - len > 8 {
        aligned = len / step * step;
    }
    let raw: u128 = match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    let host_bits = bits - len;
    let base = if host_bits >= 128 { 0 } else { raw >> host_bits << host_bits };
    let count = 1u128 << (aligned.saturating_sub(len));
    let mut out = vec![];
    for i in 0..count {
        let net = base + (i << (bits - aligned.max(len)));
        let labels = aligned / width;
        let mut parts = vec![];
        for l in 0..labels {
            let shift = bits - width * (l + 1);
            let v = (net >> shift) & ((1 << width) - 1);
            parts.push(if width == 8 { v.to_string() } else { format!("{v:x}") });
        }
        parts.reverse();
        let suffix = if width == 8 { "in-addr.arpa." } else { "ip6.arpa." };
        let text = if parts.is_empty() { suffix.to_string() } else { format!("{}.{suffix}", parts.join(".")) };
        if let Ok(n) = Name::from_ascii(&text) {
            out.push(n);
        }
    }
    out
}

/// The PTR name of an address (`10.0.96.10.in-addr.arpa.`).
pub fn ptr_name(ip: IpAddr) -> Name {
    let text = match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(a) => {
            let mut s = String::new();
            for b in a.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s + "ip6.arpa."
        }
    };
    Name::from_ascii(text).expect("a reverse name is valid")
}

/// `10-244-1-5` (IPv6: colons become dashes), the label Kubernetes DNS uses for an address.
pub fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string().replace('.', "-"),
        IpAddr::V6(a) => a.to_string().replace(':', "-"),
    }
}

struct Builder<'a> {
    cfg: &'a ZoneConfig,
    out: Records,
}

impl Builder<'_> {
    fn add(&mut self, name: &Name, rdata: RData) {
        let zone = if self.cfg.domain.zone_of(name) {
            Some(&self.cfg.domain)
        } else {
            // The most specific reverse zone holding the name.
            self.cfg.reverse_zones.iter().filter(|z| z.zone_of(name)).max_by_key(|z| z.num_labels())
        };
        let Some(zone) = zone else { return };
        let rtype = rdata.record_type();
        let set = self
            .out
            .entry(zone.clone())
            .or_default()
            .entry(RrKey::new(LowerName::new(name), rtype))
            .or_insert_with(|| RecordSet::with_ttl(name.clone(), rtype, self.cfg.ttl));
        set.add_rdata(rdata);
    }

    fn address(&mut self, name: &Name, ip: IpAddr) {
        self.add(name, addr_rdata(ip));
    }
}

fn addr_rdata(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(a) => RData::A(A(a)),
        IpAddr::V6(a) => RData::AAAA(AAAA(a)),
    }
}

fn child(parent: &Name, label: &str) -> Option<Name> {
    parent.prepend_label(label).ok()
}

/// A Service's endpoints as DNS sees them: (address, hostname) plus port name/protocol
/// → port.
struct DnsEndpoints {
    addrs: BTreeSet<(IpAddr, Option<String>)>,
    ports: BTreeMap<(String, String), BTreeSet<u16>>,
}

fn endpoints(slices: &[&EndpointSlice], include_unready: bool) -> DnsEndpoints {
    let mut out = DnsEndpoints { addrs: BTreeSet::new(), ports: BTreeMap::new() };
    for s in slices {
        if s.address_type == "FQDN" {
            continue;
        }
        for p in s.ports.iter().flatten() {
            if let (Some(name), Some(port)) = (p.name.as_ref().filter(|n| !n.is_empty()), p.port.and_then(|p| u16::try_from(p).ok())) {
                out.ports.entry((name.clone(), p.protocol.clone().unwrap_or_else(|| "TCP".into()))).or_default().insert(port);
            }
        }
        for e in &s.endpoints {
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready && !include_unready {
                continue;
            }
            if let Some(ip) = e.addresses.first().and_then(|a| a.parse().ok()) {
                out.addrs.insert((ip, e.hostname.clone().filter(|h| !h.is_empty())));
            }
        }
    }
    out
}

/// All records of the cluster's zones.
pub fn records<'a>(
    cfg: &ZoneConfig,
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> Records {
    let mut b = Builder { cfg, out: Records::new() };
    let mut by_service: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices {
        if let (Some(ns), Some(svc)) = (s.metadata.namespace.as_deref(), s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL))) {
            by_service.entry((ns, svc.as_str())).or_default().push(s);
        }
    }
    let Some(svc_zone) = child(&cfg.domain, "svc") else { return b.out };
    let Some(pod_zone) = child(&cfg.domain, "pod") else { return b.out };
    for svc in services {
        let (Some(ns), Some(name), Some(spec)) = (svc.metadata.namespace.as_deref(), svc.metadata.name.as_deref(), svc.spec.as_ref()) else { continue };
        let Some(n) = child(&svc_zone, ns).and_then(|z| child(&z, name)) else { continue };
        if spec.type_.as_deref() == Some("ExternalName") {
            if let Some(target) = spec.external_name.as_deref().and_then(|t| Name::from_ascii(t).ok()) {
                let mut target = target;
                target.set_fqdn(true);
                b.add(&n, RData::CNAME(CNAME(target)));
            }
            continue;
        }
        let mut ips: Vec<IpAddr> = spec.cluster_ips.iter().flatten().filter_map(|s| s.parse().ok()).collect();
        if ips.is_empty() {
            ips.extend(spec.cluster_ip.as_deref().and_then(|s| s.parse::<IpAddr>().ok()));
        }
        let headless = spec.cluster_ip.as_deref() == Some("None");
        let slices = by_service.get(&(ns, name)).map(Vec::as_slice).unwrap_or(&[]);
        if !headless {
            if ips.is_empty() {
                continue;
            }
            for ip in &ips {
                b.address(&n, *ip);
                b.add(&ptr_name(*ip), RData::PTR(PTR(n.clone())));
            }
            for p in spec.ports.iter().flatten() {
                let Some(pname) = p.name.as_deref().filter(|s| !s.is_empty()) else { continue };
                let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                let Some(srv) = child(&n, &format!("_{proto}")).and_then(|x| child(&x, &format!("_{pname}"))) else { continue };
                let Ok(port) = u16::try_from(p.port) else { continue };
                b.add(&srv, RData::SRV(SRV::new(0, 100, port, n.clone())));
            }
            continue;
        }
        // Headless: the ready endpoints themselves.
        let eps = endpoints(slices, spec.publish_not_ready_addresses == Some(true));
        let weight = if eps.addrs.is_empty() { 0 } else { (100 / eps.addrs.len()).max(1) as u16 };
        let mut targets = vec![];
        for (ip, hostname) in &eps.addrs {
            b.address(&n, *ip);
            let label = hostname.clone().unwrap_or_else(|| dashed(*ip));
            if let Some(h) = child(&n, &label) {
                b.address(&h, *ip);
                if hostname.is_some() {
                    b.add(&ptr_name(*ip), RData::PTR(PTR(h.clone())));
                }
                targets.push(h);
            }
        }
        for ((pname, proto), ports) in &eps.ports {
            let Some(srv) = child(&n, &format!("_{}", proto.to_ascii_lowercase())).and_then(|x| child(&x, &format!("_{pname}"))) else { continue };
            for t in &targets {
                for port in ports {
                    b.add(&srv, RData::SRV(SRV::new(0, weight, *port, t.clone())));
                }
            }
        }
    }
    for pod in pods {
        let Some(ns) = pod.metadata.namespace.as_deref() else { continue };
        let Some(status) = &pod.status else { continue };
        if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
            continue;
        }
        let mut ips: Vec<IpAddr> = status.pod_ips.iter().flatten().filter_map(|p| p.ip.parse().ok()).collect();
        if ips.is_empty() {
            ips.extend(status.pod_ip.as_deref().and_then(|s| s.parse::<IpAddr>().ok()));
        }
        for ip in ips {
            if let Some(n) = child(&pod_zone, ns).and_then(|z| child(&z, &dashed(ip))) {
                b.address(&n, ip);
            }
        }
    }
    b.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::RecordType;
    use serde_json::json;

    fn cfg() -> ZoneConfig {
        ZoneConfig::new("cluster.local", 5, &[("10.96.0.0".parse().unwrap(), 12), ("fd00:96::".parse().unwrap(), 112)]).unwrap()
    }
    fn get(r: &Records, name: &str, t: RecordType) -> Vec<String> {
        let n = Name::from_ascii(name).unwrap();
        r.values()
            .filter_map(|z| z.get(&RrKey::new(LowerName::new(&n), t)))
            .flat_map(|s| s.records_without_rrsigs().map(|r| r.data.to_string()).collect::<Vec<_>>())
            .collect()
    }

    #[test]
    fn reverse_zones_follow_label_boundaries() {
        let z = reverse_zones_of("10.96.0.0".parse().unwrap(), 12);
        assert_eq!(z.len(), 16);
        assert_eq!(z[0].to_ascii(), "96.10.in-addr.arpa.");
        assert_eq!(z[15].to_ascii(), "111.10.in-addr.arpa.");
        assert_eq!(reverse_zones_of("10.244.0.0".parse().unwrap(), 16)[0].to_ascii(), "244.10.in-addr.arpa.");
        let v6 = reverse_zones_of("fd00:96::".parse().unwrap(), 112);
        assert_eq!(v6.len(), 1);
        assert!(v6[0].to_ascii().ends_with("6.9.0.0.0.0.d.f.ip6.arpa."), "{}", v6[0]);
        assert_eq!(ptr_name("10.96.0.10".parse().unwrap()).to_ascii(), "10.0.96.10.in-addr.arpa.");
    }

    #[test]
    fn service_headless_srv_pod_and_ptr_records() {
        let web: Service = serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {
            "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:96::a"],
            "ports": [{"name": "http", "port": 80}, {"port": 81}]}})).unwrap();
        let db: Service = serde_json::from_value(json!({"metadata": {"name": "db", "namespace": "prod"}, "spec": {
            "clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}})).unwrap();
        let ext: Service = serde_json::from_value(json!({"metadata": {"name": "ext", "namespace": "default"}, "spec": {
            "type": "ExternalName", "externalName": "example.org"}})).unwrap();
        let sl: EndpointSlice = serde_json::from_value(json!({"metadata": {"name": "db-1", "namespace": "prod", "labels": {SERVICE_NAME_LABEL: "db"}},
            "addressType": "IPv4", "ports": [{"name": "pg", "port": 5433, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.1.5"], "hostname": "db-0"},
                {"addresses": ["10.244.1.6"], "conditions": {"ready": true}},
                {"addresses": ["10.244.1.7"], "conditions": {"ready": false}}
            ]})).unwrap();
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "default"},
            "status": {"podIP": "10.244.2.3", "podIPs": [{"ip": "10.244.2.3"}]}})).unwrap();
        let r = records(&cfg(), [&web, &db, &ext], [&sl], [&pod]);
        assert_eq!(get(&r, "web.default.svc.cluster.local.", RecordType::A), ["10.96.0.10"]);
        assert_eq!(get(&r, "web.default.svc.cluster.local.", RecordType::AAAA), ["fd00:96::a"]);
        assert_eq!(get(&r, "_http._tcp.web.default.svc.cluster.local.", RecordType::SRV), ["0 100 80 web.default.svc.cluster.local."]);
        assert_eq!(get(&r, "10.0.96.10.in-addr.arpa.", RecordType::PTR), ["web.default.svc.cluster.local."]);
        assert_eq!(get(&r, "db.prod.svc.cluster.local.", RecordType::A), ["10.244.1.5", "10.244.1.6"]);
        assert_eq!(get(&r, "db-0.db.prod.svc.cluster.local.", RecordType::A), ["10.244.1.5"]);
        assert_eq!(get(&r, "10-244-1-6.db.prod.svc.cluster.local.", RecordType::A), ["10.244.1.6"]);
        let mut srv = get(&r, "_pg._tcp.db.prod.svc.cluster.local.", RecordType::SRV);
        srv.sort();
        assert_eq!(srv, ["0 50 5433 10-244-1-6.db.prod.svc.cluster.local.", "0 50 5433 db-0.db.prod.svc.cluster.local."]);
        assert_eq!(get(&r, "ext.default.svc.cluster.local.", RecordType::CNAME), ["example.org."]);
        assert_eq!(get(&r, "10-244-2-3.default.pod.cluster.local.", RecordType::A), ["10.244.2.3"]);
        // Pod addresses outside the reverse zones get no PTR; the endpoint with a hostname does not either here.
        assert!(get(&r, "5.1.244.10.in-addr.arpa.", RecordType::PTR).is_empty());
        assert_eq!(r.len(), 3, "cluster.local, 96.10.in-addr.arpa, the v6 reverse zone");
    }
}
