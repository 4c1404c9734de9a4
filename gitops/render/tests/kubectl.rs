//! Every kustomize fixture rendered by us and by the real `kubectl kustomize` (1.32,
//! kustomize v5.5.0) gives the same objects. The comparison is as a multiset (both sides
//! parsed to `serde_json::Value`); ordering is checked too and matches for every fixture,
//! since we sort in kustomize's legacy order. Skipped, with a notice, when kubectl is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

const CASES: &[&str] = &["nested", "generators", "images", "smp", "json6902", "labels", "targets", "generator-merge"];

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(case)
}

fn kubectl_kustomize(dir: &Path) -> Option<Vec<Value>> {
    let out = match Command::new("kubectl").arg("kustomize").arg(dir).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("running kubectl: {e}"),
    };
    assert!(out.status.success(), "kubectl kustomize {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let docs = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_json::to_value(serde_yaml::Value::deserialize(d).expect("kubectl prints YAML")).expect("json"))
        .filter(|v| !v.is_null())
        .collect();
    Some(docs)
}

/// Sorted canonical texts: equal iff the two lists are equal as multisets.
fn multiset(docs: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = docs.iter().map(|d| serde_json::to_string_pretty(d).expect("json")).collect();
    v.sort();
    v
}

#[test]
fn fixtures_match_kubectl_kustomize() {
    for case in CASES {
        let dir = fixture(case);
        let Some(want) = kubectl_kustomize(&dir) else {
            println!("kubectl not found: skipping the comparison with kubectl kustomize");
            return;
        };
        let ours: Vec<Value> = kapp_render::render(&dir).unwrap_or_else(|e| panic!("{case}: {e}")).into_iter().map(|d| d.object).collect();
        assert_eq!(multiset(&ours), multiset(&want), "{case}: objects differ from kubectl kustomize");
        assert_eq!(ours, want, "{case}: same objects, different order");
        println!("{case}: {} objects match kubectl kustomize", ours.len());
    }
}
