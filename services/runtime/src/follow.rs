//! Follow a kind through the apiserver into a local [`Cache`] whose every change wakes one
//! [`Notify`], so a consumer recomputes from the cache (never from an event's payload) and
//! bursts of events coalesce into one wake-up.

use std::fmt::Debug;
use std::sync::Arc;

use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::cache::Cache;

/// Start following every `K` in every namespace. Returns the cache; the watch runs as a
/// task until it is aborted (relisting with backoff after errors).
pub fn follow<K>(client: Client, changed: Arc<Notify>) -> (Arc<Cache<K>>, tokio::task::JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let cache = Cache::new();
    cache.on_change(move |_, _| changed.notify_one());
    let task = tokio::spawn(cache.clone().run(Api::all(client), watcher::Config::default()));
    (cache, task)
}
