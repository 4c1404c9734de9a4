//! kapp's kubelet: runs the pods bound to its node with youki's libcontainer, in-process (no
//! container daemon), and reports their truth back to the apiserver.
//!
//! - [`image`]: OCI registry pulls and air-gap imports into a content-addressed store,
//!   layers unpacked for overlayfs;
//! - [`runtime`]: overlay root filesystems, OCI runtime specs, libcontainer, exits, logs;
//! - [`net`]: pod network namespaces, veths on a node bridge, IPAM;
//! - [`kubelet`]: Node registration, Lease heartbeats, the pod watch and one worker per pod;
//! - `server`: the HTTPS logs endpoint for the apiserver's `pods/log`.

pub mod image;
pub mod kubelet;
pub mod net;
pub mod runtime;
mod fork;
mod server;
pub mod stats;

pub use kubelet::{parse_labels, parse_taints, Config, Taints, FlagError, Kubelet, KubeletError};
