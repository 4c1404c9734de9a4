//! Raft traffic between members: openraft's `RaftNetwork` over HTTP/2 with mutual TLS.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kapp_tls::H2Client;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::{de::DeserializeOwned, Serialize};

use crate::types::{Node, NodeId, TypeConfig};
use kapp_store_client::wire::{self, path, CallError};

/// Largest append request sent in one piece; bigger batches are split by openraft.
const MAX_APPEND_BYTES: usize = 32 << 20;

/// Fault injection for tests: members this one neither sends to nor accepts raft traffic
/// from. Empty in production.
#[derive(Default, Debug)]
pub struct Faults {
    blocked: RwLock<HashSet<NodeId>>,
}

impl Faults {
    /// Drop all raft traffic to and from `peer`.
    pub fn block(&self, peer: NodeId) {
        self.blocked.write().expect("faults lock").insert(peer);
    }
    /// Restore traffic with every peer.
    pub fn heal(&self) {
        self.blocked.write().expect("faults lock").clear();
    }
    pub fn is_blocked(&self, peer: NodeId) -> bool {
        self.blocked.read().expect("faults lock").contains(&peer)
    }
}

/// Hands out connection handles to members. openraft asks for a new handle for every
/// replication stream and every heartbeat round, so handles share one HTTP/2 connection per
/// member (cached here) instead of each paying for a TLS handshake.
pub struct NetworkFactory {
    pub(crate) tls: Arc<rustls::ClientConfig>,
    pub(crate) faults: Arc<Faults>,
    pub(crate) clients: std::collections::HashMap<(NodeId, String), H2Client>,
}

pub struct PeerConn {
    target: NodeId,
    client: H2Client,
    faults: Arc<Faults>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerConn {
        let tls = &self.tls;
        let client = self
            .clients
            .entry((target, node.addr.clone()))
            .or_insert_with(|| H2Client::new(node.addr.clone(), tls.clone()))
            .clone();
        PeerConn { target, client, faults: self.faults.clone() }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("traffic to member {0} is blocked by fault injection")]
struct Blocked(NodeId);

impl PeerConn {
    async fn rpc<Req, Resp, E>(
        &self,
        p: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if self.faults.is_blocked(self.target) {
            return Err(RPCError::Unreachable(Unreachable::new(&Blocked(self.target))));
        }
        let body = wire::encode(req);
        let ttl = option.hard_ttl().max(Duration::from_millis(50));
        match wire::call::<Resp, RaftError<NodeId, E>>(&self.client, p, body, false, ttl).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(self.target, remote))),
            Err(e @ CallError::Unreachable { .. }) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        let n = rpc.entries.len() as u64;
        if n > 1 {
            let size: usize = rpc
                .entries
                .iter()
                .map(|e| match &e.payload {
                    openraft::EntryPayload::Normal(cmd) => bincode::serialized_size(cmd).unwrap_or(0) as usize,
                    _ => 64,
                })
                .sum();
            if size > MAX_APPEND_BYTES {
                return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(n / 2)));
            }
        }
        self.rpc(path::RAFT_APPEND, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.rpc(path::RAFT_SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.rpc(path::RAFT_VOTE, &rpc, &option).await
    }
}
