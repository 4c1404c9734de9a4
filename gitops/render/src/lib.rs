//! Placeholder until the renderer lands (branch `render`): the shape gitops builds on.

use std::path::{Path, PathBuf};

/// One rendered object: the file it came from (relative to the rendered root), its
/// document index in that file, and the object.
#[derive(Clone, Debug)]
pub struct Document {
    pub file: PathBuf,
    pub index: usize,
    pub object: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RenderError(pub String);

pub fn render(_root: &Path) -> Result<Vec<Document>, RenderError> {
    Err(RenderError("the renderer has not landed yet".into()))
}
