//! `pid1::run` as PID 1 of new pid, mount, UTS and network namespaces (root needed), with a
//! directory as its root: it mounts the API filesystems there, configures loopback and a
//! veth interface from the plan, writes the node's files, supervises test services
//! (dependency order, a crash restarted with backoff, an orphan reaped) and on SIGTERM
//! stops them in reverse order and exits.
//!
//! The test re-runs its own binary under `unshare` with `KAPP_PID1_CHILD` set; that child
//! (the `child` test below) is the PID 1.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kapp_init::pid1::{self, net::NetPlan, NodePlan, Options, Paths, PlanError};
use kapp_init::supervise::{Ready, ServiceSpec};

const CHILD: &str = "KAPP_PID1_CHILD";

fn sh(name: &str, script: &str, after: &[&str], ready: Ready) -> ServiceSpec {
    let mut s = ServiceSpec::new(name, "/bin/sh");
    s.args = vec!["-c".into(), script.into()];
    s.after = after.iter().map(|a| a.to_string()).collect();
    s.ready = ready;
    s.stop_timeout = Duration::from_secs(5);
    s
}

/// The test's "machine config": `node: NAME` or `broken: FIELD`.
fn plan(text: &str, paths: &Paths) -> Result<NodePlan, PlanError> {
    if let Some(field) = text.trim().strip_prefix("broken: ") {
        return Err(PlanError { field: field.into(), reason: "is wrong on purpose".into() });
    }
    let state = paths.state.display().to_string();
    let services = vec![
        // Ready once it says so; on SIGTERM it notes that it stopped (after b did).
        sh("a", &format!("trap 'echo a >> {state}/stops; exit 0' TERM; echo a up; while :; do sleep 0.1; done"), &[], Ready::LogLine("a up".into())),
        sh("b", &format!("trap 'echo b >> {state}/stops; exit 0' TERM; cat {state}/pki/secret >/dev/null && echo b up; while :; do sleep 0.1; done"), &["a"], Ready::LogLine("b up".into())),
        // Crashes once (first run), then stays.
        sh("crashy", &format!("if [ ! -e {state}/crashed ]; then touch {state}/crashed; echo boom; sleep 0.2; exit 3; fi; echo fine; while :; do sleep 0.1; done"), &["a"], Ready::LogLine("fine".into())),
        // Leaves an orphan that exits and must be reaped by PID 1.
        sh("orphans", "(sleep 0.3 &); echo spawned; while :; do sleep 0.1; done", &[], Ready::LogLine("spawned".into())),
    ];
    Ok(NodePlan {
        node: text.trim().strip_prefix("node: ").unwrap_or("x").into(),
        role: "head".into(),
        hostname: "pid1-test".into(),
        net: NetPlan { interface: Some("eth0".into()), addresses: vec![(Ipv4Addr::new(10, 77, 0, 11), 24)], gateway: Some(Ipv4Addr::new(10, 77, 0, 1)), local: vec![Ipv4Addr::new(10, 96, 0, 10)], dns: vec![Ipv4Addr::new(10, 77, 0, 1)], dhcp: false },
        ntp: vec![],
        files: vec![(PathBuf::from("pki/secret"), b"s3cret".to_vec(), true)],
        services,
    })
}

/// The PID 1 side: only when run by [`run_pid1`].
#[test]
fn child() {
    let Ok(root) = std::env::var(CHILD) else { return };
    let root = PathBuf::from(root);
    let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter("info").try_init();
    // Test setup inside the new network namespace: an interface to configure.
    let ok = Command::new("ip").args(["link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer"]).status().unwrap().success();
    assert!(ok && Command::new("ip").args(["link", "set", "eth0-peer", "up"]).status().unwrap().success(), "ip link add eth0");
    let opts = Options {
        root: root.clone(),
        config: Some(root.join("machine.yaml")),
        reboot: false,
        console: Some(PathBuf::from("/proc/self/fd/2")),
        modules: vec![],
        sysctls: vec![("net/ipv4/ip_forward".into(), "1".into())],
        state_label: "kapp-state-test-none".into(),
        set_clock: false,
        cgroup: Some(format!("kapp-pid1-test-{}", std::env::var("KAPP_PID1_TEST_ID").unwrap_or_default())),
        mark_boot: false,
    };
    std::process::exit(pid1::run(opts, plan));
}

struct Pid1 {
    unshare: std::process::Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Pid1 {
    /// Wait (bounded) for a stderr line containing `text`; every line up to it is kept.
    fn wait_for(&mut self, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        if let Some(l) = self.seen.iter().find(|l| l.contains(text)) {
            return l.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(text) {
                        return l;
                    }
                }
                Err(_) => panic!("no line with {text:?} within {timeout:?}; saw:\n{}", self.seen.join("\n")),
            }
        }
    }
    fn index(&self, text: &str) -> usize {
        self.seen.iter().position(|l| l.contains(text)).unwrap_or_else(|| panic!("no {text:?} in:\n{}", self.seen.join("\n")))
    }
    /// The host pid of the namespace's PID 1 (unshare's only child), waited for.
    fn inner_pid(&self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(pid) = self.try_inner_pid() {
                return pid;
            }
            assert!(Instant::now() < deadline, "unshare has no child");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    fn try_inner_pid(&self) -> Option<u32> {
        let pid = self.unshare.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?.split_whitespace().next()?.parse().ok()
    }
}

impl Drop for Pid1 {
    /// A failed test leaves no namespace behind: killing its PID 1 ends everything in it.
    fn drop(&mut self) {
        if self.unshare.try_wait().ok().flatten().is_none() {
            match self.try_inner_pid() {
                Some(pid) => drop(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL)),
                None => drop(self.unshare.kill()),
            }
            let _ = self.unshare.wait();
        }
    }
}

fn run_pid1(root: &Path) -> Pid1 {
    let exe = std::env::current_exe().unwrap();
    let mut unshare = Command::new("unshare")
        .args(["--pid", "--fork", "--mount", "--mount-proc", "--uts", "--net", "--"])
        .arg(exe)
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(CHILD, root)
        .env("KAPP_PID1_TEST_ID", std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux)");
    let stderr = unshare.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Pid1 { unshare, lines, seen: Vec::new() }
}

fn finish(p: &mut Pid1) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = p.unshare.try_wait().unwrap() {
            while let Ok(l) = p.lines.try_recv() {
                p.seen.push(l);
            }
            return st;
        }
        assert!(Instant::now() < deadline, "PID 1 did not exit after SIGTERM:\n{}", p.seen.join("\n"));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `<cgroup2 root><group>` exists on this host's cgroup2 hierarchy (the one PID 1
/// mounted is the same hierarchy).
fn cgroup_mounted_dir_exists(group: &str) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mounts.lines().filter(|l| l.contains(" - cgroup2 ")).filter_map(|l| l.split(' ').nth(4)).any(|m| Path::new(&format!("{m}{group}")).exists())
}

fn sigterm(pid: u32) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
}

#[test]
fn pid1_boots_supervises_reaps_and_stops_in_order() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("machine.yaml"), "node: n1\n").unwrap();
    let mut p = run_pid1(root);
    p.wait_for("kapp-init: machine config file", Duration::from_secs(30));
    assert!(p.seen.iter().any(|l| l.contains("kapp-init: machine config file") && l.ends_with("node n1 role head")), "{:?}", p.seen);
    p.wait_for("kapp-init: node n1 ready", Duration::from_secs(60));
    let pid = p.inner_pid();
    // Dependency order: b only after a was ready; the crash restarted.
    assert!(p.index("kapp-init: service a ready") < p.index("kapp-init: service b ready"));
    p.wait_for("kapp-init: service crashy exited (exit code 3); restart #1", Duration::from_secs(1));
    assert!(p.index("service crashy exited") < p.index("kapp-init: service crashy ready"));
    // The crash's last lines are shown with it.
    p.wait_for("kapp-init:   crashy| boom", Duration::from_secs(1));
    // The orphan was reaped by PID 1.
    p.wait_for("reaped orphan pid", Duration::from_secs(10));
    // The machine as PID 1 left it: mounts under the root, the network, the hostname, files.
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    for (target, fstype) in [("proc", "proc"), ("sys", "sysfs"), ("dev", "devtmpfs"), ("dev/pts", "devpts"), ("run", "tmpfs"), ("tmp", "tmpfs"), ("sys/fs/cgroup", "cgroup2"), ("dev/mqueue", "mqueue")] {
        let t = root.join(target).display().to_string();
        assert!(mountinfo.lines().any(|l| l.split(' ').nth(4) == Some(t.as_str()) && l.contains(&format!(" - {fstype} "))), "{target} ({fstype}) not mounted:\n{mountinfo}");
    }
    let netns = |args: &[&str]| {
        let out = Command::new("nsenter").arg(format!("--net=/proc/{pid}/ns/net")).arg(format!("--uts=/proc/{pid}/ns/uts")).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let addrs = netns(&["ip", "-4", "-o", "addr"]);
    assert!(addrs.contains("eth0    inet 10.77.0.11/24 brd 10.77.0.255"), "{addrs}");
    assert!(addrs.contains("lo    inet 10.96.0.10/32"), "{addrs}");
    assert!(netns(&["ip", "-4", "route"]).contains("default via 10.77.0.1 dev eth0"), "routes");
    assert_eq!(netns(&["hostname"]).trim(), "pid1-test");
    // /run is PID 1's own tmpfs: seen through its mount namespace.
    let resolv = format!("/proc/{pid}/root{}", root.join("run/kapp/resolv.conf").display());
    assert_eq!(std::fs::read_to_string(resolv).unwrap().lines().last(), Some("nameserver 10.77.0.1"));
    assert_eq!(std::fs::read_to_string(root.join("var/lib/kapp/pki/secret")).unwrap(), "s3cret");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(root.join("var/lib/kapp/pki/secret")).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(root.join("var/log/kapp/a.log").exists());
    // Each service in its own cgroup (cgroup2), gone after the stop.
    let group = format!("/kapp-pid1-test-{}", std::process::id());
    // Services are children of PID 1's spawner thread.
    let children: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten().flat_map(|t| std::fs::read_to_string(t.path().join("children")).unwrap_or_default().split_whitespace().map(|c| c.parse().unwrap()).collect::<Vec<u32>>()).collect();
    let a_pid = *children.iter().find(|c| std::fs::read_to_string(format!("/proc/{c}/cmdline")).unwrap_or_default().contains("echo a up")).expect("service a");
    let cgroup = std::fs::read_to_string(format!("/proc/{a_pid}/cgroup")).unwrap();
    assert!(cgroup.lines().any(|l| l == format!("0::{group}/a")), "{cgroup}");
    assert!(cgroup_mounted_dir_exists(&group), "{group} is on the host's cgroup2 hierarchy");
    // SIGTERM: b stops before a, everything exits, PID 1 too.
    sigterm(pid);
    let st = finish(&mut p);
    assert!(st.success(), "{st}:\n{}", p.seen.join("\n"));
    assert_eq!(std::fs::read_to_string(root.join("var/lib/kapp/stops")).unwrap(), "b\na\n");
    assert!(!cgroup_mounted_dir_exists(&group), "the services' cgroups are removed");
    assert!(p.index("kapp-init: stopping (SIGTERM: power off)") < p.index("kapp-init: services stopped"));
    p.wait_for("kapp-init: stopped (power off skipped", Duration::from_secs(1));
}

#[test]
fn a_broken_config_is_named_and_pid1_waits_for_a_signal() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("machine.yaml"), "broken: network.addresses[0]\n").unwrap();
    let mut p = run_pid1(dir.path());
    let line = p.wait_for("kapp-init: machine config error:", Duration::from_secs(30));
    assert!(line.ends_with("kapp-init: machine config error: network.addresses[0]: is wrong on purpose"), "{line}");
    // It waits: still running a moment later, nothing started.
    std::thread::sleep(Duration::from_millis(500));
    assert!(p.unshare.try_wait().unwrap().is_none(), "PID 1 must wait, not exit");
    sigterm(p.inner_pid());
    assert!(finish(&mut p).success());
    assert!(!p.seen.iter().any(|l| l.contains("kapp-init: service")), "{:?}", p.seen);
}
