//! gitops over ssh://: Debian's sshd, started by the test on loopback with its own host key,
//! serves a repository made with the git CLI to the deploy key `kapp gen cluster` makes
//! (kapp_bootstrap::sshkey); gitops applies it. A host presenting a key that is not in the
//! given known_hosts is refused before any credential is sent, and nothing changes; hashed
//! known_hosts entries (`ssh-keygen -H`) match only the host they were written for.
//! Root only (sshd logs in as root here); skipped without sshd (openssh-server).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kapp_api::kapp::GitRef;
use kapp_gitops::source::parse_known_hosts;
use kapp_gitops::{Auth, Gitops, GitopsConfig, Source};
use kapp_testkit::{groups, ControlPlane};
use kube::api::Api;

const SSHD: &str = "/usr/sbin/sshd";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

struct Sshd(Child);

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// sshd on 127.0.0.1:`port` with `host_key`, letting in the keys of `authorized`.
fn sshd(port: u16, host_key: &Path, authorized: &Path) -> Sshd {
    std::fs::create_dir_all("/run/sshd").unwrap();
    let child = Command::new(SSHD)
        .args(["-D", "-e", "-f", "/dev/null", "-p", &port.to_string(), "-h"])
        .arg(host_key)
        .args(["-o", "ListenAddress=127.0.0.1", "-o", "StrictModes=no", "-o", "UsePAM=no", "-o", "PermitRootLogin=prohibit-password", "-o", "PidFile=none", "-o", "PasswordAuthentication=no"])
        .arg("-o")
        .arg(format!("AuthorizedKeysFile={}", authorized.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sshd starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sshd did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Sshd(child)
}

fn host_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    run(Command::new("ssh-keygen").args(["-q", "-N", "", "-t", "ed25519", "-f"]).arg(&path));
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    let mut f = public.split_whitespace();
    (path, format!("{} {}", f.next().unwrap(), f.next().unwrap()))
}

/// `known_hosts` text with `name`'s entry for `key` hashed by `ssh-keygen -H`.
fn hashed(dir: &Path, name: &str, key: &str) -> String {
    let path = dir.join(format!("known_hosts-{}", name.replace([':', '[', ']'], "_")));
    std::fs::write(&path, format!("{name} {key}\n")).unwrap();
    run(Command::new("ssh-keygen").arg("-H").arg("-f").arg(&path));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("|1|") && !text.contains(name), "{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_over_ssh_with_the_deploy_key_and_a_checked_host_key() {
    if !nix_is_root() || !Path::new(SSHD).exists() {
        eprintln!("skipped: needs root and {SSHD} (openssh-server)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    std::fs::write(repo.join("conf.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: conf\n  namespace: default\ndata:\n  via: ssh\n").unwrap();
    for args in [&["init", "-q", "-b", "main"][..], &["add", "-A"], &["-c", "user.name=t", "-c", "user.email=t@x", "commit", "-q", "-m", "over ssh"]] {
        run(Command::new("git").arg("-C").arg(&repo).args(args));
    }
    let deploy = kapp_bootstrap::sshkey::ed25519("kapp-deploy@test").unwrap();
    let authorized = dir.path().join("authorized_keys");
    std::fs::write(&authorized, format!("{}\n", deploy.public)).unwrap();
    let (host, host_pub) = host_key(dir.path(), "host");
    let (_, other_pub) = host_key(dir.path(), "other");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _sshd = sshd(port, &host, &authorized);

    let cp = ControlPlane::start(dir.path(), 1).await;
    let cms: Api<ConfigMap> = Api::namespaced(cp.client("viewer", &[groups::VIEWERS]).await, "default");
    let plain = |key: &str| format!("# the test's sshd\n[127.0.0.1]:{port} {key}\n");
    let source = |known: &str| Source {
        url: format!("ssh://root@127.0.0.1:{port}{}", repo.display()),
        git_ref: GitRef { branch: Some("main".into()), ..Default::default() },
        auth: Auth::Ssh { key: deploy.private.clone(), known_hosts: parse_known_hosts(known).unwrap() },
        timeout: Duration::from_secs(30),
        max_bytes: 64 << 20,
        trusted_keys: vec![],
    };
    let config = |known: &str, state: &str| GitopsConfig { name: "cluster".into(), source: source(known), path: String::new(), interval: Duration::from_millis(200), state_dir: dir.path().join(state), identities: Vec::new() };

    // A host key nobody vouched for: refused, nothing applied.
    // So is the right key hashed under another port's name.
    let other_port = hashed(dir.path(), &format!("[127.0.0.1]:{}", port + 1), &host_pub);
    for (known, state) in [(plain(&other_pub), "state-wrong"), (other_port, "state-other-port")] {
        let mut wrong = Gitops::new(cp.client("gitops", &[groups::GITOPS]).await, config(&known, state)).await;
        let e = wrong.sync_once().await.unwrap_err().to_string();
        assert!(e.contains(&format!("the host key of [127.0.0.1]:{port} is not one of the known hosts")), "{state}: {e}");
        assert!(cms.get_opt("conf").await.unwrap().is_none());
    }

    // The host's key under its hashed name: applied.
    let mut g = Gitops::new(cp.client("gitops", &[groups::GITOPS]).await, config(&hashed(dir.path(), &format!("[127.0.0.1]:{port}"), &host_pub), "state-hashed")).await;
    g.sync_once().await.unwrap();
    assert_eq!(cms.get("conf").await.unwrap().data.unwrap()["via"], "ssh");
    // And under its plain name.
    let mut g = Gitops::new(cp.client("gitops", &[groups::GITOPS]).await, config(&plain(&host_pub), "state")).await;
    g.sync_once().await.unwrap();
    // Stopped before the process exits: RocksDB's threads must not outlive its statics.
    cp.shutdown().await;
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").unwrap_or_default().lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}
