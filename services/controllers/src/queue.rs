//! A bounded work queue of keys: a key queued twice is queued once, a key is handed to
//! one worker at a time, failures come back with capped exponential backoff.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// At most this many distinct keys wait; beyond, keys are dropped (the periodic resync
/// brings them back) rather than growing without bound.
pub const MAX_QUEUED: usize = 200_000;
const BASE_DELAY: Duration = Duration::from_millis(50);
const MAX_DELAY: Duration = Duration::from_secs(30);

#[derive(Default)]
struct State {
    order: VecDeque<String>,
    queued: HashSet<String>,
    /// Keys handed out and not yet done; a key added meanwhile runs again after.
    active: HashSet<String>,
    again: HashSet<String>,
    delayed: HashSet<String>,
    failures: HashMap<String, u32>,
}

pub struct Queue {
    name: &'static str,
    state: Mutex<State>,
    notify: tokio::sync::Notify,
}

impl Queue {
    pub fn new(name: &'static str) -> Arc<Queue> {
        Arc::new(Queue { name, state: Mutex::default(), notify: tokio::sync::Notify::new() })
    }

    pub fn add(&self, key: impl Into<String>) {
        let key = key.into();
        let mut s = self.state.lock().expect("queue lock");
        if s.active.contains(&key) {
            s.again.insert(key);
            return;
        }
        if s.queued.contains(&key) {
            return;
        }
        if s.queued.len() >= MAX_QUEUED {
            tracing::warn!(queue = self.name, %key, "work queue full; the resync will bring the key back");
            return;
        }
        s.queued.insert(key.clone());
        s.order.push_back(key);
        drop(s);
        self.notify.notify_one();
    }

    /// Add `key` after `delay` (once, however often asked meanwhile).
    pub fn add_after(self: &Arc<Self>, key: String, delay: Duration) {
        if !self.state.lock().expect("queue lock").delayed.insert(key.clone()) {
            return;
        }
        let q = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            q.state.lock().expect("queue lock").delayed.remove(&key);
            q.add(key);
        });
    }

    /// The key failed: try again after 50 ms doubling to 30 s.
    pub fn retry(self: &Arc<Self>, key: &str) {
        let n = {
            let mut s = self.state.lock().expect("queue lock");
            let n = s.failures.entry(key.to_string()).or_insert(0);
            *n = (*n + 1).min(20);
            *n
        };
        self.add_after(key.to_string(), delay(n));
    }

    /// The key succeeded: its backoff starts over.
    pub fn forget(&self, key: &str) {
        self.state.lock().expect("queue lock").failures.remove(key);
    }

    async fn next(&self) -> String {
        loop {
            {
                let mut s = self.state.lock().expect("queue lock");
                if let Some(k) = s.order.pop_front() {
                    s.queued.remove(&k);
                    s.active.insert(k.clone());
                    return k;
                }
            }
            self.notify.notified().await;
        }
    }

    fn done(&self, key: &str) {
        let again = {
            let mut s = self.state.lock().expect("queue lock");
            s.active.remove(key);
            s.again.remove(key)
        };
        if again {
            self.add(key.to_string());
        }
    }

    pub fn len(&self) -> usize {
        self.state.lock().expect("queue lock").order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The wait before the `n`th retry (n ≥ 1).
fn delay(n: u32) -> Duration {
    BASE_DELAY.saturating_mul(1 << (n.max(1) - 1).min(16)).min(MAX_DELAY)
}

/// What a reconcile asks of the queue afterwards.
pub enum Next {
    Done,
    /// Look again after this long (a timer: minReadySeconds, a deadline, a backoff).
    After(Duration),
}

/// Run `workers` workers over `queue` forever: one reconcile per key at a time; an error
/// requeues the key with backoff.
pub async fn work<F, Fut, E>(queue: Arc<Queue>, workers: usize, reconcile: F)
where
    F: Fn(String) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Next, E>> + Send,
    E: std::fmt::Display,
{
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let (q, f) = (queue.clone(), reconcile.clone());
        tasks.spawn(async move {
            loop {
                let key = q.next().await;
                match f(key.clone()).await {
                    Ok(next) => {
                        q.forget(&key);
                        if let Next::After(d) = next {
                            q.add_after(key.clone(), d);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(queue = q.name, %key, error = %e, "reconcile failed; retrying");
                        q.retry(&key);
                    }
                }
                q.done(&key);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_deduplicated_and_requeued_when_added_while_active() {
        let q = Queue::new("t");
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        let k = q.next().await;
        assert_eq!(k, "a");
        q.add("a"); // while a is being worked on
        assert_eq!(q.len(), 1, "a waits until its reconcile ends");
        q.done("a");
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(delay(1), Duration::from_millis(50));
        assert_eq!(delay(2), Duration::from_millis(100));
        assert_eq!(delay(5), Duration::from_millis(800));
        assert_eq!(delay(20), MAX_DELAY);
    }

    #[tokio::test]
    async fn a_failed_key_comes_back_and_success_resets_its_backoff() {
        let q = Queue::new("t");
        q.retry("a");
        assert_eq!(q.len(), 0, "not at once");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(q.len(), 1);
        assert_eq!(q.state.lock().unwrap().failures["a"], 1);
        q.forget("a");
        assert!(!q.state.lock().unwrap().failures.contains_key("a"));
    }
}
