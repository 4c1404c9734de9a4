//! PID-1 mode (`kapp init`): bring the machine up, run the node's services under the
//! supervisor, and take the machine down again.
//!
//! Order: API filesystems ([`mounts`]) → kernel modules ([`modules`]) → sysctls → the
//! machine config ([`config_source`], then the caller's `plan`, which validates it) →
//! hostname → network ([`net`]) and `/run/kapp/resolv.conf` → the state partition at `/var`
//! ([`disk`]) → the node's files → the services. On SIGTERM (power off) or SIGINT (reboot;
//! the kernel sends it for ctrl-alt-del once we turn that off) → ordered stop of the
//! services → every other process terminated, then killed → sync → `/var` unmounted →
//! `reboot(2)`.
//!
//! The console gets plain lines starting with `kapp-init: ` (see [`say`]): the machine config
//! and node, each service ready, the node ready, a service that exits, a config error (and
//! then it waits for a signal: it never reboots in a loop).
//!
//! Everything that touches the machine takes a root prefix ([`Options::root`]): tests run
//! `kapp init` as PID 1 of new pid, mount, UTS and network namespaces with a directory as
//! its root and `reboot: false` (exit instead).
//!
//! PID 1 never panics out: [`run`] catches a panic, says so, and (as PID 1) waits forever
//! reaping, since the kernel panics when init exits.

pub mod boot;
pub mod config_source;
pub mod dhcp;
pub mod disk;
pub mod gpt;
pub mod modules;
pub mod mounts;
pub mod net;
pub mod power;
pub mod sntp;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::supervise::{Policy, ServiceSpec, ServiceState, Supervisor};

/// How `kapp init` runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// `/` on a node.
    pub root: PathBuf,
    /// Read the machine config from this file instead of the machine's sources.
    pub config: Option<PathBuf>,
    /// Call `reboot(2)` at the end (false: return, for tests and development).
    pub reboot: bool,
    /// Where console lines go (None: `<root>/dev/console`, else stderr).
    pub console: Option<PathBuf>,
    /// Kernel modules to load.
    pub modules: Vec<String>,
    /// `(name under /proc/sys, value)`.
    pub sysctls: Vec<(String, String)>,
    /// The GPT partition label of the state partition.
    pub state_label: String,
    /// Set the system clock from NTP (false: only ask, for tests).
    pub set_clock: bool,
    /// Each service runs in the cgroup2 group `<root>/sys/fs/cgroup/<cgroup>/<service>`
    /// (when cgroup2 is mounted there).
    pub cgroup: Option<String>,    /// Once the node is ready, mark this boot good for systemd-boot's boot counting
    /// ([`boot`]).
    pub mark_boot: bool,
}

impl Options {
    /// What a node uses: the real root, reboot at the end, the node's modules and sysctls.
    pub fn node() -> Options {
        Options {
            root: PathBuf::from("/"),
            config: None,
            reboot: true,
            console: None,
            modules: modules::NODE_MODULES.iter().map(|m| m.to_string()).collect(),
            sysctls: [("net/ipv4/ip_forward", "1"), ("net/bridge/bridge-nf-call-iptables", "1"), ("net/bridge/bridge-nf-call-ip6tables", "1"), ("fs/inotify/max_user_instances", "8192"), ("kernel/panic", "10")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            state_label: disk::STATE_LABEL.into(),
            set_clock: true,
            cgroup: Some("kapp".into()),
            mark_boot: true,
        }
    }
}

/// Where the node keeps things, under the root.
#[derive(Clone, Debug)]
pub struct Paths {
    pub root: PathBuf,
    /// `<root>/var/lib/kapp`.
    pub state: PathBuf,
    /// `<root>/var/log/kapp`.
    pub logs: PathBuf,
    /// The address DHCP gave the node (the plan is made again once it is known).
    pub leased_address: Option<std::net::Ipv4Addr>,
}

impl Paths {
    pub fn new(root: &Path) -> Paths {
        Paths { root: root.to_path_buf(), state: root.join("var/lib/kapp"), logs: root.join("var/log/kapp"), leased_address: None }
    }
}

/// What the node is, from its machine config (the caller's `plan` makes it).
#[derive(Clone, Debug)]
pub struct NodePlan {
    pub node: String,
    /// `head` or `worker`.
    pub role: String,
    pub hostname: String,
    pub net: net::NetPlan,
    /// NTP servers; the clock is set from the first that answers.
    pub ntp: Vec<String>,
    /// Files written under [`Paths::state`] before the services start: relative path,
    /// content, private (0600).
    pub files: Vec<(PathBuf, Vec<u8>, bool)>,
    pub services: Vec<ServiceSpec>,
}

/// A machine config that cannot be used: the console says `<field>: <reason>`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct PlanError {
    pub field: String,
    pub reason: String,
}

static CONSOLE: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// One console line: `kapp-init: <line>` on the console (or stderr), also logged.
pub fn say(line: &str) {
    tracing::debug!("{line}");
    let text = format!("kapp-init: {line}\n");
    let mut console = CONSOLE.lock().unwrap_or_else(|p| p.into_inner());
    let written = console.as_mut().is_some_and(|f| f.write_all(text.as_bytes()).is_ok());
    if !written {
        let _ = std::io::stderr().write_all(text.as_bytes());
    }
}

fn open_console(opts: &Options) {
    let path = opts.console.clone().unwrap_or_else(|| opts.root.join("dev/console"));
    if opts.console.is_none() && !is_pid1() {
        return;
    }
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&path) {
        *CONSOLE.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
    }
}

fn is_pid1() -> bool {
    std::process::id() == 1
}

/// How the machine ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    PowerOff,
    Reboot,
}

/// Run PID-1 mode. `plan` turns the machine config's text into the node's plan (or names the
/// field that is wrong). Returns (when `opts.reboot` is false, or when not PID 1) the exit
/// code; as PID 1 with `reboot` it does not return.
pub fn run(opts: Options, plan: impl Fn(&str, &Paths) -> Result<NodePlan, PlanError>) -> i32 {
    // The kernel starts init without PATH; services run `nft`, `ip`, `mkfs` by name. Set
    // while this process has one thread.
    if std::env::var_os("PATH").is_none() {
        std::env::set_var("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| boot(&opts, &plan)));
    let ending = match result {
        Ok(Ok(e)) => Some(e),
        Ok(Err(e)) => {
            say(&format!("failed: {e}"));
            None
        }
        Err(panic) => {
            let what = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            say(&format!("internal error (panic): {what}"));
            None
        }
    };
    match ending {
        Some(ending) => finish(&opts, ending),
        None if is_pid1() && opts.reboot => wait_forever(),
        None => 1,
    }
}

/// PID 1 with nothing left to do but keep the kernel alive: reap whatever exits.
fn wait_forever() -> ! {
    say("waiting (nothing more will start; power the machine off)");
    loop {
        // Nothing else in this process waits for children any more.
        while let Ok(status) = nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            if status == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Stop everything left, sync, unmount `/var`, and power off / reboot (or return 0).
fn finish(opts: &Options, ending: Ending) -> i32 {
    if is_pid1() {
        terminate_all();
    }
    nix::unistd::sync();
    let var = opts.root.join("var");
    if mounts::mount_points(&opts.root.join("proc")).contains(&var) || mounts::mount_points(Path::new("/proc")).contains(&var) {
        match mounts::unmount(&var) {
            Ok(()) => say("unmounted /var"),
            Err(e) => say(&format!("unmount: {e}")),
        }
    }
    nix::unistd::sync();
    let what = match ending {
        Ending::PowerOff => "power off",
        Ending::Reboot => "reboot",
    };
    if !(opts.reboot && is_pid1()) {
        say(&format!("stopped ({what} skipped: not rebooting)"));
        return 0;
    }
    say(what);
    let mode = match ending {
        Ending::PowerOff => nix::sys::reboot::RebootMode::RB_POWER_OFF,
        Ending::Reboot => nix::sys::reboot::RebootMode::RB_AUTOBOOT,
    };
    let Err(e) = nix::sys::reboot::reboot(mode);
    say(&format!("reboot(2): {e}"));
    wait_forever()
}

/// As PID 1 after the services stopped: SIGTERM to every other process, 5 s, SIGKILL; reap
/// them all (nothing else in this process waits for children any more).
fn terminate_all() {
    use nix::sys::signal::{kill, Signal};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use nix::unistd::Pid;
    let reap_all = || loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return false,
            Ok(_) => {}
            Err(_) => return true, // ECHILD: no children left
        }
    };
    for signal in [Signal::SIGTERM, Signal::SIGKILL] {
        if kill(Pid::from_raw(-1), signal).is_err() {
            return; // nobody left
        }
        for _ in 0..50 {
            if reap_all() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        say(&format!("processes left after {signal}"));
    }
}

fn boot(opts: &Options, plan: &dyn Fn(&str, &Paths) -> Result<NodePlan, PlanError>) -> Result<Ending, String> {
    let root = &opts.root;
    let mount_errors = mounts::mount_api(root);
    open_console(opts);
    say(&format!("starting (pid {})", std::process::id()));
    for e in mount_errors {
        say(&format!("mount: {e}"));
    }
    if is_pid1() && opts.reboot {
        // ctrl-alt-del becomes SIGINT to us instead of an instant reboot.
        if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
            say(&format!("ctrl-alt-del: {e}"));
        }
    }
    let mod_dir = root.join("lib/modules").join(modules::release());
    let names: Vec<&str> = if mod_dir.join("modules.dep").exists() || opts.modules.is_empty() {
        opts.modules.iter().map(String::as_str).collect()
    } else {
        say(&format!("no {}: no kernel modules loaded (a kernel with everything built in?)", mod_dir.join("modules.dep").display()));
        Vec::new()
    };
    for (name, outcome) in modules::load(&mod_dir, &names) {
        match outcome {
            modules::Loaded::Missing => say(&format!("module {name}: not in {}", mod_dir.display())),
            modules::Loaded::Failed(e) => say(&format!("module {name}: {e}")),
            _ => {}
        }
    }
    for (key, value) in &opts.sysctls {
        let path = root.join("proc/sys").join(key);
        if let Err(e) = std::fs::write(&path, value) {
            say(&format!("sysctl {key}: {e}"));
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(node(opts, plan))
}

/// Waits for SIGTERM or the power button (→ power off) or SIGINT (→ reboot).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    button: Option<tokio::sync::mpsc::Receiver<()>>,
}

impl Signals {
    fn new(button: Option<&Path>) -> Result<Signals, String> {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
        let int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
        Ok(Signals { term, int, button: button.map(power::watch) })
    }
    async fn next(&mut self) -> Ending {
        let button = async {
            let pressed = match &mut self.button {
                Some(rx) => rx.recv().await.is_some(),
                None => false,
            };
            if !pressed {
                // No button (or its watcher is gone): only signals end the machine.
                std::future::pending::<()>().await;
            }
            say("power button pressed");
        };
        tokio::select! {
            _ = self.term.recv() => Ending::PowerOff,
            _ = self.int.recv() => Ending::Reboot,
            _ = button => Ending::PowerOff,
        }
    }
}

async fn node(opts: &Options, plan_fn: &dyn Fn(&str, &Paths) -> Result<NodePlan, PlanError>) -> Result<Ending, String> {
    // The power button only on a real node: a test's /dev is the host's.
    let dev = opts.root.join("dev");
    let mut signals = Signals::new((is_pid1() && opts.reboot).then_some(dev.as_path()))?;
    // Reap orphans from the start (an empty supervisor does only that; it goes before the
    // services' supervisor starts, so that one collects its services' exits alone).
    let reaper = Supervisor::start(Vec::new(), Policy { echo: false, ..Policy::default() }).map_err(|e| e.to_string())?;
    let paths = Paths::new(&opts.root);
    let mut said_none = false;
    let (text, plan) = loop {
        let error = match config_source::find(&opts.root, opts.config.as_ref()) {
            Ok(Some(found)) => match plan_fn(&found.text, &paths) {
                Ok(p) => {
                    say(&format!("machine config {} node {} role {}", found.source, p.node, p.role));
                    break (found.text, p);
                }
                Err(e) => Some(format!("machine config error: {}: {}", e.field, e.reason)),
            },
            Ok(None) => None,
            Err(e) => Some(format!("machine config error: {}: {}", e.source, e.reason)),
        };
        match error {
            // A broken config stays broken: wait for the power button.
            Some(line) => {
                say(&line);
                let ending = signals.next().await;
                reaper.shutdown().await;
                return Ok(ending);
            }
            None => {
                if !said_none {
                    say(&format!("machine config error: (none): no machine config found (volume {}, kernel command line {}..., fw_cfg opt/kapp/machine.yaml); looking again every 5s", config_source::VOLUME_LABEL, config_source::CMDLINE_KEY));
                    said_none = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    ending = signals.next() => {
                        reaper.shutdown().await;
                        return Ok(ending);
                    }
                }
            }
        }
    };
    if let Err(e) = nix::unistd::sethostname(&plan.hostname) {
        say(&format!("hostname {}: {e}", plan.hostname));
    }
    let (net_plan, sys) = (plan.net.clone(), opts.root.join("sys"));
    let configured = tokio::task::spawn_blocking(move || net::configure(&net_plan, &sys)).await.unwrap_or_else(|e| Err(net::NetError::Socket(std::io::Error::other(e.to_string()))));
    let mut plan = plan;
    match configured {
        Ok(c) => {
            let addrs = c.addresses.iter().map(|(a, p)| format!("{a}/{p}")).collect::<Vec<_>>().join(", ");
            match (&c.interface, &c.lease) {
                (None, _) => say("network: no static address"),
                (Some(i), None) => say(&format!("network {i}: {addrs}")),
                (Some(i), Some(l)) => {
                    say(&format!("network {i}: {addrs} from DHCP server {} for {}s", l.server, l.lease_secs));
                    // Held for as long as the node runs: renewed at half time, rebound at 7/8.
                    let (iface, lease) = (i.clone(), l.clone());
                    std::thread::Builder::new().name("dhcp".into()).spawn(move || dhcp::keep(&iface, lease, say)).map_err(|e| e.to_string())?;
                    // The services need the node's address: plan again with it.
                    let leased = Paths { leased_address: Some(l.address), ..paths.clone() };
                    let dns = if plan.net.dns.is_empty() { l.dns.clone() } else { plan.net.dns.clone() };
                    match plan_fn(&text, &leased) {
                        Ok(p) => plan = p,
                        Err(e) => say(&format!("machine config error: {e}")),
                    }
                    plan.net.dns = dns;
                }
            }
        }
        Err(e) => say(&format!("network: {e}")),
    }
    if let Err(e) = net::write_resolv_conf(&opts.root.join("run"), &plan.net.dns) {
        say(&format!("resolv.conf: {e}"));
    }
    if !plan.ntp.is_empty() {
        let servers = plan.ntp.clone();
        let set = opts.set_clock;
        let line = tokio::task::spawn_blocking(move || sync_clock(&servers, set)).await.unwrap_or_else(|e| e.to_string());
        say(&line);
    }
    match disk::prepare_state(&opts.root, &opts.state_label) {
        Ok(disk::State::NoPartition) => say(&format!("no partition labelled {}: state stays on the root filesystem's /var", opts.state_label)),
        Ok(disk::State::Mounted { device, formatted, grown }) => {
            if let Some(bytes) = grown {
                say(&format!("state partition {device} grown to the end of its disk ({} MiB)", bytes >> 20));
            }
            say(&format!("state partition {device}{} mounted at /var", if formatted { " formatted (ext4) and" } else { "" }))
        }
        Err(e) => say(&format!("state partition: {e}")),
    }
    if let Err(e) = write_files(&paths, &plan.files) {
        say(&format!("node files: {e}"));
    }
    reaper.shutdown().await;
    let cgroup2 = opts.root.join("sys/fs/cgroup");
    let cgroup = opts.cgroup.as_ref().filter(|_| cgroup2.join("cgroup.controllers").exists()).map(|c| cgroup2.join(c));
    let policy = Policy { log_dir: Some(paths.logs.clone()), echo: false, cgroup: cgroup.clone(), ..Policy::default() };
    let sup = match Supervisor::start(plan.services.clone(), policy) {
        Ok(s) => s,
        Err(e) => {
            say(&format!("services: {e}"));
            let reaper = Supervisor::start(Vec::new(), Policy { echo: false, ..Policy::default() }).map_err(|e| e.to_string())?;
            let ending = signals.next().await;
            reaper.shutdown().await;
            return Ok(ending);
        }
    };
    let ending = tokio::select! {
        _ = report(&sup, &plan.node, opts.mark_boot.then_some(opts.root.as_path())) => Ending::PowerOff,
        e = signals.next() => e,
    };
    say(&format!("stopping ({}): services in reverse dependency order", if ending == Ending::PowerOff { "SIGTERM: power off" } else { "SIGINT: reboot" }));
    let mut states = sup.states();
    let shutdown = sup.shutdown();
    tokio::pin!(shutdown);
    let mut seen = states.borrow_and_update().clone();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Ok(()) = states.changed() => announce_stops(&states.borrow_and_update(), &mut seen),
        }
    }
    announce_stops(&states.borrow(), &mut seen);
    say("services stopped");
    if let Some(dir) = &cgroup {
        // Empty now; a group something else still uses stays.
        for s in &plan.services {
            let _ = std::fs::remove_dir(dir.join(&s.name));
        }
        let _ = std::fs::remove_dir(dir);
    }
    Ok(ending)
}

fn announce_stops(states: &BTreeMap<String, ServiceState>, seen: &mut BTreeMap<String, ServiceState>) {
    for (name, st) in states {
        if let ServiceState::Stopped { last_exit } = st {
            if !matches!(seen.get(name), Some(ServiceState::Stopped { .. })) {
                say(&format!("service {name} stopped{}", last_exit.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()));
            }
        }
        seen.insert(name.clone(), st.clone());
    }
}

/// Console lines for the services' progress: each first ready, the node ready once all
/// were (then the boot is marked good if `mark_boot` names the root), and each exit with
/// the service's last lines. Never returns.
async fn report(sup: &Supervisor, node: &str, mark_boot: Option<&Path>) {
    let mut states = sup.states();
    let mut ready = std::collections::BTreeSet::new();
    let mut node_ready = false;
    let mut last: BTreeMap<String, ServiceState> = BTreeMap::new();
    loop {
        let now = states.borrow_and_update().clone();
        for (name, st) in &now {
            if last.get(name) == Some(st) {
                continue;
            }
            match st {
                ServiceState::Ready { .. } if ready.insert(name.clone()) => say(&format!("service {name} ready")),
                ServiceState::Backoff { restarts, last_exit, retry_in } => {
                    say(&format!("service {name} exited ({last_exit}); restart #{restarts} in {:.1}s", retry_in.as_secs_f64()));
                    for line in sup.recent_lines(name).iter().rev().take(3).rev() {
                        say(&format!("  {name}| {line}"));
                    }
                }
                _ => {}
            }
        }
        last = now;
        if !node_ready && !last.is_empty() && ready.len() == last.len() {
            node_ready = true;
            say(&format!("node {node} ready"));
            if let Some(root) = mark_boot {
                let root = root.to_path_buf();
                let line = tokio::task::spawn_blocking(move || boot::mark_this_boot_good(&root)).await.unwrap_or_else(|e| format!("boot: {e}"));
                say(&line);
            }
        }
        if states.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Ask each server in turn (3 s each); set the clock from the first answer. The console line.
fn sync_clock(servers: &[String], set: bool) -> String {
    let mut errors = Vec::new();
    for s in servers {
        match sntp::query(s, Duration::from_secs(3)) {
            Ok(t) if set => {
                return match sntp::set_clock(t) {
                    Ok(()) => format!("clock set from {s}"),
                    Err(e) => format!("clock: {e}"),
                }
            }
            Ok(t) => return format!("clock from {s}: {}s since 1970 (not set)", t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs()),
            Err(e) => errors.push(e.to_string()),
        }
    }
    format!("clock not set: {}", errors.join("; "))
}

fn write_files(paths: &Paths, files: &[(PathBuf, Vec<u8>, bool)]) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    for dir in [&paths.state, &paths.logs] {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    for (rel, content, private) in files {
        let path = paths.state.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        let mode = if *private { 0o600 } else { 0o644 };
        let tmp = path.with_file_name(format!(".{}.tmp", rel.file_name().and_then(|n| n.to_str()).unwrap_or("file")));
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        f.write_all(content).and_then(|_| f.sync_all()).map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
