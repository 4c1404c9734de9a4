//! Service addresses: a ClusterIP from the service range and a NodePort for every port of
//! a NodePort/LoadBalancer Service. Each address is claimed by a store key
//! (`/registry/ranges/serviceips/<ip>`, `/registry/ranges/servicenodeports/<port>`) that is
//! written in the same transaction as the Service, with a compare that it is absent, and
//! deleted in the transaction that removes the Service — so two Services never share an
//! address, and a crash never leaks one.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use kapp_api::{ErrorType, FieldError};
use kapp_store_client::{Compare, KeyRange, Op};
use serde_json::{json, Value};

/// The service range (Kubernetes' usual default). `.1` is kept for the `kubernetes`
/// Service, `.10` is the cluster DNS by convention (both may be asked for explicitly).
pub const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 12);
pub const NODE_PORTS: std::ops::RangeInclusive<i64> = 30000..=32767;

fn in_range(ip: Ipv4Addr) -> bool {
    let (net, bits) = SERVICE_CIDR;
    let mask = u32::MAX << (32 - bits);
    u32::from(ip) & mask == u32::from(net) & mask && u32::from(ip) & !mask != 0 && u32::from(ip) & !mask != !mask
}

fn random_ip() -> Ipv4Addr {
    let (net, bits) = SERVICE_CIDR;
    let size = 1u32 << (32 - bits);
    // Skip the network address, .1 to .10 (well-known) and the broadcast address.
    let off = 11 + rand::random::<u32>() % (size - 12);
    Ipv4Addr::from(u32::from(net) + off)
}

fn ip_key(ip: &str) -> String {
    format!("/registry/ranges/serviceips/{ip}")
}

fn port_key(port: i64) -> String {
    format!("/registry/ranges/servicenodeports/{port}")
}

fn err(field: &str, detail: String) -> FieldError {
    FieldError { field: field.into(), kind: ErrorType::Invalid, detail }
}

/// The keys a stored Service holds.
fn claims(svc: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Some(ip) = svc["spec"]["clusterIP"].as_str().filter(|ip| ip.parse::<Ipv4Addr>().is_ok()) {
        out.insert(ip_key(ip));
    }
    for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
        if let Some(n) = p["nodePort"].as_i64() {
            out.insert(port_key(n));
        }
    }
    out
}

/// Fill in the addresses of `new` (a Service being created, or updated from `stored`):
/// the stored ClusterIP and NodePorts are kept (the ClusterIP cannot change), missing ones
/// are picked at random. Returns the compares and ops that claim new keys and release
/// dropped ones, or the invalid fields.
pub fn settle(stored: Option<&Value>, new: &mut Value) -> Result<(Vec<Compare>, Vec<Op>), Vec<FieldError>> {
    let mut errors = Vec::new();
    if !new["spec"].is_object() {
        new["spec"] = json!({});
    }
    let ty = new["spec"]["type"].as_str().unwrap_or("ClusterIP").to_string();
    if ty == "ExternalName" {
        return Ok(release_diff(stored, new));
    }
    let old_ip = stored.and_then(|s| s["spec"]["clusterIP"].as_str()).filter(|s| !s.is_empty()).map(str::to_string);
    match (new["spec"]["clusterIP"].as_str().filter(|s| !s.is_empty()).map(str::to_string), &old_ip) {
        (None, Some(old)) => new["spec"]["clusterIP"] = json!(old),
        (Some(given), Some(old)) if &given != old => errors.push(err("spec.clusterIP", format!("{given:?}: field is immutable"))),
        (Some(given), None) if given != "None" => match given.parse::<Ipv4Addr>() {
            Ok(ip) if in_range(ip) => {}
            _ => errors.push(err("spec.clusterIP", format!("{given:?}: must be \"None\" or an address in the service range {}/{}", SERVICE_CIDR.0, SERVICE_CIDR.1))),
        },
        (None, None) => new["spec"]["clusterIP"] = json!(random_ip().to_string()),
        _ => {}
    }
    if let Some(ip) = new["spec"]["clusterIP"].as_str().map(str::to_string) {
        new["spec"]["clusterIPs"] = json!([ip]);
    }
    let wants_node_ports = ty == "NodePort" || ty == "LoadBalancer";
    let old_ports: Vec<Value> = stored.and_then(|s| s["spec"]["ports"].as_array().cloned()).unwrap_or_default();
    let mut used: BTreeSet<i64> = BTreeSet::new();
    for (i, p) in new["spec"]["ports"].as_array_mut().into_iter().flatten().enumerate() {
        if !wants_node_ports {
            if p.get("nodePort").is_some() {
                errors.push(err(&format!("spec.ports[{i}].nodePort"), format!("may not be used when `type` is {ty:?}")));
            }
            continue;
        }
        let n = match p["nodePort"].as_i64() {
            Some(n) => n,
            None => {
                // The same port of the stored Service keeps its NodePort.
                let same = old_ports.iter().find(|o| o["port"] == p["port"] && o["protocol"] == p["protocol"]).and_then(|o| o["nodePort"].as_i64());
                let n = same.unwrap_or_else(|| NODE_PORTS.start() + (rand::random::<u64>() % (NODE_PORTS.end() - NODE_PORTS.start() + 1) as u64) as i64);
                p["nodePort"] = json!(n);
                n
            }
        };
        if !NODE_PORTS.contains(&n) {
            errors.push(err(&format!("spec.ports[{i}].nodePort"), format!("{n}: provided port is not in the valid range {}-{}", NODE_PORTS.start(), NODE_PORTS.end())));
        } else if !used.insert(n) {
            errors.push(err(&format!("spec.ports[{i}].nodePort"), format!("{n}: duplicate")));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(release_diff(stored, new))
}

/// Compares + puts for the keys `new` holds that `stored` did not, deletes for the reverse.
fn release_diff(stored: Option<&Value>, new: &Value) -> (Vec<Compare>, Vec<Op>) {
    let before = stored.map(claims).unwrap_or_default();
    let after = claims(new);
    let owner = format!("{}/{}", new["metadata"]["namespace"].as_str().unwrap_or(""), new["metadata"]["name"].as_str().unwrap_or(""));
    let mut compares = Vec::new();
    let mut ops = Vec::new();
    for k in after.difference(&before) {
        compares.push(Compare::absent(k.clone()));
        ops.push(Op::Put { key: k.clone().into_bytes(), value: owner.clone().into_bytes(), prev_kv: false });
    }
    for k in before.difference(&after) {
        ops.push(Op::Delete { range: KeyRange::single(k.clone()), prev_kv: false });
    }
    (compares, ops)
}

/// The ops releasing everything a deleted Service held.
pub fn release(stored: &Value) -> Vec<Op> {
    claims(stored).into_iter().map(|k| Op::Delete { range: KeyRange::single(k), prev_kv: false }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_service_gets_an_address_and_node_ports_in_range() {
        let mut s = json!({"metadata": {"name": "a", "namespace": "n"}, "spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 443}]}});
        let (compares, ops) = settle(None, &mut s).unwrap();
        let ip: Ipv4Addr = s["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
        assert!(in_range(ip));
        assert_eq!(compares.len(), 3, "one ClusterIP and two NodePorts claimed");
        assert_eq!(ops.len(), 3);
        assert!(NODE_PORTS.contains(&s["spec"]["ports"][0]["nodePort"].as_i64().unwrap()));
    }

    #[test]
    fn updates_keep_addresses_and_refuse_to_change_the_cluster_ip() {
        let mut s = json!({"metadata": {"name": "a", "namespace": "n"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        settle(None, &mut s).unwrap();
        let stored = s.clone();
        let mut update = json!({"metadata": {"name": "a", "namespace": "n"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        let (compares, ops) = settle(Some(&stored), &mut update).unwrap();
        assert_eq!(update["spec"]["clusterIP"], stored["spec"]["clusterIP"]);
        assert_eq!(update["spec"]["ports"][0]["nodePort"], stored["spec"]["ports"][0]["nodePort"]);
        assert!(compares.is_empty() && ops.is_empty(), "nothing new claimed or released");
        // Back to ClusterIP: the NodePort is released.
        let mut plain = json!({"metadata": {"name": "a", "namespace": "n"}, "spec": {"ports": [{"port": 80}]}});
        let (_, ops) = settle(Some(&stored), &mut plain).unwrap();
        assert!(matches!(&ops[..], [Op::Delete { .. }]));
        let mut moved = json!({"metadata": {"name": "a", "namespace": "n"}, "spec": {"clusterIP": "10.96.0.99", "ports": [{"port": 80}]}});
        let e = settle(Some(&stored), &mut moved).unwrap_err();
        assert_eq!(e[0].field, "spec.clusterIP");
    }

    #[test]
    fn bad_addresses_name_the_field() {
        let mut s = json!({"metadata": {"name": "a"}, "spec": {"clusterIP": "192.168.1.1", "ports": [{"port": 80, "nodePort": 30001}]}});
        let e = settle(None, &mut s).unwrap_err();
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.clusterIP", "spec.ports[0].nodePort"]);
        let mut headless = json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None"}});
        let (c, _) = settle(None, &mut headless).unwrap();
        assert!(c.is_empty(), "a headless Service claims nothing");
        let mut dns = json!({"metadata": {"name": "dns"}, "spec": {"clusterIP": "10.96.0.10"}});
        assert!(settle(None, &mut dns).is_ok(), "well-known addresses may be asked for");
    }
}
