//! Snapshot tests: `kappctl status` and `kappctl get` output for fixture cluster states
//! (`tests/data/status/*.json`, each a `Raw` as the gather layer reads it) against the
//! expected text in `tests/snapshots/`. To accept new output after a deliberate change:
//!
//! ```sh
//! KAPPCTL_BLESS=1 cargo test -p kappctl --test snapshots
//! ```
//! and review the diff of `tests/snapshots/` before committing.

use std::path::PathBuf;

use kappctl::render::get::{render_table, TableOptions};
use kappctl::render::style::Style;
use kappctl::view::{build, ClusterView, Raw, Verdict};
use serde_json::Value;

fn dir(sub: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join(sub)
}

fn raw(name: &str) -> Raw {
    let path = dir("data/status").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Compare `actual` with `tests/snapshots/<name>`, or write it there under KAPPCTL_BLESS=1.
fn check(name: &str, actual: &str) {
    let path = dir("snapshots").join(name);
    if std::env::var("KAPPCTL_BLESS").is_ok_and(|v| !v.is_empty() && v != "0") {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("{} is missing: run with KAPPCTL_BLESS=1 to write it", path.display()));
    if expected != actual {
        let first = expected.lines().zip(actual.lines()).position(|(a, b)| a != b).unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{name} differs from its snapshot at line {}:\n  expected: {:?}\n  actual:   {:?}\n--- actual output ---\n{actual}--- (KAPPCTL_BLESS=1 accepts it)",
            first + 1,
            expected.lines().nth(first).unwrap_or("<end>"),
            actual.lines().nth(first).unwrap_or("<end>")
        );
    }
}

fn status(name: &str) -> ClusterView {
    let view = build(&raw(name));
    check(&format!("status-{name}.txt"), &kappctl::render::status::render(&view, Style::PLAIN));
    view
}

#[test]
fn status_of_a_healthy_cluster() {
    let v = status("healthy");
    assert_eq!(v.health.verdict, Verdict::Healthy, "{:?}", v.health.reasons);
    assert_eq!(v.health.verdict.exit_code(), 0);
    // The old warning is outside the recent window.
    assert_eq!(v.warnings.total, 0);
}

#[test]
fn status_with_a_head_down() {
    let v = status("head-down");
    assert_eq!(v.health.verdict.exit_code(), 1);
    assert!(v.health.reasons.iter().any(|r| r.starts_with("head 3 (10.0.0.3:2380) down:")), "{:?}", v.health.reasons);
    assert!(v.health.reasons.iter().any(|r| r.starts_with("node head-3 is Unknown")), "{:?}", v.health.reasons);
}

#[test]
fn status_with_a_failed_commit() {
    let v = status("failed-commit");
    assert_eq!(v.health.verdict.exit_code(), 1);
    let g = &v.gitops.items[0];
    assert_eq!((g.state.as_str(), g.applied.as_ref().unwrap().sha.get(..8)), ("Failed", Some("1a2b3c4d")));
    assert_eq!(v.health.reasons, ["gitops cluster is Failed: web.yaml (document 1) Service/shop/web spec.ports[0].port: Invalid value: \"eighty\": must be an integer between 1 and 65535"]);
}

#[test]
fn status_with_crash_looping_pods() {
    let v = status("crashloop");
    assert_eq!(v.health.verdict.exit_code(), 1);
    let reasons: Vec<&str> = v.pods.items.iter().map(|p| p.reason.as_str()).collect();
    assert_eq!(reasons, ["CrashLoopBackOff", "ImagePullBackOff", "Unschedulable"]);
    assert_eq!(v.warnings.total, 3);
}

/// `-o json` is a stable schema: the healthy view's JSON is a snapshot too, and it reads back.
#[test]
fn status_json_schema() {
    let view = build(&raw("healthy"));
    let json = kappctl::render::get::to_json(&serde_json::to_value(&view).unwrap());
    check("status-healthy.json", &json);
    let back: ClusterView = serde_json::from_str(&json).unwrap();
    assert_eq!(back, view);
}

/// A fixture's objects of `kind` as the apiserver's Table printer makes them.
fn table(fixture: &str, kind: &str) -> Value {
    let r = raw(fixture);
    let objects = match kind {
        "Pod" => r.pods,
        "Node" => r.nodes,
        "Deployment" => r.deployments,
        "GitSync" => r.gitsyncs,
        other => panic!("no {other} in fixtures"),
    }
    .unwrap();
    let now = kapp_api::table::parse_rfc3339(&r.observed_at).unwrap();
    kapp_api::table::table(kind, &objects, "1", None, now)
}

#[test]
fn get_pods_across_namespaces() {
    let t = table("crashloop", "Pod");
    check("get-pods-A.txt", &render_table(&t, TableOptions { namespace_column: true, ..Default::default() }, Style::PLAIN));
    check("get-pods-wide.txt", &render_table(&t, TableOptions { wide: true, ..Default::default() }, Style::PLAIN));
}

#[test]
fn get_nodes_deployments_and_gitsyncs() {
    check("get-nodes.txt", &render_table(&table("head-down", "Node"), TableOptions::default(), Style::PLAIN));
    check("get-deployments.txt", &render_table(&table("crashloop", "Deployment"), TableOptions::default(), Style::PLAIN));
    check("get-gitsyncs-wide.txt", &render_table(&table("failed-commit", "GitSync"), TableOptions { wide: true, ..Default::default() }, Style::PLAIN));
}

#[test]
fn describe_a_crash_looping_pod_and_a_failed_gitsync() {
    let r = raw("crashloop");
    let now = kapp_api::table::parse_rfc3339(&r.observed_at).unwrap();
    let pod = r.pods.as_ref().unwrap().iter().find(|p| p["metadata"]["name"] == "web-7d9f-b2").unwrap().clone();
    let events: Vec<Value> = r.events.unwrap().into_iter().filter(|e| e["involvedObject"]["name"] == "web-7d9f-b2").collect();
    check("describe-pod.txt", &kappctl::render::describe::describe(&pod, &events, now, Style::PLAIN));
    let r = raw("failed-commit");
    let gs = r.gitsyncs.unwrap()[0].clone();
    check("describe-gitsync.txt", &kappctl::render::describe::describe(&gs, &[], now, Style::PLAIN));
}

/// On a terminal the same screen is coloured, and its columns still line up.
#[test]
fn colour_keeps_alignment() {
    let view = build(&raw("crashloop"));
    let coloured = kappctl::render::status::render(&view, Style { color: true });
    assert!(coloured.contains("\x1b[31m"));
    let stripped: String = {
        let mut out = String::new();
        let mut chars = coloured.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                for d in chars.by_ref() {
                    if d == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    assert_eq!(stripped, kappctl::render::status::render(&view, Style::PLAIN));
}
