//! The light half of kapp's store: its data model, wire format and client library. The
//! apiserver depends on this crate only; RocksDB and raft stay in `kapp-store`.

pub mod client;
pub mod error;
pub mod types;
pub mod validate;
pub mod wire;

pub use client::{ClientConfig, StoreClient, WatchItem, WatchStream};
pub use error::{limits, StoreError};
pub use types::*;
pub use validate::validate_txn;

/// Certificate organisation (group) that members present to each other.
pub const PEER_GROUP: &str = "kapp:store-peer";
/// Certificate organisation that clients of the store (the apiserver) present.
pub const CLIENT_GROUP: &str = "kapp:store-client";
