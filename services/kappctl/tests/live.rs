//! kappctl against a live in-process cluster (`kapp_testkit::ControlPlane`: three store
//! members and an apiserver). Objects are written with a controllers identity; kappctl reads
//! with the viewer identity, through the library (gather + render) and as the real binary
//! (exit codes, stdout, the one stderr line).

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kapp_testkit::{groups, ControlPlane};
use kappctl::cli::StatusOutput;
use kappctl::creds::{pki_files, CredArgs, Fallbacks};
use kappctl::readonly::ReadOnlyClient;
use kappctl::render::style::Style;
use kappctl::view::ClusterView;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

const NOW: &str = "2026-11-21T12:00:00Z";

/// The viewer identity's files, as `kapp gen pki` lays them out.
fn write_viewer(cp: &ControlPlane, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let pem = cp.identity("viewer", &[groups::VIEWERS]);
    pem.write_files(&dir.join(pki_files::CA_CERT), &dir.join(pki_files::VIEWER_CERT), &dir.join(pki_files::VIEWER_KEY)).unwrap();
}

async fn kappctl(args: &[&str]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_kappctl")).args(args).env("NO_COLOR", "1").env_remove("KUBECONFIG").kill_on_drop(true).output();
    tokio::time::timeout(Duration::from_secs(60), run).await.expect("kappctl finished").expect("kappctl runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn create<K>(api: &Api<K>, obj: Value) -> K
where
    K: Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let k: K = serde_json::from_value(obj).unwrap();
    api.create(&PostParams::default(), &k).await.unwrap()
}

async fn set_status<K>(api: &Api<K>, name: &str, status: Value)
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await.unwrap();
}

fn pod(name: &str, node: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": "shop", "labels": {"app": "web"}}, "spec": {"nodeName": node, "containers": [{"name": "app", "image": "registry.local/web:1"}]}})
}

fn running() -> Value {
    json!({"phase": "Running", "podIP": "10.244.0.5", "conditions": [{"type": "Ready", "status": "True"}], "containerStatuses": [{"name": "app", "image": "registry.local/web:1", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {"startedAt": NOW}}}]})
}

/// A cluster with one Ready node, a ready Deployment and its pods, and a synced GitSync.
async fn healthy_cluster(cp: &ControlPlane) -> kube::Client {
    let client = cp.client("controllers", &[groups::CONTROLLERS]).await;
    let nodes: Api<Node> = Api::all(client.clone());
    create(&nodes, json!({"metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/control-plane": ""}}})).await;
    set_status(&nodes, "n1", json!({"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ok"}], "nodeInfo": {"kubeletVersion": "v1.33.0-kapp.0.1.0", "osImage": "kapp 0.1.0", "kernelVersion": "6.12", "containerRuntimeVersion": "kapp", "architecture": "amd64", "operatingSystem": "linux", "machineID": "", "systemUUID": "", "bootID": "", "kubeProxyVersion": ""}})).await;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    create(&deploys, json!({"metadata": {"name": "web"}, "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "registry.local/web:1"}]}}}})).await;
    set_status(&deploys, "web", json!({"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2, "availableReplicas": 2})).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    for name in ["web-1", "web-2"] {
        create(&pods, pod(name, "n1")).await;
        set_status(&pods, name, running()).await;
    }
    let ar = ApiResource { group: "kapp.dev".into(), version: "v1".into(), api_version: "kapp.dev/v1".into(), kind: "GitSync".into(), plural: "gitsyncs".into() };
    let syncs: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let gs: DynamicObject = serde_json::from_value(json!({"apiVersion": "kapp.dev/v1", "kind": "GitSync", "metadata": {"name": "cluster"}, "spec": {"url": "file:///srv/repo", "ref": {"branch": "main"}}})).unwrap();
    syncs.create(&PostParams::default(), &gs).await.unwrap();
    let commit = json!({"sha": "0123456789abcdef0123456789abcdef01234567", "subject": "shop: web with 2 replicas", "author": "Ada", "time": NOW});
    syncs.patch_status("cluster", &PatchParams::default(), &Patch::Merge(json!({"status": {"state": "Synced", "fetchedCommit": commit, "appliedCommit": commit}}))).await.unwrap();
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_get_describe_events_and_kubeconfig_against_a_live_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start(dir.path(), 3).await;
    let leader = cp.store.wait_leader(Duration::from_secs(10)).await;
    let writer = healthy_cluster(&cp).await;
    let pki = dir.path().join("pki");
    write_viewer(&cp, &pki);
    let pki_s = pki.to_str().unwrap();
    let url = cp.url.clone();
    let flags = ["--pki", pki_s, "--server", url.as_str()];
    let with = |rest: &[&'static str]| -> Vec<String> { flags.iter().map(|s| s.to_string()).chain(rest.iter().map(|s| s.to_string())).collect() };
    let run = |args: Vec<String>| async move { kappctl(&args.iter().map(String::as_str).collect::<Vec<_>>()).await };

    // The library: gather + build + render, with the viewer identity.
    let creds = kappctl::creds::resolve(&CredArgs { pki: Some(pki.clone()), server: Some(url.clone()), ..Default::default() }, &Fallbacks { env_kubeconfig: None, kubeconfig: "/nonexistent".into(), pki: "/nonexistent".into() }).unwrap();
    let client = ReadOnlyClient::connect(&creds.server, &creds.pem).await.unwrap();
    let (screen, code) = kappctl::status_once(&client, &creds.cluster, StatusOutput::Text, Style::PLAIN).await.unwrap();
    assert_eq!(code, 0, "{screen}");
    for want in ["Health:  Healthy", "HEADS (3/3 healthy)", "Leader", "NODES (1/1 ready)", "control-plane", "kapp 0.1.0", "01234567", "shop: web with 2 replicas", "Deployment   shop        web    2/2", "PODS (2 total, 0 not running/ready)"] {
        assert!(screen.contains(want), "{want:?} missing from\n{screen}");
    }

    // The binary: -o json is the view; exit code 0.
    let out = run(with(&["status", "-o", "json"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let view: ClusterView = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view.heads.items.len(), 3);
    assert_eq!(view.heads.items.iter().find(|h| h.role == "Leader").and_then(|h| h.id), Some(leader));
    assert_eq!(view.gitops.items[0].applied.as_ref().unwrap().subject, "shop: web with 2 replicas");

    // --watch redraws until interrupted; piped, one frame follows another.
    let mut watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_kappctl")).args(with(&["status", "--watch", "--interval", "1"])).env("NO_COLOR", "1").stdout(std::process::Stdio::piped()).kill_on_drop(true).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    watch.start_kill().unwrap();
    let frames = text(&watch.wait_with_output().await.unwrap().stdout);
    assert!(frames.matches("Cluster: ").count() >= 2 && !frames.contains('\x1b'), "{frames}");

    // A crash-looping pod and a warning: degraded, exit 1, the reason and the event shown.
    let pods: Api<Pod> = Api::namespaced(writer.clone(), "shop");
    create(&pods, pod("web-3", "n1")).await;
    set_status(&pods, "web-3", json!({"phase": "Running", "containerStatuses": [{"name": "app", "image": "registry.local/web:1", "imageID": "", "ready": false, "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 1m20s restarting failed container"}}, "lastState": {"terminated": {"reason": "Error", "exitCode": 2}}}]})).await;
    let events: Api<Event> = Api::namespaced(writer.clone(), "shop");
    let stamp = kapp_api::table::now_rfc3339();
    create(&events, json!({"metadata": {"name": "web-3.1"}, "type": "Warning", "reason": "BackOff", "message": "Back-off restarting failed container app", "count": 3, "involvedObject": {"kind": "Pod", "name": "web-3", "namespace": "shop"}, "lastTimestamp": stamp, "firstTimestamp": stamp})).await;
    let out = run(with(&["status"])).await;
    let screen = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{screen}{}", text(&out.stderr));
    for want in ["Health:  Degraded", "1 pod is not running/ready (CrashLoopBackOff)", "web-3", "CrashLoopBackOff", "last exit: Error (code 2)", "BackOff", "Pod/web-3"] {
        assert!(screen.contains(want), "{want:?} missing from\n{screen}");
    }
    assert!(!screen.contains('\x1b'), "no colour when piped");

    // get: the server's Table, kubectl's layout; -A adds the namespace; names; -o json/yaml.
    let out = run(with(&["get", "pods", "-n", "shop"])).await;
    let table = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(table.starts_with("NAME    READY   STATUS             RESTARTS   AGE\n"), "{table}");
    assert!(table.contains("web-3   0/1     CrashLoopBackOff   4"), "{table}");
    let out = run(with(&["get", "po", "-A", "-o", "wide", "-l", "app=web"])).await;
    assert!(text(&out.stdout).starts_with("NAMESPACE   NAME    READY   STATUS"), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("10.244.0.5"), "wide shows the IP");
    let out = run(with(&["get", "deploy,gitsyncs", "-n", "shop", "-o", "name"])).await;
    assert_eq!(text(&out.stdout), "deployment.apps/web\ngitsync.kapp.dev/cluster\n");
    let out = run(with(&["get", "pods", "-n", "shop", "-o", "json"])).await;
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((list["kind"].as_str(), list["items"].as_array().map(Vec::len)), (Some("List"), Some(3)));
    assert_eq!(list["items"][0]["kind"], "Pod");
    let out = run(with(&["get", "node", "n1", "-o", "yaml"])).await;
    assert!(text(&out.stdout).contains("kind: Node\n") && text(&out.stdout).contains("name: n1"), "{}", text(&out.stdout));
    let out = run(with(&["get", "pods", "nope", "-n", "shop"])).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "error: Error from server (NotFound): pods \"nope\" not found\n");
    let out = run(with(&["get", "widgets"])).await;
    assert_eq!(out.status.code(), Some(64), "{}", text(&out.stderr));
    let out = run(with(&["get", "pods", "-n", "empty"])).await;
    assert_eq!((out.status.code(), text(&out.stderr).as_str()), (Some(0), "No resources found in empty namespace.\n"));

    // describe and events.
    let out = run(with(&["describe", "pod", "web-3", "-n", "shop"])).await;
    let d = text(&out.stdout);
    assert!(d.contains("Status:       CrashLoopBackOff") && d.contains("Restarts:     4") && d.contains("BackOff") && d.contains("(x3)"), "{d}");
    let out = run(with(&["events", "-A", "--types", "Warning"])).await;
    assert!(text(&out.stdout).contains("shop        ") && text(&out.stdout).contains("Pod/web-3"), "{}", text(&out.stdout));

    // kubeconfig: read-only, and it works for kappctl (and kubectl) itself.
    let out = run(with(&["kubeconfig"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let kc = dir.path().join("viewer.kubeconfig");
    std::fs::write(&kc, &out.stdout).unwrap();
    let out = kappctl(&["--kubeconfig", kc.to_str().unwrap(), "get", "deployments", "-n", "shop", "--no-headers"]).await;
    assert!(text(&out.stdout).starts_with("web   2/2"), "{}{}", text(&out.stdout), text(&out.stderr));
    // A writer's identity gets no kubeconfig from kappctl.
    let gitops_pki = dir.path().join("gitops-pki");
    std::fs::create_dir_all(&gitops_pki).unwrap();
    let g = cp.identity("gitops", &[groups::GITOPS]);
    g.write_files(&gitops_pki.join("ca.pem"), &gitops_pki.join("g.pem"), &gitops_pki.join("g.key")).unwrap();
    let p = |f: &str| gitops_pki.join(f).to_str().unwrap().to_string();
    let out = kappctl(&["--ca", &p("ca.pem"), "--cert", &p("g.pem"), "--key", &p("g.key"), "--server", &url, "kubeconfig"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("read-only kubeconfigs only") && out.stdout.is_empty(), "{}", text(&out.stderr));

    // A head down: still answered, degraded, the head named.
    let down = (1..=3).find(|i| *i != leader).unwrap();
    cp.store.stop(down).await;
    let out = run(with(&["status"])).await;
    let screen = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{screen}");
    assert!(screen.contains("HEADS (2/3 healthy)") && screen.contains(&format!("head {down} (")), "{screen}");

    // The apiserver gone: exit 2, one line naming the endpoint.
    cp.stop_api().await;
    let out = run(with(&["status"])).await;
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.starts_with(&format!("error: cannot reach the apiserver at {url}: ")) && err.lines().count() == 1 && out.stdout.is_empty(), "{err:?}");
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_wrong_certificates_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), 1).await;
    let pki = dir.path().join("pki");
    write_viewer(&cp, &pki);
    let pki_s = pki.to_str().unwrap();

    // Nothing listens: the URL and the reason, no panic, no backtrace.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("https://{}", l.local_addr().unwrap())
    };
    for cmd in [&["status"][..], &["get", "pods"], &["status", "-o", "json"]] {
        let mut args = vec!["--pki", pki_s, "--server", &dead];
        args.extend_from_slice(cmd);
        let out = kappctl(&args).await;
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {err}");
        assert!(err.starts_with(&format!("error: cannot reach the apiserver at {dead}: ")) && err.to_lowercase().contains("refused"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");
    }

    // A certificate from another cluster's CA: the apiserver's certificate is not trusted.
    let other = kapp_tls::pki::Ca::generate("elsewhere").unwrap();
    let stranger = dir.path().join("stranger");
    std::fs::create_dir_all(&stranger).unwrap();
    let pem = other.issue("viewer", &[groups::VIEWERS], &[]).unwrap();
    pem.write_files(&stranger.join(pki_files::CA_CERT), &stranger.join(pki_files::VIEWER_CERT), &stranger.join(pki_files::VIEWER_KEY)).unwrap();
    let out = kappctl(&["--pki", stranger.to_str().unwrap(), "--server", &cp.url, "status"]).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.starts_with(&format!("error: cannot reach the apiserver at {}: ", cp.url)) && err.contains("certificate"), "{err}");

    // The right CA but a client certificate the apiserver's CA did not issue.
    let mixed = dir.path().join("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    std::fs::copy(pki.join(pki_files::CA_CERT), mixed.join(pki_files::CA_CERT)).unwrap();
    std::fs::copy(stranger.join(pki_files::VIEWER_CERT), mixed.join(pki_files::VIEWER_CERT)).unwrap();
    std::fs::copy(stranger.join(pki_files::VIEWER_KEY), mixed.join(pki_files::VIEWER_KEY)).unwrap();
    let out = kappctl(&["--pki", mixed.to_str().unwrap(), "--server", &cp.url, "status"]).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.starts_with(&format!("error: cannot reach the apiserver at {}: ", cp.url)), "{err}");

    // An identity in no kapp group is refused: exit 2 too, said plainly.
    let nobody = dir.path().join("nobody");
    std::fs::create_dir_all(&nobody).unwrap();
    cp.identity("nobody", &["other"]).write_files(&nobody.join(pki_files::CA_CERT), &nobody.join(pki_files::VIEWER_CERT), &nobody.join(pki_files::VIEWER_KEY)).unwrap();
    let out = kappctl(&["--pki", nobody.to_str().unwrap(), "--server", &cp.url, "status"]).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.starts_with(&format!("error: the apiserver at {} refused kappctl's identity: ", cp.url)), "{err}");

    // No credentials anywhere: exit 2 and what to pass.
    let out = kappctl(&["status"]).await;
    if !Path::new(kappctl::creds::DEFAULT_KUBECONFIG).exists() && !Path::new(kappctl::creds::DEFAULT_PKI).exists() {
        assert_eq!(out.status.code(), Some(2));
        assert!(text(&out.stderr).contains("--kubeconfig"), "{}", text(&out.stderr));
    }
    // Bad usage is 64, not 2.
    assert_eq!(kappctl(&["status", "--interval", "0"]).await.status.code(), Some(64));
    cp.shutdown().await;
}
