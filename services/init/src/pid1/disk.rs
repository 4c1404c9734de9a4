//! The state partition: found by its GPT partition label, formatted ext4 on first boot,
//! mounted at `/var`.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const STATE_LABEL: &str = "kapp-state";
const MKFS: &str = "/sbin/mkfs.ext4";
const MKFS_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{command}: {reason}")]
    Command { command: String, reason: String },
}

/// The device name (`vda2`) of the partition labelled `label`, from the `PARTNAME=` and
/// `DEVNAME=` lines of `<sys_class_block>/*/uevent`.
pub fn find_partition(sys_class_block: &Path, label: &str) -> Option<String> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(sys_class_block).ok()?.flatten().map(|e| e.path()).collect();
    entries.sort();
    entries.into_iter().find_map(|dir| {
        let uevent = std::fs::read_to_string(dir.join("uevent")).ok()?;
        let field = |k: &str| uevent.lines().find_map(|l| l.strip_prefix(k)).map(str::to_string);
        (field("PARTNAME=")? == label).then(|| field("DEVNAME=")).flatten()
    })
}

/// Whether `device` holds an ext2/3/4 superblock (magic 0xEF53 at byte 1080).
pub fn has_ext4(device: &Path) -> Result<bool, DiskError> {
    let io = |source| DiskError::Io { path: device.to_path_buf(), source };
    let mut f = std::fs::File::open(device).map_err(io)?;
    f.seek(SeekFrom::Start(1080)).map_err(io)?;
    let mut magic = [0u8; 2];
    match f.read_exact(&mut magic) {
        Ok(()) => Ok(magic == [0x53, 0xEF]),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(io(e)),
    }
}

/// Make an ext4 filesystem labelled `label` on `device` with `mkfs` (bounded in time).
pub fn format(mkfs: &Path, device: &Path, label: &str) -> Result<(), DiskError> {
    let command = format!("{} -q -F -L {label} {}", mkfs.display(), device.display());
    let fail = |reason: String| DiskError::Command { command: command.clone(), reason };
    let mut child = std::process::Command::new(mkfs)
        .args(["-q", "-F", "-L", label])
        .arg(device)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    let deadline = Instant::now() + MKFS_TIMEOUT;
    loop {
        match child.try_wait().map_err(|e| fail(e.to_string()))? {
            Some(status) if status.success() => return Ok(()),
            Some(status) => {
                let mut err = String::new();
                if let Some(mut s) = child.stderr.take() {
                    let _ = s.read_to_string(&mut err);
                }
                return Err(fail(format!("{status}: {}", err.trim())));
            }
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("still running after {}s", MKFS_TIMEOUT.as_secs())));
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// What [`prepare_state`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum State {
    /// No partition with the label: state stays on the root filesystem's /var.
    NoPartition,
    Mounted { device: String, formatted: bool },
}

/// Find the state partition under `root`, format it if it has no filesystem, mount it at
/// `<root>/var`.
pub fn prepare_state(root: &Path, label: &str) -> Result<State, String> {
    let Some(name) = find_partition(&root.join("sys/class/block"), label) else {
        return Ok(State::NoPartition);
    };
    let device = root.join("dev").join(&name);
    let formatted = !has_ext4(&device).map_err(|e| e.to_string())?;
    if formatted {
        let mkfs = root.join(MKFS.trim_start_matches('/'));
        format(&mkfs, &device, label).map_err(|e| e.to_string())?;
    }
    super::mounts::mount_device(&device, &root.join("var"), "ext4", false).map_err(|e| e.to_string())?;
    // What the root file system's /var had: the conventional links into /run.
    for (link, to) in [("var/run", "../run"), ("var/lock", "../run/lock")] {
        let path = root.join(link);
        if std::fs::symlink_metadata(&path).is_err() {
            std::os::unix::fs::symlink(to, &path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(State::Mounted { device: name, formatted })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_partition_by_its_label() {
        let d = tempfile::tempdir().unwrap();
        for (dir, uevent) in [("vda", "MAJOR=254\nDEVNAME=vda\nDEVTYPE=disk\n"), ("vda1", "DEVNAME=vda1\nDEVTYPE=partition\nPARTN=1\nPARTNAME=esp\n"), ("vda3", "DEVNAME=vda3\nDEVTYPE=partition\nPARTNAME=kapp-state\n")] {
            std::fs::create_dir(d.path().join(dir)).unwrap();
            std::fs::write(d.path().join(dir).join("uevent"), uevent).unwrap();
        }
        assert_eq!(find_partition(d.path(), "kapp-state").as_deref(), Some("vda3"));
        assert_eq!(find_partition(d.path(), "other"), None);
    }

    #[test]
    fn formats_an_empty_image_once() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("state.img");
        std::fs::write(&img, vec![0u8; 8 << 20]).unwrap();
        assert!(!has_ext4(&img).unwrap());
        format(Path::new(MKFS), &img, STATE_LABEL).unwrap();
        assert!(has_ext4(&img).unwrap());
        let e = format(Path::new("/nonexistent/mkfs"), &img, STATE_LABEL).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/mkfs"), "{e}");
        assert!(!has_ext4(&d.path().join("short")).is_ok_and(|b| b));
    }
}
