//! The identity groups (the O entries of client certificates) the apiserver authorises,
//! named once for the apiserver, cluster generation and tests.

/// The only writer of desired state.
pub const GITOPS: &str = "kapp:gitops";
pub const CONTROLLERS: &str = "kapp:controllers";
pub const SCHEDULER: &str = "kapp:scheduler";
/// Nodes: common name `system:node:<name>`.
pub const NODES: &str = "kapp:nodes";
/// Read-only, Secret data hidden.
pub const VIEWERS: &str = "kapp:viewers";
