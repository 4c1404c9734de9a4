//! One member on loopback: the data model, transactions, history, watches, limits and
//! access control, through the real client library and HTTP/2 + mTLS.

use std::time::Duration;

use kapp_store::client::wire::{self, path};
use kapp_store::client::{limits, ClientConfig, StoreClient, StoreError, WatchItem};
use kapp_store::testing::TestCluster;
use kapp_store::types::*;

fn put(key: &str, value: &str) -> Op {
    Op::Put { key: key.into(), value: value.into(), prev_kv: true }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_versions_and_past_reads() {
    let dir = tempfile::tempdir().unwrap();
    let c = TestCluster::start(1, dir.path()).await;
    let s = c.client();
    let r1 = s.put("/a", "1").await.unwrap();
    let r2 = s.put("/a", "2").await.unwrap();
    let r3 = s.put("/b", "x").await.unwrap();
    assert_eq!((r2, r3), (r1 + 1, r1 + 2), "one revision per write");
    let a = s.get("/a").await.unwrap().unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version, a.value.as_slice()), (r1, r2, 2, &b"2"[..]));
    assert!(s.delete("/a").await.unwrap());
    assert!(!s.delete("/a").await.unwrap(), "second delete finds nothing");
    assert_eq!(s.get("/a").await.unwrap(), None);
    // Recreated: create_revision and version start over.
    let r5 = s.put("/a", "3").await.unwrap();
    let a = s.get("/a").await.unwrap().unwrap();
    assert_eq!((a.create_revision, a.version), (r5, 1));

    // Reads at past revisions.
    let at = |rev| RangeRequest { range: KeyRange::prefix("/"), revision: rev, ..Default::default() };
    let past = s.range(at(r1)).await.unwrap();
    assert_eq!(past.kvs.len(), 1);
    assert_eq!(past.kvs[0].value, b"1");
    let past = s.range(at(r3)).await.unwrap();
    assert_eq!(past.kvs.iter().map(|k| k.value.clone()).collect::<Vec<_>>(), vec![b"2".to_vec(), b"x".to_vec()]);
    let past = s.range(at(r3 + 1)).await.unwrap();
    assert_eq!(past.kvs.len(), 1, "after the delete only /b is left");
    let err = s.range(at(r5 + 10)).await.unwrap_err();
    assert!(matches!(err, StoreError::Refused(Refusal::FutureRevision { .. })), "{err}");

    // Limits and counts.
    for i in 0..10 {
        s.put(format!("/list/{i:02}"), "v").await.unwrap();
    }
    let page = s.range(RangeRequest { range: KeyRange::prefix("/list/"), limit: 3, ..Default::default() }).await.unwrap();
    assert_eq!((page.kvs.len(), page.more, page.count), (3, true, 10));
    assert_eq!(page.kvs[0].key, b"/list/00");

    // Compaction: older revisions are gone, newer ones still readable.
    s.compact(r3).await.unwrap();
    let err = s.range(at(r1)).await.unwrap_err();
    assert!(matches!(err, StoreError::Refused(Refusal::Compacted { .. })), "{err}");
    s.range(at(r3)).await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_swap_lets_exactly_one_stale_writer_win() {
    let dir = tempfile::tempdir().unwrap();
    let c = TestCluster::start(1, dir.path()).await;
    let s = c.client();
    let rev = s.put("/obj", "v0").await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let txn = Txn {
                compare: vec![Compare::mod_revision("/obj", rev)],
                success: vec![put("/obj", &format!("v{i}"))],
                failure: vec![Op::Range(RangeRequest { range: KeyRange::single("/obj"), ..Default::default() })],
            };
            s.txn(txn).await.unwrap()
        }));
    }
    let mut winners = 0;
    for t in tasks {
        let r = t.await.unwrap();
        if r.succeeded {
            winners += 1;
        } else {
            // The loser sees the current object, as the apiserver's 409 path needs.
            let OpResult::Range(rr) = &r.results[0] else { panic!("expected a range result") };
            assert_eq!(rr.kvs[0].mod_revision, rev + 1);
        }
    }
    assert_eq!(winners, 1, "exactly one update from the same revision wins");
    // Creation only if absent.
    let create = Txn { compare: vec![Compare::absent("/obj")], success: vec![put("/obj", "again")], failure: vec![] };
    assert!(!s.txn(create).await.unwrap().succeeded);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let c = TestCluster::start(1, dir.path()).await;
    let s = c.client();
    let before = s.status().await.unwrap().revision;

    let big = vec![b'x'; limits::MAX_VALUE_BYTES + 1];
    let err = s.put("/big", big).await.unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
    let err = s.put("", "v").await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    let twice = Txn { success: vec![put("/k", "1"), put("/k", "2")], ..Default::default() };
    assert!(matches!(s.txn(twice).await.unwrap_err(), StoreError::Invalid(_)));

    // The server checks too: send bytes that are not a request, and an oversized value
    // that skipped the client's checks.
    let tls = kapp_tls::client_config(&c.pki.client).unwrap();
    let raw = kapp_tls::H2Client::new(c.members[&1].clone(), tls);
    let r: Result<TxnResponse, StoreError> =
        wire::call(&raw, path::TXN, bytes::Bytes::from_static(b"\xff\xffgarbage"), false, Duration::from_secs(5)).await.unwrap();
    assert!(matches!(r, Err(StoreError::Invalid(ref m)) if m.contains("malformed")), "{r:?}");
    let sneaky = wire::TxnRequest {
        id: None,
        txn: Txn { success: vec![Op::Put { key: b"/big".to_vec(), value: vec![0; limits::MAX_VALUE_BYTES + 1], prev_kv: false }], ..Default::default() },
        serializable: false,
    };
    let r: Result<TxnResponse, StoreError> = wire::call(&raw, path::TXN, wire::encode(&sneaky), false, Duration::from_secs(5)).await.unwrap();
    assert!(matches!(r, Err(StoreError::TooLarge { .. })), "{r:?}");

    assert_eq!(s.status().await.unwrap().revision, before, "nothing was stored");
    assert_eq!(s.get("/big").await.unwrap(), None);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_cluster_identities_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let c = TestCluster::start(1, dir.path()).await;
    // A certificate from the right CA without a store group: 403.
    let viewer = c.pki.ca.issue("viewer", &["kapp:viewers"], &[]).unwrap();
    let mut cfg = ClientConfig::new(vec![c.members[&1].clone()], viewer);
    cfg.deadline = Duration::from_secs(2);
    let err = StoreClient::new(cfg).unwrap().put("/x", "y").await.unwrap_err();
    assert!(matches!(err, StoreError::Forbidden(_)), "{err}");
    // A client certificate may not speak raft.
    let tls = kapp_tls::client_config(&c.pki.client).unwrap();
    let raw = kapp_tls::H2Client::new(c.members[&1].clone(), tls);
    let r: Result<(), StoreError> = wire::call(&raw, path::RAFT_VOTE, bytes::Bytes::new(), false, Duration::from_secs(5)).await.unwrap();
    assert!(matches!(r, Err(StoreError::Forbidden(_))), "{r:?}");
    // No certificate at all: 401.
    let anon = kapp_tls::client_config_anonymous(&c.pki.client.ca).unwrap();
    let raw = kapp_tls::H2Client::new(c.members[&1].clone(), anon);
    let resp = raw.send(http::Request::post(path::TXN).body(kapp_tls::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), 401);
    // Health and metrics are open.
    let resp = raw.send(http::Request::get(path::METRICS).body(kapp_tls::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    for m in ["kapp_store_term", "kapp_store_is_leader 1", "kapp_store_commit_index", "kapp_store_request_duration_seconds_bucket"] {
        assert!(text.contains(m), "metrics lack {m}:\n{text}");
    }
    assert!(c.client().get("/x").await.unwrap().is_none(), "the refused write stored nothing");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_catches_up_follows_and_reports_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let c = TestCluster::start(1, dir.path()).await;
    let s = c.client();
    let first = s.put("/w/a", "1").await.unwrap();
    s.put("/other", "x").await.unwrap();
    s.put("/w/b", "2").await.unwrap();
    s.delete("/w/a").await.unwrap();

    let mut w = s.watch(KeyRange::prefix("/w/"), first, None);
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match w.next().await.unwrap() {
            WatchItem::Events(evs) => seen.extend(evs),
            WatchItem::Progress(_) => {}
        }
    }
    assert_eq!(seen.iter().map(|e| (e.kind, e.kv.key.clone())).collect::<Vec<_>>(), vec![
        (EventKind::Put, b"/w/a".to_vec()),
        (EventKind::Put, b"/w/b".to_vec()),
        (EventKind::Delete, b"/w/a".to_vec()),
    ]);
    assert_eq!(seen[2].prev_kv.as_ref().unwrap().value, b"1", "a delete carries the last value");
    // Live events after catching up.
    let r = s.put("/w/c", "3").await.unwrap();
    loop {
        if let WatchItem::Events(evs) = w.next().await.unwrap() {
            assert_eq!(evs.len(), 1);
            assert_eq!((evs[0].kv.key.as_slice(), evs[0].kv.mod_revision), (&b"/w/c"[..], r));
            break;
        }
    }
    // A compacted start revision is reported, not papered over.
    s.compact(r - 1).await.unwrap();
    let mut old = s.watch(KeyRange::prefix("/w/"), first, None);
    let err = old.next().await.unwrap_err();
    assert!(matches!(err, StoreError::Refused(Refusal::Compacted { .. })), "{err}");
    // Progress frames tell a quiet watcher how far it is.
    let mut quiet = s.watch(KeyRange::prefix("/quiet/"), 0, Some(Duration::from_millis(100)));
    match quiet.next().await.unwrap() {
        WatchItem::Progress(rev) => assert_eq!(rev, r),
        other => panic!("expected progress, got {other:?}"),
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_is_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = TestCluster::start(1, dir.path()).await;
    let tls = kapp_tls::client_config(&c.pki.client).unwrap();
    let raw = kapp_tls::H2Client::new(c.members[&1].clone(), tls);
    let t = Duration::from_secs(5);
    let session: u64 = wire::call::<u64, StoreError>(&raw, path::SESSION, wire::encode(&()), false, t).await.unwrap().unwrap();
    // A write that bumps a counter-like value: applying it twice would show.
    let req = |seq, acked_below| wire::TxnRequest {
        id: Some(RequestId { session, seq, acked_below }),
        txn: Txn { success: vec![put("/once", &format!("seq{seq}"))], ..Default::default() },
        serializable: false,
    };
    let first: TxnResponse = wire::call::<_, StoreError>(&raw, path::TXN, wire::encode(&req(1, 1)), false, t).await.unwrap().unwrap();
    let retry: TxnResponse = wire::call::<_, StoreError>(&raw, path::TXN, wire::encode(&req(1, 1)), false, t).await.unwrap().unwrap();
    assert_eq!(first, retry, "the retry gets the first answer");
    let s = c.client();
    assert_eq!(s.get("/once").await.unwrap().unwrap().version, 1, "applied once");
    // Once the client says it has the answer (acked_below > 1), a replay is refused rather
    // than applied again.
    let _: TxnResponse = wire::call::<_, StoreError>(&raw, path::TXN, wire::encode(&req(2, 2)), false, t).await.unwrap().unwrap();
    let stale: Result<TxnResponse, StoreError> = wire::call(&raw, path::TXN, wire::encode(&req(1, 1)), false, t).await.unwrap();
    assert!(matches!(stale, Err(StoreError::Refused(Refusal::SessionExpired { .. }))), "{stale:?}");
    // An unknown session is refused too.
    let mut bogus = req(1, 1);
    bogus.id.as_mut().unwrap().session = 999_999;
    let r: Result<TxnResponse, StoreError> = wire::call(&raw, path::TXN, wire::encode(&bogus), false, t).await.unwrap();
    assert!(matches!(r, Err(StoreError::Refused(Refusal::SessionExpired { .. }))), "{r:?}");
    assert_eq!(s.get("/once").await.unwrap().unwrap().version, 2);
    c.shutdown().await;
}
