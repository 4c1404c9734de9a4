//! Where the machine config comes from, in order: a file named on our command line (tests,
//! development), a filesystem labelled `KAPPCFG` (vfat or iso9660) holding `machine.yaml`,
//! the kernel command line (`kapp.config=<base64url of the YAML>`), QEMU's fw_cfg entry
//! `opt/kapp/machine.yaml`.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use base64::Engine;

use super::mounts;

pub const VOLUME_LABEL: &str = "KAPPCFG";
pub const FW_CFG: &str = "sys/firmware/qemu_fw_cfg/by_name/opt/kapp/machine.yaml/raw";
pub const CMDLINE_KEY: &str = "kapp.config=";

/// A config found: where (as the console says it) and its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub source: String,
    pub text: String,
}

/// A source that is there but unreadable: the console line names it as the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceError {
    pub source: String,
    pub reason: String,
}

/// The value of `kapp.config=` on a kernel command line, decoded. Pure.
pub fn from_cmdline(cmdline: &str) -> Option<Result<String, String>> {
    let b64 = cmdline.split_whitespace().find_map(|w| w.strip_prefix(CMDLINE_KEY))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b64.trim_end_matches('=')).map_err(|e| format!("not base64url: {e}"));
    Some(bytes.and_then(|b| String::from_utf8(b).map_err(|_| "not UTF-8 text".to_string())))
}

/// The filesystem type and label of a volume from its first 34 KiB (vfat boot sector,
/// iso9660 primary volume descriptor). Pure.
pub fn volume_label(head: &[u8]) -> Option<(&'static str, String)> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim_end_matches([' ', '\0']).to_string();
    if head.len() >= 0x8000 + 72 && &head[0x8001..0x8006] == b"CD001" {
        return Some(("iso9660", text(&head[0x8028..0x8048])));
    }
    if head.len() >= 512 && head[510] == 0x55 && head[511] == 0xAA {
        if &head[0x52..0x57] == b"FAT32" {
            return Some(("vfat", text(&head[0x47..0x52])));
        }
        if &head[0x36..0x39] == b"FAT" {
            return Some(("vfat", text(&head[0x2B..0x36])));
        }
    }
    None
}

fn read_head(dev: &Path) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(dev)?;
    let mut buf = vec![0u8; 0x8000 + 2048];
    f.seek(SeekFrom::Start(0))?;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    buf.truncate(n);
    Ok(buf)
}

/// Block devices under `<root>/sys/class/block` (disks, partitions, CD-ROMs).
fn block_devices(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("sys/class/block")).map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).collect()).unwrap_or_default();
    names.sort();
    names.retain(|n| !n.starts_with("loop") && !n.starts_with("ram"));
    names
}

/// The `KAPPCFG` volume's machine.yaml: mounted read-only under `<root>/run/kapp/cfgvol`
/// for the read, then unmounted.
fn from_volume(root: &Path) -> Option<Result<Found, SourceError>> {
    for name in block_devices(root) {
        let dev = root.join("dev").join(&name);
        let Ok(head) = read_head(&dev) else { continue };
        let Some((fstype, label)) = volume_label(&head) else { continue };
        if !label.eq_ignore_ascii_case(VOLUME_LABEL) {
            continue;
        }
        let source = format!("volume {VOLUME_LABEL} ({name})");
        let mnt = root.join("run/kapp/cfgvol");
        if let Err(e) = mounts::mount_device(&dev, &mnt, fstype, true) {
            return Some(Err(SourceError { source, reason: e.to_string() }));
        }
        let text = std::fs::read_to_string(mnt.join("machine.yaml"));
        let _ = mounts::unmount(&mnt);
        return Some(text.map(|text| Found { source: source.clone(), text }).map_err(|e| SourceError { source, reason: format!("machine.yaml: {e}") }));
    }
    None
}

/// The first source that holds a config; `Ok(None)` if none does.
pub fn find(root: &Path, file: Option<&PathBuf>) -> Result<Option<Found>, SourceError> {
    if let Some(f) = file {
        let source = format!("file {}", f.display());
        return std::fs::read_to_string(f).map(|text| Some(Found { source: source.clone(), text })).map_err(|e| SourceError { source, reason: e.to_string() });
    }
    if let Some(r) = from_volume(root) {
        return r.map(Some);
    }
    if let Some(r) = from_cmdline(&std::fs::read_to_string(root.join("proc/cmdline")).unwrap_or_default()) {
        let source = "kernel command line".to_string();
        return r.map(|text| Some(Found { source: source.clone(), text })).map_err(|reason| SourceError { source: CMDLINE_KEY.trim_end_matches('=').into(), reason });
    }
    let fw = root.join(FW_CFG);
    if fw.exists() {
        let source = "fw_cfg opt/kapp/machine.yaml".to_string();
        return std::fs::read_to_string(&fw).map(|text| Some(Found { source: source.clone(), text })).map_err(|e| SourceError { source, reason: e.to_string() });
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_command_line() {
        let yaml = "apiVersion: kapp.dev/v1\nkind: MachineConfig\n";
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(yaml);
        assert_eq!(from_cmdline(&format!("console=ttyS0 init=/sbin/init kapp.config={b64} ro")), Some(Ok(yaml.to_string())));
        let padded = base64::engine::general_purpose::URL_SAFE.encode("a?b>");
        assert_eq!(from_cmdline(&format!("kapp.config={padded}")), Some(Ok("a?b>".to_string())));
        assert!(matches!(from_cmdline("kapp.config=%%%"), Some(Err(e)) if e.contains("not base64url")));
        assert_eq!(from_cmdline("console=ttyS0 ro"), None);
    }

    #[test]
    fn volume_labels_of_fat_and_iso() {
        let mut fat = vec![0u8; 512];
        fat[510] = 0x55;
        fat[511] = 0xAA;
        fat[0x36..0x3E].copy_from_slice(b"FAT16   ");
        fat[0x2B..0x36].copy_from_slice(b"KAPPCFG    ");
        assert_eq!(volume_label(&fat), Some(("vfat", "KAPPCFG".to_string())));
        let mut iso = vec![0u8; 0x8000 + 2048];
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        iso[0x8028..0x8048].copy_from_slice(format!("{:<32}", "KAPPCFG").as_bytes());
        assert_eq!(volume_label(&iso), Some(("iso9660", "KAPPCFG".to_string())));
        assert_eq!(volume_label(&[0u8; 4096]), None);
    }

    #[test]
    fn a_real_vfat_image_is_recognised() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("cfg.img");
        let ok = std::process::Command::new("mkfs.vfat").args(["-n", "KAPPCFG", "-C"]).arg(&img).arg("1440").output();
        let Ok(out) = ok else { return eprintln!("mkfs.vfat not installed: skipped") };
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(volume_label(&read_head(&img).unwrap()), Some(("vfat", "KAPPCFG".to_string())));
    }

    #[test]
    fn a_named_file_comes_first_and_fw_cfg_last() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(find(d.path(), None), Ok(None));
        let fw = d.path().join(FW_CFG);
        std::fs::create_dir_all(fw.parent().unwrap()).unwrap();
        std::fs::write(&fw, "from fw_cfg").unwrap();
        assert_eq!(find(d.path(), None).unwrap().unwrap().source, "fw_cfg opt/kapp/machine.yaml");
        std::fs::create_dir_all(d.path().join("proc")).unwrap();
        std::fs::write(d.path().join("proc/cmdline"), "ro kapp.config=aGk\n").unwrap();
        assert_eq!(find(d.path(), None).unwrap().unwrap(), Found { source: "kernel command line".into(), text: "hi".into() });
        let f = d.path().join("m.yaml");
        std::fs::write(&f, "file").unwrap();
        assert_eq!(find(d.path(), Some(&f)).unwrap().unwrap().text, "file");
    }
}
