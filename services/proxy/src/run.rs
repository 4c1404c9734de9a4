//! The proxy's loop: follow Services and EndpointSlices, and after each burst of changes
//! (debounced) recompute the desired model from the cache and sync it; check the table
//! periodically.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::Notify;

use crate::exec::{Conntrack, Nft};
use crate::proxier::Proxier;

/// How the loop paces itself.
#[derive(Clone, Debug)]
pub struct Pacing {
    /// Wait this long after a change for more before syncing (and at least this long
    /// between syncs).
    pub debounce: Duration,
    /// How often the table is compared with what was programmed.
    pub check_interval: Duration,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing { debounce: Duration::from_millis(100), check_interval: Duration::from_secs(60) }
    }
}

/// Run until `shutdown` completes. The table is first written once both caches hold a
/// full list, so a restart never programs an empty table over a good one.
pub async fn run<N, C>(client: kube::Client, proxier: Proxier<N, C>, pacing: Pacing, shutdown: impl Future<Output = ()>)
where
    N: Nft + 'static,
    C: Conntrack + 'static,
{
    let changed = Arc::new(Notify::new());
    let (services, t1) = kapp_runtime::follow::follow::<Service>(client.clone(), changed.clone());
    let (slices, t2) = kapp_runtime::follow::follow::<EndpointSlice>(client, changed.clone());
    let mut proxier = Some(proxier);
    let work = async {
        services.synced().await;
        slices.synced().await;
        let mut check = tokio::time::interval(pacing.check_interval);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.tick().await;
        let mut first = true;
        // After a failed sync: retry with capped exponential backoff (1 s … 30 s).
        let mut retry: Option<Duration> = None;
        loop {
            let is_check = if first {
                false
            } else {
                let backoff = async {
                    match retry {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    _ = changed.notified() => false,
                    _ = check.tick() => true,
                    _ = backoff => false,
                }
            };
            first = false;
            if !is_check {
                tokio::time::sleep(pacing.debounce).await;
            }
            let svcs = services.list();
            let sls = slices.list();
            let mut p = proxier.take().expect("the proxier is home between passes");
            let back = tokio::task::spawn_blocking(move || {
                let desired = crate::model::desired(svcs.iter().map(|s| s.as_ref()), sls.iter().map(|s| s.as_ref()));
                let mut ok = match p.sync(&desired) {
                    Ok(s) => {
                        if s.program_bytes > 0 {
                            tracing::info!(full = s.full, changed = s.changed, bytes = s.program_bytes, ms = s.elapsed.as_millis() as u64, "nft synced");
                        }
                        true
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "nft sync failed");
                        false
                    }
                };
                if is_check && ok {
                    match p.check() {
                        Ok(r) if !r.clean() => tracing::warn!(?r, "nft table repaired"),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::error!(error = %e, "nft check failed");
                            ok = false;
                        }
                    }
                }
                (p, ok)
            })
            .await;
            match back {
                Ok((p, ok)) => {
                    proxier = Some(p);
                    retry = if ok { None } else { Some(retry.map_or(Duration::from_secs(1), |d| (d * 2).min(Duration::from_secs(30)))) };
                }
                Err(e) => {
                    tracing::error!(error = %e, "proxy pass panicked");
                    return;
                }
            }
        }
    };
    tokio::select! {
        _ = work => {}
        _ = shutdown => {}
    }
    t1.abort();
    t2.abort();
}
