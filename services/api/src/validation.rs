//! Checks an object must pass before it is stored, with Kubernetes' field paths and rules
//! (DNS-1123 names, qualified label keys, label values, annotation size), plus the kind's
//! schema: the object must deserialise into its Kubernetes type.

use std::fmt;

use serde_json::Value;

use crate::resource::Resource;

/// What is wrong with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorType {
    Required,
    Invalid,
    TooLong,
    Forbidden,
}

/// One invalid field, as Kubernetes reports it in a 422 `Status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path with indexes and map keys: `spec.containers[0].image`, `metadata.labels[app]`.
    pub field: String,
    pub kind: ErrorType,
    pub detail: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ErrorType::Required => "Required value",
            ErrorType::Invalid => "Invalid value",
            ErrorType::TooLong => "Too long",
            ErrorType::Forbidden => "Forbidden",
        };
        write!(f, "{}: {what}: {}", self.field, self.detail)
    }
}

fn err(field: impl Into<String>, kind: ErrorType, detail: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), kind, detail: detail.into() }
}

/// Most bytes all annotations of one object may hold (Kubernetes: 256 KiB).
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// A DNS-1123 label: at most 63 of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// A DNS-1123 subdomain: at most 253 characters of dot-separated labels.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
        })
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters (label values and the
/// name part of qualified names; label values may also be empty).
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// A label or annotation key: an optional DNS subdomain prefix and `/`, then a name part.
pub fn is_qualified_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns1123_subdomain(prefix) && is_qualified_name_part(name),
        None => is_qualified_name_part(s),
    }
}

/// A label value: empty, or a qualified-name part.
pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_qualified_name_part(s)
}

fn check_string_map(
    meta: &serde_json::Map<String, Value>,
    field: &str,
    errors: &mut Vec<FieldError>,
    value_ok: impl Fn(&str) -> bool,
) -> usize {
    let mut bytes = 0;
    let Some(v) = meta.get(field) else { return 0 };
    let Some(map) = v.as_object() else {
        errors.push(err(format!("metadata.{field}"), ErrorType::Invalid, "must be a map of strings"));
        return 0;
    };
    for (k, v) in map {
        bytes += k.len();
        if !is_qualified_name(k) {
            errors.push(err(
                format!("metadata.{field}"),
                ErrorType::Invalid,
                format!("{k:?}: a qualified name must be at most 63 alphanumerics, '-', '_' or '.', optionally prefixed by a DNS subdomain and '/'"),
            ));
        }
        match v.as_str() {
            Some(s) => {
                bytes += s.len();
                if !value_ok(s) {
                    errors.push(err(
                        format!("metadata.{field}[{k}]"),
                        ErrorType::Invalid,
                        format!("{s:?}: a label value must be empty or at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric"),
                    ));
                }
            }
            None => errors.push(err(format!("metadata.{field}[{k}]"), ErrorType::Invalid, "must be a string")),
        }
    }
    bytes
}

/// Check `obj` as a manifest of resource `r`: type fields, metadata, and schema.
pub fn validate(r: &Resource, obj: &Value) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    let Some(top) = obj.as_object() else {
        return Err(vec![err("", ErrorType::Invalid, "an object must be a JSON/YAML map")]);
    };
    match top.get("apiVersion").and_then(Value::as_str) {
        None => errors.push(err("apiVersion", ErrorType::Required, "apiVersion must be set")),
        Some(v) if v != r.api_version() => {
            errors.push(err("apiVersion", ErrorType::Invalid, format!("{v:?} does not serve {}; expected {:?}", r.plural, r.api_version())))
        }
        Some(_) => {}
    }
    match top.get("kind").and_then(Value::as_str) {
        None => errors.push(err("kind", ErrorType::Required, "kind must be set")),
        Some(k) if k != r.kind => errors.push(err("kind", ErrorType::Invalid, format!("{k:?} is not {:?}", r.kind))),
        Some(_) => {}
    }
    let empty = serde_json::Map::new();
    let meta = match top.get("metadata") {
        None => {
            errors.push(err("metadata", ErrorType::Required, "metadata must be set"));
            &empty
        }
        Some(m) => m.as_object().unwrap_or_else(|| {
            errors.push(err("metadata", ErrorType::Invalid, "must be a map"));
            &empty
        }),
    };
    match meta.get("name").and_then(Value::as_str) {
        None | Some("") => errors.push(err("metadata.name", ErrorType::Required, "name or generateName is required")),
        Some(n) if r.label_names && !is_dns1123_label(n) => errors.push(err(
            "metadata.name",
            ErrorType::Invalid,
            format!("{n:?}: a DNS-1123 label must consist of lower case alphanumerics or '-', start and end with an alphanumeric, and be at most 63 characters"),
        )),
        Some(n) if !r.label_names && !is_dns1123_subdomain(n) => errors.push(err(
            "metadata.name",
            ErrorType::Invalid,
            format!("{n:?}: a DNS-1123 subdomain must consist of lower case alphanumerics, '-' or '.', start and end with an alphanumeric, and be at most 253 characters"),
        )),
        Some(_) => {}
    }
    match (r.namespaced, meta.get("namespace").and_then(Value::as_str)) {
        (true, Some(ns)) if !is_dns1123_label(ns) => {
            errors.push(err("metadata.namespace", ErrorType::Invalid, format!("{ns:?} is not a valid namespace name")))
        }
        (false, Some(ns)) if !ns.is_empty() => errors.push(err(
            "metadata.namespace",
            ErrorType::Forbidden,
            format!("{} is cluster-scoped: namespace must be empty", r.kind),
        )),
        _ => {}
    }
    check_string_map(meta, "labels", &mut errors, is_label_value);
    let annotation_bytes = check_string_map(meta, "annotations", &mut errors, |_| true);
    if annotation_bytes > MAX_ANNOTATIONS_BYTES {
        errors.push(err(
            "metadata.annotations",
            ErrorType::TooLong,
            format!("{annotation_bytes} bytes, over the limit of {MAX_ANNOTATIONS_BYTES}"),
        ));
    }
    if let Err(e) = crate::schema::check(r, obj) {
        errors.push(e);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}
