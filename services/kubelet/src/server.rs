//! The kubelet's HTTPS endpoint (mTLS with the cluster CA): container logs for the
//! apiserver's `pods/log`, and the node's resource use for its `metrics.k8s.io`.
//!
//! `GET /containerLogs/<namespace>/<pod>/<container>?follow=&tailLines=&previous=&timestamps=&limitBytes=`
//! `GET /stats/node` ([`crate::stats::NodeStats`] as JSON; 503 until the first window)
//!
//! Any client certificate of the cluster CA may read, except other nodes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use kapp_tls::{Body, Identity};

use crate::kubelet::Shared;
use crate::runtime::logs;

const MAX_CONNECTIONS: usize = 64;
/// Largest non-following answer.
const MAX_BYTES: usize = 8 << 20;
const FOLLOW_POLL: Duration = Duration::from_millis(250);

pub(crate) async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener, mut stop: tokio::sync::watch::Receiver<bool>) {
    let tls = match kapp_tls::server_config(&shared.cfg.identity, kapp_tls::ClientAuth::Required) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "logs endpoint: tls configuration");
            return;
        }
    };
    let handler = move |req: http::Request<hyper::body::Incoming>, who: Option<Arc<Identity>>| {
        let shared = shared.clone();
        async move { handle(&shared, req, who).await }
    };
    let shutdown = async move {
        let _ = stop.changed().await;
    };
    if let Err(e) = kapp_tls::serve(listener, tls, MAX_CONNECTIONS, handler, shutdown).await {
        tracing::error!(error = %e, "logs endpoint");
    }
}

fn text(code: StatusCode, msg: &str) -> Response<Body> {
    Response::builder().status(code).header("content-type", "text/plain").body(kapp_tls::full(format!("{msg}\n"))).expect("a response")
}

/// The query's parameters.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LogQuery {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail: Option<usize>,
    pub limit: Option<usize>,
}

/// Parse `follow=&tailLines=&previous=&timestamps=&limitBytes=`. Pure.
pub fn parse_query(q: &str) -> LogQuery {
    let mut out = LogQuery::default();
    for kv in q.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, "true"));
        let yes = v == "true" || v == "1";
        match k {
            "follow" => out.follow = yes,
            "previous" => out.previous = yes,
            "timestamps" => out.timestamps = yes,
            "tailLines" => out.tail = v.parse().ok(),
            "limitBytes" => out.limit = v.parse().ok(),
            _ => {}
        }
    }
    out
}

/// The run files of a container's log directory, oldest first.
fn runs(dir: &Path) -> Vec<(u32, PathBuf)> {
    let mut v: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".log")).and_then(|n| n.parse().ok()).map(|n| (n, e.path()))).collect())
        .unwrap_or_default();
    v.sort();
    v
}

async fn handle(shared: &Arc<Shared>, req: http::Request<hyper::body::Incoming>, who: Option<Arc<Identity>>) -> Response<Body> {
    let Some(who) = who else { return text(StatusCode::UNAUTHORIZED, "a client certificate is required") };
    if who.organizations.iter().any(|o| o == kapp_api::groups::NODES) && who.common_name != format!("system:node:{}", shared.cfg.node_name) {
        return text(StatusCode::FORBIDDEN, "nodes may not read other nodes' logs");
    }
    if req.method() != http::Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET");
    }
    if req.uri().path() == "/stats/node" {
        return match shared.stats.current() {
            Some(st) => Response::builder().status(StatusCode::OK).header("content-type", "application/json").body(kapp_tls::full(serde_json::to_vec(&st).expect("json serialises"))).expect("a response"),
            None => text(StatusCode::SERVICE_UNAVAILABLE, "no sample yet: the first window is still open"),
        };
    }
    let parts: Vec<&str> = req.uri().path().trim_matches('/').split('/').collect();
    let [_, ns, pod, container] = parts[..] else { return text(StatusCode::NOT_FOUND, "expected /containerLogs/<namespace>/<pod>/<container>") };
    if parts[0] != "containerLogs" {
        return text(StatusCode::NOT_FOUND, "unknown path");
    }
    let q = parse_query(req.uri().query().unwrap_or(""));
    let Some(p) = shared.pods.state().into_iter().find(|p| p.metadata.namespace.as_deref() == Some(ns) && p.metadata.name.as_deref() == Some(pod)) else {
        return text(StatusCode::NOT_FOUND, &format!("pod {ns}/{pod} is not on this node"));
    };
    let uid = p.metadata.uid.clone().unwrap_or_default();
    let dir = shared.cfg.state_dir.join("logs").join(format!("{ns}_{pod}_{uid}")).join(container);
    let runs = runs(&dir);
    let chosen = if q.previous { runs.len().checked_sub(2).map(|i| runs[i].clone()) } else { runs.last().cloned() };
    let Some((run_no, path)) = chosen else {
        let what = if q.previous { "previous terminated container" } else { "container" };
        return text(StatusCode::BAD_REQUEST, &format!("{what} {container:?} in pod {pod:?} has no logs"));
    };
    let limit = q.limit.unwrap_or(MAX_BYTES).min(MAX_BYTES);
    let first = match logs::read(&path, q.tail, q.timestamps, limit) {
        Ok(b) => b,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    if !q.follow || q.previous {
        return Response::builder().header("content-type", "text/plain").body(kapp_tls::full(first)).expect("a response");
    }
    // Follow: what is there, then new lines until the run ends (a newer run file appears)
    // or the pod's logs go away.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let mut offset = std::fs::metadata(&path).map_or(0, |m| m.len());
    let timestamps = q.timestamps;
    tokio::spawn(async move {
        if tx.send(Bytes::from(first)).await.is_err() {
            return;
        }
        loop {
            tokio::time::sleep(FOLLOW_POLL).await;
            let Ok((raw, next)) = logs::read_from(&path, offset) else { return };
            offset = next;
            if !raw.is_empty() && tx.send(Bytes::from(logs::texts(&raw, timestamps))).await.is_err() {
                return;
            }
            let newer = runs_after(&dir, run_no);
            if raw.is_empty() && (newer || !dir.exists()) {
                return;
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    Response::builder().header("content-type", "text/plain").body(kapp_tls::stream_body(rx)).expect("a response")
}

fn runs_after(dir: &Path, run: u32) -> bool {
    runs(dir).iter().any(|(n, _)| *n > run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        assert_eq!(parse_query(""), LogQuery::default());
        assert_eq!(parse_query("follow=true&tailLines=5&previous=false&timestamps=1&limitBytes=100"), LogQuery { follow: true, previous: false, timestamps: true, tail: Some(5), limit: Some(100) });
    }
}
