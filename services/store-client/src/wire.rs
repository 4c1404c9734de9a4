//! Request and response bodies of the store's HTTP/2 API, and the one call helper every
//! client of that API (peers, the client library) goes through.
//!
//! Bodies are bincode. Every response body is a `Result<T, E>`, so errors cross the wire
//! typed; the HTTP status mirrors it for people reading logs and metrics.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use kapp_tls::H2Client;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::StoreError;
use crate::types::{Event, KeyRange, NodeId, RangeRequest, RequestId, Revision, Txn};

/// Paths of the API.
pub mod path {
    pub const RAFT_APPEND: &str = "/raft/append";
    pub const RAFT_VOTE: &str = "/raft/vote";
    pub const RAFT_SNAPSHOT: &str = "/raft/snapshot";
    pub const TXN: &str = "/v1/txn";
    pub const RANGE: &str = "/v1/range";
    pub const SESSION: &str = "/v1/session";
    pub const COMPACT: &str = "/v1/compact";
    pub const WATCH: &str = "/v1/watch";
    pub const STATUS: &str = "/v1/status";
    pub const MEMBER_ADD: &str = "/v1/members/add";
    pub const MEMBER_REMOVE: &str = "/v1/members/remove";
    pub const METRICS: &str = "/metrics";
    pub const HEALTH: &str = "/health";
}

/// Set on a request a member forwarded to the leader, so it is never forwarded twice.
pub const FORWARDED_HEADER: &str = "x-kapp-forwarded";

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct TxnRequest {
    pub id: Option<RequestId>,
    pub txn: Txn,
    /// For read-only transactions: serve from this member's state without a leader check.
    pub serializable: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct RangeCall {
    pub req: RangeRequest,
    pub serializable: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct CompactRequest {
    pub revision: Revision,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct WatchRequest {
    pub range: KeyRange,
    /// First revision to deliver (0 = changes after the current revision).
    pub start_revision: Revision,
    /// Send a progress frame after this long without events (0 = never).
    pub progress_interval_ms: u64,
}

/// One frame of a watch stream; frames are length-prefixed (u32 big-endian).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum WatchFrame {
    /// Events in revision order; `revision` is the member's revision when sent.
    Events { events: Vec<Event>, revision: Revision },
    /// Nothing happened in the range up to `revision`.
    Progress { revision: Revision },
    /// The start revision is compacted; the client must relist.
    Compacted { compacted: Revision },
    /// The stream ends with this error.
    Error(StoreError),
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct MemberAdd {
    pub id: NodeId,
    pub addr: String,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct MemberRemove {
    pub id: NodeId,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: NodeId,
    pub addr: String,
    pub voter: bool,
}

/// One member's view of itself and the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    pub id: NodeId,
    /// "Leader", "Follower", "Candidate", "Learner" or "Shutdown".
    pub state: String,
    pub initialized: bool,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub committed: Option<u64>,
    pub applied: Option<u64>,
    pub revision: Revision,
    pub compacted: Revision,
    pub members: Vec<MemberInfo>,
}

pub fn encode<T: Serialize>(v: &T) -> Bytes {
    Bytes::from(bincode::serialize(v).expect("in-memory serialisation cannot fail"))
}

pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    bincode::deserialize(b).map_err(|e| e.to_string())
}

/// Why a call failed before a typed answer came back.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot reach {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("{addr} did not answer within {millis} ms")]
    Timeout { addr: String, millis: u64 },
    #[error("bad response from {addr}: {reason}")]
    Protocol { addr: String, reason: String },
}

impl From<CallError> for StoreError {
    fn from(e: CallError) -> StoreError {
        match e {
            CallError::Unreachable { addr, reason } => StoreError::Unreachable { addr, reason },
            CallError::Timeout { millis, .. } => StoreError::Timeout { millis },
            CallError::Protocol { addr, reason } => StoreError::Protocol { addr, reason },
        }
    }
}

/// Most bytes a response body may have (a large range or a snapshot chunk answer).
pub const MAX_RESPONSE_BYTES: usize = 512 << 20;

/// POST `body` to `path` and decode the `Result<T, E>` that comes back.
pub async fn call<T: DeserializeOwned, E: DeserializeOwned>(
    client: &H2Client,
    path: &str,
    body: Bytes,
    forwarded: bool,
    timeout: Duration,
) -> Result<Result<T, E>, CallError> {
    let addr = client.addr().to_string();
    let fut = async {
        let mut req = http::Request::post(path);
        if forwarded {
            req = req.header(FORWARDED_HEADER, "1");
        }
        let req = req
            .body(kapp_tls::full(body))
            .map_err(|e| CallError::Protocol { addr: addr.clone(), reason: e.to_string() })?;
        let resp = client
            .send(req)
            .await
            .map_err(|e| CallError::Unreachable { addr: addr.clone(), reason: e.to_string() })?;
        let status = resp.status();
        let limited = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE_BYTES);
        let bytes = limited
            .collect()
            .await
            .map_err(|e| CallError::Unreachable { addr: addr.clone(), reason: e.to_string() })?
            .to_bytes();
        decode::<Result<T, E>>(&bytes).map_err(|e| CallError::Protocol {
            addr: addr.clone(),
            reason: format!("status {status}, undecodable body: {e}"),
        })
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(CallError::Timeout { addr: client.addr().to_string(), millis: timeout.as_millis() as u64 }),
    }
}
