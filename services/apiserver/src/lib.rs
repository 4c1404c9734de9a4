//! kapp's apiserver: Kubernetes' REST API over the replicated store, so kubectl, kube-rs and
//! the Python client work unchanged.
//!
//! Served today: discovery (`/version`, `/api`, `/apis`, resource lists), and for every kind
//! in `kapp_api::RESOURCES`: get, list (label/field selectors, limit/continue), watch
//! (resourceVersion, 410 when compacted, timeoutSeconds), create (422 on invalid objects,
//! 409 if it exists), update (409 on a stale resourceVersion), delete; `pods/log` streamed
//! from the pod's kubelet (see `podlog`). Authentication by client certificate, coarse
//! authorisation by group (see `authz`). Objects are stored as JSON; `resourceVersion` is
//! the store's `mod_revision`.

mod alloc;
mod apply;
mod authz;
mod cache;
mod codec;
mod heads;
mod metrics;
mod podlog;
use kapp_api::patch;
mod util;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use kapp_api::{keys, Resource, RESOURCES};
use kapp_store_client::{Compare, KeyRange, KeyValue, Op, RangeRequest, Refusal, StoreClient, StoreError, Txn, WatchItem};
use kapp_tls::{Body, ClientAuth, Identity, Pem};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

pub use cache::WatchCacheConfig;
pub use authz::{Access, CONTROLLERS, GITOPS, NODES, SCHEDULER, VIEWERS};
use kapp_api::selector::Selector;
use util::{parse_query, status};

/// Largest request body (an object).
pub const MAX_BODY: usize = 3 * 1024 * 1024;
/// Largest gitops Apply body (a commit's changes).
pub const MAX_APPLY_BODY: usize = 32 * 1024 * 1024;
/// Items read from the store per round trip while building a list.
const STORE_PAGE: u64 = 1000;
/// Most items one list without `limit` returns. Kubernetes returns everything then (clients
/// such as kube-rs' `Api::list` do not follow `continue` unless they asked for pages), so
/// anything less would be a silently truncated answer; past this the request is refused
/// with a message that says to page.
pub const MAX_UNPAGED: u64 = 50_000;
/// Kubernetes version reported by `/version`.
const KUBE_MINOR: &str = "33";

/// How to run an apiserver.
pub struct ApiServerConfig {
    pub tls: Pem,
    pub store: StoreClient,
    pub max_connections: usize,
    /// 32 bytes: Secrets are stored sealed with AES-256-GCM under this key.
    pub secret_key: Option<Vec<u8>>,
    /// Append one JSON line per mutating request (who, verb, object, result) to this file.
    pub audit_log: Option<std::path::PathBuf>,
    /// How often a quiet watch that allows bookmarks gets one.
    pub bookmark_interval: Duration,
    /// Bounds of the watch cache (one store watch per resource, fanned out).
    pub watch_cache: WatchCacheConfig,
}

/// Why the apiserver could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] kapp_tls::TlsError),
    #[error("listener: {0}")]
    Listener(std::io::Error),
    #[error("secret encryption: {0}")]
    Codec(#[from] codec::CodecError),
    #[error("audit log {0}: {1}")]
    Audit(std::path::PathBuf, std::io::Error),
}

/// A running apiserver.
pub struct ApiServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

struct Ctx {
    bookmark_interval: Duration,
    store: StoreClient,
    codec: Arc<codec::Codec>,
    cache: cache::WatchCache,
    audit: Option<mpsc::Sender<Vec<u8>>>,
    kubelets: podlog::Kubelets,
}

/// Audit lines waiting for the writer at most; requests wait beyond that (never dropped).
const AUDIT_QUEUE: usize = 1024;

fn start_audit(path: &std::path::Path) -> std::io::Result<mpsc::Sender<Vec<u8>>> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(AUDIT_QUEUE);
    std::thread::Builder::new().name("apiserver-audit".into()).spawn(move || {
        while let Some(line) = rx.blocking_recv() {
            if let Err(e) = file.write_all(&line).and_then(|_| file.flush()) {
                tracing::error!(error = %e, "writing the audit log");
            }
        }
    })?;
    Ok(tx)
}

impl ApiServer {
    /// Serve on `listener` until `shutdown`.
    pub async fn start(cfg: ApiServerConfig, listener: TcpListener) -> Result<ApiServer, StartError> {
        let tls = kapp_tls::server_config(&cfg.tls, ClientAuth::Optional)?;
        let addr = listener.local_addr().map_err(StartError::Listener)?;
        let codec = Arc::new(codec::Codec::new(cfg.secret_key.as_deref())?);
        let audit = match &cfg.audit_log {
            None => None,
            Some(p) => Some(start_audit(p).map_err(|e| StartError::Audit(p.clone(), e))?),
        };
        let kubelets = podlog::Kubelets::new(cfg.tls, podlog::MAX_LOG_STREAMS);
        let cache = cache::WatchCache::new(cfg.store.clone(), codec.clone(), cfg.watch_cache, cfg.bookmark_interval);
        let ctx = Arc::new(Ctx { bookmark_interval: cfg.bookmark_interval, store: cfg.store, codec, cache, audit, kubelets });
        let closing = ctx.clone();
        let (stop, rx) = oneshot::channel::<()>();
        let handler = move |req, who| {
            let ctx = ctx.clone();
            async move { handle(ctx, req, who).await }
        };
        let task = tokio::spawn(kapp_tls::serve(listener, tls, cfg.max_connections, handler, async move {
            let _ = rx.await;
            closing.cache.close();
        }));
        Ok(ApiServer { addr, stop: Some(stop), task })
    }

    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.task.await;
    }
}

fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(kapp_tls::full(serde_json::to_vec(v).expect("json serialises")))
        .expect("valid response")
}

fn fail(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_response(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &status(code, reason, message, None))
}

fn store_failure(e: StoreError) -> Response<Body> {
    match e {
        StoreError::Refused(Refusal::Compacted { .. }) => fail(410, "Expired", &e.to_string()),
        StoreError::TooLarge { .. } => fail(413, "RequestEntityTooLarge", &e.to_string()),
        StoreError::Invalid(_) => fail(400, "BadRequest", &e.to_string()),
        _ => fail(503, "ServiceUnavailable", &format!("store: {e}")),
    }
}

/// A parsed resource URL.
struct Target {
    res: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

enum Route {
    Version,
    ApiVersions,
    GroupList,
    ResourceList(&'static str, &'static str),
    Object(Target),
}

fn route(path: &str) -> Result<Route, Response<Body>> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["version"] => return Ok(Route::Version),
        ["api"] => return Ok(Route::ApiVersions),
        ["apis"] => return Ok(Route::GroupList),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(fail(404, "NotFound", &format!("the server could not find the requested resource {path}"))),
    };
    let Some(&(g, v)) = kapp_api::resource::groups().iter().find(|(g, v)| *g == group && *v == version) else {
        return Err(fail(404, "NotFound", &format!("the server does not serve {group}/{version}")));
    };
    if rest.is_empty() {
        return Ok(Route::ResourceList(g, v));
    }
    let (namespace, plural, tail) = if rest[0] == "namespaces" && rest.len() >= 3 {
        (Some(rest[1].to_string()), rest[2], &rest[3..])
    } else {
        (None, rest[0], &rest[1..])
    };
    let res = kapp_api::by_plural(group, version, plural)
        .ok_or_else(|| fail(404, "NotFound", &format!("the server doesn't have a resource type \"{plural}\" in {}", if group.is_empty() { version.to_string() } else { format!("{group}/{version}") })))?;
    if namespace.is_some() && !res.namespaced {
        return Err(fail(404, "NotFound", &format!("{} is not namespaced", res.plural)));
    }
    Ok(Route::Object(Target {
        res,
        namespace,
        name: tail.first().map(|s| s.to_string()),
        sub: tail.get(1).map(|s| s.to_string()),
    }))
}

async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>, who: Option<Arc<Identity>>) -> Response<Body> {
    let (parts, incoming) = req.into_parts();
    let mut payload = Payload::Stream(incoming);
    let Some(who) = who else {
        return fail(401, "Unauthorized", "a client certificate from the cluster CA is required");
    };
    let access = authz::access(&who);
    if access == Access::None {
        return fail(403, "Forbidden", &format!("user {:?} belongs to no kapp group", who.common_name));
    }
    let path = parts.uri.path().to_string();
    if path == kapp_api::heads::PATH {
        return heads::serve(&ctx.store, &parts.method).await;
    }
    if let Some(rest) = path.strip_prefix(metrics::PREFIX) {
        return metrics::serve(&ctx, rest, &parts.method).await;
    }
    if path.trim_end_matches('/') == format!("/apis/{}", metrics::GROUP) {
        return json_response(StatusCode::OK, &{
            let mut g = metrics::group();
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            g
        });
    }
    let query = parse_query(parts.uri.query());
    let as_table = parts.headers.get_all(http::header::ACCEPT).iter().any(|v| v.to_str().is_ok_and(|s| s.contains("as=Table")));
    let r = match route(&path) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let writes = !matches!(parts.method, Method::GET | Method::HEAD);
    if writes && access != Access::Write {
        let verb = parts.method.as_str().to_lowercase();
        let allowed = match (authz::node_name(&who), &r) {
            (Some(me), Route::Object(t)) => {
                match authz::node_write(me, t.res.kind, t.namespace.as_deref(), t.name.as_deref(), t.sub.as_deref(), &verb) {
                    authz::NodeWrite::Allowed => Ok(()),
                    authz::NodeWrite::Denied(why) => Err(why),
                    authz::NodeWrite::IfBodyNamedMe => {
                        let obj = match body_json(payload).await {
                            Ok(o) => o,
                            Err(resp) => return resp,
                        };
                        let named = obj["metadata"]["name"].as_str() == Some(me);
                        payload = Payload::Parsed(obj);
                        if named {
                            Ok(())
                        } else {
                            Err(format!("node {me:?} may create only objects named after itself"))
                        }
                    }
                    authz::NodeWrite::IfPodOnNode => {
                        let name = t.name.as_deref().unwrap_or("");
                        match ctx.store.get(object_key(t, name)).await {
                            Err(e) => return store_failure(e),
                            Ok(None) => return not_found(t, name),
                            Ok(Some(kv)) => match ctx.codec.decode(&kv.value) {
                                Ok(pod) if pod["spec"]["nodeName"].as_str() == Some(me) => Ok(()),
                                _ => Err(format!("pod {name:?} is not bound to node {me:?}")),
                            },
                        }
                    }
                }
            }
            _ => Err("kapp is changed through git only".to_string()),
        };
        if let Err(why) = allowed {
            return fail(403, "Forbidden", &format!("user {:?} may not {verb} {path}: {why}", who.common_name));
        }
    }
    if let Route::Object(t) = &r {
        if t.sub.as_deref() == Some("apply") && !who.organizations.iter().any(|o| o == authz::GITOPS) {
            return fail(403, "Forbidden", &format!("user {:?} may not apply commits: only {} does", who.common_name, authz::GITOPS));
        }
        // Logs come from the kubelet, not the store; whoever reads pods reads them (a node
        // only those of its own pods).
        if let (Some(name), Some("log")) = (&t.name, t.sub.as_deref()) {
            if parts.method == Method::GET && t.res.has(kapp_api::Subresource::Log) {
                return podlog::serve(&ctx, t, name, &query, &who.common_name, authz::node_name(&who)).await;
            }
        }
    }
    match r {
        Route::Version => json_response(StatusCode::OK, &json!({
            "major": "1", "minor": KUBE_MINOR, "gitVersion": format!("v1.{KUBE_MINOR}.0-kapp.{}", env!("CARGO_PKG_VERSION")),
            "gitCommit": "", "gitTreeState": "clean", "buildDate": "1970-01-01T00:00:00Z",
            "goVersion": "rust", "compiler": "rustc", "platform": "linux/amd64"
        })),
        Route::ApiVersions => json_response(StatusCode::OK, &json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]
        })),
        Route::GroupList => {
            let mut groups: Vec<Value> = kapp_api::resource::groups()
                .into_iter()
                .filter(|(g, _)| !g.is_empty())
                .map(|(g, v)| {
                    let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
                    json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
                })
                .collect();
            groups.push(metrics::group());
            json_response(StatusCode::OK, &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        Route::ResourceList(g, v) => json_response(StatusCode::OK, &resource_list(g, v)),
        Route::Object(t) if writes => {
            let verb = parts.method.as_str().to_lowercase();
            let (res, ns, name, sub) = (t.res, t.namespace.clone(), t.name.clone(), t.sub.clone());
            let resp = object(ctx.clone(), t, &parts, payload, &query, access, as_table).await;
            if let Some(a) = &ctx.audit {
                let mut line = serde_json::to_vec(&json!({
                    "time": util::now_rfc3339(), "user": who.common_name, "groups": who.organizations,
                    "verb": verb, "group": res.group, "resource": res.plural, "subresource": sub,
                    "namespace": ns, "name": name, "code": resp.status().as_u16(),
                }))
                .expect("json serialises");
                line.push(b'\n');
                let _ = a.send(line).await;
            }
            resp
        }
        Route::Object(t) => object(ctx, t, &parts, payload, &query, access, as_table).await,
    }
}

/// A request body: still streaming in, or already read (by an authorisation check).
enum Payload {
    Stream(Incoming),
    Parsed(Value),
}

async fn object(ctx: Arc<Ctx>, t: Target, parts: &http::request::Parts, req: Payload, query: &std::collections::HashMap<String, String>, access: Access, as_table: bool) -> Response<Body> {
    let path = parts.uri.path().to_string();
    let method = parts.method.clone();
    match (method, &t.name, &t.sub) {
        (Method::GET, None, None) if is_true(query.get("watch")) => watch(ctx, t, &query, access).await,
        (Method::GET, None, None) => list(&ctx, &t, &query, access, as_table).await,
        (Method::GET, Some(name), None) => get(&ctx, &t, name, access, as_table).await,
        (Method::POST, None, None) => match body_json(req).await {
            Ok(obj) => create(&ctx, &t, obj).await,
            Err(resp) => resp,
        },
        (Method::PUT, Some(name), None) => match body_json(req).await {
            Ok(obj) => update(&ctx, &t, name, obj, false).await,
            Err(resp) => resp,
        },
        (Method::DELETE, Some(name), None) => {
            let options = match read_optional_json(req).await {
                Ok(o) => o,
                Err(resp) => return resp,
            };
            delete(&ctx, &t, name, options, query).await
        }
        (Method::GET, Some(name), Some(sub)) if sub == "status" && t.res.has(kapp_api::Subresource::Status) => get(&ctx, &t, name, access, as_table).await,
        (Method::PUT, Some(name), Some(sub)) if sub == "status" && t.res.has(kapp_api::Subresource::Status) => match body_json(req).await {
            Ok(obj) => update(&ctx, &t, name, obj, true).await,
            Err(resp) => resp,
        },
        (Method::POST, Some(name), Some(sub)) if sub == "binding" && t.res.has(kapp_api::Subresource::Binding) => match body_json(req).await {
            Ok(b) => bind(&ctx, &t, name, b).await,
            Err(resp) => resp,
        },
        (Method::POST, Some(_), Some(sub)) if sub == "apply" && t.res.has(kapp_api::Subresource::Apply) => match read_json(req, MAX_APPLY_BODY).await {
            Ok(Value::Null) => fail(400, "BadRequest", "the request needs a JSON body"),
            Ok(b) => apply::apply(&ctx, &t, b).await,
            Err(resp) => resp,
        },
        (Method::GET, Some(name), Some(sub)) if sub == "scale" && t.res.has(kapp_api::Subresource::Scale) => scale(&ctx, &t, name, None).await,
        (Method::PUT, Some(name), Some(sub)) if sub == "scale" && t.res.has(kapp_api::Subresource::Scale) => match body_json(req).await {
            Ok(b) => scale(&ctx, &t, name, Some((None, b))).await,
            Err(resp) => resp,
        },
        (Method::PATCH, Some(name), Some(sub)) if sub == "scale" && t.res.has(kapp_api::Subresource::Scale) => {
            let ct = parts.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let Some(kind) = patch::PatchType::from_content_type(&ct) else {
                return fail(415, "UnsupportedMediaType", &format!("unsupported patch type {ct:?}"));
            };
            match body_json(req).await {
                Ok(b) => scale(&ctx, &t, name, Some((Some(kind), b))).await,
                Err(resp) => resp,
            }
        }
        (Method::PATCH, Some(name), sub) if sub.is_none() || (sub.as_deref() == Some("status") && t.res.has(kapp_api::Subresource::Status)) => {
            let ct = parts.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let Some(kind) = patch::PatchType::from_content_type(&ct) else {
                return fail(415, "UnsupportedMediaType", &format!("the body of a patch must be a merge, JSON or strategic merge patch, not {ct:?}"));
            };
            match body_json(req).await {
                Ok(p) => patch_object(&ctx, &t, name, kind, &p, sub.is_some()).await,
                Err(resp) => resp,
            }
        }
        (m, _, Some(sub)) => fail(405, "MethodNotAllowed", &format!("{m} on subresource {sub} is not supported yet")),
        (m, _, _) => fail(405, "MethodNotAllowed", &format!("{m} is not supported on {path}")),
    }
}

fn is_true(v: Option<&String>) -> bool {
    matches!(v.map(String::as_str), Some("true") | Some("1"))
}

fn resource_list(group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.group == group && r.version == version) {
        resources.push(json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind,
            "shortNames": r.short_names,
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
        }));
        for s in r.subresources {
            resources.push(json!({"name": format!("{}/{}", r.plural, s.name()), "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get"]}));
        }
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

async fn body_json(req: Payload) -> Result<Value, Response<Body>> {
    match read_optional_json(req).await? {
        Value::Null => Err(fail(400, "BadRequest", "the request needs a JSON body")),
        v => Ok(v),
    }
}

/// A body that may be empty (DELETE's DeleteOptions).
async fn read_optional_json(req: Payload) -> Result<Value, Response<Body>> {
    read_json(req, MAX_BODY).await
}

/// A JSON body of at most `limit` bytes; `Null` when empty.
async fn read_json(req: Payload, limit: usize) -> Result<Value, Response<Body>> {
    let incoming = match req {
        Payload::Parsed(v) => return Ok(v),
        Payload::Stream(i) => i,
    };
    let bytes: Bytes = match kapp_tls::collect_limited(incoming, limit).await {
        Ok(b) => b,
        Err(e) => {
            let msg = format!("request body over {limit} bytes or unreadable: {e}");
            return Err(fail(413, "RequestEntityTooLarge", &msg));
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| fail(400, "BadRequest", &format!("the body is not JSON: {e}")))
}

/// An object as stored, with `resourceVersion` from the store; Secret data hidden from viewers.
fn decode_stored(ctx: &Ctx, kv: &KeyValue, rv: i64, access: Access) -> Option<Value> {
    let mut obj = decode(&ctx.codec, kv, rv)?;
    if access == Access::View {
        redact(&mut obj);
    }
    Some(obj)
}

/// A stored object as served, with its resourceVersion (`None`: unreadable, logged).
fn decode(codec: &codec::Codec, kv: &KeyValue, rv: i64) -> Option<Value> {
    let mut obj = match codec.decode(&kv.value) {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(key = %String::from_utf8_lossy(&kv.key), error = %e, "unreadable stored object");
            return None;
        }
    };
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    Some(obj)
}

/// What a viewer may see of an object: a Secret without its data.
fn redact(obj: &mut Value) -> bool {
    if obj["kind"] != "Secret" {
        return false;
    }
    if let Some(m) = obj.as_object_mut() {
        m.remove("data");
        m.remove("stringData");
    }
    true
}

fn object_key(t: &Target, name: &str) -> String {
    keys::object_key(t.res, t.namespace.as_deref().unwrap_or(""), name)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

async fn get(ctx: &Ctx, t: &Target, name: &str, access: Access, as_table: bool) -> Response<Body> {
    match ctx.store.get(object_key(t, name)).await {
        Err(e) => store_failure(e),
        Ok(None) => not_found(t, name),
        Ok(Some(kv)) => match decode_stored(ctx, &kv, kv.mod_revision, access) {
            Some(obj) if as_table => json_response(StatusCode::OK, &kapp_api::table::table(t.res.kind, &[obj], &kv.mod_revision.to_string(), None, unix_now())),
            Some(obj) => json_response(StatusCode::OK, &obj),
            None => fail(500, "InternalError", "stored object is not JSON"),
        },
    }
}

fn not_found(t: &Target, name: &str) -> Response<Body> {
    let what = if t.res.group.is_empty() { t.res.plural.to_string() } else { format!("{}.{}", t.res.plural, t.res.group) };
    json_response(StatusCode::NOT_FOUND, &status(404, "NotFound", &format!("{what} \"{name}\" not found"), Some(json!({"name": name, "group": t.res.group, "kind": t.res.plural}))))
}

fn selectors(query: &std::collections::HashMap<String, String>) -> Result<(Selector, Selector), Response<Body>> {
    let l = Selector::parse(query.get("labelSelector").map(String::as_str).unwrap_or("")).map_err(|e| fail(400, "BadRequest", &format!("labelSelector: {e}")))?;
    let f = Selector::parse(query.get("fieldSelector").map(String::as_str).unwrap_or("")).map_err(|e| fail(400, "BadRequest", &format!("fieldSelector: {e}")))?;
    Ok((l, f))
}

async fn list(ctx: &Ctx, t: &Target, query: &std::collections::HashMap<String, String>, access: Access, as_table: bool) -> Response<Body> {
    let (labels, fields) = match selectors(query) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let prefix = keys::list_prefix(t.res, t.namespace.as_deref());
    let limit: Option<u64> = query.get("limit").and_then(|l| l.parse().ok()).filter(|l| *l > 0);
    let cap = limit.unwrap_or(MAX_UNPAGED);
    // `continue` is the hex of the next key and the revision the first page was read at.
    let (start, revision) = match query.get("continue").filter(|c| !c.is_empty()) {
        None => (prefix.clone().into_bytes(), 0),
        Some(c) => match decode_continue(c) {
            Some(x) => x,
            None => return fail(400, "BadRequest", "invalid continue token"),
        },
    };
    let range_end = kapp_store_client::prefix_end(prefix.as_bytes());
    let page = cap.min(STORE_PAGE) + 1;
    let mut items = Vec::new();
    let mut next_key: Option<Vec<u8>> = None;
    let mut read_rev = revision;
    let mut cursor = start;
    // Read pages from the store until `cap` items matched or the prefix is done.
    loop {
        let req = RangeRequest { range: KeyRange { key: cursor.clone(), range_end: range_end.clone() }, limit: page, revision: read_rev, ..Default::default() };
        let resp = match ctx.store.range(req).await {
            Ok(r) => r,
            Err(e) => return store_failure(e),
        };
        if read_rev == 0 {
            read_rev = resp.revision;
        }
        let n = resp.kvs.len() as u64;
        for kv in resp.kvs {
            if items.len() as u64 == cap {
                next_key = Some(kv.key.clone());
                break;
            }
            cursor = kv.key.clone();
            cursor.push(0);
            if let Some(obj) = decode_stored(ctx, &kv, kv.mod_revision, access) {
                if labels.matches_labels(&obj) && fields.matches_fields(&obj) {
                    items.push(obj);
                }
            }
        }
        if next_key.is_some() || n < page {
            break;
        }
    }
    if limit.is_none() && next_key.is_some() {
        let msg = format!("more than {MAX_UNPAGED} {} match: list them in pages with limit and continue", t.res.plural);
        return json_response(StatusCode::PAYLOAD_TOO_LARGE, &status(413, "RequestEntityTooLarge", &msg, None));
    }
    let token = next_key.map(|k| encode_continue(&k, read_rev));
    if as_table {
        return json_response(StatusCode::OK, &kapp_api::table::table(t.res.kind, &items, &read_rev.to_string(), token.as_deref(), unix_now()));
    }
    let mut meta = json!({"resourceVersion": read_rev.to_string()});
    if let Some(c) = token {
        meta["continue"] = json!(c);
    }
    let list_kind = format!("{}List", t.res.kind);
    json_response(StatusCode::OK, &json!({"kind": list_kind, "apiVersion": t.res.api_version(), "metadata": meta, "items": items}))
}

fn encode_continue(key: &[u8], rev: i64) -> String {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("{rev}.{hex}")
}

fn decode_continue(c: &str) -> Option<(Vec<u8>, i64)> {
    let (rev, hex) = c.split_once('.')?;
    let rev: i64 = rev.parse().ok()?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let key = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok()).collect::<Option<Vec<u8>>>()?;
    Some((key, rev))
}

fn invalid(t: &Target, name: &str, errors: Vec<kapp_api::FieldError>) -> Response<Body> {
    let causes: Vec<Value> = errors
        .iter()
        .map(|e| json!({"reason": format!("Field{:?}", e.kind).replace("FieldTooLong", "FieldValueTooLong").replace("FieldInvalid", "FieldValueInvalid").replace("FieldRequired", "FieldValueRequired").replace("FieldForbidden", "FieldValueForbidden"), "message": e.to_string(), "field": e.field}))
        .collect();
    let msg = format!("{} \"{name}\" is invalid: {}", t.res.kind, errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", "));
    json_response(StatusCode::UNPROCESSABLE_ENTITY, &status(422, "Invalid", &msg, Some(json!({"name": name, "group": t.res.group, "kind": t.res.kind, "causes": causes}))))
}

/// Put the URL's namespace into the object, refusing a different one.
fn settle_namespace(t: &Target, obj: &mut Value) -> Result<(), Response<Body>> {
    if !t.res.namespaced {
        return Ok(());
    }
    let Some(ns) = &t.namespace else {
        return Err(fail(400, "BadRequest", &format!("{} is namespaced: use /namespaces/<ns>/{}", t.res.kind, t.res.plural)));
    };
    match obj["metadata"]["namespace"].as_str() {
        Some(b) if !b.is_empty() && b != ns => Err(fail(400, "BadRequest", &format!("the namespace of the object ({b}) does not match the namespace on the request ({ns})"))),
        _ => {
            if obj["metadata"].is_object() {
                obj["metadata"]["namespace"] = json!(ns);
            }
            Ok(())
        }
    }
}

async fn create(ctx: &Ctx, t: &Target, mut obj: Value) -> Response<Body> {
    if let Err(r) = settle_namespace(t, &mut obj) {
        return r;
    }
    generate_name(&mut obj);
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    if let Err(errors) = kapp_api::admit(t.res, &mut obj) {
        return invalid(t, &name, errors);
    }
    if let Some(r) = refuse_if_terminating(ctx, t).await {
        return r;
    }
    let fresh = stamp_new(t.res, obj);
    let key = object_key(t, &name);
    // A Service's addresses are claimed in the same transaction; a collision with another
    // Service's (rare: random picks) is retried with new picks.
    for _ in 0..WRITE_ATTEMPTS {
        let mut obj = fresh.clone();
        let (mut compare, mut ops) = (vec![Compare::absent(key.clone())], Vec::new());
        if t.res.kind == "Service" {
            match alloc::settle(None, &mut obj) {
                Ok((c, o)) => {
                    compare.extend(c);
                    ops.extend(o);
                }
                Err(errors) => return invalid(t, &name, errors),
            }
        }
        let value = ctx.codec.encode(t.res.kind, &obj);
        ops.push(Op::Put { key: key.clone().into_bytes(), value, prev_kv: false });
        match ctx.store.txn(Txn { compare, success: ops, failure: vec![] }).await {
            Err(e) => return store_failure(e),
            Ok(r) if r.succeeded => {
                obj["metadata"]["resourceVersion"] = json!(r.revision.to_string());
                return json_response(StatusCode::CREATED, &obj);
            }
            Ok(_) => match ctx.store.get(key.clone()).await {
                Err(e) => return store_failure(e),
                Ok(Some(_)) => return json_response(StatusCode::CONFLICT, &status(409, "AlreadyExists", &format!("{} \"{name}\" already exists", t.res.plural), Some(json!({"name": name, "kind": t.res.plural})))),
                // An address the client asked for is taken; a random pick is tried again.
                Ok(None) if fresh["spec"]["clusterIP"].as_str().is_some_and(|ip| !ip.is_empty() && ip != "None") => {
                    return invalid(t, &name, vec![kapp_api::FieldError { field: "spec.clusterIP".into(), kind: kapp_api::ErrorType::Invalid, detail: format!("{}: provided IP is already allocated", fresh["spec"]["clusterIP"]) }]);
                }
                Ok(None) if fresh["spec"]["ports"].as_array().is_some_and(|ps| ps.iter().any(|p| p["nodePort"].is_i64())) => {
                    return invalid(t, &name, vec![kapp_api::FieldError { field: "spec.ports[].nodePort".into(), kind: kapp_api::ErrorType::Invalid, detail: "provided port is already allocated".into() }]);
                }
                Ok(None) => continue,
            },
        }
    }
    fail(409, "Conflict", &format!("{} \"{name}\": no free address after {WRITE_ATTEMPTS} attempts", t.res.plural))
}

/// Kubernetes refuses new objects in a Namespace that is being deleted, so the namespace
/// controller's sweep ends.
async fn refuse_if_terminating(ctx: &Ctx, t: &Target) -> Option<Response<Body>> {
    let ns = t.namespace.as_deref().filter(|_| t.res.namespaced)?;
    let res = kapp_api::resource::by_kind("v1", "Namespace")?;
    let kv = ctx.store.get(keys::object_key(res, "", ns)).await.ok()??;
    let obj = ctx.codec.decode(&kv.value).ok()?;
    obj["metadata"]["deletionTimestamp"].is_string().then(|| {
        fail(403, "Forbidden", &format!("{} in namespace {ns:?}: unable to create new content in namespace {ns} because it is being terminated", t.res.plural))
    })
}

/// Read-modify-write attempts before a write that keeps racing gives up.
const WRITE_ATTEMPTS: usize = 5;

/// What a write makes of the stored object.
enum Change {
    /// The new object (validated and stored if the stored object is still `mod_revision`).
    To(Value),
    /// Remove the object (if the stored object is still `mod_revision`).
    Delete,
    /// Refuse with this response.
    Refuse(Response<Body>),
}

/// Read the object, let `change` compute its new state, validate, and store it if nobody
/// wrote in between (`expect`: the resourceVersion the client based its change on, if it
/// gave one); retried on races when the client gave none.
async fn rewrite(ctx: &Ctx, t: &Target, name: &str, expect: Option<i64>, change: impl Fn(&Value) -> Change) -> Response<Body> {
    let key = object_key(t, name);
    for _ in 0..WRITE_ATTEMPTS {
        let current = match ctx.store.get(key.clone()).await {
            Err(e) => return store_failure(e),
            Ok(None) => return not_found(t, name),
            Ok(Some(kv)) => kv,
        };
        let stored: Value = match ctx.codec.decode(&current.value) {
            Ok(v) => v,
            Err(e) => return fail(500, "InternalError", &e.to_string()),
        };
        let mut obj = match change(&stored) {
            Change::To(o) => o,
            Change::Refuse(r) => return r,
            Change::Delete => Value::Null,
        };
        // Once deletion started it cannot be undone; the last finalizer removed finishes it.
        if let Some(ts) = stored["metadata"].get("deletionTimestamp").filter(|v| v.is_string()) {
            if obj.is_object() {
                obj["metadata"]["deletionTimestamp"] = ts.clone();
            }
        }
        let finished = obj.is_null()
            || (obj["metadata"]["deletionTimestamp"].is_string()
                && obj["metadata"]["finalizers"].as_array().is_none_or(Vec::is_empty)
                && obj["metadata"]["deletionGracePeriodSeconds"].as_i64().is_none_or(|g| g == 0));
        if finished {
            let mut success = vec![Op::Delete { range: KeyRange::single(key.clone()), prev_kv: false }];
            if t.res.kind == "Service" {
                success.extend(alloc::release(&stored));
            }
            let txn = Txn { compare: vec![Compare::mod_revision(key.clone(), expect.unwrap_or(current.mod_revision))], success, failure: vec![] };
            match ctx.store.txn(txn).await {
                Err(e) => return store_failure(e),
                Ok(r) if r.succeeded => {
                    let mut last = stored;
                    last["metadata"]["resourceVersion"] = json!(r.revision.to_string());
                    return json_response(StatusCode::OK, &last);
                }
                Ok(_) if expect.is_some() => break,
                Ok(_) => continue,
            }
        }
        if let Err(r) = settle_namespace(t, &mut obj) {
            return r;
        }
        if obj["metadata"]["name"].as_str() != Some(name) {
            return fail(400, "BadRequest", &format!("the name of the object does not match the name on the URL ({name})"));
        }
        if let Err(errors) = kapp_api::admit(t.res, &mut obj) {
            return invalid(t, name, errors);
        }
        let meta = obj["metadata"].as_object_mut().expect("validated: metadata is a map");
        meta.remove("resourceVersion");
        meta.insert("uid".into(), stored["metadata"]["uid"].clone());
        meta.insert("creationTimestamp".into(), stored["metadata"]["creationTimestamp"].clone());
        let base = expect.unwrap_or(current.mod_revision);
        let (mut compare, mut success) = (vec![Compare::mod_revision(key.clone(), base)], Vec::new());
        if t.res.kind == "Service" {
            match alloc::settle(Some(&stored), &mut obj) {
                Ok((c, o)) => {
                    compare.extend(c);
                    success.extend(o);
                }
                Err(errors) => return invalid(t, name, errors),
            }
        }
        let value = ctx.codec.encode(t.res.kind, &obj);
        success.push(Op::Put { key: key.clone().into_bytes(), value, prev_kv: false });
        let txn = Txn { compare, success, failure: vec![] };
        match ctx.store.txn(txn).await {
            Err(e) => return store_failure(e),
            Ok(r) if r.succeeded => {
                obj["metadata"]["resourceVersion"] = json!(r.revision.to_string());
                return json_response(StatusCode::OK, &obj);
            }
            Ok(_) if expect.is_some() => break,
            Ok(_) => continue,
        }
    }
    json_response(StatusCode::CONFLICT, &status(409, "Conflict", &format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", t.res.plural), None))
}

/// The resourceVersion a client's object says it was based on.
fn expected_version(obj: &Value) -> Result<Option<i64>, Response<Body>> {
    match obj["metadata"]["resourceVersion"].as_str() {
        None | Some("") => Ok(None),
        Some(rv) => rv.parse::<i64>().map(Some).map_err(|_| fail(400, "BadRequest", &format!("metadata.resourceVersion {rv:?} is not a resource version"))),
    }
}

/// A validated object about to be created: a new uid and creationTimestamp, no
/// resourceVersion or deletion marks, and no status for kinds whose status is written
/// through the status subresource only (as in Kubernetes).
fn stamp_new(res: &Resource, mut obj: Value) -> Value {
    if res.has(kapp_api::Subresource::Status) {
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
    }
    let meta = obj["metadata"].as_object_mut().expect("validated: metadata is a map");
    for k in ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"] {
        meta.remove(k);
    }
    meta.insert("uid".into(), json!(util::uuid4()));
    meta.insert("creationTimestamp".into(), json!(util::now_rfc3339()));
    meta.insert("generation".into(), json!(1));
    obj
}

/// `metadata.generateName` without a name: the prefix plus five random characters from
/// Kubernetes' alphabet (no vowels, no look-alikes). A collision is a 409 the client retries,
/// as with Kubernetes.
fn generate_name(obj: &mut Value) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else { return };
    if meta.get("name").and_then(Value::as_str).is_some_and(|n| !n.is_empty()) {
        return;
    }
    let Some(prefix) = meta.get("generateName").and_then(Value::as_str) else { return };
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let suffix: String = (0..5).map(|_| ALPHABET[rand::random::<usize>() % ALPHABET.len()] as char).collect();
    let name = format!("{prefix}{suffix}");
    meta.insert("name".into(), json!(name));
}

/// `metadata.generation` counts changes of the desired state: everything but metadata and
/// status. Status writes and metadata-only writes keep it.
fn next_generation(stored: &Value, new: &mut Value) {
    let old = stored["metadata"]["generation"].as_i64().unwrap_or(1);
    let desired = |v: &Value| -> Vec<(String, Value)> {
        v.as_object()
            .map(|m| m.iter().filter(|(k, _)| !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")).map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    };
    let mut a = desired(stored);
    let mut b = desired(new);
    a.sort_by(|x, y| x.0.cmp(&y.0));
    b.sort_by(|x, y| x.0.cmp(&y.0));
    let generation = if a == b { old } else { old + 1 };
    if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("generation".into(), json!(generation));
    }
}

/// A write of the main resource (update, patch, Apply): `metadata.generation` follows the
/// desired state, and for kinds with a status subresource the status stays as stored (the
/// status subresource changes nothing else).
fn keep_status(res: &Resource, stored: &Value, mut new: Value) -> Value {
    next_generation(stored, &mut new);
    if res.has(kapp_api::Subresource::Status) {
        match stored.get("status") {
            Some(st) => new["status"] = st.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
    new
}

fn only_status(stored: &Value, new: &Value) -> Value {
    let mut out = stored.clone();
    out["status"] = new.get("status").cloned().unwrap_or(Value::Null);
    out
}

/// PUT of the main resource (`status: false`) or of its status subresource: based on the
/// resourceVersion the client sent, if any.
async fn update(ctx: &Ctx, t: &Target, name: &str, obj: Value, status: bool) -> Response<Body> {
    let expect = match expected_version(&obj) {
        Ok(e) => e,
        Err(r) => return r,
    };
    rewrite(ctx, t, name, expect, |stored| Change::To(if status { only_status(stored, &obj) } else { keep_status(t.res, stored, obj.clone()) })).await
}

async fn patch_object(ctx: &Ctx, t: &Target, name: &str, kind: patch::PatchType, p: &Value, status_only: bool) -> Response<Body> {
    rewrite(ctx, t, name, None, |stored| match patch::apply(kind, stored, p) {
        Ok(o) if status_only => Change::To(only_status(stored, &o)),
        Ok(o) => Change::To(keep_status(t.res, stored, o)),
        Err(e) => Change::Refuse(fail(422, "Invalid", &format!("the patch cannot be applied: {e}"))),
    })
    .await
}

/// The `autoscaling/v1` Scale view of a workload.
fn scale_of(obj: &Value) -> Value {
    let sel = obj["spec"]["selector"]["matchLabels"].as_object().map(|m| {
        m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(",")
    });
    json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": obj["metadata"].clone(),
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": sel.unwrap_or_default()},
    })
}

/// `…/scale`: read or change a workload's replicas through its Scale view.
async fn scale(ctx: &Ctx, t: &Target, name: &str, change: Option<(Option<patch::PatchType>, Value)>) -> Response<Body> {
    let Some((kind, body)) = change else {
        return match ctx.store.get(object_key(t, name)).await {
            Err(e) => store_failure(e),
            Ok(None) => not_found(t, name),
            Ok(Some(kv)) => match decode_stored(ctx, &kv, kv.mod_revision, Access::Read) {
                Some(obj) => json_response(StatusCode::OK, &scale_of(&obj)),
                None => fail(500, "InternalError", "stored object is unreadable"),
            },
        };
    };
    let resp = rewrite(ctx, t, name, None, |stored| {
        let wanted = match kind {
            Some(k) => patch::apply(k, &scale_of(stored), &body),
            None => Ok(body.clone()),
        };
        match wanted.map(|s| s["spec"]["replicas"].as_i64()) {
            Ok(Some(n)) if n >= 0 => {
                let mut o = stored.clone();
                o["spec"]["replicas"] = json!(n);
                Change::To(o)
            }
            Ok(_) => Change::Refuse(fail(422, "Invalid", "spec.replicas: Invalid value: must be a non-negative integer")),
            Err(e) => Change::Refuse(fail(422, "Invalid", &format!("the patch cannot be applied: {e}"))),
        }
    })
    .await;
    if resp.status() != StatusCode::OK {
        return resp;
    }
    let bytes = resp.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let obj: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    json_response(StatusCode::OK, &scale_of(&obj))
}

/// `pods/binding`: the scheduler's way to put a pod on a node, once.
async fn bind(ctx: &Ctx, t: &Target, name: &str, binding: Value) -> Response<Body> {
    let Some(node) = binding["target"]["name"].as_str().filter(|n| !n.is_empty()).map(String::from) else {
        return fail(422, "Invalid", "target.name: Required value: the node to bind to");
    };
    let resp = rewrite(ctx, t, name, None, |stored| match stored["spec"]["nodeName"].as_str() {
        Some(n) if !n.is_empty() => Change::Refuse(json_response(StatusCode::CONFLICT, &status(409, "Conflict", &format!("pod {name} is already assigned to node {n:?}"), None))),
        _ => {
            let mut o = stored.clone();
            o["spec"]["nodeName"] = json!(node);
            Change::To(o)
        }
    })
    .await;
    if resp.status() == StatusCode::OK {
        return json_response(StatusCode::CREATED, &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}));
    }
    resp
}

/// DELETE: objects without finalizers go at once; with finalizers (or a Foreground/Orphan
/// propagation policy, which adds one) they get a `deletionTimestamp` and go when the last
/// finalizer is removed. A pod on a node is deleted gracefully: marked with a grace period
/// for its kubelet to stop it, unless `gracePeriodSeconds` is 0.
/// A deleted Namespace waits, Terminating, until the namespace controller has removed
/// everything inside and this finalizer.
const NAMESPACE_FINALIZER: &str = "kubernetes";

/// Add the namespace controller's finalizer and phase Terminating to a Namespace.
pub(crate) fn mark_namespace_terminating(ns: &mut Value) {
    let mut finalizers: Vec<Value> = ns["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
    if !finalizers.iter().any(|x| x == NAMESPACE_FINALIZER) {
        finalizers.push(json!(NAMESPACE_FINALIZER));
    }
    ns["metadata"]["finalizers"] = json!(finalizers);
    ns["status"]["phase"] = json!("Terminating");
}

async fn delete(ctx: &Ctx, t: &Target, name: &str, options: Value, query: &std::collections::HashMap<String, String>) -> Response<Body> {
    let policy = options["propagationPolicy"].as_str().or(query.get("propagationPolicy").map(String::as_str)).unwrap_or("Background").to_string();
    if !["Background", "Foreground", "Orphan"].contains(&policy.as_str()) {
        return fail(400, "BadRequest", &format!("propagationPolicy {policy:?} is not Background, Foreground or Orphan"));
    }
    let grace = options["gracePeriodSeconds"].as_i64().or(query.get("gracePeriodSeconds").and_then(|g| g.parse().ok()));
    let precondition_uid = options["preconditions"]["uid"].as_str().map(str::to_string);
    rewrite(ctx, t, name, None, |stored| {
        if let Some(uid) = &precondition_uid {
            if stored["metadata"]["uid"].as_str() != Some(uid.as_str()) {
                return Change::Refuse(fail(409, "Conflict", &format!("{} \"{name}\": precondition failed: UID in precondition: {uid}, UID in object meta: {}", t.res.plural, stored["metadata"]["uid"].as_str().unwrap_or(""))));
            }
        }
        let mut o = stored.clone();
        let mut finalizers: Vec<Value> = o["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
        let extra = match policy.as_str() {
            "Foreground" => Some("foregroundDeletion"),
            "Orphan" => Some("orphan"),
            _ => None,
        };
        if let Some(f) = extra {
            if !finalizers.iter().any(|x| x == f) {
                finalizers.push(json!(f));
            }
        }
        if t.res.kind == "Namespace" {
            o["metadata"]["finalizers"] = json!(finalizers);
            mark_namespace_terminating(&mut o);
            finalizers = o["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
        }
        let on_node = t.res.kind == "Pod" && stored["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty());
        let period = grace.unwrap_or_else(|| stored["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap_or(30)).max(0);
        let graceful = on_node && period > 0;
        if finalizers.is_empty() && !graceful {
            return Change::Delete;
        }
        if !o["metadata"]["deletionTimestamp"].is_string() {
            o["metadata"]["deletionTimestamp"] = json!(util::now_rfc3339());
        }
        o["metadata"]["deletionGracePeriodSeconds"] = json!(if graceful { period } else { 0 });
        o["metadata"]["finalizers"] = json!(finalizers);
        Change::To(o)
    })
    .await
}

async fn watch(ctx: Arc<Ctx>, t: Target, query: &std::collections::HashMap<String, String>, access: Access) -> Response<Body> {
    let (labels, fields) = match selectors(query) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let rv: i64 = match query.get("resourceVersion").filter(|v| !v.is_empty()) {
        None => 0,
        Some(v) => match v.parse() {
            Ok(x) => x,
            Err(_) => return fail(400, "BadRequest", &format!("resourceVersion {v:?} is not a resource version")),
        },
    };
    let timeout = query.get("timeoutSeconds").and_then(|s| s.parse::<u64>().ok()).map(Duration::from_secs);
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let w = Watcher {
        prefix: keys::list_prefix(t.res, t.namespace.as_deref()),
        res: t.res,
        labels,
        fields,
        access,
        bookmarks: is_true(query.get("allowWatchBookmarks")),
        tx,
        ctx,
    };
    tokio::spawn(async move {
        let work = async {
            // No resourceVersion (or "0"): start with the current objects as ADDED events.
            let mut cursor = rv;
            if rv == 0 {
                let resp = match w.ctx.store.range(RangeRequest { range: KeyRange::prefix(w.prefix.clone()), ..Default::default() }).await {
                    Ok(r) => r,
                    Err(_) => return,
                };
                for kv in &resp.kvs {
                    if let Some(obj) = decode_stored(&w.ctx, kv, kv.mod_revision, access) {
                        if w.admits(&obj) && w.tx.send(cache::line("ADDED", &obj)).await.is_err() {
                            return;
                        }
                    }
                }
                cursor = resp.revision;
            }
            if let Some(feed) = w.ctx.cache.feed(&keys::list_prefix(w.res, None), cursor).await {
                match w.from_feed(&feed, cursor).await {
                    Some(c) => cursor = c,
                    None => return,
                }
            }
            w.from_store(cursor).await;
        };
        match timeout {
            Some(d) => {
                let _ = tokio::time::timeout(d, work).await;
            }
            None => work.await,
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(kapp_tls::stream_body(rx))
        .expect("valid response")
}

/// One watch: which keys and objects it wants, what its client may see, where lines go.
struct Watcher {
    ctx: Arc<Ctx>,
    res: &'static Resource,
    prefix: String,
    labels: Selector,
    fields: Selector,
    access: Access,
    bookmarks: bool,
    tx: mpsc::Sender<Bytes>,
}

impl Watcher {
    fn admits(&self, obj: &Value) -> bool {
        self.labels.matches_labels(obj) && self.fields.matches_fields(obj)
    }

    fn bookmark(&self, rev: i64) -> Bytes {
        cache::line("BOOKMARK", &json!({"kind": self.res.kind, "apiVersion": self.res.api_version(), "metadata": {"resourceVersion": rev.to_string()}}))
    }

    /// Follow the shared feed from `cursor`. `Some(cursor)` when the rest must come from the
    /// store (the feed does not reach back that far, or it ended); `None` when the client left.
    async fn from_feed(&self, feed: &cache::Feed, mut cursor: i64) -> Option<i64> {
        let mut changed = feed.subscribe();
        let mut quiet = tokio::time::interval_at(tokio::time::Instant::now() + self.ctx.bookmark_interval, self.ctx.bookmark_interval);
        loop {
            changed.borrow_and_update();
            let (events, at) = match feed.read_after(cursor) {
                cache::Read::Behind => return Some(cursor),
                cache::Read::Events(e, at) => (e, at),
            };
            let mut sent = false;
            for e in events {
                if !e.key.starts_with(self.prefix.as_bytes()) || !self.admits(&e.obj) {
                    continue;
                }
                let line = if self.access == Access::View && e.obj["kind"] == "Secret" {
                    let mut obj = e.obj.clone();
                    redact(&mut obj);
                    cache::line(e.ty, &obj)
                } else {
                    e.line.clone()
                };
                self.tx.send(line).await.ok()?;
                sent = true;
            }
            cursor = at;
            if sent {
                quiet.reset();
            }
            tokio::select! {
                r = changed.changed() => {
                    if r.is_err() {
                        return Some(cursor);
                    }
                }
                _ = quiet.tick(), if self.bookmarks => self.tx.send(self.bookmark(cursor)).await.ok()?,
                _ = self.tx.closed() => return None,
            }
        }
    }

    /// Follow a store watch of our own from after `cursor` until the client leaves or the
    /// store refuses (410 once compacted).
    async fn from_store(&self, cursor: i64) {
        let ctx = &self.ctx;
        let mut w = ctx.store.watch(KeyRange::prefix(self.prefix.clone()), cursor + 1, self.bookmarks.then_some(ctx.bookmark_interval));
        loop {
            // (line, whether the watch ends with it)
            let (line, last) = match w.next().await {
                Ok(WatchItem::Events(evs)) => {
                    for ev in evs {
                        let Some((ty, mut obj)) = cache::event(&ctx.codec, &ev) else { continue };
                        if self.access == Access::View {
                            redact(&mut obj);
                        }
                        if self.admits(&obj) && self.tx.send(cache::line(ty, &obj)).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
                Ok(WatchItem::Progress(rev)) if self.bookmarks => (self.bookmark(rev), false),
                Ok(WatchItem::Progress(_)) => continue,
                Err(StoreError::Refused(Refusal::Compacted { compacted, .. })) => {
                    (cache::line("ERROR", &status(410, "Expired", &format!("too old resource version: {cursor} ({compacted})"), None)), true)
                }
                Err(e) => (cache::line("ERROR", &status(500, "InternalError", &e.to_string(), None)), true),
            };
            if self.tx.send(line).await.is_err() || last {
                return;
            }
        }
    }
}
