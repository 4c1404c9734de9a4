//! The store's HTTP/2 API: raft traffic between members and the client API the apiserver
//! uses. Writes and linearizable reads that reach a follower are forwarded to the leader
//! once; watches and serializable reads are served by whichever member receives them.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use kapp_tls::{Body, H2Client, Identity};
use openraft::error::{ClientWriteError, RaftError};
use openraft::Raft;
use rocksdb::DB;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, Semaphore};

use kapp_store_client::{limits, StoreError};
use crate::metrics::{Kind, Metrics};
use crate::mvcc::{self, Snap};
use crate::network::Faults;
use crate::types::*;
use crate::watch::{Published, WatchHub};
use kapp_store_client::wire::{self, path, *};

pub use kapp_store_client::{CLIENT_GROUP, PEER_GROUP};

/// Largest raft request (an append batch or a snapshot chunk).
const MAX_RAFT_BODY: usize = 64 << 20;
/// Events per watch frame at most.
const WATCH_BATCH: usize = 1000;

pub(crate) struct Ctx {
    pub id: NodeId,
    pub raft: Raft<TypeConfig>,
    pub db: Arc<DB>,
    pub hub: Arc<WatchHub>,
    pub tls_client: Arc<rustls::ClientConfig>,
    pub forward_clients: Mutex<HashMap<String, H2Client>>,
    pub faults: Arc<Faults>,
    pub metrics: Arc<Metrics>,
    pub watch_slots: Arc<Semaphore>,
    pub request_timeout: Duration,
    pub read_rounds: ReadRounds,
    pub proposer: Proposer,
}

fn respond<T: Serialize>(status: StatusCode, v: &T) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/x-kapp-bincode")
        .body(kapp_tls::full(wire::encode(v)))
        .expect("static response parts are valid")
}

fn reply<T: Serialize>(r: &Result<T, StoreError>) -> Response<Body> {
    let status = match r {
        Ok(_) => StatusCode::OK,
        Err(e) => error_status(e),
    };
    respond(status, r)
}

fn error_status(e: &StoreError) -> StatusCode {
    match e {
        StoreError::Invalid(_) => StatusCode::BAD_REQUEST,
        StoreError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        StoreError::Refused(Refusal::Compacted { .. }) => StatusCode::GONE,
        StoreError::Refused(_) => StatusCode::CONFLICT,
        StoreError::Forbidden(_) => StatusCode::FORBIDDEN,
        StoreError::UnknownMember(_) => StatusCode::NOT_FOUND,
        StoreError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; version=0.0.4")
        .body(kapp_tls::full(body))
        .expect("static response parts are valid")
}

async fn read_body(req: Request<Incoming>, limit: usize) -> Result<(http::request::Parts, Bytes), StoreError> {
    let (parts, body) = req.into_parts();
    if let Some(len) = parts.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok()) {
        if len > limit {
            return Err(StoreError::TooLarge { what: "request body".into(), size: len, limit });
        }
    }
    let bytes = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                StoreError::TooLarge { what: "request body".into(), size: limit + 1, limit }
            } else {
                StoreError::Invalid(format!("cannot read request body: {e}"))
            }
        })?
        .to_bytes();
    Ok((parts, bytes))
}

fn decode_req<T: serde::de::DeserializeOwned>(b: &[u8], what: &str) -> Result<T, StoreError> {
    wire::decode(b).map_err(|e| StoreError::Invalid(format!("malformed {what} request: {e}")))
}

fn has_group(who: &Option<Arc<Identity>>, groups: &[&str]) -> bool {
    who.as_ref().is_some_and(|id| id.organizations.iter().any(|o| groups.contains(&o.as_str())))
}

/// Entry point for every request.
pub(crate) async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>, who: Option<Arc<Identity>>) -> Response<Body> {
    let p = req.uri().path().to_string();
    match p.as_str() {
        path::HEALTH => return health(&ctx),
        path::METRICS => {
            let m = ctx.raft.metrics().borrow().clone();
            return text(StatusCode::OK, ctx.metrics.render(&m, ctx.hub.revision(), ctx.hub.compacted(), ctx.hub.watchers()));
        }
        _ => {}
    }
    if who.is_none() {
        let e: Result<(), StoreError> = Err(StoreError::Forbidden("a client certificate from the cluster CA is required".into()));
        return respond(StatusCode::UNAUTHORIZED, &e);
    }
    if p.starts_with("/raft/") {
        if !has_group(&who, &[PEER_GROUP]) {
            return reply::<()>(&Err(StoreError::Forbidden(format!("{p} is for store members ({PEER_GROUP}) only"))));
        }
        return raft_rpc(&ctx, &p, req).await;
    }
    if !has_group(&who, &[PEER_GROUP, CLIENT_GROUP]) {
        return reply::<()>(&Err(StoreError::Forbidden(format!(
            "the store API needs a certificate of group {CLIENT_GROUP} or {PEER_GROUP}"
        ))));
    }
    let started = Instant::now();
    let resp = match p.as_str() {
        path::STATUS => reply(&Ok(status(&ctx))),
        path::WATCH => match read_body(req, limits::MAX_REQUEST_BYTES).await {
            Ok((_, body)) => match decode_req::<WatchRequest>(&body, "watch") {
                Ok(wr) => watch(ctx.clone(), wr),
                Err(e) => reply::<()>(&Err(e)),
            },
            Err(e) => reply::<()>(&Err(e)),
        },
        _ => match read_body(req, limits::MAX_REQUEST_BYTES).await {
            Err(e) => reply::<()>(&Err(e)),
            Ok((parts, body)) => {
                let forwarded = parts.headers.contains_key(FORWARDED_HEADER);
                client_api(&ctx, &p, body, forwarded, started).await
            }
        },
    };
    if !resp.status().is_success() {
        ctx.metrics.error();
    }
    resp
}


fn health(ctx: &Ctx) -> Response<Body> {
    let m = ctx.raft.metrics().borrow().clone();
    let ok = m.running_state.is_ok() && m.current_leader.is_some();
    let body = format!(
        "{{\"healthy\":{ok},\"id\":{},\"leader\":{},\"term\":{},\"revision\":{}}}\n",
        ctx.id,
        m.current_leader.map_or("null".to_string(), |l| l.to_string()),
        m.current_term,
        ctx.hub.revision()
    );
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(kapp_tls::full(body))
        .expect("static response parts are valid")
}

pub(crate) fn status(ctx: &Ctx) -> MemberStatus {
    let m = ctx.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(id, node)| MemberInfo { id: *id, addr: node.addr.clone(), voter: voters.contains(id) })
        .collect();
    MemberStatus {
        id: ctx.id,
        state: format!("{:?}", m.state),
        initialized: m.membership_config.log_id().is_some() || m.last_log_index.is_some(),
        leader: m.current_leader,
        term: m.current_term,
        last_log_index: m.last_log_index,
        committed: crate::metrics::committed_index(&m),
        applied: m.last_applied.map(|l| l.index),
        revision: ctx.hub.revision(),
        compacted: ctx.hub.compacted(),
        members,
    }
}

async fn raft_rpc(ctx: &Ctx, p: &str, req: Request<Incoming>) -> Response<Body> {
    let body = match read_body(req, MAX_RAFT_BODY).await {
        Ok((_, b)) => b,
        Err(e) => return reply::<()>(&Err(e)),
    };
    let blocked = |from: NodeId| ctx.faults.is_blocked(from);
    let dropped = || Response::builder().status(StatusCode::SERVICE_UNAVAILABLE).body(kapp_tls::empty()).expect("valid");
    match p {
        path::RAFT_APPEND => match wire::decode::<openraft::raft::AppendEntriesRequest<TypeConfig>>(&body) {
            Ok(r) if blocked(r.vote.leader_id().voted_for().unwrap_or_default()) => dropped(),
            Ok(r) => respond(StatusCode::OK, &ctx.raft.append_entries(r).await),
            Err(e) => reply::<()>(&Err(StoreError::Invalid(e))),
        },
        path::RAFT_VOTE => match wire::decode::<openraft::raft::VoteRequest<NodeId>>(&body) {
            Ok(r) if blocked(r.vote.leader_id().voted_for().unwrap_or_default()) => dropped(),
            Ok(r) => respond(StatusCode::OK, &ctx.raft.vote(r).await),
            Err(e) => reply::<()>(&Err(StoreError::Invalid(e))),
        },
        path::RAFT_SNAPSHOT => match wire::decode::<openraft::raft::InstallSnapshotRequest<TypeConfig>>(&body) {
            Ok(r) if blocked(r.vote.leader_id().voted_for().unwrap_or_default()) => dropped(),
            Ok(r) => respond(StatusCode::OK, &ctx.raft.install_snapshot(r).await),
            Err(e) => reply::<()>(&Err(StoreError::Invalid(e))),
        },
        _ => reply::<()>(&Err(StoreError::Invalid(format!("no such path {p}")))),
    }
}

fn not_leader(f: &openraft::error::ForwardToLeader<NodeId, Node>) -> StoreError {
    StoreError::NotLeader { leader: f.leader_id.zip(f.leader_node.as_ref().map(|n| n.addr.clone())) }
}

/// What a failed raft write (a proposal or a membership change) means to a client.
fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, Node>>) -> StoreError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(&f),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => StoreError::Membership(c.to_string()),
        RaftError::Fatal(f) => fatal(&f),
    }
}

fn fatal(e: &openraft::error::Fatal<NodeId>) -> StoreError {
    match e {
        openraft::error::Fatal::Stopped => StoreError::ShuttingDown,
        other => StoreError::Storage(other.to_string()),
    }
}

/// Commands per batch entry at most.
const MAX_BATCH: usize = 256;
/// Encoded bytes per batch entry at most (a single larger command goes alone).
const MAX_BATCH_BYTES: u64 = 4 << 20;
/// Proposals in flight at once; while all are busy, new commands queue into the next batch.
const MAX_PROPOSALS_IN_FLIGHT: usize = 4;
/// Commands waiting to be proposed at most.
const PROPOSE_QUEUE: usize = 8192;

type Waiter = tokio::sync::oneshot::Sender<Result<ApplyOutcome, StoreError>>;

/// Group commit above raft: concurrent commands are proposed together as one log entry, so
/// raft's per-entry cost is paid once per batch. Each command keeps its own revision and
/// outcome (see `LogCommand::Batch`).
pub(crate) struct Proposer {
    tx: mpsc::Sender<(LogCommand, Waiter)>,
}

impl Proposer {
    pub(crate) fn start(raft: Raft<TypeConfig>, request_timeout: Duration) -> Proposer {
        let (tx, mut rx) = mpsc::channel::<(LogCommand, Waiter)>(PROPOSE_QUEUE);
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(MAX_PROPOSALS_IN_FLIGHT));
            while let Some(first) = rx.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else { break };
                let mut bytes = bincode::serialized_size(&first.0).unwrap_or(0);
                let mut group = vec![first];
                while group.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                    match rx.try_recv() {
                        Ok(next) => {
                            bytes += bincode::serialized_size(&next.0).unwrap_or(0);
                            group.push(next);
                        }
                        Err(_) => break,
                    }
                }
                let raft = raft.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    if group.len() == 1 {
                        let (cmd, w) = group.pop().expect("one command");
                        let _ = w.send(propose_now(&raft, request_timeout, cmd).await);
                        return;
                    }
                    let (cmds, waiters): (Vec<_>, Vec<_>) = group.into_iter().unzip();
                    match propose_now(&raft, request_timeout, LogCommand::Batch(cmds)).await {
                        Ok(ApplyOutcome::Batch(outs)) if outs.len() == waiters.len() => {
                            for (w, o) in waiters.into_iter().zip(outs) {
                                let _ = w.send(match o {
                                    ApplyOutcome::Refused(r) => Err(r.into()),
                                    other => Ok(other),
                                });
                            }
                        }
                        Ok(other) => {
                            let e = StoreError::Storage(format!("unexpected batch outcome {other:?}"));
                            for w in waiters {
                                let _ = w.send(Err(e.clone()));
                            }
                        }
                        Err(e) => {
                            for w in waiters {
                                let _ = w.send(Err(e.clone()));
                            }
                        }
                    }
                });
            }
        });
        Proposer { tx }
    }
}

/// Propose a command (batched with concurrent ones) and wait for it to be applied on this
/// (leader) member.
pub(crate) async fn propose(ctx: &Ctx, cmd: LogCommand) -> Result<ApplyOutcome, StoreError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    ctx.proposer.tx.send((cmd, tx)).await.map_err(|_| StoreError::ShuttingDown)?;
    rx.await.unwrap_or(Err(StoreError::ShuttingDown))
}

async fn propose_now(raft: &Raft<TypeConfig>, request_timeout: Duration, cmd: LogCommand) -> Result<ApplyOutcome, StoreError> {
    let fut = raft.client_write(cmd);
    match tokio::time::timeout(request_timeout, fut).await {
        Err(_) => Err(StoreError::Timeout { millis: request_timeout.as_millis() as u64 }),
        Ok(Ok(resp)) => match resp.data {
            ApplyOutcome::Refused(r) => Err(r.into()),
            other => Ok(other),
        },
        Ok(Err(e)) => Err(write_error(e)),
    }
}

/// Reads waiting for the next leadership confirmation. One confirmation round (a heartbeat
/// to a quorum) runs at a time and answers every read that arrived before it started, so
/// concurrent linearizable reads cost one round, not one each.
#[derive(Default)]
pub(crate) struct ReadRounds {
    state: Mutex<(Vec<tokio::sync::oneshot::Sender<Result<(), StoreError>>>, bool)>,
}

/// Wait until this member may serve a linearizable read (it is the leader and has applied
/// everything committed when the read arrived).
pub(crate) async fn linearize(ctx: &Arc<Ctx>) -> Result<(), StoreError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let start_driver = {
        let mut st = ctx.read_rounds.state.lock().expect("read rounds lock");
        st.0.push(tx);
        !std::mem::replace(&mut st.1, true)
    };
    if start_driver {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            loop {
                let waiters = {
                    let mut st = ctx.read_rounds.state.lock().expect("read rounds lock");
                    if st.0.is_empty() {
                        st.1 = false;
                        break;
                    }
                    std::mem::take(&mut st.0)
                };
                let r = confirm_leadership(&ctx).await;
                for w in waiters {
                    let _ = w.send(r.clone());
                }
            }
        });
    }
    rx.await.unwrap_or(Err(StoreError::ShuttingDown))
}

async fn confirm_leadership(ctx: &Ctx) -> Result<(), StoreError> {
    match tokio::time::timeout(ctx.request_timeout, ctx.raft.ensure_linearizable()).await {
        Err(_) => Err(StoreError::Timeout { millis: ctx.request_timeout.as_millis() as u64 }),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f)))) => Err(not_leader(&f)),
        Ok(Err(RaftError::APIError(openraft::error::CheckIsLeaderError::QuorumNotEnough(q)))) => {
            Err(StoreError::Unreachable { addr: "quorum".into(), reason: q.to_string() })
        }
        Ok(Err(RaftError::Fatal(e))) => Err(fatal(&e)),
    }
}

fn read_txn(ctx: &Ctx, txn: &Txn) -> Result<TxnResponse, StoreError> {
    let snap = Snap { db: &ctx.db, snap: ctx.db.snapshot() };
    let (current, compacted) = mvcc::revisions(&snap)?;
    let mut succeeded = true;
    for c in &txn.compare {
        let rec = mvcc::get_kv(&snap, &c.key)?;
        if !crate::state_machine::compare_holds(c, rec.as_ref()) {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { &txn.success } else { &txn.failure };
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        if let Op::Range(r) = op {
            results.push(OpResult::Range(mvcc::range(&snap, r, current, compacted)?));
        }
    }
    Ok(TxnResponse { succeeded, revision: current, results })
}

fn read_range(ctx: &Ctx, req: &RangeRequest) -> Result<RangeResponse, StoreError> {
    let snap = Snap { db: &ctx.db, snap: ctx.db.snapshot() };
    let (current, compacted) = mvcc::revisions(&snap)?;
    mvcc::range(&snap, req, current, compacted)
}

async fn client_api(ctx: &Arc<Ctx>, p: &str, body: Bytes, forwarded: bool, started: Instant) -> Response<Body> {
    let outcome: Result<Response<Body>, StoreError> = async {
        Ok(match p {
            path::TXN => {
                let tr: TxnRequest = decode_req(&body, "txn")?;
                kapp_store_client::validate_txn(&tr.txn)?;
                if tr.txn.is_read_only() {
                    if !tr.serializable {
                        linearize(ctx).await?;
                    }
                    let r = read_txn(ctx, &tr.txn);
                    ctx.metrics.observe(if tr.serializable { Kind::SerializableRead } else { Kind::LinearizableRead }, started.elapsed());
                    reply(&r)
                } else {
                    let out = propose(ctx, LogCommand::Txn { id: tr.id, txn: tr.txn }).await?;
                    ctx.metrics.observe(Kind::Write, started.elapsed());
                    match out {
                        ApplyOutcome::Txn(t) => reply(&Ok(t)),
                        other => return Err(StoreError::Storage(format!("unexpected apply outcome {other:?}"))),
                    }
                }
            }
            path::RANGE => {
                let rc: RangeCall = decode_req(&body, "range")?;
                if !rc.serializable {
                    linearize(ctx).await?;
                }
                let r = read_range(ctx, &rc.req);
                ctx.metrics.observe(if rc.serializable { Kind::SerializableRead } else { Kind::LinearizableRead }, started.elapsed());
                reply(&r)
            }
            path::SESSION => match propose(ctx, LogCommand::RegisterSession).await? {
                ApplyOutcome::Session { id } => reply(&Ok(id)),
                other => return Err(StoreError::Storage(format!("unexpected apply outcome {other:?}"))),
            },
            path::COMPACT => {
                let c: CompactRequest = decode_req(&body, "compact")?;
                match propose(ctx, LogCommand::Compact { revision: c.revision }).await? {
                    ApplyOutcome::Compacted { revision } => reply(&Ok(revision)),
                    other => return Err(StoreError::Storage(format!("unexpected apply outcome {other:?}"))),
                }
            }
            path::MEMBER_ADD => {
                let m: MemberAdd = decode_req(&body, "member add")?;
                add_member(ctx, m).await?;
                reply(&Ok(()))
            }
            path::MEMBER_REMOVE => {
                let m: MemberRemove = decode_req(&body, "member remove")?;
                remove_member(ctx, m.id).await?;
                reply(&Ok(()))
            }
            other => return Err(StoreError::Invalid(format!("no such path {other}"))),
        })
    }
    .await;
    match outcome {
        Ok(resp) => resp,
        Err(StoreError::NotLeader { leader: Some((leader, _)) }) if ctx.faults.is_blocked(leader) => {
            reply::<()>(&Err(StoreError::Unreachable { addr: format!("member {leader}"), reason: "blocked by fault injection".into() }))
        }
        Err(StoreError::NotLeader { leader: Some((_, addr)) }) if !forwarded => {
            let r = forward(ctx, &addr, p, body).await;
            ctx.metrics.observe(Kind::Forwarded, started.elapsed());
            r
        }
        Err(e) => reply::<()>(&Err(e)),
    }
}

/// Hand a request to the leader unchanged and pass its answer back.
async fn forward(ctx: &Ctx, leader_addr: &str, p: &str, body: Bytes) -> Response<Body> {
    let client = {
        let mut m = ctx.forward_clients.lock().expect("forward clients lock");
        m.entry(leader_addr.to_string()).or_insert_with(|| H2Client::new(leader_addr.to_string(), ctx.tls_client.clone())).clone()
    };
    let req = http::Request::post(p).header(FORWARDED_HEADER, "1").body(kapp_tls::full(body)).expect("valid request");
    let fut = async {
        let resp = client.send(req).await.map_err(|e| StoreError::Unreachable { addr: leader_addr.into(), reason: e.to_string() })?;
        let (parts, body) = resp.into_parts();
        let bytes = http_body_util::Limited::new(body, MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| StoreError::Unreachable { addr: leader_addr.into(), reason: e.to_string() })?
            .to_bytes();
        Ok::<_, StoreError>(Response::from_parts(parts, kapp_tls::full(bytes)))
    };
    match tokio::time::timeout(ctx.request_timeout, fut).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => reply::<()>(&Err(e)),
        Err(_) => reply::<()>(&Err(StoreError::Timeout { millis: ctx.request_timeout.as_millis() as u64 })),
    }
}

async fn add_member(ctx: &Ctx, m: MemberAdd) -> Result<(), StoreError> {
    ctx.raft.add_learner(m.id, Node { addr: m.addr }, true).await.map_err(write_error)?;
    let mut voters: BTreeSet<NodeId> = ctx.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
    voters.insert(m.id);
    ctx.raft.change_membership(voters, false).await.map_err(write_error)?;
    Ok(())
}

async fn remove_member(ctx: &Ctx, id: NodeId) -> Result<(), StoreError> {
    let mut voters: BTreeSet<NodeId> = ctx.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
    if !voters.remove(&id) {
        return Err(StoreError::UnknownMember(id));
    }
    if voters.is_empty() {
        return Err(StoreError::Membership("cannot remove the last member".into()));
    }
    ctx.raft.change_membership(voters, false).await.map_err(write_error)?;
    Ok(())
}

fn frame(f: &WatchFrame) -> Bytes {
    let payload = wire::encode(f);
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    Bytes::from(out)
}

fn watch(ctx: Arc<Ctx>, wr: WatchRequest) -> Response<Body> {
    let permit = match ctx.watch_slots.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => return reply::<()>(&Err(StoreError::Unreachable { addr: "this member".into(), reason: "too many watches".into() })),
    };
    if wr.range.key.is_empty() {
        return reply::<()>(&Err(StoreError::Invalid("watch: key is empty".into())));
    }
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let _permit = permit;
        watch_loop(&ctx, wr, &tx).await;
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/x-kapp-watch")
        .body(kapp_tls::stream_body(rx))
        .expect("static response parts are valid")
}

/// Feed one watcher: catch up from history, then follow the live feed; see `watch.rs`.
async fn watch_loop(ctx: &Ctx, wr: WatchRequest, tx: &mpsc::Sender<Bytes>) {
    let mut feed = ctx.hub.subscribe();
    let mut next = if wr.start_revision <= 0 { ctx.hub.revision() + 1 } else { wr.start_revision };
    let progress = (wr.progress_interval_ms > 0).then(|| Duration::from_millis(wr.progress_interval_ms));
    if wr.start_revision <= 0 {
        // Tell the client where "now" is, so a reconnect resumes there rather than later.
        if tx.send(frame(&WatchFrame::Progress { revision: next - 1 })).await.is_err() {
            return;
        }
    }
    'catch_up: loop {
        loop {
            let step = (|| {
                let snap = Snap { db: &ctx.db, snap: ctx.db.snapshot() };
                let (current, compacted) = mvcc::revisions(&snap)?;
                if next <= compacted {
                    return Ok(Err(compacted));
                }
                let (events, more) = mvcc::events_from(&snap, &wr.range, next, WATCH_BATCH)?;
                Ok::<_, StoreError>(Ok((events, more, current)))
            })();
            match step {
                Err(e) => {
                    let _ = tx.send(frame(&WatchFrame::Error(e))).await;
                    return;
                }
                Ok(Err(compacted)) => {
                    let _ = tx.send(frame(&WatchFrame::Compacted { compacted })).await;
                    return;
                }
                Ok(Ok((events, more, current))) => {
                    let n = events.len();
                    if n > 0 {
                        ctx.metrics.watch_events(n);
                        if tx.send(frame(&WatchFrame::Events { events, revision: current })).await.is_err() {
                            return;
                        }
                    }
                    match more {
                        Some(rev) => next = rev,
                        None => {
                            next = next.max(current + 1);
                            break;
                        }
                    }
                }
            }
        }
        loop {
            let tick = async {
                match progress {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = feed.recv() => match msg {
                    Ok(p) => match &*p {
                        Published::Changes { revision, events } => {
                            if *revision < next {
                                continue;
                            }
                            next = revision + 1;
                            let mine: Vec<Event> = events.iter().filter(|e| wr.range.contains(&e.kv.key)).cloned().collect();
                            if !mine.is_empty() {
                                ctx.metrics.watch_events(mine.len());
                                if tx.send(frame(&WatchFrame::Events { events: mine, revision: *revision })).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Published::Reset { revision } => {
                            if next <= *revision {
                                let _ = tx.send(frame(&WatchFrame::Compacted { compacted: *revision })).await;
                                return;
                            }
                        }
                    },
                    Err(broadcast::error::RecvError::Lagged(_)) => continue 'catch_up,
                    Err(broadcast::error::RecvError::Closed) => {
                        let _ = tx.send(frame(&WatchFrame::Error(StoreError::ShuttingDown))).await;
                        return;
                    }
                },
                _ = tick => {
                    if tx.send(frame(&WatchFrame::Progress { revision: next - 1 })).await.is_err() {
                        return;
                    }
                }
                _ = tx.closed() => return,
            }
        }
    }
}
