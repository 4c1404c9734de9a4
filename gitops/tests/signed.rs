//! Signed commits, made by the git CLI with `gpg.format=ssh` and keys from ssh-keygen
//! (ed25519, RSA, ECDSA P-256), checked by gitops' verifier through git2; then the
//! reconciler against an in-process control plane: signed by a trusted key → applied;
//! unsigned, or signed by another key → refused, nothing changes, the status says why.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kapp_api::kapp::{GitRef, GitSyncStatus};
use kapp_gitops::trust::{parse_keys, verify_commit, TrustError, TrustedKey};
use kapp_gitops::{Auth, Gitops, GitopsConfig, Source};
use kapp_testkit::{groups, ControlPlane};
use kube::api::{Api, ApiResource, DynamicObject};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A new key pair (`ssh-keygen -t kind`): its private key file and public line.
fn key(dir: &Path, name: &str, kind: &[&str]) -> (PathBuf, String) {
    let path = dir.join(name);
    run(Command::new("ssh-keygen").args(["-q", "-N", "", "-C", name, "-f"]).arg(&path).args(kind));
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap().trim().to_string();
    (path, public)
}

fn repo(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    for args in [&["init", "-q", "-b", "main"][..], &["config", "user.name", "Ada"], &["config", "user.email", "ada@example.com"], &["config", "gpg.format", "ssh"]] {
        run(Command::new("git").arg("-C").arg(&repo).args(args));
    }
    repo
}

/// Commit `file` with `body`, signed with `signer`'s key (or not at all).
fn commit(repo: &Path, file: &str, body: &str, signer: Option<&Path>) -> String {
    std::fs::write(repo.join(file), body).unwrap();
    run(Command::new("git").arg("-C").arg(repo).args(["add", "-A"]));
    let mut c = Command::new("git");
    c.arg("-C").arg(repo);
    match signer {
        Some(k) => c.arg("-c").arg(format!("user.signingkey={}", k.display())).args(["commit", "-q", "-S", "-m", file]),
        None => c.args(["commit", "-q", "--no-gpg-sign", "-m", file]),
    };
    run(&mut c);
    run(Command::new("git").arg("-C").arg(repo).args(["rev-parse", "HEAD"]))
}

fn skip() -> bool {
    let missing = Command::new("ssh-keygen").arg("-?").output().is_err();
    if missing {
        eprintln!("skipped: ssh-keygen (openssh-client) is not installed");
    }
    missing
}

#[test]
fn ssh_signatures_of_every_key_type_verify_and_others_do_not() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let r = repo(dir.path());
    let git2_repo = git2::Repository::open(&r).unwrap();
    let (ed, ed_pub) = key(dir.path(), "ed", &["-t", "ed25519"]);
    let (rsa, rsa_pub) = key(dir.path(), "rsa", &["-t", "rsa", "-b", "2048"]);
    let (ec, ec_pub) = key(dir.path(), "ec", &["-t", "ecdsa", "-b", "256"]);
    let (_, eve_pub) = key(dir.path(), "eve", &["-t", "ed25519"]);
    let trusted: Vec<TrustedKey> = parse_keys([ed_pub.as_str(), rsa_pub.as_str(), ec_pub.as_str()]).unwrap();
    for (i, k) in [&ed, &rsa, &ec].into_iter().enumerate() {
        let sha = commit(&r, &format!("f{i}"), "x", Some(k));
        let signer = verify_commit(&git2_repo, git2::Oid::from_str(&sha).unwrap(), &trusted).unwrap_or_else(|e| panic!("{}: {e}", k.display()));
        assert!(signer.contains(&trusted[i].name), "{signer}");
        // The same signature, only trusting someone else: refused, naming the signer.
        let eve = parse_keys([eve_pub.as_str()]).unwrap();
        assert!(matches!(verify_commit(&git2_repo, git2::Oid::from_str(&sha).unwrap(), &eve), Err(TrustError::UnknownKey(_))));
    }
    let unsigned = commit(&r, "u", "x", None);
    assert_eq!(verify_commit(&git2_repo, git2::Oid::from_str(&unsigned).unwrap(), &trusted), Err(TrustError::Unsigned));
    // A signature moved onto other content does not verify: a commit rewritten with the
    // signature kept (its message changed in the raw object) is refused.
    let signed = commit(&r, "g", "x", Some(&ed));
    let raw = run(Command::new("git").arg("-C").arg(&r).args(["cat-file", "commit", &signed]));
    let forged = raw.replacen("\n\ng", "\n\ngood", 1);
    assert_ne!(raw, forged);
    let path = dir.path().join("forged");
    std::fs::write(&path, format!("{forged}\n")).unwrap();
    let forged_sha = run(Command::new("git").arg("-C").arg(&r).args(["hash-object", "-t", "commit", "-w"]).arg(&path));
    let e = verify_commit(&git2_repo, git2::Oid::from_str(&forged_sha).unwrap(), &trusted).unwrap_err();
    assert!(matches!(e, TrustError::BadSignature(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_commits_signed_by_a_trusted_key_are_applied() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), 1).await;
    let r = repo(dir.path());
    let (ops, ops_pub) = key(dir.path(), "ops", &["-t", "ed25519"]);
    let (eve, _) = key(dir.path(), "eve", &["-t", "ed25519"]);
    let cfg = GitopsConfig {
        name: "cluster".into(),
        source: Source {
            url: format!("file://{}", r.display()),
            git_ref: GitRef { branch: Some("main".into()), ..Default::default() },
            auth: Auth::None,
            timeout: Duration::from_secs(30),
            max_bytes: 64 << 20,
            trusted_keys: parse_keys([ops_pub.as_str()]).unwrap(),
        },
        path: String::new(),
        interval: Duration::from_millis(200),
        state_dir: dir.path().join("state"),
        identities: Vec::new(),
    };
    let mut g = Gitops::new(cp.client("gitops", &[groups::GITOPS]).await, cfg).await;
    let viewer = cp.client("viewer", &[groups::VIEWERS]).await;
    let cms: Api<ConfigMap> = Api::namespaced(viewer.clone(), "default");
    let cm = |v: &str| format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: conf\n  namespace: default\ndata:\n  k: \"{v}\"\n");
    let value = || async { cms.get("conf").await.ok().and_then(|c| c.data).map(|d| d["k"].clone()) };
    let status = || async {
        let ar = ApiResource { group: "kapp.dev".into(), version: "v1".into(), api_version: "kapp.dev/v1".into(), kind: "GitSync".into(), plural: "gitsyncs".into() };
        let api: Api<DynamicObject> = Api::all_with(viewer.clone(), &ar);
        let o = api.get("cluster").await.unwrap();
        serde_json::from_value::<GitSyncStatus>(o.data["status"].clone()).unwrap()
    };

    let good = commit(&r, "conf.yaml", &cm("1"), Some(&ops));
    g.sync_once().await.unwrap();
    assert_eq!(value().await.as_deref(), Some("1"));
    assert_eq!(status().await.applied_commit.unwrap().sha, good);

    for (signer, v, why) in [(None, "2", "signature: not signed"), (Some(eve.as_path()), "3", "which is not a trusted key")] {
        let sha = commit(&r, "conf.yaml", &cm(v), signer);
        assert!(g.sync_once().await.is_err(), "commit {v} refused");
        assert_eq!(value().await.as_deref(), Some("1"), "nothing of commit {v} applied");
        let st = status().await;
        assert_eq!(st.state, "Failed");
        assert_eq!(st.fetched_commit.unwrap().sha, sha);
        assert_eq!(st.applied_commit.unwrap().sha, good, "the last good commit stays live");
        assert!(st.message.contains(why) && st.message.contains(&sha[..7]), "{}", st.message);
    }

    let again = commit(&r, "conf.yaml", &cm("4"), Some(&ops));
    g.sync_once().await.unwrap();
    assert_eq!(value().await.as_deref(), Some("4"));
    let st = status().await;
    assert_eq!((st.state.as_str(), st.applied_commit.unwrap().sha), ("Synced", again));
    cp.shutdown().await;
}
