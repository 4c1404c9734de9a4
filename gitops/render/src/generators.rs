//! `configMapGenerator` and `secretGenerator`, and the content-hash name suffix kustomize
//! gives generated objects (`api/hasher/hasher.go`).

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::error::RenderError;
use crate::kustomization::{Generator, GeneratorOptions};
use crate::repo::Repo;
use crate::resource::Res;
use crate::transforms::set_meta_entries;

/// What a generator does with an object of the same id that is already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Behavior {
    Create,
    Merge,
    Replace,
}

/// One generated object, with its behaviour.
pub(crate) struct Generated {
    pub res: Res,
    pub behavior: Behavior,
}

/// Run one generator of `kind` ("ConfigMap" or "Secret") declared in `kfile` (in `dir`).
pub(crate) fn generate(
    repo: &Repo,
    kfile: &Path,
    dir: &Path,
    index: usize,
    kind: &str,
    g: &Generator,
    global: Option<&GeneratorOptions>,
) -> Result<Generated, RenderError> {
    let shown = repo.display(kfile);
    let err = |reason: String| RenderError::kust(&shown, format!("{} {:?}: {reason}", kind_field(kind), g.name));
    let behavior = match g.behavior.as_deref().unwrap_or("create") {
        "create" | "" => Behavior::Create,
        "merge" => Behavior::Merge,
        "replace" => Behavior::Replace,
        other => return Err(err(format!("unknown behavior {other:?}"))),
    };
    if g.name.is_empty() {
        return Err(err("a generator needs a name".into()));
    }
    // Every source is (key, bytes); literals are text.
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    for env in g.envs.iter().chain(g.env.as_ref()) {
        let path = repo.resolve(kfile, dir, env)?;
        let text = repo.read_text(&path)?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // A decrypted file's lines are secret: only their number is shown.
            let shown = if crate::repo::is_age(&path) { format!("line {}", n + 1) } else { format!("line {line:?}") };
            let (k, v) = line.split_once('=').ok_or_else(|| err(format!("{env}: {shown} is not KEY=VALUE")))?;
            entries.push((k.to_string(), v.as_bytes().to_vec()));
        }
    }
    for lit in &g.literals {
        let (k, v) = lit.split_once('=').ok_or_else(|| err(format!("literal {lit:?} is not KEY=VALUE")))?;
        entries.push((k.to_string(), unquote(v).as_bytes().to_vec()));
    }
    for file in &g.files {
        let (key, path) = match file.split_once('=') {
            Some((k, p)) => (k.to_string(), p),
            None => {
                let name = Path::new(file).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                // `tls.key.age` gives the key `tls.key`.
                let key = name.strip_suffix(crate::repo::AGE_SUFFIX).filter(|k| !k.is_empty()).map_or(name.clone(), str::to_string);
                (key, file.as_str())
            }
        };
        entries.push((key, repo.read(&repo.resolve(kfile, dir, path)?)?));
    }
    let mut data = Map::new();
    let mut binary = Map::new();
    let b64 = |b: &[u8]| Value::String(base64::engine::general_purpose::STANDARD.encode(b));
    for (k, v) in entries {
        if data.contains_key(&k) || binary.contains_key(&k) {
            return Err(err(format!("key {k:?} is given twice")));
        }
        match (kind, String::from_utf8(v)) {
            ("ConfigMap", Ok(text)) => data.insert(k, Value::String(text)),
            ("ConfigMap", Err(e)) => binary.insert(k, b64(e.as_bytes())),
            (_, Ok(text)) => data.insert(k, b64(text.as_bytes())),
            (_, Err(e)) => data.insert(k, b64(e.as_bytes())),
        };
    }
    let mut obj = json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": g.name}});
    if let Some(ns) = g.namespace.as_deref().filter(|n| !n.is_empty()) {
        obj["metadata"]["namespace"] = Value::String(ns.to_string());
    }
    if !data.is_empty() {
        obj["data"] = Value::Object(data);
    }
    if !binary.is_empty() {
        obj["binaryData"] = Value::Object(binary);
    }
    if kind == "Secret" {
        obj["type"] = Value::String(g.type_.clone().unwrap_or_else(|| "Opaque".into()));
    }
    let opts = merged_options(global, g.options.as_ref());
    set_meta_entries(&mut obj, "labels", &opts.labels);
    set_meta_entries(&mut obj, "annotations", &opts.annotations);
    if opts.immutable {
        obj["immutable"] = Value::Bool(true);
    }
    let mut res = Res::new(obj, shown, index);
    res.hash = !opts.disable_name_suffix_hash;
    Ok(Generated { res, behavior })
}

fn kind_field(kind: &str) -> &'static str {
    if kind == "ConfigMap" {
        "configMapGenerator"
    } else {
        "secretGenerator"
    }
}

/// A literal's value without one pair of surrounding quotes.
fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
}

/// The generator's own options over the kustomization's `generatorOptions`.
fn merged_options(global: Option<&GeneratorOptions>, local: Option<&GeneratorOptions>) -> GeneratorOptions {
    let mut out = global.cloned().unwrap_or_default();
    if let Some(l) = local {
        out.labels.extend(l.labels.clone());
        out.annotations.extend(l.annotations.clone());
        out.disable_name_suffix_hash |= l.disable_name_suffix_hash;
        out.immutable |= l.immutable;
    }
    out
}

/// kustomize's name hash of a ConfigMap or Secret: SHA-256 over Go's JSON encoding of
/// the fields that matter (not the name: see below), the first ten hex digits with 0, 1, 3, a, e spelled g, h, k, m, t.
pub(crate) fn content_hash(obj: &Value) -> String {
    let field = |k: &str| obj.get(k).filter(|v| !v.is_null()).cloned().unwrap_or(Value::String(String::new()));
    // kustomize looks the name up as one field called "metadata/name", which never exists,
    // so the name it hashes is always empty.
    let mut m = BTreeMap::new();
    m.insert("name", Value::String(String::new()));
    m.insert("data", field("data"));
    match obj.get("kind").and_then(Value::as_str) {
        Some("Secret") => {
            m.insert("kind", Value::String("Secret".into()));
            m.insert("type", field("type"));
            if let Some(sd @ Value::Object(_)) = obj.get("stringData") {
                m.insert("stringData", sd.clone());
            }
        }
        Some("ConfigMap") => {
            m.insert("kind", Value::String("ConfigMap".into()));
            if let Some(bd @ Value::Object(_)) = obj.get("binaryData") {
                m.insert("binaryData", bd.clone());
            }
        }
        _ => return encode(&hex_sha256(&go_json(obj))),
    }
    let map: Map<String, Value> = m.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    encode(&hex_sha256(&go_json(&Value::Object(map))))
}

fn hex_sha256(s: &str) -> String {
    hmac_sha256::Hash::hash(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn encode(hex: &str) -> String {
    hex.chars()
        .take(10)
        .map(|c| match c {
            '0' => 'g',
            '1' => 'h',
            '3' => 'k',
            'a' => 'm',
            'e' => 't',
            c => c,
        })
        .collect()
}

/// JSON as Go's `json.Marshal` writes it: map keys sorted, `<`, `>`, `&`, U+2028 and U+2029
/// escaped as `\u00xx`.
fn go_json(v: &Value) -> String {
    let mut out = String::new();
    write_go_json(v, &mut out);
    out
}

fn write_go_json(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_go_string(k, out);
                out.push(':');
                write_go_json(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_go_json(x, out);
            }
            out.push(']');
        }
        Value::String(s) => write_go_string(s, out),
        other => out.push_str(&other.to_string()),
    }
}

fn write_go_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names `kubectl kustomize` (v5.5.0) gave these objects.
    #[test]
    fn hashes_match_kustomize() {
        let empty = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "p-empty"}});
        assert_eq!(content_hash(&empty), "6ct58987ht");
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "p-s"}, "data": {"k": "dg=="}, "type": "kubernetes.io/tls"});
        assert_eq!(content_hash(&secret), "8d9db26b4d");
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "p-cm"},
            "data": {"A": "1", "B ": " two ", "C": "\"q\"", "f.txt": "hello <&>\n", "x": "quoted", "y": "single", "z": "a=b"},
            "binaryData": {"other": "AP8B"}});
        assert_eq!(content_hash(&cm), "2bbht9c588");
    }
}
