//! The log store and state machine pass openraft's own storage test suite.

use kapp_store::log_store::LogStore;
use kapp_store::state_machine::StateMachine;
use kapp_store::types::TypeConfig;
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = kapp_store::db::open(&dir.path().join("db"), 1).expect("open db");
        let sm = StateMachine::open(db.clone(), &dir.path().join("snapshots")).expect("open state machine");
        Ok((dir, LogStore::new(db), sm))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError<u64>> {
    Suite::test_all(Builder)
}
