//! Follow a kind through the apiserver into a local cache: a kube-rs reflector whose
//! every change wakes one [`Notify`], so a consumer recomputes from the cache (never from
//! an event's payload) and bursts of events coalesce into one wake-up.

use std::fmt::Debug;
use std::sync::Arc;

use futures_util::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

/// Start following every `K` in every namespace. Returns the cache; the watch runs as a
/// task until `client` is dropped or the task is aborted (relisting with backoff after
/// errors, as kube-rs's watcher does).
pub fn follow<K>(client: Client, changed: Arc<Notify>) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let api: Api<K> = Api::all(client);
    let task = tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default()).default_backoff().reflect(writer);
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(_) => changed.notify_one(),
                Err(e) => tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying"),
            }
        }
    });
    (store, task)
}
