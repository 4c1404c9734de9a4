//! Informers: one watch per kind into a local cache, with hooks that turn changes into
//! work-queue keys or wake-ups (DESIGN.md's reconcile shape: act on keys and read the
//! cache, never an event's payload). Two indexes: by controlling owner uid, and one the
//! caller may define (e.g. pods by node).

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, RwLock};

use futures_util::StreamExt;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

/// `namespace/name` (cluster-scoped: `name`), the key of every work queue.
pub fn key_of<K: Resource>(obj: &K) -> String {
    match obj.meta().namespace.as_deref() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{}", obj.meta().name.as_deref().unwrap_or("")),
        _ => obj.meta().name.clone().unwrap_or_default(),
    }
}

/// Split a key into (namespace, name).
pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

type Hook<K> = Box<dyn Fn(Option<&K>, Option<&K>) + Send + Sync>;

struct Inner<K> {
    objects: HashMap<String, Arc<K>>,
    /// Controller owner uid → keys of the objects it controls.
    by_owner: HashMap<String, HashSet<String>>,
    /// The caller's index value → keys.
    by_index: HashMap<String, HashSet<String>>,
}

/// What the caller's index maps an object to (`None`: not indexed).
pub type IndexFn<K> = fn(&K) -> Option<String>;

/// The cached objects of one kind, kept by a watch.
pub struct Cache<K> {
    inner: RwLock<Inner<K>>,
    index: Option<IndexFn<K>>,
    hooks: RwLock<Vec<Hook<K>>>,
    synced: tokio::sync::watch::Sender<bool>,
}

fn index_add(map: &mut HashMap<String, HashSet<String>>, value: Option<&str>, key: &str) {
    if let Some(v) = value {
        map.entry(v.to_string()).or_default().insert(key.to_string());
    }
}

fn index_remove(map: &mut HashMap<String, HashSet<String>>, value: Option<&str>, key: &str) {
    if let Some(set) = value.and_then(|v| map.get_mut(v)) {
        set.remove(key);
        if set.is_empty() {
            map.remove(value.unwrap_or_default());
        }
    }
}

/// The uid of the object's controlling owner.
pub fn controller_uid<K: Resource>(obj: &K) -> Option<&str> {
    obj.meta().owner_references.as_ref()?.iter().find(|r| r.controller == Some(true)).map(|r| r.uid.as_str())
}

impl<K> Cache<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    pub fn new() -> Arc<Self> {
        Self::build(None)
    }

    /// A cache that also indexes its objects by `index` (see [`Cache::indexed`]).
    pub fn with_index(index: IndexFn<K>) -> Arc<Self> {
        Self::build(Some(index))
    }

    fn build(index: Option<IndexFn<K>>) -> Arc<Self> {
        Arc::new(Cache {
            inner: RwLock::new(Inner { objects: HashMap::new(), by_owner: HashMap::new(), by_index: HashMap::new() }),
            index,
            hooks: RwLock::new(Vec::new()),
            synced: tokio::sync::watch::channel(false).0,
        })
    }

    /// The objects the cache's index maps to `value` (none without an index).
    pub fn indexed(&self, value: &str) -> Vec<Arc<K>> {
        let inner = self.inner.read().expect("cache lock");
        inner.by_index.get(value).map(|keys| keys.iter().filter_map(|k| inner.objects.get(k).cloned()).collect()).unwrap_or_default()
    }

    fn unindex(&self, inner: &mut Inner<K>, old: &K, key: &str) {
        index_remove(&mut inner.by_owner, controller_uid(old), key);
        if let Some(f) = self.index {
            index_remove(&mut inner.by_index, f(old).as_deref(), key);
        }
    }

    /// Call `hook(old, new)` on every change (before the watch starts).
    pub fn on_change(&self, hook: impl Fn(Option<&K>, Option<&K>) + Send + Sync + 'static) {
        self.hooks.write().expect("hooks lock").push(Box::new(hook));
    }

    pub fn get(&self, key: &str) -> Option<Arc<K>> {
        self.inner.read().expect("cache lock").objects.get(key).cloned()
    }

    pub fn list(&self) -> Vec<Arc<K>> {
        self.inner.read().expect("cache lock").objects.values().cloned().collect()
    }

    pub fn list_namespace(&self, ns: &str) -> Vec<Arc<K>> {
        self.inner.read().expect("cache lock").objects.values().filter(|o| o.meta().namespace.as_deref() == Some(ns)).cloned().collect()
    }

    /// The objects whose controlling owner has `uid`.
    pub fn owned_by(&self, uid: &str) -> Vec<Arc<K>> {
        let inner = self.inner.read().expect("cache lock");
        inner.by_owner.get(uid).map(|keys| keys.iter().filter_map(|k| inner.objects.get(k).cloned()).collect()).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.inner.read().expect("cache lock").objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wait for the first complete list.
    pub async fn synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    fn put(&self, obj: K) {
        let key = key_of(&obj);
        let new = Arc::new(obj);
        let old = {
            let mut inner = self.inner.write().expect("cache lock");
            let old = inner.objects.insert(key.clone(), new.clone());
            if let Some(o) = &old {
                self.unindex(&mut inner, o, &key);
            }
            index_add(&mut inner.by_owner, controller_uid(new.as_ref()), &key);
            if let Some(f) = self.index {
                index_add(&mut inner.by_index, f(&new).as_deref(), &key);
            }
            old
        };
        for h in self.hooks.read().expect("hooks lock").iter() {
            h(old.as_deref(), Some(&new));
        }
    }

    fn remove(&self, key: &str) {
        let old = {
            let mut inner = self.inner.write().expect("cache lock");
            let old = inner.objects.remove(key);
            if let Some(o) = &old {
                self.unindex(&mut inner, o, key);
            }
            old
        };
        if let Some(old) = old {
            for h in self.hooks.read().expect("hooks lock").iter() {
                h(Some(&old), None);
            }
        }
    }

    /// Follow `api` until the task is dropped: relists replace the cache (objects that
    /// vanished meanwhile count as deleted); the watch resumes with backoff.
    pub async fn run(self: Arc<Self>, api: Api<K>, config: watcher::Config) {
        let mut stream = watcher::watcher(api, config).default_backoff().boxed();
        let mut relist: Option<HashMap<String, K>> = None;
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(Event::Apply(o)) => self.put(o),
                Ok(Event::Delete(o)) => self.remove(&key_of(&o)),
                Ok(Event::Init) => relist = Some(HashMap::new()),
                Ok(Event::InitApply(o)) => {
                    if let Some(r) = relist.as_mut() {
                        r.insert(key_of(&o), o);
                    }
                }
                Ok(Event::InitDone) => {
                    let fresh = relist.take().unwrap_or_default();
                    let gone: Vec<String> = {
                        let inner = self.inner.read().expect("cache lock");
                        inner.objects.keys().filter(|k| !fresh.contains_key(*k)).cloned().collect()
                    };
                    for k in gone {
                        self.remove(&k);
                    }
                    for (_, o) in fresh {
                        let unchanged = self.get(&key_of(&o)).is_some_and(|cur| cur.resource_version() == o.resource_version());
                        if !unchanged {
                            self.put(o);
                        }
                    }
                    self.synced.send_replace(true);
                }
                Err(e) => tracing::debug!(kind = %K::kind(&()), error = %e, "watch failed; retrying"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn pod(name: &str, node: Option<&str>, owner: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": owner, "controller": true}]},
            "spec": {"nodeName": node, "containers": []}
        }))
        .unwrap()
    }

    fn names(v: Vec<Arc<Pod>>) -> Vec<String> {
        let mut n: Vec<String> = v.iter().map(|p| p.name_any()).collect();
        n.sort();
        n
    }

    #[test]
    fn indexes_follow_updates_and_removals_and_hooks_see_old_and_new() {
        let c: Arc<Cache<Pod>> = Cache::with_index(|p| p.spec.as_ref()?.node_name.clone());
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        c.on_change(move |old, new| s.lock().unwrap().push((old.is_some(), new.is_some())));
        c.put(pod("a", None, "u1"));
        c.put(pod("b", Some("n1"), "u1"));
        assert!(c.indexed("n1").len() == 1 && names(c.owned_by("u1")) == ["a", "b"]);
        c.put(pod("a", Some("n1"), "u2")); // bound, and adopted by another owner
        assert_eq!(names(c.indexed("n1")), ["a", "b"]);
        assert_eq!(names(c.owned_by("u1")), ["b"]);
        assert_eq!(names(c.owned_by("u2")), ["a"]);
        c.remove("ns/b");
        assert_eq!(names(c.indexed("n1")), ["a"]);
        assert!(c.owned_by("u1").is_empty() && c.inner.read().unwrap().by_owner.get("u1").is_none(), "empty index entries go");
        assert_eq!(*seen.lock().unwrap(), [(false, true), (false, true), (true, true), (true, false)]);
        assert!(Cache::<Pod>::new().indexed("n1").is_empty(), "no index, nothing indexed");
    }
}
