//! `metrics.k8s.io/v1beta1` NodeMetrics (`kubectl top nodes`, kappctl's node CPU and memory),
//! served by the apiserver itself (no metrics-server): each Node's kubelet is asked for its
//! latest window (`GET /stats/node` over the same mutual TLS as `pods/log`), at most
//! [`CONCURRENCY`] at once, each within [`ANSWER_TIMEOUT`]. A node that does not answer is
//! left out of the list (as metrics-server does) and is 404 when asked for by name.
//! Read-only; every authenticated identity may read it (it holds no object data).

use std::time::Duration;

use futures_util::StreamExt;
use http::{Method, Response, StatusCode};
use kapp_store_client::{KeyRange, RangeRequest};
use kapp_tls::Body;
use serde_json::{json, Value};

use crate::Ctx;

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";
/// The group's version path.
pub const PREFIX: &str = "/apis/metrics.k8s.io/v1beta1";
/// Kubelets asked at once.
const CONCURRENCY: usize = 16;
/// Time one kubelet has to answer, connecting included.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
/// Most Nodes listed (the whole list is read in one range).
const MAX_NODES: u64 = 5000;

/// What the group's discovery documents say.
pub fn resource_list() -> Value {
    json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [{"name": "nodes", "singularName": "", "namespaced": false, "kind": "NodeMetrics", "verbs": ["get", "list"]}]
    })
}

pub fn group() -> Value {
    let gv = json!({"groupVersion": format!("{GROUP}/{VERSION}"), "version": VERSION});
    json!({"name": GROUP, "versions": [gv.clone()], "preferredVersion": gv})
}

/// A kubelet's `/stats/node` answer as a NodeMetrics object. Pure.
pub fn node_metrics(name: &str, labels: &Value, stats: &Value) -> Option<Value> {
    let cpu = stats["cpuUsageNanoCores"].as_u64()?;
    let memory = stats["memoryWorkingSetBytes"].as_u64()?;
    let ts = stats["timestamp"].as_str()?;
    Some(json!({
        "kind": "NodeMetrics", "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {"name": name, "creationTimestamp": ts, "labels": labels},
        "timestamp": ts,
        "window": format!("{}s", stats["windowSeconds"].as_u64().unwrap_or(10)),
        "usage": {"cpu": format!("{cpu}n"), "memory": format!("{}Ki", memory / 1024)},
    }))
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    crate::fail(code, reason, message)
}

/// Serve `PREFIX<rest>`.
pub async fn serve(ctx: &Ctx, rest: &str, method: &Method) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return status(405, "MethodNotAllowed", &format!("{method} is not supported on {PREFIX}: metrics are read-only"));
    }
    let parts: Vec<&str> = rest.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    match parts[..] {
        [] => crate::json_response(StatusCode::OK, &resource_list()),
        ["nodes"] => match nodes(ctx).await {
            Ok(list) => {
                let items = futures_util::stream::iter(list).map(|(name, node)| async move { ask(ctx, &name, &node).await }).buffer_unordered(CONCURRENCY).filter_map(|m| async move { m }).collect::<Vec<Value>>().await;
                let mut items = items;
                items.sort_by(|a, b| a["metadata"]["name"].as_str().cmp(&b["metadata"]["name"].as_str()));
                crate::json_response(StatusCode::OK, &json!({"kind": "NodeMetricsList", "apiVersion": format!("{GROUP}/{VERSION}"), "metadata": {}, "items": items}))
            }
            Err(resp) => resp,
        },
        ["nodes", name] => match nodes(ctx).await {
            Ok(list) => match list.into_iter().find(|(n, _)| n == name) {
                None => status(404, "NotFound", &format!("nodes.{GROUP} \"{name}\" not found")),
                Some((n, node)) => match ask(ctx, &n, &node).await {
                    Some(m) => crate::json_response(StatusCode::OK, &m),
                    None => status(404, "NotFound", &format!("nodes.{GROUP} \"{name}\" not found: its kubelet gave no metrics")),
                },
            },
            Err(resp) => resp,
        },
        _ => status(404, "NotFound", &format!("{PREFIX}{rest}: only nodes are served")),
    }
}

/// Every Node: `(name, object)`.
async fn nodes(ctx: &Ctx) -> Result<Vec<(String, Value)>, Response<Body>> {
    let res = kapp_api::by_plural("", "v1", "nodes").expect("nodes are served");
    let prefix = kapp_api::keys::list_prefix(res, None);
    let req = RangeRequest { range: KeyRange { key: prefix.clone().into_bytes(), range_end: kapp_store_client::prefix_end(prefix.as_bytes()) }, limit: MAX_NODES, ..Default::default() };
    let resp = ctx.store.range(req).await.map_err(crate::store_failure)?;
    Ok(resp.kvs.iter().filter_map(|kv| ctx.codec.decode(&kv.value).ok()).filter_map(|n: Value| Some((n["metadata"]["name"].as_str()?.to_string(), n))).collect())
}

/// The node's metrics from its kubelet; None when it cannot say.
async fn ask(ctx: &Ctx, name: &str, node: &Value) -> Option<Value> {
    let addr = crate::podlog::kubelet_address(name, node).ok()?;
    let client = ctx.kubelets.client(name, &addr).ok()?;
    let request = http::Request::get("/stats/node").body(kapp_tls::empty()).expect("a valid request");
    let fetch = async {
        let answer = client.send(request).await.ok()?;
        if !answer.status().is_success() {
            return None;
        }
        let body = kapp_tls::collect_limited(answer.into_body(), 64 << 10).await.ok()?;
        serde_json::from_slice::<Value>(&body).ok()
    };
    let stats = match tokio::time::timeout(ANSWER_TIMEOUT, fetch).await {
        Ok(Some(s)) => s,
        _ => {
            tracing::debug!(node = name, %addr, "no metrics from the kubelet");
            return None;
        }
    };
    node_metrics(name, &node["metadata"]["labels"], &stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_become_node_metrics_in_kubernetes_quantities() {
        let stats = json!({"timestamp": "2026-11-22T12:00:00Z", "windowSeconds": 10, "cpuUsageNanoCores": 250_000_000u64, "cpuUsageCoreNanoSeconds": 9, "memoryWorkingSetBytes": 512u64 << 20, "memoryCapacityBytes": 1u64 << 30});
        let m = node_metrics("w1", &json!({"zone": "a"}), &stats).unwrap();
        assert_eq!(m["usage"], json!({"cpu": "250000000n", "memory": "524288Ki"}));
        assert_eq!((m["window"].as_str(), m["metadata"]["labels"]["zone"].as_str()), (Some("10s"), Some("a")));
        assert!(node_metrics("w1", &Value::Null, &json!({"timestamp": "x"})).is_none());
    }
}
