//! The store's error type, shared by the server, the client and the storage layers.

use serde::{Deserialize, Serialize};

use crate::types::{NodeId, Refusal};

/// Limits on what a client may ask of the store. Mirrors etcd's defaults where etcd has one.
pub mod limits {
    /// Largest value of one key (etcd: 1.5 MiB request limit).
    pub const MAX_VALUE_BYTES: usize = 1536 * 1024;
    /// Largest key.
    pub const MAX_KEY_BYTES: usize = 8 * 1024;
    /// Largest encoded request body. Above etcd's 1.5 MiB so that gitops can write one
    /// commit's changes in one transaction.
    pub const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;
    /// Most operations in one transaction (etcd's `--max-txn-ops` defaults to 128; gitops
    /// applies a commit's changes, up to this many objects, atomically).
    pub const MAX_TXN_OPS: usize = 1024;
    /// Most key-values one range returns before the client must page with `limit`.
    pub const MAX_RANGE_RESULTS: u64 = 100_000;
    /// Responses a write session keeps at most (its writes in flight); a client keeps fewer
    /// than this in flight so a retry always finds its answer.
    pub const SESSION_WINDOW: u64 = 1024;
}

/// Everything that can go wrong talking to the store. Serialisable, so a server can hand it
/// to a client unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StoreError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("{what} is {size} bytes, over the limit of {limit}")]
    TooLarge { what: String, size: usize, limit: usize },
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("this member is not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<(NodeId, String)> },
    #[error("the cluster has no leader right now")]
    NoLeader,
    #[error("the request timed out after {millis} ms")]
    Timeout { millis: u64 },
    #[error("unknown member {0}")]
    UnknownMember(NodeId),
    #[error("membership change failed: {0}")]
    Membership(String),
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("cannot reach {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("access denied: {0}")]
    Forbidden(String),
    #[error("the store is shutting down")]
    ShuttingDown,
    #[error("unexpected response from {addr}: {reason}")]
    Protocol { addr: String, reason: String },
}

impl StoreError {
    /// Whether a client may retry the same request on another member (the request surely did
    /// not take effect, or it carries a request id that makes a retry safe).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::NotLeader { .. }
                | StoreError::NoLeader
                | StoreError::Timeout { .. }
                | StoreError::Unreachable { .. }
                | StoreError::ShuttingDown
        )
    }
}
