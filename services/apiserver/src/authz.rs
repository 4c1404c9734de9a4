//! Who may do what, from the client certificate's groups (its O entries). Coarse for now:
//! writers (gitops, controllers, scheduler) may write everything; nodes and viewers only
//! read, and viewers never see Secret data.

use kapp_tls::Identity;

pub const GITOPS: &str = "kapp:gitops";
pub const CONTROLLERS: &str = "kapp:controllers";
pub const SCHEDULER: &str = "kapp:scheduler";
pub const NODES: &str = "kapp:nodes";
pub const VIEWERS: &str = "kapp:viewers";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Write,
    Read,
    /// Read, with Secret data removed.
    View,
    None,
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
