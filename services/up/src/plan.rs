//! The node's services as the supervisor runs them: one `kapp <service>` process each, in
//! dependency order (store → apiserver → everything else). Pure.

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

/// Every service of the all-in-one node.
pub fn services(cfg: &UpConfig, layout: &Layout, host: &HostFacts) -> Vec<ServiceSpec> {
    let exe = &cfg.exe;
    let api = format!("https://127.0.0.1:{}", cfg.api_port);
    let store_addr = format!("127.0.0.1:{}", cfg.store_port);
    let d = |p: PathBuf| p.display().to_string();
    let short = Duration::from_secs(5);
    let with = |mut head: Vec<String>, tls: &str, rest: Vec<String>| {
        head.extend(layout.tls_args(tls));
        head.extend(rest);
        head
    };
    let mut store = strings(&["store", "--id", "1", "--listen", &store_addr, "--members", &format!("1={store_addr}"), "--data-dir"]);
    store.push(d(layout.store()));
    let mut gitops = strings(&["gitops", "--apiserver", &api, "--repo", &repo_url(cfg, layout), "--path", &cfg.path, "--interval", &cfg.interval.as_secs().max(1).to_string(), "--holder", &cfg.node_name, "--state-dir"]);
    gitops.push(d(layout.gitops()));
    if let Some(b) = &cfg.branch {
        gitops.extend(["--branch".to_string(), b.clone()]);
    }
    let kubelet = strings(&[
        "kubelet",
        "--node-name",
        &cfg.node_name,
        "--apiserver",
        &api,
        "--state-dir",
        &d(layout.kubelet()),
        "--pod-cidr",
        &cfg.pod_cidr,
        "--node-ip",
        &host.node_ip.to_string(),
        "--cluster-dns",
        &cfg.dns_ip.to_string(),
        "--listen",
        &format!("{}:{}", host.node_ip, cfg.kubelet_port),
        "--import-dir",
        &d(layout.images()),
        "--bridge",
        &cfg.bridge,
        "--netns-prefix",
        &cfg.netns_prefix,
        "--clean-on-exit",
    ]);
    vec![
        spec(exe, "store", with(store, "store", vec![]), &[], "listening on", Duration::from_secs(10)),
        spec(
            exe,
            "apiserver",
            with(
                strings(&["apiserver", "--listen", &format!("127.0.0.1:{}", cfg.api_port), "--store", &store_addr]),
                "apiserver",
                vec!["--secret-key-file".into(), d(layout.secret_key()), "--audit-log".into(), d(layout.logs().join("audit.log"))],
            ),
            &["store"],
            "kapp apiserver listening",
            short,
        ),
        spec(exe, "scheduler", with(strings(&["scheduler", "--apiserver", &api, "--holder", &cfg.node_name]), "scheduler", vec![]), &["apiserver"], "kapp scheduler as", short),
        spec(exe, "controllers", with(strings(&["controllers", "--apiserver", &api, "--holder", &cfg.node_name]), "controllers", vec![]), &["apiserver"], "kapp controllers as", short),
        spec(exe, "gitops", with(gitops, "gitops", vec![]), &["apiserver"], "kapp gitops following", short),
        // Pods get their whole grace period (30 s by default) and then some.
        spec(exe, "kubelet", with(kubelet, "node", vec![]), &["apiserver"], "kubelet started", Duration::from_secs(45)),
        spec(
            exe,
            "proxy",
            with(strings(&["proxy", "--apiserver", &api, "--node-name", &cfg.node_name, "--cluster-cidr", &cfg.cluster_cidr, "--table", &cfg.table]), "node", vec![]),
            &["apiserver"],
            "kapp proxy on node",
            short,
        ),
        spec(
            exe,
            "dns",
            with(strings(&["dns", "--apiserver", &api, "--listen", &format!("{}:53", cfg.dns_ip), "--upstream", &host.upstream_dns.join(",")]), "node", vec![]),
            &["apiserver"],
            "kapp dns listening",
            short,
        ),
    ]
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
        let dns = specs.iter().find(|s| s.name == "dns").unwrap();
        assert!(dns.args.windows(2).any(|w| w == ["--listen", "10.96.0.10:53"]) && dns.args.windows(2).any(|w| w == ["--upstream", "192.0.2.53"]));
    }
}
