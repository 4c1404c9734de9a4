//! The raft log on RocksDB.
//!
//! Durability: entries are written to RocksDB without waiting for the disk, which makes them
//! readable at once, and a dedicated flusher thread then syncs the write-ahead log and only
//! after that tells openraft the entries are persisted. One sync covers every append that
//! queued up behind it (group commit), and raft's core task never waits on the disk. Votes,
//! truncations and purges are written with `sync = true` before returning.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use rocksdb::{IteratorMode, WriteBatch, WriteOptions, DB};

use crate::db::{dec, enc, CF_LOG, CF_RAFT};
use crate::types::{NodeId, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;
type SErr = StorageError<NodeId>;

const KEY_VOTE: &[u8] = b"vote";
const KEY_PURGED: &[u8] = b"last_purged";
const KEY_COMMITTED: &[u8] = b"committed";
/// Appends waiting for the flusher at most; `append` blocks beyond that (back-pressure).
const FLUSH_QUEUE: usize = 4096;

/// The raft log. Cheap to clone; clones share the database and the flusher.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    flusher: Arc<Flusher>,
}

/// The flusher thread's queue and handle. Dropping the last clone closes the queue and waits
/// for the thread, so its reference to the database is gone when the log store is: whoever
/// drops the last reference closes RocksDB, never a thread racing the process's exit.
struct Flusher {
    tx: Option<mpsc::SyncSender<LogFlushed<TypeConfig>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn idx_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn synced() -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    wo
}

impl LogStore {
    /// Wrap the database and start the flusher thread (it ends when every clone is dropped).
    pub fn new(db: Arc<DB>) -> LogStore {
        let (tx, rx) = mpsc::sync_channel::<LogFlushed<TypeConfig>>(FLUSH_QUEUE);
        let fdb = db.clone();
        let thread = std::thread::Builder::new()
            .name("store-wal-sync".into())
            .spawn(move || flusher(fdb, rx))
            .expect("spawn wal flusher thread");
        LogStore { db, flusher: Arc::new(Flusher { tx: Some(tx), thread: Some(thread) }) }
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("column family exists: created at open")
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, SErr> {
        let raw = self.db.get_cf(self.cf(CF_RAFT), key).map_err(|e| StorageIOError::read(&e))?;
        raw.map(|b| dec(&b).map_err(|e| StorageIOError::read(&AnyErr(e)).into())).transpose()
    }

    fn put_meta_synced<T: serde::Serialize>(&self, key: &[u8], v: &T) -> Result<(), std::io::Error> {
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_RAFT), key, enc(v));
        self.db.write_opt(b, &synced()).map_err(std::io::Error::other)
    }

    fn last_entry_id(&self) -> Result<Option<LogId<NodeId>>, SErr> {
        let mut it = self.db.iterator_cf(self.cf(CF_LOG), IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(item) => {
                let (_, v) = item.map_err(|e| StorageIOError::read_logs(&e))?;
                let entry: Entry = dec(&v).map_err(|e| StorageIOError::read_logs(&AnyErr(e)))?;
                Ok(Some(entry.log_id))
            }
        }
    }
}

fn flusher(db: Arc<DB>, rx: mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let result = db.flush_wal(true).map_err(|e| e.into_string());
        for cb in waiting {
            cb.log_io_completed(result.clone().map_err(std::io::Error::other));
        }
    }
}

/// A plain string error for openraft's `AnyError` conversions.
#[derive(Debug)]
struct AnyErr(String);
impl std::fmt::Display for AnyErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for AnyErr {}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, SErr> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => Some(e.saturating_add(1)),
            Bound::Excluded(&e) => Some(e),
            Bound::Unbounded => None,
        };
        let mut out = Vec::new();
        let it = self
            .db
            .iterator_cf(self.cf(CF_LOG), IteratorMode::From(&idx_key(start), rocksdb::Direction::Forward));
        for item in it {
            let (k, v) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let mut b = [0u8; 8];
            b.copy_from_slice(&k[..8]);
            let idx = u64::from_be_bytes(b);
            if end.is_some_and(|e| idx >= e) {
                break;
            }
            out.push(dec(&v).map_err(|e| StorageIOError::read_logs(&AnyErr(e)))?);
        }
        Ok(out)
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, SErr> {
        // Bound one replication batch so a lagging follower is fed in pieces.
        let end = end.min(start.saturating_add(1024));
        self.try_get_log_entries(start..end).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let last_purged: Option<LogId<NodeId>> = self.get_meta(KEY_PURGED)?;
        let last = self.last_entry_id()?.or(last_purged);
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SErr> {
        self.put_meta_synced(KEY_VOTE, vote).map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SErr> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SErr> {
        // Not synced: it only lets a restart re-apply sooner; the log itself is authoritative.
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_RAFT), KEY_COMMITTED, enc(&committed));
        self.db.write(b).map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SErr> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut b = WriteBatch::default();
        let cf = self.cf(CF_LOG);
        for entry in entries {
            b.put_cf(cf, idx_key(entry.log_id.index), enc(&entry));
        }
        self.db.write(b).map_err(|e| StorageIOError::write_logs(&e))?;
        // Durable only once the flusher has synced the WAL; openraft waits for the callback.
        self.flusher
            .tx
            .as_ref()
            .expect("the queue is open while a log store exists")
            .send(callback)
            .map_err(|_| StorageIOError::write_logs(&AnyErr("wal flusher thread is gone".into())))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let mut b = WriteBatch::default();
        b.delete_range_cf(self.cf(CF_LOG), idx_key(log_id.index), idx_key(u64::MAX));
        // delete_range's end is exclusive: remove the last possible index too.
        b.delete_cf(self.cf(CF_LOG), idx_key(u64::MAX));
        self.db.write_opt(b, &synced()).map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_RAFT), KEY_PURGED, enc(&log_id));
        b.delete_range_cf(self.cf(CF_LOG), idx_key(0), idx_key(log_id.index + 1));
        // Synced: this also makes every state-machine write before it durable, which the
        // snapshot that allowed this purge was built from.
        self.db.write_opt(b, &synced()).map_err(|e| StorageIOError::write_logs(&e).into())
    }
}
