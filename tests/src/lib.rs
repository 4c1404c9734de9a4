//! Helpers for kapp's end-to-end tests: locating the `kapp` binary and running its services
//! as real processes.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The `kapp` binary built alongside the tests (`target/<profile>/kapp`).
pub fn kapp_bin() -> PathBuf {
    if let Ok(p) = std::env::var("KAPP_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test-binary>
    let profile_dir = exe.parent().and_then(Path::parent).expect("target profile dir");
    let bin = profile_dir.join("kapp");
    assert!(bin.exists(), "{} is missing: build it first (cargo build --workspace --bins)", bin.display());
    bin
}

/// Ports that were free a moment ago on 127.0.0.1.
pub fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    ls.iter().map(|l| l.local_addr().expect("addr").port()).collect()
}

/// A `kapp` service running as a child process; killed (SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    /// Start `kapp <args>` with stdout+stderr to `log`.
    pub fn spawn(name: &str, args: &[String], log: &Path) -> Result<Proc> {
        let out = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(kapp_bin())
            .args(args)
            .env("KAPP_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawn kapp {args:?}"))?;
        Ok(Proc { child, name: name.to_string(), log: log.to_path_buf() })
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        self.wait(within)
    }

    /// Wait for the process to exit on its own.
    pub fn wait(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {within:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the process wrote so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Write the identity's PEM files into `dir`; the `--ca/--cert/--key` arguments naming them.
pub fn write_identity(dir: &Path, pem: &kapp_tls::Pem) -> Vec<String> {
    for (f, body) in [("ca.pem", &pem.ca), ("cert.pem", &pem.cert), ("key.pem", &pem.key)] {
        std::fs::write(dir.join(f), body).expect("write an identity file");
    }
    ["ca", "cert", "key"].iter().flat_map(|k| [format!("--{k}"), dir.join(format!("{k}.pem")).display().to_string()]).collect()
}
