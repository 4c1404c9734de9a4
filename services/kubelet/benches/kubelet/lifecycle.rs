//! The raw container lifecycle: `/bin/true` in a busybox root, created, started, waited
//! for and deleted through kapp's runtime, `runc run` and `crun run`. A module of its own so
//! that it also builds without the control plane's dependencies.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use kapp_kubelet::runtime::{spec, CgroupLayout, ContainerParams, Runtime};
use serde_json::{json, Value};

// ---------------------------------------------------------------- statistics

pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

pub fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

// ---------------------------------------------------------------- 2. raw lifecycle

/// Run [`lifecycle`] in a child forked now and return what it measured. The child unshares
/// its mount namespace and unmounts the empty cgroup2 of this hybrid host there, so every
/// runtime sees the same plain cgroup v1 host: crun 1.8 refuses a hybrid one ("cgroups in
/// hybrid mode not supported"). A process can only do that while it has one thread.
#[allow(unsafe_code)]
pub fn lifecycle_child(runs: usize) -> Value {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    // SAFETY: called before this process starts any thread; the child leaves with `_exit`.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            drop(r);
            let out = std::panic::catch_unwind(|| lifecycle(runs)).unwrap_or_else(|_| json!({"error": "the lifecycle child panicked (see above)"}));
            let _ = File::from(w).write_all(&serde_json::to_vec(&out).unwrap());
            // SAFETY: ends the child without running exit handlers.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(w);
            let mut buf = Vec::new();
            File::from(r).read_to_end(&mut buf).expect("read the lifecycle results");
            let _ = nix::sys::wait::waitpid(child, None);
            let v: Value = serde_json::from_slice(&buf).expect("the lifecycle child's results");
            assert!(v.get("error").is_none(), "{v}");
            v
        }
    }
}

/// A private mount namespace in which cgroup2 (empty on this host) is not mounted.
fn cgroup_v1_view() -> String {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
    nix::mount::mount(None::<&str>, "/", None::<&str>, nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE, None::<&str>).expect("make / private");
    let unified = Path::new("/sys/fs/cgroup/unified");
    if CgroupLayout::detect() == CgroupLayout::Legacy && kapp_kubelet::runtime::is_mounted(unified) {
        nix::mount::umount2(unified, nix::mount::MntFlags::MNT_DETACH).expect("unmount /sys/fs/cgroup/unified");
        "hybrid host (v1 controllers + an empty cgroup2 at /sys/fs/cgroup/unified): all three runtimes ran in a private mount namespace without the cgroup2 mount, i.e. on plain cgroup v1 with the cgroupfs driver (crun 1.8 refuses a hybrid host)".into()
    } else {
        format!("{:?} cgroups, cgroupfs driver, private mount namespace", CgroupLayout::detect())
    }
}

fn first_line(cmd: &str) -> String {
    let out = Command::new(cmd).arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    out.lines().next().unwrap_or(cmd).trim().to_string()
}

/// Interleaved rounds (three uncounted first) of kapp's runtime, `runc run` and
/// `crun run` on one busybox root; milliseconds per run.
fn lifecycle(runs: usize) -> Value {
    let cgroups = cgroup_v1_view();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/true")).unwrap();
    let runtime = Runtime::new(&dir.path().join("kapp-state")).expect("kapp runtime");
    let parent = format!("kapp-bench-raw-{}", std::process::id());
    // What the kubelet would write for a container with nothing special: new pid, mount,
    // uts, net and ipc namespaces, the kubelet's pids limit, Docker's capabilities.
    let spec_for = |name: &str| {
        spec::oci_spec(&ContainerParams {
            rootfs: rootfs.clone(),
            args: vec!["/bin/true".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            hostname: "bench".into(),
            netns: None,
            ipcns: None,
            readonly_rootfs: false,
            privileged: false,
            cap_add: vec![],
            cap_drop: vec![],
            memory_limit: None,
            limit_swap: false,
            cpu_limit_millis: None,
            cpu_request_millis: None,
            pids_limit: Some(4096),
            nofile: runtime.nofile(),
            cgroups_path: format!("/{parent}/{name}"),
            cgroup_ns: false,
            mounts: vec![],
        })
    };
    let bundle = |name: &str| {
        let b = dir.path().join(format!("bundle-{name}"));
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join("config.json"), serde_json::to_vec_pretty(&spec_for(name)).unwrap()).unwrap();
        b
    };
    let (kapp_bundle, runc_bundle, crun_bundle) = (bundle("kapp"), bundle("runc"), bundle("crun"));
    let kapp_spec = spec_for("kapp");
    let kapp_log = dir.path().join("kapp-log/0.log");
    let (runc_root, crun_root) = (dir.path().join("runc-root"), dir.path().join("crun-root"));

    let mut kapp = (Vec::new(), Vec::new(), Vec::new(), Vec::new()); // total, create+start, wait, delete
    let mut kapp_run = |record: bool| {
        let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("a pipe");
        let output = kapp_kubelet::runtime::Output { stdout: pipe(), stderr: pipe() };
        let t0 = Instant::now();
        let (_, shim) = runtime.run("bench", &kapp_bundle, &kapp_spec, output, &kapp_log, 1 << 20).expect("kapp: create and start");
        let t1 = Instant::now();
        let exit = shim.wait().blocking_recv().expect("kapp: the exit");
        let t2 = Instant::now();
        runtime.delete("bench");
        let t3 = Instant::now();
        assert_eq!(exit.code, 0, "kapp: /bin/true exited {exit:?}");
        if record {
            let ms = |a: Instant, b: Instant| b.duration_since(a).as_secs_f64() * 1e3;
            kapp.0.push(ms(t0, t3));
            kapp.1.push(ms(t0, t1));
            kapp.2.push(ms(t1, t2));
            kapp.3.push(ms(t2, t3));
        }
    };
    let peer = |cmd: &str, pre: &[&str], root: &Path, bundle: &Path| {
        let t0 = Instant::now();
        let out = Command::new(cmd).arg("--root").arg(root).args(pre).arg("run").arg("--bundle").arg(bundle).arg("bench").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).output().expect(cmd);
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        assert!(out.status.success(), "{cmd} run: {:?} {}", out.status, String::from_utf8_lossy(&out.stderr));
        ms
    };
    let (mut runc, mut crun) = (Vec::new(), Vec::new());
    for round in 0..runs + 3 {
        let record = round >= 3;
        // Each runtime first, second and third in turn.
        for k in 0..3 {
            match (round + k) % 3 {
                0 => kapp_run(record),
                1 => {
                    let ms = peer("runc", &[], &runc_root, &runc_bundle);
                    if record {
                        runc.push(ms);
                    }
                }
                _ => {
                    let ms = peer("crun", &["--cgroup-manager=cgroupfs"], &crun_root, &crun_bundle);
                    if record {
                        crun.push(ms);
                    }
                }
            }
        }
    }
    let left = runtime.cgroup_dirs(&parent);
    for d in left.iter().flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten()).filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
        let _ = std::fs::remove_dir(d.path());
    }
    runtime.remove_cgroup(&parent);
    json!({
        "cgroups": cgroups,
        "kapp": kapp.0, "kapp_start": kapp.1, "kapp_wait": kapp.2, "kapp_delete": kapp.3,
        "runc": runc, "crun": crun,
        "runc_version": first_line("runc"), "crun_version": first_line("crun"),
    })
}

/// The section of the report: a table of milliseconds per run and the ratios.
pub fn table(raw: &Value, runs: usize) -> String {
    let ms = |k: &str| -> Vec<f64> { serde_json::from_value(raw[k].clone()).unwrap_or_default() };
    let (kapp, runc, crun) = (ms("kapp"), ms("runc"), ms("crun"));
    let mut r = String::new();
    r += &format!(
        "## Raw container lifecycle: `/bin/true`, {runs} runs each\n\n\
         One busybox root directory (no overlay) and the `config.json` the kubelet writes for a plain container (new pid, mount, uts, net and ipc namespaces; pids limit 4096; Docker's capabilities; cgroup `/kapp-bench-raw-<pid>/<runtime>`). kapp: `Runtime::run` (create + start through libcontainer {} in the kubelet's forked single-threaded helper, which then becomes the container's shim: output copied to a log file, exit written), waiting for the shim, `Runtime::delete`, in the benchmark's process. runc and crun: one `run --bundle` invocation each (create, start, wait, delete; the process start of the runtime's binary included; stdio to /dev/null). Rounds interleave the three, each first in turn; three uncounted rounds first. cgroups: {}.\n\n\
         | runtime | runs | mean ms | p50 ms | p99 ms | max ms |\n\
         |---|---:|---:|---:|---:|---:|\n",
        "0.7.0",
        raw["cgroups"].as_str().unwrap_or("?"),
    );
    let row = |name: &str, v: &[f64]| format!("| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} |\n", v.len(), mean(v), percentile(v, 0.5), percentile(v, 0.99), max(v));
    r += &row("kapp (libcontainer in-process)", &kapp);
    r += &row("&nbsp;&nbsp;of which create + start", &ms("kapp_start"));
    r += &row("&nbsp;&nbsp;of which wait", &ms("kapp_wait"));
    r += &row("&nbsp;&nbsp;of which delete", &ms("kapp_delete"));
    r += &row(&format!("runc ({})", raw["runc_version"].as_str().unwrap_or("runc")), &runc);
    r += &row(&format!("crun ({}, `--cgroup-manager=cgroupfs`)", raw["crun_version"].as_str().unwrap_or("crun")), &crun);
    let ratio = |name: &str, peer: &[f64]| format!("| ratio {name} | | {:.2} | {:.2} | {:.2} | {:.2} |\n", mean(&kapp) / mean(peer), percentile(&kapp, 0.5) / percentile(peer, 0.5), percentile(&kapp, 0.99) / percentile(peer, 0.99), max(&kapp) / max(peer));
    r += &ratio("kapp/runc", &runc);
    r += &ratio("kapp/crun", &crun);
    r += &format!("\nOf {runs} runs, p99 is (nearly) the largest value.\n");
    r
}
