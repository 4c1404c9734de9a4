//! The watch cache: one store watch per resource, each event decoded and serialised once,
//! then fanned out to every watcher of that resource (kube-apiserver's cacher does the
//! same). Without it every watcher paid its own store stream, decode and encode per event,
//! and a thousand pods on a hundred nodes drowned the apiserver.
//!
//! Invariant: a feed holds every event with a revision in `(base, revision]`, in order. A
//! watcher keeps a cursor (it has been given everything up to it). While `cursor >= base` it
//! reads from the feed; otherwise (it asked for a revision older than the feed, fell behind
//! the bounded buffer, or the feed's upstream failed) it goes on with a store watch of its
//! own from `cursor + 1`, which the store serves from history or refuses with 410 once
//! compacted. So the cache changes the cost of a watch, never what it delivers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kapp_store_client::{Event, EventKind, KeyRange, RangeRequest, Revision, StoreClient, WatchItem};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::codec::Codec;

/// Bounds of one resource's event buffer.
#[derive(Clone, Copy, Debug)]
pub struct WatchCacheConfig {
    /// Events kept per resource (0: no cache, every watch reads the store directly).
    pub max_events: usize,
    /// Approximate bytes kept per resource (four times the events' JSON: the line and the
    /// parsed object).
    pub max_bytes: usize,
}

impl Default for WatchCacheConfig {
    fn default() -> Self {
        WatchCacheConfig { max_events: 10_000, max_bytes: 64 << 20 }
    }
}

/// One decoded event.
pub(crate) struct Cached {
    pub rev: Revision,
    pub key: Vec<u8>,
    pub ty: &'static str,
    pub obj: Value,
    /// `{"type": …, "object": …}` and a newline: what most watchers send as it is.
    pub line: Bytes,
}

/// A watch stream line.
pub(crate) fn line(ty: &str, obj: &Value) -> Bytes {
    let mut b = serde_json::to_vec(&json!({"type": ty, "object": obj})).expect("json serialises");
    b.push(b'\n');
    Bytes::from(b)
}

/// A stored event as a watcher sees it (`None`: unreadable, logged by `decode`).
pub(crate) fn event(codec: &Codec, ev: &Event) -> Option<(&'static str, Value)> {
    match ev.kind {
        EventKind::Put => Some((if ev.kv.version == 1 { "ADDED" } else { "MODIFIED" }, crate::decode(codec, &ev.kv, ev.kv.mod_revision)?)),
        EventKind::Delete => Some(("DELETED", crate::decode(codec, ev.prev_kv.as_ref()?, ev.kv.mod_revision)?)),
    }
}

struct State {
    base: Revision,
    revision: Revision,
    events: VecDeque<Arc<Cached>>,
    bytes: usize,
    failed: bool,
}

/// One resource's events.
pub(crate) struct Feed {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    cfg: WatchCacheConfig,
}

/// What a watcher finds after its cursor.
pub(crate) enum Read {
    /// Events after the cursor (maybe none), and the revision everything is known up to.
    Events(Vec<Arc<Cached>>, Revision),
    /// Events after the cursor are no longer (or never were) here.
    Behind,
}

impl Feed {
    fn new(revision: Revision, cfg: WatchCacheConfig) -> Feed {
        let state = State { base: revision, revision, events: VecDeque::new(), bytes: 0, failed: false };
        Feed { state: Mutex::new(state), changed: watch::channel(0).0, cfg }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Woken whenever something is added (or the feed fails).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn read_after(&self, cursor: Revision) -> Read {
        let st = self.lock();
        if st.failed || cursor < st.base {
            return Read::Behind;
        }
        let i = st.events.partition_point(|e| e.rev <= cursor);
        Read::Events(st.events.range(i..).cloned().collect(), st.revision.max(cursor))
    }

    fn failed(&self) -> bool {
        self.lock().failed
    }

    fn push(&self, events: Vec<Cached>, revision: Revision) {
        {
            let mut st = self.lock();
            for e in events {
                st.bytes += 4 * e.line.len();
                st.events.push_back(Arc::new(e));
            }
            st.revision = st.revision.max(revision);
            while st.events.len() > self.cfg.max_events || (st.bytes > self.cfg.max_bytes && st.events.len() > 1) {
                let old = st.events.pop_front().expect("not empty");
                st.bytes -= 4 * old.line.len();
                // Keep whole revisions: a watcher's cursor is a revision.
                st.base = old.rev.max(st.base);
            }
            while st.events.front().is_some_and(|e| e.rev <= st.base) {
                let old = st.events.pop_front().expect("not empty");
                st.bytes -= 4 * old.line.len();
            }
        }
        self.changed.send_modify(|n| *n += 1);
    }

    fn progress(&self, revision: Revision) {
        {
            let mut st = self.lock();
            if revision <= st.revision {
                return;
            }
            st.revision = revision;
        }
        self.changed.send_modify(|n| *n += 1);
    }

    fn fail(&self) {
        self.lock().failed = true;
        self.changed.send_modify(|n| *n += 1);
    }
}

/// Every resource's feed, started by the first watch of that resource.
pub(crate) struct WatchCache {
    store: StoreClient,
    codec: Arc<Codec>,
    cfg: WatchCacheConfig,
    progress: Duration,
    feeds: tokio::sync::Mutex<HashMap<String, Arc<Feed>>>,
    stop: watch::Sender<bool>,
}

impl WatchCache {
    pub fn new(store: StoreClient, codec: Arc<Codec>, cfg: WatchCacheConfig, progress: Duration) -> WatchCache {
        WatchCache { store, codec, cfg, progress, feeds: Default::default(), stop: watch::channel(false).0 }
    }

    /// The feed of every key under `prefix` (a whole resource), started if need be at `from`
    /// (the first watcher's cursor: the store replays what follows it) or, for 0 or a future
    /// revision, at the store's current one. A compacted `from` ends the feed at once and its
    /// watchers read the store directly. `None` when the cache is off or the store cannot say
    /// where it is.
    pub async fn feed(&self, prefix: &str, from: Revision) -> Option<Arc<Feed>> {
        if self.cfg.max_events == 0 || *self.stop.borrow() {
            return None;
        }
        let mut feeds = self.feeds.lock().await;
        if let Some(f) = feeds.get(prefix).filter(|f| !f.failed()) {
            return Some(f.clone());
        }
        let range = KeyRange::prefix(prefix);
        let now = self.store.range(RangeRequest { range: range.clone(), count_only: true, ..Default::default() }).await.ok()?.revision;
        let base = if from > 0 { from.min(now) } else { now };
        let feed = Arc::new(Feed::new(base, self.cfg));
        let upstream = self.store.watch(range, base + 1, Some(self.progress));
        tokio::spawn(follow(feed.clone(), upstream, self.codec.clone(), self.stop.subscribe()));
        feeds.insert(prefix.to_string(), feed.clone());
        Some(feed)
    }

    /// Stop every feed; their watchers go on with their own store watches.
    pub fn close(&self) {
        let _ = self.stop.send(true);
    }
}

async fn follow(feed: Arc<Feed>, mut upstream: kapp_store_client::WatchStream, codec: Arc<Codec>, mut stop: watch::Receiver<bool>) {
    loop {
        let item = tokio::select! {
            item = upstream.next() => item,
            _ = stop.wait_for(|s| *s) => break,
        };
        match item {
            Ok(WatchItem::Events(evs)) => {
                let last = evs.last().map_or(0, |e| e.kv.mod_revision);
                let cached = evs
                    .iter()
                    .filter_map(|ev| {
                        let (ty, obj) = event(&codec, ev)?;
                        Some(Cached { rev: ev.kv.mod_revision, key: ev.kv.key.clone(), ty, line: line(ty, &obj), obj })
                    })
                    .collect();
                feed.push(cached, last);
            }
            Ok(WatchItem::Progress(rev)) => feed.progress(rev),
            Err(e) => {
                tracing::warn!(error = %e, "watch cache feed ended; its watchers read the store directly");
                break;
            }
        }
    }
    feed.fail();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(rev: Revision, name: &str) -> Cached {
        let obj = json!({"metadata": {"name": name}});
        Cached { rev, key: name.as_bytes().to_vec(), ty: "ADDED", line: line("ADDED", &obj), obj }
    }

    fn revs(r: Read) -> Option<(Vec<Revision>, Revision)> {
        match r {
            Read::Events(e, at) => Some((e.iter().map(|e| e.rev).collect(), at)),
            Read::Behind => None,
        }
    }

    #[test]
    fn readers_get_what_follows_their_cursor() {
        let f = Feed::new(10, WatchCacheConfig::default());
        assert_eq!(revs(f.read_after(10)), Some((vec![], 10)));
        assert!(revs(f.read_after(9)).is_none(), "before the feed began");
        f.push(vec![ev(11, "a"), ev(12, "b"), ev(12, "c")], 12);
        assert_eq!(revs(f.read_after(10)), Some((vec![11, 12, 12], 12)));
        assert_eq!(revs(f.read_after(11)), Some((vec![12, 12], 12)));
        f.progress(20);
        assert_eq!(revs(f.read_after(12)), Some((vec![], 20)));
        // A cursor ahead of the feed (a list from a newer revision) waits.
        assert_eq!(revs(f.read_after(25)), Some((vec![], 25)));
    }

    #[test]
    fn the_buffer_drops_whole_revisions_and_readers_behind_it_are_told() {
        let f = Feed::new(0, WatchCacheConfig { max_events: 3, max_bytes: usize::MAX });
        f.push(vec![ev(1, "a"), ev(2, "b"), ev(2, "c")], 2);
        f.push(vec![ev(3, "d")], 3);
        // Dropping 1 would leave 3 events; then the limit holds. Revision 2 stays whole.
        assert_eq!(revs(f.read_after(1)), Some((vec![2, 2, 3], 3)));
        assert!(revs(f.read_after(0)).is_none());
        f.push(vec![ev(4, "e")], 4);
        // 2 had to go, both of its events.
        assert_eq!(revs(f.read_after(2)), Some((vec![3, 4], 4)));
        assert!(revs(f.read_after(1)).is_none());
    }

    #[test]
    fn the_byte_bound_holds_and_a_failed_feed_sends_everyone_to_the_store() {
        let one = 4 * ev(1, "a").line.len();
        let f = Feed::new(0, WatchCacheConfig { max_events: 100, max_bytes: 2 * one });
        for r in 1..=5 {
            f.push(vec![ev(r, "a")], r);
        }
        assert_eq!(revs(f.read_after(3)), Some((vec![4, 5], 5)));
        assert!(revs(f.read_after(2)).is_none());
        f.fail();
        assert!(revs(f.read_after(5)).is_none());
    }
}
