//! The node's resource use, for the apiserver's `metrics.k8s.io` (`kubectl top nodes`,
//! `kappctl status`): CPU from `/proc/stat` (busy time, a rate over the last sampling
//! window) and memory from `/proc/meminfo` (total − available: the working set, as
//! Kubernetes reports it). Sampled every [`WINDOW`] by [`run`]; served as JSON at
//! `GET /stats/node` on the kubelet's mTLS endpoint.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The sampling window (metrics-server's default resolution is 15 s; Kubernetes' kubelet
/// summarises over ~10 s).
pub const WINDOW: Duration = Duration::from_secs(10);
/// `USER_HZ`: /proc/stat counts in hundredths of a second on Linux.
const NANOS_PER_TICK: u64 = 10_000_000;

/// What `/stats/node` answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    /// When the window ended (RFC 3339).
    pub timestamp: String,
    pub window_seconds: u64,
    /// Busy CPU over the window, in billionths of a core.
    pub cpu_usage_nano_cores: u64,
    /// Busy CPU since boot, in nanoseconds.
    pub cpu_usage_core_nano_seconds: u64,
    pub memory_working_set_bytes: u64,
    pub memory_capacity_bytes: u64,
}

/// Busy CPU time since boot in nanoseconds, from `/proc/stat`'s `cpu` line (user, nice,
/// system, irq, softirq, steal; not idle or iowait). Pure.
pub fn busy_nanos(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0)).collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    Some((get(0) + get(1) + get(2) + get(5) + get(6) + get(7)) * NANOS_PER_TICK)
}

/// `(working set, capacity)` in bytes from `/proc/meminfo`. Pure.
pub fn memory(meminfo: &str) -> Option<(u64, u64)> {
    let kib = |key: &str| meminfo.lines().find_map(|l| l.strip_prefix(key)?.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    let (total, available) = (kib("MemTotal:")?, kib("MemAvailable:")?);
    Some((total.saturating_sub(available) * 1024, total * 1024))
}

/// The samples; the latest window's figures.
pub struct Sampler {
    proc: PathBuf,
    last: Mutex<Option<(Instant, u64)>>,
    current: Mutex<Option<NodeStats>>,
}

impl Sampler {
    pub fn new(proc: &Path) -> Sampler {
        Sampler { proc: proc.to_path_buf(), last: Mutex::new(None), current: Mutex::new(None) }
    }

    /// Take a sample; after the first, the figures over the time since the previous one.
    pub fn sample(&self) {
        let (Ok(stat), Ok(meminfo)) = (std::fs::read_to_string(self.proc.join("stat")), std::fs::read_to_string(self.proc.join("meminfo"))) else { return };
        let (Some(busy), Some((working_set, capacity))) = (busy_nanos(&stat), memory(&meminfo)) else { return };
        let now = Instant::now();
        let previous = self.last.lock().expect("stats lock").replace((now, busy));
        if let Some((then, before)) = previous {
            let secs = now.duration_since(then).as_secs_f64();
            if secs > 0.0 {
                let rate = (busy.saturating_sub(before)) as f64 / secs;
                *self.current.lock().expect("stats lock") = Some(NodeStats {
                    timestamp: k8s_openapi::jiff::Timestamp::now().to_string(),
                    window_seconds: secs.round() as u64,
                    cpu_usage_nano_cores: rate as u64,
                    cpu_usage_core_nano_seconds: busy,
                    memory_working_set_bytes: working_set,
                    memory_capacity_bytes: capacity,
                });
            }
        }
    }

    /// The latest window's figures (None until two samples were taken).
    pub fn current(&self) -> Option<NodeStats> {
        self.current.lock().expect("stats lock").clone()
    }
}

/// Sample every [`WINDOW`] until `stop` changes (the first two a second apart, so figures
/// exist soon after start).
pub async fn run(sampler: std::sync::Arc<Sampler>, mut stop: tokio::sync::watch::Receiver<bool>) {
    sampler.sample();
    let mut wait = Duration::from_secs(1);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => sampler.sample(),
            _ = stop.changed() => return,
        }
        wait = WINDOW;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let stat = "cpu  100 5 50 10000 40 3 2 1 0 0\ncpu0 50 2 25 5000 20 1 1 0 0 0\nintr 1\n";
        assert_eq!(busy_nanos(stat), Some((100 + 5 + 50 + 3 + 2 + 1) * NANOS_PER_TICK));
        assert_eq!(busy_nanos("intr 1\n"), None);
        let meminfo = "MemTotal:        2000 kB\nMemFree:          100 kB\nMemAvailable:     500 kB\n";
        assert_eq!(memory(meminfo), Some((1500 * 1024, 2000 * 1024)));
        assert_eq!(memory("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn two_samples_make_a_window() {
        let s = Sampler::new(Path::new("/proc"));
        s.sample();
        assert!(s.current().is_none());
        std::thread::sleep(Duration::from_millis(50));
        s.sample();
        let st = s.current().expect("a window");
        assert!(st.memory_capacity_bytes > 0 && st.memory_working_set_bytes <= st.memory_capacity_bytes);
        assert!(st.cpu_usage_core_nano_seconds > 0);
    }
}
