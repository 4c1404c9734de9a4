//! Pod networks: a named network namespace per pod (`/run/netns/<name>`), a veth pair whose
//! node end joins a bridge carrying the pod CIDR's first address (the pods' default route),
//! an address from [`ipam`], and the pod's `/etc/hosts` and `/etc/resolv.conf`.
//!
//! The bridge and the node ends of the veths live in the kubelet's own network namespace, or
//! in a named "node" namespace when configured (tests run whole nodes inside namespaces they
//! create). Everything is done with `ip` (iproute2), each command bounded by a timeout.

pub mod ipam;
pub mod routes;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipam::Cidr;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid CIDR {0:?}")]
    BadCidr(String),
    #[error("no free address in {0}")]
    Exhausted(String),
    #[error("{}: {reason}", path.display())]
    Io { path: PathBuf, reason: String },
    #[error("`ip {args}`: {reason}")]
    Command { args: String, reason: String },
    #[error("connecting to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
}

const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// The node side of pod networking.
#[derive(Clone, Debug)]
pub struct NodeNetwork {
    pub bridge: String,
    pub cidr: Cidr,
    /// Named network namespace holding the bridge (None: the kubelet's own).
    pub node_netns: Option<String>,
    /// Prefix of pod namespace names (unique per kubelet on one host).
    pub prefix: String,
}

/// What a pod got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNetwork {
    pub netns: String,
    pub netns_path: PathBuf,
    pub ip: Ipv4Addr,
}

/// Run `ip` with `args`, in the node namespace if `node`.
async fn ip(netns: Option<&str>, args: &[&str]) -> Result<String, NetError> {
    let mut full: Vec<&str> = Vec::new();
    if let Some(ns) = netns {
        full.extend(["-n", ns]);
    }
    full.extend(args);
    let shown = full.join(" ");
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(&full).kill_on_drop(true).stdin(std::process::Stdio::null());
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let child = crate::fork::spawn(&mut cmd).map_err(|e| NetError::Command { args: shown.clone(), reason: e.to_string() })?;
    let out = match tokio::time::timeout(IP_TIMEOUT, child.wait_with_output()).await {
        Err(_) => return Err(NetError::Command { args: shown, reason: "timed out".into() }),
        Ok(Err(e)) => return Err(NetError::Command { args: shown, reason: e.to_string() }),
        Ok(Ok(o)) => o,
    };
    if !out.status.success() {
        return Err(NetError::Command { args: shown, reason: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Names derived from a pod uid: its namespace (`<prefix><12 hex>`) and the node end of its
/// veth (`v<12 hex>`, under the 15-character interface name limit). Pure.
pub fn names(prefix: &str, uid: &str) -> (String, String) {
    let h = crate::image::Digest::of(uid.as_bytes());
    let short = &h.hex()[..12];
    (format!("{prefix}{short}"), format!("v{short}"))
}

impl NodeNetwork {
    fn node(&self) -> Option<&str> {
        self.node_netns.as_deref()
    }

    /// Create the bridge with the gateway address (idempotent).
    pub async fn setup(&self) -> Result<(), NetError> {
        if ip(self.node(), &["link", "show", "dev", &self.bridge]).await.is_err() {
            ip(self.node(), &["link", "add", &self.bridge, "type", "bridge"]).await?;
        }
        let gw = format!("{}/{}", self.cidr.gateway(), self.cidr.prefix);
        let addrs = ip(self.node(), &["-4", "addr", "show", "dev", &self.bridge]).await?;
        if !addrs.contains(&format!("inet {gw} ")) {
            ip(self.node(), &["addr", "add", &gw, "dev", &self.bridge]).await?;
        }
        ip(self.node(), &["link", "set", &self.bridge, "up"]).await?;
        Ok(())
    }

    /// Give pod `uid` its namespace, veth and address `addr` (idempotent: an existing
    /// namespace is reused, its interfaces rebuilt).
    pub async fn add_pod(&self, uid: &str, addr: Ipv4Addr) -> Result<PodNetwork, NetError> {
        let (ns, veth) = names(&self.prefix, uid);
        let netns_path = Path::new("/run/netns").join(&ns);
        if !netns_path.exists() {
            ip(None, &["netns", "add", &ns]).await?;
        }
        let done = ip(Some(&ns), &["-4", "addr", "show", "dev", "eth0"]).await.is_ok_and(|s| s.contains(&format!("inet {addr}/")));
        if !done {
            let _ = ip(self.node(), &["link", "del", &veth]).await;
            let _ = ip(Some(&ns), &["link", "del", "eth0"]).await;
            ip(self.node(), &["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns]).await?;
            ip(self.node(), &["link", "set", &veth, "master", &self.bridge]).await?;
            ip(self.node(), &["link", "set", &veth, "up"]).await?;
            ip(Some(&ns), &["link", "set", "lo", "up"]).await?;
            ip(Some(&ns), &["addr", "add", &format!("{addr}/{}", self.cidr.prefix), "dev", "eth0"]).await?;
            ip(Some(&ns), &["link", "set", "eth0", "up"]).await?;
            ip(Some(&ns), &["route", "replace", "default", "via", &self.cidr.gateway().to_string(), "dev", "eth0"]).await?;
        }
        // Hairpin (also on veths made before it was set): a pod reaching a Service whose
        // endpoint is itself gets its packet back out of the port it came in through.
        ip(self.node(), &["link", "set", &veth, "type", "bridge_slave", "hairpin", "on"]).await?;
        Ok(PodNetwork { netns: ns, netns_path, ip: addr })
    }

    /// A TCP connection to `addr` from the node's network namespace (where the bridge is, so
    /// pod IPs are reachable), bounded by `timeout`.
    pub async fn connect(&self, addr: SocketAddr, timeout: Duration) -> Result<tokio::net::TcpStream, NetError> {
        let fail = |reason: String| NetError::Connect { addr, reason };
        let Some(ns) = &self.node_netns else {
            return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
                Ok(r) => r.map_err(|e| fail(e.to_string())),
                Err(_) => Err(fail(format!("timed out after {timeout:?}"))),
            };
        };
        // setns changes only the calling thread: a short-lived thread of its own connects
        // there (a socket stays in the namespace it was made in).
        let path = Path::new("/run/netns").join(ns);
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("netns-connect".into())
            .stack_size(128 << 10)
            .spawn(move || {
                let connected = std::fs::File::open(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))
                    .and_then(|f| nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns {}: {e}", path.display())))
                    .and_then(|()| std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string()));
                let _ = tx.send(connected);
            })
            .map_err(|e| fail(e.to_string()))?;
        let stream = rx.await.map_err(|_| fail("the connecting thread died".into()))?.map_err(fail)?;
        stream.set_nonblocking(true).map_err(|e| fail(e.to_string()))?;
        tokio::net::TcpStream::from_std(stream).map_err(|e| fail(e.to_string()))
    }

    /// Remove pod `uid`'s namespace and veth (idempotent).
    pub async fn remove_pod(&self, uid: &str) -> Result<(), NetError> {
        let (ns, veth) = names(&self.prefix, uid);
        let _ = ip(self.node(), &["link", "del", &veth]).await;
        if Path::new("/run/netns").join(&ns).exists() {
            ip(None, &["netns", "del", &ns]).await?;
        }
        Ok(())
    }

    /// Pod namespaces of this kubelet that exist (to clean up orphans).
    pub fn pod_namespaces(&self) -> Vec<String> {
        std::fs::read_dir("/run/netns")
            .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).filter(|n| n.starts_with(&self.prefix)).collect())
            .unwrap_or_default()
    }
}

/// The pod's /etc/hosts. Pure.
pub fn hosts_file(hostname: &str, ip: Option<Ipv4Addr>) -> String {
    let mut s = String::from("# Kubernetes-managed hosts file (kapp).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(ip) = ip {
        s.push_str(&format!("{ip}\t{hostname}\n"));
    }
    s
}

/// The pod's /etc/resolv.conf (ClusterFirst). Pure.
pub fn resolv_conf(dns: &[Ipv4Addr], namespace: &str, domain: &str) -> String {
    let mut s = String::new();
    for d in dns {
        s.push_str(&format!("nameserver {d}\n"));
    }
    s.push_str(&format!("search {namespace}.svc.{domain} svc.{domain} {domain}\noptions ndots:5\n"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_interface_limits() {
        let (ns, veth) = names("kapp-", "6f1c0c9e-1111-2222-3333-444455556666");
        assert!(ns.starts_with("kapp-") && ns.len() == 17);
        assert!(veth.len() <= 15 && veth.starts_with('v'));
        assert_eq!(names("kapp-", "6f1c0c9e-1111-2222-3333-444455556666"), (ns, veth));
    }

    #[test]
    fn dns_files() {
        assert_eq!(
            resolv_conf(&[Ipv4Addr::new(10, 96, 0, 10)], "team", "cluster.local"),
            "nameserver 10.96.0.10\nsearch team.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
        );
        let h = hosts_file("web-0", Some(Ipv4Addr::new(10, 88, 0, 5)));
        assert!(h.contains("127.0.0.1\tlocalhost\n") && h.ends_with("10.88.0.5\tweb-0\n"));
    }
}
