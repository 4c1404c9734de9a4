//! Bounded, confined reading of the checked-out tree: every path is resolved (symlinks
//! included) and must stay under the repository root; file sizes, the total read and the
//! number of files are capped.

use std::cell::Cell;
use std::path::{Component, Path, PathBuf};

use crate::error::{Limit, RenderError};
use crate::Limits;

pub(crate) struct Repo {
    /// Canonical repository root: nothing outside it is read.
    boundary: PathBuf,
    /// Canonical rendered root: reported paths are relative to it.
    base: PathBuf,
    pub(crate) limits: Limits,
    read: Cell<u64>,
    files: Cell<usize>,
    identities: Vec<kapp_age::Identity>,
}

/// The suffix of age-encrypted files.
pub(crate) const AGE_SUFFIX: &str = ".age";

/// Whether `path`'s name ends with `.age`.
pub(crate) fn is_age(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.len() > AGE_SUFFIX.len() && n.ends_with(AGE_SUFFIX))
}

/// `path` with `.age` appended to its name.
pub(crate) fn with_age(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(AGE_SUFFIX);
    PathBuf::from(s)
}

impl Repo {
    pub(crate) fn new(root: &Path, repository: Option<&Path>, limits: Limits, identities: Vec<kapp_age::Identity>) -> Result<Repo, RenderError> {
        let canon = |p: &Path| p.canonicalize().map_err(|source| RenderError::Io { file: p.to_path_buf(), source });
        let base = canon(root)?;
        let boundary = match repository {
            Some(r) => canon(r)?,
            None => base.clone(),
        };
        if !base.starts_with(&boundary) {
            return Err(RenderError::Escapes { file: root.to_path_buf(), path: root.to_path_buf() });
        }
        Ok(Repo { boundary, base, limits, read: Cell::new(0), files: Cell::new(0), identities })
    }

    pub(crate) fn base(&self) -> &Path {
        &self.base
    }

    /// `path` as reported: relative to the rendered root (with `..` when it lies beside it).
    pub(crate) fn display(&self, path: &Path) -> PathBuf {
        relative(path, &self.base)
    }

    /// Resolve `rel` against directory `dir` (canonical) and check it stays inside the
    /// repository; `from` is the file that names it, for messages. A name that does not
    /// exist stands for its encrypted `<name>.age` if that does.
    pub(crate) fn resolve(&self, from: &Path, dir: &Path, rel: &str) -> Result<PathBuf, RenderError> {
        let mut joined = dir.join(rel);
        if joined.symlink_metadata().is_err() && with_age(&joined).symlink_metadata().is_ok() {
            joined = with_age(&joined);
        }
        let canonical = joined.canonicalize().map_err(|source| RenderError::Io { file: self.display(&joined), source })?;
        if !canonical.starts_with(&self.boundary) {
            return Err(RenderError::Escapes { file: self.display(from), path: PathBuf::from(rel) });
        }
        Ok(canonical)
    }

    /// Read a file (canonical path from [`Repo::resolve`] or a directory walk) within the
    /// bounds; a `*.age` file is decrypted (in memory only).
    pub(crate) fn read(&self, path: &Path) -> Result<Vec<u8>, RenderError> {
        let bytes = self.read_raw(path)?;
        if !is_age(path) {
            return Ok(bytes);
        }
        let file = self.display(path);
        if self.identities.is_empty() {
            return Err(RenderError::NoKey { file });
        }
        kapp_age::decrypt(&self.identities, &bytes).map_err(|source| RenderError::Decrypt { file, source })
    }

    fn read_raw(&self, path: &Path) -> Result<Vec<u8>, RenderError> {
        let shown = self.display(path);
        let io = |source| RenderError::Io { file: shown.clone(), source };
        let canonical = path.canonicalize().map_err(io)?;
        if !canonical.starts_with(&self.boundary) {
            return Err(RenderError::Escapes { file: shown.clone(), path: shown.clone() });
        }
        let files = self.files.get() + 1;
        if files > self.limits.max_files {
            return Err(RenderError::Limit { file: shown, limit: Limit::Files { max: self.limits.max_files } });
        }
        self.files.set(files);
        let size = std::fs::metadata(&canonical).map_err(io)?.len();
        if size > self.limits.max_file_size {
            return Err(RenderError::Limit { file: shown, limit: Limit::FileSize { size, max: self.limits.max_file_size } });
        }
        let total = self.read.get() + size;
        if total > self.limits.max_total_size {
            return Err(RenderError::Limit { file: shown, limit: Limit::TotalSize { max: self.limits.max_total_size } });
        }
        self.read.set(total);
        // Read at most one byte past the bound, in case the file grew since `metadata`.
        let mut bytes = Vec::new();
        use std::io::Read;
        std::fs::File::open(&canonical).map_err(io)?.take(self.limits.max_file_size + 1).read_to_end(&mut bytes).map_err(io)?;
        if bytes.len() as u64 > self.limits.max_file_size {
            return Err(RenderError::Limit { file: shown, limit: Limit::FileSize { size: bytes.len() as u64, max: self.limits.max_file_size } });
        }
        Ok(bytes)
    }

    pub(crate) fn read_text(&self, path: &Path) -> Result<String, RenderError> {
        String::from_utf8(self.read(path)?).map_err(|e| RenderError::Io {
            file: self.display(path),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not UTF-8: {e}")),
        })
    }
}

/// `path` relative to `base`, both absolute and canonical.
fn relative(path: &Path, base: &Path) -> PathBuf {
    let p: Vec<Component> = path.components().collect();
    let b: Vec<Component> = base.components().collect();
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(relative(Path::new("/r/a/b.yaml"), Path::new("/r")), PathBuf::from("a/b.yaml"));
        assert_eq!(relative(Path::new("/r/base/x.yaml"), Path::new("/r/overlay")), PathBuf::from("../base/x.yaml"));
    }
}
