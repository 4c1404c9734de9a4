//! `kapp proxy` and `kapp dns` as processes against an in-process control plane: a
//! Service and its EndpointSlice created through the apiserver show up in DNS and in the
//! node's nftables table (in a network namespace the test creates), and follow changes.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RecordType;
use hickory_resolver::Resolver;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kapp_e2e::{free_ports, write_identity, Proc};
use kapp_testkit::{groups, ControlPlane};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// A network namespace, deleted on drop.
struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn resolver(at: SocketAddr) -> Resolver<TokioRuntimeProvider> {
    let mut udp = ConnectionConfig::udp();
    udp.port = at.port();
    let mut b = Resolver::builder_with_config(ResolverConfig::from_parts(None, vec![], vec![NameServerConfig::new(at.ip(), true, vec![udp])]), TokioRuntimeProvider::default());
    b.options_mut().cache_size = 0;
    b.options_mut().timeout = Duration::from_millis(500);
    b.options_mut().attempts = 1;
    b.build().unwrap()
}

async fn a_records(r: &Resolver<TokioRuntimeProvider>, name: &str) -> Vec<String> {
    match r.lookup(name, RecordType::A).await {
        Ok(l) => l.answers().iter().map(|a| a.data.to_string()).collect(),
        Err(_) => vec![],
    }
}

/// A map of the table in `ns`, as nft prints it (empty if absent).
fn map(ns: &str, name: &str) -> String {
    let out = Command::new("ip").args(["netns", "exec", ns, "nft", "list", "map", "inet", "kapp", name]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `service-ips-v4` map (VIP → the chain that balances it).
fn vip_map(ns: &str) -> String {
    map(ns, "service-ips-v4")
}

async fn eventually<F: FnMut() -> Fut, Fut: std::future::Future<Output = bool>>(what: &str, within: Duration, mut f: F) -> Duration {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_and_dns_follow_services_and_endpoint_slices() {
    let root = is_root();
    if !root {
        eprintln!("not root: the proxy half (network namespace) is skipped");
    }
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), 1).await;
    let ids = dir.path().join("node");
    std::fs::create_dir_all(&ids).unwrap();
    let node_id = write_identity(&ids, &cp.identity("system:node:n1", &[groups::NODES]));

    let ns = Netns(format!("kn{}", std::process::id()));
    let mut procs = vec![];
    if root {
        assert!(Command::new("ip").args(["netns", "add", &ns.0]).status().unwrap().success());
        for tool in ["nft", "conntrack"] {
            let wrapper = dir.path().join(tool);
            std::fs::write(&wrapper, format!("#!/bin/sh\nexec ip netns exec {} {tool} \"$@\"\n", ns.0)).unwrap();
            assert!(Command::new("chmod").arg("+x").arg(&wrapper).status().unwrap().success());
        }
        let (nft, conntrack) = (dir.path().join("nft").display().to_string(), dir.path().join("conntrack").display().to_string());
        let mut args: Vec<String> =
            ["proxy", "--apiserver", &cp.url, "--node-name", "n1", "--nft", &nft, "--conntrack", &conntrack, "--check-interval", "2"].iter().map(|s| s.to_string()).collect();
        args.extend(node_id.clone());
        procs.push(Proc::spawn("proxy", &args, &dir.path().join("proxy.log")).unwrap());
    }
    let port = free_ports(1)[0];
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut args: Vec<String> = ["dns", "--apiserver", &cp.url, "--listen", &listen.to_string()].iter().map(|s| s.to_string()).collect();
    args.extend(node_id);
    procs.push(Proc::spawn("dns", &args, &dir.path().join("dns.log")).unwrap());

    let client = cp.client("controllers", &[groups::CONTROLLERS]).await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"clusterIP": "10.96.0.50", "clusterIPs": ["10.96.0.50"],
        "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}))
    .unwrap();
    services.create(&PostParams::default(), &svc).await.unwrap();
    let slice: EndpointSlice = serde_json::from_value(json!({"metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.244.0.11"], "conditions": {"ready": true}}, {"addresses": ["10.244.0.12"], "conditions": {"ready": true}}]}))
    .unwrap();
    slices.create(&PostParams::default(), &slice).await.unwrap();

    let r = resolver(listen);
    let name = "web.default.svc.cluster.local.";
    let t = eventually("dns answers the new service", Duration::from_secs(20), || async { a_records(&r, name).await == ["10.96.0.50"] }).await;
    eprintln!("dns answered after {t:?}");
    if root {
        eventually("the proxy programs the VIP", Duration::from_secs(20), || async { vip_map(&ns.0).contains("10.96.0.50 . tcp . 80 : goto lb-v4-2") }).await;
        let eps = map(&ns.0, "service-endpoints-v4");
        assert!(eps.contains("10.96.0.50 . tcp . 80 . 0 : 10.244.0.11 . 8080") && eps.contains("10.96.0.50 . tcp . 80 . 1 : 10.244.0.12 . 8080"), "{eps}");
    }

    // One endpoint turns unready: the VIP moves to the one-endpoint chain within a second.
    let patch = json!({"endpoints": [{"addresses": ["10.244.0.11"], "conditions": {"ready": true}}, {"addresses": ["10.244.0.12"], "conditions": {"ready": false}}]});
    slices.patch("web-1", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    if root {
        let t = eventually("the proxy drops the unready endpoint", Duration::from_secs(5), || async {
            let eps = map(&ns.0, "service-endpoints-v4");
            vip_map(&ns.0).contains("10.96.0.50 . tcp . 80 : goto lb-v4-1") && eps.contains("10.96.0.50 . tcp . 80 . 0 : 10.244.0.11 . 8080") && !eps.contains("10.244.0.12")
        })
        .await;
        assert!(t < Duration::from_secs(1), "proxy followed in {t:?}");
    }

    // The ClusterIP changes (delete + create): DNS follows within a second.
    services.delete("web", &DeleteParams::default()).await.unwrap();
    let mut svc2 = svc.clone();
    svc2.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.51".into());
    svc2.spec.as_mut().unwrap().cluster_ips = Some(vec!["10.96.0.51".into()]);
    services.create(&PostParams::default(), &svc2).await.unwrap();
    let t = eventually("dns follows the new ClusterIP", Duration::from_secs(5), || async { a_records(&r, name).await == ["10.96.0.51"] }).await;
    assert!(t < Duration::from_secs(1), "dns followed in {t:?}");
    if root {
        eventually("the proxy moves the VIP", Duration::from_secs(5), || async {
            let m = vip_map(&ns.0);
            m.contains("10.96.0.51 . tcp . 80") && !m.contains("10.96.0.50")
        })
        .await;
        // Someone flushes our map: the periodic check (every 2 s here) puts it back.
        assert!(Command::new("ip").args(["netns", "exec", &ns.0, "nft", "flush", "map", "inet", "kapp", "service-ips-v4"]).status().unwrap().success());
        eventually("the check repairs the table", Duration::from_secs(10), || async { vip_map(&ns.0).contains("10.96.0.51 . tcp . 80") }).await;
    }

    // A Service without a ClusterIP gets one from the apiserver; DNS and the proxy use it.
    let auto: Service = serde_json::from_value(json!({"metadata": {"name": "auto"}, "spec": {"type": "NodePort", "ports": [{"name": "http", "port": 8080}]}})).unwrap();
    let auto = services.create(&PostParams::default(), &auto).await.unwrap();
    let spec = auto.spec.unwrap();
    let ip = spec.cluster_ip.clone().expect("the apiserver allocates a ClusterIP");
    let node_port = spec.ports.unwrap()[0].node_port.expect("and a nodePort");
    eventually("dns answers the allocated ClusterIP", Duration::from_secs(5), || async { a_records(&r, "auto.default.svc.cluster.local.").await == [ip.clone()] }).await;
    if root {
        // No EndpointSlice yet: the VIP and the nodePort reject.
        eventually("the proxy rejects the endpoint-less service", Duration::from_secs(5), || async {
            let out = Command::new("ip").args(["netns", "exec", &ns.0, "nft", "list", "map", "inet", "kapp", "no-endpoint-nodeports-v4"]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).contains(&format!("tcp . {node_port} : goto reject-chain"))
        })
        .await;
    }

    for p in &mut procs {
        p.terminate(Duration::from_secs(10)).unwrap();
    }
    drop(procs);
    cp.shutdown().await;
}
