//! Cloning the kubelet (a multithreaded process) for a container is only safe while no other
//! thread holds a lock the child will need. libcontainer's child clears and sets the
//! environment, which takes std's environment lock; std's `Command::spawn` holds that lock
//! (for reading) while it forks. A container created while another task spawned `ip`
//! deadlocked its init for ever (seen under `kapp up`). So: every command the kubelet spawns
//! goes through [`spawn`], and the runtime holds [`exclusive`] while it forks its libcontainer
//! helper (`runtime::forked`).

use std::sync::{RwLock, RwLockWriteGuard};

static GUARD: RwLock<()> = RwLock::new(());

/// Spawn `cmd` while no container is being cloned.
pub(crate) fn spawn(cmd: &mut tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    let _g = GUARD.read().unwrap_or_else(|p| p.into_inner());
    cmd.spawn()
}

/// Held while a container's processes are cloned: no command is being spawned meanwhile.
pub(crate) fn exclusive() -> RwLockWriteGuard<'static, ()> {
    GUARD.write().unwrap_or_else(|p| p.into_inner())
}
