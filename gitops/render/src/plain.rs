//! Plain trees: every `*.yaml`, `*.yml` and `*.json` file under the root (kustomization
//! files aside), in path order, split into documents. Also the document parsing that kustomize resources share.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::error::RenderError;
use crate::repo::Repo;
use crate::Document;

/// Every manifest file under `dir` (canonical), sorted by path, hidden entries skipped.
pub(crate) fn render_dir(repo: &Repo, dir: &Path) -> Result<Vec<Document>, RenderError> {
    let mut files = Vec::new();
    collect(repo, dir, &mut files)?;
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let shown = repo.display(&f);
        let text = repo.read_text(&f)?;
        for (index, object) in parse(&shown, &text)? {
            out.push(Document { file: shown.clone(), index, object });
        }
    }
    Ok(out)
}

fn collect(repo: &Repo, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), RenderError> {
    let io = |source| RenderError::Io { file: repo.display(dir), source };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows symlinks; `Repo::read` refuses targets outside the repository.
        if path.is_dir() {
            let canonical = path.canonicalize().map_err(io)?;
            if !canonical.starts_with(repo.base()) {
                return Err(RenderError::Escapes { file: repo.display(dir), path: PathBuf::from(name) });
            }
            collect(repo, &path, out)?;
        } else if is_manifest(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// A manifest file (or one encrypted, `x.yaml.age`); kustomization files further down are
/// not objects and are skipped.
fn is_manifest(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if crate::repo::is_age(path) {
        return is_manifest(Path::new(&name[..name.len() - crate::repo::AGE_SUFFIX.len()]));
    }
    !crate::kustomization::FILE_NAMES.contains(&name) && matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

/// The objects in one file's text: `(document index, object)`, empty documents skipped,
/// `kind: List` flattened into its items. Each object must carry apiVersion, kind and
/// metadata.name.
pub(crate) fn parse(file: &Path, text: &str) -> Result<Vec<(usize, Value)>, RenderError> {
    let mut out = Vec::new();
    let starts = start_lines(text);
    for (index, doc) in documents(file, text)?.into_iter().enumerate() {
        let err = |line, reason: String| RenderError::Document { file: file.to_path_buf(), index, line, reason };
        let Some(value) = doc else { continue };
        let line = starts.get(index).copied();
        if value.get("kind").and_then(Value::as_str) == Some("List") {
            let items = value.get("items").and_then(Value::as_array).ok_or_else(|| err(line, "a List without items".into()))?;
            for (n, item) in items.iter().enumerate() {
                check_identity(item).map_err(|field| err(line, format!("item {n} of the List: missing {field}")))?;
                out.push((index, item.clone()));
            }
            continue;
        }
        check_identity(&value).map_err(|field| err(line, format!("missing {field}")))?;
        out.push((index, value));
    }
    Ok(out)
}

/// Every document of a (multi-document) YAML or JSON text, `None` for empty ones.
pub(crate) fn documents(file: &Path, text: &str) -> Result<Vec<Option<Value>>, RenderError> {
    let mut out = Vec::new();
    for (index, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let err = |line, reason: String| RenderError::Document { file: file.to_path_buf(), index, line, reason };
        let yaml = serde_yaml::Value::deserialize(de).map_err(|e| err(e.location().map(|l| l.line()), e.to_string()))?;
        if yaml.is_null() {
            out.push(None);
            continue;
        }
        let value = serde_json::to_value(&yaml).map_err(|e| err(None, format!("not representable as JSON: {e}")))?;
        if !value.is_object() {
            return Err(err(None, "a document must be a mapping".into()));
        }
        out.push(Some(value));
    }
    Ok(out)
}

/// The line each document starts on (its `---`, or line 1 for a first document without
/// one), numbered as serde_yaml numbers documents.
fn start_lines(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let separator = line.starts_with("---") && line[3..].chars().next().is_none_or(char::is_whitespace);
        if separator {
            starts.push(i + 1);
        } else if starts.is_empty() && !line.trim().is_empty() && !line.starts_with('#') && !line.starts_with('%') {
            starts.push(1);
        }
    }
    starts
}

/// Which identifying field is missing: `Err("apiVersion" | "kind" | "metadata.name")`.
fn check_identity(v: &Value) -> Result<(), &'static str> {
    let present = |s: Option<&Value>| s.and_then(Value::as_str).is_some_and(|s| !s.is_empty());
    if !present(v.get("apiVersion")) {
        return Err("apiVersion");
    }
    if !present(v.get("kind")) {
        return Err("kind");
    }
    if !present(v.get("metadata").and_then(|m| m.get("name"))) {
        return Err("metadata.name");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_skip_empties_and_flatten_lists() {
        let text = "---\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: a}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n";
        let docs = parse(Path::new("f.yaml"), text).unwrap();
        let got: Vec<(usize, &str)> = docs.iter().map(|(i, v)| (*i, v["metadata"]["name"].as_str().unwrap())).collect();
        assert_eq!(got, vec![(1, "a"), (2, "b")]);
    }

    #[test]
    fn errors_name_file_document_and_field() {
        let e = parse(Path::new("d/f.yaml"), "apiVersion: v1\nkind: ConfigMap\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {}\n").unwrap_err();
        assert_eq!(e.to_string(), "d/f.yaml: document 0 (line 1): missing metadata.name");
        let e = parse(Path::new("f.yaml"), "kind: ConfigMap\n").unwrap_err();
        assert_eq!(e.to_string(), "f.yaml: document 0 (line 1): missing apiVersion");
        let e = parse(Path::new("f.yaml"), "a: 1\n---\nb: [\n").unwrap_err().to_string();
        assert!(e.starts_with("f.yaml: document 1 (line "), "{e}");
        assert_eq!(start_lines("# c\n---\na: 1\n--- \n---\nb: 2\n"), vec![2, 4, 5]);
        assert_eq!(start_lines("a: 1\n---\nb: 2\n"), vec![1, 2]);
    }
}
