//! gitops' speed, through the real parts in one process (git CLI repositories, git2, the
//! renderer, an apiserver and a one-member store): commit → object visible in the apiserver
//! via the webhook and via polling, and the time to apply commits of 1,000 and 10,000
//! objects (first apply, then a one-object edit among them).
//!
//!     cargo bench -p kapp-gitops --bench gitops [-- <objects>,<objects>… [<webhook samples>]]
//!
//! Writes tests/bench/results/gitops.md (or $BENCH_OUT). Flux and Argo CD cannot run here
//! (no Kubernetes to install them into); their documented defaults are quoted for scale.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kapp_api::kapp::GitRef;
use kapp_gitops::{Auth, Gitops, GitopsConfig, Source};
use kapp_testkit::{groups, ControlPlane};
use kube::Api;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn git(repo: &Path, args: &[&str]) {
    let out = Command::new("git").arg("-C").arg(repo).args(["-c", "user.name=bench", "-c", "user.email=bench@localhost", "-c", "commit.gpgsign=false"]).args(args).output().unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn cm(name: &str, value: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: default\ndata:\n  v: \"{value}\"\n")
}

/// Write `n` ConfigMaps into 100 multi-document files and commit.
fn commit_many(repo: &Path, n: usize, value: &str, message: &str) {
    let dir = repo.join("many");
    std::fs::create_dir_all(&dir).unwrap();
    let per_file = n.div_ceil(100).max(1);
    for f in 0..n.div_ceil(per_file) {
        let docs: Vec<String> = (f * per_file..((f + 1) * per_file).min(n)).map(|i| cm(&format!("cm-{i}"), value)).collect();
        std::fs::write(dir.join(format!("f{f:03}.yaml")), docs.join("---\n")).unwrap();
    }
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", message]);
}

fn config(url: String, state: &Path, interval: Duration) -> GitopsConfig {
    GitopsConfig {
        name: "bench".into(),
        source: Source { url, git_ref: GitRef { branch: Some("main".into()), ..Default::default() }, auth: Auth::None, timeout: Duration::from_secs(120), max_bytes: 1 << 30, trusted_keys: vec![] },
        path: String::new(),
        interval,
        state_dir: state.to_path_buf(),
        identities: Vec::new(),
    }
}

fn new_repo(dir: &Path) -> std::path::PathBuf {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    repo
}

/// Until ConfigMap `name` has data v = `value` (polled every 5 ms), from `start`.
async fn visible(cms: &Api<ConfigMap>, name: &str, value: &str, start: Instant, limit: Duration) -> Option<Duration> {
    while start.elapsed() < limit {
        if cms.get_opt(name).await.ok().flatten().and_then(|c| c.data).is_some_and(|d| d.get("v").map(String::as_str) == Some(value)) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

async fn post_hook(addr: std::net::SocketAddr, secret: &[u8]) {
    let body = br#"{"ref":"refs/heads/main"}"#;
    let sig: String = hmac_sha256::HMAC::mac(body, secret).iter().map(|b| format!("{b:02x}")).collect();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("POST /hook HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\nx-hub-signature-256: sha256={sig}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let sizes: Vec<usize> = args.first().map_or(vec![1000, 10000], |a| a.split(',').filter_map(|x| x.parse().ok()).collect());
    let samples: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let mut out = String::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    // Commit → visible, through the webhook and by polling (15 s, gitops' default).
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), 1).await;
    let cms: Api<ConfigMap> = Api::namespaced(cp.client("viewer", &[groups::VIEWERS]).await, "default");
    let repo = new_repo(dir.path());
    std::fs::write(repo.join("hot.yaml"), cm("hot", "0")).unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "0"]);
    let g = Gitops::new(cp.client("gitops", &[groups::GITOPS]).await, config(format!("file://{}", repo.display()), &dir.path().join("state"), Duration::from_secs(15))).await;
    let trigger = Arc::new(tokio::sync::Notify::new());
    let (_keep, lost) = tokio::sync::watch::channel(false);
    tokio::spawn(g.run(trigger.clone(), lost));
    let secret = b"bench-secret".to_vec();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = listener.local_addr().unwrap();
    tokio::spawn(kapp_gitops::webhook::serve(listener, secret.clone(), trigger));
    visible(&cms, "hot", "0", Instant::now(), Duration::from_secs(60)).await.expect("first commit applied");
    let mut webhook = Vec::new();
    for i in 1..=samples {
        std::fs::write(repo.join("hot.yaml"), cm("hot", &i.to_string())).unwrap();
        git(&repo, &["commit", "-q", "-am", &i.to_string()]);
        let start = Instant::now();
        post_hook(hook, &secret).await;
        let t = visible(&cms, "hot", &i.to_string(), start, Duration::from_secs(60)).await.expect("visible after the webhook");
        webhook.push(t.as_secs_f64() * 1000.0);
    }
    let mut poll = Vec::new();
    for i in samples + 1..=samples + 2 {
        std::fs::write(repo.join("hot.yaml"), cm("hot", &i.to_string())).unwrap();
        git(&repo, &["commit", "-q", "-am", &i.to_string()]);
        let start = Instant::now();
        let t = visible(&cms, "hot", &i.to_string(), start, Duration::from_secs(60)).await.expect("visible by polling");
        poll.push(t.as_secs_f64());
    }
    cp.shutdown().await;
    let wh_median = median(&mut webhook.clone());
    let wh_max = webhook.iter().cloned().fold(0.0, f64::max);
    println!("webhook: median {wh_median:.0} ms, max {wh_max:.0} ms over {samples}; poll: {poll:?} s");

    // Applies of N objects.
    let mut rows = Vec::new();
    for &n in &sizes {
        let d = tempfile::tempdir().unwrap();
        let cp = ControlPlane::start(d.path(), 1).await;
        let repo = new_repo(d.path());
        commit_many(&repo, n, "a", "many");
        let mut g = Gitops::new(cp.client("gitops", &[groups::GITOPS]).await, config(format!("file://{}", repo.display()), &d.path().join("state"), Duration::from_secs(3600))).await;
        let start = Instant::now();
        g.sync_once().await.expect("the commit applies");
        let first = start.elapsed();
        // One object edited among N.
        let file = repo.join("many").join("f000.yaml");
        let text = std::fs::read_to_string(&file).unwrap().replacen("v: \"a\"", "v: \"b\"", 1);
        std::fs::write(&file, text).unwrap();
        git(&repo, &["commit", "-q", "-am", "one"]);
        let start = Instant::now();
        g.sync_once().await.expect("the edit applies");
        let edit = start.elapsed();
        // Nothing new: one poll's work.
        let start = Instant::now();
        g.sync_once().await.unwrap();
        let idle = start.elapsed();
        let cms: Api<ConfigMap> = Api::namespaced(cp.client("viewer", &[groups::VIEWERS]).await, "default");
        assert_eq!(cms.get("cm-0").await.unwrap().data.unwrap()["v"], "b");
        cp.shutdown().await;
        println!("{n} objects: first apply {:.2} s, one edit {:.2} s, idle poll {:.2} s", first.as_secs_f64(), edit.as_secs_f64(), idle.as_secs_f64());
        rows.push(format!("| {n} | {:.2} s | {:.2} s | {:.2} s |", first.as_secs_f64(), edit.as_secs_f64(), idle.as_secs_f64()));
    }

    out.push_str("# gitops: commit → visible, and applies of many objects\n\n");
    out.push_str(&format!("`cargo bench -p kapp-gitops --bench gitops` on {} ({cores} cores), release (bench) profile, one process: git CLI repository (file://), git2, renderer, apiserver, one-member store on local disk.\n\n", kapp_api::table::now_rfc3339()));
    out.push_str("## Commit → object visible in the apiserver\n\n| path | figure | goal / peers |\n| --- | --- | --- |\n");
    out.push_str(&format!("| webhook (HMAC-checked POST /hook → fetch, render, apply) | median {wh_median:.0} ms, max {wh_max:.0} ms over {samples} commits | goal ≤ 2 s |\n"));
    out.push_str(&format!("| polling, 15 s interval | {} s | Flux polls every 1 min by default (`interval`), Argo CD every 3 min (`timeout.reconciliation`): not runnable here |\n", poll.iter().map(|p| format!("{p:.1}")).collect::<Vec<_>>().join(", ")));
    out.push_str("\n## Applying a commit of N objects (ConfigMaps in 100 files)\n\n| objects | first apply | one object edited | poll with nothing new |\n| --- | --- | --- | --- |\n");
    for r in rows {
        out.push_str(&r);
        out.push('\n');
    }
    out.push_str("\nA change of more than 511 objects goes in ordered chunks that fit one store transaction each (ARCHITECTURE.md, GitOps). Polling figures depend on where in the interval the commit lands (0–15 s).\n");
    let path = std::env::var("BENCH_OUT").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/bench/results/gitops.md").to_string());
    std::fs::File::create(&path).and_then(|mut f| f.write_all(out.as_bytes())).unwrap();
    println!("wrote {path}");
}
