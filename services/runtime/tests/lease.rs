//! Leader election against the real apiserver and store: one holder at a time, renewal
//! keeps the Lease, a silent holder is replaced only after the lease duration, and `lead`
//! runs the work on exactly one candidate, handing over when the leader stops.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kapp_runtime::lease::{lead, Elector, LeaseConfig};
use kapp_testkit::{groups, ControlPlane};

struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn cfg(holder: &str) -> LeaseConfig {
    LeaseConfig { namespace: "kube-system".into(), name: "test".into(), holder: holder.into(), duration: Duration::from_millis(1500), renew_every: Duration::from_millis(200) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_holder_at_a_time_and_takeover_only_after_the_duration() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), 1).await;
    let client = cp.client("controllers", &[groups::CONTROLLERS]).await;
    let mut a = Elector::new(client.clone(), cfg("a"));
    let mut b = Elector::new(client.clone(), cfg("b"));
    assert!(a.try_acquire().await.unwrap());
    assert!(!b.try_acquire().await.unwrap());
    // While a renews, b never takes over, however long it waits.
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(a.try_acquire().await.unwrap(), "the holder renews");
        assert!(!b.try_acquire().await.unwrap(), "no takeover while the holder renews");
    }
    assert!(a.holds());
    // a goes silent: b must wait out the duration from when it last saw a change.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!b.try_acquire().await.unwrap(), "too early");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(b.try_acquire().await.unwrap(), "taken over after the duration");
    assert!(!a.try_acquire().await.unwrap(), "the old holder lost it");
    assert!(!a.holds());
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lead_runs_the_work_on_one_candidate_and_hands_over() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), 1).await;
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let leaders = Arc::new(Mutex::new(Vec::<usize>::new()));
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    for (i, holder) in ["a", "b"].into_iter().enumerate() {
        let client = cp.client("controllers", &[groups::CONTROLLERS]).await;
        let (running, most, leaders) = (running.clone(), most.clone(), leaders.clone());
        let work = move |mut lost: tokio::sync::watch::Receiver<bool>| {
            let (running, most, leaders) = (running.clone(), most.clone(), leaders.clone());
            async move {
                leaders.lock().unwrap().push(i);
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                // Counted as stopped however the work ends (returning or cancelled).
                let _running = Running(running);
                let _ = lost.changed().await;
            }
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        stops.push(Some(tx));
        tasks.push(Some(tokio::spawn(lead(client, cfg(holder), work, async {
            let _ = rx.await;
        }))));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let first = leaders.lock().unwrap().clone();
    assert_eq!(first.len(), 1, "exactly one candidate leads: {first:?}");
    // The leader stops (and releases the Lease): the other takes over well before the
    // lease duration would have run out.
    let leader = first[0];
    let _ = stops[leader].take().unwrap().send(());
    tasks[leader].take().unwrap().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while leaders.lock().unwrap().len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the other candidate never took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(leaders.lock().unwrap()[1], 1 - leader);
    assert_eq!(most.load(Ordering::SeqCst), 1, "never two leaders at once");
    let _ = stops[1 - leader].take().unwrap().send(());
    tasks[1 - leader].take().unwrap().await.unwrap();
    cp.shutdown().await;
}
