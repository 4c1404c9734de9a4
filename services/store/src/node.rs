//! One store member: wires the database, raft, the network and the HTTP/2 server together,
//! and forms the cluster from the configured member list without a manual bootstrap step.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kapp_tls::{ClientAuth, H2Client, Pem};
use openraft::{Config, Raft, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};
use tracing::{info, warn};

use kapp_store_client::StoreError;
use crate::log_store::LogStore;
use crate::metrics::Metrics;
use crate::network::{Faults, NetworkFactory};
use crate::server::{self, Ctx};
use crate::state_machine::StateMachine;
use crate::types::{Node, NodeId, TypeConfig};
use kapp_store_client::wire::{self, path, MemberStatus};

/// Everything a member needs to start.
#[derive(Clone)]
pub struct StoreConfig {
    pub id: NodeId,
    /// Where to listen (raft and client API on one port).
    pub listen: SocketAddr,
    /// The initial members, `id -> host:port`, this one included. 1, 3 or 5 of them.
    pub members: BTreeMap<NodeId, String>,
    pub data_dir: PathBuf,
    pub tls: Pem,
    pub heartbeat: Duration,
    pub election_timeout: (Duration, Duration),
    /// Build a snapshot after this many log entries.
    pub snapshot_every: u64,
    /// Log entries kept behind the latest snapshot (a follower further behind gets the snapshot).
    pub logs_to_keep: u64,
    /// Time limit for one client request (a write, a linearizable read).
    pub request_timeout: Duration,
    /// Watch streams served at most.
    pub max_watches: usize,
    /// Connections served at most.
    pub max_connections: usize,
    /// Keep this many revisions of history; compact older ones automatically (0 = never).
    pub keep_revisions: i64,
    pub compaction_interval: Duration,
}

impl StoreConfig {
    /// Defaults for a member; tests shorten the timers.
    pub fn new(id: NodeId, listen: SocketAddr, members: BTreeMap<NodeId, String>, data_dir: PathBuf, tls: Pem) -> Self {
        StoreConfig {
            id,
            listen,
            members,
            data_dir,
            tls,
            heartbeat: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(500), Duration::from_millis(1000)),
            snapshot_every: 20_000,
            logs_to_keep: 1000,
            request_timeout: Duration::from_secs(5),
            max_watches: 10_000,
            max_connections: 1024,
            keep_revisions: 100_000,
            compaction_interval: Duration::from_secs(60),
        }
    }
}

/// Why a member could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Open(#[from] crate::db::OpenError),
    #[error("state machine: {0}")]
    StateMachine(StoreError),
    #[error("member list: {0}")]
    Members(String),
    #[error("tls: {0}")]
    Tls(#[from] kapp_tls::TlsError),
    #[error("raft: {0}")]
    Raft(String),
}

/// A running member.
pub struct StoreHandle {
    pub id: NodeId,
    pub addr: SocketAddr,
    raft: Raft<TypeConfig>,
    ctx: Arc<Ctx>,
    db: Arc<rocksdb::DB>,
    faults: Arc<Faults>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Validate a member list: 1, 3 or 5 members, this one among them, addresses present.
pub fn check_members(id: NodeId, members: &BTreeMap<NodeId, String>) -> Result<(), String> {
    let n = members.len();
    if ![1, 3, 5].contains(&n) {
        return Err(format!("{n} members given: a store has 1, 3 or 5 members (an even count cannot outvote a partition)"));
    }
    if !members.contains_key(&id) {
        return Err(format!("this member's id {id} is not in the member list {:?}", members.keys().collect::<Vec<_>>()));
    }
    if let Some((bad, _)) = members.iter().find(|(_, a)| a.is_empty()) {
        return Err(format!("member {bad} has no address"));
    }
    Ok(())
}

impl StoreHandle {
    /// Start a member: open (or create) its data, serve, and join or form the cluster.
    pub async fn start(cfg: StoreConfig) -> Result<StoreHandle, StartError> {
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| StartError::Raft(format!("cannot listen on {}: {e}", cfg.listen)))?;
        Self::start_with_listener(cfg, listener).await
    }

    /// Start on a listener the caller already bound (tests bind port 0 first to learn it).
    pub async fn start_with_listener(cfg: StoreConfig, listener: TcpListener) -> Result<StoreHandle, StartError> {
        check_members(cfg.id, &cfg.members).map_err(StartError::Members)?;
        let db = crate::db::open(&cfg.data_dir.join("store"), cfg.id)?;
        let log = LogStore::new(db.clone());
        let sm = StateMachine::open(db.clone(), &cfg.data_dir.join("snapshots")).map_err(StartError::StateMachine)?;
        let hub = sm.hub();
        let client_tls = kapp_tls::client_config(&cfg.tls)?;
        let server_tls = kapp_tls::server_config(&cfg.tls, ClientAuth::Optional)?;
        let faults = Arc::new(Faults::default());
        let raft_config = Config {
            cluster_name: "kapp-store".into(),
            heartbeat_interval: cfg.heartbeat.as_millis() as u64,
            election_timeout_min: cfg.election_timeout.0.as_millis() as u64,
            election_timeout_max: cfg.election_timeout.1.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_every),
            max_in_snapshot_log_to_keep: cfg.logs_to_keep,
            max_payload_entries: 512,
            snapshot_max_chunk_size: 4 << 20,
            install_snapshot_timeout: 10_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let network = NetworkFactory { tls: client_tls.clone(), faults: faults.clone(), clients: HashMap::new() };
        let raft = Raft::new(cfg.id, Arc::new(raft_config), network, log, sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let ctx = Arc::new(Ctx {
            id: cfg.id,
            raft: raft.clone(),
            db,
            hub,
            tls_client: client_tls.clone(),
            forward_clients: Mutex::new(HashMap::new()),
            faults: faults.clone(),
            metrics: Arc::new(Metrics::default()),
            watch_slots: Arc::new(Semaphore::new(cfg.max_watches)),
            request_timeout: cfg.request_timeout,
            read_rounds: Default::default(),
            proposer: crate::server::Proposer::start(raft.clone(), cfg.request_timeout),
        });
        let addr = listener.local_addr().map_err(|e| StartError::Raft(e.to_string()))?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let hctx = ctx.clone();
        let handler = move |req, who| {
            let ctx = hctx.clone();
            async move { server::handle(ctx, req, who).await }
        };
        let server = tokio::spawn(kapp_tls::serve(listener, server_tls, cfg.max_connections, handler, async {
            let _ = stop_rx.await;
        }));
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(form_cluster(raft.clone(), cfg.id, cfg.members.clone(), client_tls)));
        if cfg.keep_revisions > 0 {
            tasks.push(tokio::spawn(auto_compact(ctx.clone(), cfg.keep_revisions, cfg.compaction_interval)));
        }
        info!(id = cfg.id, %addr, "store member started");
        let db = ctx.db.clone();
        Ok(StoreHandle { id: cfg.id, addr, raft, ctx, db, faults, stop: Some(stop_tx), server: Some(server), tasks })
    }

    /// This member's view of itself and the cluster.
    pub fn status(&self) -> MemberStatus {
        server::status(&self.ctx)
    }

    /// Watch streams this member is serving.
    pub fn watchers(&self) -> usize {
        self.ctx.hub.watchers()
    }

    /// Fault injection (tests): drop raft traffic with some peers.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The openraft handle, for tests and metrics.
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Stop serving and shut raft down.
    pub async fn shutdown(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(s) = self.server.take() {
            let _ = s.await;
        }
        let _ = self.raft.shutdown().await;
        // Wait until every task has let go of the database, so it is closed (and its lock
        // released) when this returns and the member can be started again in-process.
        let Self { ctx, db, raft, .. } = self;
        drop(ctx);
        drop(raft);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&db) > 1 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if Arc::strong_count(&db) > 1 {
            warn!("store database still referenced after shutdown");
        }
    }
}

/// The lowest member id initialises the cluster when nothing exists yet; everyone else waits
/// to be contacted by a leader. Before initialising, the initialiser asks its peers whether
/// a cluster already exists (it may be a member whose disk was replaced) and then stays out.
async fn form_cluster(raft: Raft<TypeConfig>, id: NodeId, members: BTreeMap<NodeId, String>, tls: Arc<rustls::ClientConfig>) {
    let Some((&first, _)) = members.iter().next() else { return };
    if first != id {
        return;
    }
    match raft.is_initialized().await {
        Ok(true) | Err(_) => return,
        Ok(false) => {}
    }
    for (peer, addr) in members.iter().filter(|(p, _)| **p != id) {
        let client = H2Client::new(addr.clone(), tls.clone());
        let req = wire::encode(&());
        if let Ok(Ok(st)) =
            wire::call::<MemberStatus, kapp_store_client::StoreError>(&client, path::STATUS, req, false, Duration::from_millis(500)).await
        {
            if st.initialized {
                warn!(peer, "a store cluster already exists; waiting to be added back instead of initialising");
                return;
            }
        }
    }
    let nodes: BTreeMap<NodeId, Node> = members.into_iter().map(|(i, addr)| (i, Node { addr })).collect();
    match raft.initialize(nodes).await {
        Ok(()) => info!(id, "initialised the store cluster"),
        Err(e) => warn!(id, error = %e, "initialising the store cluster"),
    }
}

/// On the leader, compact history older than `keep` revisions every `every`.
async fn auto_compact(ctx: Arc<Ctx>, keep: i64, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        if ctx.raft.current_leader().await != Some(ctx.id) {
            continue;
        }
        let target = ctx.hub.revision() - keep;
        if target > ctx.hub.compacted() {
            if let Err(e) = server::propose(&ctx, crate::types::LogCommand::Compact { revision: target }).await {
                warn!(error = %e, "automatic compaction");
            }
        }
    }
}
