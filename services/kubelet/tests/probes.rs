//! Probes, lifecycle hooks and kubelet restarts against a real kernel, registry and an
//! in-process control plane. Root only. The containers are steered through a hostPath
//! directory the test owns (files the test creates or removes).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{container, Node};
use serde_json::{json, Value};

const START: Duration = Duration::from_secs(60);
/// Long enough for several failing probes at a 1 s period.
const SEVERAL_PERIODS: Duration = Duration::from_secs(4);

fn condition(p: &Value, ty: &str) -> String {
    p["status"]["conditions"].as_array().and_then(|a| a.iter().find(|c| c["type"] == ty)).and_then(|c| c["status"].as_str()).unwrap_or("").to_string()
}

/// A host directory mounted into containers at /ctl.
fn ctl_volume(dir: &Path) -> Value {
    json!({"name": "ctl", "hostPath": {"path": dir.display().to_string(), "type": "Directory"}})
}

fn ctl_mount() -> Value {
    json!({"name": "ctl", "mountPath": "/ctl"})
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map(|s| s.lines().count()).unwrap_or(0)
}

/// The pids of processes on this machine whose command line is exactly `argv`.
fn pids(argv: &[&str]) -> Vec<String> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    let mut p: Vec<String> = std::fs::read_dir("/proc").unwrap().flatten().filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == want)).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    p.sort();
    p
}

/// httpGet readiness: not ready while nothing listens, ready once the server answers 200
/// on the named port, not ready again when it answers 404; the pod's Ready condition
/// follows. The veth has hairpin mode on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_readiness_follows_the_server() {
    if !common::root_or_skip("http_readiness_follows_the_server") {
        return;
    }
    let node = Node::start("ready", |_| {}).await;
    let ctl = tempfile::tempdir().unwrap();
    let created = node
        .create_pod(
            "web",
            json!({
                "volumes": [ctl_volume(ctl.path())],
                "containers": [{
                    "name": "web", "image": node.image,
                    "command": ["sh", "-c", "until [ -e /ctl/healthz ]; do sleep 0.2; done; exec httpd -f -p 8080 -h /ctl"],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http", "httpHeaders": [{"name": "X-Probe", "value": "kapp"}]}, "periodSeconds": 1, "failureThreshold": 1},
                    "volumeMounts": [ctl_mount()],
                }],
                "terminationGracePeriodSeconds": 1,
            }),
        )
        .await;
    let uid = created.metadata.uid.clone().unwrap();
    node.wait_pod("web", START, "Running", |p| container(p, "web")["state"]["running"].is_object()).await;
    tokio::time::sleep(SEVERAL_PERIODS).await;
    let p = node.wait_pod("web", START, "a status", |_| true).await;
    assert_eq!(container(&p, "web")["ready"], false, "nothing listens yet: {}", container(&p, "web"));
    assert_eq!(container(&p, "web")["started"], true, "no startup probe: started once running");
    assert_eq!((condition(&p, "Ready"), condition(&p, "ContainersReady")), ("False".into(), "False".into()));

    std::fs::write(ctl.path().join("healthz"), "ok\n").unwrap();
    let p = node.wait_pod("web", Duration::from_secs(20), "Ready", |p| condition(p, "Ready") == "True").await;
    assert_eq!(container(&p, "web")["ready"], true);
    assert_eq!(condition(&p, "ContainersReady"), "True");

    std::fs::remove_file(ctl.path().join("healthz")).unwrap();
    let p = node.wait_pod("web", Duration::from_secs(20), "not Ready after a 404", |p| condition(p, "Ready") == "False").await;
    assert_eq!(container(&p, "web")["ready"], false);
    assert_eq!(container(&p, "web")["restartCount"], 0, "readiness never restarts");
    assert!(container(&p, "web")["state"]["running"].is_object());

    let (_, veth) = kapp_kubelet::net::names(&node.cfg.netns_prefix, &uid);
    let link = std::process::Command::new("ip").args(["-n", &node.netns.0, "-d", "link", "show", &veth]).output().unwrap();
    assert!(String::from_utf8_lossy(&link.stdout).contains("hairpin on"), "{}", String::from_utf8_lossy(&link.stdout));

    node.delete_pod("web").await;
    node.shutdown().await;
}

/// An exec liveness probe runs inside the container (it sees the container's own files):
/// once the file is gone the container is killed (SIGTERM is ignored by a pid 1 without a
/// handler, so SIGKILL after the 2 s grace) and restarted, restartCount 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn liveness_exec_failure_restarts() {
    if !common::root_or_skip("liveness_exec_failure_restarts") {
        return;
    }
    let node = Node::start("live", |_| {}).await;
    node.create_pod(
        "live",
        json!({
            "containers": [{
                "name": "app", "image": node.image,
                "command": ["sh", "-c", "echo up > /tmp/alive; sleep 3; rm /tmp/alive; exec sleep 3600"],
                "livenessProbe": {"exec": {"command": ["cat", "/tmp/alive"]}, "periodSeconds": 1, "failureThreshold": 2},
            }],
            "terminationGracePeriodSeconds": 2,
        }),
    )
    .await;
    node.wait_pod("live", START, "Running", |p| container(p, "app")["state"]["running"].is_object()).await;
    let p = node.wait_pod("live", Duration::from_secs(40), "a restart", |p| container(p, "app")["restartCount"] == 1).await;
    let c = container(&p, "app");
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 137, "{c}");
    assert_eq!(p["status"]["phase"], "Running");
    // The probe passed while the file existed: the container lived its 3 s before the kill.
    let t = &c["lastState"]["terminated"];
    let ran = chrono::DateTime::parse_from_rfc3339(t["finishedAt"].as_str().unwrap()).unwrap() - chrono::DateTime::parse_from_rfc3339(t["startedAt"].as_str().unwrap()).unwrap();
    assert!(ran.num_seconds() >= 3, "killed after {ran}, before the file went away");
    node.delete_pod("live").await;
    node.shutdown().await;
}

/// A tcpSocket readiness probe (ready once something listens), and a startup probe that
/// holds back `started`, readiness and the liveness probe (which would kill the container
/// if it ran early) until it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tcp_readiness_and_startup_gate() {
    if !common::root_or_skip("tcp_readiness_and_startup_gate") {
        return;
    }
    let node = Node::start("tcp", |_| {}).await;
    let ctl = tempfile::tempdir().unwrap();
    node.create_pod(
        "gated",
        json!({
            "volumes": [ctl_volume(ctl.path())],
            "containers": [
                {"name": "tcp", "image": node.image,
                 "command": ["sh", "-c", "until [ -e /ctl/listen ]; do sleep 0.2; done; exec httpd -f -p 9000 -h /ctl"],
                 "readinessProbe": {"tcpSocket": {"port": 9000}, "periodSeconds": 1},
                 "volumeMounts": [ctl_mount()]},
                {"name": "slow", "image": node.image, "command": ["sleep", "3600"],
                 "startupProbe": {"exec": {"command": ["test", "-e", "/ctl/started"]}, "periodSeconds": 1, "failureThreshold": 60},
                 "livenessProbe": {"exec": {"command": ["test", "-e", "/ctl/started"]}, "periodSeconds": 1, "failureThreshold": 1},
                 "volumeMounts": [ctl_mount()]},
            ],
            "terminationGracePeriodSeconds": 1,
        }),
    )
    .await;
    node.wait_pod("gated", START, "both running", |p| container(p, "tcp")["state"]["running"].is_object() && container(p, "slow")["state"]["running"].is_object()).await;
    tokio::time::sleep(SEVERAL_PERIODS).await;
    let p = node.wait_pod("gated", START, "a status", |_| true).await;
    let (tcp, slow) = (container(&p, "tcp"), container(&p, "slow"));
    assert_eq!((tcp["ready"].clone(), slow["ready"].clone(), slow["started"].clone()), (json!(false), json!(false), json!(false)), "{tcp}\n{slow}");
    assert_eq!(slow["restartCount"], 0, "the liveness probe waits for the startup probe: {slow}");
    assert_eq!(condition(&p, "Ready"), "False");

    std::fs::write(ctl.path().join("listen"), "").unwrap();
    let p = node.wait_pod("gated", Duration::from_secs(20), "tcp ready", |p| container(p, "tcp")["ready"] == true).await;
    assert_eq!(container(&p, "slow")["started"], false);
    assert_eq!(condition(&p, "Ready"), "False", "slow is not ready yet");

    std::fs::write(ctl.path().join("started"), "").unwrap();
    let p = node.wait_pod("gated", Duration::from_secs(20), "Ready", |p| condition(p, "Ready") == "True").await;
    let slow = container(&p, "slow");
    assert_eq!((slow["started"].clone(), slow["ready"].clone(), slow["restartCount"].clone()), (json!(true), json!(true), json!(0)), "{slow}");
    node.delete_pod("gated").await;
    node.shutdown().await;
}

/// postStart runs after the container starts (ready only after it); preStop runs before
/// SIGTERM; a preStop hook that outlasts the grace period does not hold the pod; a failing
/// postStart hook kills the container, which is restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lifecycle_hooks() {
    if !common::root_or_skip("lifecycle_hooks") {
        return;
    }
    let node = Node::start("hooks", |_| {}).await;
    let ctl = tempfile::tempdir().unwrap();
    let on_term = "trap 'if [ -e /ctl/prestop ]; then echo after-prestop > /ctl/term; else echo before-prestop > /ctl/term; fi; exit 0' TERM; while true; do sleep 0.2; done";
    node.create_pod(
        "hooked",
        json!({
            "volumes": [ctl_volume(ctl.path())],
            "containers": [{
                "name": "app", "image": node.image, "command": ["sh", "-c", on_term],
                "lifecycle": {
                    "postStart": {"exec": {"command": ["sh", "-c", "sleep 1; hostname > /ctl/poststart"]}},
                    "preStop": {"exec": {"command": ["sh", "-c", "echo ran > /ctl/prestop; sleep 1"]}},
                },
                "volumeMounts": [ctl_mount()],
            }],
            "terminationGracePeriodSeconds": 20,
        }),
    )
    .await;
    node.wait_pod("hooked", START, "Ready", |p| condition(p, "Ready") == "True").await;
    assert_eq!(std::fs::read_to_string(ctl.path().join("poststart")).unwrap(), "hooked\n", "postStart ran in the container before it became ready");
    assert!(!ctl.path().join("prestop").exists());
    node.delete_pod("hooked").await;
    assert_eq!(std::fs::read_to_string(ctl.path().join("prestop")).unwrap(), "ran\n");
    assert_eq!(std::fs::read_to_string(ctl.path().join("term")).unwrap(), "after-prestop\n", "SIGTERM came after the preStop hook");

    // The hook's time counts against the grace period: a hook sleeping far longer than the
    // 3 s grace is cut short, and `sleep` as pid 1 (deaf to SIGTERM) is killed.
    node.create_pod(
        "stubborn",
        json!({
            "containers": [{"name": "app", "image": node.image, "command": ["sleep", "3600"],
                            "lifecycle": {"preStop": {"exec": {"command": ["sleep", "1000"]}}}}],
            "terminationGracePeriodSeconds": 3,
        }),
    )
    .await;
    node.wait_pod("stubborn", START, "Running", |p| p["status"]["phase"] == "Running").await;
    let t = Instant::now();
    node.delete_pod("stubborn").await;
    assert!(t.elapsed() >= Duration::from_secs(3), "the grace period was honoured");

    node.create_pod(
        "badhook",
        json!({
            "containers": [{"name": "app", "image": node.image, "command": ["sleep", "3600"],
                            "lifecycle": {"postStart": {"exec": {"command": ["sh", "-c", "exit 3"]}}}}],
            "terminationGracePeriodSeconds": 1,
        }),
    )
    .await;
    let p = node.wait_pod("badhook", START, "a restart after the failed postStart", |p| container(p, "app")["restartCount"].as_u64() >= Some(1)).await;
    assert_eq!(container(&p, "app")["ready"], false);
    assert!(container(&p, "app")["lastState"]["terminated"].is_object(), "{}", container(&p, "app"));
    node.delete_pod("badhook").await;
    node.shutdown().await;
}

/// A kubelet restart adopts what runs: a running pod's container keeps running (the same
/// process and container, restartCount 0, its init container not rerun, the same IP, Ready
/// again through its probe), a restartPolicy Never pod keeps running, a container that
/// exited while no kubelet was there is reported with its exit code and the output it
/// wrote meanwhile, and a Succeeded pod is not run again. A container whose shim was
/// killed is lost: it is replaced (restartCount 1, lastState ContainerStatusUnknown).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubelet_restart_adopts_running_containers() {
    if !common::root_or_skip("kubelet_restart_adopts_running_containers") {
        return;
    }
    let mut node = Node::start("restart", |_| {}).await;
    let ctl = tempfile::tempdir().unwrap();
    let c = ctl.path();
    node.create_pod("job", json!({"restartPolicy": "Never", "volumes": [ctl_volume(c)], "containers": [{"name": "job", "image": node.image, "command": ["sh", "-c", "echo run >> /ctl/job-runs"], "volumeMounts": [ctl_mount()]}]})).await;
    let web = node
        .create_pod(
            "web",
            json!({
                "volumes": [ctl_volume(c)],
                "initContainers": [{"name": "init", "image": node.image, "command": ["sh", "-c", "echo init >> /ctl/web-inits"], "volumeMounts": [ctl_mount()]}],
                "containers": [{"name": "web", "image": node.image, "command": ["sh", "-c", "echo run >> /ctl/web-runs; exec sleep 1000003"],
                                "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1}, "volumeMounts": [ctl_mount()]}],
                "terminationGracePeriodSeconds": 1,
            }),
        )
        .await;
    node.create_pod("once", json!({"restartPolicy": "Never", "containers": [{"name": "once", "image": node.image, "command": ["sleep", "1000004"]}], "terminationGracePeriodSeconds": 1})).await;
    // Exits 3 while the kubelet is away, after writing to its log then.
    let away = node
        .create_pod("away", json!({"restartPolicy": "Never", "volumes": [ctl_volume(c)], "containers": [{"name": "c", "image": node.image, "command": ["sh", "-c", "echo before; until [ -e /ctl/go ]; do sleep 0.2; done; echo after; exit 3"], "volumeMounts": [ctl_mount()]}]}))
        .await;
    let lost = node.create_pod("lost", json!({"containers": [{"name": "c", "image": node.image, "command": ["sleep", "1000005"]}], "terminationGracePeriodSeconds": 1})).await;
    node.wait_pod("job", START, "Succeeded", |p| p["status"]["phase"] == "Succeeded").await;
    let before = node.wait_pod("web", START, "Ready", |p| condition(p, "Ready") == "True").await;
    node.wait_pod("once", START, "Running", |p| p["status"]["phase"] == "Running").await;
    node.wait_pod("away", START, "Running", |p| p["status"]["phase"] == "Running").await;
    node.wait_pod("lost", START, "Running", |p| p["status"]["phase"] == "Running").await;
    let ip = before["status"]["podIP"].as_str().unwrap().to_string();
    assert_eq!((lines(&c.join("job-runs")), lines(&c.join("web-inits")), lines(&c.join("web-runs"))), (1, 1, 1));
    let web_pid = pids(&["sleep", "1000003"]);
    let once_pid = pids(&["sleep", "1000004"]);
    assert_eq!((web_pid.len(), once_pid.len()), (1, 1));

    let old = node.kubelet.take().unwrap();
    old.shutdown().await;
    // While no kubelet runs: one container ends, and one shim dies.
    std::fs::write(c.join("go"), "").unwrap();
    let bundle = |pod: &k8s_openapi::api::core::v1::Pod, name: &str| node.state_dir.join("pods").join(pod.metadata.uid.as_deref().unwrap()).join("containers").join(name);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !bundle(&away, "c").join("exit").exists() {
        assert!(Instant::now() < deadline, "the shim of 'away' wrote no exit file");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(std::fs::read_to_string(bundle(&away, "c").join("exit")).unwrap(), "3 -\n");
    let shim: i32 = std::fs::read_to_string(bundle(&lost, "c").join("shim")).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim), nix::sys::signal::Signal::SIGKILL).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.kubelet = Some(kapp_kubelet::Kubelet::start(node.cfg.clone()).await.expect("the kubelet starts again"));

    let away_done = node.wait_pod("away", START, "Failed", |p| p["status"]["phase"] == "Failed").await;
    let t = &container(&away_done, "c")["state"]["terminated"];
    assert_eq!((t["exitCode"].clone(), t["reason"].clone()), (json!(3), json!("Error")), "{t}");
    let log = node.wait_log("away", "c", "after", Duration::from_secs(10)).await;
    assert_eq!(log, "before\nafter\n", "the shim logged while no kubelet was there");
    let relost = node.wait_pod("lost", START, "replaced", |p| container(p, "c")["restartCount"] == 1 && p["status"]["phase"] == "Running").await;
    assert_eq!(container(&relost, "c")["lastState"]["terminated"]["reason"], "ContainerStatusUnknown");
    // Readiness starts over after a restart: wait for it to come back.
    let after = node.wait_pod("web", START, "Ready again", |p| condition(p, "Ready") == "True" && container(p, "web")["state"]["running"].is_object()).await;
    assert_eq!(after["status"]["podIP"], ip.as_str(), "the same address");
    let w = container(&after, "web");
    assert_eq!(w["restartCount"], 0, "adopted, not restarted: {w}");
    assert_eq!(w["containerID"], container(&before, "web")["containerID"], "the same container");
    assert_eq!(w["state"]["running"]["startedAt"], container(&before, "web")["state"]["running"]["startedAt"]);
    assert_eq!(after["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"], 0);
    let once = node.wait_pod("once", START, "a status", |_| true).await;
    assert_eq!((once["status"]["phase"].clone(), container(&once, "once")["restartCount"].clone()), (json!("Running"), json!(0)), "{}", container(&once, "once"));
    // Every pod's worker has acted by now; give a rerun of the job time to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let job = node.wait_pod("job", START, "a status", |_| true).await;
    assert_eq!(job["status"]["phase"], "Succeeded");
    assert_eq!(lines(&c.join("job-runs")), 1, "the finished pod did not run again");
    assert_eq!(lines(&c.join("web-inits")), 1, "the init container had completed: not rerun");
    assert_eq!(lines(&c.join("web-runs")), 1, "the running container was not started again");
    assert_eq!(pids(&["sleep", "1000003"]), web_pid, "the same process");
    assert_eq!(pids(&["sleep", "1000004"]), once_pid, "the same process");
    assert_eq!(pids(&["sleep", "1000005"]).len(), 1, "the lost container was replaced, not doubled");
    let uid = web.metadata.uid.unwrap();
    let runs = std::fs::read_dir(node.state_dir.join("containers")).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with(&uid)).count();
    assert_eq!(runs, 1, "one container of the pod known to the runtime");

    // The adopted containers stop as any other: the pods go.
    for n in ["job", "web", "once", "away", "lost"] {
        node.delete_pod(n).await;
    }
    assert!(pids(&["sleep", "1000003"]).is_empty() && pids(&["sleep", "1000004"]).is_empty(), "adopted containers were stopped");
    node.shutdown().await;
}
