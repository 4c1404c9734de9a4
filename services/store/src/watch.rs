//! Fan-out of applied changes to watchers.
//!
//! The state machine publishes each applied change set here after writing it. A watcher
//! subscribes first, then catches up from the `events` history, then follows the live feed,
//! skipping what it already sent; if it falls behind the bounded feed it catches up from
//! history again. So a watcher sees every event once, in order, with bounded memory.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::types::{Event, Revision};

/// Change sets buffered for live watchers; a slower watcher re-reads history instead.
const FEED_CAPACITY: usize = 1024;

/// One published change set.
#[derive(Debug)]
pub enum Published {
    /// The events of one revision.
    Changes { revision: Revision, events: Vec<Event> },
    /// The state was replaced by a snapshot at `revision`: history before it is gone.
    Reset { revision: Revision },
}

/// Shared between the state machine (one writer) and watchers (many readers).
#[derive(Debug)]
pub struct WatchHub {
    feed: broadcast::Sender<Arc<Published>>,
    revision: AtomicI64,
    compacted: AtomicI64,
}

impl WatchHub {
    pub fn new(revision: Revision, compacted: Revision) -> WatchHub {
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        WatchHub { feed, revision: AtomicI64::new(revision), compacted: AtomicI64::new(compacted) }
    }

    /// Subscribe to changes published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.feed.subscribe()
    }

    /// The latest applied revision on this member.
    pub fn revision(&self) -> Revision {
        self.revision.load(Ordering::Acquire)
    }

    /// History at and below this revision is gone.
    pub fn compacted(&self) -> Revision {
        self.compacted.load(Ordering::Acquire)
    }

    pub(crate) fn set_compacted(&self, rev: Revision) {
        self.compacted.store(rev, Ordering::Release);
    }

    /// Called by the state machine after the change is durable in the database.
    pub(crate) fn publish(&self, p: Published) {
        match &p {
            Published::Changes { revision, .. } | Published::Reset { revision } => {
                self.revision.store(*revision, Ordering::Release)
            }
        }
        if let Published::Reset { revision } = &p {
            self.compacted.store(*revision, Ordering::Release);
        }
        // No receivers is fine: nobody is watching.
        let _ = self.feed.send(Arc::new(p));
    }

    /// Number of live watchers subscribed.
    pub fn watchers(&self) -> usize {
        self.feed.receiver_count()
    }
}
