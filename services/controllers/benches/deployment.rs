//! Deployment of N replicas on simulated nodes: time from creating the Deployment until
//! every pod is Running (and Ready), through the real store, apiserver, scheduler and
//! controllers in one process, with hollow kubelets reporting pods Running at once.
//!
//!     cargo bench --workspace --bench deployment [-- <replicas> <nodes> ...]
//!
//! With no arguments: 1,000 replicas on 20 and on 100 nodes, each run in a fresh control
//! plane.
//!
//! Writes tests/bench/results/deployment.md (or $BENCH_OUT).

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kapp_testkit::hollow::{HollowConfig, HollowNode};
use kapp_testkit::{groups, ControlPlane};
use kube::api::{ListParams, PostParams};
use kube::Api;
use serde_json::json;

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

struct Row {
    replicas: i32,
    nodes: usize,
    first: Duration,
    half: Duration,
    all: Duration,
    p50: f64,
    p99: f64,
    per_node: (usize, usize),
    rss_mib: u64,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).init();
    }
    let args: Vec<usize> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).map(|a| a.parse().expect("arguments: <replicas> <nodes> pairs")).collect();
    let runs: Vec<(i32, usize)> = if args.is_empty() { vec![(1000, 20), (1000, 100)] } else { args.chunks(2).map(|c| (c[0] as i32, *c.get(1).unwrap_or(&100))).collect() };
    let mut rows = Vec::new();
    for (replicas, nodes) in &runs {
        rows.push(run(*replicas, *nodes).await);
    }
    let profile = if cfg!(debug_assertions) { "dev (unoptimised: numbers are pessimistic)" } else { "bench (release)" };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let argv = runs.iter().map(|(r, n)| format!("{r} {n}")).collect::<Vec<_>>().join(" ");
    let mut report = format!(
        "# Deployment on hollow nodes\n\n\
         - command: `cargo bench --workspace --bench deployment -- {argv}` (no arguments: the same runs)\n\
         - what: one process runs a one-member store, the apiserver, the scheduler, the controllers and the hollow kubelets (each: a pod watch, a Lease heartbeat every 10 s, pods reported Running/Ready as soon as they are bound). Time from creating the Deployment to every pod Running. Real API traffic: every pod is created, bound, and has its status written through the apiserver into the store. Each row is a fresh control plane in the same process (RSS is the process's after that row).\n\
         - machine: {} CPUs, shared with other work (load average at end: {}); build profile: {profile}\n\
         - comparison: Kubernetes' density SLO is pod startup p99 ≤ 5 s; kube-scheduler's scheduler_perf floor is 680 pods/s at 5,000 nodes. No peer control plane runs on this machine, so no side-by-side ratio.\n\n\
         | replicas | nodes | first Running s | half Running s | all Running s | pods/s | create→Ready p50 s | p99 s | pods per node min/max | process RSS MiB |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---|---:|\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    );
    for r in &rows {
        report += &format!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {}/{} | {} |\n",
            r.replicas,
            r.nodes,
            r.first.as_secs_f64(),
            r.half.as_secs_f64(),
            r.all.as_secs_f64(),
            f64::from(r.replicas) / r.all.as_secs_f64(),
            r.p50,
            r.p99,
            r.per_node.0,
            r.per_node.1,
            r.rss_mib
        );
    }
    print!("{report}");
    let out = std::env::var("BENCH_OUT").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/bench/results/deployment.md").to_string());
    std::fs::write(&out, report).unwrap();
    eprintln!("wrote {out}");
    std::process::exit(0);
}

async fn run(replicas: i32, node_count: usize) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), 1).await;
    let admin = cp.client("bench", &[groups::CONTROLLERS]).await;
    let mut nodes = Vec::new();
    for i in 0..node_count {
        let cfg = HollowConfig { subnet: (i % 250) as u8, heartbeat: Duration::from_secs(10), ..Default::default() };
        nodes.push(HollowNode::start(&cp, &format!("node-{i}"), cfg).await);
    }
    let sched = cp.client("kapp-scheduler", &[groups::SCHEDULER]).await;
    let ctl = cp.client("kapp-controllers", &[groups::CONTROLLERS]).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let s1 = tokio::spawn(kapp_controllers::run_scheduler(sched, Default::default(), "bench", until(stopped.clone())));
    let s2 = tokio::spawn(kapp_controllers::run_controllers(ctl, Default::default(), "bench", until(stopped)));
    tokio::time::sleep(Duration::from_secs(3)).await; // leases taken, caches synced
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "bench", "namespace": "default"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "bench"}},
                 "template": {"metadata": {"labels": {"app": "bench"}}, "spec": {"containers": [{"name": "c", "image": "bench:1", "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let start = Instant::now();
    Api::<Deployment>::namespaced(admin.clone(), "default").create(&PostParams::default(), &d).await.unwrap();
    let mut first_running = None;
    let mut half = None;
    let mut last_report = Instant::now();
    let all = loop {
        let list = pods.list(&ListParams::default().labels("app=bench")).await.unwrap().items;
        let running = list.iter().filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")).count();
        if running > 0 && first_running.is_none() {
            first_running = Some(start.elapsed());
        }
        if running * 2 >= replicas as usize && half.is_none() {
            half = Some(start.elapsed());
        }
        if running >= replicas as usize {
            break start.elapsed();
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            let bound = list.iter().filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some())).count();
            eprintln!("{:>5.1} s: {} pods, {bound} bound, {running} Running", start.elapsed().as_secs_f64(), list.len());
            last_report = Instant::now();
        }
        assert!(start.elapsed() < Duration::from_secs(600), "not all Running after 10 min: {running}/{replicas}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Per pod: creation → Running (the Ready condition's transition time), in seconds.
    let list = pods.list(&ListParams::default().labels("app=bench")).await.unwrap().items;
    let mut lat: Vec<f64> = list
        .iter()
        .filter_map(|p| {
            let created = p.metadata.creation_timestamp.as_ref()?.0;
            let ready = p.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")?.last_transition_time.as_ref()?.0;
            Some(ready.duration_since(created).as_secs_f64())
        })
        .collect();
    let (p50, p99) = (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99));
    let per_node = {
        let mut m = std::collections::HashMap::<String, usize>::new();
        for p in &list {
            *m.entry(p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default()).or_default() += 1;
        }
        (m.values().min().copied().unwrap_or(0), m.values().max().copied().unwrap_or(0))
    };
    drop(nodes);
    tokio::time::sleep(Duration::from_millis(300)).await; // the aborted hollow tasks end
    let _ = stop.send(true);
    let _ = tokio::join!(s1, s2);
    cp.shutdown().await;
    Row { replicas, nodes: node_count, first: first_running.unwrap_or_default(), half: half.unwrap_or_default(), all, p50, p99, per_node, rss_mib: rss_kib() / 1024 }
}
