//! The client library the apiserver (and tests, and the benchmark) use: connects to any
//! member, follows the leader, retries safely, and streams watches that resume across
//! member failures.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use kapp_tls::{H2Client, Pem};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::Semaphore;

use crate::error::StoreError;
use crate::error::limits::SESSION_WINDOW;
use crate::types::*;
use crate::wire::{self, path, *};

/// How to reach the store.
#[derive(Clone)]
pub struct ClientConfig {
    /// `host:port` of members; any subset works, the client finds the leader.
    pub endpoints: Vec<String>,
    pub tls: Pem,
    /// Time allowed for one attempt against one member.
    pub attempt_timeout: Duration,
    /// Time allowed for a request across all retries.
    pub deadline: Duration,
}

impl ClientConfig {
    pub fn new(endpoints: Vec<String>, tls: Pem) -> Self {
        ClientConfig { endpoints, tls, attempt_timeout: Duration::from_secs(5), deadline: Duration::from_secs(20) }
    }
}

/// A store client. Cheap to clone: clones share connections and the write session.
#[derive(Clone)]
pub struct StoreClient {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<H2Client>,
    preferred: AtomicUsize,
    cfg: ClientConfig,
    session: tokio::sync::Mutex<Option<u64>>,
    seq: AtomicU64,
    in_flight: Mutex<BTreeSet<u64>>,
    window: Semaphore,
}

/// What a watch yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    /// Changes, in revision order.
    Events(Vec<Event>),
    /// No change in the range up to this revision.
    Progress(Revision),
}

impl StoreClient {
    /// Make a client. Nothing is contacted until the first request.
    pub fn new(cfg: ClientConfig) -> Result<StoreClient, StoreError> {
        if cfg.endpoints.is_empty() {
            return Err(StoreError::Invalid("no store endpoints given".into()));
        }
        let tls = kapp_tls::client_config(&cfg.tls).map_err(|e| StoreError::Invalid(format!("client tls: {e}")))?;
        let endpoints = cfg.endpoints.iter().map(|a| H2Client::new(a.clone(), tls.clone())).collect();
        Ok(StoreClient {
            inner: Arc::new(Inner {
                endpoints,
                preferred: AtomicUsize::new(0),
                cfg,
                session: tokio::sync::Mutex::new(None),
                seq: AtomicU64::new(1),
                in_flight: Mutex::new(BTreeSet::new()),
                window: Semaphore::new((SESSION_WINDOW / 2) as usize),
            }),
        })
    }

    /// Send one request with retries: follows leader hints, rotates members on failures,
    /// backs off (capped), gives up at the deadline.
    async fn call<T: DeserializeOwned>(&self, p: &str, body: Bytes) -> Result<T, StoreError> {
        let inner = &self.inner;
        let started = Instant::now();
        let mut backoff = Duration::from_millis(10);
        let mut last_err;
        loop {
            let i = inner.preferred.load(Ordering::Relaxed) % inner.endpoints.len();
            let ep = &inner.endpoints[i];
            let remaining = inner.cfg.deadline.saturating_sub(started.elapsed());
            let attempt = inner.cfg.attempt_timeout.min(remaining.max(Duration::from_millis(1)));
            match wire::call::<T, StoreError>(ep, p, body.clone(), false, attempt).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(StoreError::NotLeader { leader: Some((_, addr)) })) => {
                    if let Some(j) = inner.endpoints.iter().position(|e| e.addr() == addr) {
                        inner.preferred.store(j, Ordering::Relaxed);
                    } else {
                        inner.preferred.store(i + 1, Ordering::Relaxed);
                    }
                    last_err = StoreError::NotLeader { leader: None };
                }
                Ok(Err(e)) if e.is_retryable() => {
                    inner.preferred.store(i + 1, Ordering::Relaxed);
                    last_err = e;
                }
                Ok(Err(e)) => return Err(e),
                Err(e) => {
                    inner.preferred.store(i + 1, Ordering::Relaxed);
                    last_err = e.into();
                }
            }
            if started.elapsed() + backoff >= inner.cfg.deadline {
                return Err(last_err);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    async fn call_with<Req: Serialize, T: DeserializeOwned>(&self, p: &str, req: &Req) -> Result<T, StoreError> {
        self.call(p, wire::encode(req)).await
    }

    async fn session(&self) -> Result<u64, StoreError> {
        let mut s = self.inner.session.lock().await;
        if let Some(id) = *s {
            return Ok(id);
        }
        let id: u64 = self.call_with(path::SESSION, &()).await?;
        *s = Some(id);
        Ok(id)
    }

    /// Run a transaction. Writes carry a request id, so retries never apply twice.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        crate::validate::validate_txn(&txn)?;
        if txn.is_read_only() {
            return self.call_with(path::TXN, &TxnRequest { id: None, txn, serializable: false }).await;
        }
        let _slot = self.inner.window.acquire().await.map_err(|_| StoreError::ShuttingDown)?;
        let session = self.session().await?;
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        let acked_below = {
            let mut f = self.inner.in_flight.lock().expect("in-flight lock");
            f.insert(seq);
            *f.first().expect("just inserted")
        };
        let req = TxnRequest { id: Some(RequestId { session, seq, acked_below }), txn, serializable: false };
        let r = self.call_with(path::TXN, &req).await;
        self.inner.in_flight.lock().expect("in-flight lock").remove(&seq);
        if let Err(StoreError::Refused(Refusal::SessionExpired { .. })) = &r {
            let mut s = self.inner.session.lock().await;
            if *s == Some(session) {
                *s = None;
            }
        }
        r
    }

    /// Read a range (linearizable unless `serializable`).
    pub async fn range_with(&self, req: RangeRequest, serializable: bool) -> Result<RangeResponse, StoreError> {
        self.call_with(path::RANGE, &RangeCall { req, serializable }).await
    }

    /// Linearizable range read.
    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse, StoreError> {
        self.range_with(req, false).await
    }

    /// Current value of one key.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<KeyValue>, StoreError> {
        let r = self.range(RangeRequest { range: KeyRange::single(key), ..Default::default() }).await?;
        Ok(r.kvs.into_iter().next())
    }

    /// Every key under a prefix.
    pub async fn list(&self, prefix: impl Into<Vec<u8>>) -> Result<RangeResponse, StoreError> {
        self.range(RangeRequest { range: KeyRange::prefix(prefix), ..Default::default() }).await
    }

    /// Unconditional put; returns the revision it was written at.
    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<Revision, StoreError> {
        let txn = Txn { success: vec![Op::Put { key: key.into(), value: value.into(), prev_kv: false }], ..Default::default() };
        Ok(self.txn(txn).await?.revision)
    }

    /// Delete one key; returns whether it existed.
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<bool, StoreError> {
        let txn = Txn { success: vec![Op::Delete { range: KeyRange::single(key), prev_kv: false }], ..Default::default() };
        let r = self.txn(txn).await?;
        Ok(matches!(r.results.first(), Some(OpResult::Delete { deleted, .. }) if *deleted > 0))
    }

    /// Forget history at and below `revision`.
    pub async fn compact(&self, revision: Revision) -> Result<Revision, StoreError> {
        self.call_with(path::COMPACT, &CompactRequest { revision }).await
    }

    /// The members this client was configured with (`host:port`), in index order.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.cfg.endpoints
    }

    /// Status of the member at `endpoint` (an index into the configured endpoints).
    pub async fn member_status(&self, endpoint: usize) -> Result<MemberStatus, StoreError> {
        let ep = self.inner.endpoints.get(endpoint).ok_or_else(|| StoreError::Invalid(format!("no endpoint {endpoint}")))?;
        wire::call::<MemberStatus, StoreError>(ep, path::STATUS, wire::encode(&()), false, self.inner.cfg.attempt_timeout).await?
    }

    /// Status of whichever member answers (following the usual retries).
    pub async fn status(&self) -> Result<MemberStatus, StoreError> {
        self.call_with(path::STATUS, &()).await
    }

    /// Add a member (as a learner until caught up, then as a voter).
    pub async fn add_member(&self, id: NodeId, addr: impl Into<String>) -> Result<(), StoreError> {
        self.call_with(path::MEMBER_ADD, &MemberAdd { id, addr: addr.into() }).await
    }

    /// Remove a member from the voters.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), StoreError> {
        self.call_with(path::MEMBER_REMOVE, &MemberRemove { id }).await
    }

    /// Watch a range from `start_revision` (0 = from now). Progress frames come after
    /// `progress` of quiet (None = never).
    pub fn watch(&self, range: KeyRange, start_revision: Revision, progress: Option<Duration>) -> WatchStream {
        WatchStream {
            client: self.clone(),
            range,
            next: start_revision,
            progress_ms: progress.map_or(0, |d| d.as_millis() as u64),
            body: None,
            buf: BytesMut::new(),
        }
    }
}

/// A watch that survives member failures: on a broken stream it reconnects to another member
/// and resumes right after the last revision it delivered.
pub struct WatchStream {
    client: StoreClient,
    range: KeyRange,
    /// Next revision to ask for (0 until the first event or progress tells us where we are).
    next: Revision,
    progress_ms: u64,
    body: Option<hyper::body::Incoming>,
    buf: BytesMut,
}

/// Largest watch frame accepted.
const MAX_FRAME: usize = 256 << 20;

impl WatchStream {
    /// The revision the stream will resume from.
    pub fn next_revision(&self) -> Revision {
        self.next
    }

    async fn open(&mut self) -> Result<(), StoreError> {
        let inner = &self.client.inner;
        let started = Instant::now();
        let mut backoff = Duration::from_millis(20);
        loop {
            let i = inner.preferred.load(Ordering::Relaxed) % inner.endpoints.len();
            let ep = &inner.endpoints[i];
            let req = WatchRequest { range: self.range.clone(), start_revision: self.next, progress_interval_ms: self.progress_ms };
            let http_req = http::Request::post(path::WATCH).body(kapp_tls::full(wire::encode(&req))).expect("valid request");
            let attempt = tokio::time::timeout(inner.cfg.attempt_timeout, ep.send(http_req)).await;
            let err = match attempt {
                Ok(Ok(resp)) if resp.status().is_success() => {
                    self.body = Some(resp.into_body());
                    self.buf.clear();
                    return Ok(());
                }
                Ok(Ok(resp)) => {
                    let bytes = resp.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                    match wire::decode::<Result<(), StoreError>>(&bytes) {
                        Ok(Err(e)) if !e.is_retryable() => return Err(e),
                        Ok(Err(e)) => e,
                        _ => StoreError::Protocol { addr: ep.addr().into(), reason: "undecodable watch refusal".into() },
                    }
                }
                Ok(Err(e)) => StoreError::Unreachable { addr: ep.addr().into(), reason: e.to_string() },
                Err(_) => StoreError::Timeout { millis: inner.cfg.attempt_timeout.as_millis() as u64 },
            };
            inner.preferred.store(i + 1, Ordering::Relaxed);
            if started.elapsed() >= inner.cfg.deadline {
                return Err(err);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    fn take_frame(&mut self) -> Result<Option<WatchFrame>, StoreError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_FRAME {
            return Err(StoreError::Protocol { addr: "watch".into(), reason: format!("frame of {len} bytes") });
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        self.buf.advance(4);
        let payload = self.buf.split_to(len);
        wire::decode::<WatchFrame>(&payload)
            .map(Some)
            .map_err(|e| StoreError::Protocol { addr: "watch".into(), reason: e })
    }

    /// The next batch of events or a progress note. A compacted start revision ends the
    /// stream with `StoreError::Refused(Refusal::Compacted)`: relist, then watch again.
    pub async fn next(&mut self) -> Result<WatchItem, StoreError> {
        loop {
            if self.body.is_none() {
                self.open().await?;
            }
            match self.take_frame() {
                Err(e) => {
                    self.body = None;
                    tracing::debug!(error = %e, "watch stream broke; resuming");
                    continue;
                }
                Ok(Some(frame)) => match frame {
                    WatchFrame::Events { events, .. } => {
                        if let Some(last) = events.last() {
                            self.next = last.kv.mod_revision + 1;
                        }
                        return Ok(WatchItem::Events(events));
                    }
                    WatchFrame::Progress { revision } => {
                        if revision + 1 > self.next {
                            self.next = revision + 1;
                        }
                        return Ok(WatchItem::Progress(revision));
                    }
                    WatchFrame::Compacted { compacted } => {
                        self.body = None;
                        return Err(Refusal::Compacted { requested: self.next, compacted }.into());
                    }
                    WatchFrame::Error(e) => {
                        self.body = None;
                        if !e.is_retryable() {
                            return Err(e);
                        }
                        continue;
                    }
                },
                Ok(None) => {}
            }
            let body = self.body.as_mut().expect("opened above");
            match body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "watch stream broke; resuming");
                    self.body = None;
                }
                None => {
                    self.body = None;
                }
            }
        }
    }
}
