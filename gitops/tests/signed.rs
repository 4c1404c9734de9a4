//! Signed commits, made by the git CLI with `gpg.format=ssh` and keys from ssh-keygen
//! (ed25519, RSA, ECDSA P-256), checked by gitops' verifier through git2; then the
//! reconciler against an in-process control plane: signed by a trusted key → applied;
//! unsigned, or signed by another key → refused, nothing changes, the status says why.
//! The same for OpenPGP signatures made by the real gpg (RSA, Ed25519, a signing subkey)
//! in a GnuPG home of the test's own.

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

/// A copy of commit `sha` whose message `subject` is replaced by `to` in the raw object, its
/// signature kept: the new object's id.
fn forge(repo: &Path, sha: &str, subject: &str, to: &str) -> String {
    let raw = run(Command::new("git").arg("-C").arg(repo).args(["cat-file", "commit", sha]));
    let forged = raw.replacen(&format!("\n\n{subject}"), &format!("\n\n{to}"), 1);
    assert_ne!(raw, forged);
    let path = repo.join(".git").join("forged");
    std::fs::write(&path, format!("{forged}\n")).unwrap();
    run(Command::new("git").arg("-C").arg(repo).args(["hash-object", "-t", "commit", "-w"]).arg(&path))
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
    let forged_sha = forge(&r, &signed, "g", "good");
    let e = verify_commit(&git2_repo, git2::Oid::from_str(&forged_sha).unwrap(), &trusted).unwrap_err();
    assert!(matches!(e, TrustError::BadSignature(_)), "{e}");
}

/// A control plane and gitops following `repo`'s main branch, applying only commits signed
/// by one of `trusted`.
struct Cluster {
    cp: ControlPlane,
    g: Gitops,
    viewer: kube::Client,
}

impl Cluster {
    async fn start(dir: &Path, repo: &Path, trusted: Vec<TrustedKey>) -> Cluster {
        let cp = ControlPlane::start(dir, 1).await;
        let cfg = GitopsConfig {
            name: "cluster".into(),
            source: Source {
                url: format!("file://{}", repo.display()),
                git_ref: GitRef { branch: Some("main".into()), ..Default::default() },
                auth: Auth::None,
                timeout: Duration::from_secs(30),
                max_bytes: 64 << 20,
                trusted_keys: trusted,
            },
            path: String::new(),
            interval: Duration::from_millis(200),
            state_dir: dir.join("state"),
            identities: Vec::new(),
        };
        let g = Gitops::new(cp.client("gitops", &[groups::GITOPS]).await, cfg).await;
        let viewer = cp.client("viewer", &[groups::VIEWERS]).await;
        Cluster { cp, g, viewer }
    }
}

/// The ConfigMap the tests commit, with `k: v`.
fn cm(v: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: conf\n  namespace: default\ndata:\n  k: \"{v}\"\n")
}

/// Its live value.
async fn value(viewer: &kube::Client) -> Option<String> {
    let cms: Api<ConfigMap> = Api::namespaced(viewer.clone(), "default");
    cms.get("conf").await.ok().and_then(|c| c.data).map(|d| d["k"].clone())
}

async fn status(viewer: &kube::Client) -> GitSyncStatus {
    let ar = ApiResource { group: "kapp.dev".into(), version: "v1".into(), api_version: "kapp.dev/v1".into(), kind: "GitSync".into(), plural: "gitsyncs".into() };
    let api: Api<DynamicObject> = Api::all_with(viewer.clone(), &ar);
    let o = api.get("cluster").await.unwrap();
    serde_json::from_value::<GitSyncStatus>(o.data["status"].clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_commits_signed_by_a_trusted_key_are_applied() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let r = repo(dir.path());
    let (ops, ops_pub) = key(dir.path(), "ops", &["-t", "ed25519"]);
    let (eve, _) = key(dir.path(), "eve", &["-t", "ed25519"]);
    let Cluster { cp, mut g, viewer } = Cluster::start(dir.path(), &r, parse_keys([ops_pub.as_str()]).unwrap()).await;
    let value = || value(&viewer);
    let status = || status(&viewer);

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

/// A GnuPG home of the test's own (`GNUPGHOME`), keys made without a passphrase; its agent
/// is stopped when dropped.
struct Gpg {
    home: PathBuf,
}

impl Gpg {
    fn new(dir: &Path) -> Option<Gpg> {
        if Command::new("gpg").arg("--version").output().is_err() {
            eprintln!("skipped: gpg (gnupg) is not installed");
            return None;
        }
        let home = dir.join("gnupg");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        Some(Gpg { home })
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("gpg");
        c.env("GNUPGHOME", &self.home).args(["--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""]);
        c
    }

    /// Fingerprints of `uid`'s primary key and subkeys, in order.
    fn fingerprints(&self, uid: &str) -> Vec<String> {
        let out = run(self.cmd().args(["--with-colons", "--list-keys", uid]));
        out.lines().filter_map(|l| l.strip_prefix("fpr:")).map(|l| l.trim_matches(':').to_string()).collect()
    }

    /// A new signing key (`--quick-gen-key uid algo sign`): its fingerprint.
    fn key(&self, uid: &str, algo: &str) -> String {
        run(self.cmd().args(["--quick-gen-key", uid, algo, "sign", "never"]));
        self.fingerprints(uid).remove(0)
    }

    /// A new signing subkey of `uid`'s key: its fingerprint.
    fn subkey(&self, uid: &str, algo: &str) -> String {
        let primary = self.fingerprints(uid).remove(0);
        run(self.cmd().args(["--quick-add-key", &primary, algo, "sign", "never"]));
        self.fingerprints(uid).pop().unwrap()
    }

    /// `gpg --armor --export`.
    fn export(&self, fpr: &str) -> String {
        run(self.cmd().args(["--armor", "--export", fpr]))
    }

    /// Commit `file` with `body`, signed by the key `fpr` (exactly that key, `!`) through
    /// `program` (gpg, or a wrapper).
    fn commit(&self, repo: &Path, file: &str, body: &str, fpr: &str, program: &str) -> String {
        std::fs::write(repo.join(file), body).unwrap();
        run(Command::new("git").arg("-C").arg(repo).args(["add", "-A"]));
        let signing = format!("user.signingkey={fpr}!");
        let program = format!("gpg.program={program}");
        run(Command::new("git").env("GNUPGHOME", &self.home).arg("-C").arg(repo).args(["-c", "gpg.format=openpgp", "-c", &program, "-c", &signing, "commit", "-q", "-S", "-m", file]));
        run(Command::new("git").arg("-C").arg(repo).args(["rev-parse", "HEAD"]))
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf").env("GNUPGHOME", &self.home).args(["--kill", "gpg-agent"]).output();
    }
}

#[test]
fn gpg_signatures_verify_and_others_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let Some(gpg) = Gpg::new(dir.path()) else { return };
    let r = repo(dir.path());
    let git2_repo = git2::Repository::open(&r).unwrap();
    let oid = |sha: &str| git2::Oid::from_str(sha).unwrap();
    let rsa = gpg.key("RSA Ops <rsa@example.com>", "rsa3072");
    let ed = gpg.key("Ed Ops <ed@example.com>", "ed25519");
    let eve = gpg.key("Eve <eve@example.com>", "ed25519");
    let sub_primary = gpg.key("Sub Ops <sub@example.com>", "ed25519");
    let sub = gpg.subkey("Sub Ops <sub@example.com>", "ed25519");
    // One trusted keys file: an SSH key line and armored blocks, as `--trusted-keys` reads it.
    let (_, ssh_pub) = key(dir.path(), "ssh", &["-t", "ed25519"]);
    let file = format!("# ops\n{ssh_pub}\n{}\n{}\n\n{}\n", gpg.export(&rsa), gpg.export(&ed), gpg.export(&sub_primary));
    let trusted = parse_keys(file.lines()).unwrap();
    assert_eq!(trusted.len(), 4, "{trusted:?}");
    assert_eq!(trusted[1].name, format!("OpenPGP {rsa} RSA Ops <rsa@example.com>"));

    for (i, (fpr, file)) in [(&rsa, "rsa"), (&ed, "ed")].into_iter().enumerate() {
        let sha = gpg.commit(&r, file, "x", fpr, "gpg");
        let signer = verify_commit(&git2_repo, oid(&sha), &trusted).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(signer, trusted[i + 1].name);
    }
    // A signing subkey, bound to its trusted primary key.
    let sha = gpg.commit(&r, "sub", "x", &sub, "gpg");
    let signer = verify_commit(&git2_repo, oid(&sha), &trusted).unwrap_or_else(|e| panic!("subkey: {e}"));
    assert_eq!(signer, format!("OpenPGP {sub_primary} Sub Ops <sub@example.com> (subkey {sub})"));

    // Signed by a key nobody trusts: refused, naming it.
    let sha = gpg.commit(&r, "eve", "x", &eve, "gpg");
    let e = verify_commit(&git2_repo, oid(&sha), &trusted).unwrap_err();
    assert_eq!(e, TrustError::UnknownKey(format!("OpenPGP key {eve}")));
    assert!(e.to_string().contains("which is not a trusted key"), "{e}");
    // Trusting only Eve, Ed's commit is refused too.
    let only_eve = parse_keys([gpg.export(&eve).as_str()]).unwrap();
    let ed_commit = gpg.commit(&r, "ed2", "x", &ed, "gpg");
    assert!(matches!(verify_commit(&git2_repo, oid(&ed_commit), &only_eve), Err(TrustError::UnknownKey(_))));

    let unsigned = commit(&r, "u", "x", None);
    assert_eq!(verify_commit(&git2_repo, oid(&unsigned), &trusted), Err(TrustError::Unsigned));

    // A tampered commit: the raw object's message changed, the signature kept.
    let forged_sha = forge(&r, &ed_commit, "ed2", "edited");
    let e = verify_commit(&git2_repo, oid(&forged_sha), &trusted).unwrap_err();
    assert_eq!(e, TrustError::BadSignature(trusted[2].name.clone()));

    // SHA-1 is refused with its reason.
    let wrapper = dir.path().join("gpg-sha1");
    std::fs::write(&wrapper, "#!/bin/sh\nexec gpg --digest-algo SHA1 \"$@\"\n").unwrap();
    run(Command::new("chmod").arg("755").arg(&wrapper));
    let sha = gpg.commit(&r, "sha1", "x", &rsa, &wrapper.display().to_string());
    let e = verify_commit(&git2_repo, oid(&sha), &trusted).unwrap_err();
    assert!(matches!(&e, TrustError::Unsupported(w) if w.contains("SHA-1")), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_commits_gpg_signed_by_a_trusted_key_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let Some(gpg) = Gpg::new(dir.path()) else { return };
    let r = repo(dir.path());
    let ops = gpg.key("Ops <ops@example.com>", "ed25519");
    let eve = gpg.key("Eve <eve@example.com>", "ed25519");
    let Cluster { cp, mut g, viewer } = Cluster::start(dir.path(), &r, parse_keys(gpg.export(&ops).lines()).unwrap()).await;
    let value = || value(&viewer);
    let status = || status(&viewer);

    let good = gpg.commit(&r, "conf.yaml", &cm("1"), &ops, "gpg");
    g.sync_once().await.unwrap();
    assert_eq!(value().await.as_deref(), Some("1"));
    assert_eq!(status().await.applied_commit.unwrap().sha, good);

    let bad = gpg.commit(&r, "conf.yaml", &cm("2"), &eve, "gpg");
    assert!(g.sync_once().await.is_err(), "Eve's commit refused");
    assert_eq!(value().await.as_deref(), Some("1"), "nothing of Eve's commit applied");
    let st = status().await;
    assert_eq!((st.state.as_str(), st.fetched_commit.unwrap().sha), ("Failed", bad.clone()));
    assert_eq!(st.applied_commit.unwrap().sha, good, "the last good commit stays live");
    assert!(st.message.contains(&format!("signature: signed by OpenPGP key {eve}, which is not a trusted key")) && st.message.contains(&bad[..7]), "{}", st.message);
    cp.shutdown().await;
}
