//! The node's services as the supervisor runs them: one `kapp <service>` process each, in
//! dependency order (store → apiserver → everything else). Pure.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use kapp_init::supervise::{Ready, ServiceSpec};

use crate::layout::Layout;
use crate::UpConfig;

/// What the host told us: the node's address and the upstream resolvers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFacts {
    pub node_ip: Ipv4Addr,
    pub upstream_dns: Vec<String>,
}

fn spec(exe: &PathBuf, name: &str, args: Vec<String>, after: &[&str], ready: &str, stop: Duration) -> ServiceSpec {
    ServiceSpec {
        name: name.to_string(),
        program: exe.clone(),
        args,
        env: vec![],
        after: after.iter().map(|s| s.to_string()).collect(),
        ready: Ready::LogLine(ready.to_string()),
        stop_timeout: stop,
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The repository URL gitops follows.
pub fn repo_url(cfg: &UpConfig, layout: &Layout) -> String {
    cfg.repo.clone().unwrap_or_else(|| format!("file://{}", layout.repo().display()))
}

/// A head's own services: its store member, the apiserver, and the leader-elected loops.
#[derive(Clone, Debug)]
pub struct HeadPlan {
    /// This store member's id.
    pub member_id: u64,
    /// Every member, `(id, host:port)`, this one included.
    pub members: Vec<(u64, String)>,
    pub store_listen: String,
    /// The store members the apiserver talks to (its own first).
    pub store_endpoints: Vec<String>,
    pub api_listen: String,
    pub repo: String,
    pub branch: Option<String>,
    pub path: String,
    pub interval_secs: u64,
    pub token_file: Option<PathBuf>,
    /// Only commits signed by a key in this file are applied.
    pub trusted_keys_file: Option<PathBuf>,
    /// The cluster's age key: encrypted files and Secret values are decrypted with it.
    pub decryption_key_file: Option<PathBuf>,
    /// The deploy key and the git host's keys for an ssh:// repository.
    pub ssh_key_file: Option<PathBuf>,
    pub known_hosts_file: Option<PathBuf>,
}

/// One node's services, however it is configured (`kapp up`, a machine config).
#[derive(Clone, Debug)]
pub struct NodePlan {
    pub exe: PathBuf,
    pub node_name: String,
    pub node_ip: Ipv4Addr,
    /// Where the identities (`pki/`), store, gitops and kubelet state live.
    pub layout: Layout,
    /// The apiserver's audit log goes here.
    pub logs: PathBuf,
    pub head: Option<HeadPlan>,
    /// The apiserver the kubelet, proxy and dns use.
    pub apiserver: String,
    pub kubelet_port: u16,
    pub pod_cidr: String,
    pub cluster_cidr: String,
    pub dns_ip: Ipv4Addr,
    pub bridge: String,
    pub table: String,
    pub netns_prefix: String,
    pub upstream_dns: Vec<String>,
    pub import_dir: Option<PathBuf>,
    /// The kubelet stops its pods when it exits (`kapp up`).
    pub clean_on_exit: bool,
    /// The Node's labels and taints (`key[=value]:Effect`), given to the kubelet.
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<String>,
    /// A node without its own apiserver: `kapp apilb` listens here (what `apiserver` names)
    /// and forwards to these apiservers, `host:port`, in order of preference.
    pub apilb: Option<(String, Vec<String>)>,
}

/// Every service of the all-in-one node.
pub fn services(cfg: &UpConfig, layout: &Layout, host: &HostFacts) -> Vec<ServiceSpec> {
    let store_addr = format!("127.0.0.1:{}", cfg.store_port);
    let head = HeadPlan {
        member_id: 1,
        members: vec![(1, store_addr.clone())],
        store_listen: store_addr.clone(),
        store_endpoints: vec![store_addr],
        api_listen: format!("127.0.0.1:{}", cfg.api_port),
        repo: repo_url(cfg, layout),
        branch: cfg.branch.clone(),
        path: cfg.path.clone(),
        interval_secs: cfg.interval.as_secs().max(1),
        token_file: None,
        trusted_keys_file: None,
        decryption_key_file: Some(layout.age_key()),
        ssh_key_file: None,
        known_hosts_file: None,
    };
    node_services(&NodePlan {
        exe: cfg.exe.clone(),
        node_name: cfg.node_name.clone(),
        node_ip: host.node_ip,
        layout: layout.clone(),
        logs: layout.logs(),
        head: Some(head),
        apiserver: format!("https://127.0.0.1:{}", cfg.api_port),
        kubelet_port: cfg.kubelet_port,
        pod_cidr: cfg.pod_cidr.clone(),
        cluster_cidr: cfg.cluster_cidr.clone(),
        dns_ip: cfg.dns_ip,
        bridge: cfg.bridge.clone(),
        table: cfg.table.clone(),
        netns_prefix: cfg.netns_prefix.clone(),
        upstream_dns: host.upstream_dns.clone(),
        import_dir: Some(layout.images()),
        clean_on_exit: true,
        // The one node is a head (untainted: it is also the only place pods can run).
        labels: BTreeMap::from([(crate::node::HEAD_ROLE_LABEL.to_string(), String::new())]),
        taints: Vec::new(),
        apilb: None,
    })
}

/// A node's services: on a head store → apiserver → scheduler, controllers, gitops; on
/// every node kubelet, proxy and dns (after the local apiserver on a head).
pub fn node_services(p: &NodePlan) -> Vec<ServiceSpec> {
    let exe = &p.exe;
    let layout = &p.layout;
    let api = &p.apiserver;
    let d = |p: PathBuf| p.display().to_string();
    let short = Duration::from_secs(5);
    let with = |mut head: Vec<String>, tls: &str, rest: Vec<String>| {
        head.extend(layout.tls_args(tls));
        head.extend(rest);
        head
    };
    let mut specs = Vec::new();
    let node_after: &[&str] = match (&p.head, &p.apilb) {
        (Some(_), _) => &["apiserver"],
        (None, Some(_)) => &["apilb"],
        (None, None) => &[],
    };
    if let Some((listen, backends)) = &p.apilb {
        specs.push(spec(exe, "apilb", strings(&["apilb", "--listen", listen, "--backends", &backends.join(",")]), &[], "kapp apilb listening", short));
    }
    if let Some(h) = &p.head {
        let members = h.members.iter().map(|(id, a)| format!("{id}={a}")).collect::<Vec<_>>().join(",");
        let mut store = strings(&["store", "--id", &h.member_id.to_string(), "--listen", &h.store_listen, "--members", &members, "--data-dir"]);
        store.push(d(layout.store()));
        let mut gitops = strings(&["gitops", "--apiserver", api, "--repo", &h.repo, "--path", &h.path, "--interval", &h.interval_secs.to_string(), "--holder", &p.node_name, "--state-dir"]);
        gitops.push(d(layout.gitops()));
        if let Some(b) = &h.branch {
            gitops.extend(["--branch".to_string(), b.clone()]);
        }
        if let Some(t) = &h.token_file {
            gitops.extend(["--token-file".to_string(), d(t.clone())]);
        }
        for (flag, file) in [("--ssh-key-file", &h.ssh_key_file), ("--known-hosts", &h.known_hosts_file)] {
            if let Some(f) = file {
                gitops.extend([flag.to_string(), d(f.clone())]);
            }
        }
        if let Some(t) = &h.trusted_keys_file {
            gitops.extend(["--trusted-keys".to_string(), d(t.clone())]);
        }
        if let Some(k) = &h.decryption_key_file {
            gitops.extend(["--decryption-key".to_string(), d(k.clone())]);
        }
        specs.extend([
            spec(exe, "store", with(store, "store", vec![]), &[], "listening on", Duration::from_secs(10)),
            spec(
                exe,
                "apiserver",
                with(
                    strings(&["apiserver", "--listen", &h.api_listen, "--store", &h.store_endpoints.join(",")]),
                    "apiserver",
                    vec!["--secret-key-file".into(), d(layout.secret_key()), "--audit-log".into(), d(p.logs.join("audit.log"))],
                ),
                &["store"],
                "kapp apiserver listening",
                short,
            ),
            spec(exe, "scheduler", with(strings(&["scheduler", "--apiserver", api, "--holder", &p.node_name]), "scheduler", vec![]), &["apiserver"], "kapp scheduler as", short),
            spec(exe, "controllers", with(strings(&["controllers", "--apiserver", api, "--holder", &p.node_name]), "controllers", vec![]), &["apiserver"], "kapp controllers as", short),
            spec(exe, "gitops", with(gitops, "gitops", vec![]), &["apiserver"], "kapp gitops following", short),
        ]);
    }
    let mut kubelet = strings(&[
        "kubelet",
        "--node-name",
        &p.node_name,
        "--apiserver",
        api,
        "--state-dir",
        &d(layout.kubelet()),
        "--pod-cidr",
        &p.pod_cidr,
        "--node-ip",
        &p.node_ip.to_string(),
        "--cluster-dns",
        &p.dns_ip.to_string(),
        "--listen",
        &format!("{}:{}", p.node_ip, p.kubelet_port),
    ]);
    if let Some(i) = &p.import_dir {
        kubelet.extend(["--import-dir".to_string(), d(i.clone())]);
    }
    kubelet.extend(strings(&["--bridge", &p.bridge, "--netns-prefix", &p.netns_prefix]));
    if p.clean_on_exit {
        kubelet.push("--clean-on-exit".into());
    }
    if !p.labels.is_empty() {
        let labels: Vec<String> = p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        kubelet.extend(["--node-labels".to_string(), labels.join(",")]);
    }
    if !p.taints.is_empty() {
        kubelet.extend(["--register-with-taints".to_string(), p.taints.join(",")]);
    }
    specs.extend([
        // Pods get their whole grace period (30 s by default) and then some.
        spec(exe, "kubelet", with(kubelet, "node", vec![]), node_after, "kubelet started", Duration::from_secs(45)),
        spec(
            exe,
            "proxy",
            with(strings(&["proxy", "--apiserver", api, "--node-name", &p.node_name, "--cluster-cidr", &p.cluster_cidr, "--table", &p.table]), "node", vec![]),
            node_after,
            "kapp proxy on node",
            short,
        ),
        spec(
            exe,
            "dns",
            with(strings(&["dns", "--apiserver", api, "--listen", &format!("{}:53", p.dns_ip), "--upstream", &p.upstream_dns.join(",")]), "node", vec![]),
            node_after,
            "kapp dns listening",
            short,
        ),
    ]);
    specs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_after_the_apiserver_and_the_apiserver_after_the_store() {
        let dir = std::path::Path::new("/s");
        let cfg = UpConfig::new(dir, "/bin/kapp".into());
        let layout = Layout::new(dir);
        let host = HostFacts { node_ip: Ipv4Addr::new(192, 0, 2, 7), upstream_dns: vec!["192.0.2.53".into()] };
        let specs = services(&cfg, &layout, &host);
        let names: Vec<_> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["store", "apiserver", "scheduler", "controllers", "gitops", "kubelet", "proxy", "dns"]);
        assert!(specs[0].after.is_empty());
        assert_eq!(specs[1].after, ["store"]);
        assert!(specs[2..].iter().all(|s| s.after == ["apiserver"]));
        let kubelet = specs.iter().find(|s| s.name == "kubelet").unwrap();
        let arg = |flag: &str| kubelet.args.iter().position(|a| a == flag).map(|i| kubelet.args[i + 1].clone());
        assert_eq!(arg("--node-ip").as_deref(), Some("192.0.2.7"));
        assert_eq!(arg("--listen").as_deref(), Some("192.0.2.7:10250"));
        assert_eq!(arg("--cert").as_deref(), Some("/s/pki/node.pem"));
        let gitops = specs.iter().find(|s| s.name == "gitops").unwrap();
        assert!(gitops.args.windows(2).any(|w| w == ["--repo", "file:///s/repo"]), "{:?}", gitops.args);
        assert!(gitops.args.windows(2).any(|w| w == ["--decryption-key", "/s/pki/age.key"]), "{:?}", gitops.args);
        let dns = specs.iter().find(|s| s.name == "dns").unwrap();
        assert!(dns.args.windows(2).any(|w| w == ["--listen", "10.96.0.10:53"]) && dns.args.windows(2).any(|w| w == ["--upstream", "192.0.2.53"]));
    }
}
