//! Bad input gets a clear error and changes nothing: malformed JSON → 400, unknown version
//! or kind → 404, a body over the limit → 413, an invalid name → 422 naming the field, an
//! Apply with one invalid item → 422 with nothing of it written. The store's revision is
//! the same before and after.

use http_body_util::BodyExt;
use kapp_apiserver::GITOPS;
use kapp_store::testing::TestCluster;
use kapp_tls::H2Client;
use serde_json::{json, Value};

mod common;
use common::call;

async fn raw(c: &H2Client, path: &str, body: Vec<u8>) -> (u16, Value) {
    let req = http::Request::builder().method("POST").uri(path).header("content-type", "application/json").body(kapp_tls::full(body)).unwrap();
    let resp = c.send(req).await.unwrap();
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestCluster::start(1, dir.path()).await;
    let (api, c) = common::start(&store, GITOPS, None, None).await;
    let j = "application/json";
    let cms = "/api/v1/namespaces/default/configmaps";
    let cm = |name: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}});
    assert_eq!(call(&c, "POST", cms, Some(cm("kept")), j).await.0, 201);
    let revision = |list: &Value| list["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let before = revision(&call(&c, "GET", cms, None, j).await.1);

    let (code, st) = raw(&c, cms, b"{\"apiVersion\": \"v1\", \"kind\":".to_vec()).await;
    assert_eq!((code, st["reason"].as_str()), (400, Some("BadRequest")), "{st}");
    assert!(st["message"].as_str().unwrap().contains("not JSON"), "{st}");

    let (code, st) = call(&c, "POST", "/api/v9/namespaces/default/configmaps", Some(cm("x")), j).await;
    assert_eq!(code, 404, "{st}");
    let (code, st) = call(&c, "POST", "/apis/apps/v1/namespaces/default/widgets", Some(cm("x")), j).await;
    assert_eq!(code, 404, "{st}");
    assert!(st["message"].as_str().unwrap().contains("widgets"), "{st}");

    let mut big = cm("big");
    big["data"]["k"] = json!("x".repeat(kapp_apiserver::MAX_BODY + 1));
    let (code, st) = raw(&c, cms, serde_json::to_vec(&big).unwrap()).await;
    assert_eq!(code, 413, "{st}");

    let (code, st) = call(&c, "POST", cms, Some(cm("Bad_Name")), j).await;
    assert_eq!(code, 422, "{st}");
    assert_eq!(st["details"]["causes"][0]["field"], "metadata.name", "{st}");

    // One invalid item refuses a whole Apply: the valid one beside it is not written.
    let apply = json!({"items": [{"object": cm("fine")}, {"object": cm("Not_Fine")}]});
    let (code, st) = call(&c, "POST", "/apis/kapp.dev/v1/gitsyncs/cluster/apply", Some(apply), j).await;
    assert_eq!(code, 422, "{st}");
    assert!(st["details"]["causes"][0]["field"].as_str().unwrap().starts_with("items[1].metadata.name"), "{st}");
    assert_eq!(call(&c, "GET", &format!("{cms}/fine"), None, j).await.0, 404);

    let (_, list) = call(&c, "GET", cms, None, j).await;
    assert_eq!(revision(&list), before, "nothing was written");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    api.shutdown().await;
    store.shutdown().await;
}
