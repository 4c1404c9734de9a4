//! The API filesystems PID 1 mounts, under a root prefix (`/` on a node, a directory in
//! tests run inside their own mount namespace).

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// One filesystem: type, where (relative to the root), flags, options.
pub struct Fs {
    pub fstype: &'static str,
    pub target: &'static str,
    pub flags: MsFlags,
    pub data: &'static str,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC);

/// In mount order (a target's parent first).
pub const API_FILESYSTEMS: &[Fs] = &[
    Fs { fstype: "proc", target: "proc", flags: NOSUID_NODEV_NOEXEC, data: "" },
    Fs { fstype: "sysfs", target: "sys", flags: NOSUID_NODEV_NOEXEC, data: "" },
    Fs { fstype: "devtmpfs", target: "dev", flags: MsFlags::MS_NOSUID, data: "mode=0755" },
    Fs { fstype: "devpts", target: "dev/pts", flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC), data: "mode=0620,gid=5,ptmxmode=0666" },
    Fs { fstype: "tmpfs", target: "dev/shm", flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV), data: "mode=1777" },
    Fs { fstype: "mqueue", target: "dev/mqueue", flags: NOSUID_NODEV_NOEXEC, data: "" },
    Fs { fstype: "tmpfs", target: "run", flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV), data: "mode=0755" },
    Fs { fstype: "tmpfs", target: "tmp", flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV), data: "mode=1777" },
    Fs { fstype: "cgroup2", target: "sys/fs/cgroup", flags: NOSUID_NODEV_NOEXEC, data: "nsdelegate" },
];

#[derive(Debug, thiserror::Error)]
#[error("mount {fstype} on {}: {reason}", target.display())]
pub struct MountError {
    pub fstype: String,
    pub target: PathBuf,
    pub reason: String,
}

/// The mount points of this mount namespace (from `<proc>/self/mountinfo`).
pub fn mount_points(proc: &Path) -> Vec<PathBuf> {
    std::fs::read_to_string(proc.join("self/mountinfo"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .collect()
}

/// Mount `fs` under `root` unless something is mounted there already (the kernel may have
/// mounted devtmpfs itself). Creates the directory if it can.
pub fn mount_one(root: &Path, fs: &Fs) -> Result<bool, MountError> {
    let target = root.join(fs.target);
    if mount_points(&root.join("proc")).contains(&target) || (fs.target != "proc" && mount_points(Path::new("/proc")).contains(&target)) {
        return Ok(false);
    }
    let fail = |reason: String| MountError { fstype: fs.fstype.to_string(), target: target.clone(), reason };
    if !target.is_dir() {
        std::fs::create_dir_all(&target).map_err(|e| fail(e.to_string()))?;
    }
    let data = (!fs.data.is_empty()).then_some(fs.data);
    match mount(Some(fs.fstype), &target, Some(fs.fstype), fs.flags, data) {
        Ok(()) => Ok(true),
        // nsdelegate is refused outside the initial cgroup namespace on old kernels.
        Err(_) if fs.fstype == "cgroup2" => mount(Some("cgroup2"), &target, Some("cgroup2"), fs.flags, None::<&str>).map(|_| true).map_err(|e| fail(e.to_string())),
        Err(e) => Err(fail(e.to_string())),
    }
}

/// Mount every API filesystem; failures are returned (and the rest still tried).
pub fn mount_api(root: &Path) -> Vec<MountError> {
    API_FILESYSTEMS.iter().filter_map(|fs| mount_one(root, fs).err()).collect()
}

/// Mount a block device's filesystem. FAT is mounted with the ISO 8859-1 character set the
/// image carries: the kernel's default (`ascii`, Debian's) has no module in the image, and
/// its absence fails the mount with a bare EINVAL.
pub fn mount_device(device: &Path, target: &Path, fstype: &str, read_only: bool) -> Result<(), MountError> {
    let fail = |reason: String| MountError { fstype: fstype.to_string(), target: target.to_path_buf(), reason };
    std::fs::create_dir_all(target).map_err(|e| fail(e.to_string()))?;
    let flags = if read_only { MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV } else { MsFlags::MS_NOATIME };
    let data = (fstype == "vfat").then_some("iocharset=iso8859-1");
    mount(Some(device), target, Some(fstype), flags, data).map_err(|e| fail(format!("{} : {e}", device.display())))
}

/// Unmount `target`; if it is busy, remount it read-only so its data is safe.
pub fn unmount(target: &Path) -> Result<(), String> {
    match umount2(target, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(e) => {
            let ro = mount(None::<&str>, target, None::<&str>, MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY, None::<&str>);
            let _ = umount2(target, MntFlags::MNT_DETACH);
            match ro {
                Ok(()) => Err(format!("{}: {e}; remounted read-only", target.display())),
                Err(e2) => Err(format!("{}: {e}; read-only remount: {e2}", target.display())),
            }
        }
    }
}
