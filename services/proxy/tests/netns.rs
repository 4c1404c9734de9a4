//! The proxy against the real kernel, inside network namespaces the test creates (root).
//!
//! Topology per test (names carry a per-test prefix):
//!
//! ```text
//!  backends b1 b2 b3 (10.244.0.11-13) ──┐ br0 10.244.0.1/24
//!                                       node ── vc ── client pod c (10.244.1.2/24, gw 10.244.1.1)
//!                                        └── vx ── outside x (192.168.50.2/24; node 192.168.50.1)
//! ```
//!
//! The proxy's table is programmed in the node namespace through wrapper scripts
//! (`ip netns exec <node> nft "$@"`). Backends run this test binary as a tiny TCP server
//! (the `helper_process` test, switched on by an environment variable) that answers every
//! connection with its name and the peer address it saw.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kapp_proxy::{desired, parse_cidr, ConntrackCommand, Nft, NftCommand, Proxier, RenderConfig};
use serde_json::json;

const SERVER_ENV: &str = "KAPP_NETNS_SERVER";
const CLIENT_ENV: &str = "KAPP_NETNS_CLIENT";
const UDP_CLIENT_ENV: &str = "KAPP_NETNS_UDP_CLIENT";

/// Not a test: the server and client this file's tests run inside namespaces.
#[test]
fn helper_process() {
    if let Ok(name) = std::env::var(SERVER_ENV) {
        let l = TcpListener::bind("0.0.0.0:8080").expect("bind 8080");
        let u = std::net::UdpSocket::bind("0.0.0.0:5353").expect("bind udp 5353");
        let uname = name.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((_, peer)) = u.recv_from(&mut buf) {
                let _ = u.send_to(format!("{uname} {}\n", peer.ip()).as_bytes(), peer);
            }
        });
        println!("ready");
        for s in l.incoming().flatten() {
            let peer = s.peer_addr().map(|p| p.ip().to_string()).unwrap_or_default();
            let mut s = s;
            let _ = s.write_all(format!("{name} {peer}\n").as_bytes());
        }
    }
    if let Ok(spec) = std::env::var(UDP_CLIENT_ENV) {
        // "<addr>,<count>": datagrams from one fixed source port (one conntrack entry).
        let (addr, count) = spec.split_once(',').unwrap();
        let u = std::net::UdpSocket::bind("0.0.0.0:40000").unwrap();
        u.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        for _ in 0..count.parse::<usize>().unwrap() {
            u.send_to(b"?", addr).unwrap();
            let mut buf = [0u8; 512];
            match u.recv_from(&mut buf) {
                Ok((n, _)) => println!("\n@@ {}", String::from_utf8_lossy(&buf[..n]).trim()),
                Err(e) => println!("\n@@ ERROR {e}"),
            }
        }
    }
    if let Ok(spec) = std::env::var(CLIENT_ENV) {
        // "<addr>,<count>": one line per attempt: the answer, REFUSED or ERROR <e>.
        let (addr, count) = spec.split_once(',').unwrap();
        let addr: SocketAddr = addr.parse().unwrap();
        for _ in 0..count.parse::<usize>().unwrap() {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(mut s) => {
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut out = String::new();
                    let _ = s.read_to_string(&mut out);
                    println!("\n@@ {}", out.trim());
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => println!("\n@@ REFUSED"),
                Err(e) => println!("\n@@ ERROR {e}"),
            }
        }
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("run sh");
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The namespaces of one test; removed (and servers stopped) on drop, even on failure.
struct Net {
    prefix: String,
    dir: tempfile::TempDir,
    servers: Vec<Child>,
}

impl Net {
    fn new(tag: &str) -> Option<Net> {
        if !is_root() {
            eprintln!("skipping: network namespaces need root");
            return None;
        }
        let prefix = format!("kp{}{tag}", std::process::id() % 100000);
        let net = Net { prefix, dir: tempfile::tempdir().unwrap(), servers: vec![] };
        let n = net.ns("node");
        for ns in ["node", "b1", "b2", "b3", "c", "x"] {
            sh(&format!("ip netns add {}", net.ns(ns)));
            sh(&format!("ip -n {} link set lo up", net.ns(ns)));
        }
        sh(&format!("ip netns exec {n} sysctl -qw net.ipv4.ip_forward=1"));
        sh(&format!("ip -n {n} link add br0 type bridge && ip -n {n} addr add 10.244.0.1/24 dev br0 && ip -n {n} link set br0 up"));
        for (i, b) in ["b1", "b2", "b3"].iter().enumerate() {
            let bn = net.ns(b);
            sh(&format!("ip -n {n} link add v{b} type veth peer name eth0 netns {bn}"));
            // Hairpin on, as the kubelet must set it on pod ports: with br_netfilter (on
            // here), a pod's packet DNATed back to itself is bridged out the port it came in.
            sh(&format!("ip -n {n} link set v{b} master br0 up && ip -n {n} link set v{b} type bridge_slave hairpin on"));
            sh(&format!("ip -n {bn} addr add 10.244.0.{}/24 dev eth0 && ip -n {bn} link set eth0 up && ip -n {bn} route add default via 10.244.0.1", 11 + i));
        }
        let (c, x) = (net.ns("c"), net.ns("x"));
        sh(&format!("ip -n {n} link add vc type veth peer name eth0 netns {c}"));
        sh(&format!("ip -n {n} addr add 10.244.1.1/24 dev vc && ip -n {n} link set vc up"));
        sh(&format!("ip -n {c} addr add 10.244.1.2/24 dev eth0 && ip -n {c} link set eth0 up && ip -n {c} route add default via 10.244.1.1"));
        sh(&format!("ip -n {n} link add vx type veth peer name eth0 netns {x}"));
        sh(&format!("ip -n {n} addr add 192.168.50.1/24 dev vx && ip -n {n} link set vx up"));
        sh(&format!("ip -n {x} addr add 192.168.50.2/24 dev eth0 && ip -n {x} link set eth0 up && ip -n {x} route add default via 192.168.50.1"));
        // The service network must be routable for forwarding (a ClusterIP without
        // endpoints is rejected in the forward hook); no one answers there.
        sh(&format!("ip -n {n} route add 10.96.0.0/12 dev vx"));
        for (tool, file) in [("nft", "nft"), ("conntrack", "conntrack")] {
            let path = net.dir.path().join(file);
            std::fs::write(&path, format!("#!/bin/sh\nexec ip netns exec {n} {tool} \"$@\"\n")).unwrap();
            sh(&format!("chmod +x {}", path.display()));
        }
        Some(net)
    }

    fn ns(&self, n: &str) -> String {
        format!("{}-{n}", self.prefix)
    }

    fn tool(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn proxier(&self) -> Proxier<NftCommand, ConntrackCommand> {
        let cfg = RenderConfig { cluster_cidrs: vec![parse_cidr("10.244.0.0/16").unwrap()], ..Default::default() };
        Proxier::new(cfg, NftCommand::new(self.tool("nft")), ConntrackCommand::new(self.tool("conntrack")))
    }

    fn nft(&self) -> NftCommand {
        NftCommand::new(self.tool("nft"))
    }

    /// Start the echo server in backends `names`; waits until each listens.
    fn serve(&mut self, names: &[&str]) {
        let exe = std::env::current_exe().unwrap();
        for name in names {
            let mut child = Command::new("ip")
                .args(["netns", "exec", &self.ns(name)])
                .arg(&exe)
                .args(["--exact", "helper_process", "--nocapture", "--test-threads=1"])
                .env(SERVER_ENV, name)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut out = child.stdout.take().unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 256];
            let deadline = Instant::now() + Duration::from_secs(10);
            while !String::from_utf8_lossy(&seen).contains("ready") {
                assert!(Instant::now() < deadline, "server {name} did not start");
                let n = out.read(&mut buf).unwrap();
                assert!(n > 0, "server {name} exited");
                seen.extend_from_slice(&buf[..n]);
            }
            self.servers.push(child);
        }
    }

    /// `count` connections from namespace `from` to `addr`: one line each.
    fn connect(&self, from: &str, addr: &str, count: usize) -> Vec<String> {
        self.client(CLIENT_ENV, from, addr, count)
    }

    /// `count` UDP round trips from one source port in `from` to `addr`.
    fn udp(&self, from: &str, addr: &str, count: usize) -> Vec<String> {
        self.client(UDP_CLIENT_ENV, from, addr, count)
    }

    fn client(&self, var: &str, from: &str, addr: &str, count: usize) -> Vec<String> {
        let exe = std::env::current_exe().unwrap();
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(from)])
            .arg(&exe)
            .args(["--exact", "helper_process", "--nocapture", "--test-threads=1"])
            .env(var, format!("{addr},{count}"))
            .output()
            .unwrap();
        // Answers are lines starting "@@ " (libtest writes its own text around them).
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.strip_prefix("@@ ")).map(str::to_string).collect()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in ["node", "b1", "b2", "b3", "c", "x"] {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(ns)]).status();
        }
    }
}

fn count_by_backend(lines: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in lines {
        *m.entry(l.split_whitespace().next().unwrap_or("").to_string()).or_insert(0) += 1;
    }
    m
}

fn service(name: &str, ip: &str, extra: serde_json::Value) -> Service {
    let mut spec = json!({"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": 80, "targetPort": "http"}]});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec})).unwrap()
}

/// A slice for `name` with backends `(ip, ready)` on the named port 8080.
fn slice(name: &str, eps: &[(&str, bool)]) -> EndpointSlice {
    let endpoints: Vec<_> = eps.iter().map(|(ip, ready)| json!({"addresses": [ip], "conditions": {"ready": ready}})).collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-1"), "namespace": "default", "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": endpoints
    }))
    .unwrap()
}

const B1: &str = "10.244.0.11";
const B2: &str = "10.244.0.12";
const B3: &str = "10.244.0.13";

#[test]
fn vip_reaches_every_ready_backend_and_an_unready_one_stops_getting_traffic() {
    let Some(mut net) = Net::new("a") else { return };
    net.serve(&["b1", "b2"]);
    let mut p = net.proxier();
    let svc = service("web", "10.96.0.10", json!({}));
    p.sync(&desired([&svc], [&slice("web", &[(B1, true), (B2, true)])])).unwrap();
    let seen = count_by_backend(&net.connect("c", "10.96.0.10:80", 40));
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), ["b1", "b2"], "{seen:?}");
    assert!(seen["b1"] >= 5 && seen["b2"] >= 5, "both backends get a fair share: {seen:?}");
    // Pod traffic is not masqueraded: the backend sees the client pod's address.
    assert!(net.connect("c", "10.96.0.10:80", 1)[0].ends_with("10.244.1.2"));

    let s = p.sync(&desired([&svc], [&slice("web", &[(B1, true), (B2, false)])])).unwrap();
    assert!(!s.full);
    let seen = count_by_backend(&net.connect("c", "10.96.0.10:80", 20));
    assert_eq!(seen.get("b1"), Some(&20), "{seen:?}");
}

#[test]
fn node_port_from_another_namespace_is_masqueraded() {
    let Some(mut net) = Net::new("b") else { return };
    net.serve(&["b1", "b2"]);
    let mut p = net.proxier();
    let svc = service("web", "10.96.0.11", json!({"type": "NodePort", "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080}]}));
    p.sync(&desired([&svc], [&slice("web", &[(B1, true), (B2, true)])])).unwrap();
    let lines = net.connect("x", "192.168.50.1:30080", 20);
    let seen = count_by_backend(&lines);
    assert_eq!(seen.values().sum::<usize>(), 20, "{lines:?}");
    assert!(seen.contains_key("b1") && seen.contains_key("b2"), "{seen:?}");
    // The outside client is masqueraded to the node's bridge address, so replies return.
    assert!(lines.iter().all(|l| l.ends_with("10.244.0.1")), "{lines:?}");
    // The ClusterIP from outside the pod network is masqueraded too.
    sh(&format!("ip -n {} route add 10.96.0.0/12 via 192.168.50.1", net.ns("x")));
    let lines = net.connect("x", "10.96.0.11:80", 5);
    assert!(lines.iter().all(|l| l.ends_with("10.244.0.1")), "{lines:?}");
}

#[test]
fn external_ip_from_outside_is_served_and_masqueraded() {
    let Some(mut net) = Net::new("h") else { return };
    net.serve(&["b1", "b2"]);
    let mut p = net.proxier();
    let svc = service("web", "10.96.0.17", json!({"externalIPs": ["203.0.113.10"]}));
    p.sync(&desired([&svc], [&slice("web", &[(B1, true), (B2, true)])])).unwrap();
    // x routes everything through the node, which DNATs before routing.
    let lines = net.connect("x", "203.0.113.10:80", 20);
    let seen = count_by_backend(&lines);
    assert_eq!(seen.values().sum::<usize>(), 20, "{lines:?}");
    assert!(seen.contains_key("b1") && seen.contains_key("b2"), "{seen:?}");
    assert!(lines.iter().all(|l| l.ends_with("10.244.0.1")), "masqueraded: {lines:?}");
    // The address leaves the Service: no longer served.
    let svc = service("web", "10.96.0.17", json!({}));
    p.sync(&desired([&svc], [&slice("web", &[(B1, true), (B2, true)])])).unwrap();
    assert!(net.connect("x", "203.0.113.10:80", 1)[0].starts_with("ERROR"));
}

#[test]
fn session_affinity_keeps_a_client_on_one_backend() {
    let Some(mut net) = Net::new("c") else { return };
    net.serve(&["b1", "b2", "b3"]);
    let mut p = net.proxier();
    let svc = service("sticky", "10.96.0.12", json!({"sessionAffinity": "ClientIP"}));
    p.sync(&desired([&svc], [&slice("sticky", &[(B1, true), (B2, true), (B3, true)])])).unwrap();
    let seen = count_by_backend(&net.connect("c", "10.96.0.12:80", 30));
    assert_eq!(seen.len(), 1, "one backend for one client: {seen:?}");
    assert_eq!(seen.values().sum::<usize>(), 30);
}

#[test]
fn service_without_endpoints_refuses_and_hairpin_works() {
    let Some(mut net) = Net::new("d") else { return };
    net.serve(&["b1"]);
    let mut p = net.proxier();
    let empty = service("empty", "10.96.0.13", json!({}));
    let own = service("own", "10.96.0.14", json!({}));
    p.sync(&desired([&empty, &own], [&slice("empty", &[(B2, false)]), &slice("own", &[(B1, true)])])).unwrap();
    let t = Instant::now();
    assert_eq!(net.connect("c", "10.96.0.13:80", 1), ["REFUSED"]);
    assert!(t.elapsed() < Duration::from_secs(2), "refused at once, not a timeout");
    // b1 reaches itself through its Service: masqueraded, so the reply comes back.
    let lines = net.connect("b1", "10.96.0.14:80", 3);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines.iter().all(|l| l == "b1 10.244.0.1"), "{lines:?}");
}

#[test]
fn consistency_check_repairs_what_someone_else_changed() {
    let Some(mut net) = Net::new("e") else { return };
    net.serve(&["b1"]);
    let mut p = net.proxier();
    let svc = service("web", "10.96.0.15", json!({}));
    p.sync(&desired([&svc], [&slice("web", &[(B1, true)])])).unwrap();
    assert!(p.check().unwrap().clean());
    sh(&format!("ip netns exec {} nft flush map inet kapp service-ips-v4", net.ns("node")));
    assert!(net.connect("c", "10.96.0.15:80", 1)[0].starts_with("ERROR"), "the VIP is gone");
    let r = p.check().unwrap();
    assert_eq!(r.wrong_elements, 1);
    assert!(r.repaired);
    assert_eq!(net.connect("c", "10.96.0.15:80", 1).len(), 1);
    assert!(net.connect("c", "10.96.0.15:80", 1)[0].starts_with("b1"));
    // A chain added by someone else in our table is noticed too.
    sh(&format!("ip netns exec {} nft add chain inet kapp intruder", net.ns("node")));
    assert_eq!(p.check().unwrap().extra_chains, 1);
    assert!(p.check().unwrap().clean());
}

/// The ClusterIP of service `i` of many.
fn vip(i: usize) -> String {
    format!("10.96.{}.{}", 100 + i / 250, 1 + i % 250)
}

#[test]
fn ten_thousand_services_and_one_change_leaves_the_rest_alone() {
    let Some(mut net) = Net::new("f") else { return };
    net.serve(&["b1", "b2", "b3"]);
    let mut p = net.proxier();
    let n = 10_000;
    let backends = [B1, B2, B3];
    let mut services = vec![];
    let mut slices = vec![];
    for i in 0..n {
        let name = format!("s{i}");
        services.push(service(&name, &vip(i), json!({})));
        slices.push(slice(&name, &[(backends[i % 3], true), (backends[(i + 1) % 3], true)]));
    }
    let t = Instant::now();
    let s = p.sync(&desired(services.iter(), slices.iter())).unwrap();
    eprintln!("full sync of {n} services: {:?}, {} bytes", t.elapsed(), s.program_bytes);
    assert!(s.full);
    let mut nft = net.nft();
    assert_eq!(nft.map_elements("kapp", "service-ips-v4").unwrap().len(), n);
    let probe = format!("{}:80", vip(5000));
    let before = count_by_backend(&net.connect("c", &probe, 20));
    assert_eq!(before.values().sum::<usize>(), 20, "{before:?}");

    // Service 7 loses one of its two backends: one small transaction.
    slices[7] = slice("s7", &[(backends[7 % 3], true)]);
    let t = Instant::now();
    let s = p.sync(&desired(services.iter(), slices.iter())).unwrap();
    eprintln!("one-service change at {n}: {:?}, {} bytes", t.elapsed(), s.program_bytes);
    assert!(!s.full);
    assert_eq!(s.changed, 1);
    assert!(s.program_bytes < 2_000, "only service 7's chain: {} bytes", s.program_bytes);
    assert_eq!(nft.map_elements("kapp", "service-ips-v4").unwrap().len(), n);
    // Service 7 now goes to the one-endpoint chain with one endpoint element; the others
    // keep both of theirs.
    let vips = nft.map_elements("kapp", "service-ips-v4").unwrap();
    assert_eq!(vips[&format!("{} . tcp . 80", vip(7))], "goto lb-v4-1");
    assert_eq!(vips[&format!("{} . tcp . 80", vip(8))], "goto lb-v4-2", "others untouched");
    let eps = nft.map_elements("kapp", "service-endpoints-v4").unwrap();
    assert_eq!(eps.len(), 2 * n - 1);
    assert!(!eps.contains_key(&format!("{} . tcp . 80 . 1", vip(7))));
    let s8: BTreeSet<&str> = (0..2).map(|i| eps[&format!("{} . tcp . 80 . {i}", vip(8))].as_str()).collect();
    assert_eq!(s8, [format!("{B1} . 8080"), format!("{B3} . 8080")].iter().map(|s| s.as_str()).collect());
    assert_eq!(nft.set_elements("kapp", "hairpin-v4").unwrap().len(), 3, "one per backend");
    let vip7 = format!("{}:80", vip(7));
    let only = count_by_backend(&net.connect("c", &vip7, 10));
    assert_eq!(only.len(), 1, "{only:?}");
    let after = count_by_backend(&net.connect("c", &probe, 20));
    assert_eq!(after.values().sum::<usize>(), 20, "{after:?}");
    assert!(p.check().unwrap().clean());
}

#[test]
fn udp_flows_to_a_departed_endpoint_are_flushed() {
    let Some(mut net) = Net::new("g") else { return };
    net.serve(&["b1", "b2"]);
    let mut p = net.proxier();
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "dns", "namespace": "default"}, "spec": {
        "clusterIP": "10.96.0.16", "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}]}}))
    .unwrap();
    let udp_slice = |eps: &[(&str, bool)]| -> EndpointSlice {
        let endpoints: Vec<_> = eps.iter().map(|(ip, ready)| json!({"addresses": [ip], "conditions": {"ready": ready}})).collect();
        serde_json::from_value(json!({"metadata": {"name": "dns-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "dns"}},
            "addressType": "IPv4", "ports": [{"name": "dns", "port": 5353, "protocol": "UDP"}], "endpoints": endpoints}))
        .unwrap()
    };
    p.sync(&desired([&svc], [&udp_slice(&[(B1, true), (B2, true)])])).unwrap();
    let first = count_by_backend(&net.udp("c", "10.96.0.16:53", 5));
    assert_eq!(first.len(), 1, "one flow, one backend: {first:?}");
    let (pinned, _) = first.iter().next().unwrap();
    // The pinned backend turns unready (its server still answers): without the conntrack
    // flush the flow would keep going to it.
    let (gone, stays) = if pinned == "b1" { (B1, "b2") } else { (B2, "b1") };
    let eps: Vec<(&str, bool)> = [B1, B2].iter().map(|ip| (*ip, *ip != gone)).collect();
    p.sync(&desired([&svc], [&udp_slice(&eps)])).unwrap();
    let after = count_by_backend(&net.udp("c", "10.96.0.16:53", 3));
    assert_eq!(after.get(stays), Some(&3), "{after:?}");
}
