//! The example repository: `examples/app` (embedded at build time) committed into a fresh
//! git repository the user can edit and commit to.

use std::path::Path;

use crate::host::run;
use crate::UpError;

include!(concat!(env!("OUT_DIR"), "/example.rs"));

/// Make `dir` a git repository holding the example, unless it exists. True if made.
pub async fn ensure_example(dir: &Path) -> Result<bool, UpError> {
    if dir.join(".git").exists() {
        return Ok(false);
    }
    let io = |p: &Path, e: std::io::Error| UpError::Io { path: p.to_path_buf(), reason: e.to_string() };
    // Build beside, then rename: an interrupted run leaves no half repository.
    let tmp = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    for (rel, body) in EXAMPLE {
        let p = tmp.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        std::fs::write(&p, body).map_err(|e| io(&p, e))?;
    }
    let t = tmp.display().to_string();
    run("git", &["init", "-q", "-b", "main", &t]).await?;
    run("git", &["-C", &t, "add", "-A"]).await?;
    run("git", &["-C", &t, "-c", "user.name=kapp", "-c", "user.email=kapp@localhost", "commit", "-q", "-m", "The example application"]).await?;
    std::fs::rename(&tmp, dir).map_err(|e| io(dir, e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_example_is_embedded() {
        assert!(super::EXAMPLE.iter().any(|(p, _)| *p == "kustomization.yaml"));
    }
}
