//! `kapp up` end to end, as a newcomer runs it: the whole stack as one node (real store,
//! apiserver, controllers, scheduler, gitops, kubelet with libcontainer, nftables proxy,
//! DNS), following a temporary git repository made from `examples/app`. It runs inside a
//! network namespace this test makes, so it touches nothing of the host's network.
//!
//! Root only (skipped otherwise): containers, namespaces, nftables.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use kapp_e2e::kapp_bin;
use kube::api::{Api, ListParams};

const NS: &str = "shop";

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A network namespace, removed on drop (after `kapp down` ran in it).
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        let name = format!("kup-e2e-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        assert!(Command::new("ip").args(["netns", "add", &name]).status().unwrap().success());
        Netns { name }
    }

    /// Move the calling thread into the namespace (its children follow).
    fn enter(&self) {
        let f = std::fs::File::open(format!("/run/netns/{}", self.name)).expect("open the netns");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns into the test's network namespace");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Where `kapp up` keeps things, and the flags that keep it out of other tests' way.
struct Paths {
    state: PathBuf,
    repo: PathBuf,
    prefix: String,
}

impl Paths {
    fn host_args(&self) -> Vec<String> {
        ["--state-dir", &self.state.display().to_string(), "--netns-prefix", &self.prefix].iter().map(|s| s.to_string()).collect()
    }
}

/// `kapp up` running, its output going to a file.
struct Up {
    child: std::process::Child,
    log: PathBuf,
}

impl Up {
    fn start(p: &Paths, log: &Path) -> Result<Up> {
        let out = std::fs::File::create(log)?;
        let mut args = vec!["up".to_string()];
        args.extend(p.host_args());
        args.extend(["--repo".into(), format!("file://{}", p.repo.display()), "--interval".into(), "2".into(), "--wait".into(), "240".into(), "--node-name".into(), "kup".into()]);
        let child = Command::new(kapp_bin()).args(&args).env("KAPP_LOG", "info,openraft=warn").stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).spawn()?;
        Ok(Up { child, log: log.to_path_buf() })
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait for `kapp up` to say the cluster converged.
    async fn converged(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let out = self.output();
            if out.contains("kapp up converged in") {
                return Ok(());
            }
            if out.contains("is not ready after") {
                bail!("kapp up gave up waiting:\n{out}");
            }
            if let Some(st) = self.child.try_wait()? {
                bail!("kapp up exited ({st}):\n{out}");
            }
            if Instant::now() > deadline {
                bail!("kapp up did not converge within {within:?}:\n{out}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Ctrl-C, and wait for a clean exit.
    async fn interrupt(&mut self) -> Result<()> {
        signal(&self.child, nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(150);
        loop {
            if let Some(st) = self.child.try_wait()? {
                if !st.success() {
                    bail!("kapp up exited with {st}:\n{}", self.output());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("kapp up did not stop within 150 s:\n{}", self.output());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // It stops its services in order.
            signal(&self.child, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(120);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn signal(child: &std::process::Child, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig);
}

fn git(repo: &Path, args: &[&str]) -> Result<()> {
    let st = Command::new("git").arg("-C").arg(repo).args(["-c", "user.name=test", "-c", "user.email=test@localhost"]).args(args).stdout(Stdio::null()).status()?;
    if !st.success() {
        bail!("git {args:?} failed");
    }
    Ok(())
}

/// A repository holding a copy of examples/app.
fn make_repo(dir: &Path) -> Result<()> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/app");
    let st = Command::new("cp").arg("-r").arg(&src).arg(dir).status()?;
    if !st.success() {
        bail!("copy {}", src.display());
    }
    git(dir, &["init", "-q", "-b", "main"])?;
    git(dir, &["add", "-A"])?;
    git(dir, &["commit", "-q", "-m", "the example"])
}

/// The file of the repository holding `kind: <kind>`.
fn file_with(repo: &Path, kind: &str) -> Result<PathBuf> {
    for e in std::fs::read_dir(repo)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "yaml") && std::fs::read_to_string(&p)?.contains(&format!("kind: {kind}\n")) {
            return Ok(p);
        }
    }
    bail!("no file in {} holds a {kind}", repo.display())
}

async fn eventually<T, F, Fut>(what: &str, within: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + within;
    let mut last = String::new();
    loop {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {within:?} {last}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn pod_ready(p: &Pod) -> bool {
    let st = p.status.as_ref();
    st.and_then(|s| s.phase.as_deref()) == Some("Running") && st.and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The web Deployment has `n` ready replicas and exactly `n` pods, all Running and Ready: their uids.
async fn web_ready(client: &kube::Client, n: i32) -> Result<Option<Vec<String>>> {
    let d = Api::<Deployment>::namespaced(client.clone(), NS).get("web").await?;
    let st = d.status.unwrap_or_default();
    if d.spec.and_then(|s| s.replicas) != Some(n) || st.ready_replicas != Some(n) || st.updated_replicas != Some(n) {
        return Ok(None);
    }
    let pods = Api::<Pod>::namespaced(client.clone(), NS).list(&ListParams::default().labels("app.kubernetes.io/name=web")).await?;
    let live: Vec<&Pod> = pods.items.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
    if live.len() != n as usize || !live.iter().all(|p| pod_ready(p)) {
        return Ok(None);
    }
    let mut uids: Vec<String> = live.iter().filter_map(|p| p.metadata.uid.clone()).collect();
    uids.sort();
    Ok(Some(uids))
}

fn kappctl_status(p: &Paths) -> Result<(i32, serde_json::Value)> {
    let kappctl = kapp_bin().with_file_name("kappctl");
    let out = Command::new(kappctl).arg("--kubeconfig").arg(p.state.join("viewer.kubeconfig")).args(["status", "-o", "json"]).output()?;
    let json = serde_json::from_slice(&out.stdout).with_context(|| format!("kappctl status -o json: {}", String::from_utf8_lossy(&out.stderr)))?;
    Ok((out.status.code().unwrap_or(-1), json))
}

async fn scenario(p: &Paths, logs: &Path) -> Result<()> {
    make_repo(&p.repo)?;
    let mut up = Up::start(p, &logs.join("up-1.log"))?;
    up.converged(Duration::from_secs(300)).await?;
    let viewer = kapp_tls::Pem::load(&p.state.join("pki/ca.pem"), &p.state.join("pki/viewer.pem"), &p.state.join("pki/viewer.key"))?;
    let client = kapp_runtime::client("https://127.0.0.1:6443", &viewer).await?;

    // Every example workload: web Ready, the Job reached the Service by name, the CronJob exists.
    eventually("web: 3 ready pods", Duration::from_secs(60), || web_ready(&client, 3)).await?;
    let jobs = Api::<Job>::namespaced(client.clone(), NS);
    eventually("the smoke Job succeeds (DNS + proxy to web)", Duration::from_secs(120), || async {
        let j = jobs.get("smoke").await?;
        let st = j.status.unwrap_or_default();
        if st.failed.unwrap_or(0) > 0 {
            bail!("the smoke Job failed a pod: {st:?}");
        }
        Ok((st.succeeded == Some(1)).then_some(()))
    })
    .await?;
    let cronjobs = Api::<CronJob>::namespaced(client.clone(), NS);
    assert!(!cronjobs.list(&ListParams::default()).await?.items.is_empty(), "the example's CronJob is there");
    let (code, _) = kappctl_status(p)?;
    assert_eq!(code, 0, "kappctl status: healthy");
    // The Job's output, read as a user would: kappctl → apiserver (pods/log) → kubelet.
    let smoke = Api::<Pod>::namespaced(client.clone(), NS).list(&ListParams::default().labels("job-name=smoke")).await?;
    let smoke_pod = smoke.items.first().and_then(|p| p.metadata.name.clone()).context("the smoke pod")?;
    let out = Command::new(kapp_bin().with_file_name("kappctl"))
        .arg("--kubeconfig")
        .arg(p.state.join("viewer.kubeconfig"))
        .args(["logs", "-n", NS, &smoke_pod])
        .output()?;
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && printed.contains("smoke: ok"), "kappctl logs {smoke_pod}: {printed} {}", String::from_utf8_lossy(&out.stderr));
    // The node's CPU and memory, as kubectl top reads them: apiserver (metrics.k8s.io) →
    // the kubelet's /stats/node; and in kappctl status.
    let top = eventually("kubectl top nodes", Duration::from_secs(60), || async {
        let out = Command::new("kubectl").arg("--kubeconfig").arg(p.state.join("viewer.kubeconfig")).args(["top", "nodes", "--no-headers"]).output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok((out.status.success() && text.split_whitespace().nth(1).is_some_and(|cpu| cpu.ends_with('m'))).then_some(text))
    })
    .await?;
    eprintln!("kubectl top nodes: {top}");
    let (_, status) = kappctl_status(p)?;
    let node = &status["nodes"]["items"][0];
    assert!(node["cpu"].as_str().is_some_and(|c| c.contains("m (")) && node["memory"].as_str().is_some_and(|m| m.contains("Mi (")), "kappctl status shows node use: {node}");
    // Nobody but gitops writes the example, so gitops never has drift to revert (controllers'
    // own annotations are not drift).
    let events = Api::<k8s_openapi::api::core::v1::Event>::all(client.clone()).list(&ListParams::default()).await?;
    let reverts: Vec<_> = events.items.iter().filter(|e| e.reason.as_deref() == Some("DriftReverted")).map(|e| e.message.clone().unwrap_or_default()).collect();
    assert!(reverts.is_empty(), "drift reverted with no one else writing: {reverts:?}");

    // A commit that scales the Deployment converges.
    let web = file_with(&p.repo, "Deployment")?;
    let text = std::fs::read_to_string(&web)?;
    assert!(text.contains("replicas: 3"), "{text}");
    std::fs::write(&web, text.replacen("replicas: 3", "replicas: 4", 1))?;
    git(&p.repo, &["commit", "-q", "-am", "scale web to 4"])?;
    eventually("web: 4 ready pods", Duration::from_secs(90), || web_ready(&client, 4)).await?;

    // Deleting a file prunes its objects.
    let cron_file = file_with(&p.repo, "CronJob")?;
    let cron_name = cron_file.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::remove_file(&cron_file)?;
    let kust = p.repo.join("kustomization.yaml");
    let k = std::fs::read_to_string(&kust)?;
    std::fs::write(&kust, k.lines().filter(|l| !l.contains(&cron_name)).map(|l| format!("{l}\n")).collect::<String>())?;
    git(&p.repo, &["commit", "-q", "-am", "no more CronJob"])?;
    eventually("the CronJob is pruned", Duration::from_secs(60), || async { Ok(cronjobs.list(&ListParams::default()).await?.items.is_empty().then_some(())) }).await?;

    // An invalid commit changes nothing (not even its valid part) and shows in kappctl status.
    let text = std::fs::read_to_string(&web)?;
    std::fs::write(&web, text.replacen("replicas: 4", "replicas: 2", 1))?;
    std::fs::write(p.repo.join("broken.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Not_A_Name\n  namespace: shop\n")?;
    let k = std::fs::read_to_string(&kust)?;
    std::fs::write(&kust, k.replacen("resources:\n", "resources:\n- broken.yaml\n", 1))?;
    git(&p.repo, &["add", "-A"])?;
    git(&p.repo, &["commit", "-q", "-m", "scale down, with a broken ConfigMap"])?;
    let status = eventually("kappctl status names the broken file", Duration::from_secs(60), || async {
        let (code, json) = kappctl_status(p)?;
        Ok((code == 1 && json.to_string().contains("broken.yaml")).then_some(json))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(web_ready(&client, 4).await?.is_some(), "the invalid commit's scale-down was not applied: {status}");
    git(&p.repo, &["revert", "--no-edit", "HEAD"])?;
    let before = eventually("healthy again after the revert", Duration::from_secs(60), || async {
        let (code, _) = kappctl_status(p)?;
        if code != 0 {
            return Ok(None);
        }
        web_ready(&client, 4).await
    })
    .await?;

    // Stop and start again: the same pods, none duplicated, the Job not run twice.
    up.interrupt().await?;
    assert!(up.output().contains("kapp up: stopped"), "{}", up.output());
    let mut up = Up::start(p, &logs.join("up-2.log"))?;
    up.converged(Duration::from_secs(300)).await?;
    let client = kapp_runtime::client("https://127.0.0.1:6443", &viewer).await?;
    let after = eventually("web: the same 4 pods ready again", Duration::from_secs(120), || web_ready(&client, 4)).await?;
    assert_eq!(after, before, "the same pods after a restart, no new ones");
    let smoke = Api::<Pod>::namespaced(client.clone(), NS).list(&ListParams::default().labels("job-name=smoke")).await?;
    assert_eq!(smoke.items.len(), 1, "one smoke pod");
    assert_eq!(smoke.items[0].status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded"));
    up.interrupt().await?;

    // kapp down removes what kapp up put on the (namespace's) host.
    let mut args = vec!["down".to_string(), "--purge".into()];
    args.extend(p.host_args());
    let st = Command::new(kapp_bin()).args(&args).status()?;
    assert!(st.success());
    assert!(!Command::new("ip").args(["link", "show", "kapp0"]).stderr(Stdio::null()).status()?.success(), "bridge gone");
    assert!(!Command::new("nft").args(["list", "table", "inet", "kapp"]).stderr(Stdio::null()).status()?.success(), "table gone");
    assert!(!p.state.exists(), "state purged");
    let leftovers: Vec<String> = std::fs::read_dir("/run/netns")?.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).filter(|n| n.starts_with(&p.prefix)).collect();
    assert!(leftovers.is_empty(), "pod namespaces left: {leftovers:?}");
    Ok(())
}

#[test]
fn kapp_up_runs_the_example_from_git_and_follows_commits() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let ns = Netns::new();
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let paths = Paths { state: tmp.path().join("state"), repo: tmp.path().join("repo"), prefix: format!("kup{}-", std::process::id()) };
    let name = ns.name.clone();
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let r = rt.block_on(scenario(&paths, &logs)).map_err(|e| format!("{e:#}\n{}", service_logs(&paths.state)));
            if r.is_err() {
                // Leave nothing behind in the namespace's host either way.
                let mut args = vec!["down".to_string(), "--purge".into()];
                args.extend(paths.host_args());
                let _ = Command::new(kapp_bin()).args(&args).status();
            }
            r
        })
        .join()
        .expect("the scenario thread")
    });
    if let Err(e) = result {
        panic!("kapp up in netns {name}: {e}");
    }
}

/// The last lines of every service's log.
fn service_logs(state: &Path) -> String {
    let mut out = String::new();
    for f in std::fs::read_dir(state.join("logs")).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(f.path()).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        out.push_str(&format!("--- {} ---\n{}\n", f.path().display(), tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
    }
    out
}
