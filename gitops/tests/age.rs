//! Age-encrypted Secrets end to end: ciphertext made by the real `age` CLI is committed with
//! the git CLI; gitops decrypts `*.age` files and armored Secret values in memory and the
//! apiserver holds the plaintext, while neither the repository, gitops' state nor the
//! store's files ever do. A value that does not decrypt refuses the whole commit, naming
//! file, document and field; so does anything encrypted when no key is configured.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kapp_api::kapp::{GitRef, GitSyncStatus, SOURCE_ANNOTATION};
use kapp_gitops::{Auth, Gitops, GitopsConfig, Source, SyncFailure};
use kapp_testkit::{groups, ControlPlane};
use kube::api::{Api, ApiResource, DynamicObject};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn new_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    for args in [&["init", "-q", "-b", "main"][..], &["config", "user.name", "Ada"], &["config", "user.email", "ada@example.com"], &["config", "commit.gpgsign", "false"]] {
        git(&repo, args);
    }
    repo
}

fn commit(repo: &Path, files: &[(&str, &[u8])], message: &str) -> String {
    for (name, body) in files {
        std::fs::write(repo.join(name), body).unwrap();
    }
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", message]);
    git(repo, &["rev-parse", "HEAD"])
}

/// `age [-a] -r recipient` over `plain` (the real CLI).
fn age(recipient: &kapp_age::Recipient, armor: bool, plain: &[u8]) -> Vec<u8> {
    let mut cmd = Command::new("age");
    if armor {
        cmd.arg("-a");
    }
    let mut child = cmd.arg("-r").arg(recipient.to_string()).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("age runs (tests/install-deps.sh installs it)");
    child.stdin.take().unwrap().write_all(plain).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// A YAML block scalar holding `text`, indented for a map value.
fn block(text: &[u8]) -> String {
    let body: String = String::from_utf8(text.to_vec()).unwrap().lines().map(|l| format!("    {l}\n")).collect();
    format!("|\n{body}")
}

fn config(url: String, state: PathBuf, identities: Vec<kapp_age::Identity>) -> GitopsConfig {
    GitopsConfig {
        name: "cluster".into(),
        source: Source { url, git_ref: GitRef { branch: Some("main".into()), ..Default::default() }, auth: Auth::None, timeout: Duration::from_secs(30), max_bytes: 64 << 20, trusted_keys: vec![] },
        path: String::new(),
        interval: Duration::from_millis(200),
        state_dir: state,
        identities,
    }
}

async fn status(client: &kube::Client) -> GitSyncStatus {
    let ar = ApiResource { group: "kapp.dev".into(), version: "v1".into(), api_version: "kapp.dev/v1".into(), kind: "GitSync".into(), plural: "gitsyncs".into() };
    let o = Api::<DynamicObject>::all_with(client.clone(), &ar).get("cluster").await.unwrap();
    serde_json::from_value(o.data["status"].clone()).unwrap()
}

/// Every file under `dir` that holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() && std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) {
                out.push(p);
            }
        }
    }
    out
}

const NS: &[u8] = b"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n";
const PASSWORD: &[u8] = b"pw-7c1f2e-data-value";
const TOKEN: &[u8] = b"tok-9b3d44-string-value";
const FILE_KEY: &[u8] = b"key-51aa0e-from-an-age-file";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_secrets_apply_as_plaintext_and_bad_ones_refuse_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("store"), 1).await;
    let repo = new_repo(dir.path());
    let key = kapp_age::Identity::generate();
    let r = key.to_recipient();
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  namespace: shop\ndata:\n  user: YWRh\n  password: {}stringData:\n  token: {}",
        block(&age(&r, true, PASSWORD)),
        block(&age(&r, true, TOKEN))
    );
    let creds = format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\n  namespace: shop\nstringData:\n  key: {}\n", String::from_utf8_lossy(FILE_KEY));
    let first = commit(&repo, &[("ns.yaml", NS), ("secret.yaml", secret.as_bytes()), ("creds.yaml.age", &age(&r, false, creds.as_bytes()))], "encrypted secrets");
    let url = format!("file://{}", repo.display());
    let mut g = Gitops::new(cp.client("gitops", &[groups::GITOPS]).await, config(url.clone(), dir.path().join("state"), vec![key.clone()])).await;
    g.sync_once().await.unwrap();

    let reader = cp.client("controllers", &[groups::CONTROLLERS]).await;
    let secrets: Api<Secret> = Api::namespaced(reader.clone(), "shop");
    let db = secrets.get("db").await.unwrap();
    let data = db.data.unwrap();
    assert_eq!(data["password"].0, PASSWORD);
    assert_eq!(data["token"].0, TOKEN, "stringData folded into data");
    assert_eq!(data["user"].0, b"ada", "plain values untouched");
    let creds = secrets.get("creds").await.unwrap();
    assert_eq!(creds.data.unwrap()["key"].0, FILE_KEY);
    assert!(creds.metadata.annotations.unwrap()[SOURCE_ANNOTATION].starts_with("creds.yaml.age"));
    assert_eq!(status(&reader).await.applied_commit.unwrap().sha, first);

    // Plaintext is nowhere on disk: not in git's history, gitops' state or the store.
    let history = git(&repo, &["log", "-p", "--all"]);
    for p in [PASSWORD, TOKEN, FILE_KEY] {
        assert!(!history.contains(std::str::from_utf8(p).unwrap()));
        assert_eq!(files_holding(dir.path(), p), Vec::<PathBuf>::new(), "{}", String::from_utf8_lossy(p));
    }

    // A value encrypted to another key refuses the whole commit, naming file, document,
    // object and field; the ConfigMap beside it is not applied.
    let stranger = kapp_age::Identity::generate().to_recipient();
    let bad = secret.replacen("  user: YWRh\n", &format!("  user: YWRh\n  other: {}", block(&age(&stranger, true, b"unknowable"))), 1);
    let cm = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: beside\n  namespace: shop\ndata:\n  a: b\n";
    commit(&repo, &[("secret.yaml", bad.as_bytes()), ("cm.yaml", cm)], "a value for someone else");
    let errors = match g.sync_once().await {
        Err(SyncFailure::Invalid(errors)) => errors,
        other => panic!("expected the commit to be refused, got {other:?}"),
    };
    let e = &errors[0];
    assert_eq!((e.file.as_str(), e.document, e.object.as_str(), e.field.as_str()), ("secret.yaml", Some(0), "Secret/shop/db", "data.other"), "{errors:?}");
    assert!(e.reason.contains("no identity matches"), "{}", e.reason);
    let cms: Api<ConfigMap> = Api::namespaced(reader.clone(), "shop");
    assert!(cms.get_opt("beside").await.unwrap().is_none(), "nothing of the refused commit applied");
    let st = status(&reader).await;
    assert_eq!((st.state.as_str(), st.applied_commit.as_ref().unwrap().sha.as_str()), ("Failed", first.as_str()));
    assert!(st.message.contains("secret.yaml") && st.message.contains("no identity matches"), "{}", st.message);
    let shown = serde_json::to_string(&st).unwrap();
    for p in [PASSWORD, TOKEN, FILE_KEY] {
        assert!(!shown.contains(std::str::from_utf8(p).unwrap()));
    }

    // Without a key, an encrypted file refuses the commit by name.
    git(&repo, &["revert", "--no-edit", "HEAD"]);
    let mut keyless = Gitops::new(cp.client("gitops", &[groups::GITOPS]).await, config(url, dir.path().join("state2"), vec![])).await;
    let errors = match keyless.sync_once().await {
        Err(SyncFailure::Invalid(errors)) => errors,
        other => panic!("expected the commit to be refused, got {other:?}"),
    };
    assert_eq!((errors[0].file.as_str(), errors[0].reason.as_str()), ("creds.yaml.age", "encrypted with age and no decryption key is configured"));
    // With it, the revert applies.
    g.sync_once().await.unwrap();
    assert_eq!(status(&reader).await.state, "Synced");
    cp.shutdown().await;
}
