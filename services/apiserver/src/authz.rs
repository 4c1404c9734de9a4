//! Who may do what, from the client certificate's groups (its O entries): writers (gitops,
//! controllers, scheduler) may write everything; a node (group `kapp:nodes`, common name
//! `system:node:<name>`) reads everything but the logs of other nodes' pods, and writes only
//! its own Node, its Lease in `kube-node-lease`, and the status (and final deletion) of pods
//! bound to it; viewers only read (pod logs included), and never see Secret data.

use kapp_tls::Identity;

pub use kapp_api::groups::{CONTROLLERS, GITOPS, NODES, SCHEDULER, VIEWERS};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Write,
    Read,
    /// Read, with Secret data removed.
    View,
    None,
}

/// Prefix of a node identity's common name.
pub const NODE_PREFIX: &str = "system:node:";

/// The node an identity speaks for, if it is a node.
pub fn node_name(who: &Identity) -> Option<&str> {
    if who.organizations.iter().any(|o| o == NODES) {
        who.common_name.strip_prefix(NODE_PREFIX).filter(|n| !n.is_empty())
    } else {
        None
    }
}

/// What a node may write without looking at the stored object.
pub enum NodeWrite {
    Allowed,
    /// Allowed if the pod is bound to this node.
    IfPodOnNode,
    /// A create: allowed if the object in the body is named after this node.
    IfBodyNamedMe,
    Denied(String),
}

/// May node `me` do `verb` on this target? (`sub`: subresource.)
pub fn node_write(me: &str, kind: &str, namespace: Option<&str>, name: Option<&str>, sub: Option<&str>, verb: &str) -> NodeWrite {
    match (kind, sub) {
        ("Node", _) if name == Some(me) => NodeWrite::Allowed,
        ("Node", None) if verb == "post" && name.is_none() => NodeWrite::IfBodyNamedMe,
        ("Lease", None) if namespace == Some("kube-node-lease") && name == Some(me) => NodeWrite::Allowed,
        ("Lease", None) if namespace == Some("kube-node-lease") && verb == "post" && name.is_none() => NodeWrite::IfBodyNamedMe,
        ("Pod", Some("status")) if name.is_some() => NodeWrite::IfPodOnNode,
        ("Pod", None) if verb == "delete" && name.is_some() => NodeWrite::IfPodOnNode,
        _ => NodeWrite::Denied(format!("node {me:?} may write only its own Node, its Lease and its pods' status")),
    }
}

pub fn access(who: &Identity) -> Access {
    let has = |g: &str| who.organizations.iter().any(|o| o == g);
    if has(GITOPS) || has(CONTROLLERS) || has(SCHEDULER) {
        Access::Write
    } else if has(NODES) {
        Access::Read
    } else if has(VIEWERS) {
        Access::View
    } else {
        Access::None
    }
}
