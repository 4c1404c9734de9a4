//! Image garbage collection, with the kubelet's policy: when the filesystem holding the
//! images is more than `high_percent` full, remove images no pod of the node uses, least
//! recently used first and none used within `min_unused`, until it is down to
//! `low_percent`. Images imported for the air gap are kept. A blob or unpacked layer goes
//! when no remaining image refers to it.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::{parse_json, parse_manifest, Digest, Image, ImageError, ImageStore, Reference};

/// When and how far to collect (Kubernetes' defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcPolicy {
    pub high_percent: u8,
    pub low_percent: u8,
    /// An image used more recently than this stays (a pod may be about to start with it).
    pub min_unused: Duration,
}

impl Default for GcPolicy {
    fn default() -> Self {
        GcPolicy { high_percent: 85, low_percent: 80, min_unused: Duration::from_secs(120) }
    }
}

impl GcPolicy {
    /// Bytes to free on a filesystem of `total` bytes with `available` left: nothing below
    /// the high threshold, else down to the low one. Pure.
    pub fn bytes_to_free(&self, total: u64, available: u64) -> u64 {
        if total == 0 {
            return 0;
        }
        let used = total.saturating_sub(available);
        if u128::from(used) * 100 < u128::from(total) * u128::from(self.high_percent) {
            return 0;
        }
        let target = (u128::from(total) * u128::from(self.low_percent) / 100) as u64;
        used.saturating_sub(target)
    }
}

/// Size and free space of the filesystem holding `path`.
pub fn fs_usage(path: &Path) -> Option<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let frag = s.fragment_size();
    Some((s.blocks() * frag, s.blocks_available() * frag))
}

fn du(path: &Path) -> u64 {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path).into_iter().flatten().flatten().map(|e| du(&e.path())).sum::<u64>() + m.len(),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

impl ImageStore {
    /// Remove unused images (`in_use`: image references of the node's pods, as written in
    /// their specs) until about `want` bytes are freed. Returns the removed images' names.
    pub async fn collect(&self, in_use: &HashSet<String>, want: u64, min_unused: Duration) -> Result<Vec<String>, ImageError> {
        let _alone = self.gc.write().await;
        let in_use: HashSet<String> = in_use.iter().filter_map(|i| Reference::parse(i).ok()).map(|r| r.to_string()).collect();
        let now = SystemTime::now();
        // When each was last used: its record's mtime (see `touch`).
        let mut images: Vec<(SystemTime, Image)> = self.list().into_iter().map(|img| (std::fs::metadata(self.ref_path(&img.name)).and_then(|m| m.modified()).unwrap_or(now), img)).collect();
        images.sort_by_key(|(used, _)| *used);
        let mut removed = Vec::new();
        let mut freed = 0u64;
        for i in 0..images.len() {
            if freed >= want {
                break;
            }
            let (used, img) = &images[i];
            if img.pinned || in_use.contains(&img.name) || now.duration_since(*used).unwrap_or_default() < min_unused {
                continue;
            }
            // What only this image holds, among those still recorded.
            let others: HashSet<&String> = images.iter().enumerate().filter(|(j, (_, o))| *j != i && !removed.contains(&o.name)).flat_map(|(_, (_, o))| o.layers.iter()).collect();
            freed += img.layers.iter().filter(|l| !others.contains(l)).map(|l| du(&self.layer_dir(l)) + du(&self.blob_path(&Digest::parse(l).unwrap_or_else(|_| Digest::of(b""))))).sum::<u64>();
            let path = self.ref_path(&img.name);
            std::fs::remove_file(&path).map_err(|e| ImageError::Io { path, reason: e.to_string() })?;
            tracing::info!(image = %img.name, "image garbage-collected");
            removed.push(img.name.clone());
        }
        if !removed.is_empty() {
            self.sweep()?;
        }
        Ok(removed)
    }

    /// Remove every blob and unpacked layer no recorded image refers to.
    fn sweep(&self) -> Result<(), ImageError> {
        let mut keep: HashSet<String> = HashSet::new();
        for img in self.list() {
            keep.extend(img.layers.iter().map(|l| l.trim_start_matches("sha256:").to_string()));
            let Ok(d) = Digest::parse(&img.digest) else { continue };
            keep.insert(d.hex().to_string());
            // The manifest names the config.
            if let Some(m) = self.read_blob(&d).and_then(|b| parse_json(&b, &img.name).ok()).and_then(|doc| parse_manifest(&doc, &img.name).ok()) {
                keep.insert(m.config.0.hex().to_string());
            }
        }
        for dir in ["blobs/sha256", "layers"] {
            let d = self.root.join(dir);
            for e in std::fs::read_dir(&d).map_err(|e| ImageError::Io { path: d.clone(), reason: e.to_string() })?.flatten() {
                if keep.contains(e.file_name().to_string_lossy().as_ref()) {
                    continue;
                }
                let p = e.path();
                let r = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
                r.map_err(|e| ImageError::Io { path: p, reason: e.to_string() })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        let p = GcPolicy::default();
        assert_eq!(p.bytes_to_free(1000, 200), 0, "80% used: below the high threshold");
        assert_eq!(p.bytes_to_free(1000, 150), 50, "85% used: down to 80%");
        assert_eq!(p.bytes_to_free(1000, 0), 200);
        assert_eq!(p.bytes_to_free(0, 0), 0);
    }

    /// A store with images made of fake blobs: `(name, layers, pinned)`.
    async fn store(images: &[(&str, &[&str], bool)]) -> (tempfile::TempDir, ImageStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = ImageStore::open(dir.path(), Default::default()).unwrap();
        for (name, layers, pinned) in images {
            let mut digests = Vec::new();
            for l in *layers {
                let d = Digest::of(l.as_bytes());
                s.write_blob(&d, l.as_bytes()).unwrap();
                std::fs::create_dir_all(s.layer_dir(&d.to_string()).join("usr")).unwrap();
                std::fs::write(s.layer_dir(&d.to_string()).join("usr/file"), vec![0u8; 1000]).unwrap();
                digests.push(d);
            }
            let config = format!("{{\"config\": {{}}, \"n\": \"{name}\"}}");
            let cd = Digest::of(config.as_bytes());
            s.write_blob(&cd, config.as_bytes()).unwrap();
            let desc = |d: &Digest, n: usize| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": n});
            let manifest = serde_json::json!({"schemaVersion": 2, "config": {"digest": cd.to_string(), "size": config.len()}, "layers": digests.iter().map(|d| desc(d, 1)).collect::<Vec<_>>()});
            let body = serde_json::to_vec(&manifest).unwrap();
            let md = Digest::of(&body);
            s.write_blob(&md, &body).unwrap();
            let r = Reference::parse(name).unwrap().to_string();
            s.record(&Image { name: r, digest: md.to_string(), config: Default::default(), layers: digests.iter().map(|d| d.to_string()).collect(), size: 1, pinned: *pinned }).unwrap();
            std::thread::sleep(Duration::from_millis(20)); // distinct mtimes: oldest first
        }
        (dir, s)
    }

    fn blobs(s: &ImageStore) -> usize {
        std::fs::read_dir(s.root.join("blobs/sha256")).unwrap().count()
    }

    #[tokio::test]
    async fn collects_unused_images_oldest_first_and_keeps_shared_layers() {
        let (_d, s) = store(&[("reg.io/old:1", &["base", "old"], false), ("reg.io/airgap:1", &["gap"], true), ("reg.io/used:1", &["base", "used"], false), ("reg.io/new:1", &["new"], false)]).await;
        assert_eq!(blobs(&s), 4 * 2 + 5, "four manifests and configs, five layers");
        let in_use: HashSet<String> = ["reg.io/used:1".to_string()].into();
        // Enough to need one image: the oldest unused goes, nothing more.
        let removed = s.collect(&in_use, 1, Duration::ZERO).await.unwrap();
        assert_eq!(removed, ["reg.io/old:1"]);
        assert!(s.local("reg.io/used:1").is_some(), "the shared base layer stays with the image in use");
        assert!(!s.layer_dir(&Digest::of(b"old").to_string()).exists());
        assert_eq!(blobs(&s), 3 * 2 + 4);
        // Everything possible: the pinned and the used stay.
        let removed = s.collect(&in_use, u64::MAX, Duration::ZERO).await.unwrap();
        assert_eq!(removed, ["reg.io/new:1"]);
        let mut left: Vec<String> = s.list().into_iter().map(|i| i.name).collect();
        left.sort();
        assert_eq!(left, ["reg.io/airgap:1", "reg.io/used:1"]);
        assert_eq!(blobs(&s), 2 * 2 + 3);
        // Recently used images stay however full the disk is.
        let (_d2, s2) = store(&[("reg.io/fresh:1", &["f"], false)]).await;
        assert!(s2.collect(&HashSet::new(), u64::MAX, Duration::from_secs(60)).await.unwrap().is_empty());
    }
}
