//! kapp's own kinds, served under `kapp.dev/v1` like the built-in ones.
//!
//! - `GitSync` (cluster-scoped, one per source, normally named `cluster`): what gitops
//!   follows (`spec`, written by gitops from the machine config) and how far it got
//!   (`status`: fetched and applied commit, state, errors naming file/document/field).
//! - `ClusterSettings` (cluster-scoped, named `cluster`): cluster-level settings that live in
//!   the repository like every other manifest (the `suspend` switch, node labels and taints).
//!
//! Unknown fields are refused (unlike k8s-openapi's types, which ignore them), so a typo in
//! a settings file is an error naming the field rather than a setting silently not taken.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// Which commit of the repository to follow: exactly one of branch, tag or commit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitSyncSpec {
    pub url: String,
    #[serde(default, rename = "ref")]
    pub git_ref: GitRef,
    /// Sub-path of the repository to render ("" for the root).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<u32>,
}

/// One commit, as people recognise it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommitInfo {
    pub sha: String,
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub author: String,
    /// RFC 3339 commit time.
    #[serde(default)]
    pub time: String,
}

/// Why a commit was refused, down to the field.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncError {
    /// File relative to the followed path ("" when the error is not about one file).
    #[serde(default)]
    pub file: String,
    /// Index of the YAML document in the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<usize>,
    /// `Kind/namespace/name` of the object, when known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub object: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub field: String,
    pub reason: String,
}

/// Counts of what one apply did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplyCounts {
    #[serde(default)]
    pub objects: usize,
    #[serde(default)]
    pub created: usize,
    #[serde(default)]
    pub updated: usize,
    #[serde(default)]
    pub pruned: usize,
    #[serde(default)]
    pub unchanged: usize,
}

/// Synced / Applying / Failed / Suspended.
pub const STATES: &[&str] = &["Synced", "Applying", "Failed", "Suspended"];

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitSyncStatus {
    #[serde(default)]
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetched_commit: Option<CommitInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_commit: Option<CommitInfo>,
    /// RFC 3339 time the fetched commit was first fetched (not rewritten at every poll).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_fetch_time: String,
    /// RFC 3339 time of the last apply that changed something.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_apply_time: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<SyncError>,
    #[serde(default)]
    pub counts: ApplyCounts,
    /// Drifted objects put back since gitops started.
    #[serde(default)]
    pub drift_reverted: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitSync {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<GitSyncSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<GitSyncStatus>,
}

/// A taint as in a Node's spec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SettingsTaint {
    pub key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    pub effect: String,
}

/// Labels and taints git gives one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSettings {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<SettingsTaint>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSettingsSpec {
    /// Pause reconciliation: gitops fetches and reports, but applies nothing.
    #[serde(default)]
    pub suspend: bool,
    /// The OS image version nodes should run (for the A/B updates to come).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub os_version: String,
    /// Per-node labels and taints, by node name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, NodeSettings>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSettings {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ClusterSettingsSpec,
}

/// Most objects one Apply may change: each costs a compare and a put in the one store
/// transaction (1,024 of them), the GitSync's own status two more. A Service costs more (its
/// allocations): the apiserver refuses an Apply that does not fit (413), and gitops halves
/// its chunks until they do.
pub const MAX_APPLY_ITEMS: usize = 511;

/// Label every object gitops applied carries (value: the GitSync's name).
pub const MANAGED_BY_LABEL: &str = "kapp.dev/gitsync";
/// Annotation with the commit an object was last applied from.
pub const COMMIT_ANNOTATION: &str = "kapp.dev/commit";
/// Annotation with the file (and document) an object came from.
pub const SOURCE_ANNOTATION: &str = "kapp.dev/source";
