//! The watch cache against a real store: many watches of one resource cost the store one
//! watch stream; each watcher still gets exactly its events, once and in order, whether it
//! keeps up, falls behind the cache's bounded buffer, or starts before the buffer begins;
//! viewers never see Secret data through it.

use std::time::Duration;

use http_body_util::BodyExt;
use kapp_apiserver::{ApiServer, ApiServerConfig, WatchCacheConfig, GITOPS, VIEWERS};
use kapp_store::testing::TestCluster;
use kapp_tls::H2Client;
use serde_json::{json, Value};

mod common;
use common::call;

async fn start(store: &TestCluster, cache: WatchCacheConfig) -> (ApiServer, H2Client) {
    let serving = store.pki.ca.issue("apiserver", &[], &["127.0.0.1"]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = ApiServerConfig {
        tls: serving,
        store: store.client(),
        max_connections: 256,
        secret_key: Some(vec![3; 32]),
        audit_log: None,
        bookmark_interval: Duration::from_secs(60),
        watch_cache: cache,
    };
    let api = ApiServer::start(cfg, listener).await.unwrap();
    let client = common::client_as(store, &api, "gitops", &[GITOPS]);
    (api, client)
}

/// The events of a watch that ends after `secs` seconds: (type, name, resourceVersion).
async fn collect(c: H2Client, path: String, secs: u64) -> Vec<(String, String, i64)> {
    let req = http::Request::get(format!("{path}&timeoutSeconds={secs}")).body(kapp_tls::empty()).unwrap();
    let resp = c.send(req).await.unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    parse(&body)
}

/// The first `n` events of a watch response, each within 20 s of the one before.
async fn first_lines(body: &mut hyper::body::Incoming, n: usize) -> Vec<(String, String, i64)> {
    let mut buf = Vec::new();
    let mut lines = 0;
    while lines < n {
        let frame = tokio::time::timeout(Duration::from_secs(20), body.frame()).await.expect("events stopped").unwrap().unwrap();
        if let Ok(d) = frame.into_data() {
            lines += d.iter().filter(|b| **b == b'\n').count();
            buf.extend_from_slice(&d);
        }
    }
    parse(&buf)
}

fn parse(body: &[u8]) -> Vec<(String, String, i64)> {
    String::from_utf8_lossy(body)
        .lines()
        .map(|l| {
            let e: Value = serde_json::from_str(l).unwrap();
            let rv = e["object"]["metadata"]["resourceVersion"].as_str().unwrap_or("0").parse().unwrap();
            (e["type"].as_str().unwrap().to_string(), e["object"]["metadata"]["name"].as_str().unwrap_or("").to_string(), rv)
        })
        .collect()
}

fn configmap(name: &str, app: &str, bytes: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"app": app}}, "data": {"blob": "x".repeat(bytes)}})
}

async fn revision(c: &H2Client) -> i64 {
    let (code, list) = call(c, "GET", "/api/v1/configmaps", None, "").await;
    assert_eq!(code, 200, "{list}");
    list["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watches_share_one_store_watch_and_each_gets_its_own_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestCluster::start(1, dir.path()).await;
    let (api, c) = start(&store, WatchCacheConfig::default()).await;
    for ns in ["a", "b"] {
        let (code, body) = call(&c, "POST", "/api/v1/namespaces", Some(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})), "application/json").await;
        assert_eq!(code, 201, "{body}");
    }
    let rv = revision(&c).await;
    assert_eq!(store.watchers(), 0);
    // Ten watchers of namespace a, ten of every namespace with app=web.
    let mut watchers = Vec::new();
    for i in 0..20 {
        let path = if i % 2 == 0 {
            format!("/api/v1/namespaces/a/configmaps?watch=true&resourceVersion={rv}")
        } else {
            format!("/api/v1/configmaps?watch=true&labelSelector=app%3Dweb&resourceVersion={rv}")
        };
        watchers.push((i % 2, tokio::spawn(collect(c.clone(), path, 6))));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(store.watchers(), 1, "twenty watches of configmaps, one store watch");
    // 30 writes: a/web-i, b/web-i, a/db-i.
    let mut expect_a = Vec::new();
    let mut expect_web = Vec::new();
    for i in 0..10 {
        for (ns, app) in [("a", "web"), ("b", "web"), ("a", "db")] {
            let name = format!("{app}-{i}");
            let (code, body) = call(&c, "POST", &format!("/api/v1/namespaces/{ns}/configmaps"), Some(configmap(&name, app, 100)), "application/json").await;
            assert_eq!(code, 201, "{body}");
            let rv: i64 = body["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
            if ns == "a" {
                expect_a.push(("ADDED".to_string(), name.clone(), rv));
            }
            if app == "web" {
                expect_web.push(("ADDED".to_string(), name.clone(), rv));
            }
        }
    }
    let (code, _) = call(&c, "DELETE", "/api/v1/namespaces/a/configmaps/web-0", None, "").await;
    assert_eq!(code, 200);
    let after = revision(&c).await;
    expect_a.push(("DELETED".into(), "web-0".into(), after));
    expect_web.push(("DELETED".into(), "web-0".into(), after));
    assert_eq!(store.watchers(), 1, "still one store watch after the writes");
    for (kind, w) in watchers {
        let got = w.await.unwrap();
        assert_eq!(got, if kind == 0 { expect_a.clone() } else { expect_web.clone() }, "watcher kind {kind}");
    }
    api.shutdown().await;
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_behind_the_buffer_or_before_it_gets_every_event_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestCluster::start(1, dir.path()).await;
    let (api, c) = start(&store, WatchCacheConfig { max_events: 4, max_bytes: 64 << 20 }).await;
    // Something elsewhere first, so the watches below start from a revision, not from a list.
    let (code, body) = call(&c, "POST", "/api/v1/namespaces", Some(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}})), "application/json").await;
    assert_eq!(code, 201, "{body}");
    let rv = revision(&c).await;
    assert!(rv > 0);
    // A watcher that reads nothing until the writes are done: with 64 KiB objects it cannot
    // hold 150 of them in flight, so it falls behind the 4-event buffer.
    let req = http::Request::get(format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=120")).body(kapp_tls::empty()).unwrap();
    let slow = c.send(req).await.unwrap();
    assert_eq!(slow.status(), 200);
    let mut expect = Vec::new();
    for i in 0..150 {
        let name = format!("cm-{i}");
        let (code, body) = call(&c, "POST", "/api/v1/namespaces/default/configmaps", Some(configmap(&name, "big", 64 << 10)), "application/json").await;
        assert_eq!(code, 201, "{body}");
        expect.push(("ADDED".to_string(), name, body["metadata"]["resourceVersion"].as_str().unwrap().parse::<i64>().unwrap()));
    }
    // Read the slow watcher's first 150 events.
    let mut body = slow.into_body();
    assert_eq!(first_lines(&mut body, expect.len()).await, expect, "the slow watcher");
    assert_eq!(store.watchers(), 2, "the feed, and the slow watcher on a store watch of its own");
    drop(body);
    // A new watch from before the buffer's start is served too (its 10 MB of events are read
    // as they come: a short timeoutSeconds could end it first on a loaded machine).
    let req = http::Request::get(format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=120")).body(kapp_tls::empty()).unwrap();
    let mut old = c.send(req).await.unwrap().into_body();
    assert_eq!(first_lines(&mut old, expect.len()).await, expect, "a watch from an old revision");
    drop(old);
    // And one from the last revision, from the feed: nothing, then the next write.
    let last = expect.last().unwrap().2;
    let w = tokio::spawn(collect(c.clone(), format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={last}"), 3));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, body) = call(&c, "DELETE", "/api/v1/namespaces/default/configmaps/cm-7", None, "").await;
    assert_eq!(code, 200, "{body}");
    let got = w.await.unwrap();
    assert_eq!(got.iter().map(|e| (e.0.as_str(), e.1.as_str())).collect::<Vec<_>>(), [("DELETED", "cm-7")]);
    api.shutdown().await;
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_watching_through_the_cache_never_see_secret_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestCluster::start(1, dir.path()).await;
    let (api, c) = start(&store, WatchCacheConfig::default()).await;
    let viewer = common::client_as(&store, &api, "alice", &[VIEWERS]);
    let rv = revision(&c).await;
    let path = format!("/api/v1/namespaces/default/secrets?watch=true&resourceVersion={rv}");
    let as_viewer = tokio::spawn(collect(viewer, path.clone(), 3));
    let as_writer = tokio::spawn(collect_raw(c.clone(), path, 3));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"password": "hunter2"}});
    let (code, body) = call(&c, "POST", "/api/v1/namespaces/default/secrets", Some(secret), "application/json").await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(as_viewer.await.unwrap().len(), 1);
    let raw = as_writer.await.unwrap();
    assert!(raw.contains("aHVudGVyMg=="), "the writer sees the data: {raw}");
    let viewer = common::client_as(&store, &api, "bob", &[VIEWERS]);
    let raw = collect_raw(viewer, format!("/api/v1/namespaces/default/secrets?watch=true&resourceVersion={rv}"), 1).await;
    assert!(raw.contains("\"s\"") && !raw.contains("aHVudGVyMg==") && !raw.contains("\"data\""), "a viewer sees no data: {raw}");
    api.shutdown().await;
    store.shutdown().await;
}

async fn collect_raw(c: H2Client, path: String, secs: u64) -> String {
    let req = http::Request::get(format!("{path}&timeoutSeconds={secs}")).body(kapp_tls::empty()).unwrap();
    let body = c.send(req).await.unwrap().into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}
