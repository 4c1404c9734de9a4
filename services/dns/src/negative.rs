//! Answers without a scan. hickory's in-memory zone decides NXDOMAIN versus NODATA by
//! walking every record key of the zone, which made a query for a missing name ~50 times
//! as dear as a hit (and Kubernetes resolvers ask for many missing names: the search path
//! with `ndots:5`), and finds even a plain A record by walking the name up to the apex,
//! two ordered-map lookups per label, looking for delegations (kapp's zones have none).
//! This wrapper keeps an index of the zone's names (with their ancestors, so empty
//! non-terminals are NODATA) and record sets, answers the negative cases and the A, AAAA
//! and PTR hits itself from hash maps, and passes everything else (SOA, NS, SRV with its
//! additional records, CNAME chains) to the zone.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use hickory_proto::rr::{LowerName, RecordSet, RecordType, RrKey, TSigResponseContext};
use hickory_server::server::{Request, RequestInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AuthLookup, AxfrPolicy, LookupControlFlow, LookupError, LookupOptions, LookupRecords, ZoneHandler, ZoneType};
use hickory_proto::op::ResponseCode;

/// The names and record sets a zone holds.
#[derive(Default)]
pub struct Index {
    names: HashSet<LowerName>,
    sets: HashSet<(LowerName, RecordType)>,
    /// The record sets answered directly (A, AAAA, PTR).
    answers: HashMap<(LowerName, RecordType), Arc<RecordSet>>,
}

/// Record types answered from the index: no additional records, no chasing.
fn direct(t: RecordType) -> bool {
    matches!(t, RecordType::A | RecordType::AAAA | RecordType::PTR)
}

impl Index {
    /// The index of `keys` (name, type) in the zone `origin`.
    pub fn new<'a>(origin: &LowerName, keys: impl IntoIterator<Item = (&'a LowerName, RecordType)>) -> Index {
        let mut ix = Index::default();
        ix.names.insert(origin.clone());
        for (name, t) in keys {
            ix.sets.insert((name.clone(), t));
            let mut n = name.clone();
            while origin.zone_of(&n) && ix.names.insert(n.clone()) && n != *origin {
                n = n.base_name();
            }
        }
        ix
    }

    /// The index with the zone's `records` of the directly answered types.
    pub fn with_answers<'a>(mut self, records: impl IntoIterator<Item = (&'a RrKey, &'a Arc<RecordSet>)>) -> Index {
        self.answers = records.into_iter().filter(|(k, _)| direct(k.record_type)).map(|(k, set)| ((k.name.clone(), k.record_type), set.clone())).collect();
        self
    }
}

/// An in-memory zone with indexed negative answers.
pub struct IndexedZone {
    pub inner: Arc<InMemoryZoneHandler>,
    pub index: Arc<RwLock<Index>>,
}

enum Verdict {
    Delegate,
    Answer(Arc<RecordSet>),
    NxDomain,
    NoData,
}

impl IndexedZone {
    fn verdict(&self, name: &LowerName, rtype: RecordType) -> Verdict {
        if matches!(rtype, RecordType::SOA | RecordType::NS | RecordType::ANY | RecordType::AXFR | RecordType::IXFR) || name == self.inner.origin() {
            return Verdict::Delegate;
        }
        let ix = self.index.read().unwrap_or_else(|e| e.into_inner());
        if direct(rtype) {
            if let Some(set) = ix.answers.get(&(name.clone(), rtype)) {
                return Verdict::Answer(set.clone());
            }
        }
        if !ix.names.contains(name) {
            Verdict::NxDomain
        } else if ix.sets.contains(&(name.clone(), rtype)) || ix.sets.contains(&(name.clone(), RecordType::CNAME)) {
            Verdict::Delegate
        } else {
            Verdict::NoData
        }
    }
}

/// The answer the index gives itself, if any.
fn indexed(v: Verdict, lookup_options: LookupOptions) -> Option<LookupControlFlow<AuthLookup>> {
    match v {
        Verdict::Delegate => None,
        Verdict::Answer(set) => Some(LookupControlFlow::Continue(Ok(AuthLookup::answers(LookupRecords::new(lookup_options, set), None)))),
        Verdict::NxDomain => Some(LookupControlFlow::Continue(Err(LookupError::from(ResponseCode::NXDomain)))),
        Verdict::NoData => Some(LookupControlFlow::Continue(Err(LookupError::NameExists))),
    }
}

#[async_trait::async_trait]
impl ZoneHandler for IndexedZone {
    fn zone_type(&self) -> ZoneType {
        self.inner.zone_type()
    }

    fn axfr_policy(&self) -> AxfrPolicy {
        self.inner.axfr_policy()
    }

    fn origin(&self) -> &LowerName {
        self.inner.origin()
    }

    async fn lookup(&self, name: &LowerName, rtype: RecordType, request_info: Option<&RequestInfo<'_>>, lookup_options: LookupOptions) -> LookupControlFlow<AuthLookup> {
        if let Some(answer) = indexed(self.verdict(name, rtype), lookup_options) {
            return answer;
        }
        self.inner.lookup(name, rtype, request_info, lookup_options).await
    }

    async fn search(&self, request: &Request, lookup_options: LookupOptions) -> (LookupControlFlow<AuthLookup>, Option<TSigResponseContext>) {
        if let Ok(info) = request.request_info() {
            if let Some(answer) = indexed(self.verdict(info.query.name(), info.query.query_type()), lookup_options) {
                return (answer, None);
            }
        }
        self.inner.search(request, lookup_options).await
    }

    async fn nsec_records(&self, name: &LowerName, lookup_options: LookupOptions) -> LookupControlFlow<AuthLookup> {
        self.inner.nsec_records(name, lookup_options).await
    }
}
