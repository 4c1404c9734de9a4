//! Three members on loopback: leader loss, partitions, restarts from disk, watches across
//! leader changes, membership changes with snapshot catch-up, and a linearizability check of
//! concurrent histories recorded under faults.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kapp_lincheck::{check, CheckResult, Input, Operation, Output};
use kapp_store::client::{StoreClient, StoreError, WatchItem};
use kapp_store::testing::{fast_timers, TestCluster};
use kapp_store::types::*;
use rand::{Rng, SeedableRng};

async fn wait_until<F: Fn() -> bool>(what: &str, within: Duration, f: F) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_loss_partition_and_restart_keep_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCluster::start(3, dir.path()).await;
    let s = c.client();
    let mut acked = BTreeMap::new();
    for i in 0..50 {
        let k = format!("/k/{i:03}");
        s.put(k.clone(), format!("v{i}")).await.unwrap();
        acked.insert(k, format!("v{i}"));
    }

    // Lose the leader: a new one is elected and takes writes.
    let old = c.wait_leader(Duration::from_secs(10)).await;
    c.stop(old).await;
    let new = c.wait_leader(Duration::from_secs(10)).await;
    assert_ne!(new, old);
    for i in 50..80 {
        let k = format!("/k/{i:03}");
        s.put(k.clone(), format!("v{i}")).await.unwrap();
        acked.insert(k, format!("v{i}"));
    }
    c.restart(old).await;

    // Partition one follower: the majority keeps committing, the minority cannot.
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let minority = *c.members.keys().find(|id| **id != leader).unwrap();
    c.partition(minority);
    for i in 80..100 {
        let k = format!("/k/{i:03}");
        s.put(k.clone(), format!("v{i}")).await.unwrap();
        acked.insert(k, format!("v{i}"));
    }
    let lonely = c.client_of(minority);
    let err = lonely.put("/minority", "x").await.unwrap_err();
    assert!(err.is_retryable(), "a minority write fails as unavailable, got {err}");
    let err = lonely.get("/k/000").await.unwrap_err();
    assert!(err.is_retryable(), "a minority linearizable read fails too, got {err}");
    c.heal();

    // Restart everyone from disk.
    let ids: Vec<NodeId> = c.members.keys().copied().collect();
    for id in &ids {
        c.stop(*id).await;
    }
    for id in &ids {
        c.restart(*id).await;
    }
    c.wait_leader(Duration::from_secs(15)).await;
    let all = s.list("/k/").await.unwrap();
    let got: BTreeMap<String, String> = all
        .kvs
        .iter()
        .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), String::from_utf8_lossy(&kv.value).into_owned()))
        .collect();
    assert_eq!(got, acked, "every acknowledged write survives");
    assert_eq!(s.get("/minority").await.unwrap(), None, "the minority's write never happened");
    // Every member converges on the same revision.
    let target = s.status().await.unwrap().revision;
    for id in &ids {
        let st = c.client_of(*id).status().await.unwrap();
        assert!(st.revision <= target);
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_has_no_gap_or_duplicate_across_leader_changes() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCluster::start(3, dir.path()).await;
    let s = c.client();
    let start = s.put("/w/start", "0").await.unwrap();
    let watcher = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut w = s.watch(KeyRange::prefix("/w/"), start, None);
            let mut revs = Vec::new();
            while revs.len() < 61 {
                if let WatchItem::Events(evs) = w.next().await.unwrap() {
                    revs.extend(evs.iter().map(|e| e.kv.mod_revision));
                }
            }
            revs
        })
    };
    let mut written = vec![start];
    for round in 0..3 {
        for i in 0..20 {
            written.push(s.put(format!("/w/{round}/{i}"), "v").await.unwrap());
        }
        let l = c.wait_leader(Duration::from_secs(10)).await;
        c.stop(l).await;
        c.wait_leader(Duration::from_secs(10)).await;
        c.restart(l).await;
    }
    let seen = tokio::time::timeout(Duration::from_secs(60), watcher).await.expect("watcher finished").unwrap();
    assert_eq!(seen, written, "every write seen once, in order");
    c.shutdown().await;
}

fn small_snapshots(cfg: &mut kapp_store::StoreConfig) {
    fast_timers(cfg);
    cfg.snapshot_every = 50;
    cfg.logs_to_keep = 10;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_catches_up_by_snapshot_and_a_member_can_be_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCluster::start_tuned(3, dir.path(), small_snapshots).await;
    let s = c.client();
    for i in 0..300 {
        s.put(format!("/s/{i:04}"), format!("{i}")).await.unwrap();
    }
    // Member 4 joins: the leader has purged its early log, so it must install a snapshot.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    c.members.insert(4, addr.clone());
    // A joining member is started with a valid initial list that includes itself; it is not
    // the lowest id, so it never initialises and waits for the leader to add it.
    let mut cfg = c.config(4);
    cfg.members = BTreeMap::from([(1, c.members[&1].clone()), (2, c.members[&2].clone()), (4, addr.clone())]);
    let h = kapp_store::StoreHandle::start_with_listener(cfg, l).await.unwrap();
    c.handles.insert(4, h);
    s.add_member(4, addr).await.unwrap();
    let target = s.status().await.unwrap().revision;
    let four = &c.handles[&4];
    wait_until("member 4 to catch up", Duration::from_secs(20), || four.status().revision >= target).await;
    // Its first applied state came from a snapshot: history before it counts as compacted.
    assert!(four.status().compacted > 0, "member 4 installed a snapshot");
    let got = c.client_of(4).range_with(RangeRequest { range: KeyRange::prefix("/s/"), ..Default::default() }, true).await.unwrap();
    assert_eq!(got.count, 300);

    // Remove member 3; the rest keep working.
    s.remove_member(3).await.unwrap();
    let st = s.status().await.unwrap();
    assert!(!st.members.iter().any(|m| m.id == 3 && m.voter));
    assert!(matches!(s.remove_member(99).await.unwrap_err(), StoreError::UnknownMember(99)));
    s.put("/after", "removal").await.unwrap();
    c.shutdown().await;
}

/// Record a concurrent history of gets, puts and compare-and-swaps while the leader is
/// stopped and members are partitioned, then check it is linearizable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_under_faults_are_linearizable() {
    let seed: u64 = std::env::var("KAPP_LINCHECK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed);
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCluster::start(3, dir.path()).await;
    let epoch = Instant::now();
    let history = Arc::new(std::sync::Mutex::new(Vec::<Operation>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for client in 0..6u64 {
        let mut cfg = kapp_store::client::ClientConfig::new(c.members.values().cloned().collect(), c.pki.client.clone());
        cfg.attempt_timeout = Duration::from_millis(800);
        cfg.deadline = Duration::from_secs(3);
        let s = StoreClient::new(cfg).unwrap();
        let history = history.clone();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ client);
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 400 {
                n += 1;
                let key = format!("k{}", rng.gen_range(0..3));
                let call = epoch.elapsed().as_nanos() as u64;
                let (input, result) = match rng.gen_range(0..3) {
                    0 => {
                        let r = s.get(key.clone()).await.map(|kv| Output::Value(kv.map(|kv| String::from_utf8(kv.value).unwrap())));
                        (Input::Get, r)
                    }
                    1 => {
                        let v = format!("c{client}-{n}");
                        (Input::Put(v.clone()), s.put(key.clone(), v).await.map(|_| Output::Ok))
                    }
                    _ => {
                        let cur = s.get(key.clone()).await.ok().flatten().map(|kv| String::from_utf8(kv.value).unwrap());
                        let v = format!("c{client}-{n}");
                        let compare = match &cur {
                            None => Compare::absent(key.clone()),
                            Some(x) => Compare { key: key.clone().into(), op: CompareOp::Equal, target: CompareTarget::Value(x.clone().into()) },
                        };
                        let txn = Txn { compare: vec![compare], success: vec![Op::Put { key: key.clone().into(), value: v.clone().into(), prev_kv: false }], failure: vec![] };
                        let call = epoch.elapsed().as_nanos() as u64;
                        let r = s.txn(txn).await.map(|t| Output::Cas(t.succeeded));
                        let ret = epoch.elapsed().as_nanos() as u64;
                        let op = match r {
                            Ok(out) => Operation { client, call, ret: Some(ret), key, input: Input::Cas { expect: cur, new: v }, output: out },
                            Err(_) => Operation { client, call, ret: None, key, input: Input::Cas { expect: cur, new: v }, output: Output::Unknown },
                        };
                        history.lock().unwrap().push(op);
                        continue;
                    }
                };
                let ret = epoch.elapsed().as_nanos() as u64;
                let op = match result {
                    Ok(out) => Operation { client, call, ret: Some(ret), key, input, output: out },
                    // A failed read constrains nothing; a failed write may or may not have happened.
                    Err(_) if input == Input::Get => continue,
                    Err(_) => Operation { client, call, ret: None, key, input, output: Output::Unknown },
                };
                history.lock().unwrap().push(op);
            }
        }));
    }
    // Faults while the clients run: stop the leader, partition a member, restart.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..800))).await;
        let l = c.wait_leader(Duration::from_secs(10)).await;
        if rng.gen_bool(0.5) {
            c.stop(l).await;
            tokio::time::sleep(Duration::from_millis(700)).await;
            c.restart(l).await;
        } else {
            c.partition(l);
            tokio::time::sleep(Duration::from_millis(1200)).await;
            c.heal();
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let history = history.lock().unwrap().clone();
    let completed = history.iter().filter(|o| o.ret.is_some()).count();
    assert!(completed > 100, "too few operations completed ({completed}) to mean anything");
    match check(&history, Duration::from_secs(60)) {
        CheckResult::Linearizable => {}
        CheckResult::NotLinearizable(v) => panic!("seed {seed}: history is not linearizable: {v}"),
        CheckResult::Timeout => panic!("seed {seed}: linearizability check timed out on {} operations", history.len()),
    }
    c.shutdown().await;
}
