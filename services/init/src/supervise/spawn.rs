//! Forking children: one long-lived thread does it, so the parent-death signal (which the
//! kernel sends when the forking *thread* ends) fires only when the supervisor goes away.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use nix::sys::signal::Signal;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use super::{ServiceSpec, SuperviseError};

type Job = (Command, oneshot::Sender<std::io::Result<u32>>);

/// The spawner thread; it ends when this is dropped.
pub(super) struct Spawner {
    jobs: mpsc::Sender<Job>,
}

impl Spawner {
    pub fn start() -> Result<Spawner, SuperviseError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("kapp-init-spawn".into())
            .spawn(move || {
                while let Ok((mut command, reply)) = queue.recv() {
                    let result = command.spawn().map(|child| child.id());
                    // Close our copies of the pipe's write end before anyone waits for its end.
                    drop(command);
                    let _ = reply.send(result);
                }
            })
            .map_err(|e| SuperviseError::SpawnerThread { reason: e.to_string() })?;
        Ok(Spawner { jobs })
    }

    /// Starts `spec` with stdout and stderr on one new pipe; returns its pid and the pipe's
    /// read end.
    /// With `cgroup`, the child moves itself into `<cgroup>/<name>` (cgroup2, created here)
    /// before it execs, so everything it starts is counted there too.
    pub async fn spawn(&self, spec: &ServiceSpec, cgroup: Option<&Path>) -> std::io::Result<(u32, pipe::Receiver)> {
        let procs = match cgroup {
            None => None,
            Some(parent) => {
                let dir = parent.join(&spec.name);
                std::fs::create_dir_all(&dir)?;
                Some(std::fs::OpenOptions::new().write(true).open(dir.join("cgroup.procs"))?)
            }
        };
        let (writer, reader) = pipe::pipe()?;
        let writer = writer.into_blocking_fd()?;
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(writer.try_clone()?)
            .stderr(writer)
            .process_group(0);
        let parent = std::process::id();
        #[allow(unsafe_code)]
        // SAFETY: the closure runs between fork and exec; it allocates nothing and calls only
        // async-signal-safe functions (write to an fd opened before the fork, prctl, getppid).
        unsafe {
            command.pre_exec(move || {
                if let Some(f) = &procs {
                    // "0" moves the writing process.
                    if libc::write(std::os::fd::AsRawFd::as_raw_fd(f), b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
                // The supervisor died before the signal was armed: do not outlive it.
                if nix::unistd::getppid().as_raw() as u32 != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let (reply, result) = oneshot::channel();
        self.jobs.send((command, reply)).map_err(|_| std::io::Error::other("spawner thread ended"))?;
        let pid = result.await.map_err(|_| std::io::Error::other("spawner thread ended"))??;
        Ok((pid, reader))
    }
}
