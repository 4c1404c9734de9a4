//! Reading the multi-version key space: the current state lives in `kv`, history in
//! `events`. A read at a past revision starts from the current state and undoes every event
//! after that revision, using the `prev_kv` each event carries.

use std::collections::{BTreeMap, HashSet};

use rocksdb::{ColumnFamily, DBIteratorWithThreadMode, Direction, IteratorMode, ReadOptions, SnapshotWithThreadMode, DB};
use serde::{Deserialize, Serialize};

use crate::db::{dec, event_key, CF_EVENTS, CF_KV, CF_SM};
use kapp_store_client::{limits, StoreError};
use crate::types::{Event, KeyRange, KeyValue, RangeRequest, RangeResponse, Refusal, Revision};

/// What is stored in `kv` for a key (the key itself is the RocksDB key).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub(crate) struct KvRecord {
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub version: i64,
    pub value: Vec<u8>,
}

impl KvRecord {
    pub fn into_kv(self, key: Vec<u8>) -> KeyValue {
        KeyValue {
            key,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: self.value,
        }
    }
}

/// Key in `sm` of the current and compacted revisions (16 bytes), written with every change.
pub(crate) const KEY_REVS: &[u8] = b"revs";

pub(crate) fn encode_revs(current: Revision, compacted: Revision) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&current.to_be_bytes());
    b[8..].copy_from_slice(&compacted.to_be_bytes());
    b
}

pub(crate) fn decode_revs(b: &[u8]) -> (Revision, Revision) {
    let mut c = [0u8; 8];
    let mut k = [0u8; 8];
    c.copy_from_slice(&b[..8]);
    k.copy_from_slice(&b[8..16]);
    (i64::from_be_bytes(c), i64::from_be_bytes(k))
}

/// Something to read from: the live database (the state machine, which is its only writer)
/// or a point-in-time snapshot (readers, so a range sees one revision).
pub(crate) trait View {
    fn cf(&self, name: &str) -> &ColumnFamily;
    fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    fn iter<'a>(&'a self, cf: &str, from: &[u8], upper: Option<Vec<u8>>) -> DBIteratorWithThreadMode<'a, DB>;
}

fn read_opts(upper: Option<Vec<u8>>) -> ReadOptions {
    let mut ro = ReadOptions::default();
    if let Some(u) = upper {
        ro.set_iterate_upper_bound(u);
    }
    ro
}

impl View for DB {
    fn cf(&self, name: &str) -> &ColumnFamily {
        self.cf_handle(name).expect("column family exists: created at open")
    }
    fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_cf(View::cf(self, cf), key).map_err(storage_err)
    }
    fn iter<'a>(&'a self, cf: &str, from: &[u8], upper: Option<Vec<u8>>) -> DBIteratorWithThreadMode<'a, DB> {
        self.iterator_cf_opt(View::cf(self, cf), read_opts(upper), IteratorMode::From(from, Direction::Forward))
    }
}

/// A snapshot together with the database it came from.
pub(crate) struct Snap<'a> {
    pub db: &'a DB,
    pub snap: SnapshotWithThreadMode<'a, DB>,
}

impl View for Snap<'_> {
    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("column family exists: created at open")
    }
    fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.snap.get_cf(self.cf(cf), key).map_err(storage_err)
    }
    fn iter<'a>(&'a self, cf: &str, from: &[u8], upper: Option<Vec<u8>>) -> DBIteratorWithThreadMode<'a, DB> {
        self.snap.iterator_cf_opt(self.cf(cf), read_opts(upper), IteratorMode::From(from, Direction::Forward))
    }
}

pub(crate) fn storage_err(e: rocksdb::Error) -> StoreError {
    StoreError::Storage(e.into_string())
}

/// Current and compacted revision as seen by `view`.
pub(crate) fn revisions(view: &impl View) -> Result<(Revision, Revision), StoreError> {
    Ok(view.get(CF_SM, KEY_REVS)?.map(|b| decode_revs(&b)).unwrap_or((0, 0)))
}

pub(crate) fn get_kv(view: &impl View, key: &[u8]) -> Result<Option<KvRecord>, StoreError> {
    match view.get(CF_KV, key)? {
        None => Ok(None),
        Some(b) => dec(&b).map(Some).map_err(StoreError::Storage),
    }
}

fn upper_of(range: &KeyRange) -> Option<Vec<u8>> {
    if range.range_end == [0] {
        None
    } else {
        Some(range.range_end.clone())
    }
}

/// Visit the current key-values in `range` in key order; the visitor returns false to stop.
pub(crate) fn scan_current(
    view: &impl View,
    range: &KeyRange,
    mut visit: impl FnMut(Vec<u8>, KvRecord) -> bool,
) -> Result<(), StoreError> {
    if range.is_single() {
        if let Some(rec) = get_kv(view, &range.key)? {
            visit(range.key.clone(), rec);
        }
        return Ok(());
    }
    for item in view.iter(CF_KV, &range.key, upper_of(range)) {
        let (k, v) = item.map_err(storage_err)?;
        let rec: KvRecord = dec(&v).map_err(StoreError::Storage)?;
        if !visit(k.to_vec(), rec) {
            break;
        }
    }
    Ok(())
}

/// Serve a range read. `current`/`compacted` are the revisions of `view`.
pub(crate) fn range(
    view: &impl View,
    req: &RangeRequest,
    current: Revision,
    compacted: Revision,
) -> Result<RangeResponse, StoreError> {
    let limit = if req.limit == 0 { limits::MAX_RANGE_RESULTS } else { req.limit.min(limits::MAX_RANGE_RESULTS) };
    let mut resp = RangeResponse { revision: current, ..Default::default() };
    let push = |k: Vec<u8>, rec: KvRecord, resp: &mut RangeResponse| {
        resp.count += 1;
        if req.count_only {
            return;
        }
        if (resp.kvs.len() as u64) < limit {
            let mut kv = rec.into_kv(k);
            if req.keys_only {
                kv.value = Vec::new();
            }
            resp.kvs.push(kv);
        } else {
            resp.more = true;
        }
    };
    if req.revision == 0 || req.revision == current {
        scan_current(view, &req.range, |k, rec| {
            push(k, rec, &mut resp);
            true
        })?;
        return Ok(resp);
    }
    if req.revision > current {
        return Err(Refusal::FutureRevision { requested: req.revision, current }.into());
    }
    if req.revision < compacted {
        return Err(Refusal::Compacted { requested: req.revision, compacted }.into());
    }
    for (k, rec) in state_at(view, &req.range, req.revision)? {
        push(k, rec, &mut resp);
    }
    Ok(resp)
}

/// The key-values in `range` as they were at revision `at` (which must not be compacted).
fn state_at(view: &impl View, range: &KeyRange, at: Revision) -> Result<BTreeMap<Vec<u8>, KvRecord>, StoreError> {
    let mut state = BTreeMap::new();
    scan_current(view, range, |k, rec| {
        state.insert(k, rec);
        true
    })?;
    let mut undone = HashSet::new();
    for item in view.iter(CF_EVENTS, &event_key(at + 1, 0), None) {
        let (_, v) = item.map_err(storage_err)?;
        let ev: Event = dec(&v).map_err(StoreError::Storage)?;
        if !range.contains(&ev.kv.key) || !undone.insert(ev.kv.key.clone()) {
            continue;
        }
        // The first event after `at` on a key tells what the key was at `at`.
        match ev.prev_kv {
            Some(p) => {
                state.insert(
                    p.key,
                    KvRecord {
                        create_revision: p.create_revision,
                        mod_revision: p.mod_revision,
                        version: p.version,
                        value: p.value,
                    },
                );
            }
            None => {
                state.remove(&ev.kv.key);
            }
        }
    }
    Ok(state)
}

/// Events with revision `>= from` in `range`, in order, at most `max` of them, read from
/// `view`. Returns the events and the revision to continue from.
pub(crate) fn events_from(
    view: &impl View,
    range: &KeyRange,
    from: Revision,
    max: usize,
) -> Result<(Vec<Event>, Option<Revision>), StoreError> {
    let mut out = Vec::new();
    let mut last_rev = None;
    for item in view.iter(CF_EVENTS, &event_key(from, 0), None) {
        let (k, v) = item.map_err(storage_err)?;
        let rev = crate::db::event_key_rev(&k);
        if out.len() >= max && Some(rev) != last_rev {
            return Ok((out, Some(rev)));
        }
        last_rev = Some(rev);
        let ev: Event = dec(&v).map_err(StoreError::Storage)?;
        if range.contains(&ev.kv.key) {
            out.push(ev);
        }
    }
    Ok((out, None))
}
