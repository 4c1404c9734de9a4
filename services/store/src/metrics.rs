//! Prometheus text exposition of the store's own metrics (no metrics crate: a few counters
//! and fixed-bucket histograms are all it needs).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096];

/// A latency histogram with fixed buckets.
#[derive(Default, Debug)]
pub struct Histogram {
    buckets: [AtomicU64; 14],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {}", self.buckets[i].load(Ordering::Relaxed));
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Request kinds that get their own latency histogram.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Write,
    LinearizableRead,
    SerializableRead,
    Forwarded,
}

/// The store's metrics.
#[derive(Default, Debug)]
pub struct Metrics {
    write: Histogram,
    lin_read: Histogram,
    ser_read: Histogram,
    forwarded: Histogram,
    errors: AtomicU64,
    watch_events: AtomicU64,
}

impl Metrics {
    pub fn observe(&self, kind: Kind, d: Duration) {
        match kind {
            Kind::Write => self.write.observe(d),
            Kind::LinearizableRead => self.lin_read.observe(d),
            Kind::SerializableRead => self.ser_read.observe(d),
            Kind::Forwarded => self.forwarded.observe(d),
        }
    }
    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
    pub fn watch_events(&self, n: usize) {
        self.watch_events.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Render with the raft gauges of this member.
    pub fn render(&self, raft: &openraft::RaftMetrics<crate::types::NodeId, crate::types::Node>, revision: i64, compacted: i64, watchers: usize) -> String {
        let mut out = String::with_capacity(4096);
        let g = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        g(&mut out, "kapp_store_term", "current raft term", raft.current_term as f64);
        g(&mut out, "kapp_store_is_leader", "1 if this member is the leader", if raft.current_leader == Some(raft.id) { 1.0 } else { 0.0 });
        g(&mut out, "kapp_store_leader_id", "id of the leader this member knows (0: none)", raft.current_leader.unwrap_or(0) as f64);
        g(&mut out, "kapp_store_last_log_index", "index of the last log entry", raft.last_log_index.unwrap_or(0) as f64);
        g(&mut out, "kapp_store_applied_index", "index of the last applied entry", raft.last_applied.map_or(0, |l| l.index) as f64);
        g(&mut out, "kapp_store_commit_index", "last index known committed (quorum-matched on the leader, applied elsewhere)", committed_index(raft).unwrap_or(0) as f64);
        g(&mut out, "kapp_store_revision", "current store revision", revision as f64);
        g(&mut out, "kapp_store_compacted_revision", "revision history is compacted to", compacted as f64);
        g(&mut out, "kapp_store_watchers", "live watch streams", watchers as f64);
        let _ = writeln!(out, "# HELP kapp_store_errors_total requests answered with an error\n# TYPE kapp_store_errors_total counter\nkapp_store_errors_total {}", self.errors.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP kapp_store_watch_events_total events sent to watchers\n# TYPE kapp_store_watch_events_total counter\nkapp_store_watch_events_total {}", self.watch_events.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP kapp_store_request_duration_seconds request latency\n# TYPE kapp_store_request_duration_seconds histogram");
        self.write.render(&mut out, "kapp_store_request_duration_seconds", "kind=\"write\"");
        self.lin_read.render(&mut out, "kapp_store_request_duration_seconds", "kind=\"linearizable_read\"");
        self.ser_read.render(&mut out, "kapp_store_request_duration_seconds", "kind=\"serializable_read\"");
        self.forwarded.render(&mut out, "kapp_store_request_duration_seconds", "kind=\"forwarded\"");
        out
    }
}

/// The committed index as this member knows it: on the leader, the highest index a quorum of
/// voters has stored; elsewhere, the applied index (a lower bound).
pub fn committed_index(raft: &openraft::RaftMetrics<crate::types::NodeId, crate::types::Node>) -> Option<u64> {
    let applied = raft.last_applied.map(|l| l.index);
    let Some(repl) = &raft.replication else { return applied };
    let voters: Vec<_> = raft.membership_config.membership().voter_ids().collect();
    let mut matched: Vec<u64> = voters
        .iter()
        .map(|id| {
            if *id == raft.id {
                raft.last_log_index.unwrap_or(0)
            } else {
                repl.get(id).and_then(|m| m.as_ref()).map_or(0, |l| l.index)
            }
        })
        .collect();
    if matched.is_empty() {
        return applied;
    }
    matched.sort_unstable_by(|a, b| b.cmp(a));
    Some(matched[voters.len() / 2].max(applied.unwrap_or(0)))
}
