//! A deliberately small etcd v3 client: gRPC (HTTP/2, `application/grpc`) with the few
//! protobuf messages the benchmark needs encoded by hand, so the workspace needs neither
//! tonic, prost nor `protoc`. It speaks the same protocol as etcd's own Go client (one
//! multiplexed HTTP/2 connection per endpoint), over the same hyper HTTP/2 stack and, with
//! TLS, the same rustls configuration that kapp's store client uses. It does NOT go through
//! etcd's JSON gateway, which would handicap etcd.
//!
//! Messages used (etcd 3.4 `rpc.proto` / `kv.proto`, field numbers in brackets):
//! - `PutRequest { key[1]: bytes, value[2]: bytes }` -> `PutResponse { header[1] }`
//! - `RangeRequest { key[1]: bytes }` (no `serializable[7]`: linearizable) ->
//!   `RangeResponse { header[1], kvs[2]: repeated KeyValue, count[4] }`,
//!   `KeyValue { key[1], create_revision[2], mod_revision[3], version[4], value[5] }`
//! - `StatusRequest {}` -> `StatusResponse { header[1], leader[4] }`
//! - `ResponseHeader { cluster_id[1], member_id[2], revision[3], raft_term[4] }`

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use kapp_tls::{Body, H2Client};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// Largest gRPC response accepted.
const MAX_RESPONSE: usize = 16 << 20;

// ---------------------------------------------------------------------------------------------
// Protobuf, the little that is needed.

fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

fn put_bytes_field(buf: &mut BytesMut, field: u32, data: &[u8]) {
    put_varint(buf, (u64::from(field) << 3) | 2);
    put_varint(buf, data.len() as u64);
    buf.put_slice(data);
}

/// One decoded protobuf field value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed64,
    Fixed32,
}

fn get_varint(buf: &[u8], pos: &mut usize) -> Result<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or_else(|| anyhow!("truncated varint"))?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    bail!("varint too long")
}

/// All fields of one message, in order.
fn fields(buf: &[u8]) -> Result<Vec<(u32, Value<'_>)>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let tag = get_varint(buf, &mut pos)?;
        let field = (tag >> 3) as u32;
        let value = match tag & 7 {
            0 => Value::Varint(get_varint(buf, &mut pos)?),
            1 => {
                pos += 8;
                Value::Fixed64
            }
            2 => {
                let len = get_varint(buf, &mut pos)? as usize;
                let end = pos.checked_add(len).filter(|e| *e <= buf.len()).ok_or_else(|| anyhow!("truncated field"))?;
                let v = Value::Bytes(&buf[pos..end]);
                pos = end;
                v
            }
            5 => {
                pos += 4;
                Value::Fixed32
            }
            t => bail!("unsupported protobuf wire type {t}"),
        };
        if pos > buf.len() {
            bail!("truncated fixed-size field");
        }
        out.push((field, value));
    }
    Ok(out)
}

fn varint_field(buf: &[u8], field: u32) -> Result<Option<u64>> {
    Ok(fields(buf)?.into_iter().rev().find_map(|(f, v)| match v {
        Value::Varint(x) if f == field => Some(x),
        _ => None,
    }))
}

fn bytes_fields(buf: &[u8], field: u32) -> Result<Vec<&[u8]>> {
    Ok(fields(buf)?
        .into_iter()
        .filter_map(|(f, v)| match v {
            Value::Bytes(b) if f == field => Some(b),
            _ => None,
        })
        .collect())
}

/// `ResponseHeader` inside a response (field 1).
fn header(resp: &[u8]) -> Result<ResponseHeader> {
    let h = bytes_fields(resp, 1)?.first().copied().unwrap_or_default();
    Ok(ResponseHeader {
        member_id: varint_field(h, 2)?.unwrap_or(0),
        revision: varint_field(h, 3)?.unwrap_or(0) as i64,
        raft_term: varint_field(h, 4)?.unwrap_or(0),
    })
}

#[derive(Debug, Clone, Copy)]
pub struct ResponseHeader {
    pub member_id: u64,
    pub revision: i64,
    pub raft_term: u64,
}

/// What `Maintenance.Status` says about one member.
#[derive(Debug, Clone)]
pub struct MemberStatus {
    pub member_id: u64,
    pub leader: u64,
    pub raft_term: u64,
}

// ---------------------------------------------------------------------------------------------
// gRPC over HTTP/2.

/// One endpoint: either TLS (kapp's own HTTP/2-over-TLS client) or plaintext HTTP/2.
enum Transport {
    Tls(H2Client),
    Plain { addr: String, conn: Mutex<Option<SendRequest<Body>>> },
}

impl Transport {
    async fn plain_sender(addr: &str, slot: &Mutex<Option<SendRequest<Body>>>) -> Result<SendRequest<Body>> {
        let mut g = slot.lock().await;
        if let Some(s) = g.as_ref() {
            if !s.is_closed() {
                return Ok(s.clone());
            }
        }
        let tcp = TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
        tcp.set_nodelay(true)?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake::<_, Body>(TokioIo::new(tcp))
            .await
            .with_context(|| format!("http/2 handshake with {addr}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        *g = Some(sender.clone());
        Ok(sender)
    }

    async fn send(&self, path: &str, body: Bytes) -> Result<http::Response<hyper::body::Incoming>> {
        let uri = match self {
            Transport::Tls(_) => path.to_string(),
            Transport::Plain { addr, .. } => format!("http://{addr}{path}"),
        };
        let req = http::Request::post(uri)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(kapp_tls::full(body))?;
        match self {
            Transport::Tls(c) => Ok(c.send(req).await?),
            Transport::Plain { addr, conn } => {
                let mut sender = Self::plain_sender(addr, conn).await?;
                sender.ready().await?;
                match sender.send_request(req).await {
                    Ok(r) => Ok(r),
                    Err(e) => {
                        if sender.is_closed() {
                            *conn.lock().await = None;
                        }
                        Err(e.into())
                    }
                }
            }
        }
    }
}

fn grpc_status(h: &http::HeaderMap) -> Option<(String, String)> {
    let code = h.get("grpc-status")?.to_str().unwrap_or("?").to_string();
    let msg = h.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or("").to_string();
    Some((code, msg))
}

/// An etcd v3 KV client over several endpoints; requests go to `endpoints[0]` (like etcd's
/// client, which pins one endpoint) unless another index is given.
#[derive(Clone)]
pub struct EtcdClient {
    endpoints: Arc<Vec<Transport>>,
    timeout: Duration,
}

impl EtcdClient {
    /// `endpoints` are `host:port`. With `tls`, connects with mTLS using those credentials.
    pub fn new(endpoints: &[String], tls: Option<&kapp_tls::Pem>) -> Result<EtcdClient> {
        let cfg = match tls {
            Some(pem) => Some(kapp_tls::client_config(pem)?),
            None => None,
        };
        let endpoints = endpoints
            .iter()
            .map(|a| match &cfg {
                Some(c) => Transport::Tls(H2Client::new(a.clone(), c.clone())),
                None => Transport::Plain { addr: a.clone(), conn: Mutex::new(None) },
            })
            .collect();
        Ok(EtcdClient { endpoints: Arc::new(endpoints), timeout: Duration::from_secs(10) })
    }

    /// One unary call; returns the response message.
    async fn unary(&self, endpoint: usize, path: &str, msg: &[u8]) -> Result<Bytes> {
        let mut frame = BytesMut::with_capacity(5 + msg.len());
        frame.put_u8(0); // not compressed
        frame.put_u32(msg.len() as u32);
        frame.put_slice(msg);
        let ep = self.endpoints.get(endpoint).ok_or_else(|| anyhow!("no endpoint {endpoint}"))?;
        let call = async {
            let resp = ep.send(path, frame.freeze()).await?;
            if !resp.status().is_success() {
                bail!("{path}: http status {}", resp.status());
            }
            // "Trailers-only" responses carry the status in the headers.
            if let Some((code, msg)) = grpc_status(resp.headers()) {
                if code != "0" {
                    bail!("{path}: grpc-status {code}: {msg}");
                }
            }
            let collected = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| anyhow!("{path}: reading response: {e}"))?;
            let trailers = collected.trailers().cloned();
            let body = collected.to_bytes();
            match trailers.as_ref().and_then(grpc_status) {
                Some((code, _)) if code == "0" => {}
                Some((code, msg)) => bail!("{path}: grpc-status {code}: {msg}"),
                None => bail!("{path}: response without grpc-status"),
            }
            if body.len() < 5 {
                bail!("{path}: short gRPC response ({} bytes)", body.len());
            }
            if body[0] != 0 {
                bail!("{path}: compressed gRPC response not supported");
            }
            let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
            if body.len() != 5 + len {
                bail!("{path}: gRPC frame of {len} bytes in a body of {}", body.len());
            }
            Ok(body.slice(5..))
        };
        tokio::time::timeout(self.timeout, call).await.map_err(|_| anyhow!("{path}: timed out after {:?}", self.timeout))?
    }

    /// `KV.Put`; returns the revision written.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<i64> {
        let mut m = BytesMut::with_capacity(key.len() + value.len() + 8);
        put_bytes_field(&mut m, 1, key);
        put_bytes_field(&mut m, 2, value);
        let resp = self.unary(0, "/etcdserverpb.KV/Put", &m).await?;
        let h = header(&resp)?;
        if h.revision <= 0 {
            bail!("put answered without a revision");
        }
        Ok(h.revision)
    }

    /// Linearizable `KV.Range` of one key; returns its value if it exists.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut m = BytesMut::with_capacity(key.len() + 4);
        put_bytes_field(&mut m, 1, key);
        let resp = self.unary(0, "/etcdserverpb.KV/Range", &m).await?;
        let kvs = bytes_fields(&resp, 2)?;
        match kvs.first() {
            None => Ok(None),
            Some(kv) => Ok(bytes_fields(kv, 5)?.first().map(|v| v.to_vec()).or(Some(Vec::new()))),
        }
    }

    /// `Maintenance.Status` of the member behind `endpoint`.
    pub async fn status(&self, endpoint: usize) -> Result<MemberStatus> {
        let resp = self.unary(endpoint, "/etcdserverpb.Maintenance/Status", &[]).await?;
        let h = header(&resp)?;
        Ok(MemberStatus { member_id: h.member_id, leader: varint_field(&resp, 4)?.unwrap_or(0), raft_term: h.raft_term })
    }

    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for v in [0u64, 1, 127, 128, 300, 1 << 35, u64::MAX] {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            let mut pos = 0;
            assert_eq!(get_varint(&b, &mut pos).unwrap(), v);
            assert_eq!(pos, b.len());
        }
    }

    #[test]
    fn decodes_a_range_response() {
        // RangeResponse { header { member_id: 7, revision: 42 }, kvs [{ key: "k", value: "v" }], count: 1 }
        let mut h = BytesMut::new();
        put_varint(&mut h, 2 << 3);
        put_varint(&mut h, 7);
        put_varint(&mut h, 3 << 3);
        put_varint(&mut h, 42);
        let mut kv = BytesMut::new();
        put_bytes_field(&mut kv, 1, b"k");
        put_varint(&mut kv, 3 << 3);
        put_varint(&mut kv, 42);
        put_bytes_field(&mut kv, 5, b"v");
        let mut r = BytesMut::new();
        put_bytes_field(&mut r, 1, &h);
        put_bytes_field(&mut r, 2, &kv);
        put_varint(&mut r, 4 << 3);
        put_varint(&mut r, 1);
        let hd = header(&r).unwrap();
        assert_eq!((hd.member_id, hd.revision), (7, 42));
        let kvs = bytes_fields(&r, 2).unwrap();
        assert_eq!(kvs.len(), 1);
        assert_eq!(bytes_fields(kvs[0], 5).unwrap(), vec![b"v".as_slice()]);
    }
}
