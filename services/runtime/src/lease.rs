//! Leader election through a Lease, as client-go does it: the holder renews
//! `spec.renewTime` every `renew_every`; a candidate takes the Lease over once it has seen
//! the same record unchanged for `duration` (measured on its own clock, so clock skew
//! between heads does not matter). Writes carry the resourceVersion they read, so two
//! candidates can never both win. A leader that cannot renew within `duration` stops
//! acting (its work is cancelled) before anyone else may take over.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;

/// How an elector behaves.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This candidate's identity (unique per process: node name and component).
    pub holder: String,
    /// How long a record must stay unchanged before another candidate takes over.
    pub duration: Duration,
    /// How often the holder renews, and candidates retry.
    pub renew_every: Duration,
}

impl LeaseConfig {
    /// Kubernetes' defaults for controllers: 15 s lease, renewed every 2 s.
    pub fn new(name: &str, holder: &str) -> LeaseConfig {
        LeaseConfig { namespace: "kube-system".into(), name: name.into(), holder: holder.into(), duration: Duration::from_secs(15), renew_every: Duration::from_secs(2) }
    }
}

/// One candidate's view of the Lease.
pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    /// The last record seen (holder, renewTime, resourceVersion) and when it was first seen.
    observed: Option<(String, Instant)>,
    /// When we last renewed successfully while holding.
    renewed: Option<Instant>,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl Elector {
    pub fn new(client: kube::Client, cfg: LeaseConfig) -> Elector {
        Elector { api: Api::namespaced(client, &cfg.namespace), cfg, observed: None, renewed: None }
    }

    /// Try once to acquire or renew. `Ok(true)`: we hold the Lease now.
    pub async fn try_acquire(&mut self) -> Result<bool, kube::Error> {
        let seconds = i32::try_from(self.cfg.duration.as_secs()).unwrap_or(i32::MAX);
        let current = match self.api.get_opt(&self.cfg.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(self.cfg.name.clone()), ..Default::default() },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.cfg.holder.clone()),
                        lease_duration_seconds: Some(seconds),
                        acquire_time: Some(now()),
                        renew_time: Some(now()),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(self.won()),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                };
            }
            Some(l) => l,
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let record = format!("{holder}/{:?}/{:?}", spec.renew_time, current.metadata.resource_version);
        let first_seen = match &self.observed {
            Some((r, at)) if *r == record => *at,
            _ => {
                self.observed = Some((record, Instant::now()));
                Instant::now()
            }
        };
        let mine = holder == self.cfg.holder;
        let expired = holder.is_empty() || first_seen.elapsed() >= self.cfg.duration;
        if !mine && !expired {
            self.renewed = None;
            return Ok(false);
        }
        let mut next = current.clone();
        let mut s = spec;
        if !mine {
            s.holder_identity = Some(self.cfg.holder.clone());
            s.acquire_time = Some(now());
            s.lease_transitions = Some(s.lease_transitions.unwrap_or(0) + 1);
        }
        s.renew_time = Some(now());
        s.lease_duration_seconds = Some(seconds);
        next.spec = Some(s);
        match self.api.replace(&self.cfg.name, &PostParams::default(), &next).await {
            Ok(_) => Ok(self.won()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn won(&mut self) -> bool {
        self.renewed = Some(Instant::now());
        true
    }

    /// Whether we may still act: renewed within the lease duration.
    pub fn holds(&self) -> bool {
        self.renewed.is_some_and(|at| at.elapsed() < self.cfg.duration)
    }

    /// Give the Lease up (on clean shutdown) so another candidate need not wait.
    pub async fn release(&mut self) {
        if self.renewed.take().is_none() {
            return;
        }
        if let Ok(Some(mut l)) = self.api.get_opt(&self.cfg.name).await {
            if let Some(s) = l.spec.as_mut().filter(|s| s.holder_identity.as_deref() == Some(self.cfg.holder.as_str())) {
                s.holder_identity = None;
                let _ = self.api.replace(&self.cfg.name, &PostParams::default(), &l).await;
            }
        }
    }
}

/// Run `work` whenever this candidate leads: `work` gets a receiver that turns `true` when
/// leadership is lost; its future is also dropped then. Returns when `stop` resolves.
pub async fn lead<W, F>(client: kube::Client, cfg: LeaseConfig, mut work: W, stop: impl Future<Output = ()>) 
where
    W: FnMut(watch::Receiver<bool>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let renew_every = cfg.renew_every;
    let mut elector = Elector::new(client, cfg.clone());
    let mut task: Option<(tokio::task::JoinHandle<()>, watch::Sender<bool>)> = None;
    tokio::pin!(stop);
    loop {
        match elector.try_acquire().await {
            Ok(true) if task.is_none() => {
                tracing::info!(lease = %cfg.name, holder = %cfg.holder, "became leader");
                let (tx, rx) = watch::channel(false);
                task = Some((tokio::spawn(work(rx)), tx));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(lease = %cfg.name, error = %e, "lease"),
        }
        if task.is_some() && !elector.holds() {
            tracing::warn!(lease = %cfg.name, holder = %cfg.holder, "lost leadership");
            if let Some(t) = task.take() {
                stop_work(t).await;
            }
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(renew_every) => {}
        }
    }
    // The work has stopped before the Lease is given up, so two never overlap.
    if let Some(t) = task.take() {
        stop_work(t).await;
    }
    elector.release().await;
}

/// Tell the work it lost leadership, cancel it, and wait until it no longer runs.
async fn stop_work((handle, lost): (tokio::task::JoinHandle<()>, watch::Sender<bool>)) {
    let _ = lost.send(true);
    handle.abort();
    let _ = handle.await;
}
