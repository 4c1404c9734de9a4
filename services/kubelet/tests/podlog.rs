//! `pods/log` end to end: kube-rs and kubectl read container logs through the apiserver,
//! which finds the pod's kubelet from its Node and proxies to the kubelet's mTLS
//! `/containerLogs`. Root only (the kubelet runs real containers); CI runs as root.

mod common;

use std::io::BufRead;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Node;
use futures_util::io::AsyncBufReadExt;
use k8s_openapi::api::core::v1::Pod;
use kapp_testkit::groups;
use kube::api::{Api, LogParams, PostParams};
use serde_json::json;

const START: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The status code and message of a refused kube-rs request.
fn refusal<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> (u16, String) {
    match r {
        Err(kube::Error::Api(s)) => (s.code, s.message),
        other => panic!("expected an apiserver refusal, got {other:?}"),
    }
}

fn params(container: &str) -> LogParams {
    LogParams { container: Some(container.into()), ..LogParams::default() }
}

/// Poll the log of `pod`/`container` through the apiserver until it contains `needle`.
async fn wait_log(pods: &Api<Pod>, pod: &str, container: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let last = pods.logs(pod, &params(container)).await;
        if matches!(&last, Ok(text) if text.contains(needle)) {
            return last.unwrap();
        }
        assert!(Instant::now() < deadline, "log of {pod}/{container} never contained {needle:?}; last: {last:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn kubectl(cfg: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("kubectl").arg("--kubeconfig").arg(cfg).arg("--request-timeout=10s").args(args).env("HOME", cfg.parent().unwrap()).output().expect("kubectl is installed");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pod_logs_through_the_apiserver() {
    if !common::root_or_skip("pod_logs_through_the_apiserver") {
        return;
    }
    // The kubelet reports 127.0.0.1 as its InternalIP and listens on a known port there, with
    // a node certificate that names no address at all: the apiserver must accept it for who
    // it is, not where it is.
    let mut node = Node::start("plog", |cfg| cfg.node_ip = Ipv4Addr::LOCALHOST).await;
    node.kubelet.take().unwrap().shutdown().await;
    let cp = node.cp.as_ref().unwrap();
    node.cfg.identity = cp.store.pki.ca.issue(&format!("system:node:{}", node.cfg.node_name), &[groups::NODES], &[]).unwrap();
    node.cfg.listen = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())));
    node.kubelet = Some(kapp_kubelet::Kubelet::start(node.cfg.clone()).await.expect("kubelet starts again"));

    let print_a = "for i in 1 2 3 4 5; do echo a-$i; done; exec sleep 3600";
    let tick = "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.5; done";
    node.create_pod(
        "multi",
        json!({
            "initContainers": [{"name": "setup", "image": node.image, "command": ["sh", "-c", "echo setup-done"]}],
            "containers": [
                {"name": "a", "image": node.image, "command": ["sh", "-c", print_a]},
                {"name": "b", "image": node.image, "command": ["sh", "-c", tick]},
            ],
            "terminationGracePeriodSeconds": 1,
        }),
    )
    .await;
    node.create_pod("solo", json!({"containers": [{"name": "only", "image": node.image, "command": ["sh", "-c", "echo solo-1; echo solo-2; exec sleep 3600"]}], "terminationGracePeriodSeconds": 1})).await;
    // Never scheduled: no nodeName, and no scheduler runs here.
    let pending: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pending"}, "spec": {"containers": [{"name": "c", "image": node.image}]}})).unwrap();
    node.pods().create(&PostParams::default(), &pending).await.unwrap();
    for pod in ["multi", "solo"] {
        node.wait_pod(pod, START, "Running", |p| p["status"]["phase"] == "Running").await;
    }

    // kube-rs as a viewer (kapp's read-only identity).
    let viewer: Api<Pod> = Api::namespaced(cp.client("alice", &[groups::VIEWERS]).await, "default");
    wait_log(&viewer, "multi", "a", "a-5").await;
    wait_log(&viewer, "multi", "b", "tick-12").await;
    let tail = viewer.logs("multi", &LogParams { tail_lines: Some(2), ..params("a") }).await.unwrap();
    assert_eq!(tail, "a-4\na-5\n");
    assert_eq!(viewer.logs("multi", &params("setup")).await.unwrap(), "setup-done\n", "an init container's log");
    assert_eq!(wait_log(&viewer, "solo", "only", "solo-2").await, "solo-1\nsolo-2\n");
    assert_eq!(viewer.logs("solo", &LogParams::default()).await.unwrap(), "solo-1\nsolo-2\n", "the only container is the default");
    assert_eq!(viewer.logs("solo", &LogParams { limit_bytes: Some(8), ..LogParams::default() }).await.unwrap(), "solo-1\ns", "the first limitBytes bytes");

    // sinceSeconds: only the last seconds of the ticker, stamped when asked.
    let asked = unix_now();
    let recent = viewer.logs("multi", &LogParams { since_seconds: Some(2), timestamps: true, ..params("b") }).await.unwrap();
    let lines: Vec<&str> = recent.lines().collect();
    assert!(!lines.is_empty() && lines.len() <= 10, "2-3 s of ticks at 2 a second: {recent}");
    for line in &lines {
        let (stamp, text) = line.split_once(' ').unwrap();
        let secs = kapp_api::table::parse_rfc3339(stamp).unwrap_or_else(|| panic!("a time stamp: {line}"));
        assert!(secs >= asked - 3, "{line} is older than 2 s before {asked}");
        assert!(text.starts_with("tick-") && text != "tick-1", "{line}");
    }
    let plain = viewer.logs("multi", &LogParams { since_seconds: Some(2), ..params("b") }).await.unwrap();
    assert!(!plain.is_empty() && plain.lines().all(|l| l.starts_with("tick-")), "stamps stripped again: {plain}");

    // Follow: the newest line, then one printed after the request.
    let mut stream = Box::pin(viewer.log_stream("multi", &LogParams { follow: true, tail_lines: Some(1), ..params("b") }).await.unwrap().lines());
    let first = next_line(&mut stream).await;
    let n: u32 = first.strip_prefix("tick-").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("a tick: {first:?}"));
    assert_eq!(next_line(&mut stream).await, format!("tick-{}", n + 1));
    assert_eq!(next_line(&mut stream).await, format!("tick-{}", n + 2));
    drop(stream);

    // Kubernetes' refusals.
    let (code, msg) = refusal(viewer.logs("multi", &LogParams::default()).await);
    assert_eq!((code, msg.as_str()), (400, "a container name must be specified for pod multi, choose one of: [setup a b]"));
    let (code, msg) = refusal(viewer.logs("multi", &params("nope")).await);
    assert_eq!((code, msg.as_str()), (400, "container nope is not valid for pod multi"));
    let (code, msg) = refusal(viewer.logs("pending", &LogParams::default()).await);
    assert_eq!((code, msg.as_str()), (400, "pod pending does not have a host assigned"));
    let (code, _) = refusal(viewer.logs("ghost", &LogParams::default()).await);
    assert_eq!(code, 404);
    let (code, msg) = refusal(viewer.logs("solo", &LogParams { previous: true, ..LogParams::default() }).await);
    assert_eq!(code, 400, "the kubelet's refusal passed on: {msg}");
    assert!(msg.contains("previous terminated container"), "{msg}");

    // A node reads the logs of its own pods only.
    let own: Api<Pod> = Api::namespaced(cp.client(&format!("system:node:{}", node.cfg.node_name), &[groups::NODES]).await, "default");
    assert_eq!(own.logs("solo", &LogParams::default()).await.unwrap(), "solo-1\nsolo-2\n");
    let other: Api<Pod> = Api::namespaced(cp.client("system:node:elsewhere", &[groups::NODES]).await, "default");
    let (code, msg) = refusal(other.logs("solo", &LogParams::default()).await);
    assert_eq!(code, 403, "{msg}");

    // kubectl with a viewer kubeconfig.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("viewer.kubeconfig");
    std::fs::write(&cfg, kapp_runtime::kubeconfig("kapp", &cp.url, "alice", &cp.identity("alice", &[groups::VIEWERS]))).unwrap();
    let (ok, out, err) = kubectl(&cfg, &["logs", "multi", "-c", "a", "--tail=2"]);
    assert!(ok, "{err}");
    assert_eq!(out, "a-4\na-5\n");
    let (ok, out, err) = kubectl(&cfg, &["logs", "multi"]);
    assert_eq!((ok, out.as_str()), (true, "a-1\na-2\na-3\na-4\na-5\n"), "kubectl picks the first container itself: {err}");
    let (ok, out, err) = kubectl(&cfg, &["logs", "pod/solo"]);
    assert_eq!((ok, out.as_str()), (true, "solo-1\nsolo-2\n"), "{err}");
    let (ok, _, err) = kubectl(&cfg, &["logs", "multi", "-c", "nope"]);
    assert!(!ok && err.contains("container nope is not valid for pod multi"), "{err}");
    let (ok, _, err) = kubectl(&cfg, &["logs", "pending"]);
    assert!(!ok && err.contains("pod pending does not have a host assigned"), "{err}");
    let follow = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("kubectl").arg("--kubeconfig").arg(&cfg).args(["logs", "-f", "multi", "-c", "b", "--tail=1"]).env("HOME", cfg.parent().unwrap()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let lines: Vec<String> = std::io::BufReader::new(child.stdout.take().unwrap()).lines().take(3).map(Result::unwrap).collect();
        let _ = child.kill();
        let _ = child.wait();
        lines
    });
    let lines = tokio::time::timeout(Duration::from_secs(20), follow).await.expect("kubectl logs -f printed three lines").unwrap();
    let n: u32 = lines[0].strip_prefix("tick-").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(lines[1..], [format!("tick-{}", n + 1), format!("tick-{}", n + 2)]);

    // A node whose kubelet cannot be reached: a clear 500 naming the node and the address.
    let dead = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let ghost: k8s_openapi::api::core::v1::Node = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "ghost"}})).unwrap();
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(node.client.clone());
    nodes.create(&PostParams::default(), &ghost).await.unwrap();
    let status = json!({"status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}], "daemonEndpoints": {"kubeletEndpoint": {"Port": dead.port()}}}});
    nodes.patch_status("ghost", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(status)).await.unwrap();
    let stranded: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "stranded"}, "spec": {"nodeName": "ghost", "containers": [{"name": "c", "image": node.image}]}})).unwrap();
    node.pods().create(&PostParams::default(), &stranded).await.unwrap();
    let (code, msg) = refusal(viewer.logs("stranded", &LogParams::default()).await);
    assert_eq!(code, 500, "{msg}");
    assert!(msg.starts_with(&format!("the kubelet of node \"ghost\" at {dead}: connecting")), "{msg}");

    // Pods go before the kubelet (its shutdown does not stop pod workers, which would
    // restart what the clean-up killed).
    for pod in ["multi", "solo"] {
        node.pods().delete(pod, &Default::default()).await.unwrap();
    }
    for pod in ["multi", "solo"] {
        node.wait_gone(pod, Duration::from_secs(30)).await;
    }
    node.shutdown().await;
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

async fn next_line(lines: &mut (impl futures_util::Stream<Item = std::io::Result<String>> + Unpin)) -> String {
    let line = tokio::time::timeout(Duration::from_secs(10), futures_util::StreamExt::next(lines)).await.expect("a line within 10 s");
    line.expect("the stream goes on").expect("a readable line")
}
