//! Renders a repository tree (a checked-out directory) into the Kubernetes objects to
//! apply, as `kubectl kustomize` would. No IO beyond reading the tree.
//!
//! A root holding `kustomization.yaml` (or `.yml`, or `Kustomization`) is built with
//! kustomize semantics; any other root yields every `*.yaml`, `*.yml` and `*.json` file
//! under it (sorted by path, hidden entries skipped), document by document.
//!
//! Module map:
//! - `repo`: confined, bounded reading ([`Limits`]; no path or symlink leaves the repository);
//!   `*.age` files decrypted as they are read, standing in for the name without `.age`
//! - `plain`: plain trees and document parsing (multi-document YAML, `kind: List`, identity checks)
//! - `kustomization`: the kustomization file model; unsupported fields are errors
//! - `kustomize`: the build — resources, generators, transformers in kustomize's order
//! - `generators`: configMapGenerator / secretGenerator and the content-hash name suffix
//! - `transforms`: namespace, namePrefix/nameSuffix, labels, annotations, images
//! - `patches`: patches / patchesStrategicMerge / patchesJson6902 (strategic merge in
//!   [`kapp_api::patch`]); `select`: patch targets
//! - `nameref`: references to renamed ConfigMaps, Secrets, ServiceAccounts, PVCs, ...
//! - `order`: kustomize's legacy output order
//! - `error`: [`RenderError`]

mod error;
mod generators;
mod kustomization;
mod kustomize;
mod nameref;
mod order;
mod patches;
mod plain;
mod repo;
mod resource;
mod select;
mod transforms;

use std::path::{Path, PathBuf};

pub use error::{Limit, RenderError};

/// One object to apply, and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The file it came from, relative to the rendered root (`../base/x.yaml` for a base
    /// beside it; for a generated object, the kustomization that declares the generator).
    pub file: PathBuf,
    /// The document's index in that file (for generated objects, the generator's).
    pub index: usize,
    pub object: serde_json::Value,
}

/// Bounds on what a render reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_file_size: u64,
    pub max_total_size: u64,
    pub max_files: usize,
    /// How deep kustomizations may nest (the root is depth 0).
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_file_size: 4 << 20, max_total_size: 64 << 20, max_files: 10_000, max_depth: 16 }
    }
}

/// How to render.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The repository root, which nothing read may leave; `None` means the rendered root
    /// itself (then an overlay cannot use `../base`).
    pub repository: Option<PathBuf>,
    pub limits: Limits,
    /// Keys for age-encrypted files: `x.yaml.age` renders as `x.yaml` would (a kustomization
    /// may name either), decrypted in memory. With none, an encrypted file that is rendered
    /// refuses the render.
    pub identities: Vec<kapp_age::Identity>,
}

/// Render `root` with the default limits, confined to `root` itself.
pub fn render(root: &Path) -> Result<Vec<Document>, RenderError> {
    render_with(root, &Options::default())
}

/// Render `root`, a directory inside `options.repository`.
pub fn render_with(root: &Path, options: &Options) -> Result<Vec<Document>, RenderError> {
    let repo = repo::Repo::new(root, options.repository.as_deref(), options.limits, options.identities.clone())?;
    let base = repo.base().to_path_buf();
    match kustomization::find(&base) {
        Some(kfile) => kustomize::render(&repo, &base, &kfile),
        None => plain::render_dir(&repo, &base),
    }
}
