//! Exit statuses and zombies: services are collected by pid, orphans found through /proc.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::time::Instant;

use super::SuperviseError;

/// How long a zombie that is not a service stays unreaped: code in this process that
/// started it collects it well within this.
pub(super) const ORPHAN_GRACE: Duration = Duration::from_secs(1);

/// Reap children we did not start (orphans reparented to us): become a child subreaper
/// (`prctl(PR_SET_CHILD_SUBREAPER)`) when not PID 1 (PID 1 gets every orphan anyway).
/// [`super::Supervisor::start`] calls it; the attribute belongs to the whole process.
pub fn become_subreaper() -> Result<(), SuperviseError> {
    if std::process::id() == 1 {
        return Ok(());
    }
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| SuperviseError::Subreaper { reason: e.to_string() })
}

/// How a process ended, as people say it: "exit code 1", "killed by SIGKILL".
pub(super) fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit code {code}"),
        WaitStatus::Signaled(_, signal, true) => format!("killed by {signal} (core dumped)"),
        WaitStatus::Signaled(_, signal, false) => format!("killed by {signal}"),
        other => format!("{other:?}"),
    }
}

/// If our child `pid` has exited, how; it is left a zombie (so its pid and process group
/// stay reserved) until [`collect`].
pub(super) fn exited(pid: u32) -> Option<String> {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(Pid::from_raw(pid as i32)), flags) {
        Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => None,
        Ok(status) => Some(describe(status)),
        // Not our child any more: something else in this process reaped it.
        Err(e) => Some(format!("exit status lost ({e})")),
    }
}

/// Reaps a child that [`exited`] reported.
pub(super) fn collect(pid: u32) {
    let _ = waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG));
}

/// Signals a process group; a group that is gone is not an error.
pub(super) fn signal_group(pgid: u32, signal: Signal) {
    if let Err(e) = killpg(Pid::from_raw(pgid as i32), signal) {
        if e != Errno::ESRCH {
            tracing::warn!(pgid, %signal, error = %e, "signalling a process group failed");
        }
    }
}

/// Zombie children that are not services, with when each was first seen.
#[derive(Default)]
pub(super) struct Orphans {
    zombies: HashMap<u32, Instant>,
}

impl Orphans {
    /// Reaps the zombie children not in `services` that have been zombies for
    /// [`ORPHAN_GRACE`], and notes new ones.
    pub fn sweep(&mut self, services: &HashSet<u32>, now: Instant) {
        let zombies: HashSet<u32> = children()
            .into_iter()
            .filter(|pid| !services.contains(pid) && stat(*pid).is_some_and(|(state, _)| state == 'Z'))
            .collect();
        self.zombies.retain(|pid, _| zombies.contains(pid));
        for pid in zombies {
            let seen = *self.zombies.entry(pid).or_insert(now);
            if now.duration_since(seen) < ORPHAN_GRACE {
                continue;
            }
            self.zombies.remove(&pid);
            match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(status) => tracing::info!(pid, exit = %describe(status), "reaped orphan pid {pid}"),
                Err(e) => tracing::debug!(pid, error = %e, "orphan already reaped"),
            }
        }
    }

    /// When the next noted zombie is due.
    pub fn due(&self) -> Option<Instant> {
        self.zombies.values().min().map(|&seen| seen + ORPHAN_GRACE)
    }
}

/// Our children: from every thread's `children` list, else by scanning /proc for our pid
/// as parent (kernels without CONFIG_PROC_CHILDREN).
fn children() -> Vec<u32> {
    let me = std::process::id();
    let mut found = false;
    let mut pids = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{me}/task")) {
        for task in tasks.flatten() {
            if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
                found = true;
                pids.extend(list.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    if !found {
        if let Ok(entries) = std::fs::read_dir("/proc") {
            let all = entries.flatten().filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok());
            pids.extend(all.filter(|&pid| stat(pid).is_some_and(|(_, ppid)| ppid == me)));
        }
    }
    pids
}

/// State and parent pid of a process.
fn stat(pid: u32) -> Option<(char, u32)> {
    stat_fields(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// State and parent pid from a `/proc/<pid>/stat` line: `pid (comm) S ppid …`, where comm
/// may itself hold spaces and parentheses.
fn stat_fields(stat: &str) -> Option<(char, u32)> {
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((state, ppid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names() {
        assert_eq!(stat_fields("42 (sleep) Z 7 42 42 0 -1"), Some(('Z', 7)));
        assert_eq!(stat_fields("42 (a) b (c) S 1 42 42"), Some(('S', 1)));
        assert_eq!(stat_fields("garbage"), None);
    }

    #[test]
    fn statuses_read_like_people_say_them() {
        let pid = Pid::from_raw(5);
        assert_eq!(describe(WaitStatus::Exited(pid, 1)), "exit code 1");
        assert_eq!(describe(WaitStatus::Signaled(pid, Signal::SIGKILL, false)), "killed by SIGKILL");
        assert_eq!(describe(WaitStatus::Signaled(pid, Signal::SIGABRT, true)), "killed by SIGABRT (core dumped)");
    }
}
