//! Load generator for the apiserver on loopback, with kube-rs (HTTP/1.1 + TLS client
//! certificates, as every ecosystem client): create / get / list / update throughput with
//! p50 and p99 at a fixed concurrency; an open-loop run of 1,000 writes/s (latency counted
//! from each write's scheduled time, so a stall is not hidden); watch fan-out: 1,000
//! watchers, one write, the time until all of them have it — with the watch cache and
//! without it (every watch on its own store watch), in the same run.
//!
//!     cargo bench --workspace --bench api
//!
//! Writes tests/bench/results/api.md (or $BENCH_OUT).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kapp_apiserver::{ApiServer, ApiServerConfig, WatchCacheConfig};
use kapp_testkit::{groups, ControlPlane};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

/// Requests in flight in the closed-loop phases.
const CONCURRENCY: usize = 32;
const OBJECTS: usize = 2_000;
const GETS: usize = 10_000;
const LISTS: usize = 500;
/// Objects in the namespace each list reads.
const LIST_SIZE: usize = 100;
const RATE: u64 = 1_000;
const PACED_SECONDS: u64 = 10;
/// Writes in flight at most in the open-loop phase (the rest wait, and their wait counts).
const PACED_IN_FLIGHT: usize = 1_024;
const WATCHERS: usize = 1_000;
const FANOUT_WRITES: usize = 20;

fn cm(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "data": {"v": "0", "payload": "x".repeat(200)}})).unwrap()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

struct Row {
    what: String,
    ops: usize,
    secs: f64,
    lat_ms: Vec<f64>,
    errors: usize,
}

impl Row {
    fn line(&mut self) -> String {
        let (p50, p99, max) = (pct(&mut self.lat_ms, 0.5), pct(&mut self.lat_ms, 0.99), pct(&mut self.lat_ms, 1.0));
        format!("| {} | {} | {:.0} | {p50:.2} | {p99:.2} | {max:.1} | {} |\n", self.what, self.ops, self.ops as f64 / self.secs, self.errors)
    }
}

/// Run `n` operations, `CONCURRENCY` at a time; each returns whether it succeeded.
async fn closed_loop<F, Fut>(what: &str, n: usize, op: F) -> Row
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    let results: Vec<(f64, bool)> = futures_util::stream::iter(0..n)
        .map(|i| {
            let f = op(i);
            async move {
                let t = Instant::now();
                let ok = f.await;
                (t.elapsed().as_secs_f64() * 1e3, ok)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let secs = start.elapsed().as_secs_f64();
    let errors = results.iter().filter(|r| !r.1).count();
    Row { what: what.into(), ops: n, secs, lat_ms: results.into_iter().map(|r| r.0).collect(), errors }
}

/// `RATE` creates a second for `PACED_SECONDS`, each timed from when it was due.
async fn open_loop(cms: &Api<ConfigMap>) -> Row {
    let total = (RATE * PACED_SECONDS) as usize;
    let gate = Arc::new(tokio::sync::Semaphore::new(PACED_IN_FLIGHT));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let due = start + Duration::from_micros(i as u64 * 1_000_000 / RATE);
        tokio::time::sleep_until(due.into()).await;
        let (cms, gate) = (cms.clone(), gate.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("open");
            let ok = cms.create(&PostParams::default(), &cm(&format!("paced-{i}"), json!({"set": "paced"}))).await.is_ok();
            (due.elapsed().as_secs_f64() * 1e3, ok)
        });
    }
    let mut lat = Vec::with_capacity(total);
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        let (ms, ok) = r.expect("write task");
        lat.push(ms);
        errors += usize::from(!ok);
    }
    Row { what: format!("create, open loop at {RATE}/s"), ops: total, secs: start.elapsed().as_secs_f64(), lat_ms: lat, errors }
}

/// Per write: ms until every watcher had it, and ms until half of them had it.
struct Fanout {
    all_ms: Vec<f64>,
    median_ms: Vec<f64>,
    connect_s: f64,
}

/// `WATCHERS` watches on the namespace `ns` through `url`; `FANOUT_WRITES` writes to one object.
async fn fanout(cp: &ControlPlane, url: &str, ns: &str) -> Fanout {
    let writer: Api<ConfigMap> = Api::namespaced(cp.client_at(url, "writer", &[groups::CONTROLLERS]).await, ns);
    let made = writer.create(&PostParams::default(), &cm("target", json!({}))).await.expect("create the watched object");
    let rv = made.metadata.resource_version.unwrap();
    // Clients as distinct as real ones: a few kube-rs clients (each its own connection pool),
    // every watch its own HTTP/1.1 connection.
    let mut clients = Vec::new();
    for i in 0..8 {
        clients.push(cp.client_at(url, &format!("watcher-{i}"), &[groups::VIEWERS]).await);
    }
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::channel::<(u32, Instant)>(WATCHERS * 4);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(WATCHERS);
    let connect = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WATCHERS {
        let api: Api<ConfigMap> = Api::namespaced(clients[w % clients.len()].clone(), ns);
        let (seen_tx, ready_tx, rv) = (seen_tx.clone(), ready_tx.clone(), rv.clone());
        tasks.spawn(async move {
            let params = WatchParams::default().timeout(290);
            let mut stream = loop {
                match api.watch(&params, &rv).await {
                    Ok(s) => break s.boxed(),
                    Err(e) => {
                        eprintln!("watcher {w}: {e}; again");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            };
            let _ = ready_tx.send(()).await;
            while let Some(ev) = stream.next().await {
                if let Ok(WatchEvent::Modified(o)) = ev {
                    let v: u32 = o.data.as_ref().and_then(|d| d.get("v")).and_then(|v| v.parse().ok()).unwrap_or(0);
                    if seen_tx.send((v, Instant::now())).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    drop((seen_tx, ready_tx));
    for _ in 0..WATCHERS {
        ready_rx.recv().await.expect("every watcher opened");
    }
    let connect_s = connect.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut out = Fanout { all_ms: Vec::new(), median_ms: Vec::new(), connect_s };
    for v in 1..=FANOUT_WRITES as u32 {
        let t0 = Instant::now();
        writer.patch("target", &PatchParams::default(), &Patch::Merge(json!({"data": {"v": v.to_string()}}))).await.expect("the write");
        let mut at = Vec::with_capacity(WATCHERS);
        while at.len() < WATCHERS {
            let (got, when) = tokio::time::timeout(Duration::from_secs(60), seen_rx.recv()).await.expect("every watcher sees the write within 60 s").expect("watchers alive");
            if got == v {
                at.push(when.duration_since(t0).as_secs_f64() * 1e3);
            }
        }
        out.median_ms.push(pct(&mut at, 0.5));
        out.all_ms.push(pct(&mut at, 1.0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tasks.abort_all();
    out
}

async fn extra_apiserver(cp: &ControlPlane, watch_cache: WatchCacheConfig) -> (ApiServer, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let url = format!("https://{}", listener.local_addr().expect("address"));
    let tls = cp.store.pki.ca.issue("apiserver", &[], &["127.0.0.1"]).expect("serving certificate");
    let cfg = ApiServerConfig { tls, store: cp.store.client(), max_connections: 4096, secret_key: Some(vec![7; 32]), audit_log: None, bookmark_interval: Duration::from_secs(60), watch_cache };
    (ApiServer::start(cfg, listener).await.expect("start an apiserver"), url)
}

/// Two descriptors per watch (client and server are both in this process): lift the soft
/// limit to the hard one.
#[allow(unsafe_code)]
fn raise_fd_limit() {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), 1).await;
    let (api, url) = extra_apiserver(&cp, WatchCacheConfig::default()).await;
    let client = cp.client_at(&url, "bench", &[groups::CONTROLLERS]).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut rows = Vec::new();

    eprintln!("create {OBJECTS}");
    rows.push(closed_loop("create", OBJECTS, |i| {
        let cms = cms.clone();
        async move { cms.create(&PostParams::default(), &cm(&format!("obj-{i}"), json!({"set": format!("s{}", i % (OBJECTS / LIST_SIZE))}))).await.is_ok() }
    })
    .await);
    eprintln!("get {GETS}");
    rows.push(closed_loop("get", GETS, |i| {
        let cms = cms.clone();
        async move { cms.get(&format!("obj-{}", (i * 7919) % OBJECTS)).await.is_ok() }
    })
    .await);
    eprintln!("update {OBJECTS}");
    let current = Arc::new(cms.list(&ListParams::default().labels("set")).await.expect("list the objects").items);
    rows.push(closed_loop("update (PUT with resourceVersion)", current.len(), |i| {
        let (cms, current) = (cms.clone(), current.clone());
        async move {
            let mut o = current[i].clone();
            o.data.get_or_insert_default().insert("v".into(), "1".into());
            cms.replace(o.metadata.name.as_deref().unwrap_or_default(), &PostParams::default(), &o).await.is_ok()
        }
    })
    .await);
    eprintln!("list {LISTS}");
    rows.push(closed_loop(&format!("list {LIST_SIZE} of {OBJECTS} by label"), LISTS, |i| {
        let cms = cms.clone();
        async move { cms.list(&ListParams::default().labels(&format!("set=s{}", i % (OBJECTS / LIST_SIZE)))).await.is_ok_and(|l| l.items.len() == LIST_SIZE) }
    })
    .await);
    eprintln!("open loop {RATE}/s for {PACED_SECONDS} s");
    rows.push(open_loop(&cms).await);

    eprintln!("fan-out to {WATCHERS} watchers, cache on");
    let cached = fanout(&cp, &url, "default").await;
    api.shutdown().await;
    let (uncached_api, uncached_url) = extra_apiserver(&cp, WatchCacheConfig { max_events: 0, ..Default::default() }).await;
    eprintln!("fan-out to {WATCHERS} watchers, cache off");
    let uncached = fanout(&cp, &uncached_url, "kube-system").await;
    uncached_api.shutdown().await;
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .unwrap_or(0);
    cp.shutdown().await;

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let profile = if cfg!(debug_assertions) { "dev (unoptimised)" } else { "bench (release)" };
    let mut md = format!(
        "# Apiserver on loopback\n\n\
         - command: `cargo bench --workspace --bench api`\n\
         - what: one process runs a one-member store, the apiserver and the load generator (kube-rs clients: HTTP/1.1, TLS with client certificates, JSON), all on the same {} CPUs (load average at end: {}); build profile: {profile}; peak RSS of the whole process {} MiB. Objects: ConfigMaps of ~300 bytes. Closed loop: {CONCURRENCY} requests in flight. Every write is a replicated, fsynced store transaction.\n\
         - goals: Kubernetes' SLO, mutating p99 ≤ 1 s, is the floor; the aim is p99 ≤ 20 ms at 1,000 writes/s. No kube-apiserver runs on this machine, so the peer comparison is the watch cache against none.\n\n\
         | operation | ops | ops/s | p50 ms | p99 ms | max ms | errors |\n|---|---:|---:|---:|---:|---:|---:|\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        rss / 1024,
    );
    for r in &mut rows {
        md += &r.line();
    }
    let summary = |f: &mut Fanout| {
        let (connect, a50, a99, m50) = (f.connect_s, pct(&mut f.all_ms, 0.5), pct(&mut f.all_ms, 0.99), pct(&mut f.median_ms, 0.5));
        (connect, a50, a99, m50)
    };
    let (mut c, mut u) = (cached, uncached);
    let (cc, ca50, ca99, cm50) = summary(&mut c);
    let (uc, ua50, ua99, um50) = summary(&mut u);
    md += &format!(
        "\nWatch fan-out: {WATCHERS} watches (kube-rs, one HTTP/1.1 connection each), {FANOUT_WRITES} writes to the watched object one after another; for each write the time until half and until all of the watchers received it.\n\n\
         | apiserver | watches opened in s | half received p50 ms | all received p50 ms | all received p99 ms |\n|---|---:|---:|---:|---:|\n\
         | watch cache (one store watch per resource) | {cc:.1} | {cm50:.1} | {ca50:.1} | {ca99:.1} |\n\
         | no cache (a store watch per watcher) | {uc:.1} | {um50:.1} | {ua50:.1} | {ua99:.1} |\n\
         | ratio no cache / cache | {:.2} | {:.2} | {:.2} | {:.2} |\n",
        uc / cc,
        um50 / cm50,
        ua50 / ca50,
        ua99 / ca99,
    );
    print!("{md}");
    let out = std::env::var("BENCH_OUT").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/bench/results/api.md").to_string());
    std::fs::write(&out, md).unwrap();
    eprintln!("wrote {out}");
    std::process::exit(0);
}
