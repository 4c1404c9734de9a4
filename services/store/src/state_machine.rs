//! The replicated state machine: applies committed log entries to the MVCC key space,
//! keeps client sessions for exactly-once writes, and builds and installs snapshots.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use rocksdb::{IteratorMode, WriteBatch, DB};
use serde::{Deserialize, Serialize};

use crate::db::{dec, enc, event_key, CF_EVENTS, CF_KV, CF_SESSIONS, CF_SM};
use kapp_store_client::StoreError;
use crate::mvcc::{self, encode_revs, get_kv, KvRecord, Snap, View, KEY_REVS};
use crate::types::*;
use crate::watch::{Published, WatchHub};

type SErr = StorageError<NodeId>;
type Membership = StoredMembership<NodeId, Node>;

/// Sessions kept at most; the least recently used is forgotten beyond this.
pub const MAX_SESSIONS: usize = 4096;
use kapp_store_client::limits::SESSION_WINDOW;

const KEY_META: &[u8] = b"meta";
/// Session ids are `log index * SESSIONS_PER_ENTRY + place in the batch`.
const SESSIONS_PER_ENTRY: u64 = 1 << 16;
const SNAP_MAGIC: &[u8; 8] = b"KAPPSNP1";
/// The current snapshot's raft metadata; its data is in `<snapshot_id>.snap` beside it.
const SNAP_META_FILE: &str = "current.meta";

fn snap_data_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.snap"))
}

/// Remove snapshot data files other than `keep` (open handles stay readable).
fn remove_other_snapshots(dir: &Path, keep: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "snap") && path != keep {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// State-machine metadata, stored under `sm/meta` with every applied entry.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
struct SmMeta {
    applied: Option<LogId<NodeId>>,
    membership: Membership,
    revision: Revision,
    compacted: Revision,
    /// A batch entry applied part way: (its log index, commands done).
    partial: Option<(u64, u32)>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
struct SessionMeta {
    acked_below: u64,
    last_used: u64,
}

#[derive(Default)]
struct Session {
    meta: Option<SessionMeta>,
    cached: BTreeSet<u64>,
}

fn session_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

fn response_key(id: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The state machine. openraft owns it and calls it from one task.
pub struct StateMachine {
    db: Arc<DB>,
    hub: Arc<WatchHub>,
    meta: SmMeta,
    sessions: HashMap<u64, Session>,
    /// (last_used, session) for least-recently-used eviction.
    lru: BTreeSet<(u64, u64)>,
    snap_dir: PathBuf,
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn sm_read(e: impl std::fmt::Display) -> SErr {
    StorageIOError::read_state_machine(&io_err(e)).into()
}

fn sm_write(e: impl std::fmt::Display) -> SErr {
    StorageIOError::write_state_machine(&io_err(e)).into()
}

impl StateMachine {
    /// Load the state machine from the database. Snapshots live in `snap_dir`.
    pub fn open(db: Arc<DB>, snap_dir: &Path) -> Result<StateMachine, StoreError> {
        std::fs::create_dir_all(snap_dir)
            .map_err(|e| StoreError::Storage(format!("cannot create {}: {e}", snap_dir.display())))?;
        let meta: SmMeta = match View::get(&*db, CF_SM, KEY_META)? {
            Some(b) => dec(&b).map_err(StoreError::Storage)?,
            None => SmMeta::default(),
        };
        let hub = Arc::new(WatchHub::new(meta.revision, meta.compacted));
        let mut sm = StateMachine {
            db,
            hub,
            meta,
            sessions: HashMap::new(),
            lru: BTreeSet::new(),
            snap_dir: snap_dir.to_path_buf(),
        };
        sm.load_sessions()?;
        Ok(sm)
    }

    /// The watch hub fed by this state machine.
    pub fn hub(&self) -> Arc<WatchHub> {
        self.hub.clone()
    }

    fn load_sessions(&mut self) -> Result<(), StoreError> {
        self.sessions.clear();
        self.lru.clear();
        for item in self.db.iterator_cf(self.db.cf(CF_SESSIONS), IteratorMode::Start) {
            let (k, v) = item.map_err(mvcc::storage_err)?;
            let mut idb = [0u8; 8];
            idb.copy_from_slice(&k[..8]);
            let id = u64::from_be_bytes(idb);
            let s = self.sessions.entry(id).or_default();
            if k.len() == 8 {
                let m: SessionMeta = dec(&v).map_err(StoreError::Storage)?;
                s.meta = Some(m);
                self.lru.insert((m.last_used, id));
            } else {
                let mut sb = [0u8; 8];
                sb.copy_from_slice(&k[8..16]);
                s.cached.insert(u64::from_be_bytes(sb));
            }
        }
        Ok(())
    }

    fn write_meta(&self, batch: &mut WriteBatch) {
        batch.put_cf(self.db.cf(CF_SM), KEY_META, enc(&self.meta));
        batch.put_cf(self.db.cf(CF_SM), KEY_REVS, encode_revs(self.meta.revision, self.meta.compacted));
    }

    fn register_session(&mut self, id: u64, index: u64, batch: &mut WriteBatch) -> ApplyOutcome {
        while self.lru.len() >= MAX_SESSIONS {
            let Some(&(used, old)) = self.lru.iter().next() else { break };
            self.lru.remove(&(used, old));
            self.drop_session(old, batch);
        }
        let meta = SessionMeta { acked_below: 0, last_used: index };
        batch.put_cf(self.db.cf(CF_SESSIONS), session_key(id), enc(&meta));
        self.sessions.insert(id, Session { meta: Some(meta), cached: BTreeSet::new() });
        self.lru.insert((index, id));
        ApplyOutcome::Session { id }
    }

    fn drop_session(&mut self, id: u64, batch: &mut WriteBatch) {
        if let Some(s) = self.sessions.remove(&id) {
            let cf = self.db.cf(CF_SESSIONS);
            for seq in s.cached {
                batch.delete_cf(cf, response_key(id, seq));
            }
            batch.delete_cf(cf, session_key(id));
        }
    }

    /// Exactly-once bookkeeping before a write: a cached answer for a retry, or a refusal.
    fn session_check(&mut self, id: &RequestId, index: u64, batch: &mut WriteBatch) -> Result<Option<ApplyOutcome>, SErr> {
        let cf = self.db.cf(CF_SESSIONS);
        let Some(s) = self.sessions.get_mut(&id.session) else {
            return Ok(Some(ApplyOutcome::Refused(Refusal::SessionExpired { session: id.session, seq: id.seq })));
        };
        let Some(mut meta) = s.meta else {
            return Ok(Some(ApplyOutcome::Refused(Refusal::SessionExpired { session: id.session, seq: id.seq })));
        };
        // Forget answers the client has acknowledged, and anything outside the window.
        let floor = meta.acked_below.max(id.acked_below).max(id.seq.saturating_sub(SESSION_WINDOW));
        while let Some(&oldest) = s.cached.first() {
            if oldest >= floor {
                break;
            }
            s.cached.pop_first();
            batch.delete_cf(cf, response_key(id.session, oldest));
        }
        if id.seq < floor {
            return Ok(Some(ApplyOutcome::Refused(Refusal::SessionExpired { session: id.session, seq: id.seq })));
        }
        if s.cached.contains(&id.seq) {
            let raw = self.db.get_cf(cf, response_key(id.session, id.seq)).map_err(sm_read)?;
            if let Some(raw) = raw {
                return Ok(Some(dec(&raw).map_err(sm_read)?));
            }
        }
        self.lru.remove(&(meta.last_used, id.session));
        meta.acked_below = floor;
        meta.last_used = index;
        self.lru.insert((index, id.session));
        s.meta = Some(meta);
        batch.put_cf(cf, session_key(id.session), enc(&meta));
        Ok(None)
    }

    fn remember(&mut self, id: &RequestId, outcome: &ApplyOutcome, batch: &mut WriteBatch) {
        if let Some(s) = self.sessions.get_mut(&id.session) {
            s.cached.insert(id.seq);
            batch.put_cf(self.db.cf(CF_SESSIONS), response_key(id.session, id.seq), enc(outcome));
        }
    }

    /// Execute a transaction against the state before it. Every member computes the same.
    fn exec_txn(&mut self, txn: &Txn, batch: &mut WriteBatch, events: &mut Vec<Event>) -> Result<ApplyOutcome, SErr> {
        let db = &*self.db;
        let current = self.meta.revision;
        let mut succeeded = true;
        for c in &txn.compare {
            let rec = get_kv(db, &c.key).map_err(sm_read)?;
            if !compare_holds(c, rec.as_ref()) {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded { &txn.success } else { &txn.failure };
        // Refuse before writing anything if a read cannot be served.
        for op in ops {
            if let Op::Range(r) = op {
                if r.revision > current {
                    return Ok(ApplyOutcome::Refused(Refusal::FutureRevision { requested: r.revision, current }));
                }
                if r.revision != 0 && r.revision < self.meta.compacted {
                    return Ok(ApplyOutcome::Refused(Refusal::Compacted {
                        requested: r.revision,
                        compacted: self.meta.compacted,
                    }));
                }
            }
        }
        let rev = current + 1;
        let kv_cf = db.cf(CF_KV);
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Range(r) => {
                    let resp = mvcc::range(db, r, current, self.meta.compacted).map_err(sm_read)?;
                    results.push(OpResult::Range(resp));
                }
                Op::Put { key, value, prev_kv } => {
                    let prev = get_kv(db, key).map_err(sm_read)?;
                    let rec = KvRecord {
                        create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                        mod_revision: rev,
                        version: prev.as_ref().map_or(1, |p| p.version + 1),
                        value: value.clone(),
                    };
                    batch.put_cf(kv_cf, key, enc(&rec));
                    let prev = prev.map(|p| p.into_kv(key.clone()));
                    events.push(Event { kind: EventKind::Put, kv: rec.into_kv(key.clone()), prev_kv: prev.clone() });
                    results.push(OpResult::Put { prev: if *prev_kv { prev } else { None } });
                }
                Op::Delete { range, prev_kv } => {
                    let mut gone = Vec::new();
                    mvcc::scan_current(db, range, |k, rec| {
                        gone.push(rec.into_kv(k));
                        true
                    })
                    .map_err(sm_read)?;
                    for p in &gone {
                        batch.delete_cf(kv_cf, &p.key);
                        events.push(Event {
                            kind: EventKind::Delete,
                            kv: KeyValue {
                                key: p.key.clone(),
                                create_revision: 0,
                                mod_revision: rev,
                                version: 0,
                                value: Vec::new(),
                            },
                            prev_kv: Some(p.clone()),
                        });
                    }
                    let deleted = gone.len() as u64;
                    results.push(OpResult::Delete { deleted, prev: if *prev_kv { gone } else { Vec::new() } });
                }
            }
        }
        if !events.is_empty() {
            let ev_cf = db.cf(CF_EVENTS);
            for (sub, ev) in events.iter().enumerate() {
                batch.put_cf(ev_cf, event_key(rev, sub as u32), enc(ev));
            }
            self.meta.revision = rev;
        }
        Ok(ApplyOutcome::Txn(TxnResponse { succeeded, revision: self.meta.revision, results }))
    }

    fn exec_compact(&mut self, revision: Revision, batch: &mut WriteBatch) -> ApplyOutcome {
        if revision <= self.meta.compacted {
            return ApplyOutcome::Refused(Refusal::Compacted { requested: revision, compacted: self.meta.compacted });
        }
        if revision > self.meta.revision {
            return ApplyOutcome::Refused(Refusal::FutureRevision { requested: revision, current: self.meta.revision });
        }
        batch.delete_range_cf(self.db.cf(CF_EVENTS), event_key(0, 0), event_key(revision + 1, 0));
        self.meta.compacted = revision;
        ApplyOutcome::Compacted { revision }
    }

    /// Apply one command as its own atomic RocksDB write. `sub` is its place in a batch
    /// entry (0 otherwise); `last` says whether the entry is complete after it.
    fn apply_cmd(&mut self, log_id: LogId<NodeId>, sub: u32, last: bool, cmd: LogCommand) -> Result<ApplyOutcome, SErr> {
        let mut batch = WriteBatch::default();
        let mut events = Vec::new();
        let index = log_id.index;
        let outcome = match cmd {
            LogCommand::RegisterSession => self.register_session(index * SESSIONS_PER_ENTRY + u64::from(sub), index, &mut batch),
            LogCommand::Compact { revision } => self.exec_compact(revision, &mut batch),
            LogCommand::Txn { id, txn } => {
                let cached = match &id {
                    Some(id) => self.session_check(id, index, &mut batch)?,
                    None => None,
                };
                match cached {
                    Some(outcome) => outcome,
                    None => {
                        let outcome = self.exec_txn(&txn, &mut batch, &mut events)?;
                        if let Some(id) = &id {
                            self.remember(id, &outcome, &mut batch);
                        }
                        outcome
                    }
                }
            }
            LogCommand::Batch(_) => ApplyOutcome::Refused(Refusal::Invalid("nested batch".into())),
        };
        if last {
            self.meta.applied = Some(log_id);
            self.meta.partial = None;
        } else {
            self.meta.partial = Some((index, sub + 1));
        }
        self.write_meta(&mut batch);
        self.db.write(batch).map_err(sm_write)?;
        if let ApplyOutcome::Compacted { revision } = outcome {
            self.hub.set_compacted(revision);
        }
        if !events.is_empty() {
            self.hub.publish(Published::Changes { revision: self.meta.revision, events });
        }
        Ok(outcome)
    }

    /// Apply one log entry. The commands of a batch entry are written one by one; until the
    /// last, `partial` records how many are done, so a crash (or a snapshot taken meanwhile)
    /// never applies one twice: the entry is re-applied from where it stopped.
    fn apply_one(&mut self, entry: openraft::Entry<TypeConfig>) -> Result<ApplyOutcome, SErr> {
        let log_id = entry.log_id;
        match entry.payload {
            EntryPayload::Blank => self.apply_meta_only(log_id),
            EntryPayload::Membership(m) => {
                self.meta.membership = StoredMembership::new(Some(log_id), m);
                self.apply_meta_only(log_id)
            }
            EntryPayload::Normal(LogCommand::Batch(cmds)) => {
                let done = match self.meta.partial {
                    Some((index, done)) if index == log_id.index => done as usize,
                    _ => 0,
                };
                let n = cmds.len();
                if n == 0 {
                    return self.apply_meta_only(log_id).map(|_| ApplyOutcome::Batch(Vec::new()));
                }
                let mut outcomes = Vec::with_capacity(n);
                for (k, cmd) in cmds.into_iter().enumerate() {
                    if k < done {
                        // Applied before a restart; nobody waits for its answer any more.
                        outcomes.push(ApplyOutcome::None);
                        continue;
                    }
                    outcomes.push(self.apply_cmd(log_id, k as u32, k + 1 == n, cmd)?);
                }
                Ok(ApplyOutcome::Batch(outcomes))
            }
            EntryPayload::Normal(cmd) => self.apply_cmd(log_id, 0, true, cmd),
        }
    }

    fn apply_meta_only(&mut self, log_id: LogId<NodeId>) -> Result<ApplyOutcome, SErr> {
        self.meta.applied = Some(log_id);
        self.meta.partial = None;
        let mut batch = WriteBatch::default();
        self.write_meta(&mut batch);
        self.db.write(batch).map_err(sm_write)?;
        Ok(ApplyOutcome::None)
    }
}

pub(crate) fn compare_holds(c: &Compare, rec: Option<&KvRecord>) -> bool {
    use std::cmp::Ordering;
    let ord = match &c.target {
        CompareTarget::ModRevision(r) => rec.map_or(0, |x| x.mod_revision).cmp(r),
        CompareTarget::CreateRevision(r) => rec.map_or(0, |x| x.create_revision).cmp(r),
        CompareTarget::Version(v) => rec.map_or(0, |x| x.version).cmp(v),
        CompareTarget::Value(v) => match rec {
            // A missing key matches no value comparison at all.
            None => return false,
            Some(x) => x.value.as_slice().cmp(v.as_slice()),
        },
    };
    match c.op {
        CompareOp::Equal => ord == Ordering::Equal,
        CompareOp::NotEqual => ord != Ordering::Equal,
        CompareOp::Greater => ord == Ordering::Greater,
        CompareOp::Less => ord == Ordering::Less,
    }
}

/// Writes snapshot frames: `[tag u8][len u32 BE][payload]`, then a crc32 of all before it.
struct FrameWriter<W: Write> {
    w: W,
    crc: crc32fast::Hasher,
}

const TAG_META: u8 = 1;
const TAG_KV: u8 = 2;
const TAG_SESSION: u8 = 3;
const TAG_END: u8 = 0xff;

impl<W: Write> FrameWriter<W> {
    fn put(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.crc.update(buf);
        self.w.write_all(buf)
    }
    fn frame(&mut self, tag: u8, a: &[u8], b: &[u8]) -> std::io::Result<()> {
        self.put(&[tag])?;
        self.put(&(a.len() as u32).to_be_bytes())?;
        self.put(a)?;
        self.put(&(b.len() as u32).to_be_bytes())?;
        self.put(b)
    }
    fn finish(mut self) -> std::io::Result<W> {
        self.put(&[TAG_END])?;
        let sum = self.crc.clone().finalize();
        self.w.write_all(&sum.to_be_bytes())?;
        self.w.flush()?;
        Ok(self.w)
    }
}

/// Write the state visible in `snap` to `path` (fsynced). Returns the metadata it holds.
fn write_snapshot_file(db: &DB, path: &Path) -> Result<SmMeta, std::io::Error> {
    let snap = Snap { db, snap: db.snapshot() };
    let meta: SmMeta = match snap.get(CF_SM, KEY_META).map_err(io_err)? {
        Some(b) => dec(&b).map_err(io_err)?,
        None => SmMeta::default(),
    };
    let file = std::fs::File::create(path)?;
    let mut fw = FrameWriter { w: BufWriter::with_capacity(1 << 20, file), crc: crc32fast::Hasher::new() };
    fw.put(SNAP_MAGIC)?;
    fw.frame(TAG_META, &enc(&meta), &[])?;
    for (cf, tag) in [(CF_KV, TAG_KV), (CF_SESSIONS, TAG_SESSION)] {
        for item in snap.iter(cf, &[], None) {
            let (k, v) = item.map_err(io_err)?;
            fw.frame(tag, &k, &v)?;
        }
    }
    let w = fw.finish()?;
    w.into_inner().map_err(|e| io_err(e.error()))?.sync_all()?;
    Ok(meta)
}

struct FrameReader<R: Read> {
    r: R,
    crc: crc32fast::Hasher,
}

impl<R: BufRead> FrameReader<R> {
    fn take(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        let mut b = vec![0u8; n];
        self.r.read_exact(&mut b)?;
        self.crc.update(&b);
        Ok(b)
    }
    fn len(&mut self) -> std::io::Result<usize> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    /// Next frame, or None at the end marker (whose checksum is verified).
    fn next(&mut self) -> std::io::Result<Option<(u8, Vec<u8>, Vec<u8>)>> {
        let tag = self.take(1)?[0];
        if tag == TAG_END {
            let expect = self.crc.clone().finalize();
            let mut sum = [0u8; 4];
            self.r.read_exact(&mut sum)?;
            if u32::from_be_bytes(sum) != expect {
                return Err(io_err("snapshot checksum mismatch"));
            }
            return Ok(None);
        }
        let la = self.len()?;
        if la > 64 << 20 {
            return Err(io_err(format!("snapshot frame of {la} bytes is implausible")));
        }
        let a = self.take(la)?;
        let lb = self.len()?;
        if lb > 64 << 20 {
            return Err(io_err(format!("snapshot frame of {lb} bytes is implausible")));
        }
        let b = self.take(lb)?;
        Ok(Some((tag, a, b)))
    }
}

fn open_frames(file: std::fs::File) -> std::io::Result<FrameReader<BufReader<std::fs::File>>> {
    let mut fr = FrameReader { r: BufReader::with_capacity(1 << 20, file), crc: crc32fast::Hasher::new() };
    if fr.take(8)? != SNAP_MAGIC {
        return Err(io_err("not a kapp store snapshot"));
    }
    Ok(fr)
}

/// Read a received snapshot twice: once to verify its checksum, once to load it into one
/// atomic batch that replaces the state machine's contents.
fn load_snapshot_file(db: &DB, mut file: std::fs::File) -> std::io::Result<SmMeta> {
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(0))?;
    let mut check = open_frames(file.try_clone()?)?;
    while check.next()?.is_some() {}
    file.seek(std::io::SeekFrom::Start(0))?;
    let mut fr = open_frames(file)?;
    let mut batch = WriteBatch::default();
    let max_key = vec![0xffu8; kapp_store_client::limits::MAX_KEY_BYTES + 1];
    batch.delete_range_cf(db.cf(CF_KV), &[][..], &max_key[..]);
    batch.delete_range_cf(db.cf(CF_EVENTS), &[][..], &[0xffu8; 13][..]);
    batch.delete_range_cf(db.cf(CF_SESSIONS), &[][..], &[0xffu8; 17][..]);
    let mut meta = None;
    while let Some((tag, a, b)) = fr.next()? {
        match tag {
            TAG_META => meta = Some(dec::<SmMeta>(&a).map_err(io_err)?),
            TAG_KV => batch.put_cf(db.cf(CF_KV), a, b),
            TAG_SESSION => batch.put_cf(db.cf(CF_SESSIONS), a, b),
            other => return Err(io_err(format!("unknown snapshot frame tag {other}"))),
        }
    }
    let mut meta = meta.ok_or_else(|| io_err("snapshot has no metadata frame"))?;
    // History is not part of a snapshot: everything before it counts as compacted.
    meta.compacted = meta.revision;
    batch.put_cf(db.cf(CF_SM), KEY_META, enc(&meta));
    batch.put_cf(db.cf(CF_SM), KEY_REVS, encode_revs(meta.revision, meta.compacted));
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    db.write_opt(batch, &wo).map_err(io_err)?;
    Ok(meta)
}

/// Builds snapshots from a point-in-time view of the database, off raft's core task.
pub struct SnapshotBuilder {
    db: Arc<DB>,
    snap_dir: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let db = self.db.clone();
        let dir = self.snap_dir.clone();
        let (meta, file) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let tmp = dir.join("building.tmp");
            let sm = write_snapshot_file(&db, &tmp)?;
            let last = sm.applied;
            let id = match last {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, rand::random::<u32>()),
                None => format!("0-0-{}", rand::random::<u32>()),
            };
            let data = snap_data_path(&dir, &id);
            let meta = SnapshotMeta { last_log_id: last, last_membership: sm.membership, snapshot_id: id };
            std::fs::rename(&tmp, &data)?;
            // The metadata names the data file, so switching it over is one atomic rename.
            crate::db::write_file_synced(&dir.join(SNAP_META_FILE), &enc(&meta))?;
            remove_other_snapshots(&dir, &data)?;
            // Everything the snapshot holds must be durable before raft may purge the log.
            db.flush_wal(true).map_err(io_err)?;
            let file = std::fs::File::open(&data)?;
            Ok((meta, file))
        })
        .await
        .map_err(sm_write)?
        .map_err(|e| SErr::from(StorageIOError::write_snapshot(None, &e)))?;
        Ok(Snapshot { meta, snapshot: Box::new(tokio::fs::File::from_std(file)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, Membership), SErr> {
        Ok((self.meta.applied, self.meta.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyOutcome>, SErr>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        for entry in entries {
            out.push(self.apply_one(entry)?);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { db: self.db.clone(), snap_dir: self.snap_dir.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, SErr> {
        let path = self.snap_dir.join(format!("incoming-{}.tmp", rand::random::<u64>()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(sm_write)?;
        // The file stays reachable through the handle; its name is not needed again.
        std::fs::remove_file(&path).map_err(sm_write)?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), SErr> {
        let std_file = snapshot.into_std().await;
        let db = self.db.clone();
        let dir = self.snap_dir.clone();
        let raft_meta = meta.clone();
        let loaded = tokio::task::spawn_blocking(move || -> std::io::Result<SmMeta> {
            use std::io::Seek;
            let mut f = std_file;
            let loaded = load_snapshot_file(&db, f.try_clone()?)?;
            // Keep it as our current snapshot, for members that lag behind us later.
            f.seek(std::io::SeekFrom::Start(0))?;
            let tmp = dir.join("receiving.tmp");
            let mut out = std::fs::File::create(&tmp)?;
            std::io::copy(&mut f, &mut out)?;
            out.sync_all()?;
            let data = snap_data_path(&dir, &raft_meta.snapshot_id);
            std::fs::rename(&tmp, &data)?;
            crate::db::write_file_synced(&dir.join(SNAP_META_FILE), &enc(&raft_meta))?;
            remove_other_snapshots(&dir, &data)?;
            Ok(loaded)
        })
        .await
        .map_err(sm_write)?
        .map_err(|e| SErr::from(StorageIOError::write_snapshot(Some(meta.signature()), &e)))?;
        self.meta = loaded;
        self.meta.applied = meta.last_log_id;
        self.meta.membership = meta.last_membership.clone();
        self.load_sessions().map_err(sm_read)?;
        self.hub.publish(Published::Reset { revision: self.meta.revision });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let meta_path = self.snap_dir.join(SNAP_META_FILE);
        if !meta_path.exists() {
            return Ok(None);
        }
        let raw = std::fs::read(&meta_path).map_err(sm_read)?;
        let meta: SnapshotMeta<NodeId, Node> = dec(&raw).map_err(sm_read)?;
        let file = tokio::fs::File::open(snap_data_path(&self.snap_dir, &meta.snapshot_id)).await.map_err(sm_read)?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(file) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_cmd(k: &str) -> LogCommand {
        LogCommand::Txn { id: None, txn: Txn { success: vec![Op::Put { key: k.into(), value: b"v".to_vec(), prev_kv: false }], ..Default::default() } }
    }

    fn entry(index: u64, cmd: LogCommand) -> openraft::Entry<TypeConfig> {
        openraft::Entry { log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Normal(cmd) }
    }

    #[test]
    fn a_batch_entry_resumes_where_a_crash_stopped_it() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let db = crate::db::open(&dir.path().join("db"), 1).unwrap();
            StateMachine::open(db, &dir.path().join("snap")).unwrap()
        };
        let batch = || LogCommand::Batch(vec![put_cmd("/a"), put_cmd("/b"), put_cmd("/c")]);
        {
            let mut sm = open();
            // Two of three commands written, then the process dies.
            let log_id = entry(1, batch()).log_id;
            sm.apply_cmd(log_id, 0, false, put_cmd("/a")).unwrap();
            sm.apply_cmd(log_id, 1, false, put_cmd("/b")).unwrap();
            assert_eq!(sm.meta.applied, None, "the entry is not applied until its last command is");
        }
        let mut sm = open();
        assert_eq!(sm.meta.partial, Some((1, 2)));
        // raft re-applies the entry: only the third command runs.
        let out = sm.apply_one(entry(1, batch())).unwrap();
        let ApplyOutcome::Batch(outs) = out else { panic!("batch outcome expected") };
        assert_eq!(outs.len(), 3);
        assert!(matches!(outs[2], ApplyOutcome::Txn(ref t) if t.revision == 3));
        assert_eq!(sm.meta.revision, 3, "three commands, three revisions, none twice");
        assert_eq!(sm.meta.partial, None);
        assert_eq!(sm.meta.applied.map(|l| l.index), Some(1));
        for k in ["/a", "/b", "/c"] {
            assert_eq!(get_kv(&*sm.db, k.as_bytes()).unwrap().unwrap().version, 1, "{k} written once");
        }
        // Sessions registered in one batch get distinct ids.
        let out = sm.apply_one(entry(2, LogCommand::Batch(vec![LogCommand::RegisterSession, LogCommand::RegisterSession]))).unwrap();
        let ApplyOutcome::Batch(outs) = out else { panic!("batch outcome expected") };
        assert_ne!(outs[0], outs[1]);
    }
}
