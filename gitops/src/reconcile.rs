//! The reconcile loop: fetch → render → validate → diff against the live managed objects →
//! one Apply (one store transaction) → status and an Event. Runs only while this head holds
//! the gitops Lease; every interval, or at once when the webhook fires.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use kapp_api::kapp::{ApplyCounts, CommitInfo, GitSyncSpec, GitSyncStatus, SyncError, MANAGED_BY_LABEL, MAX_APPLY_ITEMS};
use kapp_api::table::now_rfc3339;
use kapp_api::{Resource, RESOURCES};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

use crate::plan::{self, object_id, Desired};
use crate::source::{self, Source};

/// How gitops runs.
#[derive(Clone, Debug)]
pub struct GitopsConfig {
    /// Name of the GitSync object (and the value of the managed-by label).
    pub name: String,
    pub source: Source,
    /// Sub-path of the repository to render.
    pub path: String,
    pub interval: Duration,
    /// Where the bare repository and the exported tree live.
    pub state_dir: PathBuf,
    /// The cluster's age keys: `*.age` files and armored Secret values are decrypted with
    /// them (in memory only). None: anything encrypted refuses the commit.
    pub identities: Vec<kapp_age::Identity>,
}

/// Why one sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncFailure {
    #[error("apiserver: {0}")]
    Kube(#[from] kube::Error),
    #[error("apiserver answered {code}: {message}")]
    Refused { code: u16, message: String, causes: Vec<Value> },
    #[error("commit refused: {} error(s)", .0.len())]
    Invalid(Vec<SyncError>),
    #[error("fetch: {0}")]
    Fetch(String),
}


/// Attempts of one apply that keeps meeting concurrent writes (409) before the next interval.
const CONFLICT_RETRIES: usize = 3;

pub struct Gitops {
    client: kube::Client,
    cfg: GitopsConfig,
    status: GitSyncStatus,
    /// The last commit rendered and what it rendered to (or why it was refused): a commit
    /// is rendered and validated once, not at every poll.
    rendered: Option<(String, Result<Arc<Vec<Desired>>, Vec<SyncError>>)>,
}

fn api_resource(r: &Resource) -> ApiResource {
    ApiResource { group: r.group.into(), version: r.version.into(), api_version: r.api_version(), kind: r.kind.into(), plural: r.plural.into() }
}

impl Gitops {
    /// Start from the status already stored (so the applied commit survives restarts and
    /// changes of leader).
    pub async fn new(client: kube::Client, cfg: GitopsConfig) -> Gitops {
        let mut g = Gitops { client, cfg, status: GitSyncStatus::default(), rendered: None };
        let ar = api_resource(kapp_api::by_kind("kapp.dev/v1", "GitSync").expect("GitSync is served"));
        if let Ok(Some(o)) = Api::<DynamicObject>::all_with(g.client.clone(), &ar).get_opt(&g.cfg.name).await {
            if let Ok(st) = serde_json::from_value::<GitSyncStatus>(o.data["status"].clone()) {
                g.status = st;
            }
        }
        g
    }

    pub fn status(&self) -> &GitSyncStatus {
        &self.status
    }

    /// Sync every interval and whenever `trigger` fires, until `lost` turns true.
    pub async fn run(mut self, trigger: Arc<Notify>, mut lost: watch::Receiver<bool>) {
        loop {
            if *lost.borrow() {
                return;
            }
            if let Err(e) = self.sync_once().await {
                tracing::warn!(gitsync = %self.cfg.name, error = %e, "sync failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.interval) => {}
                _ = trigger.notified() => tracing::info!("webhook: fetching now"),
                _ = lost.changed() => return,
            }
        }
    }

    fn spec(&self) -> GitSyncSpec {
        GitSyncSpec {
            url: self.cfg.source.url.clone(),
            git_ref: self.cfg.source.git_ref.clone(),
            path: self.cfg.path.clone(),
            interval_seconds: u32::try_from(self.cfg.interval.as_secs()).ok(),
        }
    }

    /// One pass. Failures are recorded in the GitSync status (and returned).
    pub async fn sync_once(&mut self) -> Result<(), SyncFailure> {
        let result = self.try_sync().await;
        if let Err(e) = &result {
            let mut st = self.status.clone();
            st.state = "Failed".into();
            match e {
                SyncFailure::Invalid(errors) => {
                    st.message = format!("commit {} refused: {}", st.fetched_commit.as_ref().map_or("", |c| short(&c.sha)), first_reason(errors));
                    st.errors = errors.iter().take(100).cloned().collect();
                }
                other => {
                    st.message = other.to_string();
                    st.errors = vec![SyncError { reason: other.to_string(), ..Default::default() }];
                }
            }
            if st != self.status {
                let reason = if matches!(e, SyncFailure::Invalid(_)) { "CommitRefused" } else { "SyncFailed" };
                if self.write_status(st.clone()).await.is_ok() {
                    self.event("Warning", reason, &st.message).await;
                }
            }
        }
        result
    }

    async fn try_sync(&mut self) -> Result<(), SyncFailure> {
        let src = self.cfg.source.clone();
        let state = self.cfg.state_dir.clone();
        let fetched = tokio::task::spawn_blocking(move || source::fetch(&state, &src))
            .await
            .map_err(|e| SyncFailure::Fetch(e.to_string()))?
            .map_err(|e| SyncFailure::Fetch(e.to_string()))?;
        if self.status.fetched_commit.as_ref().map(|c| &c.sha) != Some(&fetched.commit.sha) {
            self.status.fetched_commit = Some(fetched.commit.clone());
            self.status.last_fetch_time = now_rfc3339();
        }
        if let Some(why) = &fetched.untrusted {
            let reason = format!("signature: {why}");
            return Err(SyncFailure::Invalid(vec![SyncError { reason, ..Default::default() }]));
        }
        let desired = match &self.rendered {
            Some((sha, r)) if *sha == fetched.commit.sha => r.clone(),
            _ => {
                let r = self.render(&fetched).await?;
                self.rendered = Some((fetched.commit.sha.clone(), r.clone()));
                r
            }
        }
        .map_err(SyncFailure::Invalid)?;
        if desired.iter().any(|d| d.res.kind == "ClusterSettings" && d.object["spec"]["suspend"].as_bool() == Some(true)) {
            let mut st = self.status.clone();
            st.state = "Suspended".into();
            st.message = format!("ClusterSettings.spec.suspend is true in commit {}: nothing is applied", fetched.commit.sha);
            st.errors.clear();
            if st != self.status {
                self.write_status(st).await?;
            }
            return Ok(());
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.apply(&desired, &fetched.commit).await {
                Err(SyncFailure::Refused { code: 409, .. }) if attempt < CONFLICT_RETRIES => continue,
                other => return other,
            }
        }
    }

    /// Render the fetched tree's path and validate every document.
    async fn render(&self, fetched: &source::Fetched) -> Result<Result<Arc<Vec<Desired>>, Vec<SyncError>>, SyncFailure> {
        let root = fetched.dir.join(&self.cfg.path);
        if !root.is_dir() {
            return Ok(Err(vec![SyncError { file: self.cfg.path.clone(), reason: format!("path {:?} is not a directory in commit {}", self.cfg.path, fetched.commit.sha), ..Default::default() }]));
        }
        let identities = self.cfg.identities.clone();
        let docs = tokio::task::spawn_blocking(move || {
            let mut docs = kapp_render::render_with(&root, &kapp_render::Options { identities: identities.clone(), ..Default::default() })?;
            let errors = crate::secrets::decrypt_values(&mut docs, &identities);
            Ok::<_, kapp_render::RenderError>((docs, errors))
        })
        .await
        .map_err(|e| SyncFailure::Fetch(e.to_string()))?;
        Ok(match docs {
            Err(kapp_render::RenderError::NoKey { file }) => Err(vec![SyncError { file: file.to_string_lossy().into_owned(), reason: crate::secrets::NO_KEY.into(), ..Default::default() }]),
            Err(kapp_render::RenderError::Decrypt { file, source }) => Err(vec![SyncError { file: file.to_string_lossy().into_owned(), reason: format!("cannot decrypt: {source}"), ..Default::default() }]),
            Err(e) => Err(vec![SyncError { reason: e.to_string(), ..Default::default() }]),
            Ok((_, errors)) if !errors.is_empty() => Err(errors),
            Ok((docs, _)) => plan::prepare(docs, &self.cfg.name).map(Arc::new),
        })
    }

    /// Every live object this GitSync manages, by id.
    async fn live(&self) -> Result<BTreeMap<String, Value>, SyncFailure> {
        let mut out = BTreeMap::new();
        let selector = format!("{MANAGED_BY_LABEL}={}", self.cfg.name);
        for r in RESOURCES.iter().filter(|r| r.kind != "GitSync") {
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &api_resource(r));
            let mut lp = ListParams::default().labels(&selector).limit(500);
            loop {
                let list = api.list(&lp).await?;
                for o in list.items {
                    let mut v = serde_json::to_value(&o).unwrap_or(Value::Null);
                    v["apiVersion"] = json!(r.api_version());
                    v["kind"] = json!(r.kind);
                    let id = object_id(r, o.metadata.namespace.as_deref().unwrap_or(""), o.metadata.name.as_deref().unwrap_or(""));
                    out.insert(id, v);
                }
                match list.metadata.continue_ {
                    Some(c) if !c.is_empty() => lp.continue_token = Some(c),
                    _ => break,
                }
            }
        }
        Ok(out)
    }

    async fn apply(&mut self, desired: &[Desired], commit: &CommitInfo) -> Result<(), SyncFailure> {
        let mut live = self.live().await?;
        // Objects git wants that exist without our label (made before gitops followed this
        // repository) are adopted: updated from their current version.
        let missing: Vec<&Desired> = desired.iter().filter(|d| !live.contains_key(&d.id())).collect();
        for d in missing {
            let ar = api_resource(d.res);
            let api: Api<DynamicObject> = if d.res.namespaced { Api::namespaced_with(self.client.clone(), &d.namespace, &ar) } else { Api::all_with(self.client.clone(), &ar) };
            if let Some(o) = api.get_opt(&d.name).await? {
                let mut v = serde_json::to_value(&o).unwrap_or(Value::Null);
                v["apiVersion"] = json!(d.res.api_version());
                v["kind"] = json!(d.res.kind);
                live.insert(d.id(), v);
            }
        }
        let p = plan::plan(desired, &live, &commit.sha);
        let mut st = self.status.clone();
        st.errors.clear();
        st.message.clear();
        st.drift_reverted += p.drifted as u64;
        let changed = !p.items.is_empty();
        if changed {
            st.counts = p.counts.clone();
            st.last_apply_time = now_rfc3339();
        } else {
            st.counts = ApplyCounts { objects: p.counts.objects, unchanged: p.counts.unchanged, ..Default::default() };
        }
        st.applied_commit = Some(commit.clone());
        st.state = "Synced".into();
        if !changed && st == self.status {
            return Ok(());
        }
        // One transaction when the change fits; otherwise ordered chunks, the status saying
        // Applying until the last one lands. A chunk the apiserver finds too large for one
        // transaction (413: Services cost more than other objects) is halved and sent again.
        let total = p.items.len();
        let (mut at, mut size) = (0, MAX_APPLY_ITEMS);
        loop {
            let end = (at + size).min(total);
            let last = end == total;
            let mut partial = st.clone();
            if !last {
                partial.state = "Applying".into();
                partial.applied_commit = self.status.applied_commit.clone();
            }
            match self.post_apply(p.items[at..end].to_vec(), partial).await {
                Err(SyncFailure::Refused { code: 413, .. }) if size > 1 => {
                    size = size.div_ceil(2).min(end - at - 1).max(1);
                    continue;
                }
                Err(SyncFailure::Refused { code: 422, causes, message }) => return Err(SyncFailure::Invalid(map_causes(desired, &p.sources[at.min(p.sources.len())..], &causes, &message))),
                other => other?,
            }
            if last {
                break;
            }
            at = end;
        }
        if p.drifted > 0 {
            self.event("Warning", "DriftReverted", &format!("{} object(s) changed outside git were put back to commit {}", p.drifted, short(&commit.sha))).await;
        }
        if changed {
            let c = &p.counts;
            let msg = format!("applied commit {} ({}): {} created, {} updated, {} pruned, {} unchanged", short(&commit.sha), commit.subject, c.created, c.updated, c.pruned, c.unchanged);
            tracing::info!(gitsync = %self.cfg.name, "{msg}");
            self.event("Normal", "Applied", &msg).await;
        }
        Ok(())
    }

    async fn write_status(&mut self, st: GitSyncStatus) -> Result<(), SyncFailure> {
        self.post_apply(Vec::new(), st).await
    }

    async fn post_apply(&mut self, items: Vec<Value>, st: GitSyncStatus) -> Result<(), SyncFailure> {
        let body = json!({"apiVersion": "kapp.dev/v1", "kind": "Apply", "items": items, "spec": self.spec(), "status": st});
        let url = format!("/apis/kapp.dev/v1/gitsyncs/{}/apply", self.cfg.name);
        let req = http::Request::post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(kube::client::Body::from(serde_json::to_vec(&body).expect("json serialises")))
            .expect("a valid request");
        let resp = self.client.send(req).await?;
        let code = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.map_err(|e| SyncFailure::Refused { code: 502, message: format!("reading the apiserver's answer: {e}"), causes: Vec::new() })?.to_bytes();
        if code / 100 != 2 {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let message = v["message"].as_str().map_or_else(|| String::from_utf8_lossy(&bytes).into_owned(), String::from);
            let causes = v["details"]["causes"].as_array().cloned().unwrap_or_default();
            return Err(SyncFailure::Refused { code, message, causes });
        }
        self.status = st;
        Ok(())
    }

    async fn event(&self, kind: &str, reason: &str, message: &str) {
        let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(self.client.clone(), "default");
        let now = now_rfc3339();
        let ev: Result<k8s_openapi::api::core::v1::Event, _> = serde_json::from_value(json!({
            "metadata": {"name": format!("gitsync-{}.{:x}", self.cfg.name, rand::random::<u64>()), "namespace": "default"},
            "involvedObject": {"apiVersion": "kapp.dev/v1", "kind": "GitSync", "name": self.cfg.name},
            "reason": reason, "message": message, "type": kind,
            "source": {"component": "kapp-gitops"},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }));
        if let Ok(ev) = ev {
            if let Err(e) = api.create(&PostParams::default(), &ev).await {
                tracing::warn!(error = %e, "recording an event");
            }
        }
    }
}

fn short(sha: &str) -> &str {
    sha.get(..8).unwrap_or(sha)
}

fn first_reason(errors: &[SyncError]) -> String {
    match errors.first() {
        None => String::new(),
        Some(e) => {
            let at = match (e.file.as_str(), e.document) {
                ("", _) => String::new(),
                (f, Some(d)) => format!("{f} (document {d}): "),
                (f, None) => format!("{f}: "),
            };
            let more = if errors.len() > 1 { format!(" (and {} more)", errors.len() - 1) } else { String::new() };
            format!("{at}{}{more}", e.reason)
        }
    }
}

/// The apiserver's 422 causes (`items[k].<field>`) back to the files they came from:
/// `sources[k]` is the desired object item `k` of the request was made from.
fn map_causes(desired: &[Desired], sources: &[Option<usize>], causes: &[Value], message: &str) -> Vec<SyncError> {
    if causes.is_empty() {
        return vec![SyncError { reason: message.to_string(), ..Default::default() }];
    }
    causes
        .iter()
        .map(|c| {
            let field = c["field"].as_str().unwrap_or("");
            let reason = c["message"].as_str().unwrap_or("").to_string();
            let item = field.strip_prefix("items[").and_then(|r| r.split_once(']')).and_then(|(k, rest)| Some((k.parse::<usize>().ok()?, rest.trim_start_matches('.'))));
            match item {
                Some((k, rest)) => {
                    let d = sources.get(k).copied().flatten().and_then(|i| desired.get(i));
                    SyncError { file: d.map_or(String::new(), |d| d.file.clone()), document: d.map(|d| d.document), object: d.map_or(String::new(), Desired::id), field: rest.to_string(), reason }
                }
                None => SyncError { field: field.to_string(), reason, ..Default::default() },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apiserver_causes_point_back_at_the_document() {
        let docs = vec![
            kapp_render::Document { file: "a.yaml".into(), index: 0, object: json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}) },
            kapp_render::Document { file: "b.yaml".into(), index: 3, object: json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b"}}) },
        ];
        let desired = plan::prepare(docs, "cluster").unwrap();
        // The request held a prune first, then b.yaml's object.
        let sources = [None, Some(1)];
        let causes = [json!({"field": "items[1].data", "message": "ConfigMap/default/b: data: Invalid value"}), json!({"field": "status.state", "message": "GitSync/cluster: bad"})];
        let e = map_causes(&desired, &sources, &causes, "invalid");
        assert_eq!((e[0].file.as_str(), e[0].document, e[0].object.as_str(), e[0].field.as_str()), ("b.yaml", Some(3), "ConfigMap/default/b", "data"));
        assert_eq!((e[1].file.as_str(), e[1].field.as_str()), ("", "status.state"));
    }
}
