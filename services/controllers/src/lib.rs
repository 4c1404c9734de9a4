//! kapp's control loops, run on the heads, each kind of loop with one active instance
//! chosen by a Lease: `run_scheduler` (the scheduler's watch-and-bind loop over the pure
//! `kapp-scheduler` core) and `run_controllers` (ReplicaSet, Deployment, DaemonSet,
//! StatefulSet, Job, CronJob, EndpointSlice, node lifecycle, Namespace deletion, garbage
//! collection, default ServiceAccounts).
//!
//! Every loop has DESIGN.md's reconcile shape: informers (`cache`) keep a local copy of
//! what the loop reads and turn changes into keys; a bounded `queue` hands each key to one
//! worker at a time; the reconcile reads the cache, decides, and writes through the
//! apiserver; failures come back with backoff; a periodic resync catches anything missed.

pub mod claims;
mod controllers;
pub mod events;
pub mod pods;
pub mod queue;

pub use kapp_runtime::cache;
mod scheduling;

use std::time::Duration;

pub use controllers::run_controllers;
pub use scheduling::run_scheduler;

/// Run `work` while holding the Lease `name` (in kube-system) as `holder`, until `stop`;
/// the work stops as soon as the Lease is lost.
async fn under_lease<W, Fut>(client: kube::Client, name: &str, holder: &str, work: W, stop: impl std::future::Future<Output = ()>)
where
    W: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let lease = kapp_runtime::lease::LeaseConfig::new(name, holder);
    let lead = |mut lost: tokio::sync::watch::Receiver<bool>| {
        let work = work.clone();
        async move {
            tokio::select! {
                _ = work() => {}
                _ = lost.wait_for(|l| *l) => {}
            }
        }
    };
    kapp_runtime::lease::lead(client, lease, lead, stop).await;
}

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("apiserver: {0}")]
    Api(#[from] kube::Error),
    #[error("{0}")]
    Invalid(String),
}

/// The controllers' timings. Defaults are Kubernetes': nodes checked every 5 s, NotReady
/// after 40 s without a heartbeat, their pods evicted 5 min later.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_monitor_period: Duration,
    pub node_monitor_grace: Duration,
    pub pod_eviction_timeout: Duration,
    /// Every key of every controller is reconciled again this often.
    pub resync: Duration,
    /// A Job's failed pods are replaced after this, doubling per failure (to 6 min).
    pub job_backoff: Duration,
    /// How often CronJobs are checked against their schedules.
    pub cronjob_period: Duration,
    /// At most this many pods are created or deleted by one reconcile (Kubernetes' burst).
    pub burst: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_monitor_period: Duration::from_secs(5),
            node_monitor_grace: Duration::from_secs(40),
            pod_eviction_timeout: Duration::from_secs(300),
            resync: Duration::from_secs(300),
            job_backoff: Duration::from_secs(10),
            cronjob_period: Duration::from_secs(10),
            burst: 500,
        }
    }
}
