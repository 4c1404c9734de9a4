//! kapp's replicated store: an etcd-like MVCC key-value store (revisions, compare-and-swap
//! transactions, ranges at past revisions, watches from a revision, compaction) replicated
//! with openraft on RocksDB, spoken to over HTTP/2 with mutual TLS. The data model, wire
//! format and client library live in `kapp-store-client`.
//!
//! Guarantees (see ARCHITECTURE.md): a write is acknowledged only after its log entry is
//! fsynced on a majority and applied on the leader; reads are linearizable unless asked to
//! be serializable; a retried write carrying a request id is applied at most once; a watch
//! delivers every change in its range once, in revision order, or says its start was
//! compacted.

pub mod db;
pub mod log_store;
pub mod metrics;
mod mvcc;
pub mod network;
pub mod node;
mod server;
pub mod state_machine;
pub mod testing;
pub mod types;
pub mod watch;

pub use kapp_store_client as client;
pub use node::{StartError, StoreConfig, StoreHandle};
pub use server::{CLIENT_GROUP, PEER_GROUP};
