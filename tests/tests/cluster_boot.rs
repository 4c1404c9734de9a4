//! A cluster booted the way nodes boot: `kapp gen cluster` writes three heads and a worker,
//! and each node is `kapp init` as PID 1 of its own pid, mount, UTS and network namespaces
//! (a directory as its root, its machine config from a file), its `eth0` a veth on one
//! bridge in a network namespace this test makes. The heads form one store from the lists
//! in their configs with no bootstrap step (one leader, every member agreeing), every
//! node's services come up, the apiserver lists all four nodes to the read-only viewer,
//! gitops on the heads applies the test's repository, heads are labelled and tainted as
//! heads, the worker keeps its apiserver when the first head drops off the network, and
//! SIGTERM stops each node in order.
//!
//! Root only (skipped otherwise).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kapp_e2e::kapp_bin;

const NODES: [(&str, &str); 4] = [("h1", "10.77.0.11"), ("h2", "10.77.0.12"), ("h3", "10.77.0.13"), ("w1", "10.77.0.21")];

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The bridge's network namespace; removed on drop.
struct Lan {
    ns: String,
}

impl Lan {
    fn new() -> Lan {
        let ns = format!("kboot-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        run(Command::new("ip").args(["netns", "add", &ns]));
        for args in [&["link", "add", "br0", "type", "bridge"][..], &["addr", "add", "10.77.0.1/24", "dev", "br0"], &["link", "set", "br0", "up"], &["link", "set", "lo", "up"]] {
            run(Command::new("ip").args(["-n", &ns]).args(args));
        }
        Lan { ns }
    }
    /// A command run inside the bridge's namespace.
    fn cmd(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// One node: `unshare … kapp init` and its console lines.
struct Node {
    name: &'static str,
    unshare: Child,
    pid: u32,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Node {
    fn boot(name: &'static str, config: &Path, root: &Path, lan: &Lan) -> Node {
        std::fs::create_dir_all(root).unwrap();
        let mut unshare = Command::new("unshare")
            .args(["--pid", "--fork", "--mount", "--mount-proc", "--uts", "--net", "--"])
            .arg(kapp_bin())
            .args(["init", "--no-reboot", "--console", "/proc/self/fd/2", "--config"])
            .arg(config)
            .arg("--root")
            .arg(root)
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
        let me = unshare.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid: u32 = loop {
            let children = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")).unwrap_or_default();
            if let Some(c) = children.split_whitespace().next() {
                break c.parse().unwrap();
            }
            assert!(Instant::now() < deadline, "unshare started no PID 1");
            std::thread::sleep(Duration::from_millis(20));
        };
        // Its NIC: init waits for it to appear, as for a driver still probing.
        let host_end = format!("v-{name}");
        run(Command::new("ip").args(["-n", &lan.ns, "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &pid.to_string()]));
        run(Command::new("ip").args(["-n", &lan.ns, "link", "set", &host_end, "master", "br0", "up"]));
        Node { name, unshare, pid, lines, seen: Vec::new() }
    }

    fn wait_for(&mut self, text: &str, deadline: Instant) {
        if self.seen.iter().any(|l| l.contains(text)) {
            return;
        }
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) => {
                    let hit = l.contains(text);
                    self.seen.push(l);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!("{}: no {text:?}; console:\n{}", self.name, self.seen.join("\n")),
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.unshare.try_wait().ok().flatten().is_none() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), nix::sys::signal::Signal::SIGKILL);
            let _ = self.unshare.wait();
        }
    }
}

fn git_repo(dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ns.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: booted\n").unwrap();
    for args in [&["init", "-q", "-b", "main"][..], &["add", "."], &["commit", "-q", "-m", "a namespace"]] {
        run(Command::new("git").arg("-C").arg(dir).args(["-c", "user.name=test", "-c", "user.email=test@localhost"]).args(args));
    }
    format!("file://{}", dir.display())
}

#[test]
fn three_heads_and_a_worker_boot_from_generated_configs() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (namespaces, mounts, nftables)");
        return;
    }
    let kapp = kapp_bin();
    let tmp = tempfile::tempdir().unwrap();
    let gen = tmp.path().join("gen");
    let repo = git_repo(&tmp.path().join("repo"));
    let mut args: Vec<String> = ["gen", "cluster", "--name", "boot", "--prefix-len", "24", "--gateway", "10.77.0.1", "--dns", "10.77.0.1", "--git-url", &repo, "--git-branch", "main", "--out"].iter().map(|s| s.to_string()).collect();
    args.push(gen.display().to_string());
    for (name, ip) in NODES {
        args.extend([if name.starts_with('h') { "--head" } else { "--worker" }.to_string(), format!("{name}={ip}")]);
    }
    run(Command::new(&kapp).args(&args));
    // An even head count is refused before anything is written.
    let even = Command::new(&kapp).args(["gen", "cluster", "--name", "x", "--head", "a=10.0.0.1", "--head", "b=10.0.0.2", "--git-url", "file:///x", "--out"]).arg(tmp.path().join("even")).output().unwrap();
    assert!(!even.status.success() && String::from_utf8_lossy(&even.stderr).contains("odd number of heads"), "{}", String::from_utf8_lossy(&even.stderr));

    let lan = Lan::new();
    let root = |name: &str| tmp.path().join("nodes").join(name);
    let mut nodes: Vec<Node> = NODES.iter().map(|(name, _)| Node::boot(name, &gen.join(format!("{name}.yaml")), &root(name), &lan)).collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    for n in &mut nodes {
        let role = if n.name.starts_with('h') { "head" } else { "worker" };
        n.wait_for(&format!("kapp-init: machine config file {} node {} role {role}", gen.join(format!("{}.yaml", n.name)).display(), n.name), deadline);
    }
    for n in &mut nodes {
        n.wait_for(&format!("kapp-init: node {} ready", n.name), deadline);
    }

    // One store: every member answers and names the same leader, exactly one leads.
    let pki = root("h1").join("var/lib/kapp/pki");
    let endpoints = NODES[..3].iter().map(|(_, ip)| format!("{ip}:2380")).collect::<Vec<_>>().join(",");
    let converged = Instant::now() + Duration::from_secs(60);
    loop {
        let out = lan.cmd(&kapp).args(["store-status", "--endpoints", &endpoints, "--ca"]).arg(pki.join("ca.pem")).arg("--cert").arg(pki.join("apiserver.pem")).arg("--key").arg(pki.join("apiserver.key")).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let rows: Vec<Vec<&str>> = text.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
        let leaders: std::collections::BTreeSet<&str> = rows.iter().filter_map(|r| r.get(3).copied()).collect();
        let leading = rows.iter().filter(|r| r.get(2) == Some(&"Leader")).count();
        if rows.len() == 3 && rows.iter().all(|r| r.len() >= 8) && leaders.len() == 1 && !leaders.contains("-") && leading == 1 {
            eprintln!("{text}");
            break;
        }
        assert!(Instant::now() < converged, "the heads did not form one store:\n{text}{}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(500));
    }

    // The viewer sees every node registered with its own identity, and what git holds.
    let kubeconfig = gen.join("viewer.kubeconfig");
    let seen = Instant::now() + Duration::from_secs(120);
    loop {
        let nodes_out = lan.cmd(Path::new("kubectl")).arg("--kubeconfig").arg(&kubeconfig).args(["get", "nodes", "-o", "name"]).output().unwrap();
        let ns_out = lan.cmd(Path::new("kubectl")).arg("--kubeconfig").arg(&kubeconfig).args(["get", "namespace", "booted", "-o", "name"]).output().unwrap();
        let names = String::from_utf8_lossy(&nodes_out.stdout).into_owned();
        let all = NODES.iter().all(|(n, _)| names.lines().any(|l| l == format!("node/{n}")));
        if all && ns_out.status.success() {
            eprintln!("{names}");
            break;
        }
        assert!(Instant::now() < seen, "nodes: {names}{}\nnamespace: {}", String::from_utf8_lossy(&nodes_out.stderr), String::from_utf8_lossy(&ns_out.stderr));
        std::thread::sleep(Duration::from_secs(1));
    }

    // Heads carry the role label and (there is a worker) the NoSchedule taint; the worker
    // neither.
    let nodes_json = lan.cmd(Path::new("kubectl")).arg("--kubeconfig").arg(&kubeconfig).args(["get", "nodes", "-o", "json"]).output().unwrap();
    let list: serde_json::Value = serde_json::from_slice(&nodes_json.stdout).expect("kubectl get nodes -o json");
    for node in list["items"].as_array().unwrap() {
        let name = node["metadata"]["name"].as_str().unwrap();
        let head = name.starts_with('h');
        let role = node["metadata"]["labels"].get("node-role.kubernetes.io/control-plane");
        let tainted = node["spec"]["taints"].as_array().into_iter().flatten().any(|t| t["key"] == "node-role.kubernetes.io/control-plane" && t["effect"] == "NoSchedule");
        assert_eq!((role.is_some(), tainted), (head, head), "{name}: {node}");
    }

    // The first head drops off the network (its link goes down: no reset, no answer, as a
    // machine losing power): the worker, which reached the apiservers through that head,
    // keeps renewing its Lease through another, as seen from the second head.
    let via_h2 = tmp.path().join("h2.kubeconfig");
    std::fs::write(&via_h2, std::fs::read_to_string(&kubeconfig).unwrap().replace("https://10.77.0.11:6443", "https://10.77.0.12:6443")).unwrap();
    let renew_time = || {
        let out = lan.cmd(Path::new("kubectl")).arg("--kubeconfig").arg(&via_h2).args(["get", "lease", "-n", "kube-node-lease", "w1", "-o", "jsonpath={.spec.renewTime}"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(Command::new("ip").args(["-n", &lan.ns, "link", "set", "v-h1", "down"]));
    let cut = renew_time();
    let mut renewals = Vec::new();
    let failover = Instant::now() + Duration::from_secs(90);
    while renewals.len() < 2 {
        std::thread::sleep(Duration::from_secs(1));
        let t = renew_time();
        if !t.is_empty() && t != cut && renewals.last() != Some(&t) {
            renewals.push(t);
        }
        assert!(Instant::now() < failover, "w1 renewed its lease {} time(s) after h1 went away (last {cut:?})", renewals.len());
    }
    eprintln!("w1 renewed its lease at {renewals:?} with h1 unreachable");
    run(Command::new("ip").args(["-n", &lan.ns, "link", "set", "v-h1", "up"]));

    // SIGTERM: each node stops its services in order and exits.
    for n in &nodes {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(n.pid as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    }
    let stop = Instant::now() + Duration::from_secs(120);
    for n in &mut nodes {
        n.wait_for("kapp-init: services stopped", stop);
        let status = loop {
            if let Some(st) = n.unshare.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < stop, "{} did not exit", n.name);
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(status.success(), "{}: {status}\n{}", n.name, n.seen.join("\n"));
    }
}
