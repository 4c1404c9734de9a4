//! Boot assessment on a real FAT filesystem: an ESP image made by mkfs.vfat on a loop
//! device holds `EFI/Linux/kapp-a+2-1.efi`, the EFI variable says that entry was booted,
//! and `mark_good` renames it to `kapp-a.efi` (and does nothing more the second time).
//! Root only (loop devices, mounts); skipped otherwise, without dosfstools or without a
//! kernel that mounts vfat.

use std::path::Path;
use std::process::Command;

use kapp_init::pid1::boot::{mark_good, LOADER_GUID};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A loop device over a file; detached on drop.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

fn entries(dev: &str, mnt: &Path) -> Vec<String> {
    run(Command::new("mount").args(["-o", "ro", dev]).arg(mnt));
    let mut names: Vec<String> = std::fs::read_dir(mnt.join("EFI/Linux")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    run(Command::new("umount").arg(mnt));
    names.sort();
    names
}

#[test]
fn the_booted_entry_loses_its_counter() {
    if !nix::unistd::geteuid().is_root() || Command::new("mkfs.vfat").arg("--help").output().is_err() {
        eprintln!("skipped: needs root and mkfs.vfat (dosfstools)");
        return;
    }
    let _ = Command::new("modprobe").arg("vfat").output();
    if !std::fs::read_to_string("/proc/filesystems").unwrap_or_default().contains("vfat") {
        eprintln!("skipped: this kernel has no vfat (the QEMU end-to-end test checks the real ESP)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("esp.img");
    run(Command::new("mkfs.vfat").args(["-n", "ESP", "-C"]).arg(&img).arg("8192"));
    let dev = Loop(run(Command::new("losetup").args(["--find", "--show"]).arg(&img)));
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    run(Command::new("mount").arg(&dev.0).arg(&mnt));
    std::fs::create_dir_all(mnt.join("EFI/Linux")).unwrap();
    std::fs::write(mnt.join("EFI/Linux/kapp-a+2-1.efi"), b"uki a").unwrap();
    std::fs::write(mnt.join("EFI/Linux/kapp-b+3.efi"), b"uki b").unwrap();
    run(Command::new("umount").arg(&mnt));

    // Not counted (no variable): nothing is touched, nothing is mounted.
    let efivars = tmp.path().join("efivars");
    std::fs::create_dir(&efivars).unwrap();
    let at = tmp.path().join("esp");
    assert!(mark_good(&efivars, Path::new(&dev.0), &at).unwrap().is_none());

    let mut var = vec![7, 0, 0, 0];
    for u in "\\EFI\\Linux\\kapp-a+2-1.efi".encode_utf16().chain([0]) {
        var.extend(u.to_le_bytes());
    }
    std::fs::write(efivars.join(format!("LoaderBootCountPath-{LOADER_GUID}")), var).unwrap();
    let (from, to) = mark_good(&efivars, Path::new(&dev.0), &at).unwrap().expect("renamed");
    assert_eq!((from.as_str(), to.as_str()), ("EFI/Linux/kapp-a+2-1.efi", "EFI/Linux/kapp-a.efi"));
    assert_eq!(entries(&dev.0, &mnt), ["kapp-a.efi", "kapp-b+3.efi"], "only the booted entry is marked");
    // Unmounted again, and a second call (PID 1 restarted) is harmless.
    assert!(!std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(at.to_str().unwrap()));
    mark_good(&efivars, Path::new(&dev.0), &at).unwrap();
    assert_eq!(entries(&dev.0, &mnt), ["kapp-a.efi", "kapp-b+3.efi"]);
}
