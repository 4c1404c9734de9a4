//! What `kapp up` changes on the host, and `kapp down` puts back: IPv4 forwarding (and bridge
//! netfilter, which Service traffic between pods on one bridge needs), the pod bridge (which
//! also carries the cluster DNS address), the pod namespaces the kubelet made, and the
//! proxy's nftables table. Nothing else: no routes, no other tables.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::plan::HostFacts;
use crate::{UpConfig, UpError};

const FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const BRIDGE_NF: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";
const TIMEOUT: Duration = Duration::from_secs(10);

/// Run a host command, bounded; its stdout.
pub(crate) async fn run(program: &str, args: &[&str]) -> Result<String, UpError> {
    let shown = format!("{program} {}", args.join(" "));
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).kill_on_drop(true).stdin(std::process::Stdio::null());
    let out = match tokio::time::timeout(TIMEOUT, cmd.output()).await {
        Err(_) => return Err(UpError::Command { command: shown, reason: "timed out".into() }),
        Ok(Err(e)) => return Err(UpError::Command { command: shown, reason: e.to_string() }),
        Ok(Ok(o)) => o,
    };
    if !out.status.success() {
        return Err(UpError::Command { command: shown, reason: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn read_sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn write_sysctl(path: &str, value: &str) -> Result<(), UpError> {
    std::fs::write(path, value).map_err(|e| UpError::Io { path: PathBuf::from(path), reason: e.to_string() })
}

/// The nameservers of a resolv.conf. Pure.
pub fn nameservers(resolv_conf: &str) -> Vec<String> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(str::trim)
        .filter(|a| a.parse::<Ipv4Addr>().is_ok())
        .map(str::to_string)
        .collect()
}

/// The source address of `ip route get`'s answer. Pure.
pub fn route_source(ip_route_get: &str) -> Option<Ipv4Addr> {
    let mut words = ip_route_get.split_whitespace();
    while let Some(w) = words.next() {
        if w == "src" {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// The first address of a CIDR (the pod bridge's, the pods' gateway). Pure.
pub fn gateway(cidr: &str) -> Option<Ipv4Addr> {
    let (net, _) = cidr.split_once('/')?;
    let n: Ipv4Addr = net.parse().ok()?;
    Some(Ipv4Addr::from(u32::from(n) + 1))
}

/// Make the host ready for the node; remember what was there before (once: a second `up`
/// keeps the first record, so `down` restores the state before kapp).
pub async fn prepare(cfg: &UpConfig, record: &Path) -> Result<HostFacts, UpError> {
    if !record.exists() {
        let before = json!({ "ip_forward": read_sysctl(FORWARD), "bridge_nf_call_iptables": read_sysctl(BRIDGE_NF) });
        std::fs::write(record, before.to_string()).map_err(|e| UpError::Io { path: record.to_path_buf(), reason: e.to_string() })?;
    }
    run("ip", &["link", "set", "lo", "up"]).await?;
    write_sysctl(FORWARD, "1")?;
    if Path::new(BRIDGE_NF).exists() {
        write_sysctl(BRIDGE_NF, "1")?;
    }
    // The cluster DNS address lives on the pod bridge (made here; the kubelet adds the
    // pods' gateway to it): pods reach it through their gateway, `kapp dns` binds it, and it
    // goes when the bridge does.
    if run("ip", &["link", "show", "dev", &cfg.bridge]).await.is_err() {
        run("ip", &["link", "add", &cfg.bridge, "type", "bridge"]).await?;
    }
    let addr = format!("{}/32", cfg.dns_ip);
    if !run("ip", &["-4", "addr", "show", "dev", &cfg.bridge]).await?.contains(&format!("inet {addr} ")) {
        run("ip", &["addr", "add", &addr, "dev", &cfg.bridge]).await?;
    }
    run("ip", &["link", "set", &cfg.bridge, "up"]).await?;
    // The node's address: the one the host would reach the world from; on a host without a
    // route (a bare network namespace), the pod bridge's own address.
    let node_ip = match run("ip", &["-4", "route", "get", "1.1.1.1"]).await {
        Ok(out) => route_source(&out),
        Err(_) => None,
    }
    .or_else(|| gateway(&cfg.pod_cidr))
    .ok_or_else(|| UpError::Config(format!("--pod-cidr {:?} is not a network", cfg.pod_cidr)))?;
    let upstream_dns = nameservers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    Ok(HostFacts { node_ip, upstream_dns })
}

/// Undo [`prepare`] and remove what the node's services left (pod namespaces, the bridge,
/// the nftables table). Idempotent.
pub async fn teardown(cfg: &UpConfig, record: &Path) -> Result<Vec<String>, UpError> {
    let mut done = Vec::new();
    if run("nft", &["list", "table", "inet", &cfg.table]).await.is_ok() {
        run("nft", &["delete", "table", "inet", &cfg.table]).await?;
        done.push(format!("nftables table inet {}", cfg.table));
    }
    let netns: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).filter(|n| is_pod_netns(&cfg.netns_prefix, n)).collect())
        .unwrap_or_default();
    for ns in &netns {
        run("ip", &["netns", "del", ns]).await?;
    }
    if !netns.is_empty() {
        done.push(format!("{} pod network namespaces", netns.len()));
    }
    if run("ip", &["link", "show", "dev", &cfg.bridge]).await.is_ok() {
        run("ip", &["link", "del", &cfg.bridge]).await?;
        done.push(format!("bridge {}", cfg.bridge));
    }
    if let Ok(text) = std::fs::read_to_string(record) {
        let before: Value = serde_json::from_str(&text).map_err(|e| UpError::Io { path: record.to_path_buf(), reason: e.to_string() })?;
        for (key, path) in [("ip_forward", FORWARD), ("bridge_nf_call_iptables", BRIDGE_NF)] {
            if let Some(v) = before[key].as_str() {
                if read_sysctl(path).as_deref() != Some(v) {
                    write_sysctl(path, v)?;
                    done.push(format!("{path} back to {v}"));
                }
            }
        }
        std::fs::remove_file(record).map_err(|e| UpError::Io { path: record.to_path_buf(), reason: e.to_string() })?;
    }
    Ok(done)
}

/// A pod namespace of the kubelet: the prefix and 12 hex digits. Pure.
pub fn is_pod_netns(prefix: &str, name: &str) -> bool {
    name.strip_prefix(prefix).is_some_and(|rest| rest.len() == 12 && rest.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_facts_parse() {
        assert_eq!(nameservers("# x\nnameserver 10.0.0.2\nnameserver fe80::1\nsearch lan\nnameserver 1.1.1.1 \n"), ["10.0.0.2", "1.1.1.1"]);
        assert_eq!(route_source("1.1.1.1 via 10.0.2.2 dev eth0 src 10.0.2.15 uid 0 \n    cache \n"), Some(Ipv4Addr::new(10, 0, 2, 15)));
        assert_eq!(route_source("RTNETLINK answers: Network is unreachable"), None);
        assert_eq!(gateway("10.244.0.0/24"), Some(Ipv4Addr::new(10, 244, 0, 1)));
        assert!(is_pod_netns("kapp-", "kapp-0123456789ab") && !is_pod_netns("kapp-", "kapp-dns") && !is_pod_netns("kapp-", "kapp-0123456789abc"));
    }
}
