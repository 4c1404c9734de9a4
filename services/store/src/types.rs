//! openraft's type configuration; the data model itself is in `kapp-store-client`.

pub use kapp_store_client::types::*;

openraft::declare_raft_types!(
    /// openraft's type configuration for kapp's store.
    pub TypeConfig:
        D = LogCommand,
        R = ApplyOutcome,
        NodeId = NodeId,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
);
