//! Patch targets: which resources a `target` selects. kustomize matches group, version,
//! kind, name and namespace as anchored Go regular expressions and the selectors as
//! Kubernetes label selectors; this implements the regular-expression subset manifests use
//! (literals, `.`, `*`, `+`, `?`, `|` and `\` escapes; no groups or classes).

use serde_json::{Map, Value};

use crate::kustomization::Target;
use crate::resource::Res;
use crate::transforms::meta_map;

pub(crate) fn selects(t: &Target, r: &Res) -> Result<bool, String> {
    let (group, version) = r.group_version();
    let field = |pat: &Option<String>, values: &[&str]| pat.as_deref().is_none_or(|p| values.iter().any(|v| matches(p, v)));
    if !field(&t.group, &[group]) || !field(&t.version, &[version]) || !field(&t.kind, &[r.kind()]) {
        return Ok(false);
    }
    if !field(&t.name, &[r.original_name(), r.name()]) || !field(&t.namespace, &[r.original_namespace(), r.namespace()]) {
        return Ok(false);
    }
    for (sel, what) in [(&t.label_selector, "labels"), (&t.annotation_selector, "annotations")] {
        if let Some(sel) = sel {
            if !label_selector(sel, meta_map(r, what))? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Whether the anchored pattern `pat` matches all of `s`.
pub(crate) fn matches(pat: &str, s: &str) -> bool {
    split_alternatives(pat).iter().any(|alt| {
        let atoms = atoms(alt);
        match_atoms(&atoms, &s.chars().collect::<Vec<_>>())
    })
}

fn split_alternatives(pat: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = pat.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let last = out.last_mut().expect("non-empty");
                last.push('\\');
                last.extend(chars.next());
            }
            '|' => out.push(String::new()),
            c => out.last_mut().expect("non-empty").push(c),
        }
    }
    out.into_iter().map(|a| a.trim_start_matches('^').trim_end_matches('$').to_string()).collect()
}

#[derive(Clone, Copy)]
enum Atom {
    Char(char),
    Any,
}

/// Atoms with their repetition bounds: `(atom, min, max)`.
fn atoms(pat: &str) -> Vec<(Atom, usize, usize)> {
    let mut out: Vec<(Atom, usize, usize)> = Vec::new();
    let mut chars = pat.chars();
    while let Some(c) = chars.next() {
        let bounds = match c {
            '*' => Some((0, usize::MAX)),
            '+' => Some((1, usize::MAX)),
            '?' => Some((0, 1)),
            _ => None,
        };
        match (bounds, out.last_mut()) {
            (Some((min, max)), Some(last)) => (last.1, last.2) = (min, max),
            _ if c == '\\' => out.push((Atom::Char(chars.next().unwrap_or('\\')), 1, 1)),
            _ if c == '.' => out.push((Atom::Any, 1, 1)),
            _ => out.push((Atom::Char(c), 1, 1)),
        }
    }
    out
}

fn match_atoms(atoms: &[(Atom, usize, usize)], s: &[char]) -> bool {
    let Some(&(atom, min, max)) = atoms.first() else {
        return s.is_empty();
    };
    let hits = |c: &&char| match atom {
        Atom::Any => true,
        Atom::Char(a) => a == **c,
    };
    let run = s.iter().take(max).take_while(hits).count();
    run >= min && (min..=run).rev().any(|n| match_atoms(&atoms[1..], &s[n..]))
}

/// A Kubernetes label selector (`a=b`, `a!=b`, `a`, `!a`, `a in (x,y)`, `a notin (x)`),
/// ANDed by commas, against `labels` (kapp-api's parser, shared with the apiserver).
pub(crate) fn label_selector(sel: &str, labels: Option<&Map<String, Value>>) -> Result<bool, String> {
    let parsed = kapp_api::selector::Selector::parse(sel)?;
    Ok(parsed.matches(|k| labels.and_then(|l| l.get(k)).and_then(Value::as_str).map(String::from)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patterns() {
        let cases = [
            ("web", "web", true),
            ("web", "web2", false),
            ("web.*", "web-1", true),
            ("a|b", "b", true),
            ("^app$", "app", true),
            ("x.y", "xzy", true),
            ("x\\.y", "xzy", false),
            ("ab?c", "ac", true),
            ("ab?c", "abc", true),
            ("ab?c", "abbc", false),
            ("a+", "aaa", true),
            ("", "", true),
        ];
        for (p, s, want) in cases {
            assert_eq!(matches(p, s), want, "{p} ~ {s}");
        }
    }

    #[test]
    fn selectors() {
        let l = json!({"app": "web", "tier": "front"});
        let l = l.as_object();
        let cases = [
            ("app=web", true),
            ("app==web,tier=front", true),
            ("app!=web", false),
            ("tier in (back, front)", true),
            ("tier notin (front)", false),
            ("app", true),
            ("!app", false),
            ("!missing", true),
        ];
        for (s, want) in cases {
            assert_eq!(label_selector(s, l).unwrap(), want, "{s}");
        }
    }
}
