//! Status and binding subresources over HTTP/2 with a writer identity: status writes change
//! only status, main writes never change status, a pod binds to a node once.

use kapp_apiserver::GITOPS;
use kapp_store::testing::TestCluster;

mod common;
use common::call;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_binding_subresources() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestCluster::start(1, dir.path()).await;
    let (api, c) = common::start(&store, GITOPS, Some(dir.path().join("audit.log")), None).await;
    let j = "application/json";
    let pods = "/api/v1/namespaces/default/pods";
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]},
        "status": {"phase": "Running"}});
    let (code, created) = call(&c, "POST", pods, Some(pod), j).await;
    assert_eq!(code, 201, "{created}");
    assert!(created.get("status").is_none(), "create through the main resource sets no status");

    // Status write: only status changes, even if the body changes spec.
    let mut st = created.clone();
    st["status"] = json!({"phase": "Running", "podIP": "10.1.0.2"});
    st["spec"]["containers"][0]["image"] = json!("sneaky");
    let (code, after) = call(&c, "PUT", &format!("{pods}/p/status"), Some(st), j).await;
    assert_eq!(code, 200, "{after}");
    assert_eq!(after["status"]["podIP"], "10.1.0.2");
    assert_eq!(after["spec"]["containers"][0]["image"], "i");

    // Main write: status is kept as stored.
    let mut upd = after.clone();
    upd["status"] = json!({"phase": "Failed"});
    upd["metadata"]["labels"] = json!({"a": "b"});
    let (code, after2) = call(&c, "PUT", &format!("{pods}/p"), Some(upd), j).await;
    assert_eq!(code, 200, "{after2}");
    assert_eq!(after2["status"]["phase"], "Running");
    assert_eq!(after2["metadata"]["labels"]["a"], "b");

    // A stale resourceVersion on the status subresource is a conflict too.
    let (code, _) = call(&c, "PUT", &format!("{pods}/p/status"), Some(after.clone()), j).await;
    assert_eq!(code, 409);

    // Status patch.
    let (code, p2) = call(&c, "PATCH", &format!("{pods}/p/status"), Some(json!({"status": {"phase": "Succeeded"}})), "application/merge-patch+json").await;
    assert_eq!(code, 200, "{p2}");
    assert_eq!(p2["status"]["phase"], "Succeeded");
    assert_eq!(p2["metadata"]["labels"]["a"], "b");

    // Binding: once.
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"kind": "Node", "name": "n1"}});
    let (code, _) = call(&c, "POST", &format!("{pods}/p/binding"), Some(binding.clone()), j).await;
    assert_eq!(code, 201);
    let (_, got) = call(&c, "GET", &format!("{pods}/p"), None, j).await;
    assert_eq!(got["spec"]["nodeName"], "n1");
    let (code, body) = call(&c, "POST", &format!("{pods}/p/binding"), Some(binding), j).await;
    assert_eq!(code, 409, "{body}");
    let (code, _) = call(&c, "POST", &format!("{pods}/p/binding"), Some(json!({"target": {}})), j).await;
    assert_eq!(code, 422);
    // Unknown subresources and kinds without status say so.
    let (code, _) = call(&c, "PUT", "/api/v1/namespaces/default/configmaps/x/status", Some(json!({})), j).await;
    assert_eq!(code, 405);

    // One audit line per mutating request, refusals included; reads are not audited.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    let lines: Vec<Value> = audit.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let summary: Vec<(String, Option<String>, u64)> = lines
        .iter()
        .map(|l| (l["verb"].as_str().unwrap().to_string(), l["subresource"].as_str().map(String::from), l["code"].as_u64().unwrap()))
        .collect();
    let s = |v: &str, sub: Option<&str>, c: u64| (v.to_string(), sub.map(String::from), c);
    assert_eq!(summary, vec![
        s("post", None, 201), s("put", Some("status"), 200), s("put", None, 200), s("put", Some("status"), 409),
        s("patch", Some("status"), 200), s("post", Some("binding"), 201), s("post", Some("binding"), 409),
        s("post", Some("binding"), 422), s("put", Some("status"), 405),
    ]);
    assert!(lines.iter().all(|l| l["user"] == GITOPS && l["groups"] == json!([GITOPS]) && l["resource"].is_string()));
    assert_eq!(lines[0]["name"], Value::Null, "a create names no object in its URL");
    assert_eq!(lines[1]["name"], "p");

    api.shutdown().await;
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_watches_get_bookmarks_and_end_at_their_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestCluster::start(1, dir.path()).await;
    let (api, c) = common::start(&store, GITOPS, None, None).await;
    let cms = "/api/v1/namespaces/default/configmaps";
    let (_, created) = call(&c, "POST", cms, Some(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}})), "application/json").await;
    let rv: i64 = created["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
    let started = std::time::Instant::now();
    let req = http::Request::get(format!("{cms}?watch=true&allowWatchBookmarks=true&timeoutSeconds=2&resourceVersion={rv}")).body(kapp_tls::empty()).unwrap();
    let resp = c.send(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    assert!(started.elapsed() >= std::time::Duration::from_secs(2), "the watch ended before its timeout");
    let events: Vec<Value> = String::from_utf8_lossy(&body).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!events.is_empty(), "no bookmark in 2 s with a 300 ms interval");
    for e in &events {
        assert_eq!(e["type"], "BOOKMARK", "{e}");
        assert_eq!(e["object"]["kind"], "ConfigMap");
        assert!(e["object"]["metadata"]["resourceVersion"].as_str().unwrap().parse::<i64>().unwrap() >= rv);
    }
    // Without allowWatchBookmarks, a quiet watch says nothing.
    let req = http::Request::get(format!("{cms}?watch=true&timeoutSeconds=1&resourceVersion={rv}")).body(kapp_tls::empty()).unwrap();
    let body = http_body_util::BodyExt::collect(c.send(req).await.unwrap().into_body()).await.unwrap().to_bytes();
    assert!(body.is_empty(), "{}", String::from_utf8_lossy(&body));
    api.shutdown().await;
    store.shutdown().await;
}
