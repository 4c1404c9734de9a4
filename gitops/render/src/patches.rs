//! `patches`, `patchesStrategicMerge` and `patchesJson6902`. Like kustomize, a patch text
//! that parses as a list is a JSON 6902 patch and one made of mappings is a strategic
//! merge patch; a strategic merge patch without a target applies to the resource it names.

use std::path::Path;

use kapp_api::patch::{self as kpatch, ListOrder, PatchType};
use serde_json::Value;

use crate::error::RenderError;
use crate::kustomization::{Patch, Target};
use crate::plain::documents;
use crate::repo::Repo;
use crate::resource::{split_api_version, Res};
use crate::select::selects;

/// Where a kustomization's patches are read from, and how errors name them.
pub(crate) struct Ctx<'a> {
    pub repo: &'a Repo,
    pub kfile: &'a Path,
    pub dir: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, patch: usize, reason: impl Into<String>) -> RenderError {
        RenderError::Patch { file: self.repo.display(self.kfile), patch, reason: reason.into() }
    }

    fn body(&self, n: usize, p: &Patch) -> Result<String, RenderError> {
        match (&p.path, &p.patch) {
            (Some(path), None) => self.repo.read_text(&self.repo.resolve(self.kfile, self.dir, path)?),
            (None, Some(text)) => Ok(text.clone()),
            _ => Err(self.err(n, "give exactly one of path and patch")),
        }
    }

    /// The documents of a patch text (`n` numbers it in messages).
    fn docs(&self, n: usize, text: &str) -> Result<Vec<Value>, RenderError> {
        let shown = self.repo.display(self.kfile);
        let docs = documents(&shown, text).map_err(|e| self.err(n, e.to_string()))?;
        Ok(docs.into_iter().flatten().collect())
    }
}

/// Parse a patch text into JSON 6902 operations, or strategic merge patches.
enum Body {
    Json(Value),
    Strategic(Vec<Value>),
}

fn classify(ctx: &Ctx, n: usize, text: &str) -> Result<Body, RenderError> {
    let value: Result<serde_yaml::Value, _> = serde_yaml::from_str(text);
    if let Ok(serde_yaml::Value::Sequence(_)) = value {
        let ops = serde_json::to_value(value.expect("parsed")).map_err(|e| ctx.err(n, e.to_string()))?;
        return Ok(Body::Json(ops));
    }
    Ok(Body::Strategic(ctx.docs(n, text)?))
}

/// `patches`: each with an optional target.
pub(crate) fn patches(ctx: &Ctx, list: &mut Vec<Res>, patches: &[Patch]) -> Result<(), RenderError> {
    for (n, p) in patches.iter().enumerate() {
        let text = ctx.body(n, p)?;
        match classify(ctx, n, &text)? {
            Body::Json(ops) => {
                let target = p.target.as_ref().ok_or_else(|| ctx.err(n, "a JSON 6902 patch needs a target"))?;
                json6902(ctx, n, list, target, &ops)?;
            }
            Body::Strategic(docs) => {
                for doc in docs {
                    strategic(ctx, n, list, p.target.as_ref(), &doc)?;
                }
            }
        }
    }
    Ok(())
}

/// `patchesStrategicMerge`: file paths or inline patches.
pub(crate) fn strategic_merge(ctx: &Ctx, list: &mut Vec<Res>, entries: &[String]) -> Result<(), RenderError> {
    for (n, entry) in entries.iter().enumerate() {
        let text = if entry.contains('\n') || !(ctx.dir.join(entry).exists() || crate::repo::with_age(&ctx.dir.join(entry)).exists()) {
            entry.clone()
        } else {
            ctx.repo.read_text(&ctx.repo.resolve(ctx.kfile, ctx.dir, entry)?)?
        };
        for doc in ctx.docs(n, &text)? {
            strategic(ctx, n, list, None, &doc)?;
        }
    }
    Ok(())
}

/// `patchesJson6902`: each with a target and a path or inline patch.
pub(crate) fn json6902_entries(ctx: &Ctx, list: &mut [Res], entries: &[Patch]) -> Result<(), RenderError> {
    for (n, p) in entries.iter().enumerate() {
        let target = p.target.as_ref().ok_or_else(|| ctx.err(n, "a JSON 6902 patch needs a target"))?;
        let text = ctx.body(n, p)?;
        let ops: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| ctx.err(n, e.to_string()))?;
        let ops = serde_json::to_value(ops).map_err(|e| ctx.err(n, e.to_string()))?;
        json6902(ctx, n, list, target, &ops)?;
    }
    Ok(())
}

fn json6902(ctx: &Ctx, n: usize, list: &mut [Res], target: &Target, ops: &Value) -> Result<(), RenderError> {
    for r in list.iter_mut() {
        if selects(target, r).map_err(|e| ctx.err(n, e))? {
            r.obj = kpatch::apply(PatchType::Json, &r.obj, ops).map_err(|e| ctx.err(n, format!("{}: {e}", r.id())))?;
        }
    }
    Ok(())
}

/// Apply one strategic merge patch document to its target(s); a `$patch: delete` at the top
/// removes them.
fn strategic(ctx: &Ctx, n: usize, list: &mut Vec<Res>, target: Option<&Target>, doc: &Value) -> Result<(), RenderError> {
    let own = own_target(doc);
    let target = target.unwrap_or(&own);
    let mut hit = false;
    let mut keep = Vec::with_capacity(list.len());
    for mut r in list.drain(..) {
        if !selects(target, &r).map_err(|e| ctx.err(n, e))? {
            keep.push(r);
            continue;
        }
        hit = true;
        // As kustomize: a patch never renames a resource or changes its kind.
        let mut p = doc.clone();
        if let Some(m) = p.as_object_mut() {
            m.insert("apiVersion".into(), Value::String(r.api_version().to_string()));
            m.insert("kind".into(), Value::String(r.kind().to_string()));
        }
        if let Some(Value::Object(meta)) = p.get_mut("metadata") {
            meta.insert("name".into(), Value::String(r.name().to_string()));
            if meta.contains_key("namespace") {
                meta.insert("namespace".into(), Value::String(r.namespace().to_string()));
            }
        }
        let (av, kind) = (r.api_version().to_string(), r.kind().to_string());
        // `None`: the patch deletes the resource.
        if let Some(obj) = kpatch::strategic_merge(&r.obj, &p, &av, &kind, ListOrder::PatchFirst).map_err(|e| ctx.err(n, format!("{}: {e}", r.id())))? {
            r.obj = obj;
            keep.push(r);
        }
    }
    *list = keep;
    if !hit && std::ptr::eq(target, &own) {
        return Err(ctx.err(n, format!("no resource matches {} {}", own.kind.as_deref().unwrap_or(""), own.name.as_deref().unwrap_or(""))));
    }
    Ok(())
}

/// The target a patch without one names: its own group, version, kind, name and namespace,
/// matched literally.
fn own_target(doc: &Value) -> Target {
    let s = |p: &str| doc.pointer(p).and_then(Value::as_str).map(escape);
    let (group, version) = split_api_version(doc.get("apiVersion").and_then(Value::as_str).unwrap_or(""));
    Target {
        group: Some(escape(group)),
        version: Some(escape(version)).filter(|v| !v.is_empty()),
        kind: s("/kind"),
        name: s("/metadata/name"),
        namespace: s("/metadata/namespace"),
        label_selector: None,
        annotation_selector: None,
    }
}

/// `s` as a pattern that matches only itself.
fn escape(s: &str) -> String {
    s.chars().flat_map(|c| if ".*+?|\\^$".contains(c) { vec!['\\', c] } else { vec![c] }).collect()
}
