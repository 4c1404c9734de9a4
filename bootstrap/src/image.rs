//! Container images from the host's installed Debian packages, written as an OCI image
//! layout that `kapp kubelet --import-dir` imports (no registry needed):
//!
//! ```text
//! <out>/oci-layout               {"imageLayoutVersion": "1.0.0"}
//! <out>/index.json               one manifest, annotated with the image's reference
//! <out>/blobs/sha256/<hex>       the layer (tar+gzip), the config, the manifest
//! ```
//!
//! The image is one layer. Its tar is reproducible: entries sorted by path, owned by 0:0,
//! a fixed mtime, no user or group names; so the same spec and the same installed
//! packages give the same digests. Directories exist only as the parents of what they hold.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

/// What to build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageSpec {
    /// The reference the kubelet will know the image by (`kapp.local/busybox:1`); written
    /// to the index as `org.opencontainers.image.ref.name`.
    pub reference: String,
    /// Debian packages whose installed files go into the image.
    pub packages: Vec<String>,
    /// Extra files: (path on this host, absolute path in the image). They replace package
    /// files at the same path.
    pub files: Vec<(PathBuf, PathBuf)>,
    /// Add `/bin/<applet>` → `busybox` for every applet of the image's `/bin/busybox`.
    pub busybox_applets: bool,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value`; a standard `PATH` is added when none is given.
    pub env: Vec<String>,
    pub workdir: Option<String>,
}

/// What [`build_layout`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    pub reference: String,
    /// `sha256:<hex>` of the image manifest.
    pub manifest_digest: String,
    /// Size of the compressed layer.
    pub layer_bytes: u64,
    /// Files and symlinks in the layer (directories not counted).
    pub files: usize,
}

/// Why an image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {reason}")]
    BadReference { reference: String, reason: String },
    #[error("package {package:?} is not installed on this host: {reason}")]
    NotInstalled { package: String, reason: String },
    #[error("running {command}: {reason}")]
    Command { command: String, reason: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },
    #[error("image path /{}: {reason}", path.display())]
    Conflict { path: PathBuf, reason: String },
    #[error("{}: {size} bytes, more than the {limit} {what} may have", path.display())]
    TooLarge { path: PathBuf, size: u64, limit: u64, what: &'static str },
    #[error("busybox applets asked for, but the image has no regular file /bin/busybox (add the busybox-static package)")]
    NoBusybox,
    #[error("{} exists and is not an OCI image layout: refusing to replace it", path.display())]
    NotALayout { path: PathBuf },
}

/// A file larger than this is refused (bounds what one entry reads).
pub const MAX_FILE_SIZE: u64 = 1 << 30;
/// The uncompressed layer may not grow beyond this.
pub const MAX_LAYER_SIZE: u64 = 4 << 30;

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Package paths that are documentation, not something a container runs.
const SKIPPED: &[&str] = &["/usr/share/doc", "/usr/share/man", "/usr/share/info", "/usr/share/lintian"];
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnobody:x:65534:\n";

/// Build the image `spec` describes into the OCI layout directory `out`. The layout is
/// built in a temporary directory beside `out` and renamed into place; an existing layout
/// at `out` is replaced, any other non-empty directory is refused.
pub fn build_layout(spec: &ImageSpec, out: &Path) -> Result<BuiltImage, ImageError> {
    check_reference(&spec.reference)?;
    if out.exists() && !out.join("oci-layout").is_file() && out.read_dir().map_err(io_at(out))?.next().is_some() {
        return Err(ImageError::NotALayout { path: out.to_path_buf() });
    }
    let tree = assemble(spec)?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(io_at(parent))?;
    // The layout is staged one level down in a temporary directory, so a kubelet importing
    // every layout of `parent` never sees a half-written one, nor the one being replaced.
    let tmp = tempfile::Builder::new().prefix(".kapp-image-").tempdir_in(parent).map_err(io_at(parent))?;
    let staged = tmp.path().join("layout");
    let built = write_layout(spec, &tree, &staged)?;
    replace_dir(&staged, &tmp.path().join("old"), out)?;
    tracing::info!(reference = %built.reference, digest = %built.manifest_digest, out = %out.display(), "image layout written");
    Ok(built)
}

/// `HOST:IMAGEPATH` (as `--file` takes it) → (host path, image path). The host path may
/// not contain ':'; the image path must be absolute.
pub fn parse_file_arg(arg: &str) -> Result<(PathBuf, PathBuf), ImageError> {
    match arg.split_once(':') {
        Some((host, image)) if !host.is_empty() && image.starts_with('/') => Ok((host.into(), image.into())),
        _ => Err(ImageError::BadFile { path: arg.into(), reason: "expected HOST:IMAGEPATH with an absolute IMAGEPATH".into() }),
    }
}

/// A full reference, as the kubelet's import takes it: a tag or digest must be given.
fn check_reference(reference: &str) -> Result<(), ImageError> {
    let bad = |reason: &str| ImageError::BadReference { reference: reference.to_string(), reason: reason.to_string() };
    if reference.is_empty() || reference.len() > 255 || reference.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("empty, longer than 255 characters or containing whitespace"));
    }
    let name = reference.split('@').next().unwrap_or_default();
    let last = name.rsplit('/').next().unwrap_or_default();
    if !reference.contains('@') && !last.contains(':') {
        return Err(bad("give a tag (name:tag) or a digest"));
    }
    if name.split('/').skip(1).any(|c| c.chars().any(|ch| ch.is_ascii_uppercase())) {
        return Err(bad("repository names are lowercase"));
    }
    Ok(())
}

/// One entry of the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir { mode: u32 },
    File { source: Source, mode: u32 },
    Symlink { target: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Host(PathBuf),
    Bytes(Vec<u8>),
}

/// The layer's entries by relative path; sorted, parents before children.
#[derive(Debug, Default)]
struct Tree(BTreeMap<PathBuf, Node>);

impl Tree {
    /// Add `node` at `path` (relative), creating parent directories (0755). `replace`: an
    /// existing non-directory entry is replaced, else it is kept.
    fn put(&mut self, path: &Path, node: Node, replace: bool) -> Result<(), ImageError> {
        let mut parent = PathBuf::new();
        for c in path.parent().into_iter().flat_map(Path::components) {
            parent.push(c);
            match self.0.entry(parent.clone()).or_insert(Node::Dir { mode: 0o755 }) {
                Node::Dir { .. } => {}
                _ => return Err(ImageError::Conflict { path: parent, reason: format!("not a directory, but /{} is to go inside it", path.display()) }),
            }
        }
        match (self.0.get(path), &node) {
            (None, _) => {}
            (Some(Node::Dir { .. }), Node::Dir { .. }) => {}
            (Some(Node::Dir { .. }), _) | (Some(_), Node::Dir { .. }) => {
                return Err(ImageError::Conflict { path: path.to_path_buf(), reason: "wanted both as a directory and as a file".into() })
            }
            (Some(_), _) if !replace => return Ok(()),
            (Some(_), _) => {}
        }
        self.0.insert(path.to_path_buf(), node);
        Ok(())
    }
}

/// Everything the layer will hold, in order: packages, the spec's files, busybox applets,
/// then /etc/passwd, /etc/group (unless given) and /tmp.
fn assemble(spec: &ImageSpec) -> Result<Tree, ImageError> {
    let mut tree = Tree::default();
    for package in &spec.packages {
        for (path, node) in package_entries(package)? {
            tree.put(&path, node, true)?;
        }
    }
    for (host, in_image) in &spec.files {
        let meta = std::fs::metadata(host).map_err(io_at(host))?;
        if !meta.is_file() {
            return Err(ImageError::BadFile { path: host.clone(), reason: "not a regular file".into() });
        }
        let rel = image_path(in_image)?;
        tree.put(&rel, Node::File { source: Source::Host(host.clone()), mode: meta.permissions().mode() & 0o7777 }, true)?;
    }
    if spec.busybox_applets {
        let Some(Node::File { source: Source::Host(busybox), .. }) = tree.0.get(Path::new("bin/busybox")) else {
            return Err(ImageError::NoBusybox);
        };
        for applet in applets(busybox)? {
            tree.put(&Path::new("bin").join(applet), Node::Symlink { target: "busybox".into() }, false)?;
        }
    }
    tree.put(Path::new("etc/passwd"), Node::File { source: Source::Bytes(PASSWD.into()), mode: 0o644 }, false)?;
    tree.put(Path::new("etc/group"), Node::File { source: Source::Bytes(GROUP.into()), mode: 0o644 }, false)?;
    tree.put(Path::new("tmp"), Node::Dir { mode: 0o1777 }, false)?;
    Ok(tree)
}

/// An absolute image path → relative, normalised; `..` refused.
fn image_path(p: &Path) -> Result<PathBuf, ImageError> {
    let bad = |reason: &str| ImageError::BadFile { path: p.to_path_buf(), reason: reason.to_string() };
    if !p.is_absolute() {
        return Err(bad("a path in the image must be absolute"));
    }
    let mut rel = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => rel.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return Err(bad("a path in the image may not contain '..'")),
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(bad("the image root is not a file"));
    }
    Ok(rel)
}

/// Run `command` and return its standard output, bounded.
fn run(command: &mut Command) -> Result<(bool, String, String), ImageError> {
    let what = format!("{command:?}");
    let out = command.output().map_err(|e| ImageError::Command { command: what.clone(), reason: e.to_string() })?;
    if out.stdout.len() > 64 << 20 {
        return Err(ImageError::Command { command: what, reason: "more than 64 MiB of output".into() });
    }
    Ok((out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).trim().to_string()))
}

/// The entries a package contributes, from the host's installed copy (`dpkg-query -L`):
/// regular files and symlinks; documentation skipped; directories (and symlinks dpkg
/// treats as directories, like a merged-/usr `/bin`) become parents of what they hold.
fn package_entries(package: &str) -> Result<Vec<(PathBuf, Node)>, ImageError> {
    let not_installed = |reason: String| ImageError::NotInstalled { package: package.to_string(), reason };
    if package.is_empty() || package.starts_with('-') {
        return Err(not_installed("not a package name".into()));
    }
    let (ok, status, err) = run(Command::new("dpkg-query").args(["-W", "--showformat=${db:Status-Status}", package]))?;
    if !ok || status.trim() != "installed" {
        return Err(not_installed(if ok { format!("its status is {:?}", status.trim()) } else { err }));
    }
    let (ok, listing, err) = run(Command::new("dpkg-query").args(["-L", package]))?;
    if !ok {
        return Err(not_installed(err));
    }
    let paths: Vec<&Path> = listing.lines().filter(|l| l.starts_with('/') && *l != "/.").map(Path::new).collect();
    let parents: HashSet<&Path> = paths.iter().flat_map(|p| p.ancestors().skip(1)).collect();
    let mut out = Vec::new();
    for &path in &paths {
        if SKIPPED.iter().any(|s| path.starts_with(s)) || parents.contains(path) {
            continue;
        }
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(package, path = %path.display(), "listed by dpkg but missing on this host; left out");
                continue;
            }
            Err(e) => return Err(ImageError::Io { path: path.to_path_buf(), source: e }),
        };
        let node = if meta.file_type().is_symlink() {
            Node::Symlink { target: std::fs::read_link(path).map_err(io_at(path))? }
        } else if meta.is_file() {
            Node::File { source: Source::Host(path.to_path_buf()), mode: meta.permissions().mode() & 0o7777 }
        } else {
            continue;
        };
        out.push((image_path(path)?, node));
    }
    Ok(out)
}

/// The applet names `busybox --list` prints.
fn applets(busybox: &Path) -> Result<Vec<String>, ImageError> {
    let (ok, list, err) = run(Command::new(busybox).arg("--list"))?;
    if !ok {
        return Err(ImageError::Command { command: format!("{} --list", busybox.display()), reason: err });
    }
    Ok(list.lines().map(str::trim).filter(|a| !a.is_empty() && !a.contains('/') && *a != "." && *a != "..").map(str::to_string).collect())
}

/// Write the layout into the new directory `dir`.
fn write_layout(spec: &ImageSpec, tree: &Tree, dir: &Path) -> Result<BuiltImage, ImageError> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(io_at(&blobs))?;
    let layer_tmp = dir.join("layer.tmp");
    let layer = write_layer(tree, &layer_tmp)?;
    let layer_path = blobs.join(layer.compressed.hex());
    std::fs::rename(&layer_tmp, &layer_path).map_err(io_at(&layer_path))?;

    let mut env = spec.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    let mut config = json!({"Entrypoint": spec.entrypoint, "Cmd": spec.cmd, "Env": env});
    if let Some(w) = &spec.workdir {
        config["WorkingDir"] = json!(w);
    }
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id.to_string()]},
    });
    let config = write_json_blob(&blobs, &config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": config.0.to_string(), "size": config.1},
        "layers": [{"mediaType": LAYER_TYPE, "digest": layer.compressed.to_string(), "size": layer.size}],
    });
    let manifest = write_json_blob(&blobs, &manifest)?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": INDEX_TYPE,
        "manifests": [{
            "mediaType": MANIFEST_TYPE,
            "digest": manifest.0.to_string(),
            "size": manifest.1,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {REF_NAME: spec.reference},
        }],
    });
    write_file(&dir.join("index.json"), &to_json(&index))?;
    write_file(&dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(BuiltImage { reference: spec.reference.clone(), manifest_digest: manifest.0.to_string(), layer_bytes: layer.size, files: layer.files })
}

fn to_json(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a JSON value serialises")
}

/// Write `v` as a blob; its digest and size.
fn write_json_blob(blobs: &Path, v: &Value) -> Result<(Sha256, u64), ImageError> {
    let bytes = to_json(v);
    let digest = Sha256::of(&bytes);
    write_file(&blobs.join(digest.hex()), &bytes)?;
    Ok((digest, bytes.len() as u64))
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    let mut f = std::fs::File::create(path).map_err(io_at(path))?;
    f.write_all(data).map_err(io_at(path))?;
    f.sync_all().map_err(io_at(path))
}

/// Move the finished layout `staged` to `out`; an old layout there goes to `aside`.
fn replace_dir(staged: &Path, aside: &Path, out: &Path) -> Result<(), ImageError> {
    let had_old = out.exists();
    if had_old {
        std::fs::rename(out, aside).map_err(io_at(out))?;
    }
    std::fs::rename(staged, out).map_err(|source| {
        if had_old {
            let _ = std::fs::rename(aside, out);
        }
        ImageError::Io { path: out.to_path_buf(), source }
    })
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io { path: path.to_path_buf(), source }
}

/// A sha256 digest.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sha256([u8; 32]);

impl Sha256 {
    fn of(data: &[u8]) -> Sha256 {
        Sha256(ring::digest::digest(&ring::digest::SHA256, data).as_ref().try_into().expect("sha256 is 32 bytes"))
    }

    fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Display for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    ctx: ring::digest::Context,
    bytes: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Hashing<W> {
        Hashing { inner, ctx: ring::digest::Context::new(&ring::digest::SHA256), bytes: 0 }
    }

    fn finish(self) -> (W, Sha256, u64) {
        let d = Sha256(self.ctx.finish().as_ref().try_into().expect("sha256 is 32 bytes"));
        (self.inner, d, self.bytes)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Exactly `left` bytes of a file, or an error (a file that shrank while being read
/// would otherwise leave a corrupt tar).
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank while it was read"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

struct Layer {
    diff_id: Sha256,
    compressed: Sha256,
    size: u64,
    files: usize,
}

/// Write the tree as a gzip-compressed tar to `path`.
fn write_layer(tree: &Tree, path: &Path) -> Result<Layer, ImageError> {
    let file = std::fs::File::create(path).map_err(io_at(path))?;
    let gz = flate2::GzBuilder::new().mtime(0).operating_system(255).write(Hashing::new(io::BufWriter::new(file)), flate2::Compression::default());
    let mut tar = tar::Builder::new(Hashing::new(gz));
    let mut files = 0;
    let mut total = 0u64;
    for (rel, node) in &tree.0 {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        let res = match node {
            Node::Dir { mode } => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                tar.append_data(&mut h, rel, io::empty())
            }
            Node::Symlink { target } => {
                files += 1;
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                tar.append_link(&mut h, rel, target)
            }
            Node::File { source, mode } => {
                files += 1;
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                let (reader, size): (Box<dyn Read>, u64) = match source {
                    Source::Bytes(b) => (Box::new(b.as_slice()), b.len() as u64),
                    Source::Host(p) => {
                        let f = std::fs::File::open(p).map_err(io_at(p))?;
                        let size = f.metadata().map_err(io_at(p))?.len();
                        if size > MAX_FILE_SIZE {
                            return Err(ImageError::TooLarge { path: p.clone(), size, limit: MAX_FILE_SIZE, what: "a file" });
                        }
                        (Box::new(Exact { inner: f, left: size }), size)
                    }
                };
                total += size;
                if total > MAX_LAYER_SIZE {
                    return Err(ImageError::TooLarge { path: rel.clone(), size: total, limit: MAX_LAYER_SIZE, what: "the layer" });
                }
                h.set_size(size);
                tar.append_data(&mut h, rel, reader)
            }
        };
        res.map_err(|e| ImageError::BadFile { path: Path::new("/").join(rel), reason: format!("adding to the layer: {e}") })?;
    }
    let finish = |e: io::Error| ImageError::Io { path: path.to_path_buf(), source: e };
    let (gz, diff_id, _) = tar.into_inner().map_err(finish)?.finish();
    let (buffered, compressed, size) = gz.finish().map_err(finish)?.finish();
    let file = buffered.into_inner().map_err(|e| finish(e.into_error()))?;
    file.sync_all().map_err(finish)?;
    Ok(Layer { diff_id, compressed, size, files })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busybox_spec() -> ImageSpec {
        ImageSpec {
            reference: "kapp.local/busybox:1".into(),
            packages: vec!["busybox-static".into()],
            busybox_applets: true,
            cmd: vec!["sh".into()],
            ..ImageSpec::default()
        }
    }

    fn read_json(path: &Path) -> Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    /// The blob a descriptor names, its size and digest checked.
    fn blob(layout: &Path, desc: &Value) -> Vec<u8> {
        let digest = desc["digest"].as_str().unwrap();
        let bytes = std::fs::read(layout.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap())).unwrap();
        assert_eq!(Sha256::of(&bytes).to_string(), digest, "blob content matches its digest");
        assert_eq!(desc["size"].as_u64(), Some(bytes.len() as u64), "descriptor size of {digest}");
        bytes
    }

    struct Entry {
        path: String,
        kind: tar::EntryType,
        mode: u32,
        link: Option<String>,
        data: Vec<u8>,
    }

    /// The layout's one image: its manifest, config and layer entries (owners and times
    /// checked to be 0 on the way).
    fn open(layout: &Path) -> (Value, Value, Vec<Entry>) {
        let index = read_json(&layout.join("index.json"));
        assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
        let manifest: Value = serde_json::from_slice(&blob(layout, &index["manifests"][0])).unwrap();
        let config: Value = serde_json::from_slice(&blob(layout, &manifest["config"])).unwrap();
        let layer = blob(layout, &manifest["layers"][0]);
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&layer[..]).read_to_end(&mut raw).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"], json!([Sha256::of(&raw).to_string()]), "diff_id is the uncompressed layer's digest");
        let mut entries = Vec::new();
        for e in tar::Archive::new(&raw[..]).entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header();
            assert_eq!((h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap()), (0, 0, 0), "{:?}", e.path());
            assert_eq!((h.username().unwrap(), h.groupname().unwrap()), (Some(""), Some("")));
            let (kind, mode) = (h.entry_type(), h.mode().unwrap());
            let link = e.link_name().unwrap().map(|l| l.to_string_lossy().into_owned());
            let path = e.path().unwrap().to_string_lossy().trim_end_matches('/').to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            entries.push(Entry { path, kind, mode, link, data });
        }
        (manifest, config, entries)
    }

    #[test]
    fn layout_structure_and_digests() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("busybox");
        let mut spec = busybox_spec();
        spec.entrypoint = vec!["/bin/sh".into(), "-c".into()];
        spec.env = vec!["GREETING=hi".into()];
        spec.workdir = Some("/srv".into());
        let built = build_layout(&spec, &out).unwrap();
        assert_eq!(read_json(&out.join("oci-layout")), json!({"imageLayoutVersion": "1.0.0"}));
        let index = read_json(&out.join("index.json"));
        assert_eq!(index["mediaType"], INDEX_TYPE);
        let m = &index["manifests"][0];
        assert_eq!(m["annotations"][REF_NAME], "kapp.local/busybox:1");
        assert_eq!(m["digest"], built.manifest_digest.as_str());
        assert_eq!(m["platform"], json!({"architecture": "amd64", "os": "linux"}));
        let (manifest, config, entries) = open(&out);
        assert_eq!(manifest["mediaType"], MANIFEST_TYPE);
        assert_eq!(manifest["layers"][0]["mediaType"], LAYER_TYPE);
        assert_eq!(manifest["layers"][0]["size"].as_u64(), Some(built.layer_bytes));
        assert_eq!((config["architecture"].as_str(), config["os"].as_str()), (Some("amd64"), Some("linux")));
        assert_eq!(config["config"]["Entrypoint"], json!(["/bin/sh", "-c"]));
        assert_eq!(config["config"]["Cmd"], json!(["sh"]));
        assert_eq!(config["config"]["Env"], json!([DEFAULT_PATH, "GREETING=hi"]));
        assert_eq!(config["config"]["WorkingDir"], "/srv");
        // Nothing but the layout: no temporary directory left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["busybox"]);
        let blobs = std::fs::read_dir(out.join("blobs/sha256")).unwrap().count();
        assert_eq!(blobs, 3, "layer, config, manifest");
        // Sorted, parents first, the counted entries are what the layer holds.
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        let mut sorted = entries.iter().map(|e| Path::new(&e.path)).collect::<Vec<_>>();
        sorted.sort();
        assert_eq!(paths, sorted.iter().map(|p| p.to_str().unwrap()).collect::<Vec<_>>());
        assert_eq!(built.files, entries.iter().filter(|e| e.kind != tar::EntryType::Directory).count());
        let find = |p: &str| entries.iter().find(|e| e.path == p).unwrap_or_else(|| panic!("{p} in the layer"));
        let bb = find("bin/busybox");
        assert_eq!((bb.kind, bb.mode), (tar::EntryType::Regular, 0o755));
        assert_eq!(bb.data, std::fs::read("/bin/busybox").unwrap());
        assert_eq!(find("bin").kind, tar::EntryType::Directory, "a merged-/usr /bin becomes a directory");
        assert_eq!((find("tmp").kind, find("tmp").mode), (tar::EntryType::Directory, 0o1777));
        assert_eq!(find("etc/passwd").data, PASSWD.as_bytes());
        assert!(String::from_utf8_lossy(&find("etc/group").data).contains("nobody:x:65534:"));
        assert!(!paths.iter().any(|p| p.starts_with("usr/share/doc") || p.starts_with("usr/share/man")), "documentation left out: {paths:?}");
    }

    #[test]
    fn applet_links_and_files_given() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("hello.sh");
        std::fs::write(&script, "#!/bin/sh\necho hello\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o750)).unwrap();
        let mut spec = busybox_spec();
        // A file at an applet's path is kept, not replaced by the link.
        spec.files = vec![(script.clone(), "/bin/wget".into()), (script.clone(), "/srv/./hello.sh".into())];
        build_layout(&spec, &dir.path().join("img")).unwrap();
        let (_, _, entries) = open(&dir.path().join("img"));
        let list = Command::new("/bin/busybox").arg("--list").output().unwrap().stdout;
        let list = String::from_utf8(list).unwrap();
        assert!(list.lines().count() > 100, "busybox --list: {list}");
        for applet in list.lines().filter(|a| !["busybox", "wget"].contains(a)) {
            let e = entries.iter().find(|e| e.path == format!("bin/{applet}")).unwrap_or_else(|| panic!("no link for {applet}"));
            assert_eq!((e.kind, e.link.as_deref()), (tar::EntryType::Symlink, Some("busybox")), "{applet}");
        }
        for path in ["bin/wget", "srv/hello.sh"] {
            let e = entries.iter().find(|e| e.path == path).unwrap();
            assert_eq!((e.kind, e.mode, e.data.as_slice()), (tar::EntryType::Regular, 0o750, &b"#!/bin/sh\necho hello\n"[..]), "{path}");
        }
        // Without busybox in the image, applets cannot be listed.
        let spec = ImageSpec { packages: vec![], ..busybox_spec() };
        assert!(matches!(build_layout(&spec, &dir.path().join("none")), Err(ImageError::NoBusybox)));
    }

    #[test]
    fn reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let a = build_layout(&busybox_spec(), &dir.path().join("a")).unwrap();
        let b = build_layout(&busybox_spec(), &dir.path().join("b")).unwrap();
        assert_eq!(a, b);
        let layer = |d: &str| std::fs::read(dir.path().join(d).join("blobs/sha256").join(&open(&dir.path().join(d)).0["layers"][0]["digest"].as_str().unwrap()[7..])).unwrap();
        assert_eq!(layer("a"), layer("b"));
        // Rebuilding over an existing layout replaces it; a changed spec changes the digest.
        let c = build_layout(&ImageSpec { cmd: vec!["httpd".into()], ..busybox_spec() }, &dir.path().join("a")).unwrap();
        assert_ne!(c.manifest_digest, a.manifest_digest);
        assert_eq!(read_json(&dir.path().join("a/index.json"))["manifests"][0]["digest"], c.manifest_digest.as_str());
        assert_eq!(std::fs::read_dir(dir.path().join("a/blobs/sha256")).unwrap().count(), 3, "the old layout's blobs are gone");
    }

    #[test]
    fn refusals() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("img");
        let missing = ImageSpec { packages: vec!["busybox-static".into(), "kapp-no-such-package".into()], ..busybox_spec() };
        let err = build_layout(&missing, &out).unwrap_err();
        assert!(matches!(&err, ImageError::NotInstalled { package, .. } if package == "kapp-no-such-package"), "{err}");
        assert!(err.to_string().contains("kapp-no-such-package"), "{err}");
        assert!(!out.exists(), "nothing written");
        for bad in ["", "kapp.local/busybox", "kapp.local/BusyBox:1", "a b:1"] {
            let err = build_layout(&ImageSpec { reference: bad.into(), ..busybox_spec() }, &out).unwrap_err();
            assert!(matches!(err, ImageError::BadReference { .. }), "{bad:?}: {err}");
        }
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        for (image_path, why) in [("etc/x", "relative"), ("/a/../x", "leaves"), ("/", "root")] {
            let err = build_layout(&ImageSpec { files: vec![(file.clone(), image_path.into())], ..busybox_spec() }, &out).unwrap_err();
            assert!(matches!(err, ImageError::BadFile { .. }), "{why}: {err}");
        }
        assert_eq!(parse_file_arg("site/index.html:/srv/index.html").unwrap(), (PathBuf::from("site/index.html"), PathBuf::from("/srv/index.html")));
        for bad in ["x", "x:srv/y", ":/y"] {
            assert!(parse_file_arg(bad).is_err(), "{bad}");
        }
        // A file where a directory is needed.
        let files = vec![(file.clone(), "/etc".into())];
        assert!(matches!(build_layout(&ImageSpec { files, ..busybox_spec() }, &out).unwrap_err(), ImageError::Conflict { .. }));
        // A directory that is not a layout is never replaced.
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("precious"), "x").unwrap();
        assert!(matches!(build_layout(&busybox_spec(), &out).unwrap_err(), ImageError::NotALayout { .. }));
        assert!(out.join("precious").is_file());
    }
}
