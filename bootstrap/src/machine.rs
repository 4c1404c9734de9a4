//! The machine config: one YAML document per node (`apiVersion: kapp.dev/v1`,
//! `kind: MachineConfig`) that tells a node everything it needs to join its cluster: the
//! cluster (name, CA, the heads), the node (name, role, pod network, its certificate and key),
//! the network (static addresses or DHCP, gateway, DNS upstreams, NTP) and, on heads only,
//! the head's identities, the Secret key and the git source.
//!
//! [`MachineConfig::parse`] is strict: unknown fields are refused, and every rule names the
//! field it checks (`network.addresses[0]: "10.0.0.300/24" is not an IPv4 CIDR`). Certificates
//! must chain to the config's CA and carry the identity their use needs (the node's CN is
//! `system:node:<node.name>`; serving certificates are valid for the node's address).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use kapp_api::groups;
use kapp_api::validation::{is_dns1123_label, is_dns1123_subdomain, is_label_value, is_qualified_name};
use kapp_store_client::{CLIENT_GROUP, PEER_GROUP};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "kapp.dev/v1";
pub const KIND: &str = "MachineConfig";
/// The apiserver's port on every head.
pub const APISERVER_PORT: u16 = 6443;
/// The store's port (raft and clients) on every head.
pub const STORE_PORT: u16 = 2380;
/// The port of `kapp apilb` on a worker's loopback (the node's way to the apiservers).
pub const APILB_PORT: u16 = 7445;
/// The kubelet's port (logs endpoint) on every node.
pub const KUBELET_PORT: u16 = 10250;
/// The taint `--head-taint` puts on heads.
pub const HEAD_TAINT_KEY: &str = "node-role.kubernetes.io/control-plane";

/// A config that cannot be used: the field (a path like `network.addresses[0]`) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

fn err<T>(field: impl Into<String>, reason: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError { field: field.into(), reason: reason.into() })
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MachineConfig {
    pub api_version: String,
    pub kind: String,
    pub cluster: Cluster,
    pub node: Node,
    pub network: Network,
    /// Present exactly when `node.role` is `head`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<Head>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    /// The cluster CA certificate (PEM).
    pub ca: String,
    /// Every head, in store member order (member id = position + 1). 1, 3 or 5.
    pub heads: Vec<HeadEndpoint>,
    /// All pods' addresses (each node's `podCIDR` lies inside).
    #[serde(default = "default_cluster_cidr")]
    pub cluster_cidr: String,
    /// The cluster DNS address pods are given (served on every node).
    #[serde(default = "default_dns_address")]
    pub dns_address: String,
}

fn default_cluster_cidr() -> String {
    "10.244.0.0/16".into()
}

fn default_dns_address() -> String {
    "10.96.0.10".into()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeadEndpoint {
    pub name: String,
    pub address: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    Head,
    Worker,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Head => "head",
            Role::Worker => "worker",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Node {
    pub name: String,
    pub role: Role,
    pub pod_cidr: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
    /// CN `system:node:<name>`, group `kapp:nodes`, valid for the node's address.
    pub certificate: String,
    pub key: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Taint {
    pub key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    pub effect: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Network {
    /// The interface to configure (default: the first one with a device behind it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Static addresses, `a.b.c.d/n`; the first is the node's address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Ask a DHCP server (when no static address is given).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dhcp: bool,
    /// Upstream resolvers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// NTP servers (host names or addresses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ntp: Vec<String>,
}

/// A certificate and its private key (PEM).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Identity {
    pub certificate: String,
    pub key: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("certificate", &self.certificate).field("key", &"[elided]").finish()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Head {
    /// Store member: groups `kapp:store-peer` + `kapp:store-client`, valid for the address.
    pub store: Identity,
    /// Serving certificate (the address, 127.0.0.1) and store client identity.
    pub apiserver: Identity,
    pub scheduler: Identity,
    pub controllers: Identity,
    pub gitops: Identity,
    /// The key Secrets are sealed with at rest: 64 hex characters, the same on every head.
    pub secret_key: String,
    pub git: Git,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Git {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(default = "default_interval")]
    pub interval_seconds: u64,
    /// An HTTPS token for the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The deploy key (OpenSSH private key) for an `ssh://` repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key: Option<String>,
    /// The git host's keys, `known_hosts` lines (`[host]:port` for a port other than 22);
    /// required for `ssh://`: the host's key must be one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub known_hosts: Vec<String>,
    /// When set, only commits signed by one of these keys are applied: `authorized_keys`
    /// lines for SSH signatures (git's `gpg.format=ssh`), or ASCII-armored OpenPGP public
    /// key blocks (`gpg --armor --export`, one key per item) for GnuPG signatures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_keys: Vec<String>,
    /// The cluster's age key (`AGE-SECRET-KEY-1...`): `*.age` files and age-armored Secret
    /// values in the repository are decrypted with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decryption_key: Option<String>,
}

fn default_interval() -> u64 {
    15
}

impl std::fmt::Debug for Git {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Git").field("url", &self.url).field("branch", &self.branch).field("path", &self.path).field("token", &self.token.as_ref().map(|_| "[elided]")).field("ssh_key", &self.ssh_key.as_ref().map(|_| "[elided]")).field("decryption_key", &self.decryption_key.as_ref().map(|_| "[elided]")).finish()
    }
}

/// An IPv4 network or interface address, `a.b.c.d/n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = s.split_once('/')?;
        let prefix: u8 = p.parse().ok().filter(|p| *p <= 32)?;
        Some(Cidr { addr: a.parse().ok()?, prefix })
    }
    fn mask(&self) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0)
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }
    /// Whether `other` lies wholly inside this network.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn cidr(field: &str, s: &str) -> Result<Cidr, ConfigError> {
    Cidr::parse(s).map_or_else(|| err(field, format!("{s:?} is not an IPv4 CIDR")), Ok)
}

fn ipv4(field: &str, s: &str) -> Result<Ipv4Addr, ConfigError> {
    s.parse().map_or_else(|_| err(field, format!("{s:?} is not an IPv4 address")), Ok)
}

impl MachineConfig {
    /// Parse one YAML document and [`validate`](MachineConfig::validate) it.
    pub fn parse(yaml: &str) -> Result<MachineConfig, ConfigError> {
        let de = serde_yaml::Deserializer::from_str(yaml);
        let cfg: MachineConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { "(document)".to_string() } else { path };
            // serde_yaml's message ends with the position; keep it, it helps.
            ConfigError { field, reason: e.into_inner().to_string() }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("a machine config serialises")
    }

    /// The node's own address (the first static address), if it has one.
    pub fn node_address(&self) -> Option<Ipv4Addr> {
        self.network.addresses.first().and_then(|a| Cidr::parse(a)).map(|c| c.addr)
    }

    /// `(member id, address)` of every head.
    pub fn store_members(&self) -> Vec<(u64, Ipv4Addr)> {
        self.cluster.heads.iter().enumerate().filter_map(|(i, h)| Some((i as u64 + 1, h.address.parse().ok()?))).collect()
    }

    /// Every rule; the first broken one is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.api_version != API_VERSION {
            return err("apiVersion", format!("{:?} is not {API_VERSION:?}", self.api_version));
        }
        if self.kind != KIND {
            return err("kind", format!("{:?} is not {KIND:?}", self.kind));
        }
        let c = &self.cluster;
        if !is_dns1123_label(&c.name) {
            return err("cluster.name", format!("{:?} is not a DNS label (a-z, 0-9, '-', at most 63)", c.name));
        }
        let roots = roots("cluster.ca", &c.ca)?;
        let cluster_cidr = cidr("cluster.clusterCidr", &c.cluster_cidr)?;
        ipv4("cluster.dnsAddress", &c.dns_address)?;
        if c.heads.is_empty() || c.heads.len() % 2 == 0 {
            return err("cluster.heads", format!("{} heads: a cluster has an odd number of heads (1, 3 or 5) so a majority survives a split", c.heads.len()));
        }
        let (mut names, mut addrs) = (BTreeSet::new(), BTreeSet::new());
        for (i, h) in c.heads.iter().enumerate() {
            if !is_dns1123_subdomain(&h.name) {
                return err(format!("cluster.heads[{i}].name"), format!("{:?} is not a DNS name", h.name));
            }
            let a = ipv4(&format!("cluster.heads[{i}].address"), &h.address)?;
            if !names.insert(&h.name) {
                return err(format!("cluster.heads[{i}].name"), format!("{:?} appears twice", h.name));
            }
            if !addrs.insert(a) {
                return err(format!("cluster.heads[{i}].address"), format!("{a} appears twice"));
            }
        }
        self.validate_network()?;
        let n = &self.node;
        if !is_dns1123_subdomain(&n.name) {
            return err("node.name", format!("{:?} is not a DNS name", n.name));
        }
        let pod = cidr("node.podCidr", &n.pod_cidr)?;
        if !cluster_cidr.covers(&pod) {
            return err("node.podCidr", format!("{pod} is not inside cluster.clusterCidr {cluster_cidr}"));
        }
        for (k, v) in &n.labels {
            if !is_qualified_name(k.rsplit('/').next().unwrap_or(k)) || !is_label_value(v) {
                return err(format!("node.labels[{k}]"), format!("{k:?}: {v:?} is not a valid label"));
            }
        }
        for (i, t) in n.taints.iter().enumerate() {
            if !is_qualified_name(t.key.rsplit('/').next().unwrap_or(&t.key)) {
                return err(format!("node.taints[{i}].key"), format!("{:?} is not a valid key", t.key));
            }
            if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&t.effect.as_str()) {
                return err(format!("node.taints[{i}].effect"), format!("{:?} is not NoSchedule, PreferNoSchedule or NoExecute", t.effect));
            }
        }
        let address = self.node_address();
        let node_cn = format!("system:node:{}", n.name);
        let hosts: Vec<IpAddr> = address.map(IpAddr::V4).into_iter().collect();
        check_identity("node", &roots, &n.certificate, &n.key, &node_cn, &[groups::NODES], &hosts)?;
        let head_entry = c.heads.iter().position(|h| h.name == n.name);
        match (n.role, &self.head) {
            (Role::Worker, Some(_)) => return err("head", "only a head has this section (node.role is worker)"),
            (Role::Worker, None) if head_entry.is_some() => return err("node.role", format!("{:?} is listed in cluster.heads but its role is worker", n.name)),
            (Role::Worker, None) => {}
            (Role::Head, None) => return err("head", "a head needs its identities, the Secret key and the git source"),
            (Role::Head, Some(h)) => {
                let Some(i) = head_entry else {
                    return err("cluster.heads", format!("node {:?} has role head but is not in the list", n.name));
                };
                let listed: Ipv4Addr = c.heads[i].address.parse().expect("checked above");
                if address != Some(listed) {
                    return err("network.addresses", format!("a head's first static address must be its cluster.heads[{i}].address {listed}"));
                }
                self.validate_head(h, &roots, listed)?;
            }
        }
        Ok(())
    }

    fn validate_network(&self) -> Result<(), ConfigError> {
        let net = &self.network;
        if let Some(i) = &net.interface {
            if i.is_empty() || i.len() > 15 || i.contains(['/', ' ']) {
                return err("network.interface", format!("{i:?} is not an interface name"));
            }
        }
        let mut nets = Vec::new();
        for (i, a) in net.addresses.iter().enumerate() {
            let c = cidr(&format!("network.addresses[{i}]"), a)?;
            if c.prefix == 0 || c.prefix > 30 && c.prefix != 32 {
                return err(format!("network.addresses[{i}]"), format!("{a:?}: prefix /{} leaves no room for a gateway", c.prefix));
            }
            nets.push(c);
        }
        if nets.is_empty() && !net.dhcp {
            return err("network.addresses", "no static address and dhcp is off: the node would have no address");
        }
        if let Some(g) = &net.gateway {
            let gw = ipv4("network.gateway", g)?;
            if !nets.is_empty() && !nets.iter().any(|n| n.contains(gw)) {
                return err("network.gateway", format!("{gw} is in none of network.addresses"));
            }
        }
        for (i, d) in net.dns.iter().enumerate() {
            ipv4(&format!("network.dns[{i}]"), d)?;
        }
        for (i, t) in net.ntp.iter().enumerate() {
            if t.parse::<IpAddr>().is_err() && !is_dns1123_subdomain(t) {
                return err(format!("network.ntp[{i}]"), format!("{t:?} is neither an address nor a host name"));
            }
        }
        Ok(())
    }

    fn validate_head(&self, h: &Head, roots: &Arc<rustls::RootCertStore>, address: Ipv4Addr) -> Result<(), ConfigError> {
        let local: Vec<IpAddr> = vec![IpAddr::V4(address), IpAddr::V4(Ipv4Addr::LOCALHOST)];
        let store_cn = format!("store-{}", self.node.name);
        let apiserver_cn = format!("apiserver-{}", self.node.name);
        let checks: [(&str, &Identity, &str, &[&str], &[IpAddr]); 5] = [
            ("head.store", &h.store, &store_cn, &[PEER_GROUP, CLIENT_GROUP], &local),
            ("head.apiserver", &h.apiserver, &apiserver_cn, &[CLIENT_GROUP], &local),
            ("head.scheduler", &h.scheduler, "scheduler", &[groups::SCHEDULER], &[]),
            ("head.controllers", &h.controllers, "controllers", &[groups::CONTROLLERS], &[]),
            ("head.gitops", &h.gitops, "gitops", &[groups::GITOPS], &[]),
        ];
        for (field, id, cn, orgs, hosts) in checks {
            check_identity(field, roots, &id.certificate, &id.key, cn, orgs, hosts)?;
        }
        if h.secret_key.len() != 64 || !h.secret_key.chars().all(|c| c.is_ascii_hexdigit()) {
            return err("head.secretKey", "must be 64 hex characters (32 bytes)");
        }
        let g = &h.git;
        if !["file://", "https://", "http://", "git://", "ssh://"].iter().any(|s| g.url.starts_with(s)) {
            return err("head.git.url", format!("{:?} is not a file://, https://, http://, git:// or ssh:// URL", g.url));
        }
        if g.url.starts_with("ssh://") {
            if g.ssh_key.as_deref().is_none_or(|k| !k.contains("PRIVATE KEY-----")) {
                return err("head.git.sshKey", "an ssh:// repository needs the deploy key (an OpenSSH private key)");
            }
            if g.known_hosts.is_empty() {
                return err("head.git.knownHosts", "an ssh:// repository needs the git host's keys (known_hosts lines): its key is checked");
            }
        }
        for (i, line) in g.known_hosts.iter().enumerate() {
            let hosts = line.split_whitespace().next().unwrap_or("");
            let hashed_ok = hosts.strip_prefix("|1|").and_then(|h| h.split_once('|')).is_some_and(|(salt, hash)| is_base64(salt) && is_base64(hash));
            if line.split_whitespace().count() < 3 || hosts.starts_with('@') || (hosts.starts_with('|') && !hashed_ok) {
                return err(format!("head.git.knownHosts[{i}]"), format!("{line:?} is not a known_hosts line `<host>[,<host>] <key type> <base64>` or `|1|<salt>|<hash> <key type> <base64>` (markers are not supported)"));
            }
        }
        if g.interval_seconds == 0 {
            return err("head.git.intervalSeconds", "must be at least 1");
        }
        if g.branch.as_deref() == Some("") {
            return err("head.git.branch", "empty (leave it out to follow the repository's HEAD)");
        }
        for (i, k) in g.trusted_keys.iter().enumerate() {
            if k.trim_start().starts_with(PGP_KEY_BEGIN) {
                if let Err(why) = armored_key(k) {
                    return err(format!("head.git.trustedKeys[{i}]"), format!("an OpenPGP public key block that {why}"));
                }
                continue;
            }
            let mut parts = k.split_whitespace();
            let kind = parts.next().unwrap_or("");
            let data_ok = parts.next().is_some_and(|b| !b.is_empty() && b.bytes().all(|c| c.is_ascii_alphanumeric() || b"+/=".contains(&c)));
            if !["ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256"].contains(&kind) || !data_ok {
                return err(format!("head.git.trustedKeys[{i}]"), format!("{k:?} is not an authorized_keys line of an ssh-ed25519, ssh-rsa or ecdsa-sha2-nistp256 key, nor an ASCII-armored OpenPGP public key block"));
            }
        }
        if let Some(k) = &g.decryption_key {
            // The reason only: the key itself never goes into a message.
            if let Err(e) = k.parse::<kapp_age::Identity>() {
                return err("head.git.decryptionKey", e.to_string());
            }
        }
        Ok(())
    }

    /// The files a node keeps its identities in (file name, content, private): `ca.pem`,
    /// `<identity>.pem` and `.key` for `node` (and on heads `store`, `apiserver`, `scheduler`,
    /// `controllers`, `gitops`), `secret.key`, `git-token`, `git-decryption-key` (heads).
    pub fn identity_files(&self) -> Vec<(String, String, bool)> {
        let mut files = vec![("ca.pem".to_string(), self.cluster.ca.clone(), false)];
        let mut add = |name: &str, id: &Identity| {
            files.push((format!("{name}.pem"), id.certificate.clone(), false));
            files.push((format!("{name}.key"), id.key.clone(), true));
        };
        add("node", &Identity { certificate: self.node.certificate.clone(), key: self.node.key.clone() });
        if let Some(h) = &self.head {
            for (name, id) in [("store", &h.store), ("apiserver", &h.apiserver), ("scheduler", &h.scheduler), ("controllers", &h.controllers), ("gitops", &h.gitops)] {
                add(name, id);
            }
            files.push(("secret.key".into(), h.secret_key.clone(), true));
            if let Some(t) = &h.git.token {
                files.push(("git-token".into(), t.clone(), true));
            }
            if let Some(k) = &h.git.ssh_key {
                files.push(("git-ssh-key".into(), k.clone(), true));
            }
            if !h.git.known_hosts.is_empty() {
                files.push(("git-known-hosts".into(), h.git.known_hosts.join("\n") + "\n", false));
            }
            if !h.git.trusted_keys.is_empty() {
                files.push(("git-trusted-keys".into(), h.git.trusted_keys.join("\n") + "\n", false));
            }
            if let Some(k) = &h.git.decryption_key {
                files.push(("git-decryption-key".into(), k.trim().to_string() + "\n", true));
            }
        }
        files
    }
}

const PGP_KEY_BEGIN: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";

/// Whether `text` is shaped as one ASCII-armored OpenPGP public key (`gpg --armor --export`):
/// the BEGIN and END lines, base64 between them. gitops parses the packets when it starts.
fn armored_key(text: &str) -> Result<(), &'static str> {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let Some(end) = lines.iter().position(|l| *l == "-----END PGP PUBLIC KEY BLOCK-----") else { return Err("has no END line") };
    if lines[end + 1..].iter().any(|l| !l.starts_with('#')) {
        return Err("is followed by more text: give each key its own item");
    }
    let body: String = lines[1..end].iter().filter(|l| !l.contains(':') && !l.starts_with('=')).copied().collect();
    if !is_base64(&body) {
        return Err("does not hold base64 data");
    }
    Ok(())
}

/// Whether `s` is non-empty standard base64.
fn is_base64(s: &str) -> bool {
    use base64::Engine;
    !s.is_empty() && base64::engine::general_purpose::STANDARD.decode(s).is_ok()
}

fn certs(field: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes()).collect::<Result<_, _>>().or_else(|e| err(field, format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return err(field, "holds no PEM certificate");
    }
    Ok(certs)
}

fn roots(field: &str, pem: &str) -> Result<Arc<rustls::RootCertStore>, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(field, pem)? {
        roots.add(c).or_else(|e| err(field, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// The certificate in `cert_pem` chains to `roots`, is valid now for client authentication
/// (and for serving each of `hosts`), matches `key_pem`, and carries CN `cn` and every group
/// of `orgs`.
fn check_identity(field: &str, roots: &Arc<rustls::RootCertStore>, cert_pem: &str, key_pem: &str, cn: &str, orgs: &[&str], hosts: &[IpAddr]) -> Result<(), ConfigError> {
    use rustls::client::danger::ServerCertVerifier;
    let cert_field = format!("{field}.certificate");
    let chain = certs(&cert_field, cert_pem)?;
    let provider = kapp_tls::crypto_provider();
    let now = UnixTime::now();
    let client = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build().or_else(|e| err("cluster.ca", e.to_string()))?;
    client.verify_client_cert(&chain[0], &chain[1..], now).or_else(|e| err(&cert_field, format!("does not chain to cluster.ca: {e}")))?;
    if !hosts.is_empty() {
        let server = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone()).build().or_else(|e| err("cluster.ca", e.to_string()))?;
        for h in hosts {
            server.verify_server_cert(&chain[0], &chain[1..], &ServerName::IpAddress((*h).into()), &[], now).or_else(|e| err(&cert_field, format!("not valid for serving {h}: {e}")))?;
        }
    }
    let key_field = format!("{field}.key");
    let key = match rustls_pemfile::private_key(&mut key_pem.as_bytes()) {
        Ok(Some(k)) => k,
        Ok(None) => return err(key_field, "holds no PEM private key"),
        Err(e) => return err(key_field, format!("not PEM: {e}")),
    };
    let key: PrivateKeyDer<'static> = key;
    rustls::sign::CertifiedKey::from_der(chain.clone(), key, &provider).or_else(|e| err(&key_field, format!("does not match {cert_field}: {e}")))?;
    let id = kapp_tls::identity_from_der(&chain[0]).or_else(|e| err(&cert_field, e.to_string()))?;
    if id.common_name != cn {
        return err(cert_field, format!("common name {:?} is not {cn:?}", id.common_name));
    }
    if let Some(missing) = orgs.iter().find(|o| !id.organizations.iter().any(|have| have == *o)) {
        return err(cert_field, format!("lacks group (O) {missing:?}"));
    }
    Ok(())
}
