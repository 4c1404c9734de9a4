//! Pod addresses from the node's pod CIDR, persisted in one JSON file (written to a temporary
//! name, synced, renamed) before an address is handed out, so a restarted kubelet neither
//! leaks addresses nor hands out one still in use.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::NetError;

/// An IPv4 CIDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, NetError> {
        let bad = || NetError::BadCidr(s.to_string());
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Cidr { addr: Ipv4Addr::from(u32::from(addr) & mask), prefix })
    }

    pub fn network(&self) -> u32 {
        u32::from(self.addr)
    }

    pub fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    /// The gateway (the bridge's address): the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network() + 1)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == self.network()
    }

    /// Whether the two share an address: the wider one holds the other's network address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        let (wide, narrow) = if self.prefix <= other.prefix { (self, other) } else { (other, self) };
        wide.contains(narrow.addr)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    cidr: Option<String>,
    /// Address → owner (pod uid).
    allocated: BTreeMap<Ipv4Addr, String>,
    /// Where the next search starts (addresses are not reused sooner than necessary).
    next: u32,
}

/// The allocator. Every change is on disk before it is visible to callers.
pub struct Ipam {
    cidr: Cidr,
    path: Option<PathBuf>,
    state: State,
}

impl Ipam {
    /// In memory only (tests).
    pub fn in_memory(cidr: Cidr) -> Ipam {
        Ipam { cidr, path: None, state: State::default() }
    }

    /// Load `path` (or start empty). Entries outside `cidr` (the node's CIDR changed) are
    /// dropped.
    pub fn open(cidr: Cidr, path: &Path) -> Result<Ipam, NetError> {
        let mut state: State = match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| NetError::Io { path: path.to_path_buf(), reason: format!("ipam state: {e}") })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(NetError::Io { path: path.to_path_buf(), reason: e.to_string() }),
        };
        state.allocated.retain(|ip, _| cidr.contains(*ip));
        state.cidr = Some(cidr.to_string());
        Ok(Ipam { cidr, path: Some(path.to_path_buf()), state })
    }

    pub fn cidr(&self) -> Cidr {
        self.cidr
    }

    /// The address of `owner`, allocating one if it has none.
    pub fn allocate(&mut self, owner: &str) -> Result<Ipv4Addr, NetError> {
        if let Some(ip) = self.get(owner) {
            return Ok(ip);
        }
        let size = self.cidr.size();
        // Host addresses are 2 .. size-2 (network, gateway and broadcast excluded).
        let hosts = size - 3;
        for i in 0..hosts {
            let offset = 2 + (self.state.next + i) % hosts;
            let ip = Ipv4Addr::from(self.cidr.network() + offset);
            if !self.state.allocated.contains_key(&ip) {
                let mut next = self.state.clone();
                next.allocated.insert(ip, owner.to_string());
                next.next = (offset - 2 + 1) % hosts;
                self.save(&next)?;
                self.state = next;
                return Ok(ip);
            }
        }
        Err(NetError::Exhausted(self.cidr.to_string()))
    }

    pub fn get(&self, owner: &str) -> Option<Ipv4Addr> {
        self.state.allocated.iter().find(|(_, o)| *o == owner).map(|(ip, _)| *ip)
    }

    /// Release `owner`'s address (no-op if it has none).
    pub fn release(&mut self, owner: &str) -> Result<(), NetError> {
        if self.get(owner).is_none() {
            return Ok(());
        }
        let mut next = self.state.clone();
        next.allocated.retain(|_, o| o != owner);
        self.save(&next)?;
        self.state = next;
        Ok(())
    }

    /// Owners holding an address.
    pub fn owners(&self) -> Vec<String> {
        self.state.allocated.values().cloned().collect()
    }

    fn save(&self, state: &State) -> Result<(), NetError> {
        let Some(path) = &self.path else { return Ok(()) };
        use std::io::Write;
        let tmp = path.with_extension("tmp");
        let io = |e: std::io::Error| NetError::Io { path: path.clone(), reason: e.to_string() };
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&serde_json::to_vec_pretty(state).expect("ipam state serialises")).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Some(dir) = path.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.88.1.77/24").unwrap();
        assert_eq!(c.to_string(), "10.88.1.0/24");
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 88, 1, 1));
        assert!(c.contains(Ipv4Addr::new(10, 88, 1, 255)) && !c.contains(Ipv4Addr::new(10, 88, 2, 1)));
        for bad in ["10.0.0.0", "10.0.0.0/31", "x/24", "10.0.0.0/4"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allocate_release_exhaust() {
        let mut ipam = Ipam::in_memory(Cidr::parse("10.0.0.0/29").unwrap());
        // /29: .0 network, .1 gateway, .7 broadcast → .2 ..= .6
        let a = ipam.allocate("a").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(ipam.allocate("a").unwrap(), a, "idempotent per owner");
        let got: Vec<_> = ["b", "c", "d", "e"].iter().map(|o| ipam.allocate(o).unwrap()).collect();
        assert_eq!(got.last(), Some(&Ipv4Addr::new(10, 0, 0, 6)));
        assert!(matches!(ipam.allocate("f"), Err(NetError::Exhausted(_))));
        ipam.release("c").unwrap();
        assert_eq!(ipam.allocate("f").unwrap(), Ipv4Addr::new(10, 0, 0, 4));
        ipam.release("nobody").unwrap();
    }

    #[test]
    fn addresses_are_not_reused_at_once() {
        let mut ipam = Ipam::in_memory(Cidr::parse("10.0.0.0/24").unwrap());
        let a = ipam.allocate("a").unwrap();
        ipam.release("a").unwrap();
        assert_ne!(ipam.allocate("b").unwrap(), a);
    }

    #[test]
    fn survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.json");
        let cidr = Cidr::parse("10.1.0.0/24").unwrap();
        let (a, b) = {
            let mut ipam = Ipam::open(cidr, &path).unwrap();
            (ipam.allocate("a").unwrap(), ipam.allocate("b").unwrap())
        };
        let mut ipam = Ipam::open(cidr, &path).unwrap();
        assert_eq!(ipam.get("a"), Some(a));
        let c = ipam.allocate("c").unwrap();
        assert!(c != a && c != b);
        ipam.release("a").unwrap();
        let ipam = Ipam::open(cidr, &path).unwrap();
        assert_eq!(ipam.get("a"), None);
        assert_eq!(ipam.owners().len(), 2);
        // A changed CIDR drops entries outside it.
        let ipam = Ipam::open(Cidr::parse("10.2.0.0/24").unwrap(), &path).unwrap();
        assert!(ipam.owners().is_empty());
    }
}
