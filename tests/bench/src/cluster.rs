//! Starting and stopping the servers under test (kapp store members, etcd members) as child
//! processes on loopback, and reading their memory and CPU use from /proc.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Kapp,
    Etcd,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Kapp => "kapp",
            System::Etcd => "etcd",
        }
    }
}

/// Certificates for one run, written under `dir` (member i uses `member-i.*`).
pub struct Certs {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub client: kapp_tls::Pem,
}

impl Certs {
    pub fn member(&self, i: usize) -> (PathBuf, PathBuf) {
        (self.dir.join(format!("member-{i}.pem")), self.dir.join(format!("member-{i}-key.pem")))
    }

    /// A CA, member certificates (peer + client groups, SANs 127.0.0.1 and localhost) for up
    /// to `members` members, and a client certificate.
    pub fn generate(dir: &Path, members: usize) -> Result<Certs> {
        std::fs::create_dir_all(dir)?;
        let ca = kapp_tls::pki::Ca::generate("bench")?;
        let groups = [kapp_store_client::PEER_GROUP, kapp_store_client::CLIENT_GROUP];
        let sans = ["127.0.0.1", "localhost"];
        let ca_path = dir.join("ca.pem");
        let certs = Certs {
            dir: dir.to_path_buf(),
            ca: ca_path.clone(),
            client: ca.issue("bench-client", &[kapp_store_client::CLIENT_GROUP], &sans)?,
        };
        for i in 1..=members {
            let pem = ca.issue(&format!("member-{i}"), &groups, &sans)?;
            let (cert, key) = certs.member(i);
            pem.write_files(&ca_path, &cert, &key)?;
        }
        Ok(certs)
    }
}

/// One server process.
pub struct Member {
    child: Child,
    pub pid: u32,
    /// Where clients connect (`127.0.0.1:port`).
    pub client_addr: String,
    pub log: PathBuf,
}

/// A running cluster; its processes are killed if this is dropped without `stop`.
pub struct Cluster {
    pub system: System,
    pub members: Vec<Member>,
}

/// `n` currently free loopback ports (bound together, then released).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<Result<Vec<_>, _>>()?;
    Ok(listeners.iter().map(|l| l.local_addr().map(|a| a.port())).collect::<Result<Vec<_>, _>>()?)
}

/// Last lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn log_file(path: &Path) -> Result<std::fs::File> {
    std::fs::File::create(path).with_context(|| format!("create {}", path.display()))
}

impl Cluster {
    /// Start `n` kapp store members with data under `dir`.
    pub async fn start_kapp(kapp: &Path, n: usize, dir: &Path, certs: &Certs) -> Result<Cluster> {
        let ports = free_ports(n)?;
        let members_flag = (1..=n).map(|i| format!("{i}=127.0.0.1:{}", ports[i - 1])).collect::<Vec<_>>().join(",");
        let mut members = Vec::new();
        let mut waiting = Vec::new();
        for i in 1..=n {
            let addr = format!("127.0.0.1:{}", ports[i - 1]);
            let (cert, key) = certs.member(i);
            let log = dir.join(format!("kapp-{i}.log"));
            let mut child = Command::new(kapp)
                .arg("store")
                .args(["--id", &i.to_string(), "--listen", &addr, "--members", &members_flag])
                .arg("--data-dir")
                .arg(dir.join(format!("kapp-{i}")))
                .arg("--ca")
                .arg(&certs.ca)
                .arg("--cert")
                .arg(&cert)
                .arg("--key")
                .arg(&key)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log_file(&log)?)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("start {}", kapp.display()))?;
            let pid = child.id().ok_or_else(|| anyhow!("kapp member {i} exited at once"))?;
            waiting.push((i, child.stdout.take().expect("stdout is piped")));
            members.push(Member { child, pid, client_addr: addr, log });
        }
        let mut cluster = Cluster { system: System::Kapp, members };
        // Each member says `kapp store N listening on ADDR` once it serves.
        for (i, stdout) in waiting {
            let mut lines = BufReader::new(stdout).lines();
            let wait = async {
                while let Some(line) = lines.next_line().await? {
                    if line.contains("listening on") {
                        return Ok::<bool, std::io::Error>(true);
                    }
                }
                Ok(false)
            };
            let up = tokio::time::timeout(Duration::from_secs(60), wait).await;
            if !matches!(up, Ok(Ok(true))) {
                let log = cluster.members[i - 1].log.clone();
                cluster.kill().await;
                bail!("kapp store member {i} did not come up; its log ends with:\n{}", log_tail(&log, 30));
            }
            // Keep draining stdout so the member never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        }
        Ok(cluster)
    }

    /// Start `n` etcd members with data under `dir`; with `tls`, client and peer traffic use
    /// mTLS with the same certificates kapp gets.
    pub async fn start_etcd(etcd: &Path, n: usize, dir: &Path, certs: &Certs, tls: bool) -> Result<Cluster> {
        let ports = free_ports(2 * n)?;
        let scheme = if tls { "https" } else { "http" };
        let client_url = |i: usize| format!("{scheme}://127.0.0.1:{}", ports[2 * (i - 1)]);
        let peer_url = |i: usize| format!("{scheme}://127.0.0.1:{}", ports[2 * (i - 1) + 1]);
        let initial = (1..=n).map(|i| format!("m{i}={}", peer_url(i))).collect::<Vec<_>>().join(",");
        let mut members = Vec::new();
        for i in 1..=n {
            let log = dir.join(format!("etcd-{i}.log"));
            let mut cmd = Command::new(etcd);
            cmd.args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(dir.join(format!("etcd-{i}")))
                .args(["--listen-client-urls", &client_url(i), "--advertise-client-urls", &client_url(i)])
                .args(["--listen-peer-urls", &peer_url(i), "--initial-advertise-peer-urls", &peer_url(i)])
                .args(["--initial-cluster", &initial, "--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "kapp-bench", "--logger", "zap", "--log-outputs", "stderr"]);
            if tls {
                let (cert, key) = certs.member(i);
                cmd.arg("--cert-file").arg(&cert).arg("--key-file").arg(&key);
                cmd.arg("--client-cert-auth").arg("--trusted-ca-file").arg(&certs.ca);
                cmd.arg("--peer-cert-file").arg(&cert).arg("--peer-key-file").arg(&key);
                cmd.arg("--peer-client-cert-auth").arg("--peer-trusted-ca-file").arg(&certs.ca);
            }
            // etcd logs (zap) to stderr and prints nothing else.
            let child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file(&log)?)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("start {}", etcd.display()))?;
            let pid = child.id().ok_or_else(|| anyhow!("etcd member {i} exited at once"))?;
            members.push(Member { child, pid, client_addr: format!("127.0.0.1:{}", ports[2 * (i - 1)]), log });
        }
        Ok(Cluster { system: System::Etcd, members })
    }

    pub fn client_addrs(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_addr.clone()).collect()
    }

    /// Fails (with the log's tail) if a member process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        for (i, m) in self.members.iter_mut().enumerate() {
            if let Ok(Some(status)) = m.child.try_wait() {
                bail!("{} member {} exited ({status}); its log ends with:\n{}", self.system.name(), i + 1, log_tail(&m.log, 30));
            }
        }
        Ok(())
    }

    /// Sum of VmRSS over the members, in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        self.members.iter().map(|m| rss_kib(m.pid)).sum()
    }

    /// Sum of user+system CPU time over the members, in clock ticks.
    pub fn cpu_ticks(&self) -> Result<u64> {
        self.members.iter().map(|m| cpu_ticks(m.pid)).sum()
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub async fn stop(mut self) {
        for m in &self.members {
            let _ = Command::new("kill").args(["-TERM", &m.pid.to_string()]).status().await;
        }
        for m in &mut self.members {
            if tokio::time::timeout(Duration::from_secs(10), m.child.wait()).await.is_err() {
                eprintln!("{} member pid {} ignored SIGTERM; killing it", self.system.name(), m.pid);
                let _ = m.child.kill().await;
            }
        }
    }

    async fn kill(&mut self) {
        for m in &mut self.members {
            let _ = m.child.kill().await;
        }
    }
}

/// VmRSS of a process, KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS for pid {pid}"))
}

/// utime + stime of a process, clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after "pid (comm) ": state is the first; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| anyhow!("odd /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).ok_or_else(|| anyhow!("no utime for pid {pid}"))?;
    let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).ok_or_else(|| anyhow!("no stime for pid {pid}"))?;
    Ok(utime + stime)
}
