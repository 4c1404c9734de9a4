//! gitops against the real parts: repositories made with the git CLI, git2 fetching them
//! (file:// and git://), the renderer, an apiserver and a store in-process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kapp_api::kapp::{GitRef, GitSyncStatus, COMMIT_ANNOTATION, MANAGED_BY_LABEL};
use kapp_gitops::{Auth, Gitops, GitopsConfig, Source, SyncFailure};
use kapp_testkit::{groups, ControlPlane};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::json;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").arg("-C").arg(dir).args(args).env("GIT_AUTHOR_DATE", "2026-11-21T10:00:00Z").output().expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A repository with an author set, on branch main.
fn new_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["config", "user.name", "Ada Lovelace"]);
    git(&repo, &["config", "user.email", "ada@example.com"]);
    git(&repo, &["config", "commit.gpgsign", "false"]);
    repo
}

fn commit(repo: &Path, files: &[(&str, &str)], remove: &[&str], message: &str) -> String {
    for (name, body) in files {
        let p = repo.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    for name in remove {
        git(repo, &["rm", "-q", name]);
    }
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", message]);
    git(repo, &["rev-parse", "HEAD"])
}

fn config(url: String, state: PathBuf) -> GitopsConfig {
    GitopsConfig {
        name: "cluster".into(),
        source: Source { url, git_ref: GitRef { branch: Some("main".into()), ..Default::default() }, auth: Auth::None, timeout: Duration::from_secs(30), max_bytes: 64 << 20, trusted_keys: vec![] },
        path: String::new(),
        interval: Duration::from_millis(200),
        state_dir: state,
        identities: Vec::new(),
    }
}

const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n";

fn app(value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: conf\n  namespace: shop\ndata:\n  k: \"{value}\"\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n      - name: web\n        image: web:1\n"
    )
}

const EXTRA: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra\n  namespace: shop\ndata:\n  x: \"1\"\n";
const BAD: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: api\n  namespace: shop\nspec:\n  ports:\n  - port: eighty\n";

async fn sync_status(client: &kube::Client) -> GitSyncStatus {
    sync_status_opt(client).await.expect("the GitSync has a status")
}

fn rv(o: &impl kube::Resource) -> String {
    o.meta().resource_version.clone().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_apply_update_prune_refuse_and_revert() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), 1).await;
    let repo = new_repo(dir.path());
    let viewer = cp.client("viewer", &[groups::VIEWERS]).await;
    let cms: Api<ConfigMap> = Api::namespaced(viewer.clone(), "shop");
    let deploys: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(viewer.clone(), "shop");
    let mut g = Gitops::new(cp.client("gitops", &[groups::GITOPS]).await, config(format!("file://{}", repo.display()), dir.path().join("state"))).await;

    // A commit appears, whole, in one transaction: every object has the same revision.
    let first = commit(&repo, &[("ns.yaml", NS), ("app.yaml", &app("1")), ("extra.yaml", EXTRA)], &[], "first");
    g.sync_once().await.unwrap();
    let conf = cms.get("conf").await.unwrap();
    assert_eq!(conf.data.as_ref().unwrap()["k"], "1");
    assert_eq!(conf.metadata.labels.as_ref().unwrap()[MANAGED_BY_LABEL], "cluster");
    assert_eq!(conf.metadata.annotations.as_ref().unwrap()[COMMIT_ANNOTATION], first);
    let web = deploys.get("web").await.unwrap();
    assert_eq!(rv(&conf), rv(&web), "one commit, one store transaction");
    assert_eq!(rv(&conf), rv(&cms.get("extra").await.unwrap()));
    let st = sync_status(&viewer).await;
    assert_eq!(st.state, "Synced");
    assert_eq!(st.applied_commit.as_ref().unwrap().sha, first);
    assert_eq!(st.applied_commit.as_ref().unwrap().subject, "first");
    assert_eq!(st.applied_commit.as_ref().unwrap().author, "Ada Lovelace <ada@example.com>");
    assert_eq!((st.counts.created, st.counts.objects), (4, 4));

    // An edit updates what changed and nothing else.
    let second = commit(&repo, &[("app.yaml", &app("2"))], &[], "second");
    g.sync_once().await.unwrap();
    let conf2 = cms.get("conf").await.unwrap();
    assert_eq!(conf2.data.as_ref().unwrap()["k"], "2");
    assert_eq!(conf2.metadata.annotations.as_ref().unwrap()[COMMIT_ANNOTATION], second);
    assert_eq!(rv(&deploys.get("web").await.unwrap()), rv(&web), "the unchanged Deployment is not rewritten");
    assert_eq!(sync_status(&viewer).await.counts.updated, 1);

    // Deleting a file deletes its objects.
    let third = commit(&repo, &[], &["extra.yaml"], "third");
    g.sync_once().await.unwrap();
    assert!(cms.get_opt("extra").await.unwrap().is_none(), "pruned");
    assert_eq!(sync_status(&viewer).await.counts.pruned, 1);

    // One invalid document refuses the whole commit: the valid edit beside it is not applied.
    commit(&repo, &[("app.yaml", &app("3")), ("bad.yaml", BAD)], &[], "broken");
    match g.sync_once().await {
        Err(SyncFailure::Invalid(errors)) => assert_eq!(errors[0].file, "bad.yaml", "{errors:?}"),
        other => panic!("expected the commit to be refused, got {other:?}"),
    }
    assert_eq!(cms.get("conf").await.unwrap().data.unwrap()["k"], "2", "nothing of the broken commit applied");
    let st = sync_status(&viewer).await;
    assert_eq!(st.state, "Failed");
    assert_eq!(st.applied_commit.as_ref().unwrap().sha, third, "the last good commit stays live");
    let e = &st.errors[0];
    assert_eq!((e.file.as_str(), e.document, e.object.as_str()), ("bad.yaml", Some(0), "Service/shop/api"));
    assert!(e.field.starts_with("spec.ports"), "{e:?}");
    assert!(st.message.contains("bad.yaml"), "{}", st.message);

    // Reverting brings the last good state back.
    git(&repo, &["revert", "--no-edit", "HEAD"]);
    let reverted = git(&repo, &["rev-parse", "HEAD"]);
    g.sync_once().await.unwrap();
    let st = sync_status(&viewer).await;
    assert_eq!((st.state.as_str(), st.applied_commit.as_ref().unwrap().sha.as_str()), ("Synced", reverted.as_str()));
    assert!(st.errors.is_empty());
    assert_eq!(cms.get("conf").await.unwrap().data.unwrap()["k"], "2");
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_reverted_and_viewers_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), 1).await;
    let repo = new_repo(dir.path());
    commit(&repo, &[("ns.yaml", NS), ("app.yaml", &app("1"))], &[], "first");
    let mut g = Gitops::new(cp.client("gitops", &[groups::GITOPS]).await, config(format!("file://{}", repo.display()), dir.path().join("state"))).await;
    g.sync_once().await.unwrap();

    let viewer: Api<ConfigMap> = Api::namespaced(cp.client("viewer", &[groups::VIEWERS]).await, "shop");
    let edit = Patch::Merge(json!({"data": {"k": "hacked"}}));
    let refused = viewer.patch("conf", &PatchParams::default(), &edit).await.unwrap_err();
    assert!(matches!(&refused, kube::Error::Api(e) if e.code == 403), "{refused:?}");

    // A system identity changes a managed object: the next pass puts it back.
    let controllers: Api<ConfigMap> = Api::namespaced(cp.client("controllers", &[groups::CONTROLLERS]).await, "shop");
    controllers.patch("conf", &PatchParams::default(), &edit).await.unwrap();
    assert_eq!(viewer.get("conf").await.unwrap().data.unwrap()["k"], "hacked");
    g.sync_once().await.unwrap();
    assert_eq!(viewer.get("conf").await.unwrap().data.unwrap()["k"], "1");
    assert_eq!(g.status().drift_reverted, 1);
    cp.shutdown().await;
}

/// A free loopback port (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_repository_served_by_git_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), 1).await;
    let repo = new_repo(dir.path());
    commit(&repo, &[("deploy/ns.yaml", NS), ("deploy/app.yaml", &app("1")), ("README.md", "not rendered: outside the path\n")], &[], "first");
    let port = free_port();
    let mut daemon = Command::new("git")
        .args(["daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1", &format!("--port={port}"), &format!("--base-path={}", dir.path().display())])
        .arg(dir.path())
        .spawn()
        .expect("git daemon starts");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut cfg = config(format!("git://127.0.0.1:{port}/repo"), dir.path().join("state"));
    cfg.path = "deploy".into();
    let mut g = Gitops::new(cp.client("gitops", &[groups::GITOPS]).await, cfg).await;
    let r = g.sync_once().await;
    let _ = daemon.kill();
    let _ = daemon.wait();
    r.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(cp.client("viewer", &[groups::VIEWERS]).await, "shop");
    assert_eq!(cms.get("conf").await.unwrap().data.unwrap()["k"], "1");
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_webhook_call_applies_a_commit_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), 1).await;
    let repo = new_repo(dir.path());
    commit(&repo, &[("ns.yaml", NS)], &[], "first");
    // Poll once an hour: only the webhook can make the second commit appear in time.
    let mut cfg = config(format!("file://{}", repo.display()), dir.path().join("state"));
    cfg.interval = Duration::from_secs(3600);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = listener.local_addr().unwrap();
    let client = cp.client("gitops", &[groups::GITOPS]).await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(kapp_gitops::run(client, cfg, "head-1", Some((listener, b"s3cret".to_vec())), async {
        let _ = stop_rx.await;
    }));
    let viewer = cp.client("viewer", &[groups::VIEWERS]).await;
    let cms: Api<ConfigMap> = Api::namespaced(viewer.clone(), "shop");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while sync_status_opt(&viewer).await.is_none_or(|s| s.state != "Synced") {
        assert!(tokio::time::Instant::now() < deadline, "the first commit was never applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    commit(&repo, &[("app.yaml", &app("1"))], &[], "second");
    let post = move |sig: String| {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let mut s = std::net::TcpStream::connect(hook).unwrap();
        use std::io::{Read, Write};
        write!(s, "POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nX-Hub-Signature-256: {sig}\r\nConnection: close\r\n\r\n", body.len()).unwrap();
        s.write_all(body).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let answer = tokio::task::spawn_blocking(move || post("sha256=00".into())).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    let mac = hmac_sha256::HMAC::mac(br#"{"ref":"refs/heads/main"}"#, b"s3cret");
    let sig = format!("sha256={}", mac.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let answer = tokio::task::spawn_blocking(move || post(sig)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cms.get_opt("conf").await.unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "the webhook did not trigger a sync");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(());
    run.await.unwrap();
    cp.shutdown().await;
}

async fn sync_status_opt(client: &kube::Client) -> Option<GitSyncStatus> {
    let ar = ApiResource { group: "kapp.dev".into(), version: "v1".into(), api_version: "kapp.dev/v1".into(), kind: "GitSync".into(), plural: "gitsyncs".into() };
    let o = Api::<DynamicObject>::all_with(client.clone(), &ar).get_opt("cluster").await.ok()??;
    serde_json::from_value(o.data["status"].clone()).ok()
}

/// A commit far over one transaction: 600 ConfigMaps and 400 Services (each Service also
/// allocates its ClusterIP in the same transaction) apply in chunks that fit, halved where
/// the apiserver says a chunk is too large; every object lands and the status ends Synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_larger_than_one_transaction_applies_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), 1).await;
    let repo = new_repo(dir.path());
    let cms: Vec<String> = (0..600).map(|i| format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i}\n  namespace: default\ndata:\n  k: v\n")).collect();
    let svcs: Vec<String> = (0..400).map(|i| format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\n  namespace: default\nspec:\n  selector: {{app: x}}\n  ports:\n  - port: 80\n")).collect();
    let (cms_yaml, svcs_yaml) = (cms.join("---\n"), svcs.join("---\n"));
    commit(&repo, &[("cms.yaml", &cms_yaml), ("svcs.yaml", &svcs_yaml)], &[], "big");
    let mut g = Gitops::new(cp.client("gitops", &[groups::GITOPS]).await, config(format!("file://{}", repo.display()), dir.path().join("state"))).await;
    g.sync_once().await.unwrap();
    let viewer = cp.client("viewer", &[groups::VIEWERS]).await;
    let cms = Api::<ConfigMap>::namespaced(viewer.clone(), "default");
    for name in ["cm-0", "cm-300", "cm-599"] {
        assert!(cms.get_opt(name).await.unwrap().is_some(), "{name} applied");
    }
    let svc_list = Api::<k8s_openapi::api::core::v1::Service>::namespaced(viewer.clone(), "default").list(&Default::default()).await.unwrap().items;
    let ips: std::collections::BTreeSet<_> = svc_list.iter().filter_map(|s| s.spec.as_ref()?.cluster_ip.clone()).collect();
    assert_eq!((svc_list.len(), ips.len()), (400, 400), "every Service applied, each with its own ClusterIP");
    let st = sync_status(&viewer).await;
    assert_eq!((st.state.as_str(), st.counts.created), ("Synced", 1000));
    cp.shutdown().await;
}
