//! Shared by the apiserver's HTTP-level tests.

use http_body_util::BodyExt;
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
