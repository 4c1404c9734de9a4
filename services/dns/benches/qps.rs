//! DNS queries per second: kapp's server against knot (Debian's `knot`) serving the same
//! zone, each pinned to one core, loaded by `dnsperf` (Debian's `dnsperf`) pinned to
//! another. The zone: 1,000 ClusterIP Services (A records under `cluster.local`); the
//! queries: those names plus 10% that do not exist (NXDOMAIN).
//!
//! Run: `cargo bench -p kapp-dns` (needs `dnsperf`, `knotd`, `taskset`). Writes
//! `tests/bench/results/dns.md`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kapp_dns::{records, DnsServer, Upstreams, ZoneConfig};
use serde_json::json;

const SERVICES: usize = 1_000;
const SECONDS: u32 = 10;
const ROUNDS: usize = 3;
const SERVE_ENV: &str = "KAPP_DNS_BENCH_SERVE";

fn services() -> Vec<Service> {
    (0..SERVICES)
        .map(|i| {
            let ip = format!("10.96.{}.{}", i / 250, 1 + i % 250);
            serde_json::from_value(json!({"metadata": {"name": format!("s{i}"), "namespace": "default"},
                "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"port": 80}]}}))
            .unwrap()
        })
        .collect()
}

/// The kapp server as its own process: one thread, one core.
fn serve(port: u16) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let cfg = ZoneConfig::new("cluster.local", 5, &[]).unwrap();
        let (_server, mut zones) = DnsServer::start(cfg, format!("127.0.0.1:{port}").parse().unwrap(), &Upstreams::default()).await.unwrap();
        let s = services();
        zones.apply(&records(zones.config(), &s, [], [])).await;
        std::future::pending::<()>().await;
    });
}

fn have(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().map(|o| o.status.success()).unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_answering(port: u16) {
    for _ in 0..100 {
        let out = Command::new("dig").args(["@127.0.0.1", "-p", &port.to_string(), "+short", "+time=1", "+tries=1", "s1.default.svc.cluster.local", "A"]).output();
        // dig prints its errors to stdout too: wait for the address itself.
        if out.map(|o| String::from_utf8_lossy(&o.stdout).trim() == "10.96.0.2").unwrap_or(false) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the server on port {port} does not answer");
}

/// dnsperf against port; (queries/s, average latency ms).
fn dnsperf(port: u16, queries: &Path) -> (f64, f64) {
    let out = Command::new("taskset")
        .args(["-c", "1", "dnsperf", "-s", "127.0.0.1", "-p", &port.to_string(), "-d"])
        .arg(queries)
        .args(["-l", &SECONDS.to_string(), "-c", "4", "-q", "200"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let num = |key: &str| text.lines().find(|l| l.trim_start().starts_with(key)).and_then(|l| l.split(':').nth(1)).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok());
    let qps: f64 = num("Queries per second").unwrap_or_else(|| panic!("dnsperf: {text}"));
    assert!(qps > 0.0, "dnsperf got no answers: {text}");
    let lat = num("Average Latency (s)").map_or(0.0, |s: f64| s * 1000.0);
    (qps, lat)
}

fn main() {
    if let Ok(port) = std::env::var(SERVE_ENV) {
        serve(port.parse().unwrap());
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    for tool in ["dnsperf", "knotd", "taskset", "dig"] {
        if !have(tool) {
            eprintln!("{tool} is missing (apt-get install dnsperf knot util-linux bind9-dnsutils): skipped");
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let queries = dir.path().join("queries.txt");
    let mut q = String::new();
    for i in 0..SERVICES {
        let _ = writeln!(q, "s{i}.default.svc.cluster.local A");
        if i % 10 == 0 {
            let _ = writeln!(q, "missing{i}.default.svc.cluster.local A");
        }
    }
    std::fs::write(&queries, q).unwrap();

    // kapp, one thread pinned to core 0.
    let kport = free_port();
    let exe = std::env::current_exe().unwrap();
    let child = Command::new("taskset").args(["-c", "0"]).arg(&exe).env(SERVE_ENV, kport.to_string()).stdout(Stdio::null()).spawn().unwrap();
    let _kapp = Kill(child);
    wait_answering(kport);

    // knot, one UDP worker pinned to core 0, the same records.
    let kn = dir.path().join("knot");
    std::fs::create_dir_all(&kn).unwrap();
    let mut zone = String::from("$ORIGIN cluster.local.\n$TTL 5\n@ SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5\n@ NS ns.dns\nns.dns A 127.0.0.1\n");
    for i in 0..SERVICES {
        let _ = writeln!(zone, "s{i}.default.svc A 10.96.{}.{}", i / 250, 1 + i % 250);
    }
    std::fs::write(kn.join("cluster.local.zone"), zone).unwrap();
    let nport = free_port();
    let conf = format!(
        "server:\n    listen: 127.0.0.1@{nport}\n    rundir: {d}\n    udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\ndatabase:\n    storage: {d}\nlog:\n  - target: stderr\n    any: error\nzone:\n  - domain: cluster.local\n    file: {d}/cluster.local.zone\n",
        d = kn.display()
    );
    std::fs::write(kn.join("knot.conf"), conf).unwrap();
    let knot = Command::new("taskset").args(["-c", "0", "knotd", "-c"]).arg(kn.join("knot.conf")).stdout(Stdio::null()).spawn().unwrap();
    let _knot = Kill(knot);
    wait_answering(nport);
    // Alternate the two, ROUNDS times each, and keep each one's median run: a single run
    // of either moves by a third from one minute to the next on a shared machine.
    let (mut kapp_runs, mut knot_runs) = (vec![], vec![]);
    for round in 1..=ROUNDS {
        kapp_runs.push(dnsperf(kport, &queries));
        knot_runs.push(dnsperf(nport, &queries));
        eprintln!("round {round}: kapp {:.0} q/s, knot {:.0} q/s", kapp_runs.last().unwrap().0, knot_runs.last().unwrap().0);
    }
    let median = |mut v: Vec<(f64, f64)>| {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v[v.len() / 2]
    };
    let all = |v: &[(f64, f64)]| v.iter().map(|r| format!("{:.0}", r.0)).collect::<Vec<_>>().join(", ");
    let (kapp_all, knot_all) = (all(&kapp_runs), all(&knot_runs));
    let ((kapp_qps, kapp_lat), (knot_qps, knot_lat)) = (median(kapp_runs), median(knot_runs));

    let version = Command::new("knotd").arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    let mut md = String::new();
    let _ = writeln!(md, "# DNS: queries per second, kapp vs knot\n");
    let _ = writeln!(md, "Command: `cargo bench -p kapp-dns`. {version}; each server pinned to core 0 (kapp: one tokio thread; knot: one UDP worker), dnsperf pinned to core 1 (`-c 4 -q 200`, {SECONDS} s a run, the two servers alternating, {ROUNDS} runs each, median shown). Zone: {SERVICES} Service A records; queries: every name once per pass plus 10% NXDOMAIN.\n");
    let _ = writeln!(md, "| server | queries/s (median) | avg latency (ms) | every run |\n| --- | ---: | ---: | --- |");
    let _ = writeln!(md, "| kapp dns (hickory-server 0.26, kapp's UDP loop) | {kapp_qps:.0} | {kapp_lat:.2} | {kapp_all} |");
    let _ = writeln!(md, "| knot | {knot_qps:.0} | {knot_lat:.2} | {knot_all} |");
    let _ = writeln!(md, "\nkapp / knot = {:.2} (goal ≥ 0.5; CoreDNS publishes ~17k q/s per vCPU).", kapp_qps / knot_qps);
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/bench/results/dns.md");
    std::fs::write(&out, md).unwrap();
    eprintln!("wrote {}", out.display());
}
