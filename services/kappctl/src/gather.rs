//! Read what `kappctl status` shows from the apiserver: GETs only, through the
//! [`ReadOnlyClient`], into a [`Raw`] that [`crate::view::build`] turns into a view.

use serde_json::Value;

use crate::error::Error;
use crate::readonly::{Get, ReadOnlyClient};
use crate::view::Raw;

/// Objects per list page.
const PAGE: usize = 500;
/// Most pages read of one kind (so at most 20,000 objects of a kind are looked at).
const MAX_PAGES: usize = 40;

/// The URL path of a served kind's collection, in `namespace` or across all.
pub fn collection(res: &kapp_api::Resource, namespace: Option<&str>) -> String {
    match namespace.filter(|_| res.namespaced) {
        Some(ns) => format!("{}/namespaces/{ns}/{}", res.group_version_path(), res.plural),
        None => format!("{}/{}", res.group_version_path(), res.plural),
    }
}

/// Every object of a list, following `continue` tokens (at most [`MAX_PAGES`] pages).
pub async fn list_all(client: &ReadOnlyClient, path: &str, label_selector: &str, field_selector: &str) -> Result<Vec<Value>, Error> {
    let mut out = Vec::new();
    let mut token = String::new();
    for _ in 0..MAX_PAGES {
        let get = Get::json(path).query("labelSelector", label_selector).query("fieldSelector", field_selector).query("limit", PAGE.to_string()).query("continue", token.clone());
        let page: Value = client.json(get).await?;
        if let Some(items) = page["items"].as_array() {
            out.extend(items.iter().cloned());
        }
        match page["metadata"]["continue"].as_str().filter(|c| !c.is_empty()) {
            Some(c) => token = c.to_string(),
            None => break,
        }
    }
    Ok(out)
}

/// Kinds of the status, by section name.
const KINDS: &[(&str, &str, &str)] = &[
    ("nodes", "v1", "Node"),
    ("pods", "v1", "Pod"),
    ("deployments", "apps/v1", "Deployment"),
    ("daemonsets", "apps/v1", "DaemonSet"),
    ("statefulsets", "apps/v1", "StatefulSet"),
    ("jobs", "batch/v1", "Job"),
    ("gitsyncs", "kapp.dev/v1", "GitSync"),
    ("events", "v1", "Event"),
];

/// The first contact: `/version`. Not reaching it, or being refused, ends `status` (exit 2).
pub async fn version(client: &ReadOnlyClient) -> Result<Value, Error> {
    client.json(Get::json("/version")).await.map_err(|e| match e {
        Error::Api { code: 401 | 403, message, .. } => Error::Refused { server: client.server().to_string(), detail: message },
        other => other,
    })
}

/// Read everything `status` shows. Fails only when the apiserver cannot be reached or
/// refuses the identity; a part that cannot be read is recorded in `Raw::errors`.
pub async fn gather(client: &ReadOnlyClient, cluster: &str) -> Result<Raw, Error> {
    let version = version(client).await?;
    let observed_at = kapp_api::table::now_rfc3339();
    let heads = client.json::<kapp_api::heads::HeadList>(Get::json(kapp_api::heads::PATH));
    let lists = KINDS.iter().map(|(name, api_version, kind)| async move {
        let res = kapp_api::by_kind(api_version, kind).expect("a served kind");
        let fields = if *name == "events" { "type=Warning" } else { "" };
        (*name, list_all(client, &collection(res, None), "", fields).await)
    });
    let metrics = client.json::<serde_json::Value>(Get::json("/apis/metrics.k8s.io/v1beta1/nodes"));
    let (heads, lists, metrics) = futures_util::future::join3(heads, futures_util::future::join_all(lists), metrics).await;
    let mut raw = Raw { observed_at, server: client.server().to_string(), cluster: cluster.to_string(), version, ..Raw::default() };
    match heads {
        Ok(h) => raw.heads = Some(h),
        Err(e) if e.is_api(404) => {
            raw.notes.insert("heads".into(), format!("this apiserver does not serve {}", kapp_api::heads::PATH));
        }
        Err(e) => {
            raw.errors.insert("heads".into(), e.to_string());
        }
    }
    // Node use is a bonus: an apiserver without metrics is not a degraded cluster.
    match metrics {
        Ok(m) => raw.node_metrics = m["items"].as_array().cloned(),
        Err(e) => {
            raw.notes.insert("node_metrics".into(), e.to_string());
        }
    }
    for (name, result) in lists {
        let slot = match name {
            "nodes" => &mut raw.nodes,
            "pods" => &mut raw.pods,
            "deployments" => &mut raw.deployments,
            "daemonsets" => &mut raw.daemonsets,
            "statefulsets" => &mut raw.statefulsets,
            "jobs" => &mut raw.jobs,
            "gitsyncs" => &mut raw.gitsyncs,
            _ => &mut raw.events,
        };
        match result {
            Ok(items) => *slot = Some(items),
            Err(e) => {
                raw.errors.insert(name.to_string(), e.to_string());
            }
        }
    }
    Ok(raw)
}
