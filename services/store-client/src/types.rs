//! The store's data model and the requests that travel through the raft log.
//!
//! The model follows etcd v3 closely on purpose: the apiserver's optimistic concurrency
//! (compare `mod_revision`, then put) and its watch resumption (`resourceVersion` is a
//! store revision) are the same algorithms Kubernetes runs against etcd.

use serde::{Deserialize, Serialize};

/// A raft member's id. Ids are chosen by bootstrap and never reused.
pub type NodeId = u64;

/// Where a member can be reached: one `host:port` serves raft traffic and the client API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Node {
    pub addr: String,
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr)
    }
}



/// A cluster-wide revision: rises by one per committed write transaction.
pub type Revision = i64;

/// One key's current value and its history counters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    /// Revision of the transaction that created the key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the transaction that last modified the key.
    pub mod_revision: Revision,
    /// Number of modifications since creation, starting at 1.
    pub version: i64,
    pub value: Vec<u8>,
}

/// A key range, etcd style: `range_end` empty means the single key `key`; otherwise all keys in
/// `[key, range_end)`; `range_end == [0]` means every key `>= key`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct KeyRange {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

impl KeyRange {
    /// Exactly one key.
    pub fn single(key: impl Into<Vec<u8>>) -> Self {
        KeyRange { key: key.into(), range_end: Vec::new() }
    }

    /// Every key starting with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let key = prefix.into();
        let range_end = prefix_end(&key);
        KeyRange { key, range_end }
    }

    /// Whether `k` falls in this range.
    pub fn contains(&self, k: &[u8]) -> bool {
        if self.range_end.is_empty() {
            return k == self.key.as_slice();
        }
        if k < self.key.as_slice() {
            return false;
        }
        self.range_end == [0] || k < self.range_end.as_slice()
    }

    /// Whether this range names one key only.
    pub fn is_single(&self) -> bool {
        self.range_end.is_empty()
    }
}

/// The smallest key greater than every key with this prefix (`[0]`, meaning "no end", if the
/// prefix is all 0xff or empty).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A read of a range.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct RangeRequest {
    pub range: KeyRange,
    /// At most this many keys (0 = no limit).
    pub limit: u64,
    /// Read as of this revision (0 = current). Fails if compacted or in the future.
    pub revision: Revision,
    /// Only count, return no key-values.
    pub count_only: bool,
    /// Return keys without values.
    pub keys_only: bool,
}

/// The answer to a [`RangeRequest`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// More keys matched than `limit` allowed.
    pub more: bool,
    /// How many keys matched in all.
    pub count: u64,
    /// The store revision the read was served at.
    pub revision: Revision,
}

/// What a [`Compare`] looks at.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    /// The key's `mod_revision` (0 when the key does not exist).
    ModRevision(Revision),
    /// The key's `create_revision` (0 when the key does not exist).
    CreateRevision(Revision),
    /// The key's `version` (0 when the key does not exist).
    Version(i64),
    /// The key's value (a missing key compares unequal to everything).
    Value(Vec<u8>),
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

/// One condition of a transaction, on one key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    pub op: CompareOp,
    pub target: CompareTarget,
}

impl Compare {
    /// The key does not exist.
    pub fn absent(key: impl Into<Vec<u8>>) -> Self {
        Compare { key: key.into(), op: CompareOp::Equal, target: CompareTarget::ModRevision(0) }
    }

    /// The key was last modified at `rev` (the apiserver's resourceVersion precondition).
    pub fn mod_revision(key: impl Into<Vec<u8>>, rev: Revision) -> Self {
        Compare { key: key.into(), op: CompareOp::Equal, target: CompareTarget::ModRevision(rev) }
    }
}

/// One operation of a transaction.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Range(RangeRequest),
    Put { key: Vec<u8>, value: Vec<u8>, prev_kv: bool },
    Delete { range: KeyRange, prev_kv: bool },
}

/// An atomic compare-then-act transaction. A plain put is a transaction with no compares.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

impl Txn {
    /// Whether executing this transaction can change the store.
    pub fn is_read_only(&self) -> bool {
        self.success.iter().chain(self.failure.iter()).all(|op| matches!(op, Op::Range(_)))
    }
}

/// The result of one [`Op`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    Range(RangeResponse),
    Put { prev: Option<KeyValue> },
    Delete { deleted: u64, prev: Vec<KeyValue> },
}

/// The result of a [`Txn`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether the compares held (then `success` ran, else `failure`).
    pub succeeded: bool,
    /// The store revision after the transaction.
    pub revision: Revision,
    pub results: Vec<OpResult>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change to one key, as delivered to watchers. For a delete, `kv` carries the key and
/// the deleting revision as `mod_revision`, and no value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    /// The key's state before this event, if it existed.
    pub prev_kv: Option<KeyValue>,
}

/// Identifies one write of one client session, so a retried write is applied at most once.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestId {
    /// Session id handed out by [`LogCommand::RegisterSession`].
    pub session: u64,
    /// Per-session sequence number, rising.
    pub seq: u64,
    /// Every sequence number below this one has had its response: the store may forget them.
    pub acked_below: u64,
}

/// What travels through the raft log.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum LogCommand {
    /// Open a client session; its id is derived from this entry's log index (and its place
    /// in a batch), so it is unique in the cluster.
    RegisterSession,
    Txn { id: Option<RequestId>, txn: Txn },
    /// Forget history at and below `revision`.
    Compact { revision: Revision },
    /// Several commands proposed together (group commit). Each is applied as if it were its
    /// own entry: its own revision, its own outcome. Never nested.
    Batch(Vec<LogCommand>),
}

/// What applying one log entry produced.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Blank and membership entries.
    None,
    Session { id: u64 },
    Txn(TxnResponse),
    Compacted { revision: Revision },
    /// The command was refused by the state machine; nothing changed.
    Refused(Refusal),
    /// One outcome per command of a [`LogCommand::Batch`].
    Batch(Vec<ApplyOutcome>),
}

/// Why the state machine refused a command. Deterministic: every member refuses alike.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("revision {requested} has been compacted (compacted up to {compacted})")]
    Compacted { requested: Revision, compacted: Revision },
    #[error("revision {requested} is in the future (current is {current})")]
    FutureRevision { requested: Revision, current: Revision },
    #[error("session {session} is unknown or expired; the outcome of request {seq} is unknown")]
    SessionExpired { session: u64, seq: u64 },
    #[error("invalid command: {0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        let p = KeyRange::prefix("/pods/");
        assert!(p.contains(b"/pods/x") && p.contains(b"/pods/") && !p.contains(b"/pods") && !p.contains(b"/podsx"));
        let one = KeyRange::single("/k");
        assert!(one.contains(b"/k") && !one.contains(b"/k2"));
        let from = KeyRange { key: b"m".to_vec(), range_end: vec![0] };
        assert!(from.contains(b"zzz") && !from.contains(b"a"));
    }

    #[test]
    fn read_only_transactions_are_recognised() {
        let read = Txn { success: vec![Op::Range(RangeRequest::default())], ..Default::default() };
        assert!(read.is_read_only());
        let write = Txn { failure: vec![Op::Delete { range: KeyRange::single("k"), prev_kv: false }], ..read };
        assert!(!write.is_read_only());
    }
}
