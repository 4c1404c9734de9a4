//! Scheduling throughput, shaped like kube-scheduler's SchedulingBasic benchmark: empty
//! nodes of 4 cpu / 32Gi / 110 pods, pods of 100m / 128Mi, half of them owned by one of
//! 100 ReplicaSets (so selector spreading works). Each pod is scheduled and assumed, as
//! the loop will; the time is the decision and the bookkeeping, not the API calls.
//!
//! Run: `cargo bench -p kapp-scheduler`. Writes `tests/bench/results/scheduler.md`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kapp_scheduler::{Config, Scheduler};
use serde_json::json;

const PODS: usize = 10_000;
const OWNERS: usize = 100;
const ZONES: usize = 3;

fn node(i: usize) -> Node {
    let name = format!("node-{i:05}");
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "topology.kubernetes.io/zone": format!("zone-{}", i % ZONES),
        }},
        "status": {
            "allocatable": {"cpu": "4", "memory": "32Gi", "pods": "110"},
            "capacity": {"cpu": "4", "memory": "32Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}],
            "images": [{"names": ["registry.k8s.io/pause:3.10"], "sizeBytes": 320_000}],
        },
    }))
    .unwrap()
}

/// What each run varies.
#[derive(Clone, Copy)]
struct Shape {
    nodes: usize,
    /// `Some(100)`: search every node instead of kube-scheduler's adaptive share.
    percentage: Option<u32>,
    /// Owned pods carry required anti-affinity against their ReplicaSet's other pods on
    /// the same node, which makes every decision look at every placed pod.
    anti_affinity: bool,
}

impl Shape {
    fn describe(&self) -> String {
        let search = match self.percentage {
            Some(p) => format!("{p}% of nodes"),
            None => "adaptive".to_owned(),
        };
        let anti = if self.anti_affinity { ", owned pods with hostname anti-affinity" } else { "" };
        format!("{search}{anti}")
    }
}

fn pod(i: usize, anti_affinity: bool) -> Pod {
    let owned = i.is_multiple_of(2);
    let mut meta = json!({"name": format!("pod-{i:05}"), "namespace": "bench", "labels": {"app": "bench"}});
    if owned {
        let owner = i / 2 % OWNERS;
        meta["ownerReferences"] = json!([{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("rs-{owner}"),
            "uid": format!("uid-{owner}"), "controller": true,
        }]);
        meta["labels"]["rs"] = json!(format!("rs-{owner}"));
    }
    let affinity = match (anti_affinity, owned) {
        (true, true) => json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
            "labelSelector": {"matchLabels": {"rs": meta["labels"]["rs"].clone()}},
            "topologyKey": "kubernetes.io/hostname",
        }]}}),
        _ => json!(null),
    };
    serde_json::from_value(json!({
        "metadata": meta,
        "spec": {"affinity": affinity, "containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10",
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]},
    }))
    .unwrap()
}

struct Run {
    shape: Shape,
    load: Duration,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    max_pods_per_node: usize,
}

fn run(shape: Shape) -> Run {
    let node_objects: Vec<Node> = (0..shape.nodes).map(node).collect();
    let pods: Vec<Pod> = (0..PODS).map(|i| pod(i, shape.anti_affinity)).collect();
    let mut scheduler =
        Scheduler::new(Config { percentage_of_nodes_to_score: shape.percentage, ..Config::default() });
    let started = Instant::now();
    for n in &node_objects {
        scheduler.snapshot_mut().upsert_node(n).unwrap();
    }
    let load = started.elapsed();

    let mut latencies = Vec::with_capacity(PODS);
    let started = Instant::now();
    for p in &pods {
        let one = Instant::now();
        let chosen = scheduler.schedule(p).unwrap_or_else(|e| panic!("{e}"));
        scheduler.snapshot_mut().assume(p, &chosen).unwrap();
        latencies.push(one.elapsed());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let max_pods_per_node = node_objects
        .iter()
        .map(|n| scheduler.snapshot().requested(n.metadata.name.as_deref().unwrap()).unwrap().1)
        .max()
        .unwrap_or(0);
    Run {
        shape,
        load,
        elapsed,
        p50: latencies[PODS / 2],
        p99: latencies[PODS * 99 / 100],
        max_pods_per_node,
    }
}

fn shell(command: &str) -> String {
    std::process::Command::new("sh")
        .args(["-c", command])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn main() {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu_model = shell("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2");
    let load_before = shell("cut -d' ' -f1-3 /proc/loadavg");
    let shapes = [
        Shape { nodes: 1_000, percentage: None, anti_affinity: false },
        Shape { nodes: 5_000, percentage: None, anti_affinity: false },
        Shape { nodes: 5_000, percentage: Some(100), anti_affinity: false },
        Shape { nodes: 5_000, percentage: None, anti_affinity: true },
    ];
    let runs: Vec<Run> = shapes.into_iter().map(run).collect();
    let load_after = shell("cut -d' ' -f1-3 /proc/loadavg");

    let mut table = String::new();
    writeln!(table, "| nodes | search, pods | pods | pods/s | p50 µs/pod | p99 µs/pod | most pods on a node | loading nodes ms |").unwrap();
    writeln!(table, "|---:|---|---:|---:|---:|---:|---:|---:|").unwrap();
    for r in &runs {
        let rate = PODS as f64 / r.elapsed.as_secs_f64();
        let (nodes, shape) = (r.shape.nodes, r.shape.describe());
        println!("{nodes} nodes, {shape}: {PODS} pods in {:.2?} = {rate:.0} pods/s (p50 {:.2?}, p99 {:.2?})", r.elapsed, r.p50, r.p99);
        writeln!(
            table,
            "| {nodes} | {shape} | {PODS} | {rate:.0} | {} | {} | {} | {} |",
            r.p50.as_micros(),
            r.p99.as_micros(),
            r.max_pods_per_node,
            r.load.as_millis()
        )
        .unwrap();
    }
    let report = format!(
        "# Scheduler benchmark: throughput of decisions\n\n\
         - command: `CARGO_TARGET_DIR=/var/cache/kapp/target-sched nice cargo bench -p kapp-scheduler`\n\
         - date: {date}\n\
         - machine: {cpus} CPUs ({cpu_model}), shared with other work; load average (1/5/15 min) at start: {load_before}; at end: {load_after}\n\
         - versions: git {git}; {rustc}; build profile: bench (release)\n\
         - shape: SchedulingBasic-like. Empty nodes of 4 cpu / 32Gi / 110 pods in 3 zones; {PODS} pods of \
         100m / 128Mi, half owned by one of {OWNERS} ReplicaSets. Each pod is scheduled (all filters and scores; \
         \"adaptive\" is kube-scheduler's default percentageOfNodesToScore, 42% of 1,000 and 10% of 5,000 nodes) \
         and assumed onto its node, one after another on one \
         thread. No API calls: this is the decision and its bookkeeping only.\n\
         - comparison: kube-scheduler's published floor for SchedulingBasic at 5,000 nodes is 680 pods/s \
         (its scheduler_perf thresholds, which include its binding path against a test apiserver); kapp's aim is \
         at least 1,000 pods/s.\n\n\
         ## Results\n\n{table}",
        date = shell("date -u '+%Y-%m-%d %H:%M:%S UTC'"),
        git = shell("git rev-parse --short HEAD"),
        rustc = shell("rustc --version"),
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let path = root.canonicalize().unwrap().join("tests/bench/results/scheduler.md");
    std::fs::write(&path, report).unwrap();
    println!("wrote {}", path.display());
}
