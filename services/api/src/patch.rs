//! The three PATCH flavours kubectl sends: JSON merge patch (RFC 7386), JSON patch
//! (RFC 6902) and strategic merge patch. Strategic merge is approximated: lists of objects
//! that all carry a `name` are merged by name (containers, env, volumes, volumeMounts, named
//! ports), `$patch: delete` removes an element; other lists are replaced.

use serde_json::Value;

/// Which patch a request carries, from its content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        let ct = ct.split(';').next().unwrap_or("").trim();
        match ct {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            _ => None,
        }
    }
}

/// Apply `patch` to `target`.
pub fn apply(kind: PatchType, target: &Value, patch: &Value) -> Result<Value, String> {
    match kind {
        PatchType::Merge => Ok(merge(target, patch, false)),
        PatchType::Strategic => Ok(merge(target, patch, true)),
        PatchType::Json => json_patch(target, patch),
    }
}

fn named_list(v: &[Value]) -> bool {
    !v.is_empty() && v.iter().all(|e| e.get("name").is_some_and(Value::is_string))
}

fn merge(target: &Value, patch: &Value, strategic: bool) -> Value {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            let mut out = t.clone();
            for (k, pv) in p {
                if pv.is_null() {
                    out.remove(k);
                } else {
                    let merged = match out.get(k) {
                        Some(tv) => merge(tv, pv, strategic),
                        None => merge(&Value::Null, pv, strategic),
                    };
                    out.insert(k.clone(), merged);
                }
            }
            Value::Object(out)
        }
        (Value::Array(t), Value::Array(p)) if strategic && named_list(t) && p.iter().all(|e| e.get("name").is_some_and(Value::is_string)) => {
            let mut out = t.clone();
            for pe in p {
                let name = &pe["name"];
                let pos = out.iter().position(|e| &e["name"] == name);
                if pe.get("$patch").and_then(Value::as_str) == Some("delete") {
                    if let Some(i) = pos {
                        out.remove(i);
                    }
                    continue;
                }
                match pos {
                    Some(i) => out[i] = merge(&out[i], pe, true),
                    None => out.push(merge(&Value::Null, pe, true)),
                }
            }
            Value::Array(out)
        }
        (_, Value::Object(p)) => {
            // Merging into a non-object: start from an empty object, dropping nulls.
            merge(&Value::Object(Default::default()), &Value::Object(p.clone()), strategic)
        }
        (_, p) => p.clone(),
    }
}

/// Resolve an RFC 6901 pointer's parent and last token.
fn split_pointer(path: &str) -> Result<(Vec<String>, String), String> {
    if !path.starts_with('/') {
        return Err(format!("json patch path {path:?} must start with '/'"));
    }
    let mut toks: Vec<String> = path[1..].split('/').map(|t| t.replace("~1", "/").replace("~0", "~")).collect();
    let last = toks.pop().unwrap_or_default();
    Ok((toks, last))
}

fn parent_mut<'a>(doc: &'a mut Value, toks: &[String]) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m.get_mut(t).ok_or_else(|| format!("path segment {t:?} does not exist"))?,
            Value::Array(a) => {
                let i: usize = t.parse().map_err(|_| format!("{t:?} is not an array index"))?;
                a.get_mut(i).ok_or_else(|| format!("index {i} is out of range"))?
            }
            _ => return Err(format!("path segment {t:?} goes through a scalar")),
        };
    }
    Ok(cur)
}

fn json_patch(target: &Value, patch: &Value) -> Result<Value, String> {
    let ops = patch.as_array().ok_or("a json patch must be a list of operations")?;
    let mut doc = target.clone();
    for (n, op) in ops.iter().enumerate() {
        let what = op["op"].as_str().ok_or(format!("operation {n}: op is missing"))?;
        let path = op["path"].as_str().ok_or(format!("operation {n}: path is missing"))?;
        let (toks, last) = split_pointer(path)?;
        let ctx = |e: String| format!("operation {n} ({what} {path}): {e}");
        match what {
            "add" | "replace" => {
                let value = op.get("value").cloned().ok_or_else(|| ctx("value is missing".into()))?;
                let parent = parent_mut(&mut doc, &toks).map_err(ctx)?;
                match parent {
                    Value::Object(m) => {
                        if what == "replace" && !m.contains_key(&last) {
                            return Err(ctx("nothing to replace".into()));
                        }
                        m.insert(last, value);
                    }
                    Value::Array(a) if last == "-" && what == "add" => a.push(value),
                    Value::Array(a) => {
                        let i: usize = last.parse().map_err(|_| ctx(format!("{last:?} is not an array index")))?;
                        if what == "add" && i <= a.len() {
                            a.insert(i, value);
                        } else if what == "replace" && i < a.len() {
                            a[i] = value;
                        } else {
                            return Err(ctx(format!("index {i} is out of range")));
                        }
                    }
                    _ => return Err(ctx("parent is a scalar".into())),
                }
            }
            "remove" => {
                let parent = parent_mut(&mut doc, &toks).map_err(ctx)?;
                let removed = match parent {
                    Value::Object(m) => m.remove(&last).is_some(),
                    Value::Array(a) => match last.parse::<usize>() {
                        Ok(i) if i < a.len() => {
                            a.remove(i);
                            true
                        }
                        _ => false,
                    },
                    _ => false,
                };
                if !removed {
                    return Err(ctx("nothing to remove".into()));
                }
            }
            "test" => {
                let parent = parent_mut(&mut doc, &toks).map_err(ctx)?;
                let cur = match parent {
                    Value::Object(m) => m.get(&last).cloned(),
                    Value::Array(a) => last.parse::<usize>().ok().and_then(|i| a.get(i).cloned()),
                    _ => None,
                };
                if cur.as_ref() != op.get("value") {
                    return Err(ctx("test failed".into()));
                }
            }
            other => return Err(ctx(format!("unsupported op {other:?}"))),
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let t = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        let p = json!({"a": "z", "c": {"f": null}, "l": [3], "n": {"x": 1}});
        assert_eq!(apply(PatchType::Merge, &t, &p).unwrap(), json!({"a": "z", "c": {"d": "e"}, "l": [3], "n": {"x": 1}}));
    }

    #[test]
    fn strategic_merge_merges_named_lists() {
        let t = json!({"spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}});
        let p = json!({"spec": {"containers": [{"name": "b", "image": "b:2"}, {"name": "c", "image": "c:1"}, {"name": "a", "$patch": "delete"}]}});
        let out = apply(PatchType::Strategic, &t, &p).unwrap();
        assert_eq!(out, json!({"spec": {"containers": [{"name": "b", "image": "b:2"}, {"name": "c", "image": "c:1"}]}}));
        // A plain merge patch replaces the list.
        let out = apply(PatchType::Merge, &t, &json!({"spec": {"containers": [{"name": "x"}]}})).unwrap();
        assert_eq!(out["spec"]["containers"], json!([{"name": "x"}]));
    }

    #[test]
    fn json_patch_follows_rfc_6902() {
        let t = json!({"spec": {"replicas": 1, "l": ["a"]}, "metadata": {"labels": {"x/y": "1"}}});
        let p = json!([
            {"op": "test", "path": "/spec/replicas", "value": 1},
            {"op": "replace", "path": "/spec/replicas", "value": 4},
            {"op": "add", "path": "/spec/l/-", "value": "b"},
            {"op": "add", "path": "/spec/l/0", "value": "z"},
            {"op": "remove", "path": "/metadata/labels/x~1y"}
        ]);
        assert_eq!(apply(PatchType::Json, &t, &p).unwrap(), json!({"spec": {"replicas": 4, "l": ["z", "a", "b"]}, "metadata": {"labels": {}}}));
        assert!(apply(PatchType::Json, &t, &json!([{"op": "test", "path": "/spec/replicas", "value": 2}])).unwrap_err().contains("test failed"));
        assert!(apply(PatchType::Json, &t, &json!([{"op": "remove", "path": "/nope"}])).is_err());
        assert!(apply(PatchType::Json, &t, &json!({"op": "add"})).is_err());
        assert_eq!(PatchType::from_content_type("application/strategic-merge-patch+json; charset=utf-8"), Some(PatchType::Strategic));
    }
}
