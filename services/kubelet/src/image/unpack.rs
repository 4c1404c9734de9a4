//! One image layer (a tar stream, gzip or zstd compressed or plain) into its own directory,
//! in the form overlayfs reads as a lower layer: OCI whiteouts (`.wh.<name>`) become
//! whiteout devices (character device 0/0) and opaque markers (`.wh..wh..opq`) become the
//! `trusted.overlay.opaque=y` attribute on their directory. Unpacked as root: modes, owners,
//! times and extended attributes are kept.

use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use super::ImageError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// How a layer blob is compressed, from its media type (or, for unknown types, its magic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        if media_type.ends_with("+gzip") || media_type.ends_with(".tar.gzip") || media_type == "application/vnd.docker.image.rootfs.diff.tar.gzip" {
            Some(Compression::Gzip)
        } else if media_type.ends_with("+zstd") {
            Some(Compression::Zstd)
        } else if media_type.ends_with(".tar") || media_type.ends_with("layer.v1.tar") {
            Some(Compression::None)
        } else {
            None
        }
    }

    /// From the first bytes of the blob.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// What a tar entry means for the layer directory.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// An ordinary entry at this (relative, normalised) path.
    Extract(PathBuf),
    /// `dir` hides everything below it in lower layers.
    Opaque(PathBuf),
    /// `path` is deleted from lower layers.
    Whiteout(PathBuf),
    /// Nothing to do (the root itself).
    Skip,
}

/// Classify an entry path: normalise it (strip `/` and `./`), refuse `..`, and recognise
/// whiteouts. Pure.
pub fn classify(path: &Path) -> Result<Action, String> {
    let mut clean = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => clean.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return Err(format!("path {} leaves the layer", path.display())),
        }
    }
    let Some(name) = clean.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
        return Ok(Action::Skip);
    };
    let parent = clean.parent().map(Path::to_path_buf).unwrap_or_default();
    if name == OPAQUE {
        return Ok(Action::Opaque(parent));
    }
    if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(format!("bad whiteout {}", path.display()));
        }
        return Ok(Action::Whiteout(parent.join(hidden)));
    }
    Ok(Action::Extract(clean))
}

/// Decompress (`compression`) and unpack `blob` into `dir`, which must exist and be empty.
pub fn unpack(blob: impl Read, compression: Compression, dir: &Path) -> Result<(), ImageError> {
    let err = |e: io::Error| ImageError::Unpack { dir: dir.to_path_buf(), reason: e.to_string() };
    let mut buffered = BufReader::with_capacity(256 << 10, blob);
    let compression = match compression {
        Compression::None => Compression::sniff(buffered.fill_buf().map_err(err)?),
        c => c,
    };
    let reader: Box<dyn Read> = match compression {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(ruzstd::decoding::StreamingDecoder::new(buffered).map_err(|e| ImageError::Unpack { dir: dir.to_path_buf(), reason: format!("zstd: {e}") })?),
        Compression::None => Box::new(buffered),
    };
    unpack_tar(reader, dir).map_err(|reason| ImageError::Unpack { dir: dir.to_path_buf(), reason })
}

fn unpack_tar(reader: impl Read, dir: &Path) -> Result<(), String> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let mut opaque = Vec::new();
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let path = entry.path().map_err(|e| e.to_string())?.into_owned();
        match classify(&path)? {
            Action::Skip => {}
            Action::Extract(_) => {
                entry.unpack_in(dir).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            Action::Opaque(d) => opaque.push(d),
            Action::Whiteout(p) => whiteout(dir, &p)?,
        }
    }
    // Directory entries may come after their opaque marker: mark once all are written.
    for d in opaque {
        let target = dir.join(&d);
        std::fs::create_dir_all(&target).map_err(|e| format!("{}: {e}", target.display()))?;
        xattr::set(&target, "trusted.overlay.opaque", b"y").map_err(|e| format!("opaque {}: {e}", target.display()))?;
    }
    Ok(())
}

/// A whiteout device at `rel` (its parent directories created as needed).
fn whiteout(dir: &Path, rel: &Path) -> Result<(), String> {
    let target = dir.join(rel);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        // Refuse to follow a symlinked parent out of the layer.
        let canon = parent.canonicalize().map_err(|e| format!("{}: {e}", parent.display()))?;
        let root = dir.canonicalize().map_err(|e| format!("{}: {e}", dir.display()))?;
        if !canon.starts_with(&root) {
            return Err(format!("whiteout {} leaves the layer", rel.display()));
        }
    }
    match std::fs::symlink_metadata(&target) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&target).map_err(|e| e.to_string())?,
        Ok(_) => std::fs::remove_file(&target).map_err(|e| e.to_string())?,
        Err(_) => {}
    }
    nix::sys::stat::mknod(&target, nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), nix::sys::stat::makedev(0, 0))
        .map_err(|e| format!("whiteout {}: {e}", target.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    #[test]
    fn classify_paths() {
        assert_eq!(classify(Path::new("./etc/passwd")), Ok(Action::Extract("etc/passwd".into())));
        assert_eq!(classify(Path::new("/bin/")), Ok(Action::Extract("bin".into())));
        assert_eq!(classify(Path::new("./")), Ok(Action::Skip));
        assert_eq!(classify(Path::new("etc/.wh.motd")), Ok(Action::Whiteout("etc/motd".into())));
        assert_eq!(classify(Path::new(".wh.tmp")), Ok(Action::Whiteout("tmp".into())));
        assert_eq!(classify(Path::new("var/cache/.wh..wh..opq")), Ok(Action::Opaque("var/cache".into())));
        assert!(classify(Path::new("../x")).is_err());
        assert!(classify(Path::new("a/../../x")).is_err());
        assert!(classify(Path::new("a/.wh.")).is_err());
    }

    #[test]
    fn compression_from_media_types() {
        assert_eq!(Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+gzip"), Some(Compression::Gzip));
        assert_eq!(Compression::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"), Some(Compression::Gzip));
        assert_eq!(Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+zstd"), Some(Compression::Zstd));
        assert_eq!(Compression::from_media_type("application/vnd.oci.image.layer.v1.tar"), Some(Compression::None));
        assert_eq!(Compression::from_media_type("application/json"), None);
    }

    fn layer(entries: &[(&str, Option<&[u8]>, u32)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data, mode) in entries {
            let mut h = tar::Header::new_gnu();
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                }
            }
            h.set_mode(*mode);
            h.set_uid(1234);
            h.set_gid(4321);
            h.set_cksum();
            b.append_data(&mut h, path, data.unwrap_or(b"" as &[u8])).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Whiteouts and opaque directories land in overlayfs form; modes and owners are kept
    /// (needs root: owners and the whiteout device).
    #[test]
    fn unpack_with_whiteouts() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIP unpack_with_whiteouts: needs root (chown, mknod)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let blob = gzip(&layer(&[
            ("etc/", None, 0o755),
            ("etc/hello", Some(b"hi\n"), 0o640),
            ("etc/.wh.motd", Some(b""), 0o644),
            ("var/cache/.wh..wh..opq", Some(b""), 0o644),
            ("var/cache/", None, 0o700),
            ("var/cache/new", Some(b"x"), 0o600),
        ]));
        unpack(&blob[..], Compression::Gzip, dir.path()).unwrap();
        let hello = std::fs::metadata(dir.path().join("etc/hello")).unwrap();
        assert_eq!(hello.permissions().mode() & 0o7777, 0o640);
        assert_eq!((hello.uid(), hello.gid()), (1234, 4321));
        assert_eq!(std::fs::read(dir.path().join("etc/hello")).unwrap(), b"hi\n");
        let motd = std::fs::symlink_metadata(dir.path().join("etc/motd")).unwrap();
        assert!(motd.file_type().is_char_device() && motd.rdev() == 0, "whiteout is a 0/0 character device");
        assert!(!dir.path().join("etc/.wh.motd").exists());
        assert_eq!(xattr::get(dir.path().join("var/cache"), "trusted.overlay.opaque").unwrap().as_deref(), Some(&b"y"[..]));
        assert_eq!(std::fs::metadata(dir.path().join("var/cache")).unwrap().permissions().mode() & 0o7777, 0o700);
        assert!(!dir.path().join("var/cache/.wh..wh..opq").exists());
        // The same layer uncompressed is recognised by its magic.
        let dir2 = tempfile::tempdir().unwrap();
        unpack(&layer(&[("a", Some(b"1"), 0o644)])[..], Compression::None, dir2.path()).unwrap();
        assert_eq!(std::fs::read(dir2.path().join("a")).unwrap(), b"1");
    }

    #[test]
    fn escaping_entries_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = layer(&[("x", Some(b"1"), 0o644)]);
        // Rewrite the name field to "../x" (tar::Builder refuses to write it).
        raw[..4].copy_from_slice(b"../x");
        let mut h = tar::Header::from_byte_slice(&raw[..512]).clone();
        h.set_cksum();
        raw[..512].copy_from_slice(h.as_bytes());
        assert!(unpack(&raw[..], Compression::None, dir.path()).is_err());
    }
}
