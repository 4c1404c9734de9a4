//! The on-disk layout: one RocksDB with a column family per kind of data. One database (and
//! so one write-ahead log) for the raft log and the state machine means a synced log write
//! also makes every earlier state-machine write durable.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, DBRecoveryMode, IteratorMode, Options, ReadOptions, DB};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Raft log entries, keyed by index (8 bytes big-endian).
pub const CF_LOG: &str = "log";
/// Raft metadata: vote, last purged log id, committed log id.
pub const CF_RAFT: &str = "raft";
/// Current value of every live key.
pub const CF_KV: &str = "kv";
/// History: one [`crate::types::Event`] per change, keyed by revision (8 BE) and sub-index (4 BE).
pub const CF_EVENTS: &str = "events";
/// State-machine metadata: applied log id, membership, revision, compaction point.
pub const CF_SM: &str = "sm";
/// Client sessions and their cached responses (for exactly-once retries).
pub const CF_SESSIONS: &str = "sessions";

const ALL_CFS: [&str; 6] = [CF_LOG, CF_RAFT, CF_KV, CF_EVENTS, CF_SM, CF_SESSIONS];

/// Written beside the database so a data directory is recognised and never silently re-created.
const MARKER: &str = "kapp-store.json";
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize, Debug)]
struct Marker {
    format: u32,
    node_id: u64,
}

/// Why a data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("data directory {path} is not empty but has no {MARKER}: refusing to use it")]
    Foreign { path: PathBuf },
    #[error("cannot read {path}: {reason}")]
    BadMarker { path: PathBuf, reason: String },
    #[error("{path} belongs to member {found}, not to member {expected}")]
    WrongMember { path: PathBuf, found: u64, expected: u64 },
    #[error("database in {path} is damaged or incomplete: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// Open (or, for an empty directory, create) the store database for member `node_id`.
///
/// An existing database is opened strictly: missing files, a damaged manifest or a block
/// whose checksum does not match make this fail with RocksDB's message, which names the file.
pub fn open(dir: &Path, node_id: u64) -> Result<Arc<DB>, OpenError> {
    std::fs::create_dir_all(dir).map_err(|source| OpenError::CreateDir { path: dir.to_path_buf(), source })?;
    let marker_path = dir.join(MARKER);
    let db_path = dir.join("db");
    let fresh = if marker_path.exists() {
        let text = std::fs::read_to_string(&marker_path)
            .map_err(|e| OpenError::BadMarker { path: marker_path.clone(), reason: e.to_string() })?;
        let marker: Marker = serde_json::from_str(&text)
            .map_err(|e| OpenError::BadMarker { path: marker_path.clone(), reason: e.to_string() })?;
        if marker.format != FORMAT {
            return Err(OpenError::BadMarker {
                path: marker_path,
                reason: format!("format {} is not the supported format {FORMAT}", marker.format),
            });
        }
        if marker.node_id != node_id {
            return Err(OpenError::WrongMember { path: marker_path, found: marker.node_id, expected: node_id });
        }
        false
    } else {
        let non_empty = std::fs::read_dir(dir)
            .map_err(|source| OpenError::CreateDir { path: dir.to_path_buf(), source })?
            .next()
            .is_some();
        if non_empty {
            return Err(OpenError::Foreign { path: dir.to_path_buf() });
        }
        true
    };

    let mut opts = Options::default();
    opts.create_if_missing(fresh);
    opts.create_missing_column_families(fresh);
    opts.set_error_if_exists(fresh);
    opts.set_paranoid_checks(true);
    // A record torn by a crash at the very end of the log is expected and was never
    // acknowledged; damage anywhere else is refused.
    opts.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
    opts.set_atomic_flush(true);
    opts.set_max_background_jobs(2);
    opts.set_keep_log_file_num(4);
    opts.set_max_total_wal_size(256 << 20);
    opts.increase_parallelism(2);
    let cfs = ALL_CFS.iter().map(|name| {
        let mut cf_opts = Options::default();
        cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        ColumnFamilyDescriptor::new(*name, cf_opts)
    });
    let db = DB::open_cf_descriptors(&opts, &db_path, cfs)
        .map_err(|e| OpenError::Corrupt { path: db_path.clone(), reason: diagnose(&db_path, e.into_string()) })?;
    if fresh {
        let marker = serde_json::to_string(&Marker { format: FORMAT, node_id }).expect("marker serialises");
        write_file_synced(&marker_path, marker.as_bytes())
            .map_err(|e| OpenError::BadMarker { path: marker_path.clone(), reason: e.to_string() })?;
    } else {
        verify(&db).map_err(|reason| OpenError::Corrupt { path: db_path.clone(), reason })?;
    }
    Ok(Arc::new(db))
}

/// RocksDB names the damaged file in most errors, but not always: a WAL record with a bad
/// checksum only says so in RocksDB's own LOG, and a truncated manifest comes out as missing
/// column families. Add what those say, so the message names the file.
fn diagnose(db_path: &Path, reason: String) -> String {
    if reason.contains(&db_path.display().to_string()) {
        return reason;
    }
    if let Some(line) = damage_in_rocksdb_log(&db_path.join("LOG")) {
        return format!("{reason} (RocksDB's LOG says: {line})");
    }
    let current = db_path.join("CURRENT");
    let manifest = match std::fs::read_to_string(&current) {
        Err(e) => return format!("{reason} ({} cannot be read: {e})", current.display()),
        Ok(name) => db_path.join(name.trim()),
    };
    match std::fs::metadata(&manifest) {
        Err(e) => format!("{reason} (manifest {} named by CURRENT cannot be read: {e})", manifest.display()),
        Ok(m) => format!(
            "{reason} (the database state is recorded in manifest {}, {} bytes: it may be truncated or damaged)",
            manifest.display(),
            m.len()
        ),
    }
}

/// The first line of the tail of RocksDB's LOG that reports damage in a named file.
fn damage_in_rocksdb_log(log: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(log).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024))).ok()?;
    let mut tail = String::new();
    f.take(64 * 1024).read_to_string(&mut tail).ok()?;
    tail.lines()
        .find(|l| l.contains("Corruption") && (l.contains(".log:") || l.contains(".sst") || l.contains("MANIFEST")))
        .map(|l| l.rsplit("] ").next().unwrap_or(l).trim().to_string())
}

/// Read every block of every column family with checksums verified, so damage is found at
/// start rather than served later.
fn verify(db: &DB) -> Result<(), String> {
    for name in ALL_CFS {
        let cf = db.cf_handle(name).ok_or_else(|| format!("column family {name} is missing"))?;
        let mut ro = ReadOptions::default();
        ro.set_verify_checksums(true);
        ro.fill_cache(false);
        for item in db.iterator_cf_opt(cf, ro, IteratorMode::Start) {
            item.map_err(|e| format!("column family {name}: {}", e.into_string()))?;
        }
    }
    Ok(())
}

/// Write a small file durably: temp file, fsync, rename, fsync the directory.
pub fn write_file_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Encode a value for RocksDB.
pub fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).expect("in-memory serialisation cannot fail")
}

/// Decode a value read from RocksDB.
pub fn dec<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    bincode::deserialize(bytes).map_err(|e| format!("undecodable record: {e}"))
}

/// The events key of change `sub` of revision `rev`.
pub fn event_key(rev: i64, sub: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&(rev as u64).to_be_bytes());
    k[8..].copy_from_slice(&sub.to_be_bytes());
    k
}

/// The revision part of an events key.
pub fn event_key_rev(k: &[u8]) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&k[..8]);
    u64::from_be_bytes(b) as i64
}
