//! Validation table tests over plain manifests.

use kapp_api::{by_kind, by_plural, keys, validate, ErrorType, RESOURCES};
use serde_json::{json, Value};

fn deployment() -> Value {
    serde_json::from_str(include_str!("data/deployment.json")).unwrap()
}

fn errors(obj: &Value) -> Vec<(String, ErrorType)> {
    let api_version = obj["apiVersion"].as_str().unwrap_or("v1");
    let kind = obj["kind"].as_str().unwrap_or("Pod");
    let r = by_kind(api_version, kind).unwrap_or_else(|| by_kind("v1", "Pod").unwrap());
    match validate(r, obj) {
        Ok(()) => vec![],
        Err(es) => es.into_iter().map(|e| (e.field, e.kind)).collect(),
    }
}

#[test]
fn a_valid_manifest_passes() {
    assert_eq!(errors(&deployment()), vec![]);
}

#[test]
fn invalid_manifests_name_the_field() {
    let cases: Vec<(&str, Box<dyn Fn(&mut Value)>, &str, ErrorType)> = vec![
        ("no name", Box::new(|o| { o["metadata"].as_object_mut().unwrap().remove("name"); }), "metadata.name", ErrorType::Required),
        ("upper-case name", Box::new(|o| o["metadata"]["name"] = json!("Web")), "metadata.name", ErrorType::Invalid),
        ("name too long", Box::new(|o| o["metadata"]["name"] = json!("a".repeat(254))), "metadata.name", ErrorType::Invalid),
        ("bad namespace", Box::new(|o| o["metadata"]["namespace"] = json!("Shop_1")), "metadata.namespace", ErrorType::Invalid),
        ("bad label key", Box::new(|o| o["metadata"]["labels"]["-bad"] = json!("x")), "metadata.labels", ErrorType::Invalid),
        ("bad label value", Box::new(|o| o["metadata"]["labels"]["app"] = json!("has space")), "metadata.labels[app]", ErrorType::Invalid),
        ("label value too long", Box::new(|o| o["metadata"]["labels"]["app"] = json!("a".repeat(64))), "metadata.labels[app]", ErrorType::Invalid),
        ("huge annotations", Box::new(|o| o["metadata"]["annotations"] = json!({"big": "x".repeat(300 * 1024)})), "metadata.annotations", ErrorType::TooLong),
        ("wrong apiVersion", Box::new(|o| o["apiVersion"] = json!("apps/v1beta9")), "apiVersion", ErrorType::Invalid),
        ("string replicas", Box::new(|o| o["spec"]["replicas"] = json!("three")), "spec.replicas", ErrorType::Invalid),
        ("port as string", Box::new(|o| o["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = json!("http")), "spec.template.spec.containers[0].ports[0].containerPort", ErrorType::Invalid),
        ("containers not a list", Box::new(|o| o["spec"]["template"]["spec"]["containers"] = json!({"name": "x"})), "spec.template.spec.containers", ErrorType::Invalid),
    ];
    for (what, mutate, field, kind) in cases {
        let mut obj = deployment();
        mutate(&mut obj);
        let got = errors(&obj);
        assert!(got.contains(&(field.to_string(), kind.clone())), "{what}: expected {field} {kind:?}, got {got:?}");
    }
}

#[test]
fn namespaces_and_services_use_label_names_and_scope_is_enforced() {
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a.b"}});
    assert_eq!(errors(&ns), vec![("metadata.name".to_string(), ErrorType::Invalid)], "a namespace name is a label, not a subdomain");
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a.b", "namespace": "x"}, "data": {"k": "v"}});
    assert_eq!(errors(&cm), vec![], "a configmap name may be a subdomain");
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "namespace": "x"}});
    assert_eq!(errors(&node), vec![("metadata.namespace".to_string(), ErrorType::Forbidden)]);
    let bad_data = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": 5}});
    assert_eq!(errors(&bad_data), vec![("data.k".to_string(), ErrorType::Invalid)]);
}

#[test]
fn resources_are_found_by_kind_and_plural_and_keyed_by_scope() {
    let d = by_kind("apps/v1", "Deployment").unwrap();
    assert_eq!(by_plural("apps", "v1", "deployments"), Some(d));
    assert_eq!(d.group_version_path(), "/apis/apps/v1");
    assert!(by_kind("apps/v1", "Pod").is_none());
    assert!(by_kind("v1", "Deployment").is_none());
    let pod = by_kind("v1", "Pod").unwrap();
    assert_eq!(keys::object_key(pod, "shop", "web-1"), "/registry/core/pods/shop/web-1");
    assert_eq!(keys::list_prefix(pod, Some("shop")), "/registry/core/pods/shop/");
    assert_eq!(keys::list_prefix(pod, None), "/registry/core/pods/");
    let node = by_kind("v1", "Node").unwrap();
    assert_eq!(keys::object_key(node, "ignored", "n1"), "/registry/core/nodes/n1");
    // No two resources share a storage prefix or a short name.
    let mut prefixes: Vec<String> = RESOURCES.iter().map(|r| keys::list_prefix(r, None)).collect();
    prefixes.sort();
    prefixes.dedup();
    assert_eq!(prefixes.len(), RESOURCES.len());
    let mut shorts: Vec<&str> = RESOURCES.iter().flat_map(|r| r.short_names.iter().copied()).collect();
    let n = shorts.len();
    shorts.sort();
    shorts.dedup();
    assert_eq!(shorts.len(), n);
    // One key prefix must not contain another resource's objects (namespaced lists stop at '/').
    for r in RESOURCES {
        let p = keys::list_prefix(r, None);
        for other in RESOURCES.iter().filter(|o| o.plural != r.plural) {
            assert!(!keys::object_key(other, "ns", "x").starts_with(&p), "{} prefix covers {}", r.plural, other.plural);
        }
    }
}

#[test]
fn name_rules() {
    use kapp_api::validation::*;
    for ok in ["a", "a-b", "0a", "a".repeat(63).as_str()] {
        assert!(is_dns1123_label(ok), "{ok}");
    }
    for bad in ["", "-a", "a-", "A", "a.b", "a_b", "a".repeat(64).as_str()] {
        assert!(!is_dns1123_label(bad), "{bad}");
    }
    assert!(is_dns1123_subdomain("a.b-c.d"));
    assert!(!is_dns1123_subdomain("a..b"));
    assert!(is_qualified_name("example.com/my_key.1") && is_qualified_name("Key"));
    assert!(!is_qualified_name("example.com/") && !is_qualified_name("/x") && !is_qualified_name("a/b/c"));
    assert!(is_label_value("") && is_label_value("v1.2_x") && !is_label_value("-x"));
}
