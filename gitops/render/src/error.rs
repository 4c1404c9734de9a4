//! What can go wrong while rendering; every variant names the file it is about.

use std::path::PathBuf;

/// A rendering failure. Messages are lower-case and name the file (relative to the
/// rendered root when it lies under it), and the document or field where one applies.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{}: {source}", file.display())]
    Io { file: PathBuf, source: std::io::Error },
    /// A document that does not parse or lacks an identifying field.
    #[error("{}: document {index}{}: {reason}", file.display(), line_suffix(*line))]
    Document { file: PathBuf, index: usize, line: Option<usize>, reason: String },
    /// A bound on what is read was reached.
    #[error("{}: limit exceeded: {limit}", file.display())]
    Limit { file: PathBuf, limit: Limit },
    #[error("{}: {} is outside the repository root", file.display(), path.display())]
    Escapes { file: PathBuf, path: PathBuf },
    #[error("{}: remote resource {url:?} refused: only paths inside the repository are rendered", file.display())]
    Remote { file: PathBuf, url: String },
    #[error("unsupported field {field} in {}", file.display())]
    Unsupported { file: PathBuf, field: String },
    /// A kustomization that is malformed or asks for something impossible.
    #[error("{}: {reason}", file.display())]
    Kustomization { file: PathBuf, reason: String },
    /// An age-encrypted file and no key to decrypt it with.
    #[error("{}: encrypted with age and no decryption key is configured", file.display())]
    NoKey { file: PathBuf },
    /// An age-encrypted file that does not decrypt with the configured key.
    #[error("{}: cannot decrypt: {source}", file.display())]
    Decrypt { file: PathBuf, source: kapp_age::Error },
    /// A patch that does not apply.
    #[error("{}: patch {patch}: {reason}", file.display())]
    Patch { file: PathBuf, patch: usize, reason: String },
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(" (line {l})")).unwrap_or_default()
}

/// The bounds on reading a tree ([`crate::Limits`]), as reported when one is reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Limit {
    #[error("file is {size} bytes, more than the {max} bytes a file may have")]
    FileSize { size: u64, max: u64 },
    #[error("more than {max} bytes read in total")]
    TotalSize { max: u64 },
    #[error("kustomizations nested more than {max} deep")]
    Depth { max: usize },
    #[error("more than {max} files")]
    Files { max: usize },
}

impl RenderError {
    pub(crate) fn kust(file: &std::path::Path, reason: impl Into<String>) -> RenderError {
        RenderError::Kustomization { file: file.to_path_buf(), reason: reason.into() }
    }
}
