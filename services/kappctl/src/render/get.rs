//! `kappctl get` as text: the apiserver's `meta.k8s.io/v1` Table printed as kubectl prints
//! it (upper-case headers, `-o wide` adds the priority-1 columns, `-A` a NAMESPACE column),
//! and `-o name|json|yaml`.

use kapp_api::table::{human_age, parse_rfc3339};
use serde_json::{json, Value};

use super::style::{table, Cell, Style, Tone};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableOptions {
    pub wide: bool,
    /// Prefix a NAMESPACE column (for `-A`).
    pub namespace_column: bool,
    pub no_headers: bool,
}

/// A cell's text: strings as they are, numbers, `<none>` for nothing.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "<none>".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// How a status-like word reads.
pub fn tone_of(word: &str) -> Tone {
    match word {
        "Running" | "Ready" | "Active" | "Synced" | "Complete" | "Completed" | "Succeeded" | "Bound" | "True" => Tone::Good,
        "Pending" | "ContainerCreating" | "PodInitializing" | "Terminating" | "Applying" | "Suspended" | "Unknown" => Tone::Warn,
        w if w.contains("BackOff") || w.contains("Err") || w.contains("Fail") || w.starts_with("NotReady") || w == "Error" || w == "Unschedulable" || w == "OOMKilled" => Tone::Bad,
        _ => Tone::Plain,
    }
}

/// `ready/desired` short of desired reads as a warning.
fn ratio_tone(s: &str) -> Tone {
    match s.split_once('/').map(|(a, b)| (a.parse::<i64>(), b.parse::<i64>())) {
        Some((Ok(a), Ok(b))) if a < b => Tone::Warn,
        Some((Ok(_), Ok(_))) => Tone::Good,
        _ => Tone::Plain,
    }
}

/// Print a Table answer. Rows keep the server's order.
pub fn render_table(t: &Value, opts: TableOptions, style: Style) -> String {
    let defs = t["columnDefinitions"].as_array().cloned().unwrap_or_default();
    let shown: Vec<usize> = (0..defs.len()).filter(|i| opts.wide || defs[*i]["priority"].as_i64().unwrap_or(0) == 0).collect();
    let mut headers: Vec<String> = Vec::new();
    if opts.namespace_column {
        headers.push("NAMESPACE".into());
    }
    headers.extend(shown.iter().map(|i| defs[*i]["name"].as_str().unwrap_or("").to_uppercase()));
    let rows: Vec<Vec<Cell>> = t["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let mut cells = Vec::new();
            if opts.namespace_column {
                cells.push(Cell::from(r["object"]["metadata"]["namespace"].as_str().unwrap_or("")));
            }
            for i in &shown {
                let s = text(&r["cells"][*i]);
                let header = defs[*i]["name"].as_str().unwrap_or("");
                let tone = match header {
                    "Status" | "State" | "Phase" => tone_of(s.split(',').next().unwrap_or("")),
                    "Ready" | "Completions" => ratio_tone(&s),
                    _ => Tone::Plain,
                };
                cells.push(Cell::new(s, tone));
            }
            cells
        })
        .collect();
    // Without headers, they do not widen the columns either.
    let headers: Vec<&str> = headers.iter().map(|h| if opts.no_headers { "" } else { h.as_str() }).collect();
    let out = table(style, "", &headers, &rows);
    if opts.no_headers {
        out.split_once('\n').map(|(_, rest)| rest.to_string()).unwrap_or_default()
    } else {
        out
    }
}

/// A Table for an answer that is not one (an apiserver that ignored `as=Table`): NAME and
/// AGE of each object, as kubectl does for kinds it has no columns for.
pub fn fallback_table(answer: &Value, now: i64) -> Value {
    let objects: Vec<Value> = match answer["items"].as_array() {
        Some(items) => items.clone(),
        None => vec![answer.clone()],
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let age = o["metadata"]["creationTimestamp"].as_str().and_then(parse_rfc3339).map_or("<unknown>".to_string(), |t| human_age(now - t));
            json!({"cells": [o["metadata"]["name"], age], "object": {"metadata": o["metadata"]}})
        })
        .collect();
    json!({"kind": "Table", "columnDefinitions": [{"name": "Name", "priority": 0}, {"name": "Age", "priority": 0}], "rows": rows})
}

/// `-o name`: `kind.group/name` per line.
pub fn names(qualified_kind: &str, t: &Value) -> String {
    t["rows"].as_array().into_iter().flatten().map(|r| format!("{qualified_kind}/{}\n", r["object"]["metadata"]["name"].as_str().unwrap_or(""))).collect()
}

/// What `-o json|yaml` prints for a list answer: a `v1` `List` of the items (kubectl's shape).
pub fn as_list(answer: &Value) -> Value {
    match answer["items"].as_array() {
        Some(items) => json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items}),
        None => answer.clone(),
    }
}

/// Objects as pretty JSON.
pub fn to_json(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("json serialises");
    s.push('\n');
    s
}

/// Objects as YAML.
pub fn to_yaml(v: &Value) -> String {
    serde_yaml::to_string(v).expect("yaml serialises")
}
