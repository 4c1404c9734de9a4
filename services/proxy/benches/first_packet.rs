//! First-packet latency at 10,000 services: how long a new TCP connection to a Service
//! VIP takes (connect() = SYN → DNAT → backend → SYN/ACK) when the node's rules are
//! kapp's nftables table (verdict maps: one lookup) versus an iptables chain of the same
//! 10,000 services (kube-proxy's iptables mode: one rule per service port, walked in
//! order), and with no rules at all (the backend's own address) as the floor.
//!
//! Topology (namespaces the benchmark creates and removes, root):
//!
//! ```text
//!  client c (10.244.1.2, gw .1) ── node (rules, forwarding) ── backend s (10.244.0.11:8080, gw .1)
//! ```
//!
//! The client and the backend are this benchmark's binary again (`ip netns exec`),
//! switched on by environment variables. Each connection is new (a fresh conntrack
//! entry), so every one pays the rule lookup; the backend closes first, so the client
//! keeps no TIME_WAIT sockets.
//!
//! Run: `cargo bench -p kapp-proxy --bench first_packet` (root; needs `iptables`).
//! Writes `tests/bench/results/first-packet.md`.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kapp_proxy::{desired, parse_cidr, ConntrackCommand, NftCommand, Proxier, RenderConfig};
use serde_json::json;

const SERVICES: usize = 10_000;
const CONNECTIONS: usize = 3_000;
const SERVER_ENV: &str = "KAPP_FIRST_PACKET_SERVER";
const CLIENT_ENV: &str = "KAPP_FIRST_PACKET_CLIENT";
const BACKEND: &str = "10.244.0.11";
const DIRECT: &str = "10.244.0.12";

fn vip(i: usize) -> String {
    format!("10.96.{}.{}", 100 + i / 250, 1 + i % 250)
}

/// Service `i`'s endpoint: the real backend for the ones the benchmark connects to,
/// addresses nobody answers on for the rest.
fn endpoint(i: usize) -> String {
    if i == 0 || i == SERVICES - 1 {
        BACKEND.into()
    } else {
        format!("10.245.{}.{}", i / 250, 1 + i % 250)
    }
}

fn service(i: usize) -> Service {
    let ip = vip(i);
    serde_json::from_value(json!({"metadata": {"name": format!("s{i}"), "namespace": "default"},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))
    .unwrap()
}

fn slice(i: usize) -> EndpointSlice {
    serde_json::from_value(json!({"metadata": {"name": format!("s{i}-1"), "namespace": "default", "labels": {"kubernetes.io/service-name": format!("s{i}")}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": [{"addresses": [endpoint(i)]}]}))
    .unwrap()
}

/// The helper roles; returns true when this process was one.
fn helper() -> bool {
    if std::env::var(SERVER_ENV).is_ok() {
        let l = TcpListener::bind("0.0.0.0:8080").expect("bind 8080");
        println!("ready");
        for s in l.incoming().flatten() {
            drop(s);
        }
        return true;
    }
    if let Ok(spec) = std::env::var(CLIENT_ENV) {
        // "<addr>,<count>": one line per connection, its connect() time in ns.
        let (addr, count) = spec.split_once(',').unwrap();
        let addr: SocketAddr = addr.parse().unwrap();
        let mut out = String::new();
        for _ in 0..count.parse::<usize>().unwrap() {
            let t = Instant::now();
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
            let took = t.elapsed();
            let _ = s.read(&mut [0u8; 1]);
            let _ = s.flush();
            let _ = writeln!(out, "{}", took.as_nanos());
        }
        std::io::stdout().write_all(out.as_bytes()).unwrap();
        return true;
    }
    false
}

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(st.success(), "{cmd}");
}

fn have(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool}")).stdout(Stdio::null()).status().is_ok_and(|s| s.success())
}

struct Net {
    p: String,
    server: Option<Child>,
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        for n in ["c", "node", "s"] {
            let _ = Command::new("ip").args(["netns", "del", &format!("{}{n}", self.p)]).status();
        }
    }
}

/// Latencies of `CONNECTIONS` new connections to `addr` from the client namespace.
fn connect_times(net: &Net, addr: &str) -> Vec<Duration> {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &format!("{}c", net.p)])
        .arg(&exe)
        .env(CLIENT_ENV, format!("{addr},{CONNECTIONS}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "client to {addr}: {}", String::from_utf8_lossy(&out.stderr));
    let mut v: Vec<Duration> = String::from_utf8_lossy(&out.stdout).lines().map(|l| Duration::from_nanos(l.parse().unwrap())).collect();
    assert_eq!(v.len(), CONNECTIONS);
    v.sort();
    v
}

struct Row {
    rules: &'static str,
    target: String,
    median: Duration,
    p90: Duration,
    p99: Duration,
}

fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

fn measure(net: &Net, rows: &mut Vec<Row>, rules: &'static str, target: String, addr: &str) {
    // Let the kernel finish with the last ruleset change (freeing a replaced table runs
    // in the background), warm up (ARP, route caches), then measure.
    std::thread::sleep(Duration::from_secs(5));
    let _ = connect_times(net, addr);
    let v = connect_times(net, addr);
    let row = Row { rules, target, median: v[v.len() / 2], p90: v[v.len() * 9 / 10], p99: v[v.len() * 99 / 100] };
    eprintln!("{rules} / {}: median {} µs, p99 {} µs", row.target, us(row.median), us(row.p99));
    rows.push(row);
}

fn main() {
    if helper() || std::env::args().any(|a| a == "--list") {
        return;
    }
    let root = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false);
    if !root {
        eprintln!("the first-packet benchmark needs root (network namespaces); skipped");
        return;
    }
    for tool in ["nft", "iptables-restore", "ip"] {
        if !have(tool) {
            eprintln!("{tool} is missing (apt-get install nftables iptables iproute2): skipped");
            return;
        }
    }
    let p = format!("kfp{}", std::process::id() % 100_000);
    let mut net = Net { p: p.clone(), server: None };
    let (c, node, s) = (format!("{p}c"), format!("{p}node"), format!("{p}s"));
    for n in [&c, &node, &s] {
        sh(&format!("ip netns add {n} && ip -n {n} link set lo up"));
    }
    sh(&format!("ip link add {p}a netns {c} type veth peer name nc netns {node}"));
    sh(&format!("ip link add {p}b netns {s} type veth peer name ns netns {node}"));
    sh(&format!("ip -n {c} link set {p}a name eth0 && ip -n {c} addr add 10.244.1.2/24 dev eth0 && ip -n {c} link set eth0 up && ip -n {c} route add default via 10.244.1.1"));
    sh(&format!("ip -n {s} link set {p}b name eth0 && ip -n {s} addr add {BACKEND}/24 dev eth0 && ip -n {s} link set eth0 up && ip -n {s} route add default via 10.244.0.1"));
    sh(&format!("ip -n {node} addr add 10.244.1.1/24 dev nc && ip -n {node} link set nc up && ip -n {node} addr add 10.244.0.1/24 dev ns && ip -n {node} link set ns up"));
    sh(&format!("ip netns exec {node} sysctl -qw net.ipv4.ip_forward=1"));
    let exe = std::env::current_exe().unwrap();
    let mut server = Command::new("ip").args(["netns", "exec", &s]).arg(&exe).env(SERVER_ENV, "1").stdout(Stdio::piped()).spawn().unwrap();
    let mut ready = [0u8; 6];
    server.stdout.take().unwrap().read_exact(&mut ready).unwrap();
    net.server = Some(server);

    let mut rows = vec![];
    // The direct connections go to a second address of the backend: the node tracks no
    // connections while it has no NAT rules, and the backend's TIME_WAIT sockets of
    // untracked connections would otherwise collide with the NATed ones that follow.
    sh(&format!("ip -n {s} addr add {DIRECT}/24 dev eth0"));
    measure(&net, &mut rows, "none", "the backend's own address".into(), &format!("{DIRECT}:8080"));

    // kapp: the proxier programs its table in the node namespace.
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("nft");
    std::fs::write(&wrapper, format!("#!/bin/sh\nexec ip netns exec {node} nft \"$@\"\n")).unwrap();
    sh(&format!("chmod +x {}", wrapper.display()));
    let services: Vec<Service> = (0..SERVICES).map(service).collect();
    let slices: Vec<EndpointSlice> = (0..SERVICES).map(slice).collect();
    let cfg = RenderConfig { cluster_cidrs: vec![parse_cidr("10.244.0.0/16").unwrap()], ..Default::default() };
    let mut proxier = Proxier::new(cfg, NftCommand::new(&wrapper), ConntrackCommand::new("true"));
    proxier.full_sync(&desired(services.iter(), slices.iter())).unwrap();
    let first = format!("{}:80", vip(0));
    let last = format!("{}:80", vip(SERVICES - 1));
    measure(&net, &mut rows, "kapp nftables (verdict maps)", "first service".into(), &first);
    measure(&net, &mut rows, "kapp nftables (verdict maps)", format!("service #{SERVICES}"), &last);
    sh(&format!("ip netns exec {node} nft delete table inet kapp"));

    // iptables: one rule per service in one chain, as kube-proxy's iptables mode walks
    // KUBE-SERVICES. The proxier's table is gone, so only these rules are in the path.
    let mut rules = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:POSTROUTING ACCEPT [0:0]\n-A PREROUTING -j KUBE-SERVICES\n");
    for i in 0..SERVICES {
        let _ = writeln!(rules, "-A KUBE-SERVICES -d {}/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination {}:8080", vip(i), endpoint(i));
    }
    rules.push_str("COMMIT\n");
    let mut restore = Command::new("ip").args(["netns", "exec", &node, "iptables-restore"]).stdin(Stdio::piped()).spawn().unwrap();
    restore.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
    assert!(restore.wait().unwrap().success(), "iptables-restore");
    let variant = Command::new("iptables").arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    measure(&net, &mut rows, "iptables chain", "first service".into(), &first);
    measure(&net, &mut rows, "iptables chain", format!("service #{SERVICES}"), &last);

    let kernel = Command::new("uname").arg("-r").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    let mut md = String::new();
    let _ = writeln!(md, "# Proxy: first-packet latency at {SERVICES} services\n");
    let _ = writeln!(md, "Command: `cargo bench -p kapp-proxy --bench first_packet` (as root). Kernel {kernel}, {variant}.\n");
    let _ = writeln!(md, "A client namespace opens {CONNECTIONS} new TCP connections, one after another, to a Service VIP routed through a node namespace that holds the rules; the time is connect() (SYN → DNAT → backend → SYN/ACK). Every connection is a new conntrack entry, so each pays the rule lookup. The iptables rows are one `-d VIP -p tcp --dport 80 -j DNAT` rule per service in one chain (kube-proxy's iptables mode walks KUBE-SERVICES the same way); the kapp rows are the proxier's own table (one verdict-map lookup).\n");
    let _ = writeln!(md, "| rules | connecting to | median (µs) | p90 (µs) | p99 (µs) |");
    let _ = writeln!(md, "| --- | --- | ---: | ---: | ---: |");
    for r in &rows {
        let _ = writeln!(md, "| {} | {} | {} | {} | {} |", r.rules, r.target, us(r.median), us(r.p90), us(r.p99));
    }
    let find = |rules: &str, target: &str| rows.iter().find(|r| r.rules == rules && r.target == target).map(|r| r.median.as_secs_f64());
    let last_name = format!("service #{SERVICES}");
    if let (Some(k), Some(i), Some(none)) = (find("kapp nftables (verdict maps)", &last_name), find("iptables chain", &last_name), find("none", "the backend's own address")) {
        let _ = writeln!(
            md,
            "\nAt the last of {SERVICES} services, kapp / iptables = {:.2} (median connect time). Over the direct connection: kapp {:+.0} µs, iptables {:+.0} µs.",
            k / i,
            (k - none) * 1e6,
            (i - none) * 1e6
        );
    }

    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/bench/results/first-packet.md");
    std::fs::write(&out, &md).unwrap();
    eprint!("{md}");
    eprintln!("wrote {}", out.display());
}
