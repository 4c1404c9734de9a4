//! The only way kappctl talks to the apiserver: GET requests (get, list, watch, logs).
//!
//! Architecture Invariant: every request kappctl sends is built by [`Get`] (which has no
//! method, header or body setter) and passes [`ensure_read_only`] just before it leaves, in
//! [`ReadOnlyClient::send`]. The kube-rs client is private to this file, so no other code can
//! reach kube-rs's typed API and its write methods; `tests/write_proof.rs` checks the sources for that.

use futures_util::io::{AsyncBufRead, AsyncReadExt};
use http::Method;
use serde::de::DeserializeOwned;

use crate::error::{chain, Error};

/// `Accept` for plain JSON objects and lists.
pub const JSON: &str = "application/json";
/// `Accept` for server-side printing, as kubectl asks (falls back to JSON).
pub const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

/// A GET request: a path, a query and what to accept. Nothing else can be said with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Get {
    path: String,
    query: Vec<(String, String)>,
    accept: &'static str,
}

impl Get {
    /// GET `path` (starting with `/`), accepting JSON.
    pub fn json(path: impl Into<String>) -> Get {
        Get { path: path.into(), query: Vec::new(), accept: JSON }
    }

    /// GET `path` as a `meta.k8s.io/v1` Table.
    pub fn table(path: impl Into<String>) -> Get {
        Get { accept: TABLE, ..Get::json(path) }
    }

    /// GET `path` as plain text (logs).
    pub fn text(path: impl Into<String>) -> Get {
        Get { accept: "text/plain, */*", ..Get::json(path) }
    }

    /// Add `key=value` to the query (skipped when `value` is empty).
    pub fn query(mut self, key: &str, value: impl Into<String>) -> Get {
        let value = value.into();
        if !value.is_empty() {
            self.query.push((key.to_string(), value));
        }
        self
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Path and query, percent-encoded.
    pub fn uri(&self) -> String {
        let mut uri = self.path.clone();
        for (i, (k, v)) in self.query.iter().enumerate() {
            uri.push(if i == 0 { '?' } else { '&' });
            uri.push_str(&encode(k));
            uri.push('=');
            uri.push_str(&encode(v));
        }
        uri
    }

    /// The HTTP request: always GET, with an empty body.
    pub fn to_request(&self) -> Result<http::Request<Vec<u8>>, Error> {
        http::Request::get(self.uri())
            .header(http::header::ACCEPT, self.accept)
            .body(Vec::new())
            .map_err(|e| Error::Usage(format!("invalid request path {:?}: {e}", self.path)))
    }
}

/// Percent-encode a query component.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The choke point's rule: a request kappctl sends is a GET with no body. Anything else is
/// refused here, before it could leave the process.
pub fn ensure_read_only(req: &http::Request<Vec<u8>>) -> Result<(), Error> {
    if req.method() != Method::GET || !req.body().is_empty() {
        return Err(Error::WriteRefused { method: req.method().to_string(), path: req.uri().to_string() });
    }
    Ok(())
}

/// A client that can only read.
#[derive(Clone)]
pub struct ReadOnlyClient {
    client: kube::Client,
    server: String,
}

impl ReadOnlyClient {
    /// A client of `server` holding the identity `pem` (built by `kapp_runtime::client`).
    pub async fn connect(server: &str, pem: &kapp_tls::Pem) -> Result<ReadOnlyClient, Error> {
        let client = kapp_runtime::client(server, pem).await.map_err(|e| Error::Credentials(chain(&e)))?;
        Ok(ReadOnlyClient { client, server: server.to_string() })
    }

    /// The apiserver's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Every request leaves through here, and only after [`ensure_read_only`] passed it.
    async fn send(&self, get: &Get) -> Result<impl AsyncBufRead + Unpin + use<>, Error> {
        let req = get.to_request()?;
        ensure_read_only(&req)?;
        let body = self.client.request_stream(req).await.map_err(|e| self.error(e))?;
        Ok(Box::pin(body))
    }

    /// The body of a GET as text.
    pub async fn text(&self, get: Get) -> Result<String, Error> {
        let mut body = self.send(&get).await?;
        let mut text = String::new();
        body.read_to_string(&mut text).await.map_err(|e| Error::Unreachable { server: self.server.clone(), detail: format!("reading {}: {}", get.path(), chain(&e)) })?;
        Ok(text)
    }

    /// The body of a GET, parsed.
    pub async fn json<T: DeserializeOwned>(&self, get: Get) -> Result<T, Error> {
        let text = self.text(get.clone()).await?;
        serde_json::from_str(&text).map_err(|e| Error::Decode { server: self.server.clone(), path: get.path().to_string(), detail: e.to_string() })
    }

    /// The body of a GET as it arrives (logs, watches).
    pub async fn stream(&self, get: Get) -> Result<impl AsyncBufRead + Unpin + use<>, Error> {
        self.send(&get).await
    }

    /// A kube-rs error as kappctl reports it: the apiserver's refusal, or why it was not reached.
    fn error(&self, e: kube::Error) -> Error {
        match e {
            kube::Error::Api(s) => Error::Api {
                code: s.code,
                reason: if s.reason.is_empty() { format!("{}", s.code) } else { s.reason.clone() },
                message: if s.message.is_empty() { "no message".into() } else { s.message.clone() },
            },
            kube::Error::SerdeError(e) => Error::Decode { server: self.server.clone(), path: String::new(), detail: e.to_string() },
            other => Error::Unreachable { server: self.server.clone(), detail: chain(&other) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_gets_with_encoded_queries() {
        let g = Get::table("/api/v1/pods").query("labelSelector", "app=web,tier in (a)").query("limit", "500").query("continue", "");
        assert_eq!(g.uri(), "/api/v1/pods?labelSelector=app%3Dweb%2Ctier%20in%20%28a%29&limit=500");
        let req = g.to_request().unwrap();
        assert_eq!(req.method(), Method::GET);
        assert!(req.body().is_empty());
        assert_eq!(req.headers()[http::header::ACCEPT], TABLE);
        ensure_read_only(&req).unwrap();
    }
}
