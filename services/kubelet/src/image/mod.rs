//! Images: pulled from OCI registries (or imported from OCI layouts for air-gapped nodes)
//! into a content-addressed store under the state directory:
//!
//! ```text
//! images/blobs/sha256/<hex>     manifests, configs and compressed layers, verified
//! images/layers/<hex>/          each layer unpacked (overlayfs lower-layer form)
//! images/refs/<hex of name>.json  name → manifest digest, config, layer digests
//! ```
//!
//! Writes go to a temporary name and are renamed into place, so a crash never leaves a
//! half-written blob or layer under its final name.

pub mod gc;
pub mod reference;
pub mod registry;
pub mod unpack;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use reference::{Digest, Reference};
pub use registry::{Credentials, Registry, RegistryOptions};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {reason}")]
    BadReference { reference: String, reason: String },
    #[error("invalid digest {0:?}")]
    BadDigest(String),
    #[error("{what}: digest {got} does not match {want}")]
    DigestMismatch { what: String, want: String, got: String },
    #[error("{what}: {got} bytes, expected {want}")]
    SizeMismatch { what: String, want: u64, got: u64 },
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{url}: unauthorized: {reason}")]
    Unauthorized { url: String, reason: String },
    #[error("{0}: not found")]
    NotFound(String),
    #[error("tls: {0}")]
    Tls(String),
    #[error("{0}: no linux/amd64 image in the index")]
    NoPlatform(String),
    #[error("{what}: {reason}")]
    BadManifest { what: String, reason: String },
    #[error("image {0} is not present and the pull policy is Never")]
    NeverPull(String),
    #[error("unpacking into {}: {reason}", dir.display())]
    Unpack { dir: PathBuf, reason: String },
    #[error("{}: {reason}", path.display())]
    Io { path: PathBuf, reason: String },
}

/// imagePullPolicy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The pod's policy, or Kubernetes' default: Always for `:latest` (or no tag), else
    /// IfNotPresent.
    pub fn resolve(policy: Option<&str>, image: &Reference) -> PullPolicy {
        match policy {
            Some("Always") => PullPolicy::Always,
            Some("Never") => PullPolicy::Never,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            _ if image.is_latest() => PullPolicy::Always,
            _ => PullPolicy::IfNotPresent,
        }
    }
}

/// What a container inherits from its image's config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

/// A stored image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Normalised reference it was pulled or imported as.
    pub name: String,
    /// Digest of the (platform) manifest.
    pub digest: String,
    pub config: ImageConfig,
    /// Layer blob digests, bottom first.
    pub layers: Vec<String>,
    /// Compressed size of the layers.
    pub size: u64,
    /// Imported from an OCI layout (the air gap): never garbage-collected, as there may be
    /// no registry to pull it from again.
    #[serde(default)]
    pub pinned: bool,
}

/// The node's image store.
#[derive(Clone)]
pub struct ImageStore {
    root: PathBuf,
    registry: Registry,
    /// One pull per image name at a time.
    pulls: Arc<tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Pulls and imports share it; garbage collection holds it alone, so it never removes
    /// a blob or layer an unfinished pull has written and not yet recorded.
    gc: Arc<tokio::sync::RwLock<()>>,
}

impl ImageStore {
    pub fn open(root: &Path, options: RegistryOptions) -> Result<ImageStore, ImageError> {
        for d in ["blobs/sha256", "layers", "refs", "tmp"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(|e| ImageError::Io { path: p.clone(), reason: e.to_string() })?;
        }
        // Leftovers of interrupted pulls.
        let tmp = root.join("tmp");
        if let Ok(rd) = std::fs::read_dir(&tmp) {
            for e in rd.flatten() {
                let _ = std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
            }
        }
        Ok(ImageStore { root: root.to_path_buf(), registry: Registry::new(options)?, pulls: Arc::default(), gc: Arc::default() })
    }

    /// The unpacked directory of layer `digest`.
    pub fn layer_dir(&self, digest: &str) -> PathBuf {
        self.root.join("layers").join(digest.trim_start_matches("sha256:"))
    }

    fn ref_path(&self, name: &str) -> PathBuf {
        self.root.join("refs").join(format!("{}.json", Digest::of(name.as_bytes()).hex()))
    }

    /// The stored image named `image`, if any (and all its layers are unpacked).
    pub fn local(&self, image: &str) -> Option<Image> {
        let name = Reference::parse(image).ok()?.to_string();
        let img: Image = serde_json::from_slice(&std::fs::read(self.ref_path(&name)).ok()?).ok()?;
        img.layers.iter().all(|l| self.layer_dir(l).is_dir()).then_some(img)
    }

    /// Every stored image.
    pub fn list(&self) -> Vec<Image> {
        let Ok(rd) = std::fs::read_dir(self.root.join("refs")) else { return Vec::new() };
        rd.flatten().filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()).collect()
    }

    /// Make `image` present according to `policy`, pulling with `creds` (per registry host).
    pub async fn ensure(&self, image: &str, policy: Option<&str>, creds: &HashMap<String, Credentials>) -> Result<Image, ImageError> {
        let r = Reference::parse(image)?;
        let policy = PullPolicy::resolve(policy, &r);
        let name = r.to_string();
        let lock = self.pulls.lock().await.entry(name.clone()).or_default().clone();
        let _one = lock.lock().await;
        let _not_collected = self.gc.read().await;
        match (policy, self.local(image)) {
            (PullPolicy::Never, Some(i)) | (PullPolicy::IfNotPresent, Some(i)) => {
                self.touch(&i.name);
                return Ok(i);
            }
            (PullPolicy::Never, None) => return Err(ImageError::NeverPull(name)),
            _ => {}
        }
        self.pull_locked(&r, creds.get(&r.registry).or_else(|| creds.get(r.api_host()))).await
    }

    /// Pull `r`: resolve an index to linux/amd64, fetch config and layers (skipping those
    /// present), unpack, record.
    pub async fn pull(&self, r: &Reference, creds: Option<&Credentials>) -> Result<Image, ImageError> {
        let _not_collected = self.gc.read().await;
        self.pull_locked(r, creds).await
    }

    /// [`ImageStore::pull`] with the garbage collector held off by the caller.
    async fn pull_locked(&self, r: &Reference, creds: Option<&Credentials>) -> Result<Image, ImageError> {
        let name = r.to_string();
        let (mut body, mut media_type, mut digest) = self.registry.manifest(r, &r.manifest_ref(), creds).await?;
        let mut doc: Value = parse_json(&body, &name)?;
        if is_index(&media_type, &doc) {
            let chosen = pick_platform(&doc).ok_or_else(|| ImageError::NoPlatform(name.clone()))?;
            (body, media_type, digest) = self.registry.manifest(r, &chosen, creds).await?;
            doc = parse_json(&body, &name)?;
        }
        let _ = media_type;
        self.write_blob(&digest, &body)?;
        let manifest = parse_manifest(&doc, &name)?;
        let config = match self.read_blob(&manifest.config.0) {
            Some(b) => b,
            None => {
                let b = self.registry.blob(r, &manifest.config.0, creds).await?;
                self.write_blob(&manifest.config.0, &b)?;
                b.to_vec()
            }
        };
        let config = parse_config(&config, &name)?;
        let mut size = 0;
        for (layer, layer_size, media_type) in &manifest.layers {
            size += layer_size;
            if self.layer_dir(&layer.to_string()).is_dir() {
                continue;
            }
            let blob = self.blob_path(layer);
            if !blob.is_file() {
                let tmp = self.tmp_path("blob");
                let got = self.registry.blob_to_file(r, layer, *layer_size, creds, &tmp).await;
                if let Err(e) = got {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
                rename(&tmp, &blob)?;
            }
            self.unpack_layer(layer, media_type).await?;
        }
        let img = Image { name, digest: digest.to_string(), config, layers: manifest.layers.iter().map(|l| l.0.to_string()).collect(), size, pinned: false };
        self.record(&img)?;
        Ok(img)
    }

    /// Import every image of an OCI image layout (`oci-layout`, `index.json`, `blobs/`)
    /// whose index entries carry a reference name annotation. Blobs are verified.
    pub async fn import_layout(&self, dir: &Path) -> Result<Vec<Image>, ImageError> {
        let _not_collected = self.gc.read().await;
        let what = dir.display().to_string();
        let index = std::fs::read(dir.join("index.json")).map_err(|e| ImageError::Io { path: dir.join("index.json"), reason: e.to_string() })?;
        let index: Value = parse_json(&index, &what)?;
        let read_blob = |d: &Digest| -> Result<Vec<u8>, ImageError> {
            let p = dir.join("blobs/sha256").join(d.hex());
            let b = std::fs::read(&p).map_err(|e| ImageError::Io { path: p.clone(), reason: e.to_string() })?;
            let got = Digest::of(&b);
            if &got != d {
                return Err(ImageError::DigestMismatch { what: p.display().to_string(), want: d.to_string(), got: got.to_string() });
            }
            Ok(b)
        };
        let mut out = Vec::new();
        for m in index["manifests"].as_array().into_iter().flatten() {
            let ann = &m["annotations"];
            let Some(name) = ann["io.containerd.image.name"].as_str().or(ann["org.opencontainers.image.ref.name"].as_str()) else { continue };
            let Ok(r) = Reference::parse(name) else {
                tracing::warn!(layout = %what, name, "skipping an index entry whose name is not a full reference");
                continue;
            };
            let mut digest = Digest::parse(m["digest"].as_str().unwrap_or(""))?;
            let mut body = read_blob(&digest)?;
            let mut doc: Value = parse_json(&body, name)?;
            if is_index(m["mediaType"].as_str().unwrap_or(""), &doc) {
                digest = Digest::parse(&pick_platform(&doc).ok_or_else(|| ImageError::NoPlatform(name.to_string()))?)?;
                body = read_blob(&digest)?;
                doc = parse_json(&body, name)?;
            }
            self.write_blob(&digest, &body)?;
            let manifest = parse_manifest(&doc, name)?;
            let config = read_blob(&manifest.config.0)?;
            self.write_blob(&manifest.config.0, &config)?;
            let config = parse_config(&config, name)?;
            let mut size = 0;
            for (layer, layer_size, media_type) in &manifest.layers {
                size += layer_size;
                if self.layer_dir(&layer.to_string()).is_dir() {
                    continue;
                }
                let src = dir.join("blobs/sha256").join(layer.hex());
                let tmp = self.tmp_path("blob");
                std::fs::copy(&src, &tmp).map_err(|e| ImageError::Io { path: src.clone(), reason: e.to_string() })?;
                let got = file_digest(&tmp)?;
                if &got != layer {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(ImageError::DigestMismatch { what: src.display().to_string(), want: layer.to_string(), got: got.to_string() });
                }
                rename(&tmp, &self.blob_path(layer))?;
                self.unpack_layer(layer, media_type).await?;
            }
            let img = Image { name: r.to_string(), digest: digest.to_string(), config, layers: manifest.layers.iter().map(|l| l.0.to_string()).collect(), size, pinned: true };
            self.record(&img)?;
            out.push(img);
        }
        Ok(out)
    }

    async fn unpack_layer(&self, layer: &Digest, media_type: &str) -> Result<(), ImageError> {
        let blob = self.blob_path(layer);
        let target = self.layer_dir(&layer.to_string());
        let tmp = self.tmp_path("layer");
        let compression = unpack::Compression::from_media_type(media_type).unwrap_or(unpack::Compression::None);
        let tmp2 = tmp.clone();
        let res = tokio::task::spawn_blocking(move || -> Result<(), ImageError> {
            std::fs::create_dir(&tmp2).map_err(|e| ImageError::Io { path: tmp2.clone(), reason: e.to_string() })?;
            let f = std::fs::File::open(&blob).map_err(|e| ImageError::Io { path: blob.clone(), reason: e.to_string() })?;
            unpack::unpack(f, compression, &tmp2)
        })
        .await
        .map_err(|e| ImageError::Unpack { dir: tmp.clone(), reason: e.to_string() })?;
        if let Err(e) = res {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if std::fs::rename(&tmp, &target).is_err() {
            // Another pull unpacked the same layer first.
            let _ = std::fs::remove_dir_all(&tmp);
            if !target.is_dir() {
                return Err(ImageError::Io { path: target, reason: "could not move the unpacked layer into place".into() });
            }
        }
        Ok(())
    }

    /// Mark image `name` used now (its record's mtime: the garbage collector removes the
    /// least recently used first).
    fn touch(&self, name: &str) {
        if let Ok(f) = std::fs::File::options().append(true).open(self.ref_path(name)) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    fn record(&self, img: &Image) -> Result<(), ImageError> {
        let tmp = self.tmp_path("ref");
        let data = serde_json::to_vec_pretty(img).expect("an image record serialises");
        write_synced(&tmp, &data)?;
        rename(&tmp, &self.ref_path(&img.name))
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    fn read_blob(&self, d: &Digest) -> Option<Vec<u8>> {
        let b = std::fs::read(self.blob_path(d)).ok()?;
        (&Digest::of(&b) == d).then_some(b)
    }

    fn write_blob(&self, d: &Digest, data: &[u8]) -> Result<(), ImageError> {
        let tmp = self.tmp_path("blob");
        write_synced(&tmp, data)?;
        rename(&tmp, &self.blob_path(d))
    }

    fn tmp_path(&self, what: &str) -> PathBuf {
        self.root.join("tmp").join(format!("{what}-{:016x}", rand::random::<u64>()))
    }
}

fn write_synced(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    use std::io::Write;
    let io = |e: std::io::Error| ImageError::Io { path: path.to_path_buf(), reason: e.to_string() };
    let mut f = std::fs::File::create(path).map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)
}

fn rename(from: &Path, to: &Path) -> Result<(), ImageError> {
    std::fs::rename(from, to).map_err(|e| ImageError::Io { path: to.to_path_buf(), reason: e.to_string() })
}

fn file_digest(path: &Path) -> Result<Digest, ImageError> {
    use std::io::Read;
    let io = |e: std::io::Error| ImageError::Io { path: path.to_path_buf(), reason: e.to_string() };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Digest::parse(&format!("sha256:{}", reference::hex(ctx.finish().as_ref())))
}

fn parse_json(body: &[u8], what: &str) -> Result<Value, ImageError> {
    serde_json::from_slice(body).map_err(|e| ImageError::BadManifest { what: what.to_string(), reason: e.to_string() })
}

fn is_index(media_type: &str, doc: &Value) -> bool {
    media_type.contains("image.index") || media_type.contains("manifest.list") || doc.get("manifests").is_some()
}

/// The digest of the linux/amd64 manifest of an index. Pure.
pub fn pick_platform(index: &Value) -> Option<String> {
    index["manifests"].as_array()?.iter().find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64").and_then(|m| m["digest"].as_str().map(str::to_string))
}

struct Manifest {
    config: (Digest, u64),
    layers: Vec<(Digest, u64, String)>,
}

fn parse_manifest(doc: &Value, what: &str) -> Result<Manifest, ImageError> {
    let bad = |reason: String| ImageError::BadManifest { what: what.to_string(), reason };
    let desc = |v: &Value| -> Result<(Digest, u64, String), ImageError> {
        let d = Digest::parse(v["digest"].as_str().ok_or_else(|| bad("descriptor without digest".into()))?)?;
        let size = v["size"].as_u64().ok_or_else(|| bad("descriptor without size".into()))?;
        Ok((d, size, v["mediaType"].as_str().unwrap_or("").to_string()))
    };
    let (cd, cs, _) = desc(&doc["config"])?;
    let layers = doc["layers"].as_array().ok_or_else(|| bad("manifest without layers".into()))?.iter().map(desc).collect::<Result<Vec<_>, _>>()?;
    if layers.len() > 127 {
        return Err(bad(format!("{} layers (at most 127)", layers.len())));
    }
    for (_, _, mt) in &layers {
        if !mt.is_empty() && unpack::Compression::from_media_type(mt).is_none() {
            return Err(bad(format!("unsupported layer media type {mt}")));
        }
    }
    Ok(Manifest { config: (cd, cs), layers })
}

/// The parts of an image config a container inherits. Pure.
pub fn parse_config(body: &[u8], what: &str) -> Result<ImageConfig, ImageError> {
    let v: Value = parse_json(body, what)?;
    let c = &v["config"];
    let strings = |x: &Value| -> Vec<String> { x.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default() };
    Ok(ImageConfig {
        entrypoint: strings(&c["Entrypoint"]),
        cmd: strings(&c["Cmd"]),
        env: strings(&c["Env"]),
        working_dir: c["WorkingDir"].as_str().unwrap_or("").to_string(),
        user: c["User"].as_str().unwrap_or("").to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pull_policy_defaults() {
        let latest = Reference::parse("x").unwrap();
        let pinned = Reference::parse("x:1").unwrap();
        assert_eq!(PullPolicy::resolve(None, &latest), PullPolicy::Always);
        assert_eq!(PullPolicy::resolve(None, &pinned), PullPolicy::IfNotPresent);
        assert_eq!(PullPolicy::resolve(Some("Never"), &latest), PullPolicy::Never);
        assert_eq!(PullPolicy::resolve(Some("Always"), &pinned), PullPolicy::Always);
    }

    #[test]
    fn index_resolves_to_linux_amd64() {
        let idx = json!({"manifests": [
            {"digest": "sha256:arm", "platform": {"os": "linux", "architecture": "arm64"}},
            {"digest": "sha256:amd", "platform": {"os": "linux", "architecture": "amd64"}},
        ]});
        assert_eq!(pick_platform(&idx).as_deref(), Some("sha256:amd"));
        assert_eq!(pick_platform(&json!({"manifests": []})), None);
        assert!(is_index("", &idx) && is_index("application/vnd.oci.image.index.v1+json", &json!({})));
    }

    #[test]
    fn config_fields() {
        let c = parse_config(br#"{"config": {"Entrypoint": ["/bin/sh"], "Cmd": ["-c", "x"], "Env": ["PATH=/bin"], "WorkingDir": "/w", "User": "1000:1000"}}"#, "t").unwrap();
        assert_eq!(c, ImageConfig { entrypoint: vec!["/bin/sh".into()], cmd: vec!["-c".into(), "x".into()], env: vec!["PATH=/bin".into()], working_dir: "/w".into(), user: "1000:1000".into() });
        assert_eq!(parse_config(b"{}", "t").unwrap(), ImageConfig::default());
    }

    #[test]
    fn manifests_are_checked() {
        let d = format!("sha256:{}", "b".repeat(64));
        let ok = json!({"config": {"digest": d, "size": 2}, "layers": [{"digest": d, "size": 3, "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"}]});
        assert_eq!(parse_manifest(&ok, "t").unwrap().layers.len(), 1);
        let bad = json!({"config": {"digest": d, "size": 2}, "layers": [{"digest": d, "size": 3, "mediaType": "application/x-foreign"}]});
        assert!(parse_manifest(&bad, "t").is_err());
        assert!(parse_manifest(&json!({"config": {"digest": "md5:1", "size": 1}, "layers": []}), "t").is_err());
    }
}
