//! Shared by the apiserver's HTTP-level tests.

use http_body_util::BodyExt;
use kapp_apiserver::{ApiServer, ApiServerConfig};
use kapp_store::testing::TestCluster;
use kapp_tls::H2Client;
use serde_json::Value;

/// Send one request; answer the status code and the JSON body (Null if none).
pub async fn call(c: &H2Client, method: &str, path: &str, body: Option<Value>, ct: &str) -> (u16, Value) {
    let req = http::Request::builder().method(method).uri(path).header("content-type", ct);
    let body = match body {
        Some(b) => kapp_tls::full(serde_json::to_vec(&b).unwrap()),
        None => kapp_tls::empty(),
    };
    let resp = c.send(req.body(body).unwrap()).await.unwrap();
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// An apiserver on loopback over `store`, and a client of it with one of the given groups.
#[allow(dead_code)]
pub async fn start(store: &TestCluster, group: &str, audit_log: Option<std::path::PathBuf>, secret_key: Option<Vec<u8>>) -> (ApiServer, H2Client) {
    let serving = store.pki.ca.issue("apiserver", &[], &["127.0.0.1"]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = ApiServerConfig { tls: serving, store: store.client(), max_connections: 64, secret_key, audit_log, bookmark_interval: std::time::Duration::from_millis(300), watch_cache: Default::default() };
    let api = ApiServer::start(cfg, listener).await.unwrap();
    let tls = kapp_tls::client_config(&store.pki.ca.issue(group, &[group], &[]).unwrap()).unwrap();
    let client = H2Client::new(api.addr.to_string(), tls);
    (api, client)
}

/// A client of `api` with the identity `cn` in `groups`.
#[allow(dead_code)]
pub fn client_as(store: &TestCluster, api: &ApiServer, cn: &str, groups: &[&str]) -> H2Client {
    let tls = kapp_tls::client_config(&store.pki.ca.issue(cn, groups, &[]).unwrap()).unwrap();
    H2Client::new(api.addr.to_string(), tls)
}
