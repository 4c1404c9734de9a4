//! Building a kustomization the way `kustomize build` does: accumulate resources
//! (recursing into directories that hold a kustomization), run the generators, then the
//! transformers in kustomize's order (patchesStrategicMerge, patches, namespace, prefix and
//! suffix, labels, annotations, patchesJson6902, images). At the top only: add the content
//! hashes to generated names, fix name references, sort in kustomize's legacy order.

use std::path::Path;

use crate::error::{Limit, RenderError};
use crate::generators::{content_hash, generate, Behavior};
use crate::kustomization::{self, Kustomization};
use crate::patches::{self, Ctx};
use crate::plain;
use crate::repo::Repo;
use crate::resource::Res;
use crate::{nameref, order, transforms, Document};

/// Render the kustomization in `dir` (canonical) into documents.
pub(crate) fn render(repo: &Repo, dir: &Path, kfile: &Path) -> Result<Vec<Document>, RenderError> {
    let mut list = build(repo, dir, kfile, 0)?;
    for r in list.iter_mut().filter(|r| r.hash) {
        let name = format!("{}-{}", r.name(), content_hash(&r.obj));
        r.set_name(name);
    }
    nameref::fix(&mut list).map_err(|reason| RenderError::kust(&repo.display(kfile), reason))?;
    list.sort_by(order::compare);
    Ok(list.into_iter().map(|r| Document { file: r.file, index: r.index, object: r.obj }).collect())
}

fn load(repo: &Repo, kfile: &Path) -> Result<Kustomization, RenderError> {
    kustomization::parse(&repo.display(kfile), &repo.read_text(kfile)?)
}

/// The resources of one kustomization, transformed by it.
fn build(repo: &Repo, dir: &Path, kfile: &Path, depth: usize) -> Result<Vec<Res>, RenderError> {
    let shown = repo.display(kfile);
    if depth > repo.limits.max_depth {
        return Err(RenderError::Limit { file: shown, limit: Limit::Depth { max: repo.limits.max_depth } });
    }
    let k = load(repo, kfile)?;
    let mut list: Vec<Res> = Vec::new();
    for entry in k.resources.iter().chain(&k.bases) {
        if is_remote(entry) {
            return Err(RenderError::Remote { file: shown, url: entry.clone() });
        }
        let path = repo.resolve(kfile, dir, entry)?;
        let found = if path.is_dir() {
            let sub = kustomization::find(&path).ok_or_else(|| RenderError::kust(&shown, format!("resource {entry:?} is a directory without a kustomization")))?;
            build(repo, &path, &sub, depth + 1)?
        } else {
            let file = repo.display(&path);
            let text = repo.read_text(&path)?;
            plain::parse(&file, &text)?.into_iter().map(|(index, obj)| Res::new(obj, file.clone(), index)).collect()
        };
        for r in found {
            add(&mut list, r, &shown)?;
        }
    }
    let generators = k.config_map_generator.iter().map(|g| ("ConfigMap", g)).chain(k.secret_generator.iter().map(|g| ("Secret", g)));
    for (index, (kind, g)) in generators.enumerate() {
        let gen = generate(repo, kfile, dir, index, kind, g, k.generator_options.as_ref())?;
        absorb(&mut list, gen.res, gen.behavior, &shown)?;
    }
    let ctx = Ctx { repo, kfile, dir };
    patches::strategic_merge(&ctx, &mut list, &k.patches_strategic_merge)?;
    patches::patches(&ctx, &mut list, &k.patches)?;
    if let Some(ns) = k.namespace.as_deref().filter(|n| !n.is_empty()) {
        transforms::namespace(&mut list, ns);
    }
    transforms::affixes(&mut list, k.name_prefix.as_deref().unwrap_or(""), k.name_suffix.as_deref().unwrap_or(""));
    transforms::labels(&mut list, &k.labels);
    transforms::common_labels(&mut list, &k.common_labels);
    transforms::annotations(&mut list, &k.common_annotations);
    patches::json6902_entries(&ctx, &mut list, &k.patches_json6902)?;
    transforms::images(&mut list, &k.images);
    Ok(list)
}

/// Remote bases (git URLs, `github.com/...`) are refused: the write path is this repository.
fn is_remote(entry: &str) -> bool {
    entry.contains("://") || entry.starts_with("github.com/") || entry.starts_with("git@") || entry.starts_with("gitlab.com/") || entry.contains("?ref=")
}

/// Append, refusing a second resource with the same id.
fn add(list: &mut Vec<Res>, r: Res, shown: &Path) -> Result<(), RenderError> {
    if let Some(old) = list.iter().find(|o| o.group_version().0 == r.group_version().0 && o.kind() == r.kind() && o.name() == r.name() && o.namespace() == r.namespace()) {
        return Err(RenderError::kust(
            shown,
            format!("{} from {} (document {}) is also defined in {} (document {})", r.id(), r.file.display(), r.index, old.file.display(), old.index),
        ));
    }
    list.push(r);
    Ok(())
}

/// Add a generated object: create it, or merge it into / replace the one already there.
fn absorb(list: &mut Vec<Res>, mut r: Res, behavior: Behavior, shown: &Path) -> Result<(), RenderError> {
    let pos = list.iter().position(|o| o.same_id(&r));
    match (behavior, pos) {
        (Behavior::Create, _) => add(list, r, shown),
        (_, None) => Err(RenderError::kust(shown, format!("{} does not exist; cannot merge or replace", r.id()))),
        (_, Some(i)) => {
            let old = list.remove(i);
            for field in ["labels", "annotations"] {
                let mut merged = old.obj.pointer(&format!("/metadata/{field}")).cloned().unwrap_or_default();
                if let (Some(m), Some(new)) = (merged.as_object_mut(), r.obj.pointer(&format!("/metadata/{field}")).and_then(|v| v.as_object())) {
                    m.extend(new.clone());
                }
                if merged.as_object().is_some_and(|m| !m.is_empty()) {
                    crate::resource::meta(&mut r.obj).insert(field.into(), merged);
                }
            }
            if behavior == Behavior::Merge {
                for field in ["data", "binaryData"] {
                    if let Some(serde_json::Value::Object(base)) = old.obj.get(field) {
                        let mut merged = base.clone();
                        if let Some(serde_json::Value::Object(new)) = r.obj.get(field) {
                            merged.extend(new.clone());
                        }
                        r.obj[field] = serde_json::Value::Object(merged);
                    }
                }
            }
            let hash = r.hash;
            let name = old.name().to_string();
            let ns = old.namespace().to_string();
            let mut merged = Res { obj: r.obj, file: r.file, index: r.index, ..old };
            crate::resource::meta(&mut merged.obj).insert("name".into(), serde_json::Value::String(name));
            if !ns.is_empty() {
                crate::resource::meta(&mut merged.obj).insert("namespace".into(), serde_json::Value::String(ns));
            }
            merged.hash = hash;
            list.insert(i, merged);
            Ok(())
        }
    }
}
