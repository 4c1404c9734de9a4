//! The state partition: found by its GPT partition label, grown to the end of its disk
//! (see [`super::gpt`]), formatted ext4 on first boot, mounted at `/var`.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const STATE_LABEL: &str = "kapp-state";
const MKFS: &str = "/sbin/mkfs.ext4";
const RESIZE2FS: &str = "/sbin/resize2fs";
const TOOL_TIMEOUT: Duration = Duration::from_secs(300);

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
    run_tool(mkfs, &["-q", "-F", "-L", label], device)
}

/// Grow the (mounted) ext4 filesystem on `device` to its partition's size, online.
pub fn resize(resize2fs: &Path, device: &Path) -> Result<(), DiskError> {
    run_tool(resize2fs, &[], device)
}

/// Run `tool args device`, bounded by [`TOOL_TIMEOUT`]; its stderr in the error.
fn run_tool(tool: &Path, args: &[&str], device: &Path) -> Result<(), DiskError> {
    let command = format!("{} {} {}", tool.display(), args.join(" "), device.display());
    let fail = |reason: String| DiskError::Command { command: command.clone(), reason };
    let mut child = std::process::Command::new(tool)
        .args(args)
        .arg(device)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    let deadline = Instant::now() + TOOL_TIMEOUT;
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
                return Err(fail(format!("still running after {}s", TOOL_TIMEOUT.as_secs())));
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Grow partition `name` (of the disk it is on, per sysfs under `root`) to the disk's end.
fn grow_partition(root: &Path, name: &str, label: &str) -> Result<Option<super::gpt::Grown>, String> {
    let sys = root.join("sys/class/block").join(name);
    let real = std::fs::canonicalize(&sys).map_err(|e| format!("{}: {e}", sys.display()))?;
    let disk = real.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).ok_or_else(|| format!("{}: no parent disk", real.display()))?;
    let read = |f: &str| -> Result<u64, String> {
        let p = root.join("sys/class/block").join(&disk).join(f);
        std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?.trim().parse().map_err(|e| format!("{}: {e}", p.display()))
    };
    // sysfs counts 512-byte sectors whatever the block size.
    let (bytes, lbs) = (read("size")? * 512, read("queue/logical_block_size")?);
    let dev = root.join("dev").join(&disk);
    let grown = super::gpt::grow_table(&dev, bytes, lbs, label).map_err(|e| format!("{}: {e}", dev.display()))?;
    if let Some(g) = &grown {
        let f = std::fs::File::open(&dev).map_err(|e| format!("{}: {e}", dev.display()))?;
        super::gpt::resize_in_kernel(&f, g).map_err(|e| e.to_string())?;
    }
    Ok(grown)
}

/// What [`prepare_state`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum State {
    /// No partition with the label: state stays on the root filesystem's /var.
    NoPartition,
    /// `grown`: the partition's new size in bytes when it was grown to the disk's end.
    Mounted { device: String, formatted: bool, grown: Option<u64> },
}

/// Find the state partition under `root`, format it if it has no filesystem, mount it at
/// `<root>/var`.
pub fn prepare_state(root: &Path, label: &str) -> Result<State, String> {
    let Some(name) = find_partition(&root.join("sys/class/block"), label) else {
        return Ok(State::NoPartition);
    };
    let device = root.join("dev").join(&name);
    // The image's state partition is small; the disk it was written to usually is not.
    let grown = match grow_partition(root, &name, label) {
        Ok(g) => g.map(|g| g.new_size),
        Err(e) => {
            super::say(&format!("state partition {name}: not grown: {e}"));
            None
        }
    };
    let formatted = !has_ext4(&device).map_err(|e| e.to_string())?;
    if formatted {
        let mkfs = root.join(MKFS.trim_start_matches('/'));
        format(&mkfs, &device, label).map_err(|e| e.to_string())?;
    }
    super::mounts::mount_device(&device, &root.join("var"), "ext4", false).map_err(|e| e.to_string())?;
    if grown.is_some() && !formatted {
        // A filesystem made before the disk grew: grow it too, online.
        if let Err(e) = resize(&root.join(RESIZE2FS.trim_start_matches('/')), &device) {
            super::say(&format!("state partition {name}: filesystem not grown: {e}"));
        }
    }
    // What the root file system's /var had: the conventional links into /run.
    for (link, to) in [("var/run", "../run"), ("var/lock", "../run/lock")] {
        let path = root.join(link);
        if std::fs::symlink_metadata(&path).is_err() {
            std::os::unix::fs::symlink(to, &path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(State::Mounted { device: name, formatted, grown })
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
