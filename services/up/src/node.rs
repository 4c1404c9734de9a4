//! A node from its machine config: what `kapp init` (PID 1) brings up. Pure.
//!
//! Heads run their store member (member id = position in `cluster.heads` + 1, every head's
//! `<address>:2380` as the initial members), the apiserver on `0.0.0.0:6443` (talking to
//! its own store member first, then the others), scheduler, controllers and gitops, and —
//! like every node — kubelet, proxy and dns against their own apiserver. Workers run
//! `kapp apilb` on their loopback and kubelet, proxy and dns through it to whichever
//! head's apiserver answers. The cluster DNS address is
//! put on `lo` (pods reach it through their gateway; `kapp dns` binds it).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use kapp_bootstrap::machine::{self, Cidr, MachineConfig};
use kapp_init::pid1::{net::NetPlan, NodePlan, Paths, PlanError};

use crate::layout::Layout;
use crate::plan::{self, HeadPlan};

/// Where the appliance image carries OCI layouts for the kubelet to import (air gap).
pub const IMAGE_IMPORT_DIR: &str = "/usr/share/kapp/images";

/// The label `kubectl get nodes` shows as a head's role.
pub const HEAD_ROLE_LABEL: &str = "node-role.kubernetes.io/control-plane";

/// The machine config's labels, and the role label on heads.
fn node_labels(cfg: &MachineConfig) -> std::collections::BTreeMap<String, String> {
    let mut labels = cfg.node.labels.clone();
    if cfg.head.is_some() {
        labels.insert(HEAD_ROLE_LABEL.into(), String::new());
    }
    labels
}

/// Parse and validate a machine config and plan the node (`exe`: the `kapp` binary the
/// services run as).
pub fn plan_node(yaml: &str, paths: &Paths, exe: &Path) -> Result<NodePlan, PlanError> {
    let cfg = MachineConfig::parse(yaml).map_err(|e| PlanError { field: e.field, reason: e.reason })?;
    Ok(from_config(&cfg, paths, exe))
}

/// The node's plan from a valid config.
pub fn from_config(cfg: &MachineConfig, paths: &Paths, exe: &Path) -> NodePlan {
    let layout = Layout::new(&paths.state);
    let addresses: Vec<(Ipv4Addr, u8)> = cfg.network.addresses.iter().filter_map(|a| Cidr::parse(a)).map(|c| (c.addr, c.prefix)).collect();
    let dns_ip: Ipv4Addr = cfg.cluster.dns_address.parse().unwrap_or(Ipv4Addr::new(10, 96, 0, 10));
    let node_ip = cfg.node_address().or(paths.leased_address).unwrap_or(Ipv4Addr::LOCALHOST);
    let head_ips: Vec<(u64, Ipv4Addr)> = cfg.store_members();
    let token_file = cfg.head.as_ref().and_then(|h| h.git.token.as_ref()).map(|_| layout.pki().join("git-token"));
    let trusted_keys_file = cfg.head.as_ref().filter(|h| !h.git.trusted_keys.is_empty()).map(|_| layout.pki().join("git-trusted-keys"));
    let decryption_key_file = cfg.head.as_ref().and_then(|h| h.git.decryption_key.as_ref()).map(|_| layout.pki().join("git-decryption-key"));
    let ssh_key_file = cfg.head.as_ref().and_then(|h| h.git.ssh_key.as_ref()).map(|_| layout.pki().join("git-ssh-key"));
    let known_hosts_file = cfg.head.as_ref().filter(|h| !h.git.known_hosts.is_empty()).map(|_| layout.pki().join("git-known-hosts"));
    let head = cfg.head.as_ref().map(|h| {
        let member_id = head_ips.iter().find(|(_, ip)| *ip == node_ip).map_or(1, |(id, _)| *id);
        let store = |ip: Ipv4Addr| format!("{ip}:{}", machine::STORE_PORT);
        let mut endpoints = vec![store(node_ip)];
        endpoints.extend(head_ips.iter().filter(|(_, ip)| *ip != node_ip).map(|(_, ip)| store(*ip)));
        HeadPlan {
            member_id,
            members: head_ips.iter().map(|(id, ip)| (*id, store(*ip))).collect(),
            store_listen: format!("0.0.0.0:{}", machine::STORE_PORT),
            store_endpoints: endpoints,
            api_listen: format!("0.0.0.0:{}", machine::APISERVER_PORT),
            repo: h.git.url.clone(),
            branch: h.git.branch.clone(),
            path: h.git.path.clone(),
            interval_secs: h.git.interval_seconds,
            token_file: token_file.clone(),
            trusted_keys_file: trusted_keys_file.clone(),
            decryption_key_file: decryption_key_file.clone(),
            ssh_key_file: ssh_key_file.clone(),
            known_hosts_file: known_hosts_file.clone(),
        }
    });
    // A head's services use its own apiserver; a worker's go through `kapp apilb` on its
    // loopback to every head's, starting with one picked by its name (spreading workers).
    let (apiserver, apilb) = match &head {
        Some(_) => (format!("https://127.0.0.1:{}", machine::APISERVER_PORT), None),
        None => {
            let mut backends: Vec<String> = head_ips.iter().map(|(_, ip)| format!("{ip}:{}", machine::APISERVER_PORT)).collect();
            if !backends.is_empty() {
                let first = cfg.node.name.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize)) % backends.len();
                backends.rotate_left(first);
            }
            let listen = format!("127.0.0.1:{}", machine::APILB_PORT);
            (format!("https://{listen}"), Some((listen, backends)))
        }
    };
    let services = plan::node_services(&plan::NodePlan {
        exe: exe.to_path_buf(),
        node_name: cfg.node.name.clone(),
        node_ip,
        layout: layout.clone(),
        logs: paths.logs.clone(),
        head,
        apiserver,
        kubelet_port: machine::KUBELET_PORT,
        pod_cidr: cfg.node.pod_cidr.clone(),
        cluster_cidr: cfg.cluster.cluster_cidr.clone(),
        dns_ip,
        bridge: "kapp0".into(),
        table: "kapp".into(),
        netns_prefix: "kapp-".into(),
        upstream_dns: cfg.network.dns.clone(),
        // The images the appliance image carries (image/build.sh puts them there).
        import_dir: Some(PathBuf::from(IMAGE_IMPORT_DIR)),
        clean_on_exit: false,
        labels: node_labels(cfg),
        apilb,
        taints: cfg.node.taints.iter().map(|t| if t.value.is_empty() { format!("{}:{}", t.key, t.effect) } else { format!("{}={}:{}", t.key, t.value, t.effect) }).collect(),
    });
    let files = cfg
        .identity_files()
        .into_iter()
        .map(|(name, content, private)| {
            let rel = if name == "secret.key" { PathBuf::from(&name) } else { PathBuf::from("pki").join(&name) };
            (rel, content.into_bytes(), private)
        })
        .collect();
    NodePlan {
        node: cfg.node.name.clone(),
        role: cfg.node.role.to_string(),
        hostname: cfg.node.name.clone(),
        net: NetPlan {
            interface: cfg.network.interface.clone(),
            addresses,
            gateway: cfg.network.gateway.as_deref().and_then(|g| g.parse().ok()),
            local: vec![dns_ip],
            dns: cfg.network.dns.iter().filter_map(|d| d.parse().ok()).collect(),
            dhcp: cfg.network.dhcp,
        },
        ntp: cfg.network.ntp.clone(),
        files,
        services,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kapp_bootstrap::cluster::{gen_cluster, ClusterSpec};

    fn arg(spec: &kapp_init::supervise::ServiceSpec, flag: &str) -> Option<String> {
        spec.args.iter().position(|a| a == flag).map(|i| spec.args[i + 1].clone())
    }

    #[test]
    fn three_heads_and_a_worker_are_planned_as_one_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let ip = |d| Ipv4Addr::new(10, 77, 0, d);
        let spec = ClusterSpec {
            name: "demo".into(),
            heads: vec![("h1".into(), ip(11)), ("h2".into(), ip(12)), ("h3".into(), ip(13))],
            workers: vec![("w1".into(), ip(21))],
            prefix_len: 24,
            gateway: Some(ip(1)),
            dns: vec![ip(1)],
            ntp: vec![],
            git_url: "git://10.77.0.1/cluster".into(),
            git_branch: None,
            git_path: String::new(),
            head_taint: false,
            git_known_hosts: vec![],
        };
        let g = gen_cluster(&spec, dir.path()).unwrap();
        let paths = Paths::new(Path::new("/"));
        let exe = Path::new("/usr/bin/kapp");
        let plan = |i: usize| plan_node(&std::fs::read_to_string(&g.configs[i]).unwrap(), &paths, exe).unwrap();
        let h2 = plan(1);
        assert_eq!((h2.node.as_str(), h2.role.as_str(), h2.hostname.as_str()), ("h2", "head", "h2"));
        let names: Vec<_> = h2.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["store", "apiserver", "scheduler", "controllers", "gitops", "kubelet", "proxy", "dns"]);
        let store = &h2.services[0];
        assert_eq!(arg(store, "--id").as_deref(), Some("2"));
        assert_eq!(arg(store, "--members").as_deref(), Some("1=10.77.0.11:2380,2=10.77.0.12:2380,3=10.77.0.13:2380"));
        assert_eq!(arg(store, "--data-dir").as_deref(), Some("/var/lib/kapp/store"));
        assert_eq!(arg(store, "--cert").as_deref(), Some("/var/lib/kapp/pki/store.pem"));
        let api = &h2.services[1];
        assert_eq!(arg(api, "--store").as_deref(), Some("10.77.0.12:2380,10.77.0.11:2380,10.77.0.13:2380"));
        assert_eq!(arg(api, "--listen").as_deref(), Some("0.0.0.0:6443"));
        assert_eq!(arg(api, "--audit-log").as_deref(), Some("/var/log/kapp/audit.log"));
        assert_eq!(arg(api, "--secret-key-file").as_deref(), Some("/var/lib/kapp/secret.key"));
        assert_eq!(arg(&h2.services[4], "--repo").as_deref(), Some("git://10.77.0.1/cluster"));
        assert_eq!(arg(&h2.services[4], "--decryption-key").as_deref(), Some("/var/lib/kapp/pki/git-decryption-key"), "the cluster's age key");
        let kubelet = &h2.services[5];
        assert_eq!(arg(kubelet, "--apiserver").as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(arg(kubelet, "--pod-cidr").as_deref(), Some("10.244.1.0/24"));
        assert!(!kubelet.args.contains(&"--clean-on-exit".to_string()), "a node's pods outlive its kubelet");
        assert_eq!(h2.net.addresses, [(ip(12), 24)]);
        assert_eq!(h2.net.gateway, Some(ip(1)));
        assert_eq!(h2.net.local, [Ipv4Addr::new(10, 96, 0, 10)]);
        // Every file a service names is one the plan writes.
        let written: Vec<PathBuf> = h2.files.iter().map(|(p, _, _)| Path::new("/var/lib/kapp").join(p)).collect();
        for s in &h2.services {
            for flag in ["--ca", "--cert", "--key", "--secret-key-file", "--decryption-key"] {
                if let Some(f) = arg(s, flag) {
                    assert!(written.contains(&PathBuf::from(&f)), "{} {flag} {f} is not written", s.name);
                }
            }
        }
        assert_eq!(arg(kubelet, "--node-labels").as_deref(), Some("node-role.kubernetes.io/control-plane="));
        assert_eq!(arg(kubelet, "--register-with-taints"), None, "no head taint asked for");
        let w1 = plan(3);
        let names: Vec<_> = w1.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["apilb", "kubelet", "proxy", "dns"]);
        assert!(w1.services[1..].iter().all(|s| s.after == ["apilb"]));
        // The worker reaches every head through its balancer, starting with one of them.
        let mut backends: Vec<String> = arg(&w1.services[0], "--backends").unwrap().split(',').map(str::to_string).collect();
        assert_eq!(arg(&w1.services[0], "--listen").as_deref(), Some("127.0.0.1:7445"));
        backends.sort();
        assert_eq!(backends, ["10.77.0.11:6443", "10.77.0.12:6443", "10.77.0.13:6443"]);
        assert!(w1.services[1..].iter().all(|s| arg(s, "--apiserver").as_deref() == Some("https://127.0.0.1:7445")));
        assert_eq!(arg(&w1.services[1], "--listen").as_deref(), Some("10.77.0.21:10250"));
        assert_eq!(arg(&w1.services[1], "--node-labels"), None);
        // The machine config's labels and taints reach the kubelet in its flags' syntax.
        let mut cfg = MachineConfig::parse(&std::fs::read_to_string(&g.configs[0]).unwrap()).unwrap();
        cfg.node.labels.insert("zone".into(), "a".into());
        cfg.node.taints.push(machine::Taint { key: machine::HEAD_TAINT_KEY.into(), value: String::new(), effect: "NoSchedule".into() });
        cfg.node.taints.push(machine::Taint { key: "gpu".into(), value: "yes".into(), effect: "NoExecute".into() });
        let h1 = from_config(&cfg, &paths, exe);
        let kubelet = h1.services.iter().find(|s| s.name == "kubelet").unwrap();
        assert_eq!(arg(kubelet, "--node-labels").as_deref(), Some("node-role.kubernetes.io/control-plane=,zone=a"));
        assert_eq!(arg(kubelet, "--register-with-taints").as_deref(), Some("node-role.kubernetes.io/control-plane:NoSchedule,gpu=yes:NoExecute"));
        assert_eq!(w1.files.len(), 3);
        // A broken config names its field.
        let e = plan_node("apiVersion: kapp.dev/v1\nkind: MachineConfig\n", &paths, exe).unwrap_err();
        assert_eq!(e.field, "(document)", "{e}");
    }
}
