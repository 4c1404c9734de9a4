//! Routes to the other nodes' pods (host-gw, as flannel's backend of that name): for every
//! other Node with a `spec.podCIDR` and an IPv4 `InternalIP`, a route `<podCIDR> via <IP>`.
//! The nodes share a link, so each is its own next hop; nothing is encapsulated.
//!
//! Our routes carry their own protocol number ([`ROUTE_PROTO`]): they are told from every
//! other route by it, so a restarted kubelet finds and repairs what it programmed before,
//! and never touches a route it did not make.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Node;

use super::ipam::Cidr;
use super::{ip, NetError};

/// The routing protocol number marking kapp's pod routes (`ip route … proto 75`).
pub const ROUTE_PROTO: &str = "75";

/// Pod CIDR → next hop: the routes this node should have. `own` is this node's pod CIDR;
/// another node claiming an overlapping one is skipped (and logged), as is a node without
/// a pod CIDR or an IPv4 InternalIP. Pure.
pub fn desired<'a>(nodes: impl IntoIterator<Item = &'a Node>, me: &str, own: Cidr) -> BTreeMap<Cidr, Ipv4Addr> {
    let mut out = BTreeMap::new();
    for n in nodes {
        let name = n.metadata.name.as_deref().unwrap_or("");
        if name == me {
            continue;
        }
        let Some(cidr) = n.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()).and_then(|c| Cidr::parse(c).ok()) else { continue };
        let internal = n.status.as_ref().and_then(|s| s.addresses.as_ref()).into_iter().flatten().filter(|a| a.type_ == "InternalIP");
        let Some(via) = internal.filter_map(|a| a.address.parse::<Ipv4Addr>().ok()).next() else { continue };
        if cidr.overlaps(&own) {
            tracing::warn!(node = name, %cidr, %own, "node's pod CIDR overlaps this node's: no route");
            continue;
        }
        out.insert(cidr, via);
    }
    out
}

/// The routes of [`ROUTE_PROTO`] in `ip -4 route show` output. Pure.
pub fn parse_programmed(text: &str) -> BTreeMap<Cidr, Ipv4Addr> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let via = words.iter().position(|w| *w == "via").and_then(|i| words.get(i + 1)).and_then(|v| v.parse().ok());
        if let (Some(dst), Some(via)) = (words.first().and_then(|d| Cidr::parse(d).ok()), via) {
            out.insert(dst, via);
        }
    }
    out
}

/// The pod routes of one network namespace (the kubelet's own, or a named one).
pub struct PodRoutes {
    netns: Option<String>,
}

impl PodRoutes {
    pub fn new(netns: Option<String>) -> PodRoutes {
        PodRoutes { netns }
    }

    /// What is programmed now (read from the kernel, so changes by anyone else show).
    pub async fn programmed(&self) -> Result<BTreeMap<Cidr, Ipv4Addr>, NetError> {
        Ok(parse_programmed(&ip(self.netns.as_deref(), &["-4", "route", "show", "proto", ROUTE_PROTO]).await?))
    }

    /// Make the routes of [`ROUTE_PROTO`] exactly `want`: replace what is missing or
    /// different, delete what is no longer wanted. Every route is tried; the first error is
    /// returned (the next sync tries again).
    pub async fn sync(&self, want: &BTreeMap<Cidr, Ipv4Addr>) -> Result<(), NetError> {
        let have = self.programmed().await?;
        let mut first_err = None;
        for (cidr, via) in want {
            if have.get(cidr) != Some(via) {
                let r = ip(self.netns.as_deref(), &["route", "replace", &cidr.to_string(), "via", &via.to_string(), "proto", ROUTE_PROTO]).await;
                match r {
                    Ok(_) => tracing::info!(%cidr, %via, "pod route"),
                    Err(e) => first_err = first_err.or(Some(e)),
                }
            }
        }
        for cidr in have.keys().filter(|c| !want.contains_key(c)) {
            match ip(self.netns.as_deref(), &["route", "del", &cidr.to_string(), "proto", ROUTE_PROTO]).await {
                Ok(_) => tracing::info!(%cidr, "pod route removed"),
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>) -> Node {
        let addresses: Vec<_> = ip.into_iter().map(|a| json!({"type": "InternalIP", "address": a})).chain([json!({"type": "Hostname", "address": name})]).collect();
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"podCIDR": cidr}, "status": {"addresses": addresses}})).unwrap()
    }

    #[test]
    fn a_route_per_other_node_with_a_cidr_and_an_address() {
        let own = Cidr::parse("10.244.0.0/24").unwrap();
        let nodes = [
            node("me", Some("10.244.0.0/24"), Some("192.0.2.1")),
            node("b", Some("10.244.1.0/24"), Some("192.0.2.2")),
            node("c", Some("10.244.2.0/24"), None),
            node("d", None, Some("192.0.2.4")),
            node("e", Some("10.244.0.128/25"), Some("192.0.2.5")),
            node("f", Some("10.244.3.0/24"), Some("2001:db8::6")),
        ];
        let want = desired(&nodes, "me", own);
        assert_eq!(want.into_iter().collect::<Vec<_>>(), [(Cidr::parse("10.244.1.0/24").unwrap(), Ipv4Addr::new(192, 0, 2, 2))]);
    }

    #[test]
    fn programmed_routes_parse_from_ip_output() {
        let text = "10.244.1.0/24 via 192.0.2.2 dev eth0 \n10.244.2.0/24 via 192.0.2.3 dev eth0 onlink \ngarbage\n";
        let got = parse_programmed(text);
        assert_eq!(got.len(), 2);
        assert_eq!(got[&Cidr::parse("10.244.2.0/24").unwrap()], Ipv4Addr::new(192, 0, 2, 3));
    }
}
