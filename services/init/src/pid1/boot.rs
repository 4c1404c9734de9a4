//! Boot assessment with systemd-boot's boot counting (the A/B updates build on it).
//!
//! The image's UKI is `EFI/Linux/kapp-a+3.efi`: three tries left. On each boot systemd-boot
//! renames the entry it starts (`kapp-a+2-1.efi`: two left, one failed so far) and tells
//! the OS which file that is in the EFI variable `LoaderBootCountPath`. Once the node is
//! ready, PID 1 marks the boot good by renaming that file to `kapp-a.efi` (no counter:
//! systemd-boot never counts it again). An entry whose tries run out is tried last, after
//! every good one: that is the rollback.

use std::path::{Path, PathBuf};

use super::mounts;

/// systemd-boot's vendor GUID for its `Loader*` variables.
pub const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
/// The GPT partition label of the image's ESP.
pub const ESP_LABEL: &str = "ESP";

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("LoaderBootCountPath {0:?} is not a path to a counted entry")]
    BadPath(String),
    #[error("no partition labelled {0}")]
    NoEsp(String),
    #[error("{0}")]
    Mount(#[from] mounts::MountError),
    #[error("rename {from} to {to}: {source}")]
    Rename { from: String, to: String, source: std::io::Error },
}

/// The path in `LoaderBootCountPath` (`\EFI\Linux\kapp-a+2-1.efi`), if systemd-boot set one:
/// the variable is 4 bytes of attributes, then a NUL-terminated UTF-16LE string.
pub fn counted_entry(efivars: &Path) -> Option<String> {
    let raw = std::fs::read(efivars.join(format!("LoaderBootCountPath-{LOADER_GUID}"))).ok()?;
    let units: Vec<u16> = raw.get(4..)?.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&u| u != 0).collect();
    String::from_utf16(&units).ok().filter(|s| !s.is_empty())
}

/// `kapp-a+2-1.efi` → `kapp-a.efi` (the Boot Loader Specification's `+LEFT[-DONE]` counter
/// dropped); None for a name without a counter.
pub fn good_name(file: &str) -> Option<String> {
    let (stem, ext) = file.rsplit_once('.').map_or((file, None), |(s, e)| (s, Some(e)));
    let (base, counter) = stem.rsplit_once('+')?;
    let (left, done) = counter.split_once('-').map_or((counter, None), |(l, d)| (l, Some(d)));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if base.is_empty() || !digits(left) || done.is_some_and(|d| !digits(d)) {
        return None;
    }
    Some(match ext {
        Some(e) => format!("{base}.{e}"),
        None => base.to_string(),
    })
}

/// Mark the running boot good: rename the counted entry `LoaderBootCountPath` (read from
/// `efivars`) names on the FAT filesystem of `esp` (mounted at `mountpoint` for the
/// rename, then unmounted). `Ok(None)`: this boot is not counted (no variable, or booted
/// some other way). `Ok(Some((from, to)))`: renamed, and synced.
pub fn mark_good(efivars: &Path, esp: &Path, mountpoint: &Path) -> Result<Option<(String, String)>, BootError> {
    let Some(path) = counted_entry(efivars) else { return Ok(None) };
    let rel = path.trim_start_matches('\\').replace('\\', "/");
    let (dir, file) = rel.rsplit_once('/').unwrap_or(("", rel.as_str()));
    let good = good_name(file).ok_or_else(|| BootError::BadPath(path.clone()))?;
    mounts::mount_device(esp, mountpoint, "vfat", false)?;
    let dir_path: PathBuf = mountpoint.join(dir);
    let (from, to) = (dir_path.join(file), dir_path.join(&good));
    let renamed = if from.exists() {
        std::fs::rename(&from, &to).and_then(|()| std::fs::File::open(&dir_path)?.sync_all())
    } else if to.exists() {
        // Marked already (PID 1 ran twice in one boot): nothing to do.
        Ok(())
    } else {
        Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no such entry on the ESP"))
    };
    let unmounted = mounts::unmount(mountpoint);
    renamed.map_err(|source| BootError::Rename { from: format!("{dir}/{file}"), to: format!("{dir}/{good}"), source })?;
    if let Err(e) = unmounted {
        tracing::warn!("ESP: {e}");
    }
    Ok(Some((format!("{dir}/{file}"), format!("{dir}/{good}"))))
}

/// On a node: efivarfs mounted if it is not, the ESP found by its label, and
/// [`mark_good`]. The console line to say.
pub fn mark_this_boot_good(root: &Path) -> String {
    let efivars = root.join("sys/firmware/efi/efivars");
    if !root.join("sys/firmware/efi").exists() {
        return "boot: not booted by UEFI, nothing to mark".into();
    }
    let fs = mounts::Fs { fstype: "efivarfs", target: "sys/firmware/efi/efivars", flags: nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOEXEC, data: "" };
    if let Err(e) = mounts::mount_one(root, &fs) {
        return format!("boot: cannot read EFI variables: {e}");
    }
    let Some(name) = super::disk::find_partition(&root.join("sys/class/block"), ESP_LABEL) else {
        return format!("boot: {}", BootError::NoEsp(ESP_LABEL.into()));
    };
    match mark_good(&efivars, &root.join("dev").join(&name), &root.join("run/kapp/esp")) {
        Ok(None) => "boot: not counted (no LoaderBootCountPath), nothing to mark".into(),
        Ok(Some((from, to))) => format!("boot marked good: {from} → {to}"),
        Err(e) => format!("boot: not marked good: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_dropped_from_entry_names() {
        assert_eq!(good_name("kapp-a+3.efi").as_deref(), Some("kapp-a.efi"));
        assert_eq!(good_name("kapp-a+2-1.efi").as_deref(), Some("kapp-a.efi"));
        assert_eq!(good_name("kapp-b+0-3.efi").as_deref(), Some("kapp-b.efi"));
        assert_eq!(good_name("kapp-a.efi"), None);
        assert_eq!(good_name("kapp-a+x.efi"), None);
        assert_eq!(good_name("kapp-a+1-.efi"), None);
        assert_eq!(good_name("+1.efi"), None);
    }

    #[test]
    fn the_variable_is_attributes_then_utf16() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(counted_entry(dir.path()), None);
        let mut raw = vec![6, 0, 0, 0];
        for u in "\\EFI\\Linux\\kapp-a+2-1.efi".encode_utf16().chain([0]) {
            raw.extend(u.to_le_bytes());
        }
        std::fs::write(dir.path().join(format!("LoaderBootCountPath-{LOADER_GUID}")), raw).unwrap();
        assert_eq!(counted_entry(dir.path()).as_deref(), Some("\\EFI\\Linux\\kapp-a+2-1.efi"));
    }
}
