//! The kubelet on the real kernel (root only):
//!
//! 1. pod start: `<pods>` pods (100) created at a steady `<rate>` (5/s) on one kubelet that
//!    runs as a process of its own (this binary, re-executed), each timed from its create
//!    request to the watch event showing it Ready; then all deleted at once, each timed
//!    until the watch reports it gone;
//! 2. the raw container lifecycle, `<runs>` (50) times: create, start, wait and delete of
//!    `/bin/true` in a busybox root through kapp's runtime (libcontainer in the kubelet's
//!    forked helper), `runc run` and `crun run`, on the same root and the same
//!    `config.json`, rounds interleaved;
//! 3. the kubelet process's RSS/PSS and CPU time: idle, with the pods, after deleting them.
//!
//!     cargo bench --workspace --bench kubelet [-- <pods> <rate> <runs>]
//!
//! Writes tests/bench/results/kubelet.md (or $BENCH_OUT).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "kubelet/lifecycle.rs"]
mod lifecycle;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use lifecycle::{max, percentile};
use serde_json::{json, Value};

/// Set in the re-executed child: the path of its configuration (JSON).
const KUBELET_ENV: &str = "KAPP_BENCH_KUBELET";

fn main() {
    if let Some(path) = std::env::var_os(KUBELET_ENV) {
        kubelet_process(Path::new(&path));
        return;
    }
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIP kubelet bench: needs root (namespaces, mounts, cgroups)");
        return;
    }
    let args: Vec<f64> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).map(|a| a.parse().expect("arguments: <pods> <rate> <runs>")).collect();
    let pods = args.first().map_or(100, |n| *n as usize);
    let rate = args.get(1).copied().unwrap_or(5.0);
    let runs = args.get(2).map_or(50, |n| *n as usize);
    common::install_missing(&[("runc", "runc"), ("crun", "crun"), ("docker-registry", "docker-registry"), ("/bin/busybox", "busybox-static")]);

    // Before any thread exists: the lifecycle runs in a forked child (see `lifecycle_child`).
    let raw = lifecycle::lifecycle_child(runs);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let start = rt.block_on(pod_start(pods, rate));
    let report = report(pods, rate, runs, &raw, &start);
    print!("{report}");
    let out = std::env::var("BENCH_OUT").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/bench/results/kubelet.md").to_string());
    std::fs::write(&out, report).unwrap();
    eprintln!("wrote {out}");
    std::process::exit(0);
}

// ---------------------------------------------------------------- 1. pod start, 3. memory

/// The kubelet as its own process: this binary with [`KUBELET_ENV`] naming its
/// configuration; "ready" on stdout once started; SIGTERM ends it (cleaning up, like
/// `kapp kubelet --clean-on-exit`).
fn kubelet_process(config: &Path) {
    let v: Value = serde_json::from_slice(&std::fs::read(config).expect("kubelet config")).unwrap();
    let s = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("kubelet config: {k}")).to_string();
    let identity = kapp_tls::Pem { ca: s("ca"), cert: s("cert"), key: s("key") };
    let mut cfg = kapp_kubelet::Config::new(&s("node_name"), &s("apiserver"), identity, Path::new(&s("state_dir")));
    cfg.pod_cidr = s("pod_cidr");
    cfg.node_ip = s("node_ip").parse().unwrap();
    cfg.node_netns = Some(s("node_netns"));
    cfg.netns_prefix = s("netns_prefix");
    cfg.cgroup_parent = s("cgroup_parent");
    cfg.registry.insecure = vec![s("registry")];
    cfg.listen = Some("127.0.0.1:0".parse().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        let kubelet = kapp_kubelet::Kubelet::start(cfg).await.expect("kubelet starts");
        println!("ready");
        std::io::stdout().flush().unwrap();
        term.recv().await;
        kubelet.shutdown_and_clean().await;
    });
    std::process::exit(0);
}

/// A process's memory (`/proc/<pid>/smaps_rollup`) and CPU time.
#[derive(Clone, Copy, Default)]
struct Usage {
    rss_mib: f64,
    pss_mib: f64,
    threads: u64,
    cpu_s: f64,
}

fn usage(pid: u32) -> Usage {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let kib = |key: &str| rollup.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()).unwrap_or(f64::NAN);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let threads = status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|n| n.trim().parse().ok()).unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: state is the 3rd field, utime the 14th.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    let cpu = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    Usage { rss_mib: kib("Rss:") / 1024.0, pss_mib: kib("Pss:") / 1024.0, threads, cpu_s: (cpu(11) + cpu(12)) / ticks }
}

struct PodStart {
    /// Create request → Ready, seconds, per pod.
    ready_s: Vec<f64>,
    /// First create → last Ready.
    all_ready_s: f64,
    /// Delete request → gone, per pod; and first delete → last gone.
    gone_s: Vec<f64>,
    all_gone_s: f64,
    idle: Usage,
    loaded: Usage,
    after: Usage,
    /// Kubelet CPU seconds while starting / deleting the pods.
    cpu_start_s: f64,
    cpu_delete_s: f64,
    span_start_s: f64,
    span_delete_s: f64,
}

#[derive(Debug)]
enum Seen {
    Ready,
    Gone,
}

fn is_ready(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Every pod of `api` that turns Ready or goes away, with when this process heard of it.
fn watch_pods(api: Api<Pod>, mut rv: String, tx: tokio::sync::mpsc::UnboundedSender<(String, Seen, Instant)>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !tx.is_closed() {
            let stream = match api.watch(&WatchParams::default().timeout(290), &rv).await {
                Ok(s) => s.boxed(),
                Err(e) => {
                    eprintln!("watch: {e}; again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let mut stream = stream;
            while let Some(ev) = stream.next().await {
                let now = Instant::now();
                match ev {
                    Ok(WatchEvent::Added(p)) | Ok(WatchEvent::Modified(p)) => {
                        rv = p.metadata.resource_version.clone().unwrap_or(rv);
                        if is_ready(&p) {
                            let _ = tx.send((p.metadata.name.unwrap_or_default(), Seen::Ready, now));
                        }
                    }
                    Ok(WatchEvent::Deleted(p)) => {
                        rv = p.metadata.resource_version.clone().unwrap_or(rv);
                        let _ = tx.send((p.metadata.name.unwrap_or_default(), Seen::Gone, now));
                    }
                    Ok(WatchEvent::Bookmark(b)) => rv = b.metadata.resource_version,
                    Ok(WatchEvent::Error(e)) => {
                        eprintln!("watch: {e:?}");
                        assert_ne!(e.code, 410, "the watch fell behind the store's history");
                        break;
                    }
                    Err(e) => {
                        eprintln!("watch: {e}");
                        break;
                    }
                }
            }
        }
    })
}

/// Wait (5 min at most) until every pod of `sent` was seen Ready (or gone); seconds from
/// each one's request, and from `begin` to the last.
async fn collect(rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, Seen, Instant)>, sent: &HashMap<String, Instant>, ready: bool, begin: Instant) -> (Vec<f64>, f64) {
    let timeout = Duration::from_secs(300);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = HashMap::new();
    while seen.len() < sent.len() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((name, kind, at))) => {
                if sent.contains_key(&name) && matches!(kind, Seen::Ready) == ready {
                    seen.entry(name).or_insert(at);
                }
            }
            Ok(None) => panic!("the pod watch ended"),
            Err(_) => panic!("after {timeout:?} only {} of {} pods were {}", seen.len(), sent.len(), if ready { "Ready" } else { "gone" }),
        }
    }
    let each = sent.iter().map(|(name, at)| seen[name].duration_since(*at).as_secs_f64()).collect();
    (each, seen.values().max().map_or(0.0, |last| last.duration_since(begin).as_secs_f64()))
}

/// One request per name, `every` apart (open loop) or all at once; when each was sent.
async fn send_all<F, R>(names: impl IntoIterator<Item = String>, every: Option<Duration>, request: F) -> HashMap<String, Instant>
where
    F: Fn(String) -> R,
    R: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let mut ticker = every.map(tokio::time::interval);
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent = HashMap::new();
    for name in names {
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        sent.insert(name.clone(), Instant::now());
        tasks.spawn(request(name));
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("request task").expect("request");
    }
    sent
}

async fn pod_start(pods: usize, rate: f64) -> PodStart {
    let node = common::Node::without_kubelet("kbench", None, |_| {}).await;
    let cp = node.cp.as_ref().unwrap();
    let config = json!({
        "node_name": node.cfg.node_name, "apiserver": cp.url,
        "ca": node.cfg.identity.ca, "cert": node.cfg.identity.cert, "key": node.cfg.identity.key,
        "state_dir": node.state_dir, "pod_cidr": node.cfg.pod_cidr, "node_ip": node.cfg.node_ip.to_string(),
        "node_netns": node.netns.0, "netns_prefix": node.cfg.netns_prefix, "cgroup_parent": node.cfg.cgroup_parent,
        "registry": node.registry.addr.to_string(),
    });
    let config_path: PathBuf = node.state_dir.with_file_name("kubelet.json");
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap()).env(KUBELET_ENV, &config_path).stdin(Stdio::null()).stdout(Stdio::piped()).kill_on_drop(true).spawn().expect("start the kubelet process");
    let pid = child.id().unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(60), tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line)).await.expect("the kubelet starts within 60 s").unwrap();
    assert_eq!(line.trim(), "ready", "the kubelet process: {line:?}");

    // The node Ready, and the image pulled by one pod started and deleted first.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(node.client.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !nodes.get_opt(&node.cfg.node_name).await.unwrap().and_then(|n| n.status?.conditions).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")) {
        assert!(Instant::now() < deadline, "the node never became Ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pod = |name: &str| -> Pod {
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "labels": {"app": "kbench"}}, "spec": {
            "nodeName": node.cfg.node_name, "terminationGracePeriodSeconds": 10,
            "containers": [{"name": "main", "image": node.image, "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]}],
        }}))
        .unwrap()
    };
    let api = node.pods();
    api.create(&PostParams::default(), &pod("warm-up")).await.expect("create the warm-up pod");
    node.wait_pod("warm-up", Duration::from_secs(120), "Ready", |p| p["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))).await;
    node.delete_pod("warm-up").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = usage(pid);

    let rv = api.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watch = watch_pods(api.clone(), rv, tx);
    let begin = Instant::now();
    let created = send_all((0..pods).map(|i| format!("kbench-{i:03}")), Some(Duration::from_secs_f64(1.0 / rate)), |name| {
        let (api, p) = (api.clone(), pod(&name));
        async move { api.create(&PostParams::default(), &p).await.map(|_| ()).map_err(|e| format!("create {name}: {e}")) }
    })
    .await;
    let (ready_s, all_ready_s) = collect(&mut rx, &created, true, begin).await;
    let span_start_s = begin.elapsed().as_secs_f64();
    let after_start = usage(pid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let loaded = usage(pid);

    let begin = Instant::now();
    let asked = send_all(created.keys().cloned(), None, |name| {
        let api = api.clone();
        async move { api.delete(&name, &DeleteParams::default()).await.map(|_| ()).map_err(|e| format!("delete {name}: {e}")) }
    })
    .await;
    let (gone_s, all_gone_s) = collect(&mut rx, &asked, false, begin).await;
    let span_delete_s = begin.elapsed().as_secs_f64();
    let after_delete = usage(pid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = usage(pid);
    drop(rx);
    watch.abort();

    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    match tokio::time::timeout(Duration::from_secs(60), child.wait()).await {
        Ok(status) => assert!(status.unwrap().success(), "the kubelet process failed"),
        Err(_) => {
            eprintln!("the kubelet did not stop within 60 s: killed");
            let _ = child.kill().await;
        }
    }
    node.shutdown().await;
    PodStart {
        ready_s,
        all_ready_s,
        gone_s,
        all_gone_s,
        idle,
        loaded,
        after,
        cpu_start_s: after_start.cpu_s - idle.cpu_s,
        cpu_delete_s: after_delete.cpu_s - loaded.cpu_s,
        span_start_s,
        span_delete_s,
    }
}

// ---------------------------------------------------------------- the report

fn report(pods: usize, rate: f64, runs: usize, raw: &Value, s: &PodStart) -> String {
    let profile = if cfg!(debug_assertions) { "dev (unoptimised: numbers are pessimistic)" } else { "bench (release)" };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut r = format!(
        "# Kubelet on the real kernel\n\n\
         - command: `cargo bench --workspace --bench kubelet -- {pods} {rate} {runs}` (no arguments: the same), as root\n\
         - machine: {} CPUs shared with other builds and tests (load average at end: {}): expect noise; build profile: {profile}\n\
         - what: one process runs a one-member store and the apiserver (kapp-testkit), Debian's docker-registry serves a busybox image on loopback, and the kubelet runs as a process of its own (this benchmark's binary re-executed: `kapp_kubelet::Kubelet` with the settings of the kubelet tests, its bridge in a network namespace made for the run, no log output). The image is pulled by a warm-up pod before anything is timed.\n\n\
         ## Pod start: {pods} pods at {rate}/s on one kubelet\n\n\
         Each pod is one busybox container (`trap 'exit 0' TERM; sleep 3600 & wait`), bound to the node at creation (no scheduler). Create→Ready: from sending the create request to the watch event showing the Ready condition True. Delete: all {pods} delete requests sent at once (grace period 10 s; the container exits on SIGTERM), each timed until the watch reports the pod gone (the kubelet stopped it, cleaned up after it and finished the deletion).\n\n\
         | pods | rate /s | create→Ready p50 s | p90 s | p99 s | max s | first create → all Ready s | delete→gone p50 s | p99 s | delete all s |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n\
         | {pods} | {rate} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.2} | {:.2} | {:.1} |\n\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        percentile(&s.ready_s, 0.5),
        percentile(&s.ready_s, 0.9),
        percentile(&s.ready_s, 0.99),
        max(&s.ready_s),
        s.all_ready_s,
        percentile(&s.gone_s, 0.5),
        percentile(&s.gone_s, 0.99),
        s.all_gone_s,
    );
    r += "Kubernetes' pod startup SLO (p99 ≤ 5 s, image already present) is the goal; no other kubelet runs on this machine, so there is no side-by-side ratio for this part.\n\n";
    r += &lifecycle::table(raw, runs);
    r += &format!(
        "\n## Kubelet process: memory and CPU\n\n\
         `/proc/<kubelet pid>/smaps_rollup` (the containers are processes of their own and not counted). CPU: the kubelet's user + system time while the {pods} pods were started ({:.1} s) and deleted ({:.1} s).\n\n\
         | state | RSS MiB | PSS MiB | threads | CPU s |\n\
         |---|---:|---:|---:|---:|\n\
         | idle (node registered, image pulled, no pods) | {:.1} | {:.1} | {} | |\n\
         | {pods} pods Running | {:.1} | {:.1} | {} | {:.2} to start them |\n\
         | after deleting them | {:.1} | {:.1} | {} | {:.2} to delete them |\n",
        s.span_start_s,
        s.span_delete_s,
        s.idle.rss_mib,
        s.idle.pss_mib,
        s.idle.threads,
        s.loaded.rss_mib,
        s.loaded.pss_mib,
        s.loaded.threads,
        s.cpu_start_s,
        s.after.rss_mib,
        s.after.pss_mib,
        s.after.threads,
        s.cpu_delete_s,
    );
    r
}
