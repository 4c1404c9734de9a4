//! The DNS server: hickory's `Catalog` with one in-memory zone handler per zone kapp is
//! authoritative for and a forwarding handler (hickory-resolver, with its cache) for
//! everything else. Updates replace only the record sets that changed and bump the SOA
//! serial; queries see them at once.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverOpts};
use hickory_server::store::forwarder::{ForwardConfig, ForwardZoneHandler};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use hickory_server::Server;

use crate::negative::{Index, IndexedZone};
use crate::records::{Records, ZoneConfig};

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("forwarder: {0}")]
    Forwarder(String),
    #[error("zone {0}: {1}")]
    Zone(String, String),
}

/// Where to forward what is not ours.
#[derive(Clone, Debug, Default)]
pub struct Upstreams {
    pub servers: Vec<SocketAddr>,
    /// Entries the forwarder's cache holds.
    pub cache_size: u64,
    pub timeout: Option<Duration>,
}

/// The zones' handlers and what was last written into them.
pub struct Zones {
    cfg: ZoneConfig,
    handlers: BTreeMap<Name, (Arc<InMemoryZoneHandler>, Arc<std::sync::RwLock<Index>>)>,
    applied: Records,
    serial: u32,
}

/// What one update changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpdateStats {
    pub sets_changed: usize,
    pub zones_changed: usize,
}

impl Zones {
    fn new(cfg: ZoneConfig, serial: u32) -> Result<Zones, DnsError> {
        let mut handlers = BTreeMap::new();
        for origin in cfg.origins() {
            let mut h = InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
            if !h.upsert_mut(soa(&cfg, &origin, serial), serial) {
                return Err(DnsError::Zone(origin.to_string(), "the SOA was not accepted".into()));
            }
            let index = Index::new(&LowerName::new(&origin), []);
            handlers.insert(origin, (Arc::new(h), Arc::new(std::sync::RwLock::new(index))));
        }
        Ok(Zones { cfg, handlers, applied: Records::new(), serial })
    }

    pub fn config(&self) -> &ZoneConfig {
        &self.cfg
    }

    /// Make the zones hold exactly `desired`: replace the record sets that differ, drop
    /// those that went, and bump the serial of each zone that changed.
    pub async fn apply(&mut self, desired: &Records) -> UpdateStats {
        let mut stats = UpdateStats::default();
        let empty = BTreeMap::new();
        for (origin, (handler, index)) in &self.handlers {
            let want = desired.get(origin).unwrap_or(&empty);
            let have = self.applied.get(origin).unwrap_or(&empty);
            let gone: Vec<&RrKey> = have.keys().filter(|k| !want.contains_key(*k)).collect();
            let changed: Vec<(&RrKey, &RecordSet)> = want.iter().filter(|(k, v)| have.get(*k) != Some(*v)).collect();
            if gone.is_empty() && changed.is_empty() {
                continue;
            }
            stats.zones_changed += 1;
            stats.sets_changed += gone.len() + changed.len();
            let serial = self.serial.wrapping_add(1);
            let mut records = handler.records_mut().await;
            for k in gone {
                records.remove(k);
            }
            for (k, set) in changed {
                records.insert(k.clone(), Arc::new(set.clone()));
            }
            let soa_key = RrKey::new(LowerName::new(origin), RecordType::SOA);
            let mut soa_set = RecordSet::with_ttl(origin.clone(), RecordType::SOA, self.cfg.ttl);
            soa_set.insert(soa(&self.cfg, origin, serial), serial);
            records.insert(soa_key, Arc::new(soa_set));
            let fresh = Index::new(&LowerName::new(origin), want.keys().map(|k| (&k.name, k.record_type))).with_answers(records.iter());
            *index.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        }
        if stats.zones_changed > 0 {
            self.serial = self.serial.wrapping_add(1);
        }
        self.applied = desired.iter().filter(|(o, _)| self.handlers.contains_key(*o)).map(|(o, r)| (o.clone(), r.clone())).collect();
        stats
    }

    /// The current serial.
    pub fn serial(&self) -> u32 {
        self.serial
    }
}

fn soa(cfg: &ZoneConfig, origin: &Name, serial: u32) -> Record {
    let mname = Name::from_ascii("ns.dns").ok().and_then(|n| n.append_domain(&cfg.domain).ok()).unwrap_or_else(|| cfg.domain.clone());
    let rname = Name::from_ascii("hostmaster").ok().and_then(|n| n.append_domain(&cfg.domain).ok()).unwrap_or_else(|| cfg.domain.clone());
    // Refresh, retry, expire as CoreDNS's kubernetes plugin; minimum (negative TTL) = ttl.
    Record::from_rdata(origin.clone(), cfg.ttl, RData::SOA(SOA::new(mname, rname, serial, 7200, 1800, 86400, cfg.ttl)))
}

/// A running DNS server: UDP through kapp's loop ([`crate::udp`]), TCP through hickory's.
pub struct DnsServer {
    server: Server<crate::udp::SharedCatalog>,
    udp: tokio::task::JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
    pub udp_addr: SocketAddr,
    pub tcp_addr: SocketAddr,
}

impl DnsServer {
    /// Serve `zones` on UDP and TCP at `listen` (port 0: any), forwarding the rest to
    /// `upstreams` (none: answer REFUSED for other names). Returns the server and the
    /// zones' writer.
    pub async fn start(cfg: ZoneConfig, listen: SocketAddr, upstreams: &Upstreams) -> Result<(DnsServer, Zones), DnsError> {
        let serial = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs() as u32);
        let zones = Zones::new(cfg, serial)?;
        let mut catalog = Catalog::new();
        for (origin, (h, index)) in &zones.handlers {
            let zone = IndexedZone { inner: h.clone(), index: index.clone() };
            catalog.upsert(LowerName::new(origin), vec![Arc::new(zone) as Arc<dyn ZoneHandler>]);
        }
        if !upstreams.servers.is_empty() {
            let fwd = forwarder(upstreams)?;
            catalog.upsert(LowerName::new(&Name::root()), vec![Arc::new(fwd) as Arc<dyn ZoneHandler>]);
        }
        let (udp, udp_addr, tcp, tcp_addr) = bind_pair(listen).await?;
        let catalog = Arc::new(catalog);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let udp = tokio::spawn(crate::udp::serve(udp, catalog.clone(), zones.cfg.origins(), stopped));
        let mut server = Server::new(crate::udp::SharedCatalog(catalog));
        server.register_listener(tcp, Duration::from_secs(10), 64 << 10);
        Ok((DnsServer { server, udp, stop, udp_addr, tcp_addr }, zones))
    }

    /// Stop serving and wait for the server's tasks to end.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let _ = self.udp.await;
        if let Err(e) = self.server.shutdown_gracefully().await {
            tracing::warn!(error = %e, "dns server shutdown");
        }
    }
}

/// How many ephemeral ports are tried for a UDP + TCP pair on one port number.
const PAIR_TRIES: usize = 16;

/// A UDP socket and a TCP listener on the same port of `listen`'s address. With port 0,
/// UDP picks the port; if TCP's port of that number is taken, another is tried.
async fn bind_pair(listen: SocketAddr) -> Result<(tokio::net::UdpSocket, SocketAddr, tokio::net::TcpListener, SocketAddr), DnsError> {
    let mut tries = 0;
    loop {
        let udp = tokio::net::UdpSocket::bind(listen).await.map_err(|source| DnsError::Bind { addr: listen, source })?;
        let udp_addr = udp.local_addr().map_err(|source| DnsError::Bind { addr: listen, source })?;
        let tcp_at = SocketAddr::new(listen.ip(), udp_addr.port());
        match tokio::net::TcpListener::bind(tcp_at).await {
            Ok(tcp) => {
                let tcp_addr = tcp.local_addr().map_err(|source| DnsError::Bind { addr: tcp_at, source })?;
                return Ok((udp, udp_addr, tcp, tcp_addr));
            }
            Err(e) if listen.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse && tries + 1 < PAIR_TRIES => tries += 1,
            Err(source) => return Err(DnsError::Bind { addr: tcp_at, source }),
        }
    }
}

fn forwarder(up: &Upstreams) -> Result<ForwardZoneHandler, DnsError> {
    let name_servers = up
        .servers
        .iter()
        .map(|a| {
            let mut udp = ConnectionConfig::udp();
            udp.port = a.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = a.port();
            NameServerConfig::new(a.ip(), true, vec![udp, tcp])
        })
        .collect();
    let mut options = ResolverOpts::default();
    options.cache_size = if up.cache_size == 0 { 4096 } else { up.cache_size };
    if let Some(t) = up.timeout {
        options.timeout = t;
    }
    options.attempts = 2;
    ForwardZoneHandler::builder_tokio(ForwardConfig { name_servers, options: Some(options) }).build().map_err(DnsError::Forwarder)
}

/// Parse `ip` or `ip:port` (port 53 when absent).
pub fn parse_upstream(s: &str) -> Option<SocketAddr> {
    s.parse::<SocketAddr>().ok().or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pair_shares_one_port_and_a_taken_fixed_port_is_named() {
        let (_u, udp, _t, tcp) = bind_pair("127.0.0.1:0".parse().unwrap()).await.unwrap();
        assert_eq!(udp.port(), tcp.port());
        // A fixed port whose TCP side is taken is not replaced by another.
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = taken.local_addr().unwrap();
        match bind_pair(at).await {
            Err(DnsError::Bind { addr, .. }) => assert_eq!(addr, at),
            other => panic!("expected a bind error, got {:?}", other.map(|p| (p.1, p.3))),
        }
    }
}
