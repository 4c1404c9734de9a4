//! The OCI runtime spec (`config.json`) of one container, from plain parameters. Pure: the
//! kubelet decides the parameters from the pod, this only says how they look to the runtime.

use std::path::PathBuf;

use serde_json::{json, Value};

/// Docker's (and containerd's) default capability set.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability (privileged containers).
pub const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
];

/// A bind mount into the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: String,
    pub readonly: bool,
}

/// What the runtime needs to know about one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerParams {
    pub rootfs: PathBuf,
    pub args: Vec<String>,
    /// `NAME=value`.
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub hostname: String,
    /// The pod's network namespace (a bind-mounted nsfs file).
    pub netns: Option<PathBuf>,
    /// The pod's IPC namespace.
    pub ipcns: Option<PathBuf>,
    pub readonly_rootfs: bool,
    pub privileged: bool,
    /// Capabilities added / dropped (`NET_ADMIN` or `CAP_NET_ADMIN`; `ALL` for drop).
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub memory_limit: Option<i64>,
    /// Also limit memory+swap to the memory limit (when the host accounts swap).
    pub limit_swap: bool,
    /// CPU limit in millicores.
    pub cpu_limit_millis: Option<i64>,
    /// CPU request in millicores (→ shares).
    pub cpu_request_millis: Option<i64>,
    pub pids_limit: Option<i64>,
    /// RLIMIT_NOFILE (soft, hard); raising it past the kubelet's own hard limit needs
    /// CAP_SYS_RESOURCE, which the kubelet may not have.
    pub nofile: (u64, u64),
    /// Relative cgroup path, e.g. `/kapp/pod<uid>/<id>`.
    pub cgroups_path: String,
    /// A private cgroup namespace (cgroup v2 hosts).
    pub cgroup_ns: bool,
    pub mounts: Vec<BindMount>,
}

fn cap_name(c: &str) -> String {
    let c = c.to_ascii_uppercase();
    if c.starts_with("CAP_") {
        c
    } else {
        format!("CAP_{c}")
    }
}

/// The effective capability set. Pure.
pub fn capabilities(p: &ContainerParams) -> Vec<String> {
    if p.privileged {
        return ALL_CAPS.iter().map(|s| s.to_string()).collect();
    }
    let drop_all = p.cap_drop.iter().any(|c| c.eq_ignore_ascii_case("ALL"));
    let drop: Vec<String> = p.cap_drop.iter().map(|c| cap_name(c)).collect();
    let mut caps: Vec<String> = if drop_all { Vec::new() } else { DEFAULT_CAPS.iter().map(|s| s.to_string()).filter(|c| !drop.contains(c)).collect() };
    for c in &p.cap_add {
        if c.eq_ignore_ascii_case("ALL") {
            return ALL_CAPS.iter().map(|s| s.to_string()).collect();
        }
        let c = cap_name(c);
        if !caps.contains(&c) && ALL_CAPS.contains(&c.as_str()) {
            caps.push(c);
        }
    }
    caps
}

/// Kubernetes' CPU request → cgroup v1 shares (2 minimum, 1024 per core).
pub fn cpu_shares(millis: i64) -> u64 {
    ((millis.max(0) as u64) * 1024 / 1000).clamp(2, 262_144)
}

/// The container's `config.json`. Pure.
pub fn oci_spec(p: &ContainerParams) -> Value {
    let caps = capabilities(p);
    let mut namespaces = vec![json!({"type": "pid"}), json!({"type": "mount"}), json!({"type": "uts"})];
    namespaces.push(match &p.netns {
        Some(path) => json!({"type": "network", "path": path}),
        None => json!({"type": "network"}),
    });
    namespaces.push(match &p.ipcns {
        Some(path) => json!({"type": "ipc", "path": path}),
        None => json!({"type": "ipc"}),
    });
    if p.cgroup_ns {
        namespaces.push(json!({"type": "cgroup"}));
    }
    let sys_opts = if p.privileged { json!(["nosuid", "noexec", "nodev"]) } else { json!(["nosuid", "noexec", "nodev", "ro"]) };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_opts}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    for m in &p.mounts {
        let mut opts = vec!["rbind", "rprivate"];
        if m.readonly {
            opts.push("ro");
        }
        mounts.push(json!({"destination": m.destination, "type": "bind", "source": m.source, "options": opts}));
    }
    let mut resources = json!({});
    if let Some(limit) = p.memory_limit {
        resources["memory"] = if p.limit_swap {
            // No swap beyond the limit.
            json!({"limit": limit, "swap": limit})
        } else {
            json!({"limit": limit})
        };
    }
    let mut cpu = json!({});
    if let Some(m) = p.cpu_request_millis {
        cpu["shares"] = json!(cpu_shares(m));
    }
    if let Some(m) = p.cpu_limit_millis {
        // At least 1 ms per 100 ms period (the kernel's minimum quota).
        cpu["quota"] = json!((m * 100).max(1000));
        cpu["period"] = json!(100_000);
    }
    if cpu.as_object().is_some_and(|o| !o.is_empty()) {
        resources["cpu"] = cpu;
    }
    if let Some(pids) = p.pids_limit {
        resources["pids"] = json!({"limit": pids});
    }
    let mut linux = json!({
        "namespaces": namespaces,
        "resources": resources,
        "cgroupsPath": p.cgroups_path,
    });
    if !p.privileged {
        linux["maskedPaths"] = json!([
            "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
            "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap"
        ]);
        linux["readonlyPaths"] = json!(["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]);
    }
    json!({
        "ociVersion": "1.0.2",
        "root": {"path": p.rootfs, "readonly": p.readonly_rootfs},
        "hostname": p.hostname,
        "mounts": mounts,
        "process": {
            "terminal": false,
            "user": {"uid": p.uid, "gid": p.gid, "additionalGids": p.additional_gids},
            "args": p.args,
            "env": p.env,
            "cwd": if p.cwd.is_empty() { "/" } else { p.cwd.as_str() },
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": p.nofile.1, "soft": p.nofile.0}],
            "noNewPrivileges": !p.privileged && p.uid != 0,
        },
        "linux": linux,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> ContainerParams {
        ContainerParams {
            rootfs: "/r".into(),
            args: vec!["/bin/sh".into()],
            env: vec!["PATH=/bin".into()],
            cwd: String::new(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            hostname: "p".into(),
            netns: Some("/run/netns/x".into()),
            ipcns: None,
            readonly_rootfs: false,
            privileged: false,
            cap_add: vec![],
            cap_drop: vec![],
            memory_limit: None,
            limit_swap: true,
            cpu_limit_millis: None,
            cpu_request_millis: None,
            pids_limit: Some(1024),
            nofile: (1024, 4096),
            cgroups_path: "/kapp/podu/c".into(),
            cgroup_ns: false,
            mounts: vec![],
        }
    }

    #[test]
    fn parses_as_an_oci_spec() {
        let v = oci_spec(&params());
        let spec: libcontainer::oci_spec::runtime::Spec = serde_json::from_value(v.clone()).expect("a valid OCI spec");
        assert_eq!(spec.hostname().as_deref(), Some("p"));
        assert_eq!(v["process"]["cwd"], "/");
        assert_eq!(v["linux"]["namespaces"][3], json!({"type": "network", "path": "/run/netns/x"}));
        assert_eq!(v["linux"]["namespaces"][4], json!({"type": "ipc"}));
        assert_eq!(v["linux"]["resources"], json!({"pids": {"limit": 1024}}));
    }

    #[test]
    fn resources() {
        let mut p = params();
        p.memory_limit = Some(64 << 20);
        p.cpu_limit_millis = Some(500);
        p.cpu_request_millis = Some(250);
        let v = oci_spec(&p);
        assert_eq!(v["linux"]["resources"]["memory"], json!({"limit": 64 << 20, "swap": 64 << 20}));
        assert_eq!(v["linux"]["resources"]["cpu"], json!({"shares": 256, "quota": 50_000, "period": 100_000}));
        assert_eq!(cpu_shares(1), 2);
    }

    #[test]
    fn security_context() {
        let mut p = params();
        p.uid = 1000;
        p.gid = 2000;
        p.readonly_rootfs = true;
        p.cap_drop = vec!["NET_RAW".into(), "CAP_CHOWN".into()];
        p.cap_add = vec!["NET_ADMIN".into(), "BOGUS".into()];
        p.mounts = vec![BindMount { source: "/s".into(), destination: "/etc/config".into(), readonly: true }];
        let v = oci_spec(&p);
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["process"]["user"], json!({"uid": 1000, "gid": 2000, "additionalGids": []}));
        assert_eq!(v["process"]["noNewPrivileges"], true);
        let caps: Vec<String> = serde_json::from_value(v["process"]["capabilities"]["effective"].clone()).unwrap();
        assert!(caps.contains(&"CAP_NET_ADMIN".to_string()) && !caps.contains(&"CAP_NET_RAW".to_string()) && !caps.contains(&"CAP_CHOWN".to_string()));
        assert!(!caps.iter().any(|c| c.contains("BOGUS")));
        assert_eq!(v["mounts"].as_array().unwrap().last().unwrap(), &json!({"destination": "/etc/config", "type": "bind", "source": "/s", "options": ["rbind", "rprivate", "ro"]}));
        p.cap_drop = vec!["ALL".into()];
        p.cap_add = vec![];
        assert!(capabilities(&p).is_empty());
        p.privileged = true;
        let v = oci_spec(&p);
        assert_eq!(capabilities(&p).len(), ALL_CAPS.len());
        assert!(v["linux"].get("maskedPaths").is_none());
    }
}
