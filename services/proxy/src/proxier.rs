//! Carries the desired model into the kernel and remembers what it programmed, so a
//! change costs only the service ports it touches and nothing is ever read back whole.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::exec::{Conntrack, ExecError, Nft};
use crate::model::{Desired, PortKey, Protocol, ServicePort};
use crate::nft::{self, Fragment, RenderConfig, SharedChanges};

/// What one sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Whether the whole table was rewritten.
    pub full: bool,
    /// Service ports added, changed or removed.
    pub changed: usize,
    /// Bytes of nft program sent (0: nothing to do).
    pub program_bytes: usize,
    pub elapsed: Duration,
}

/// What a consistency check found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub missing_chains: usize,
    pub extra_chains: usize,
    pub wrong_elements: usize,
    pub wrong_rule_counts: usize,
    /// Whether a full resync repaired it.
    pub repaired: bool,
}

impl CheckReport {
    pub fn clean(&self) -> bool {
        self.missing_chains + self.extra_chains + self.wrong_elements + self.wrong_rule_counts == 0
    }
}

struct Programmed {
    port: ServicePort,
    frag: Fragment,
}

/// Service chains whose rule count one check samples (round robin).
const CHECK_SAMPLE: usize = 64;

pub struct Proxier<N: Nft, C: Conntrack> {
    cfg: RenderConfig,
    nft: N,
    conntrack: C,
    programmed: BTreeMap<PortKey, Programmed>,
    /// Which service port owns each map element (VIP:port and nodePort must be unique;
    /// a second claimant is left out until the owner lets go and a resync runs).
    owners: HashMap<(String, String), PortKey>,
    /// Service ports some of whose elements another port owns: re-rendered at every
    /// sync until they get them.
    shadowed: BTreeSet<PortKey>,
    /// References to each hairpin element (set, endpoint . endpoint) from programmed ports.
    hairpin: HashMap<(String, String), usize>,
    synced: bool,
    check_cursor: Option<String>,
}

impl<N: Nft, C: Conntrack> Proxier<N, C> {
    pub fn new(cfg: RenderConfig, nft: N, conntrack: C) -> Self {
        Proxier { cfg, nft, conntrack, programmed: BTreeMap::new(), owners: HashMap::new(), shadowed: BTreeSet::new(), hairpin: HashMap::new(), synced: false, check_cursor: None }
    }

    pub fn config(&self) -> &RenderConfig {
        &self.cfg
    }

    pub fn nft_mut(&mut self) -> &mut N {
        &mut self.nft
    }

    /// How many service ports are programmed.
    pub fn len(&self) -> usize {
        self.programmed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.programmed.is_empty()
    }

    /// Make the kernel match `desired`: the first time (and after a failed update) by
    /// rewriting the table in one transaction, afterwards by one transaction holding only
    /// the service ports that changed.
    pub fn sync(&mut self, desired: &Desired) -> Result<SyncStats, ExecError> {
        if !self.synced {
            return self.full_sync(desired);
        }
        let start = Instant::now();
        let mut changed: Vec<PortKey> = self.programmed.keys().filter(|k| !desired.contains_key(*k)).cloned().collect();
        changed.extend(desired.iter().filter(|(k, p)| self.programmed.get(*k).is_none_or(|old| old.port != **p)).map(|(k, _)| k.clone()));
        let retry: Vec<PortKey> = self.shadowed.iter().filter(|k| desired.contains_key(*k) && !changed.contains(k)).cloned().collect();
        let only_retries = changed.is_empty();
        changed.extend(retry);
        if only_retries && self.shadowed.is_empty() {
            return Ok(SyncStats { elapsed: start.elapsed(), ..Default::default() });
        }
        // Release the elements of every changed port first, so ports that swap a VIP or
        // nodePort in one batch do not shadow each other. Ownership changes are kept aside
        // (never a copy of the whole map) and applied once the kernel took the batch.
        let mut claims = Claims::over(&self.owners);
        for k in &changed {
            if let Some(old) = self.programmed.get(k) {
                for e in old.frag.elements.keys() {
                    if self.owners.get(e) == Some(k) {
                        claims.released.insert(e.clone());
                    }
                }
            }
        }
        let mut shadowed = self.shadowed.clone();
        let mut new_frags: Vec<(&PortKey, Option<Fragment>)> = vec![];
        for k in &changed {
            shadowed.remove(k);
            let frag = desired.get(k).map(|p| {
                let mut f = nft::fragment(&self.cfg, k, p);
                if claim(&mut claims, k, &mut f) {
                    shadowed.insert(k.clone());
                }
                f
            });
            new_frags.push((k, frag));
        }
        let pairs: Vec<(Option<&Fragment>, Option<&Fragment>)> = new_frags.iter().map(|(k, f)| (self.programmed.get(*k).map(|p| &p.frag), f.as_ref())).collect();
        let (hairpin, shared) = hairpin_changes(&self.hairpin, &pairs);
        let program = nft::update_program(&self.cfg, &pairs, &shared);
        let (released, claimed) = (claims.released, claims.claimed);
        if program.is_empty() {
            self.commit_claims(released, claimed, hairpin);
            self.shadowed = shadowed;
            return Ok(SyncStats { elapsed: start.elapsed(), ..Default::default() });
        }
        if let Err(e) = self.nft.apply(&program) {
            // Someone changed the table under us, or our model is wrong: start over.
            tracing::warn!(error = %e, "incremental nft update refused; rewriting the table");
            self.synced = false;
            let mut stats = self.full_sync(desired)?;
            stats.elapsed = start.elapsed();
            return Ok(stats);
        }
        let n = new_frags.len();
        let mut gone = vec![];
        for (k, frag) in new_frags {
            let old = self.programmed.remove(k);
            match (frag, desired.get(k)) {
                (Some(frag), Some(port)) => {
                    gone.extend(lost_udp_endpoints(k, old.as_ref().map(|o| &o.port), Some(port)));
                    self.programmed.insert(k.clone(), Programmed { port: port.clone(), frag });
                }
                _ => gone.extend(lost_udp_endpoints(k, old.as_ref().map(|o| &o.port), None)),
            }
        }
        self.commit_claims(released, claimed, hairpin);
        self.shadowed = shadowed;
        self.flush_conntrack(gone);
        Ok(SyncStats { full: false, changed: n, program_bytes: program.len(), elapsed: start.elapsed() })
    }

    /// Apply a batch's ownership and hairpin changes.
    fn commit_claims(&mut self, released: HashSet<(String, String)>, claimed: HashMap<(String, String), PortKey>, hairpin: HashMap<(String, String), isize>) {
        for e in released {
            self.owners.remove(&e);
        }
        self.owners.extend(claimed);
        for (e, d) in hairpin {
            let n = self.hairpin.entry(e.clone()).or_insert(0);
            *n = n.saturating_add_signed(d);
            if *n == 0 {
                self.hairpin.remove(&e);
            }
        }
    }

    /// Rewrite the whole table from `desired` in one transaction.
    pub fn full_sync(&mut self, desired: &Desired) -> Result<SyncStats, ExecError> {
        let start = Instant::now();
        let empty = HashMap::new();
        let mut claims = Claims::over(&empty);
        let mut shadowed = BTreeSet::new();
        let mut programmed = BTreeMap::new();
        for (k, p) in desired {
            let mut f = nft::fragment(&self.cfg, k, p);
            if claim(&mut claims, k, &mut f) {
                shadowed.insert(k.clone());
            }
            programmed.insert(k.clone(), Programmed { port: p.clone(), frag: f });
        }
        let program = nft::full_program(&self.cfg, programmed.values().map(|p| &p.frag));
        self.nft.apply(&program)?;
        let mut gone = vec![];
        for (k, old) in &self.programmed {
            gone.extend(lost_udp_endpoints(k, Some(&old.port), programmed.get(k).map(|p| &p.port)));
        }
        let changed = programmed.len();
        let mut hairpin = HashMap::new();
        for p in programmed.values() {
            for e in &p.frag.hairpin {
                *hairpin.entry(e.clone()).or_insert(0) += 1;
            }
        }
        self.hairpin = hairpin;
        self.programmed = programmed;
        self.owners = claims.claimed;
        self.shadowed = shadowed;
        self.synced = true;
        self.flush_conntrack(gone);
        Ok(SyncStats { full: true, changed, program_bytes: program.len(), elapsed: start.elapsed() })
    }

    /// Compare the kernel's table with what we programmed: the set of chains, every map
    /// element, and the rule count of a rotating sample of chains. Anything off is
    /// repaired by a full resync of what we last programmed.
    pub fn check(&mut self) -> Result<CheckReport, ExecError> {
        let mut report = CheckReport::default();
        let mut want_chains: BTreeSet<String> = nft::fixed_chains(&self.cfg).into_iter().map(|(n, _, _)| n).collect();
        let mut want_elems: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
        for p in self.programmed.values() {
            want_chains.extend(p.frag.chains.keys().cloned());
            for ((map, key), v) in &p.frag.elements {
                want_elems.entry(map.as_str()).or_default().insert(key.as_str(), v.as_str());
            }
        }
        for (set, elem) in self.hairpin.keys() {
            want_elems.entry(set.as_str()).or_default().insert(elem.as_str(), "");
        }
        let have = self.nft.chains(&self.cfg.table)?;
        report.missing_chains = want_chains.difference(&have).count();
        report.extra_chains = have.difference(&want_chains).count();
        if report.clean() {
            for m in nft::maps() {
                let have = if m.kind == "set" {
                    self.nft.set_elements(&self.cfg.table, &m.name)?.into_iter().map(|e| (e, String::new())).collect()
                } else {
                    self.nft.map_elements(&self.cfg.table, &m.name)?
                };
                let want = want_elems.get(m.name.as_str());
                let want_len = want.map_or(0, |w| w.len());
                let matching = have.iter().filter(|(k, v)| want.and_then(|w| w.get(k.as_str())) == Some(&v.as_str())).count();
                report.wrong_elements += (have.len() - matching) + (want_len - matching);
            }
        }
        if report.clean() {
            report.wrong_rule_counts = self.check_sample()?;
        }
        if !report.clean() {
            tracing::warn!(?report, "the nft table differs from what kapp programmed; rewriting it");
            let desired: Desired = self.programmed.iter().map(|(k, p)| (k.clone(), p.port.clone())).collect();
            self.full_sync(&desired)?;
            report.repaired = true;
        }
        Ok(report)
    }

    /// The rule counts of the core chains and of a rotating sample of the others (the
    /// shared balancing chains and the service ports' own chains).
    fn check_sample(&mut self) -> Result<usize, ExecError> {
        let mut fixed: Vec<(String, usize)> = nft::fixed_chains(&self.cfg).into_iter().map(|(n, _, r)| (n, r.len())).collect();
        let rest = fixed.split_off(nft::CORE_CHAINS);
        let mut all = fixed;
        let after = self.check_cursor.clone().unwrap_or_default();
        let mut others: Vec<(String, usize)> = rest;
        others.extend(self.programmed.values().flat_map(|p| p.frag.chains.iter()).map(|(n, r)| (n.clone(), r.len())));
        others.sort();
        let mut sample: Vec<(String, usize)> = others.into_iter().filter(|(n, _)| *n > after).take(CHECK_SAMPLE).collect();
        self.check_cursor = if sample.len() < CHECK_SAMPLE { None } else { sample.last().map(|s| s.0.clone()) };
        all.append(&mut sample);
        let mut wrong = 0;
        for (chain, n) in all {
            if self.nft.rule_count(&self.cfg.table, &chain)? != n {
                wrong += 1;
            }
        }
        Ok(wrong)
    }

    fn flush_conntrack(&mut self, gone: Vec<LostEndpoint>) {
        for g in gone {
            let r = match g {
                LostEndpoint::Vip { key, port } => self.conntrack.delete_udp(key.family, Some(port.0), port.1, port.2),
                LostEndpoint::NodePort { key, port, endpoint } => self.conntrack.delete_udp(key.family, None, port, endpoint),
                LostEndpoint::FirstEndpoint { vip, port } => self.conntrack.delete_udp_to(vip, port),
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, "conntrack flush failed");
            }
        }
    }
}

/// How `changes` move the hairpin reference counts, and the elements that appear
/// (0 → 1) or go (1 → 0).
fn hairpin_changes(counts: &HashMap<(String, String), usize>, changes: &[(Option<&Fragment>, Option<&Fragment>)]) -> (HashMap<(String, String), isize>, SharedChanges) {
    let mut delta: HashMap<(String, String), isize> = HashMap::new();
    for (old, new) in changes {
        for e in old.iter().flat_map(|f| f.hairpin.iter()) {
            *delta.entry(e.clone()).or_insert(0) -= 1;
        }
        for e in new.iter().flat_map(|f| f.hairpin.iter()) {
            *delta.entry(e.clone()).or_insert(0) += 1;
        }
    }
    let mut shared = SharedChanges::default();
    for (e, d) in &delta {
        let was = counts.get(e).copied().unwrap_or(0);
        let is = was.saturating_add_signed(*d);
        if is > 0 && was == 0 {
            shared.add.push(e.clone());
        } else if was > 0 && is == 0 {
            shared.delete.push(e.clone());
        }
    }
    shared.add.sort();
    shared.delete.sort();
    (delta, shared)
}

/// One batch's view of element ownership: the owners before it, minus what the batch
/// released, plus what it claimed.
struct Claims<'a> {
    base: &'a HashMap<(String, String), PortKey>,
    released: HashSet<(String, String)>,
    claimed: HashMap<(String, String), PortKey>,
}

impl<'a> Claims<'a> {
    fn over(base: &'a HashMap<(String, String), PortKey>) -> Self {
        Claims { base, released: HashSet::new(), claimed: HashMap::new() }
    }

    fn owner(&self, e: &(String, String)) -> Option<&PortKey> {
        self.claimed.get(e).or_else(|| if self.released.contains(e) { None } else { self.base.get(e) })
    }
}

/// Drop from `f` the elements another service port owns; record the rest as `k`'s.
/// Whether any was dropped.
fn claim(claims: &mut Claims<'_>, k: &PortKey, f: &mut Fragment) -> bool {
    let before = f.elements.len();
    f.elements.retain(|e, _| match claims.owner(e) {
        Some(other) if other != k => {
            tracing::warn!(service = %k, owner = %other, map = %e.0, key = %e.1, "address and port already taken; not programmed");
            false
        }
        Some(_) => true,
        None => {
            claims.claimed.insert(e.clone(), k.clone());
            true
        }
    });
    f.elements.len() != before
}

#[derive(Debug)]
enum LostEndpoint {
    Vip { key: PortKey, port: (std::net::IpAddr, u16, std::net::IpAddr) },
    NodePort { key: PortKey, port: u16, endpoint: std::net::IpAddr },
    FirstEndpoint { vip: std::net::IpAddr, port: u16 },
}

/// UDP conntrack entries that must go when `old` becomes `new`: flows to endpoints that
/// left (they would keep going to a dead backend), and, when a port gets its first
/// endpoint, flows recorded while it had none.
fn lost_udp_endpoints(k: &PortKey, old: Option<&ServicePort>, new: Option<&ServicePort>) -> Vec<LostEndpoint> {
    if k.protocol != Protocol::Udp {
        return vec![];
    }
    let mut out = vec![];
    if let Some(old) = old {
        for e in &old.endpoints {
            let kept = new.filter(|n| n.port == old.port && n.endpoints.iter().any(|x| x.ip == e.ip));
            for addr in old.addresses() {
                if !kept.is_some_and(|n| n.addresses().any(|a| a == addr)) {
                    out.push(LostEndpoint::Vip { key: k.clone(), port: (addr, old.port, e.ip) });
                }
            }
            if let Some(np) = old.node_port {
                if kept.is_none_or(|n| n.node_port != Some(np)) {
                    out.push(LostEndpoint::NodePort { key: k.clone(), port: np, endpoint: e.ip });
                }
            }
        }
    }
    if let Some(new) = new {
        if !new.endpoints.is_empty() && old.is_none_or(|o| o.endpoints.is_empty()) {
            for addr in new.addresses() {
                out.push(LostEndpoint::FirstEndpoint { vip: addr, port: new.port });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, Family};
    use std::net::IpAddr;
    use std::sync::{Arc, Mutex};

    /// Records programs; answers listings from a tiny model of the table it keeps by
    /// watching full programs and updates (enough for the check tests).
    #[derive(Clone, Default)]
    struct FakeNft {
        programs: Arc<Mutex<Vec<String>>>,
        refuse_next: Arc<Mutex<bool>>,
        chains: Arc<Mutex<BTreeSet<String>>>,
        elements: Arc<Mutex<BTreeMap<String, BTreeMap<String, String>>>>,
    }

    impl Nft for FakeNft {
        fn apply(&mut self, program: &str) -> Result<(), ExecError> {
            if std::mem::take(&mut *self.refuse_next.lock().unwrap()) {
                return Err(ExecError::Refused { stderr: "No such file or directory".into() });
            }
            self.programs.lock().unwrap().push(program.to_string());
            Ok(())
        }
        fn chains(&mut self, _: &str) -> Result<BTreeSet<String>, ExecError> {
            Ok(self.chains.lock().unwrap().clone())
        }
        fn map_elements(&mut self, _: &str, map: &str) -> Result<BTreeMap<String, String>, ExecError> {
            Ok(self.elements.lock().unwrap().get(map).cloned().unwrap_or_default())
        }
        fn set_elements(&mut self, _: &str, set: &str) -> Result<BTreeSet<String>, ExecError> {
            Ok(self.elements.lock().unwrap().get(set).map(|m| m.keys().cloned().collect()).unwrap_or_default())
        }
        fn rule_count(&mut self, _: &str, _: &str) -> Result<usize, ExecError> {
            Ok(0)
        }
    }

    #[derive(Clone, Default)]
    struct FakeConntrack(Arc<Mutex<Vec<String>>>);
    impl Conntrack for FakeConntrack {
        fn delete_udp(&mut self, _: Family, dst: Option<IpAddr>, port: u16, ep: IpAddr) -> Result<u32, ExecError> {
            self.0.lock().unwrap().push(format!("{dst:?}:{port}->{ep}"));
            Ok(1)
        }
        fn delete_udp_to(&mut self, dst: IpAddr, port: u16) -> Result<u32, ExecError> {
            self.0.lock().unwrap().push(format!("to {dst}:{port}"));
            Ok(0)
        }
    }

    fn key(name: &str, protocol: Protocol) -> PortKey {
        PortKey { namespace: "ns".into(), name: name.into(), port: "p53".into(), protocol, family: Family::V4 }
    }
    fn port(vip: &str, eps: &[&str]) -> ServicePort {
        ServicePort { cluster_ip: vip.parse().unwrap(), port: 53, node_port: None, endpoints: eps.iter().map(|e| Endpoint { ip: e.parse().unwrap(), port: 5353 }).collect(), affinity: None, external_ips: vec![] }
    }

    #[test]
    fn first_sync_is_full_then_only_changes_are_sent() {
        let nft = FakeNft::default();
        let ct = FakeConntrack::default();
        let mut p = Proxier::new(RenderConfig::default(), nft.clone(), ct.clone());
        let mut d = Desired::new();
        for i in 0..100 {
            d.insert(key(&format!("s{i}"), Protocol::Tcp), port(&format!("10.96.1.{i}"), &["10.244.0.2"]));
        }
        let s = p.sync(&d).unwrap();
        assert!(s.full);
        assert_eq!(s.changed, 100);
        assert_eq!(p.sync(&d).unwrap().program_bytes, 0, "nothing changed, nothing sent");
        d.get_mut(&key("s7", Protocol::Tcp)).unwrap().endpoints.push(Endpoint { ip: "10.244.0.3".parse().unwrap(), port: 5353 });
        let s = p.sync(&d).unwrap();
        assert!(!s.full);
        assert_eq!(s.changed, 1);
        let last = nft.programs.lock().unwrap().last().unwrap().clone();
        assert_eq!(
            last,
            "delete element inet kapp service-ips-v4 { 10.96.1.7 . tcp . 53 }\n\
             add element inet kapp hairpin-v4 { 10.244.0.3 . 10.244.0.3 }\n\
             add element inet kapp service-endpoints-v4 { 10.96.1.7 . tcp . 53 . 1 : 10.244.0.3 . 5353 }\n\
             add element inet kapp service-ips-v4 { 10.96.1.7 . tcp . 53 : goto lb-v4-2 }\n"
        );
    }

    #[test]
    fn hairpin_elements_live_while_any_port_has_the_endpoint() {
        let nft = FakeNft::default();
        let mut p = Proxier::new(RenderConfig::default(), nft.clone(), FakeConntrack::default());
        let mut d = Desired::new();
        d.insert(key("a", Protocol::Tcp), port("10.96.0.1", &["10.244.0.2"]));
        d.insert(key("b", Protocol::Tcp), port("10.96.0.2", &["10.244.0.2"]));
        p.sync(&d).unwrap();
        let full = nft.programs.lock().unwrap()[0].clone();
        assert!(full.contains("add element inet kapp hairpin-v4 { 10.244.0.2 . 10.244.0.2 }\n"), "once: {full}");
        d.remove(&key("a", Protocol::Tcp));
        p.sync(&d).unwrap();
        let upd = nft.programs.lock().unwrap().last().unwrap().clone();
        assert!(!upd.contains("hairpin"), "b still has the endpoint: {upd}");
        d.remove(&key("b", Protocol::Tcp));
        p.sync(&d).unwrap();
        let upd = nft.programs.lock().unwrap().last().unwrap().clone();
        assert!(upd.contains("delete element inet kapp hairpin-v4 { 10.244.0.2 . 10.244.0.2 }\n"), "{upd}");
        d.insert(key("c", Protocol::Tcp), port("10.96.0.3", &["10.244.0.2"]));
        p.sync(&d).unwrap();
        let upd = nft.programs.lock().unwrap().last().unwrap().clone();
        assert!(upd.contains("add element inet kapp hairpin-v4 { 10.244.0.2 . 10.244.0.2 }\n"), "back: {upd}");
    }

    #[test]
    fn udp_endpoint_leaving_flushes_its_conntrack_entries() {
        let ct = FakeConntrack::default();
        let mut p = Proxier::new(RenderConfig::default(), FakeNft::default(), ct.clone());
        let mut d = Desired::new();
        d.insert(key("dns", Protocol::Udp), port("10.96.0.10", &[]));
        p.sync(&d).unwrap();
        d.insert(key("dns", Protocol::Udp), port("10.96.0.10", &["10.244.0.2", "10.244.0.3"]));
        p.sync(&d).unwrap();
        assert_eq!(*ct.0.lock().unwrap(), ["to 10.96.0.10:53"]);
        d.insert(key("dns", Protocol::Udp), port("10.96.0.10", &["10.244.0.3"]));
        p.sync(&d).unwrap();
        assert_eq!(ct.0.lock().unwrap()[1], "Some(10.96.0.10):53->10.244.0.2");
        d.clear();
        p.sync(&d).unwrap();
        assert_eq!(ct.0.lock().unwrap()[2], "Some(10.96.0.10):53->10.244.0.3");
    }

    #[test]
    fn refused_update_falls_back_to_a_full_rewrite() {
        let nft = FakeNft::default();
        let mut p = Proxier::new(RenderConfig::default(), nft.clone(), FakeConntrack::default());
        let mut d = Desired::new();
        d.insert(key("a", Protocol::Tcp), port("10.96.0.1", &["10.244.0.2"]));
        p.sync(&d).unwrap();
        d.insert(key("b", Protocol::Tcp), port("10.96.0.2", &["10.244.0.2"]));
        *nft.refuse_next.lock().unwrap() = true;
        let s = p.sync(&d).unwrap();
        assert!(s.full);
        assert!(nft.programs.lock().unwrap().last().unwrap().starts_with("add table inet kapp\ndelete table"));
    }

    #[test]
    fn duplicate_vip_is_programmed_once_and_handed_over() {
        let nft = FakeNft::default();
        let mut p = Proxier::new(RenderConfig::default(), nft.clone(), FakeConntrack::default());
        let mut d = Desired::new();
        d.insert(key("a", Protocol::Tcp), port("10.96.0.1", &["10.244.0.2"]));
        d.insert(key("b", Protocol::Tcp), port("10.96.0.1", &["10.244.0.3"]));
        p.sync(&d).unwrap();
        let full = nft.programs.lock().unwrap()[0].clone();
        assert_eq!(full.matches("10.96.0.1 . tcp . 53 :").count(), 1, "{full}");
        assert_eq!(full.matches("10.96.0.1 . tcp . 53 . 0 :").count(), 1, "{full}");
        // a goes away: its elements are deleted once, and b takes the VIP over.
        d.remove(&key("a", Protocol::Tcp));
        p.sync(&d).unwrap();
        let upd = nft.programs.lock().unwrap().last().unwrap().clone();
        assert_eq!(upd.matches("delete element inet kapp service-ips-v4 { 10.96.0.1 . tcp . 53 }").count(), 1, "{upd}");
        assert_eq!(upd.matches("delete element inet kapp service-endpoints-v4 { 10.96.0.1 . tcp . 53 . 0 }").count(), 1, "{upd}");
        assert!(upd.contains("add element inet kapp service-endpoints-v4 { 10.96.0.1 . tcp . 53 . 0 : 10.244.0.3 . 5353 }"), "b takes the VIP over: {upd}");
    }

    #[test]
    fn check_repairs_a_table_someone_else_changed() {
        let nft = FakeNft::default();
        let mut p = Proxier::new(RenderConfig::default(), nft.clone(), FakeConntrack::default());
        let mut d = Desired::new();
        d.insert(key("a", Protocol::Tcp), port("10.96.0.1", &["10.244.0.2"]));
        p.sync(&d).unwrap();
        d.insert(key("b", Protocol::Tcp), ServicePort { affinity: Some(60), ..port("10.96.0.2", &["10.244.0.2"]) });
        p.sync(&d).unwrap();
        // The fake's "kernel" has only the fixed chains: b's chain (affinity) is missing.
        *nft.chains.lock().unwrap() = nft::fixed_chains(p.config()).into_iter().map(|c| c.0).collect();
        let r = p.check().unwrap();
        assert_eq!(r.missing_chains, 1, "the service chain");
        assert!(r.repaired);
        assert_eq!(nft.programs.lock().unwrap().len(), 3);
    }
}
