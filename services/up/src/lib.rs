//! `kapp up`: the whole stack as one all-in-one node (head and worker) on this host, each
//! service its own process under kapp-init's supervisor, all state in one directory, the
//! cluster following a git repository (by default the embedded example, committed into a
//! local repository the user can edit). `kapp down` removes what it put on the host.
//!
//! Order of a start: lock the state directory → cluster material (CA, identities, Secret
//! key, a read-only kubeconfig) → the example repository and images → the host (forwarding,
//! the DNS address) → the services, in dependency order → wait until the cluster is healthy
//! and has applied a commit → print `kappctl status` and each service's memory → supervise
//! until SIGINT/SIGTERM → ordered stop (the kubelet stops its pods).

pub mod host;
pub mod layout;
pub mod node;
pub mod plan;
pub mod repo;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kapp_init::supervise::{Policy, ServiceState, Supervisor};
use layout::Layout;

/// Why `kapp up` / `kapp down` failed.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("{}: {reason}", path.display())]
    Io { path: PathBuf, reason: String },
    #[error("`{command}`: {reason}")]
    Command { command: String, reason: String },
    #[error("{0}")]
    Config(String),
    #[error("kapp up needs root: it runs containers, network namespaces and nftables")]
    NotRoot,
    #[error("another kapp up is running on {0} (stop it with Ctrl-C first)")]
    Running(PathBuf),
    #[error(transparent)]
    Gen(#[from] kapp_bootstrap::GenError),
    #[error(transparent)]
    Image(#[from] kapp_bootstrap::image::ImageError),
    #[error(transparent)]
    Tls(#[from] kapp_tls::TlsError),
    #[error(transparent)]
    Supervise(#[from] kapp_init::supervise::SuperviseError),
}

/// Everything `kapp up` can be told; [`UpConfig::new`] has the defaults.
#[derive(Clone, Debug)]
pub struct UpConfig {
    pub state_dir: PathBuf,
    /// The `kapp` binary the services run as.
    pub exe: PathBuf,
    /// Repository to follow (None: `<state>/repo`, made from the embedded example).
    pub repo: Option<String>,
    pub branch: Option<String>,
    /// Sub-path of the repository to render.
    pub path: String,
    pub interval: Duration,
    pub node_name: String,
    pub api_port: u16,
    pub store_port: u16,
    pub kubelet_port: u16,
    pub pod_cidr: String,
    pub cluster_cidr: String,
    /// The cluster DNS address (on the pod bridge).
    pub dns_ip: Ipv4Addr,
    pub bridge: String,
    pub table: String,
    /// The kubelet's pod network namespace prefix (what `kapp down` removes).
    pub netns_prefix: String,
    /// How long to wait for the cluster before showing its status anyway.
    pub wait: Duration,
    /// Copy every service's output to our stderr.
    pub verbose: bool,
}

impl UpConfig {
    pub fn new(state_dir: &Path, exe: PathBuf) -> UpConfig {
        UpConfig {
            state_dir: state_dir.to_path_buf(),
            exe,
            repo: None,
            branch: None,
            path: String::new(),
            interval: Duration::from_secs(5),
            node_name: default_node_name(),
            api_port: 6443,
            store_port: 2380,
            kubelet_port: 10250,
            pod_cidr: "10.244.0.0/24".into(),
            cluster_cidr: "10.244.0.0/16".into(),
            dns_ip: Ipv4Addr::new(10, 96, 0, 10),
            bridge: "kapp0".into(),
            table: "kapp".into(),
            netns_prefix: "kapp-".into(),
            wait: Duration::from_secs(300),
            verbose: false,
        }
    }
}

/// The host name if it is a valid node name, else `kapp`.
fn default_node_name() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_ascii_lowercase();
    if kapp_api::validation::is_dns1123_subdomain(&h) {
        h
    } else {
        "kapp".into()
    }
}

/// The example image every workload of the example uses.
pub const EXAMPLE_IMAGE: &str = "kapp.local/busybox:1";

/// Held for as long as `kapp up` runs (an advisory lock on `<state>/lock`).
struct StateLock {
    _file: std::fs::File,
}

fn lock(layout: &Layout) -> Result<StateLock, UpError> {
    let path = layout.lock();
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| UpError::Io { path: path.clone(), reason: e.to_string() })?;
    match f.try_lock() {
        Ok(()) => Ok(StateLock { _file: f }),
        Err(std::fs::TryLockError::WouldBlock) => Err(UpError::Running(layout.root.clone())),
        Err(std::fs::TryLockError::Error(e)) => Err(UpError::Io { path, reason: e.to_string() }),
    }
}

/// Whether we run as root (the owner of our own /proc entry is our effective user).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn mkdir(p: &Path) -> Result<(), UpError> {
    std::fs::create_dir_all(p).map_err(|e| UpError::Io { path: p.to_path_buf(), reason: e.to_string() })
}

/// The cluster's keys and certificates, the Secret key and the viewer's kubeconfig
/// (each made once).
fn ensure_material(cfg: &UpConfig, layout: &Layout) -> Result<(), UpError> {
    use kapp_api::groups;
    let pki = layout.pki();
    if !pki.join(kapp_bootstrap::files::CA_KEY).exists() {
        kapp_bootstrap::gen_pki(&pki, "kapp-up", &["127.0.0.1", "localhost"])?;
    }
    let node_cn = format!("system:node:{}", cfg.node_name);
    for (name, cn, group) in [("scheduler", "scheduler", groups::SCHEDULER), ("controllers", "controllers", groups::CONTROLLERS), ("node", node_cn.as_str(), groups::NODES)] {
        if !pki.join(format!("{name}.key")).exists() {
            kapp_bootstrap::gen_identity(&pki, name, cn, &[group], &[])?;
        }
    }
    if !layout.secret_key().exists() {
        kapp_bootstrap::gen_secret_key(&layout.secret_key())?;
    }
    if !layout.age_key().exists() {
        kapp_bootstrap::gen_age_key(&layout.age_key())?;
    }
    let kubeconfig = kapp_runtime::kubeconfig("kapp-up", &format!("https://127.0.0.1:{}", cfg.api_port), "viewer", &layout.identity("viewer")?);
    write_private(&layout.viewer_kubeconfig(), kubeconfig.as_bytes())
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), UpError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| UpError::Io { path: path.to_path_buf(), reason: e.to_string() };
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io)?;
    f.write_all(data).map_err(io)
}

/// The example image, built from the host's Debian package busybox-static (once).
fn ensure_images(layout: &Layout) -> Result<(), UpError> {
    let out = layout.images().join("busybox");
    if out.join("index.json").exists() {
        return Ok(());
    }
    mkdir(&layout.images())?;
    let spec = kapp_bootstrap::image::ImageSpec {
        reference: EXAMPLE_IMAGE.into(),
        packages: vec!["busybox-static".into()],
        busybox_applets: true,
        cmd: vec!["sh".into()],
        ..Default::default()
    };
    let built = kapp_bootstrap::image::build_layout(&spec, &out)?;
    say(&format!("built image {} ({}, {} files) from the Debian package busybox-static", built.reference, built.manifest_digest, built.files));
    Ok(())
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn describe(state: &ServiceState) -> String {
    match state {
        ServiceState::Waiting { on } if on.is_empty() => "queued".into(),
        ServiceState::Waiting { on } => format!("waiting for {}", on.join(", ")),
        ServiceState::Starting { pid } => format!("starting (pid {pid})"),
        ServiceState::Ready { pid } => format!("up (pid {pid})"),
        ServiceState::Backoff { restarts, last_exit, retry_in } => format!("{last_exit}; restart #{} in {:.1}s", restarts + 1, retry_in.as_secs_f64()),
        ServiceState::Stopping => "stopping".into(),
        ServiceState::Stopped { last_exit } => format!("stopped{}", last_exit.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()),
    }
}

/// Print the services whose state changed since `seen`.
fn report_services(states: &BTreeMap<String, ServiceState>, seen: &mut BTreeMap<String, ServiceState>, started: Instant) {
    for (name, st) in states {
        if seen.get(name) != Some(st) {
            say(&format!("[{:6.1}s] {name:<12} {}", started.elapsed().as_secs_f64(), describe(st)));
            seen.insert(name.clone(), st.clone());
        }
    }
}

/// A `<key>: <n> kB` line of a /proc file, in bytes.
fn proc_kb(text: &str, key: &str) -> Option<u64> {
    let kb: u64 = text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Memory of a process, bytes: resident (RSS) and proportional (PSS: pages shared with other
/// processes — the one `kapp` binary's code above all — counted as their share).
fn memory(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    Some((proc_kb(&status, "VmRSS")?, proc_kb(&rollup, "Pss")?))
}

/// The Jobs that have not finished yet (`namespace/name`): the example's smoke Job proves
/// DNS and the Service proxy, so `kapp up` waits for it.
fn unfinished_jobs(raw: &kappctl::view::Raw) -> Vec<String> {
    let finished = |job: &serde_json::Value| {
        job["status"]["conditions"].as_array().is_some_and(|cs| cs.iter().any(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True"))
    };
    let name = |job: &serde_json::Value| format!("{}/{}", job["metadata"]["namespace"].as_str().unwrap_or(""), job["metadata"]["name"].as_str().unwrap_or(""));
    raw.jobs.iter().flatten().filter(|j| !finished(j)).map(name).collect()
}

/// Why the cluster is not yet where `kapp up` calls it ready (nothing: it is): healthy, a node
/// Ready, a commit applied, every Job finished, and every running pod's containers started by
/// this run (`since`, RFC 3339) — after a restart the store still says Ready about pods the
/// kubelet has yet to start again.
fn not_converged(raw: &kappctl::view::Raw, view: &kappctl::view::ClusterView, since: &str) -> Vec<String> {
    let stale = |pod: &&serde_json::Value| {
        pod["status"]["phase"] == "Running"
            && !pod["status"]["containerStatuses"].as_array().is_some_and(|cs| cs.iter().all(|c| c["state"]["running"]["startedAt"].as_str().is_some_and(|t| t >= since)))
    };
    let mut why = view.health.reasons.clone();
    if view.health.verdict != kappctl::view::Verdict::Healthy && why.is_empty() {
        why.push("the cluster is not healthy".into());
    }
    if view.nodes.items.is_empty() {
        why.push("no node has registered".into());
    }
    if view.gitops.items.iter().all(|g| g.applied.is_none()) {
        why.push("gitops has applied no commit yet".into());
    }
    match &raw.pods {
        None => why.push("pods not read yet".into()),
        Some(pods) => {
            let stale: Vec<_> = pods.iter().filter(stale).map(|p| p["metadata"]["name"].as_str().unwrap_or("").to_string()).collect();
            if !stale.is_empty() {
                why.push(format!("pods not yet restarted by this run: {}", stale.join(", ")));
            }
        }
    }
    let jobs = unfinished_jobs(raw);
    if !jobs.is_empty() {
        why.push(format!("job {} not finished", jobs.join(", ")));
    }
    why
}

/// How waiting for the cluster ended: whether it converged, and the last view of it (none
/// if the apiserver never answered).
struct Waited {
    converged: bool,
    view: Option<kappctl::view::ClusterView>,
}

async fn wait_for_cluster(cfg: &UpConfig, layout: &Layout, sup: &Supervisor, started: Instant, seen: &mut BTreeMap<String, ServiceState>) -> Result<Waited, UpError> {
    let server = format!("https://127.0.0.1:{}", cfg.api_port);
    let viewer = layout.identity("viewer")?;
    let mut states = sup.states();
    let mut last_reasons = String::new();
    let deadline = started + cfg.wait;
    let since = kapp_api::table::now_rfc3339();
    let mut client = None;
    let mut last_view = None;
    while Instant::now() < deadline {
        report_services(&states.borrow_and_update(), seen, started);
        if client.is_none() {
            client = kappctl::readonly::ReadOnlyClient::connect(&server, &viewer).await.ok();
        }
        if let Some(c) = &client {
            let reasons = match kappctl::gather::gather(c, "kapp-up").await {
                Ok(raw) => {
                    let view = kappctl::view::build(&raw);
                    let r = not_converged(&raw, &view, &since);
                    if r.is_empty() {
                        let t = started.elapsed().as_secs_f64();
                        say(&format!("[{t:6.1}s] cluster      ready: kapp up converged in {t:.1}s"));
                        return Ok(Waited { converged: true, view: Some(view) });
                    }
                    last_view = Some(view);
                    r.join("; ")
                }
                Err(e) => format!("apiserver: {e}"),
            };
            if reasons != last_reasons {
                say(&format!("[{:6.1}s] cluster      waiting: {reasons}", started.elapsed().as_secs_f64()));
                last_reasons = reasons;
            }
        }
        tokio::select! {
            _ = states.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    Ok(Waited { converged: false, view: last_view })
}

fn print_memory(states: &BTreeMap<String, ServiceState>) {
    let mb = |b: u64| b as f64 / 1e6;
    let mut parts = Vec::new();
    let (mut head_rss, mut head_pss, mut all_pss) = (0, 0, 0);
    for (name, st) in states {
        if let ServiceState::Ready { pid } | ServiceState::Starting { pid } = st {
            if let Some((rss, pss)) = memory(*pid) {
                parts.push(format!("{name} {:.0}/{:.0}", mb(rss), mb(pss)));
                all_pss += pss;
                if ["store", "apiserver", "scheduler", "controllers", "gitops"].contains(&name.as_str()) {
                    head_rss += rss;
                    head_pss += pss;
                }
            }
        }
    }
    say(&format!(
        "memory (RSS/PSS MB): {}; head stack RSS {:.0} MB, PSS {:.0} MB; every service PSS {:.0} MB",
        parts.join(", "),
        mb(head_rss),
        mb(head_pss),
        mb(all_pss)
    ));
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Run the node until SIGINT or SIGTERM.
pub async fn up(cfg: UpConfig) -> Result<(), UpError> {
    if !is_root() {
        return Err(UpError::NotRoot);
    }
    let started = Instant::now();
    let layout = Layout::new(&cfg.state_dir);
    mkdir(&layout.root)?;
    let _lock = lock(&layout)?;
    for d in [layout.logs(), layout.gitops(), layout.kubelet(), layout.images()] {
        mkdir(&d)?;
    }
    ensure_material(&cfg, &layout)?;
    say(&format!("secrets: commit them encrypted with `age -r {}` (decrypted with {})", kapp_bootstrap::age_recipient(&layout.age_key())?, layout.age_key().display()));
    if cfg.repo.is_none() && repo::ensure_example(&layout.repo()).await? {
        say(&format!("made the example repository {} (edit, commit, and the cluster follows)", layout.repo().display()));
    }
    ensure_images(&layout)?;
    let facts = host::prepare(&cfg, &layout.host_state()).await?;
    say(&format!(
        "kapp up: node {} ({}), state in {}, following {}",
        cfg.node_name,
        facts.node_ip,
        layout.root.display(),
        plan::repo_url(&cfg, &layout)
    ));
    let policy = Policy { log_dir: Some(layout.logs()), echo: cfg.verbose, ..Policy::default() };
    let sup = Supervisor::start(plan::services(&cfg, &layout, &facts), policy)?;
    let mut seen = BTreeMap::new();
    let stop = wait_for_signal();
    tokio::pin!(stop);
    let ready = tokio::select! {
        r = wait_for_cluster(&cfg, &layout, &sup, started, &mut seen) => Some(r?),
        _ = &mut stop => None,
    };
    if let Some(waited) = ready {
        if !waited.converged {
            say(&format!("the cluster is not ready after {}s; still running; status:", cfg.wait.as_secs()));
        }
        // kappctl status, from the view the wait ended on.
        match &waited.view {
            Some(view) => say(kappctl::render::status::render(view, kappctl::render::style::Style::stdout()).trim_end()),
            None => say("the apiserver never answered: see the logs"),
        }
        // Idle: let the first burst of work settle before measuring.
        let stopped = tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3)) => false,
            _ = &mut stop => true,
        };
        if !stopped {
            print_memory(&sup.states().borrow());
            print_next_steps(&cfg, &layout);
            let mut states = sup.states();
            loop {
                report_services(&states.borrow_and_update(), &mut seen, started);
                tokio::select! {
                    _ = states.changed() => {}
                    _ = &mut stop => break,
                }
            }
        }
    }
    say("kapp up: stopping (pods first, the store last)");
    sup.shutdown().await;
    say(&format!("kapp up: stopped. State kept in {}: `kapp up` resumes, `kapp down` removes the bridge and the nftables table.", layout.root.display()));
    Ok(())
}

fn print_next_steps(cfg: &UpConfig, layout: &Layout) {
    let kc = layout.viewer_kubeconfig();
    // kappctl is built beside kapp; name it by its path when it is not on PATH.
    let beside = cfg.exe.with_file_name("kappctl");
    let kappctl = if beside.exists() { beside.display().to_string() } else { "kappctl".into() };
    let repo = match &cfg.repo {
        None => format!("cd {} && $EDITOR web.yaml && git commit -am 'scale web'", layout.repo().display()),
        Some(r) => format!("commit to {r}"),
    };
    say(&format!(
        "\nTry:\n  {repo}     # converges within {}s\n  {kappctl} --kubeconfig {} status --watch\n  kubectl --kubeconfig {} get pods -A -o wide     # read-only\n  logs: {}\nCtrl-C stops everything; the state stays, and kapp up resumes from it.",
        cfg.interval.as_secs(),
        kc.display(),
        kc.display(),
        layout.logs().display()
    ));
}

/// Remove what `kapp up` put on the host (its bridge, pod namespaces,
/// nftables table, sysctls back); with `purge`, the state directory too.
pub async fn down(cfg: &UpConfig, purge: bool) -> Result<(), UpError> {
    if !is_root() {
        return Err(UpError::NotRoot);
    }
    let layout = Layout::new(&cfg.state_dir);
    let _lock = if layout.root.exists() { Some(lock(&layout)?) } else { None };
    for d in host::teardown(cfg, &layout.host_state()).await? {
        say(&format!("removed {d}"));
    }
    if purge && layout.root.exists() {
        // Mounts the kubelet left (an interrupted run) go first, deepest first.
        let root = layout.root.display().to_string();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<&str> = mountinfo.lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| m.starts_with(&root)).collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            host::run("umount", &["-l", m]).await?;
        }
        std::fs::remove_dir_all(&layout.root).map_err(|e| UpError::Io { path: layout.root.clone(), reason: e.to_string() })?;
        say(&format!("removed {}", layout.root.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_lines_in_bytes() {
        let text = "Name:\tkapp\nVmRSS:\t   31744 kB\nRss:  10 kB\nPss:   12288 kB\n";
        assert_eq!(proc_kb(text, "VmRSS"), Some(31744 * 1024));
        assert_eq!(proc_kb(text, "Pss"), Some(12288 * 1024));
        assert_eq!(proc_kb(text, "Pss_Anon"), None);
    }

    #[test]
    fn jobs_without_a_final_condition_are_unfinished() {
        let job = |name: &str, conditions: serde_json::Value| serde_json::json!({"metadata": {"namespace": "shop", "name": name}, "status": {"conditions": conditions}});
        let raw = kappctl::view::Raw {
            jobs: Some(vec![
                job("done", serde_json::json!([{"type": "Complete", "status": "True"}])),
                job("broken", serde_json::json!([{"type": "Failed", "status": "True"}])),
                job("running", serde_json::json!([])),
                job("suspended", serde_json::json!([{"type": "Complete", "status": "False"}, {"type": "Suspended", "status": "True"}])),
            ]),
            ..Default::default()
        };
        assert_eq!(unfinished_jobs(&raw), ["shop/running", "shop/suspended"]);
    }
}
