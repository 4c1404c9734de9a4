//! The desired model → nft programs (nft's text syntax, fed to `nft -f -`). Pure.
//!
//! One table (`inet <table>`) holds everything:
//!
//! - verdict maps per IP family: `service-ips-v4` (VIP . proto . port → `goto …`),
//!   `service-nodeports-v4` (proto . nodePort → `goto …`), and the same two for service
//!   ports without endpoints (`no-endpoint-…` → `goto reject-chain`), so a lookup is O(1)
//!   at any number of Services;
//! - data maps that pick the endpoint: `service-endpoints-v4` (VIP . proto . port . i →
//!   endpoint . port) and `nodeport-endpoints-v4` (proto . nodePort . i → …), read by
//!   shared chains `lb-v4-N` / `np-v4-N` (one per endpoint count N ≤
//!   [`MAX_SHARED_ENDPOINTS`]: mark for masquerade as needed, then
//!   `dnat … numgen random mod N map @…`);
//! - `hairpin-v4` (endpoint . endpoint): postrouting masquerades a pod that reached
//!   itself through its Service, so the reply comes back through the node;
//! - fixed chains: the NAT hooks jump to `services` (one vmap lookup per family and
//!   kind); filter hooks (priority -110, before DNAT) jump to `endpoints-check`, which
//!   rejects new connections to ports without endpoints (reject is not allowed in NAT
//!   chains); `masquerading` in postrouting SNATs what `mark-for-masquerade` marked;
//! - a chain of its own (`svc…`, and `ext…` for its NodePort) only for a service port with
//!   ClientIP affinity (its per-endpoint affinity sets) or more endpoints than the shared
//!   chains cover.
//!
//! Why so few chains: `nft` reads every chain of every table before a transaction that
//! adds elements or rules, so the number of chains is what a one-service change costs at
//! scale (a chain per service made one change at 10,000 services cost ~80 ms; element
//! changes in a table of fixed chains cost what starting `nft` costs).
//!
//! A service port renders to a [`Fragment`] on its own, so a change is computed and
//! written per service port; a full program is all fragments in one table.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::model::{Family, PortKey, ServicePort};

/// How the table is laid out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderConfig {
    /// Name of the `inet` table kapp owns.
    pub table: String,
    /// Pod network(s): traffic to a ClusterIP from outside them is masqueraded.
    pub cluster_cidrs: Vec<(IpAddr, u8)>,
    /// The packet-mark bit that asks postrouting to masquerade.
    pub masquerade_bit: u32,
}

impl Default for RenderConfig {
    fn default() -> Self {
        RenderConfig { table: "kapp".into(), cluster_cidrs: vec![], masquerade_bit: 0x4000 }
    }
}

/// Parse `a.b.c.d/n` (or an IPv6 prefix).
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = s.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((ip, len))
}

/// A map element: (map, key) → verdict.
pub type Elements = BTreeMap<(String, String), String>;

/// What one service port adds to the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fragment {
    /// Chain name → its rules, in order.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Set name → its declaration (`type …; flags …; timeout …;`).
    pub sets: BTreeMap<String, String>,
    pub elements: Elements,
    /// (set, element) of the hairpin sets: shared by every port with the same endpoint,
    /// so the proxier counts references instead of owning them per port.
    pub hairpin: BTreeSet<(String, String)>,
}

fn fam(f: Family) -> (&'static str, &'static str) {
    match f {
        Family::V4 => ("v4", "ip"),
        Family::V6 => ("v6", "ip6"),
    }
}

pub fn map_services(f: Family) -> String {
    format!("service-ips-{}", fam(f).0)
}
pub fn map_nodeports(f: Family) -> String {
    format!("service-nodeports-{}", fam(f).0)
}
pub fn map_no_endpoints(f: Family) -> String {
    format!("no-endpoint-services-{}", fam(f).0)
}
pub fn map_no_endpoint_nodeports(f: Family) -> String {
    format!("no-endpoint-nodeports-{}", fam(f).0)
}

/// The set of pod networks of a family (`--cluster-cidr`).
pub fn cidr_set(f: Family) -> String {
    format!("cluster-cidrs-{}", fam(f).0)
}

/// VIP . proto . port . i → endpoint . port.
pub fn map_endpoints(f: Family) -> String {
    format!("service-endpoints-{}", fam(f).0)
}
/// proto . nodePort . i → endpoint . port.
pub fn map_nodeport_endpoints(f: Family) -> String {
    format!("nodeport-endpoints-{}", fam(f).0)
}
/// endpoint . endpoint: connections a pod made to itself through a Service.
pub fn hairpin_set(f: Family) -> String {
    format!("hairpin-{}", fam(f).0)
}
/// The shared chain that balances a ClusterIP over `n` endpoints.
pub fn lb_chain(f: Family, n: usize) -> String {
    format!("lb-{}-{n}", fam(f).0)
}
/// The shared chain that balances a NodePort over `n` endpoints.
pub fn np_chain(f: Family, n: usize) -> String {
    format!("np-{}-{n}", fam(f).0)
}

/// Service ports with up to this many endpoints (and no ClientIP affinity) need no chain
/// of their own.
pub const MAX_SHARED_ENDPOINTS: usize = 32;

/// A map or set kapp keeps elements in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapDecl {
    pub name: String,
    /// `map` or `set`.
    pub kind: &'static str,
    /// The body of its declaration (`type …`).
    pub decl: String,
}

/// Every map and set whose elements follow the service ports (not the CIDR sets).
pub fn maps() -> Vec<MapDecl> {
    let mut v = vec![];
    let map = |name: String, decl: String| MapDecl { name, kind: "map", decl };
    for f in [Family::V4, Family::V6] {
        let (_, ipf) = fam(f);
        let addr = if f == Family::V4 { "ipv4_addr" } else { "ipv6_addr" };
        v.push(map(map_services(f), format!("type {addr} . inet_proto . inet_service : verdict")));
        v.push(map(map_nodeports(f), "type inet_proto . inet_service : verdict".into()));
        v.push(map(map_no_endpoints(f), format!("type {addr} . inet_proto . inet_service : verdict")));
        v.push(map(map_no_endpoint_nodeports(f), "type inet_proto . inet_service : verdict".into()));
        // `typeof`: the index is numgen's value, which has no named type. The modulus in
        // the declaration is only its type; each lb chain uses its own.
        v.push(map(map_endpoints(f), format!("typeof {ipf} daddr . meta l4proto . th dport . numgen random mod 2 : {ipf} daddr . th dport")));
        v.push(map(map_nodeport_endpoints(f), format!("typeof meta l4proto . th dport . numgen random mod 2 : {ipf} daddr . th dport")));
        v.push(MapDecl { name: hairpin_set(f), kind: "set", decl: format!("type {addr} . {addr}") });
    }
    v
}

fn key_suffix(k: &PortKey) -> String {
    format!("{}-{}/{}/{}/{}", fam(k.family).0.trim_start_matches('v'), k.namespace, k.name, k.protocol.nft(), k.port)
}

pub fn svc_chain(k: &PortKey) -> String {
    format!("svc{}", key_suffix(k))
}
pub fn ext_chain(k: &PortKey) -> String {
    format!("ext{}", key_suffix(k))
}
fn ep_suffix(k: &PortKey, ip: &IpAddr, port: u16) -> String {
    format!("{}/{}/{port}", key_suffix(k), ip.to_string().replace(':', "_"))
}

fn ip_text(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// Render one service port.
pub fn fragment(cfg: &RenderConfig, k: &PortKey, p: &ServicePort) -> Fragment {
    let (_, ipf) = fam(k.family);
    let proto = k.protocol.nft();
    let mut f = Fragment::default();
    // The ClusterIP and every external address: one VIP key each, the same endpoints.
    let vip_keys: Vec<String> = p.addresses().map(|a| format!("{a} . {proto} . {}", p.port)).collect();
    if p.endpoints.is_empty() {
        for vip_key in vip_keys {
            f.elements.insert((map_no_endpoints(k.family), vip_key), "goto reject-chain".into());
        }
        if let Some(np) = p.node_port {
            f.elements.insert((map_no_endpoint_nodeports(k.family), format!("{proto} . {np}")), "goto reject-chain".into());
        }
        return f;
    }
    f.hairpin = p.endpoints.iter().map(|e| (hairpin_set(k.family), format!("{} . {}", e.ip, e.ip))).collect();
    let n = p.endpoints.len();
    if p.affinity.is_none() && n <= MAX_SHARED_ENDPOINTS {
        // Elements only: the shared chains for n endpoints pick index 0..n.
        for vip_key in vip_keys {
            for (i, e) in p.endpoints.iter().enumerate() {
                f.elements.insert((map_endpoints(k.family), format!("{vip_key} . {i}")), format!("{} . {}", e.ip, e.port));
            }
            f.elements.insert((map_services(k.family), vip_key), format!("goto {}", lb_chain(k.family, n)));
        }
        if let Some(np) = p.node_port {
            for (i, e) in p.endpoints.iter().enumerate() {
                f.elements.insert((map_nodeport_endpoints(k.family), format!("{proto} . {np} . {i}")), format!("{} . {}", e.ip, e.port));
            }
            f.elements.insert((map_nodeports(k.family), format!("{proto} . {np}")), format!("goto {}", np_chain(k.family, n)));
        }
        return f;
    }
    let svc = svc_chain(k);
    let mut rules = vec![];
    if cfg.cluster_cidrs.iter().any(|(ip, _)| Family::of(ip) == k.family) {
        // A named set: an inline `{ … }` would be an anonymous set per service chain,
        // which the kernel and nft's cache pay for at every transaction.
        rules.push(format!("{ipf} saddr != @{} jump mark-for-masquerade", cidr_set(k.family)));
    }
    // Endpoints are inlined in the service chain (no chain per endpoint).
    let aff: Vec<Option<String>> = p.endpoints.iter().map(|e| p.affinity.map(|t| format!("aff{}/{t}", ep_suffix(k, &e.ip, e.port)))).collect();
    let to = |i: usize| {
        let e = &p.endpoints[i];
        let update = aff[i].as_ref().map_or(String::new(), |set| format!("update @{set} {{ {ipf} saddr }} "));
        format!("meta l4proto {proto} {update}dnat {ipf} to {}:{}", ip_text(&e.ip), e.port)
    };
    for (i, set) in aff.iter().enumerate() {
        if let (Some(set), Some(t)) = (set, p.affinity) {
            rules.push(format!("{ipf} saddr @{set} {}", to(i)));
            f.sets.insert(set.clone(), format!("type {}_addr; flags dynamic,timeout; timeout {t}s;", if k.family == Family::V4 { "ipv4" } else { "ipv6" }));
        }
    }
    for i in 0..n {
        if i + 1 < n {
            // Each remaining endpoint with equal chance: 1/(n-i) of what is left.
            rules.push(format!("numgen random mod {} 0 {}", n - i, to(i)));
        } else {
            rules.push(to(i));
        }
    }
    f.chains.insert(svc.clone(), rules);
    for vip_key in vip_keys {
        f.elements.insert((map_services(k.family), vip_key), format!("goto {svc}"));
    }
    if let Some(np) = p.node_port {
        let ext = ext_chain(k);
        f.chains.insert(ext.clone(), vec!["jump mark-for-masquerade".into(), format!("goto {svc}")]);
        f.elements.insert((map_nodeports(k.family), format!("{proto} . {np}")), format!("goto {ext}"));
    }
    f
}

/// The chains every table has, with their rules: first the ones every packet may pass
/// (hooks and helpers), then the shared balancing chains.
pub fn fixed_chains(cfg: &RenderConfig) -> Vec<(String, Option<String>, Vec<String>)> {
    let m = cfg.masquerade_bit;
    let mut services = vec![];
    let mut check = vec![];
    let mut postrouting = vec![];
    let mut balancing = vec![];
    for f in [Family::V4, Family::V6] {
        let (_, ipf) = fam(f);
        let lo = if f == Family::V4 { "127.0.0.0/8" } else { "::1" };
        services.push(format!("{ipf} daddr . meta l4proto . th dport vmap @{}", map_services(f)));
        services.push(format!("fib daddr type local {ipf} daddr != {lo} meta l4proto . th dport vmap @{}", map_nodeports(f)));
        check.push(format!("{ipf} daddr . meta l4proto . th dport vmap @{}", map_no_endpoints(f)));
        check.push(format!("fib daddr type local {ipf} daddr != {lo} meta l4proto . th dport vmap @{}", map_no_endpoint_nodeports(f)));
        postrouting.push(format!("{ipf} saddr . {ipf} daddr @{} jump mark-for-masquerade", hairpin_set(f)));
        let outside = cfg.cluster_cidrs.iter().any(|(ip, _)| Family::of(ip) == f).then(|| format!("{ipf} saddr != @{} jump mark-for-masquerade", cidr_set(f)));
        for n in 1..=MAX_SHARED_ENDPOINTS {
            let mut lb: Vec<String> = outside.iter().cloned().collect();
            lb.push(format!("dnat {ipf} to {ipf} daddr . meta l4proto . th dport . numgen random mod {n} map @{}", map_endpoints(f)));
            balancing.push((lb_chain(f, n), None, lb));
            let np = vec!["jump mark-for-masquerade".into(), format!("dnat {ipf} to meta l4proto . th dport . numgen random mod {n} map @{}", map_nodeport_endpoints(f))];
            balancing.push((np_chain(f, n), None, np));
        }
    }
    postrouting.push("jump masquerading".into());
    let hook = |kind: &str, hook: &str, prio: i32| Some(format!("type {kind} hook {hook} priority {prio}; policy accept;"));
    let mut v: Vec<(String, Option<String>, Vec<String>)> = vec![
        ("reject-chain".into(), None, vec!["reject".into()]),
        ("mark-for-masquerade".into(), None, vec![format!("meta mark set meta mark | {m:#x}")]),
        ("masquerading".into(), None, vec![format!("meta mark & {m:#x} == 0 return"), format!("meta mark set meta mark ^ {m:#x}"), "masquerade fully-random".into()]),
        ("services".into(), None, services),
        ("endpoints-check".into(), None, check),
        ("nat-prerouting".into(), hook("nat", "prerouting", -100), vec!["jump services".into()]),
        ("nat-output".into(), hook("nat", "output", -100), vec!["jump services".into()]),
        ("nat-postrouting".into(), hook("nat", "postrouting", 100), postrouting),
        ("filter-forward".into(), hook("filter", "forward", -110), vec!["ct state new jump endpoints-check".into()]),
        ("filter-input".into(), hook("filter", "input", -110), vec!["ct state new jump endpoints-check".into()]),
        ("filter-output".into(), hook("filter", "output", -110), vec!["ct state new jump endpoints-check".into()]),
    ];
    v.append(&mut balancing);
    v
}

/// How many of [`fixed_chains`] come before the shared balancing chains.
pub const CORE_CHAINS: usize = 11;

/// One transaction that replaces the whole table (creating it if absent).
pub fn full_program<'a>(cfg: &RenderConfig, frags: impl IntoIterator<Item = &'a Fragment>) -> String {
    let t = &cfg.table;
    let mut out = String::with_capacity(1 << 16);
    let _ = writeln!(out, "add table inet {t}\ndelete table inet {t}\ntable inet {t} {{");
    for m in maps() {
        let _ = writeln!(out, "  {} {} {{\n    {}\n  }}", m.kind, m.name, m.decl);
    }
    for f in [Family::V4, Family::V6] {
        let cidrs: Vec<String> = cfg.cluster_cidrs.iter().filter(|(ip, _)| Family::of(ip) == f).map(|(ip, l)| format!("{ip}/{l}")).collect();
        let ty = if f == Family::V4 { "ipv4_addr" } else { "ipv6_addr" };
        let elements = if cidrs.is_empty() { String::new() } else { format!(" elements = {{ {} }};", cidrs.join(", ")) };
        let _ = writeln!(out, "  set {} {{\n    type {ty}; flags interval;{elements}\n  }}", cidr_set(f));
    }
    let mut elements: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut hairpin: BTreeSet<&(String, String)> = BTreeSet::new();
    let mut chains = String::new();
    for fr in frags {
        hairpin.extend(fr.hairpin.iter());
        for (name, decl) in &fr.sets {
            let _ = writeln!(out, "  set {name} {{\n    {decl}\n  }}");
        }
        for (name, rules) in &fr.chains {
            let _ = writeln!(chains, "  chain {name} {{");
            for r in rules {
                let _ = writeln!(chains, "    {r}");
            }
            chains.push_str("  }\n");
        }
        for ((map, key), verdict) in &fr.elements {
            elements.entry(map.as_str()).or_default().push(format!("{key} : {verdict}"));
        }
    }
    for (name, base, rules) in fixed_chains(cfg) {
        let _ = writeln!(out, "  chain {name} {{");
        if let Some(b) = base {
            let _ = writeln!(out, "    {b}");
        }
        for r in rules {
            let _ = writeln!(out, "    {r}");
        }
        out.push_str("  }\n");
    }
    out.push_str(&chains);
    out.push_str("}\n");
    for (set, elem) in hairpin {
        elements.entry(set.as_str()).or_default().push(elem.clone());
    }
    for (map, elems) in elements {
        let _ = writeln!(out, "add element inet {t} {map} {{ {} }}", elems.join(", "));
    }
    out
}

/// Hairpin elements to add and delete (reference counts are the proxier's).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SharedChanges {
    pub add: Vec<(String, String)>,
    pub delete: Vec<(String, String)>,
}

/// One transaction that turns the service ports `changes` (old fragment, new fragment)
/// from old into new, plus the `shared` element changes, touching nothing else. Empty when
/// nothing changes.
pub fn update_program(cfg: &RenderConfig, changes: &[(Option<&Fragment>, Option<&Fragment>)], shared: &SharedChanges) -> String {
    let t = &cfg.table;
    let empty = Fragment::default();
    let (mut add_sets, mut add_chains, mut fill, mut del_elems, mut add_elems, mut flush_old, mut del_chains, mut del_sets) =
        (String::new(), String::new(), String::new(), BTreeMap::<&str, Vec<&str>>::new(), BTreeMap::<&str, Vec<String>>::new(), String::new(), String::new(), String::new());
    for (old, new) in changes {
        let old = old.unwrap_or(&empty);
        let new = new.unwrap_or(&empty);
        for (name, decl) in &new.sets {
            if !old.sets.contains_key(name) {
                let _ = writeln!(add_sets, "add set inet {t} {name} {{ {decl} }}");
            }
        }
        for (name, rules) in &new.chains {
            match old.chains.get(name) {
                Some(old_rules) if old_rules == rules => continue,
                Some(_) => {
                    let _ = writeln!(fill, "flush chain inet {t} {name}");
                }
                None => {
                    let _ = writeln!(add_chains, "add chain inet {t} {name}");
                }
            }
            for r in rules {
                let _ = writeln!(fill, "add rule inet {t} {name} {r}");
            }
        }
        for ((map, key), verdict) in &old.elements {
            if new.elements.get(&(map.clone(), key.clone())) != Some(verdict) {
                del_elems.entry(map).or_default().push(key);
            }
        }
        for ((map, key), verdict) in &new.elements {
            if old.elements.get(&(map.clone(), key.clone())) != Some(verdict) {
                add_elems.entry(map).or_default().push(format!("{key} : {verdict}"));
            }
        }
        for name in old.chains.keys() {
            if !new.chains.contains_key(name) {
                let _ = writeln!(flush_old, "flush chain inet {t} {name}");
                let _ = writeln!(del_chains, "delete chain inet {t} {name}");
            }
        }
        for name in old.sets.keys() {
            if !new.sets.contains_key(name) {
                let _ = writeln!(del_sets, "delete set inet {t} {name}");
            }
        }
    }
    for (set, elem) in &shared.delete {
        del_elems.entry(set).or_default().push(elem);
    }
    for (set, elem) in &shared.add {
        add_elems.entry(set).or_default().push(elem.clone());
    }
    let mut out = add_sets;
    out.push_str(&add_chains);
    out.push_str(&fill);
    for (map, keys) in del_elems {
        let _ = writeln!(out, "delete element inet {t} {map} {{ {} }}", keys.join(", "));
    }
    for (map, elems) in add_elems {
        let _ = writeln!(out, "add element inet {t} {map} {{ {} }}", elems.join(", "));
    }
    out.push_str(&flush_old);
    out.push_str(&del_chains);
    out.push_str(&del_sets);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, Protocol};

    fn key(name: &str) -> PortKey {
        PortKey { namespace: "default".into(), name: name.into(), port: "http".into(), protocol: Protocol::Tcp, family: Family::V4 }
    }
    fn port(eps: &[&str], node_port: Option<u16>, affinity: Option<u32>) -> ServicePort {
        ServicePort {
            cluster_ip: "10.96.0.10".parse().unwrap(),
            port: 80,
            node_port,
            endpoints: eps.iter().map(|e| Endpoint { ip: e.parse().unwrap(), port: 8080 }).collect(),
            affinity,
            external_ips: vec![],
        }
    }
    fn cfg() -> RenderConfig {
        RenderConfig { cluster_cidrs: vec![parse_cidr("10.244.0.0/16").unwrap(), parse_cidr("fd00:244::/64").unwrap()], ..Default::default() }
    }

    #[test]
    fn service_with_two_endpoints_and_a_node_port_is_only_map_elements() {
        let f = fragment(&cfg(), &key("web"), &port(&["10.244.1.5", "10.244.1.6"], Some(30080), None));
        assert!(f.chains.is_empty() && f.sets.is_empty(), "{f:?}");
        let e = |map: &str, k: &str| f.elements[&(map.to_string(), k.to_string())].clone();
        assert_eq!(e("service-ips-v4", "10.96.0.10 . tcp . 80"), "goto lb-v4-2");
        assert_eq!(e("service-endpoints-v4", "10.96.0.10 . tcp . 80 . 0"), "10.244.1.5 . 8080");
        assert_eq!(e("service-endpoints-v4", "10.96.0.10 . tcp . 80 . 1"), "10.244.1.6 . 8080");
        assert_eq!(e("service-nodeports-v4", "tcp . 30080"), "goto np-v4-2");
        assert_eq!(e("nodeport-endpoints-v4", "tcp . 30080 . 1"), "10.244.1.6 . 8080");
        assert_eq!(f.elements.len(), 6);
        assert_eq!(f.hairpin.iter().map(|(s, e)| format!("{s} {e}")).collect::<Vec<_>>(), ["hairpin-v4 10.244.1.5 . 10.244.1.5", "hairpin-v4 10.244.1.6 . 10.244.1.6"]);
        let fixed = fixed_chains(&cfg());
        let lb2 = &fixed.iter().find(|c| c.0 == "lb-v4-2").unwrap().2;
        assert_eq!(lb2, &["ip saddr != @cluster-cidrs-v4 jump mark-for-masquerade", "dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 map @service-endpoints-v4"]);
        let np2 = &fixed.iter().find(|c| c.0 == "np-v4-2").unwrap().2;
        assert_eq!(np2, &["jump mark-for-masquerade", "dnat ip to meta l4proto . th dport . numgen random mod 2 map @nodeport-endpoints-v4"]);
        assert_eq!(fixed.len(), CORE_CHAINS + 4 * MAX_SHARED_ENDPOINTS);
    }

    #[test]
    fn affinity_or_many_endpoints_get_a_chain_of_their_own() {
        let f = fragment(&cfg(), &key("web"), &port(&["10.244.1.5", "10.244.1.6"], Some(30080), Some(60)));
        let svc = &f.chains["svc4-default/web/tcp/http"];
        let aff5 = "aff4-default/web/tcp/http/10.244.1.5/8080/60";
        let aff6 = "aff4-default/web/tcp/http/10.244.1.6/8080/60";
        assert_eq!(
            svc,
            &[
                "ip saddr != @cluster-cidrs-v4 jump mark-for-masquerade".to_string(),
                format!("ip saddr @{aff5} meta l4proto tcp update @{aff5} {{ ip saddr }} dnat ip to 10.244.1.5:8080"),
                format!("ip saddr @{aff6} meta l4proto tcp update @{aff6} {{ ip saddr }} dnat ip to 10.244.1.6:8080"),
                format!("numgen random mod 2 0 meta l4proto tcp update @{aff5} {{ ip saddr }} dnat ip to 10.244.1.5:8080"),
                format!("meta l4proto tcp update @{aff6} {{ ip saddr }} dnat ip to 10.244.1.6:8080"),
            ]
        );
        assert_eq!(f.chains.len(), 2, "the service chain and the NodePort chain, none per endpoint");
        assert_eq!(f.chains["ext4-default/web/tcp/http"], ["jump mark-for-masquerade", "goto svc4-default/web/tcp/http"]);
        assert_eq!(f.elements[&("service-ips-v4".into(), "10.96.0.10 . tcp . 80".into())], "goto svc4-default/web/tcp/http");
        assert_eq!(f.elements[&("service-nodeports-v4".into(), "tcp . 30080".into())], "goto ext4-default/web/tcp/http");
        assert_eq!(f.sets.len(), 2);
        assert_eq!(f.hairpin.len(), 2);
        let many: Vec<String> = (0..=MAX_SHARED_ENDPOINTS).map(|i| format!("10.244.2.{i}")).collect();
        let many: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
        let f = fragment(&cfg(), &key("big"), &port(&many, None, None));
        assert_eq!(f.chains["svc4-default/big/tcp/http"].len(), 1 + many.len());
        assert_eq!(f.elements.len(), 1);
    }

    #[test]
    fn external_ips_are_served_like_the_cluster_ip() {
        let p = ServicePort { external_ips: vec!["203.0.113.10".parse().unwrap()], ..port(&["10.244.1.5"], None, None) };
        let f = fragment(&cfg(), &key("web"), &p);
        let e = |map: &str, k: &str| f.elements.get(&(map.to_string(), k.to_string())).cloned();
        assert_eq!(e("service-ips-v4", "203.0.113.10 . tcp . 80").as_deref(), Some("goto lb-v4-1"));
        assert_eq!(e("service-endpoints-v4", "203.0.113.10 . tcp . 80 . 0").as_deref(), Some("10.244.1.5 . 8080"));
        assert_eq!(f.elements.len(), 4, "two addresses, each a VIP and an endpoint element");
        let with_chain = fragment(&cfg(), &key("web"), &ServicePort { affinity: Some(60), ..p.clone() });
        assert_eq!(with_chain.elements[&("service-ips-v4".into(), "203.0.113.10 . tcp . 80".into())], "goto svc4-default/web/tcp/http");
        let none = fragment(&cfg(), &key("web"), &ServicePort { endpoints: vec![], ..p });
        assert_eq!(none.elements[&("no-endpoint-services-v4".into(), "203.0.113.10 . tcp . 80".into())], "goto reject-chain");
    }

    #[test]
    fn no_endpoints_rejects() {
        let f = fragment(&cfg(), &key("web"), &port(&[], Some(30080), None));
        assert!(f.chains.is_empty());
        assert!(f.hairpin.is_empty());
        assert_eq!(f.elements.len(), 2);
        assert!(f.elements.values().all(|v| v == "goto reject-chain"));
    }

    #[test]
    fn update_touches_only_what_changed() {
        let c = cfg();
        let none = SharedChanges::default();
        let old = fragment(&c, &key("web"), &port(&["10.244.1.5", "10.244.1.6"], None, None));
        let new = fragment(&c, &key("web"), &port(&["10.244.1.5"], None, None));
        let p = update_program(&c, &[(Some(&old), Some(&new))], &none);
        assert_eq!(
            p,
            "delete element inet kapp service-endpoints-v4 { 10.96.0.10 . tcp . 80 . 1 }\n\
             delete element inet kapp service-ips-v4 { 10.96.0.10 . tcp . 80 }\n\
             add element inet kapp service-ips-v4 { 10.96.0.10 . tcp . 80 : goto lb-v4-1 }\n"
        );
        // Losing the last endpoint: the VIP moves to the reject map.
        let empty = fragment(&c, &key("web"), &port(&[], None, None));
        let shared = SharedChanges { add: vec![], delete: vec![("hairpin-v4".into(), "10.244.1.5 . 10.244.1.5".into())] };
        let p = update_program(&c, &[(Some(&new), Some(&empty))], &shared);
        assert_eq!(
            p,
            "delete element inet kapp hairpin-v4 { 10.244.1.5 . 10.244.1.5 }\n\
             delete element inet kapp service-endpoints-v4 { 10.96.0.10 . tcp . 80 . 0 }\n\
             delete element inet kapp service-ips-v4 { 10.96.0.10 . tcp . 80 }\n\
             add element inet kapp no-endpoint-services-v4 { 10.96.0.10 . tcp . 80 : goto reject-chain }\n"
        );
        assert_eq!(update_program(&c, &[(Some(&new), Some(&new))], &none), "");
        // A port with its own chain: rules rewritten in place; the chain goes with it.
        let a2 = fragment(&c, &key("web"), &port(&["10.244.1.5", "10.244.1.6"], None, Some(60)));
        let a1 = fragment(&c, &key("web"), &port(&["10.244.1.5"], None, Some(60)));
        let p = update_program(&c, &[(Some(&a2), Some(&a1))], &none);
        assert!(p.starts_with("flush chain inet kapp svc4-default/web/tcp/http\nadd rule inet kapp svc4-default/web/tcp/http ip saddr != @cluster-cidrs-v4"), "{p}");
        assert!(p.ends_with("delete set inet kapp aff4-default/web/tcp/http/10.244.1.6/8080/60\n"), "{p}");
        let p = update_program(&c, &[(Some(&a1), Some(&new))], &none);
        assert!(p.ends_with("flush chain inet kapp svc4-default/web/tcp/http\ndelete chain inet kapp svc4-default/web/tcp/http\ndelete set inet kapp aff4-default/web/tcp/http/10.244.1.5/8080/60\n"), "{p}");
    }

    #[test]
    fn full_program_declares_maps_then_chains_then_elements() {
        let c = cfg();
        let f = fragment(&c, &key("web"), &port(&["10.244.1.5"], Some(30080), None));
        let p = full_program(&c, [&f]);
        assert!(p.starts_with("add table inet kapp\ndelete table inet kapp\ntable inet kapp {\n  map service-ips-v4 {\n    type ipv4_addr . inet_proto . inet_service : verdict\n  }\n"), "{p}");
        assert!(p.contains("  map service-endpoints-v4 {\n    typeof ip daddr . meta l4proto . th dport . numgen random mod 2 : ip daddr . th dport\n  }\n"), "{p}");
        assert!(p.contains("  set hairpin-v6 {\n    type ipv6_addr . ipv6_addr\n  }\n"), "{p}");
        assert!(p.contains("    type nat hook prerouting priority -100; policy accept;\n    jump services\n"));
        assert!(p.contains("    type nat hook postrouting priority 100; policy accept;\n    ip saddr . ip daddr @hairpin-v4 jump mark-for-masquerade\n    ip6 saddr . ip6 daddr @hairpin-v6 jump mark-for-masquerade\n    jump masquerading\n"), "{p}");
        assert!(p.contains("add element inet kapp service-ips-v4 { 10.96.0.10 . tcp . 80 : goto lb-v4-1 }\n"));
        assert!(p.contains("add element inet kapp hairpin-v4 { 10.244.1.5 . 10.244.1.5 }\n"));
        assert!(p.contains("add element inet kapp nodeport-endpoints-v4 { tcp . 30080 . 0 : 10.244.1.5 . 8080 }\n"));
        assert!(p.find("chain lb-v4-1 {").unwrap() < p.find("add element").unwrap());
        assert!(p.contains("  set cluster-cidrs-v4 {\n    type ipv4_addr; flags interval; elements = { 10.244.0.0/16 };\n  }\n"), "{p}");
        assert!(p.contains("  set cluster-cidrs-v6 {\n    type ipv6_addr; flags interval; elements = { fd00:244::/64 };\n  }\n"), "{p}");
    }

    #[test]
    fn ipv6_endpoints() {
        let k = PortKey { family: Family::V6, ..key("v6") };
        let p = ServicePort { cluster_ip: "fd00::a".parse().unwrap(), port: 80, node_port: None, endpoints: vec![Endpoint { ip: "fd00::5".parse().unwrap(), port: 8080 }], affinity: None, external_ips: vec![] };
        let f = fragment(&cfg(), &k, &p);
        assert_eq!(f.elements[&("service-endpoints-v6".into(), "fd00::a . tcp . 80 . 0".into())], "fd00::5 . 8080");
        assert_eq!(f.elements[&("service-ips-v6".into(), "fd00::a . tcp . 80".into())], "goto lb-v6-1");
        let lb1 = fixed_chains(&cfg()).into_iter().find(|c| c.0 == "lb-v6-1").unwrap().2;
        assert_eq!(lb1, ["ip6 saddr != @cluster-cidrs-v6 jump mark-for-masquerade", "dnat ip6 to ip6 daddr . meta l4proto . th dport . numgen random mod 1 map @service-endpoints-v6"]);
        // With their own chain, IPv6 endpoints are bracketed and named without colons.
        let f = fragment(&cfg(), &k, &ServicePort { affinity: Some(10), ..p });
        assert_eq!(f.chains["svc6-default/v6/tcp/http"].last().unwrap(), "meta l4proto tcp update @aff6-default/v6/tcp/http/fd00__5/8080/10 { ip6 saddr } dnat ip6 to [fd00::5]:8080");
    }
}
