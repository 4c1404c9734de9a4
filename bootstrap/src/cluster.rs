//! `kapp gen cluster`: a new cluster's CA and one self-contained machine config per node.
//!
//! Heads are the store's members in the order given (member id = position + 1); each head
//! gets its own store and apiserver certificates (valid for its address and 127.0.0.1), the
//! shared scheduler, controllers and gitops identities, the Secret key and the git source.
//! Every node gets its node identity (`system:node:<name>`, valid for its address) and pod
//! network `10.244.<n>.0/24` (heads first, in order). The CA key stays in `<out>/pki/`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use kapp_api::groups;
use kapp_store_client::{CLIENT_GROUP, PEER_GROUP};
use kapp_tls::pki::Ca;
use kapp_tls::Pem;

use crate::machine::{self, Cidr, Cluster, Git, Head, HeadEndpoint, Identity, MachineConfig, Network, Node, Role, Taint};
use crate::{files, write_private, GenError};

/// What `kapp gen cluster` is told.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub name: String,
    /// `(name, address)` of each head, in member order.
    pub heads: Vec<(String, Ipv4Addr)>,
    pub workers: Vec<(String, Ipv4Addr)>,
    /// The nodes' network prefix length (their addresses are `<ip>/<prefix_len>`).
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub ntp: Vec<String>,
    pub git_url: String,
    pub git_branch: Option<String>,
    pub git_path: String,
    /// Keep ordinary pods off the heads (taint `node-role.kubernetes.io/control-plane`).
    pub head_taint: bool,
    /// The git host's keys (`known_hosts` lines), needed for an `ssh://` repository.
    pub git_known_hosts: Vec<String>,
}

/// What [`gen_cluster`] wrote.
#[derive(Clone, Debug)]
pub struct Generated {
    /// `<out>/<node>.yaml` per node, heads first.
    pub configs: Vec<PathBuf>,
    /// The viewer identity (read-only), for a kubeconfig.
    pub viewer: Pem,
    /// `https://<first head>:6443`.
    pub server: String,
    /// The deploy key's public half (`<out>/deploy-key.pub`), for the git host.
    pub deploy_key: String,
    /// The cluster's age recipient (`<out>/age-recipient`): Secrets encrypted to it
    /// (`age -r`) are decrypted by the heads' gitops.
    pub age_recipient: kapp_age::Recipient,
}

fn identity(pem: Pem) -> Identity {
    Identity { certificate: pem.cert, key: pem.key }
}

/// The spec's own rules (names, counts, addresses), before anything is generated.
fn check(spec: &ClusterSpec) -> Result<(), GenError> {
    let bad = |s: String| Err(GenError::Invalid(s));
    if spec.heads.is_empty() || spec.heads.len() % 2 == 0 {
        return bad(format!("{} heads given: a cluster needs an odd number of heads (1, 3 or 5) so that a majority survives losing one", spec.heads.len()));
    }
    if !(1..=30).contains(&spec.prefix_len) {
        return bad(format!("--prefix-len {} is not 1-30", spec.prefix_len));
    }
    let nodes: Vec<_> = spec.heads.iter().chain(&spec.workers).collect();
    if nodes.len() > 256 {
        return bad(format!("{} nodes: at most 256 (one /24 pod network each)", nodes.len()));
    }
    let (mut names, mut ips) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    for (name, ip) in &nodes {
        if !kapp_api::validation::is_dns1123_subdomain(name) {
            return bad(format!("node name {name:?} is not a DNS name"));
        }
        if !names.insert(name.as_str()) || !ips.insert(*ip) {
            return bad(format!("node {name}={ip}: name or address given twice"));
        }
    }
    Ok(())
}

/// Generate the cluster into `out`: `<node>.yaml` for every node (mode 0600: they hold
/// keys) and `pki/` (CA certificate and key, the viewer identity). Refuses a directory that
/// already holds a CA key. Every config is parsed back and validated before this returns.
pub fn gen_cluster(spec: &ClusterSpec, out: &Path) -> Result<Generated, GenError> {
    check(spec)?;
    let pki = out.join("pki");
    let ca_key = pki.join(files::CA_KEY);
    if ca_key.exists() {
        return Err(GenError::Exists { path: ca_key });
    }
    std::fs::create_dir_all(&pki).map_err(|source| GenError::Io { path: pki.clone(), source })?;
    let ca = Ca::generate(&spec.name)?;
    let viewer = ca.issue("viewer", &[groups::VIEWERS], &[])?;
    viewer.write_files(&pki.join(files::CA_CERT), &pki.join(files::VIEWER_CERT), &pki.join(files::VIEWER_KEY))?;
    write_private(&ca_key, ca.key_pem().as_bytes())?;

    let secret_key = crate::secret_key_hex().map_err(|e| GenError::Invalid(e.to_string()))?;
    // The deploy key: given to the heads for an ssh:// repository, its public half to the
    // git host (read-only access is all gitops needs).
    let deploy = crate::sshkey::ed25519(&format!("kapp-deploy@{}", spec.name)).map_err(|_| GenError::Invalid("no randomness for the deploy key".into()))?;
    // The cluster's age key: every head decrypts the repository's encrypted Secrets with it.
    let age = kapp_age::Identity::generate();
    let ssh = spec.git_url.starts_with("ssh://");
    let shared = [("scheduler", groups::SCHEDULER), ("controllers", groups::CONTROLLERS), ("gitops", groups::GITOPS)]
        .map(|(cn, group)| ca.issue(cn, &[group], &[]).map(identity));
    let [scheduler, controllers, gitops] = shared;
    let (scheduler, controllers, gitops) = (scheduler?, controllers?, gitops?);
    let heads: Vec<HeadEndpoint> = spec.heads.iter().map(|(n, ip)| HeadEndpoint { name: n.clone(), address: ip.to_string() }).collect();
    let cluster = Cluster { name: spec.name.clone(), ca: ca.cert_pem(), heads, cluster_cidr: "10.244.0.0/16".into(), dns_address: "10.96.0.10".into() };
    let network = |ip: Ipv4Addr| Network {
        interface: None,
        addresses: vec![Cidr { addr: ip, prefix: spec.prefix_len }.to_string()],
        gateway: spec.gateway.map(|g| g.to_string()),
        dhcp: false,
        dns: spec.dns.iter().map(Ipv4Addr::to_string).collect(),
        ntp: spec.ntp.clone(),
    };
    let roles = spec.heads.iter().map(|h| (h, Role::Head)).chain(spec.workers.iter().map(|w| (w, Role::Worker)));
    let mut configs = Vec::new();
    for (index, ((name, ip), role)) in roles.enumerate() {
        let ip_s = ip.to_string();
        let node_pem = ca.issue(&format!("system:node:{name}"), &[groups::NODES], &[ip_s.as_str()])?;
        let head = match role {
            Role::Worker => None,
            Role::Head => Some(Head {
                store: identity(ca.issue(&format!("store-{name}"), &[PEER_GROUP, CLIENT_GROUP], &[ip_s.as_str(), "127.0.0.1", "localhost"])?),
                apiserver: identity(ca.issue(&format!("apiserver-{name}"), &[CLIENT_GROUP], &[ip_s.as_str(), "127.0.0.1", "localhost"])?),
                scheduler: scheduler.clone(),
                controllers: controllers.clone(),
                gitops: gitops.clone(),
                secret_key: secret_key.clone(),
                git: Git { url: spec.git_url.clone(), branch: spec.git_branch.clone(), path: spec.git_path.clone(), interval_seconds: 15, token: None, ssh_key: ssh.then(|| deploy.private.clone()), known_hosts: spec.git_known_hosts.clone(), trusted_keys: vec![], decryption_key: Some(age.to_secret_string()) },
            }),
        };
        let taints = if role == Role::Head && spec.head_taint {
            vec![Taint { key: machine::HEAD_TAINT_KEY.into(), value: String::new(), effect: "NoSchedule".into() }]
        } else {
            vec![]
        };
        let cfg = MachineConfig {
            api_version: machine::API_VERSION.into(),
            kind: machine::KIND.into(),
            cluster: cluster.clone(),
            node: Node { name: name.clone(), role, pod_cidr: format!("10.244.{index}.0/24"), labels: Default::default(), taints, certificate: node_pem.cert, key: node_pem.key },
            network: network(*ip),
            head,
        };
        let yaml = cfg.to_yaml();
        // What we write must be what a node accepts.
        MachineConfig::parse(&yaml).map_err(|e| GenError::Invalid(format!("generated config of {name} does not validate: {e}")))?;
        let path = out.join(format!("{name}.yaml"));
        if path.exists() {
            return Err(GenError::Exists { path });
        }
        write_private(&path, yaml.as_bytes())?;
        configs.push(path);
    }
    write_private(&out.join("deploy-key"), deploy.private.as_bytes())?;
    std::fs::write(out.join("deploy-key.pub"), format!("{}\n", deploy.public)).map_err(|source| GenError::Io { path: out.join("deploy-key.pub"), source })?;
    let recipient = out.join("age-recipient");
    std::fs::write(&recipient, format!("{}\n", age.to_recipient())).map_err(|source| GenError::Io { path: recipient, source })?;
    Ok(Generated { configs, viewer, server: format!("https://{}:{}", spec.heads[0].1, machine::APISERVER_PORT), deploy_key: deploy.public, age_recipient: age.to_recipient() })
}
