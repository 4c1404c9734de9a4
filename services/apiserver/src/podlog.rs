//! `GET /api/v1/namespaces/<ns>/pods/<name>/log`: a container's log, proxied from the kubelet
//! of the pod's node (`GET /containerLogs/<ns>/<pod>/<container>` over mutual TLS).
//!
//! The pod names its node (`spec.nodeName`); the Node object its kubelet: the InternalIP of
//! `status.addresses` and `status.daemonEndpoints.kubeletEndpoint.Port` (10250 when unset).
//! The apiserver connects with its own identity and accepts only a certificate of the cluster
//! CA that IS that node (`system:node:<node>` in `kapp:nodes`): node certificates need not
//! name an address, so the usual host name check would be the wrong one.
//!
//! The kubelet does `follow`, `previous`, `timestamps` and `tailLines`. The apiserver does
//! `sinceSeconds`/`sinceTime` (it asks the kubelet for timestamps and drops older lines) and
//! `limitBytes` (the first N bytes, as Kubernetes). The body streams through a small bounded
//! channel until the client goes or the kubelet ends it; at most [`MAX_LOG_STREAMS`] are open
//! per apiserver (429 beyond).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use kapp_store_client::StoreError;
use kapp_tls::{Body, H2Client, Identity, Pem};
use serde_json::Value;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::{authz, store_failure, Ctx, Target};

/// Log streams open at once per apiserver; more are refused with 429.
pub const MAX_LOG_STREAMS: usize = 256;
/// The kubelet's port when its Node does not report one (Kubernetes' default).
pub const DEFAULT_KUBELET_PORT: u16 = 10250;
/// Time allowed to reach a kubelet (TCP, TLS, HTTP/2).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for the kubelet's answer to begin, connecting included.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest kubelet refusal passed on as a message.
const MAX_REFUSAL: usize = 64 << 10;
/// Chunks in flight between the kubelet and the client.
const CHANNEL_CHUNKS: usize = 8;
/// Longest time stamp looked for at the start of a line (RFC 3339 with nanoseconds and an
/// offset is 35 bytes).
const MAX_STAMP: usize = 64;
/// Kubelet clients kept (one HTTP/2 connection each, shared by that node's streams); the
/// cache is emptied when it would grow beyond this.
const MAX_KUBELET_CLIENTS: usize = 1024;

/// What a log request may fail with; each maps to Kubernetes' status code.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{field}: {value:?} is not {expected}")]
    BadParameter { field: &'static str, value: String, expected: &'static str },
    #[error("PodLogOptions \"{pod}\" is invalid: {field}: Invalid value: {value}: {why}")]
    Invalid { pod: String, field: &'static str, value: String, why: &'static str },
    #[error("PodLogOptions \"{pod}\" is invalid: at most one of `sinceTime` or `sinceSeconds` may be specified")]
    TwoSinces { pod: String },
    #[error("a container name must be specified for pod {pod}")]
    NoContainers { pod: String },
    #[error("a container name must be specified for pod {pod}, choose one of: [{}]", .choices.join(" "))]
    ContainerRequired { pod: String, choices: Vec<String> },
    #[error("container {container} is not valid for pod {pod}")]
    InvalidContainer { pod: String, container: String },
    #[error("pod {pod} does not have a host assigned")]
    NoHost { pod: String },
    #[error("user {user:?} may not read the logs of pod {pod:?}: it is not bound to node {node:?}")]
    OtherNode { user: String, pod: String, node: String },
    #[error("nodes \"{node}\" not found")]
    NodeNotFound { node: String },
    #[error("node {node:?} reports no InternalIP address in status.addresses")]
    NoAddress { node: String },
    #[error("all {max} log streams of this apiserver are in use; try again later")]
    Busy { max: usize },
    #[error("the kubelet of node {node:?} at {addr}: {source}")]
    Unreachable { node: String, addr: String, source: kapp_tls::TlsError },
    #[error("the kubelet of node {node:?} at {addr} did not answer within {ANSWER_TIMEOUT:?}")]
    NoAnswer { node: String, addr: String },
    /// The kubelet's own refusal, passed on with its status code.
    #[error("{message}")]
    Kubelet { code: u16, message: String },
    #[error("stored {what} is unreadable")]
    Unreadable { what: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl LogError {
    /// The Kubernetes `Status` answer.
    pub fn response(self) -> Response<Body> {
        let e = match self {
            LogError::Store(e) => return store_failure(e),
            e => e,
        };
        let (code, reason) = match &e {
            LogError::Store(_) => unreachable!("answered above"),
            LogError::Invalid { .. } | LogError::TwoSinces { .. } => (422, "Invalid"),
            LogError::BadParameter { .. } | LogError::NoContainers { .. } | LogError::ContainerRequired { .. } | LogError::InvalidContainer { .. } | LogError::NoHost { .. } => (400, "BadRequest"),
            LogError::OtherNode { .. } => (403, "Forbidden"),
            LogError::NodeNotFound { .. } => (404, "NotFound"),
            LogError::Busy { .. } => (429, "TooManyRequests"),
            // As Kubernetes: the apiserver is fine, so not 503 (which clients retry at length).
            LogError::NoAddress { .. } | LogError::Unreachable { .. } | LogError::NoAnswer { .. } | LogError::Unreadable { .. } => (500, "InternalError"),
            LogError::Kubelet { code, .. } => (*code, reason_of(*code)),
        };
        let mut resp = crate::fail(code, reason, &e.to_string());
        if code == 429 {
            resp.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
        }
        resp
    }
}

fn reason_of(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        403 => "Forbidden",
        404 => "NotFound",
        _ => "InternalError",
    }
}

/// The query of a log request, checked.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub container: Option<String>,
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<u64>,
    pub limit_bytes: Option<u64>,
    /// Only lines stamped at or after this time (Unix seconds, nanoseconds).
    pub since: Option<(i64, u32)>,
}

/// A query flag as Kubernetes reads it: absent is false; `0`, `false`, `off`, `no` (any case)
/// are false; any other value, even empty, is true.
fn flag(query: &HashMap<String, String>, key: &str) -> bool {
    query.get(key).is_some_and(|v| !["0", "false", "off", "no"].iter().any(|f| v.eq_ignore_ascii_case(f)))
}

fn integer(query: &HashMap<String, String>, field: &'static str) -> Result<Option<i64>, LogError> {
    query.get(field).map(|v| v.parse::<i64>().map_err(|_| LogError::BadParameter { field, value: v.clone(), expected: "an integer" })).transpose()
}

/// Parse the query of a log request for pod `pod` at time `now` (Unix seconds). Pure.
/// `insecureSkipTLSVerifyBackend` and unknown parameters are ignored.
pub fn parse_options(pod: &str, query: &HashMap<String, String>, now: i64) -> Result<LogOptions, LogError> {
    let invalid = |field: &'static str, value: i64, why: &'static str| LogError::Invalid { pod: pod.to_string(), field, value: value.to_string(), why };
    let tail_lines = match integer(query, "tailLines")? {
        Some(n) if n < 0 => return Err(invalid("tailLines", n, "must be greater than or equal to 0")),
        n => n.map(|n| n as u64),
    };
    let limit_bytes = match integer(query, "limitBytes")? {
        Some(n) if n < 1 => return Err(invalid("limitBytes", n, "must be greater than 0")),
        n => n.map(|n| n as u64),
    };
    let since_seconds = match integer(query, "sinceSeconds")? {
        Some(n) if n < 1 => return Err(invalid("sinceSeconds", n, "must be greater than 0")),
        n => n,
    };
    let since_time = match query.get("sinceTime").filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => Some(parse_time(v).ok_or_else(|| LogError::BadParameter { field: "sinceTime", value: v.clone(), expected: "an RFC 3339 time" })?),
    };
    let since = match (since_seconds, since_time) {
        (Some(_), Some(_)) => return Err(LogError::TwoSinces { pod: pod.to_string() }),
        (Some(s), None) => Some((now.saturating_sub(s), 0)),
        (None, t) => t,
    };
    Ok(LogOptions {
        container: query.get("container").filter(|c| !c.is_empty()).cloned(),
        follow: flag(query, "follow"),
        previous: flag(query, "previous"),
        timestamps: flag(query, "timestamps"),
        tail_lines,
        limit_bytes,
        since,
    })
}

/// An RFC 3339 time (`2024-05-01T10:00:00Z`, `…T10:00:00.123456789+02:00`) as Unix seconds
/// and nanoseconds. Pure.
pub fn parse_time(s: &str) -> Option<(i64, u32)> {
    let b = s.as_bytes();
    let shape_ok = b.len() >= 20 && [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')].iter().all(|(i, c)| b[*i] == *c) && b[10].eq_ignore_ascii_case(&b'T');
    if !shape_ok || !b[..19].iter().enumerate().all(|(i, c)| [4, 7, 10, 13, 16].contains(&i) || c.is_ascii_digit()) {
        return None;
    }
    let secs = kapp_api::table::parse_rfc3339(&format!("{}Z", &s[..19]))?;
    let mut rest = &s[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        nanos = frac[..digits].parse::<u32>().ok()? * 10u32.pow(9 - digits as u32);
        rest = &frac[digits..];
    }
    let offset = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] if [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit()) => {
            let minutes = i64::from((h1 - b'0') * 10 + (h2 - b'0')) * 60 + i64::from((m1 - b'0') * 10 + (m2 - b'0'));
            if *sign == b'+' {
                minutes * 60
            } else {
                -minutes * 60
            }
        }
        _ => return None,
    };
    Some((secs - offset, nanos))
}

/// The container to read: the one asked for (any init, app or ephemeral container of the
/// pod), else the pod's only app container. Pure; Kubernetes' messages.
pub fn choose_container(pod_name: &str, pod: &Value, asked: Option<&str>) -> Result<String, LogError> {
    let names = |field: &str| -> Vec<String> { pod["spec"][field].as_array().map(|a| a.iter().filter_map(|c| c["name"].as_str().map(String::from)).collect()).unwrap_or_default() };
    let app = names("containers");
    let all: Vec<String> = names("initContainers").into_iter().chain(app.iter().cloned()).chain(names("ephemeralContainers")).collect();
    match asked {
        Some(c) if all.iter().any(|n| n == c) => Ok(c.to_string()),
        Some(c) => Err(LogError::InvalidContainer { pod: pod_name.to_string(), container: c.to_string() }),
        None => match app.as_slice() {
            [only] => Ok(only.clone()),
            [] => Err(LogError::NoContainers { pod: pod_name.to_string() }),
            _ => Err(LogError::ContainerRequired { pod: pod_name.to_string(), choices: all }),
        },
    }
}

/// `host:port` of a Node's kubelet: its InternalIP and reported port. Pure.
pub fn kubelet_address(node_name: &str, node: &Value) -> Result<String, LogError> {
    let ip = node["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["type"] == "InternalIP"))
        .and_then(|x| x["address"].as_str())
        .and_then(|a| a.parse::<std::net::IpAddr>().ok())
        .ok_or_else(|| LogError::NoAddress { node: node_name.to_string() })?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_KUBELET_PORT);
    Ok(std::net::SocketAddr::new(ip, port).to_string())
}

/// The kubelet request for these options. `limitBytes` stays with the apiserver (the kubelet
/// would keep the newest bytes, Kubernetes the first); with a `since`, time stamps are asked
/// for, to filter on. Pure.
pub fn kubelet_uri(namespace: &str, pod: &str, container: &str, o: &LogOptions) -> String {
    let mut q = Vec::new();
    for (key, on) in [("follow", o.follow), ("previous", o.previous), ("timestamps", o.timestamps || o.since.is_some())] {
        if on {
            q.push(format!("{key}=true"));
        }
    }
    if let Some(n) = o.tail_lines {
        q.push(format!("tailLines={n}"));
    }
    let query = if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) };
    format!("/containerLogs/{namespace}/{pod}/{container}{query}")
}

enum Line {
    /// At the start of a line: the time stamp read so far.
    Stamp(Vec<u8>),
    Keep,
    Skip,
}

/// What the apiserver does to the kubelet's text on its way: with a `since`, drops lines
/// stamped before it and strips the stamps the client did not ask for; with a limit, stops
/// after that many bytes. Works chunk by chunk, holding at most one time stamp. Pure.
pub struct Shaper {
    since: Option<(i64, u32)>,
    strip: bool,
    left: Option<u64>,
    line: Line,
}

impl Shaper {
    pub fn new(o: &LogOptions) -> Shaper {
        Shaper { since: o.since, strip: !o.timestamps, left: o.limit_bytes, line: Line::Stamp(Vec::new()) }
    }

    /// The limit is reached: nothing more will be let through.
    pub fn done(&self) -> bool {
        self.left == Some(0)
    }

    /// The part of `chunk` to send on.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = match self.since {
            None => chunk.to_vec(),
            Some(since) => self.filter(since, chunk),
        };
        if let Some(left) = &mut self.left {
            out.truncate(usize::try_from(*left).unwrap_or(usize::MAX));
            *left -= out.len() as u64;
        }
        out
    }

    fn filter(&mut self, since: (i64, u32), mut rest: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(rest.len());
        while !rest.is_empty() {
            match &mut self.line {
                Line::Stamp(stamp) => {
                    let end = rest.iter().position(|b| *b == b' ' || *b == b'\n');
                    let take = end.unwrap_or(rest.len());
                    stamp.extend_from_slice(&rest[..take]);
                    if end.is_none() && stamp.len() <= MAX_STAMP {
                        break;
                    }
                    // The stamp is complete (or too long to be one): decide on the line.
                    let stamp = std::mem::take(stamp);
                    let at = std::str::from_utf8(&stamp).ok().and_then(parse_time);
                    let ends_stamp = end.is_some_and(|i| rest[i] == b' ');
                    rest = &rest[take + usize::from(ends_stamp)..];
                    if at.is_some_and(|t| t < since) {
                        self.line = Line::Skip;
                    } else {
                        // A stamp the client wants, or no stamp at all (text, kept whole).
                        if at.is_none() || !self.strip {
                            out.extend_from_slice(&stamp);
                            if ends_stamp {
                                out.push(b' ');
                            }
                        }
                        self.line = Line::Keep;
                    }
                }
                Line::Keep | Line::Skip => {
                    let end = rest.iter().position(|b| *b == b'\n').map(|i| i + 1);
                    let take = end.unwrap_or(rest.len());
                    if matches!(self.line, Line::Keep) {
                        out.extend_from_slice(&rest[..take]);
                    }
                    rest = &rest[take..];
                    if end.is_some() {
                        self.line = Line::Stamp(Vec::new());
                    }
                }
            }
        }
        out
    }
}

/// One HTTP/2 client per kubelet (node and address), shared by that node's log streams, and
/// the bound on open streams.
pub struct Kubelets {
    identity: Pem,
    max_streams: usize,
    clients: Mutex<HashMap<(String, String), H2Client>>,
    streams: Arc<Semaphore>,
}

impl Kubelets {
    pub fn new(identity: Pem, max_streams: usize) -> Kubelets {
        Kubelets { identity, max_streams, clients: Mutex::default(), streams: Arc::new(Semaphore::new(max_streams)) }
    }

    /// A place among the open streams, or [`LogError::Busy`].
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, LogError> {
        self.streams.clone().try_acquire_owned().map_err(|_| LogError::Busy { max: self.max_streams })
    }

    pub(crate) fn client(&self, node: &str, addr: &str) -> Result<H2Client, kapp_tls::TlsError> {
        let mut clients = self.clients.lock().expect("kubelet clients lock");
        let key = (node.to_string(), addr.to_string());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let expected = Identity { common_name: format!("{}{node}", authz::NODE_PREFIX), organizations: vec![authz::NODES.to_string()] };
        let client = H2Client::new(addr, kapp_tls::client_config_for_peer(&self.identity, &expected)?).with_connect_timeout(CONNECT_TIMEOUT);
        if clients.len() >= MAX_KUBELET_CLIENTS {
            // Streams in flight keep their clients; the next requests connect anew.
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// Serve a log request for pod `name`. `reader_node`: the node the caller is, if it is one
/// (nodes read only the logs of their own pods).
pub async fn serve(ctx: &Ctx, t: &Target, name: &str, query: &HashMap<String, String>, user: &str, reader_node: Option<&str>) -> Response<Body> {
    open(ctx, t, name, query, user, reader_node).await.unwrap_or_else(LogError::response)
}

async fn stored(ctx: &Ctx, key: String, what: &str) -> Result<Option<Value>, LogError> {
    match ctx.store.get(key).await? {
        None => Ok(None),
        Some(kv) => ctx.codec.decode(&kv.value).map(Some).map_err(|_| LogError::Unreadable { what: what.to_string() }),
    }
}

async fn open(ctx: &Ctx, t: &Target, name: &str, query: &HashMap<String, String>, user: &str, reader_node: Option<&str>) -> Result<Response<Body>, LogError> {
    let options = parse_options(name, query, crate::unix_now())?;
    let Some(pod) = stored(ctx, crate::object_key(t, name), &format!("pod {name}")).await? else {
        return Ok(crate::not_found(t, name));
    };
    let node = pod["spec"]["nodeName"].as_str().unwrap_or("").to_string();
    if let Some(me) = reader_node.filter(|me| *me != node) {
        return Err(LogError::OtherNode { user: user.to_string(), pod: name.to_string(), node: me.to_string() });
    }
    let container = choose_container(name, &pod, options.container.as_deref())?;
    if node.is_empty() {
        return Err(LogError::NoHost { pod: name.to_string() });
    }
    let permit = ctx.kubelets.admit()?;
    let nodes = kapp_api::by_plural("", "v1", "nodes").expect("nodes are served");
    let Some(node_obj) = stored(ctx, kapp_api::keys::object_key(nodes, "", &node), &format!("node {node}")).await? else {
        return Err(LogError::NodeNotFound { node });
    };
    let addr = kubelet_address(&node, &node_obj)?;
    let unreachable = |source| LogError::Unreachable { node: node.clone(), addr: addr.clone(), source };
    let client = ctx.kubelets.client(&node, &addr).map_err(unreachable)?;
    let uri = kubelet_uri(t.namespace.as_deref().unwrap_or(""), name, &container, &options);
    let request = http::Request::get(uri).body(kapp_tls::empty()).expect("a valid request");
    let answer = match tokio::time::timeout(ANSWER_TIMEOUT, client.send(request)).await {
        Err(_) => return Err(LogError::NoAnswer { node, addr }),
        Ok(Err(e)) => return Err(unreachable(e)),
        Ok(Ok(a)) => a,
    };
    let code = answer.status();
    if !code.is_success() {
        let text = tokio::time::timeout(ANSWER_TIMEOUT, kapp_tls::collect_limited(answer.into_body(), MAX_REFUSAL)).await;
        let message = match text {
            Ok(Ok(b)) => String::from_utf8_lossy(&b).trim().to_string(),
            _ => format!("the kubelet of node {node:?} answered {code}"),
        };
        return Err(LogError::Kubelet { code: code.as_u16(), message });
    }
    let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
    let mut shaper = Shaper::new(&options);
    let mut body = answer.into_body();
    tokio::spawn(async move {
        // Held until the stream ends: the place among the open streams, the connection.
        let _held = (permit, client);
        loop {
            let frame = tokio::select! {
                f = body.frame() => f,
                _ = tx.closed() => return,
            };
            let data = match frame {
                None => return,
                Some(Err(e)) => {
                    tracing::debug!(%node, error = %e, "kubelet log stream broke");
                    return;
                }
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => d,
                    Err(_) => continue,
                },
            };
            let out = shaper.push(&data);
            if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                return;
            }
            if shaper.done() {
                return;
            }
        }
    });
    Ok(Response::builder().status(StatusCode::OK).header("content-type", "text/plain").body(kapp_tls::stream_body(rx)).expect("a valid response"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn options_follow_kubernetes() {
        assert_eq!(parse_options("p", &q(&[]), 1000).unwrap(), LogOptions::default());
        let o = parse_options("p", &q(&[("container", "c"), ("follow", "true"), ("previous", "1"), ("timestamps", "True"), ("tailLines", "0"), ("limitBytes", "5"), ("sinceSeconds", "10"), ("insecureSkipTLSVerifyBackend", "true")]), 1000).unwrap();
        assert_eq!(o, LogOptions { container: Some("c".into()), follow: true, previous: true, timestamps: true, tail_lines: Some(0), limit_bytes: Some(5), since: Some((990, 0)) });
        let o = parse_options("p", &q(&[("follow", "false"), ("previous", "no"), ("timestamps", ""), ("container", ""), ("sinceTime", "2024-01-01T00:00:00Z")]), 0).unwrap();
        assert_eq!((o.follow, o.previous, o.timestamps, o.container, o.since), (false, false, true, None, Some((1_704_067_200, 0))));
        let msg = |pairs: &[(&str, &str)]| parse_options("web", &q(pairs), 0).unwrap_err().to_string();
        assert_eq!(msg(&[("tailLines", "x")]), r#"tailLines: "x" is not an integer"#);
        assert_eq!(msg(&[("tailLines", "-1")]), r#"PodLogOptions "web" is invalid: tailLines: Invalid value: -1: must be greater than or equal to 0"#);
        assert_eq!(msg(&[("limitBytes", "0")]), r#"PodLogOptions "web" is invalid: limitBytes: Invalid value: 0: must be greater than 0"#);
        assert_eq!(msg(&[("sinceSeconds", "0")]), r#"PodLogOptions "web" is invalid: sinceSeconds: Invalid value: 0: must be greater than 0"#);
        assert_eq!(msg(&[("sinceTime", "yesterday")]), r#"sinceTime: "yesterday" is not an RFC 3339 time"#);
        assert!(msg(&[("sinceSeconds", "5"), ("sinceTime", "2024-01-01T00:00:00Z")]).ends_with("at most one of `sinceTime` or `sinceSeconds` may be specified"));
        let status = |pairs: &[(&str, &str)]| parse_options("web", &q(pairs), 0).unwrap_err().response().status().as_u16();
        assert_eq!((status(&[("tailLines", "x")]), status(&[("tailLines", "-1")])), (400, 422));
    }

    #[test]
    fn times_in_rfc_3339() {
        assert_eq!(parse_time("2024-01-01T00:00:00Z"), Some((1_704_067_200, 0)));
        assert_eq!(parse_time("2024-01-01T00:00:01.5Z"), Some((1_704_067_201, 500_000_000)));
        assert_eq!(parse_time("2024-01-01T00:00:01.000000007Z"), Some((1_704_067_201, 7)));
        assert_eq!(parse_time("2024-01-01T02:00:00+02:00"), Some((1_704_067_200, 0)));
        assert_eq!(parse_time("2023-12-31T23:30:00-00:30"), Some((1_704_067_200, 0)));
        for bad in ["", "2024-01-01", "2024-01-01 00:00:00Z", "2024-01-01T00:00:00", "2024-01-01T00:00:00.Z", "2024-01-01T00:00:00.1234567890Z", "2024-01-01T00:00:00+0200", "2024-01-01T0a:00:00Z", "stdout F hello"] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    fn pod(init: &[&str], app: &[&str]) -> Value {
        let list = |n: &[&str]| n.iter().map(|n| json!({"name": n, "image": "x"})).collect::<Vec<_>>();
        json!({"spec": {"initContainers": list(init), "containers": list(app)}})
    }

    #[test]
    fn container_choice_and_its_errors() {
        assert_eq!(choose_container("p", &pod(&["setup"], &["web"]), None).unwrap(), "web");
        assert_eq!(choose_container("p", &pod(&["setup"], &["web"]), Some("setup")).unwrap(), "setup");
        assert_eq!(choose_container("p", &pod(&[], &["a", "b"]), Some("b")).unwrap(), "b");
        let err = choose_container("p", &pod(&["setup"], &["a", "b"]), None).unwrap_err();
        assert_eq!(err.to_string(), "a container name must be specified for pod p, choose one of: [setup a b]");
        assert_eq!(err.response().status(), StatusCode::BAD_REQUEST);
        let err = choose_container("p", &pod(&[], &["a", "b"]), Some("c")).unwrap_err();
        assert_eq!(err.to_string(), "container c is not valid for pod p");
        assert_eq!(choose_container("p", &pod(&[], &[]), None).unwrap_err().to_string(), "a container name must be specified for pod p");
    }

    #[test]
    fn the_kubelet_is_found_from_the_node() {
        let node = |addresses: Value, port: Value| json!({"status": {"addresses": addresses, "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}});
        let ips = json!([{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.7"}]);
        assert_eq!(kubelet_address("n1", &node(ips.clone(), json!(11250))).unwrap(), "10.0.0.7:11250");
        assert_eq!(kubelet_address("n1", &node(ips.clone(), json!(0))).unwrap(), "10.0.0.7:10250");
        assert_eq!(kubelet_address("n1", &json!({"status": {"addresses": ips}})).unwrap(), "10.0.0.7:10250");
        assert_eq!(kubelet_address("n1", &node(json!([{"type": "InternalIP", "address": "fd00::7"}]), json!(10250))).unwrap(), "[fd00::7]:10250");
        let err = kubelet_address("n1", &node(json!([{"type": "Hostname", "address": "n1"}]), json!(10250))).unwrap_err();
        assert_eq!((err.to_string().as_str(), err.response().status().as_u16()), ("node \"n1\" reports no InternalIP address in status.addresses", 500));
    }

    #[test]
    fn kubelet_requests_carry_what_the_kubelet_does() {
        let o = |pairs: &[(&str, &str)]| parse_options("p", &q(pairs), 100).unwrap();
        assert_eq!(kubelet_uri("ns", "p", "c", &o(&[])), "/containerLogs/ns/p/c");
        assert_eq!(kubelet_uri("ns", "p", "c", &o(&[("follow", "true"), ("previous", "true"), ("tailLines", "3"), ("limitBytes", "10")])), "/containerLogs/ns/p/c?follow=true&previous=true&tailLines=3");
        assert_eq!(kubelet_uri("ns", "p", "c", &o(&[("sinceSeconds", "5")])), "/containerLogs/ns/p/c?timestamps=true");
    }

    /// Feed `input` to a shaper in chunks of `size` bytes.
    fn shape(o: &LogOptions, input: &str, size: usize) -> String {
        let mut s = Shaper::new(o);
        let mut out = Vec::new();
        for chunk in input.as_bytes().chunks(size) {
            out.extend(s.push(chunk));
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn since_drops_older_lines_in_chunks_of_any_size() {
        let log = "2024-01-01T00:00:09.999999999Z old\n2024-01-01T00:00:10Z edge\n2024-01-01T00:00:11.5Z new one\nnot-a-stamp kept\n2024-01-01T00:00:12Z \n";
        let since = Some((1_704_067_210, 0));
        for size in [1, 2, 7, 1000] {
            let plain = LogOptions { since, ..LogOptions::default() };
            assert_eq!(shape(&plain, log, size), "edge\nnew one\nnot-a-stamp kept\n\n", "chunks of {size}");
            let stamped = LogOptions { since, timestamps: true, ..LogOptions::default() };
            assert_eq!(shape(&stamped, log, size), "2024-01-01T00:00:10Z edge\n2024-01-01T00:00:11.5Z new one\nnot-a-stamp kept\n2024-01-01T00:00:12Z \n", "chunks of {size}");
        }
        // A line without any space is no time stamp: it is kept, however long.
        let long = "x".repeat(200) + "\n";
        assert_eq!(shape(&LogOptions { since, ..LogOptions::default() }, &long, 10), long);
    }

    #[test]
    fn limit_bytes_keeps_the_first_bytes_then_stops() {
        let o = LogOptions { limit_bytes: Some(7), ..LogOptions::default() };
        let mut s = Shaper::new(&o);
        assert_eq!(s.push(b"abcd"), b"abcd");
        assert!(!s.done());
        assert_eq!(s.push(b"efghij"), b"efg");
        assert!(s.done());
        assert_eq!(s.push(b"k"), b"");
        let both = LogOptions { limit_bytes: Some(4), since: Some((10, 0)), ..LogOptions::default() };
        assert_eq!(shape(&both, "1970-01-01T00:00:09Z zz\n1970-01-01T00:00:10Z abcdef\n", 3), "abcd");
    }

    #[test]
    fn streams_beyond_the_bound_are_refused_with_429() {
        let ca = kapp_tls::pki::Ca::generate("t").unwrap();
        let k = Kubelets::new(ca.issue("apiserver", &[], &[]).unwrap(), 2);
        let (a, _b) = (k.admit().unwrap(), k.admit().unwrap());
        let refused = k.admit().unwrap_err().response();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.headers()[http::header::RETRY_AFTER], "1");
        drop(a);
        assert!(k.admit().is_ok(), "an ended stream frees its place");
    }
}
