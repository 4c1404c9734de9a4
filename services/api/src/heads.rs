//! What the apiserver says about the heads' store members at [`PATH`] (read-only, for every
//! authenticated identity): each member's raft role, term and indexes as the member itself
//! reports them, or why it could not be asked. kappctl's `status` reads this; it is not a
//! stored kind, so it has no resource of its own.

use serde::{Deserialize, Serialize};

/// The non-resource URL the head list is served at (GET only).
pub const PATH: &str = "/kapp/heads";
/// `apiVersion` of the answer.
pub const API_VERSION: &str = "kapp.dev/v1";
/// `kind` of the answer.
pub const KIND: &str = "HeadList";

/// Every store member the answering apiserver knows of.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeadList {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    /// The answering apiserver's kapp version.
    #[serde(default)]
    pub kapp_version: String,
    /// Ordered by member id; members that could not be identified come last.
    #[serde(default)]
    pub items: Vec<HeadStatus>,
}

/// One store member, as it reports itself (or why it did not).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeadStatus {
    /// The member id (None: unreachable and not in any reachable member's membership).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// `host:port` the member serves raft and clients on.
    pub endpoint: String,
    pub reachable: bool,
    /// Why the member could not be asked ("" when reachable).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// "Leader", "Follower", "Candidate", "Learner" or "Shutdown"; "" when unreachable.
    #[serde(default)]
    pub state: String,
    /// A voter in the current membership (false for learners and unknown members).
    #[serde(default)]
    pub voter: bool,
    #[serde(default)]
    pub initialized: bool,
    /// The leader this member follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<u64>,
    #[serde(default)]
    pub term: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_log_index: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<u64>,
    /// The store revision this member has applied.
    #[serde(default)]
    pub revision: i64,
}
