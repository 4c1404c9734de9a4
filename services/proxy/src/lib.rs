//! kapp's Service proxy: Services and EndpointSlices become one nftables table that kapp
//! owns (`inet kapp`), changed by one atomic `nft -f -` transaction per change.
//!
//! - [`model`]: the objects → the desired service ports (pure);
//! - [`nft`]: service ports → nft programs, full or per-change (pure);
//! - [`exec`]: `nft` and `conntrack` behind traits;
//! - [`proxier`]: applies changes, remembers what it programmed, checks and repairs;
//! - [`run`]: the watch loop (Services and EndpointSlices through the apiserver).

pub mod exec;
pub mod model;
pub mod nft;
pub mod proxier;

pub use exec::{Conntrack, ConntrackCommand, ExecError, Nft, NftCommand};
pub use model::{desired, Desired, Endpoint, Family, PortKey, Protocol, ServicePort};
pub use nft::{parse_cidr, RenderConfig};
pub use proxier::{CheckReport, Proxier, SyncStats};
pub mod run;
pub use run::{run, Pacing};
