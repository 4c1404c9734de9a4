//! The DNS loop: follow Services, EndpointSlices and Pods; after each burst of changes
//! (debounced) recompute the records from the caches and write what changed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::Notify;

use crate::server::Zones;

/// Run until `shutdown` completes. `debounce` bounds how often the zones are rebuilt
/// (an update is visible within `debounce` plus the watch delay).
pub async fn run(client: kube::Client, mut zones: Zones, debounce: Duration, shutdown: impl Future<Output = ()>) {
    let changed = Arc::new(Notify::new());
    let (services, t1) = kapp_runtime::follow::follow::<Service>(client.clone(), changed.clone());
    let (slices, t2) = kapp_runtime::follow::follow::<EndpointSlice>(client.clone(), changed.clone());
    let (pods, t3) = kapp_runtime::follow::follow::<Pod>(client, changed.clone());
    let work = async {
        services.synced().await;
        slices.synced().await;
        pods.synced().await;
        loop {
            let (s, e, p) = (services.list(), slices.list(), pods.list());
            let desired = crate::records::records(zones.config(), s.iter().map(|x| x.as_ref()), e.iter().map(|x| x.as_ref()), p.iter().map(|x| x.as_ref()));
            let stats = zones.apply(&desired).await;
            if stats.sets_changed > 0 {
                tracing::info!(sets = stats.sets_changed, zones = stats.zones_changed, serial = zones.serial(), "dns records updated");
            }
            changed.notified().await;
            tokio::time::sleep(debounce).await;
        }
    };
    tokio::select! {
        _ = work => {}
        _ = shutdown => {}
    }
    t1.abort();
    t2.abort();
    t3.abort();
}
