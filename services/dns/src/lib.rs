//! kapp's cluster DNS: hickory-server authoritative for the cluster domain
//! (`cluster.local`) and the reverse zones of the service network, everything else
//! forwarded upstream through hickory-resolver (with its cache).
//!
//! - [`records`]: Services, EndpointSlices and Pods → the zones' records (pure);
//! - [`server`]: the catalog, zone handlers and forwarder; updates replace only the
//!   record sets that changed and bump the SOA serial;
//! - [`negative`]: NXDOMAIN / NODATA and A/AAAA/PTR hits from an index instead of
//!   hickory's walks of the zone;
//! - [`udp`]: the UDP loop (answers for kapp's zones inline, the rest in bounded tasks);
//! - [`run`]: the watch loop.

pub mod negative;
pub mod records;
pub mod run;
pub mod server;
pub mod udp;

pub use records::{records, Records, ZoneConfig};
pub use run::run;
pub use server::{parse_upstream, DnsError, DnsServer, Upstreams, Zones};
