//! The desired model → nft programs (nft's text syntax, fed to `nft -f -`). Pure.
//!
//! One table (`inet <table>`) holds everything:
//!
//! - verdict maps per IP family: `service-ips-v4` (VIP . proto . port → `goto svc…`),
//!   `service-nodeports-v4` (proto . nodePort → `goto ext…`), and the same two for service
//!   ports without endpoints (`no-endpoint-…` → `goto reject-chain`), so a lookup is O(1)
//!   at any number of Services;
//! - fixed chains: the NAT hooks jump to `services` (one vmap lookup per family and
//!   kind); filter hooks (priority -110, before DNAT) jump to `endpoints-check`, which
//!   rejects new connections to ports without endpoints (reject is not allowed in NAT
//!   chains); `masquerading` in postrouting SNATs what `mark-for-masquerade` marked;
//! - per service port one chain `svc…`: mark traffic from outside the pod network and from
//!   its own endpoints (hairpin), then DNAT to an endpoint (ClientIP affinity first, then
//!   `numgen random mod N-i 0` as plain matches — no per-service anonymous map, which
//!   costs the kernel ~1 ms each); per NodePort a chain `ext…` that marks and jumps to
//!   `svc…`. No chain per endpoint: nft reads every chain of the table before each
//!   transaction, so the number of chains is what a small change costs at scale.
//!
//! A service port renders to a [`Fragment`] on its own, so a change is computed and
//! written per service port; a full program is all fragments in one table.

use std::collections::BTreeMap;
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

/// Every map of the table.
pub fn maps() -> Vec<(String, Family, bool)> {
    let mut v = vec![];
    for f in [Family::V4, Family::V6] {
        v.push((map_services(f), f, true));
        v.push((map_nodeports(f), f, false));
        v.push((map_no_endpoints(f), f, true));
        v.push((map_no_endpoint_nodeports(f), f, false));
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
    let vip_key = format!("{} . {proto} . {}", p.cluster_ip, p.port);
    if p.endpoints.is_empty() {
        f.elements.insert((map_no_endpoints(k.family), vip_key), "goto reject-chain".into());
        if let Some(np) = p.node_port {
            f.elements.insert((map_no_endpoint_nodeports(k.family), format!("{proto} . {np}")), "goto reject-chain".into());
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
    // Endpoints are inlined in the service chain (no chain per endpoint): nft fetches
    // every chain of the table before each transaction, so the chain count is what a
    // one-service change costs at scale.
    let aff: Vec<Option<String>> = p.endpoints.iter().map(|e| p.affinity.map(|t| format!("aff{}/{t}", ep_suffix(k, &e.ip, e.port)))).collect();
    // Hairpin: a packet from an endpoint of this port is masqueraded, so a pod that
    // reaches itself through its Service gets the reply back through the node.
    for e in &p.endpoints {
        rules.push(format!("{ipf} saddr {} jump mark-for-masquerade", e.ip));
    }
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
    let n = p.endpoints.len();
    for i in 0..n {
        if i + 1 < n {
            // Each remaining endpoint with equal chance: 1/(n-i) of what is left.
            rules.push(format!("numgen random mod {} 0 {}", n - i, to(i)));
        } else {
            rules.push(to(i));
        }
    }
    f.chains.insert(svc.clone(), rules);
    f.elements.insert((map_services(k.family), vip_key), format!("goto {svc}"));
    if let Some(np) = p.node_port {
        let ext = ext_chain(k);
        f.chains.insert(ext.clone(), vec!["jump mark-for-masquerade".into(), format!("goto {svc}")]);
        f.elements.insert((map_nodeports(k.family), format!("{proto} . {np}")), format!("goto {ext}"));
    }
    f
}

/// The chains every table has, with their rules.
pub fn fixed_chains(cfg: &RenderConfig) -> Vec<(&'static str, Option<String>, Vec<String>)> {
    let m = cfg.masquerade_bit;
    let mut services = vec![];
    let mut check = vec![];
    for f in [Family::V4, Family::V6] {
        let (_, ipf) = fam(f);
        let lo = if f == Family::V4 { "127.0.0.0/8" } else { "::1" };
        services.push(format!("{ipf} daddr . meta l4proto . th dport vmap @{}", map_services(f)));
        services.push(format!("fib daddr type local {ipf} daddr != {lo} meta l4proto . th dport vmap @{}", map_nodeports(f)));
        check.push(format!("{ipf} daddr . meta l4proto . th dport vmap @{}", map_no_endpoints(f)));
        check.push(format!("fib daddr type local {ipf} daddr != {lo} meta l4proto . th dport vmap @{}", map_no_endpoint_nodeports(f)));
    }
    let hook = |kind: &str, hook: &str, prio: i32| Some(format!("type {kind} hook {hook} priority {prio}; policy accept;"));
    vec![
        ("reject-chain", None, vec!["reject".into()]),
        ("mark-for-masquerade", None, vec![format!("meta mark set meta mark | {m:#x}")]),
        ("masquerading", None, vec![format!("meta mark & {m:#x} == 0 return"), format!("meta mark set meta mark ^ {m:#x}"), "masquerade fully-random".into()]),
        ("services", None, services),
        ("endpoints-check", None, check),
        ("nat-prerouting", hook("nat", "prerouting", -100), vec!["jump services".into()]),
        ("nat-output", hook("nat", "output", -100), vec!["jump services".into()]),
        ("nat-postrouting", hook("nat", "postrouting", 100), vec!["jump masquerading".into()]),
        ("filter-forward", hook("filter", "forward", -110), vec!["ct state new jump endpoints-check".into()]),
        ("filter-input", hook("filter", "input", -110), vec!["ct state new jump endpoints-check".into()]),
        ("filter-output", hook("filter", "output", -110), vec!["ct state new jump endpoints-check".into()]),
    ]
}

/// One transaction that replaces the whole table (creating it if absent).
pub fn full_program<'a>(cfg: &RenderConfig, frags: impl IntoIterator<Item = &'a Fragment>) -> String {
    let t = &cfg.table;
    let mut out = String::with_capacity(1 << 16);
    let _ = writeln!(out, "add table inet {t}\ndelete table inet {t}\ntable inet {t} {{");
    for (name, f, with_ip) in maps() {
        let ip = if f == Family::V4 { "ipv4_addr . " } else { "ipv6_addr . " };
        let _ = writeln!(out, "  map {name} {{\n    type {}inet_proto . inet_service : verdict\n  }}", if with_ip { ip } else { "" });
    }
    for f in [Family::V4, Family::V6] {
        let cidrs: Vec<String> = cfg.cluster_cidrs.iter().filter(|(ip, _)| Family::of(ip) == f).map(|(ip, l)| format!("{ip}/{l}")).collect();
        let ty = if f == Family::V4 { "ipv4_addr" } else { "ipv6_addr" };
        let elements = if cidrs.is_empty() { String::new() } else { format!(" elements = {{ {} }};", cidrs.join(", ")) };
        let _ = writeln!(out, "  set {} {{\n    type {ty}; flags interval;{elements}\n  }}", cidr_set(f));
    }
    let mut elements: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut chains = String::new();
    for fr in frags {
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
    for (map, elems) in elements {
        let _ = writeln!(out, "add element inet {t} {map} {{ {} }}", elems.join(", "));
    }
    out
}

/// One transaction that turns the service ports `changes` (old fragment, new fragment)
/// from old into new, touching nothing else. Empty when nothing changes.
pub fn update_program(cfg: &RenderConfig, changes: &[(Option<&Fragment>, Option<&Fragment>)]) -> String {
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
        }
    }
    fn cfg() -> RenderConfig {
        RenderConfig { cluster_cidrs: vec![parse_cidr("10.244.0.0/16").unwrap(), parse_cidr("fd00:244::/64").unwrap()], ..Default::default() }
    }

    #[test]
    fn service_with_two_endpoints_affinity_and_node_port() {
        let f = fragment(&cfg(), &key("web"), &port(&["10.244.1.5", "10.244.1.6"], Some(30080), Some(60)));
        let svc = &f.chains["svc4-default/web/tcp/http"];
        let aff5 = "aff4-default/web/tcp/http/10.244.1.5/8080/60";
        let aff6 = "aff4-default/web/tcp/http/10.244.1.6/8080/60";
        assert_eq!(
            svc,
            &[
                "ip saddr != @cluster-cidrs-v4 jump mark-for-masquerade".to_string(),
                "ip saddr 10.244.1.5 jump mark-for-masquerade".into(),
                "ip saddr 10.244.1.6 jump mark-for-masquerade".into(),
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
    }

    #[test]
    fn no_endpoints_rejects() {
        let f = fragment(&cfg(), &key("web"), &port(&[], Some(30080), None));
        assert!(f.chains.is_empty());
        assert_eq!(f.elements.len(), 2);
        assert!(f.elements.values().all(|v| v == "goto reject-chain"));
    }

    #[test]
    fn update_touches_only_what_changed_in_a_safe_order() {
        let c = cfg();
        let old = fragment(&c, &key("web"), &port(&["10.244.1.5", "10.244.1.6"], None, None));
        let new = fragment(&c, &key("web"), &port(&["10.244.1.5"], None, None));
        let p = update_program(&c, &[(Some(&old), Some(&new))]);
        assert_eq!(
            p,
            "flush chain inet kapp svc4-default/web/tcp/http\n\
             add rule inet kapp svc4-default/web/tcp/http ip saddr != @cluster-cidrs-v4 jump mark-for-masquerade\n\
             add rule inet kapp svc4-default/web/tcp/http ip saddr 10.244.1.5 jump mark-for-masquerade\n\
             add rule inet kapp svc4-default/web/tcp/http meta l4proto tcp dnat ip to 10.244.1.5:8080\n"
        );
        // Losing the last endpoint: the VIP moves to the reject map, chains go.
        let none = fragment(&c, &key("web"), &port(&[], None, None));
        let p = update_program(&c, &[(Some(&new), Some(&none))]);
        assert!(p.starts_with("delete element inet kapp service-ips-v4 { 10.96.0.10 . tcp . 80 }\nadd element inet kapp no-endpoint-services-v4 { 10.96.0.10 . tcp . 80 : goto reject-chain }\nflush chain"), "{p}");
        assert!(p.ends_with("flush chain inet kapp svc4-default/web/tcp/http\ndelete chain inet kapp svc4-default/web/tcp/http\n"), "{p}");
        assert_eq!(update_program(&c, &[(Some(&new), Some(&new))]), "");
    }

    #[test]
    fn full_program_declares_maps_then_chains_then_elements() {
        let c = cfg();
        let f = fragment(&c, &key("web"), &port(&["10.244.1.5"], Some(30080), None));
        let p = full_program(&c, [&f]);
        assert!(p.starts_with("add table inet kapp\ndelete table inet kapp\ntable inet kapp {\n  map service-ips-v4 {"));
        assert!(p.contains("    type nat hook prerouting priority -100; policy accept;\n    jump services\n"));
        assert!(p.contains("add element inet kapp service-ips-v4 { 10.96.0.10 . tcp . 80 : goto svc4-default/web/tcp/http }\n"));
        assert!(p.find("chain svc4-default").unwrap() < p.find("add element").unwrap());
        assert!(p.contains("  set cluster-cidrs-v4 {\n    type ipv4_addr; flags interval; elements = { 10.244.0.0/16 };\n  }\n"), "{p}");
        assert!(p.contains("  set cluster-cidrs-v6 {\n    type ipv6_addr; flags interval; elements = { fd00:244::/64 };\n  }\n"), "{p}");
    }

    #[test]
    fn ipv6_endpoints_are_bracketed_and_named_without_colons() {
        let k = PortKey { family: Family::V6, ..key("v6") };
        let p = ServicePort { cluster_ip: "fd00::a".parse().unwrap(), port: 80, node_port: None, endpoints: vec![Endpoint { ip: "fd00::5".parse().unwrap(), port: 8080 }], affinity: None };
        let f = fragment(&cfg(), &k, &p);
        assert_eq!(f.chains["svc6-default/v6/tcp/http"].last().unwrap(), "meta l4proto tcp dnat ip6 to [fd00::5]:8080");
        assert_eq!(f.chains["svc6-default/v6/tcp/http"][0], "ip6 saddr != @cluster-cidrs-v6 jump mark-for-masquerade");
    }
}
