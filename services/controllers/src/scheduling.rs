//! The scheduler's loop around the pure `kapp-scheduler` core: informers feed its snapshot
//! (nodes, bound pods, Services, Namespaces); every unbound pod of the default scheduler
//! is a key; a decision is assumed in the snapshot before the binding is written, and
//! forgotten if the binding fails (so nothing is double-booked and a conflict is retried).
//! A pod that fits nowhere gets PodScheduled=False with kube-scheduler's message and waits
//! until a change that could help (or the periodic flush) brings it back.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Binding, Namespace, Node, ObjectReference, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kapp_scheduler::{ClusterEvent, ScheduleError, Scheduler, Unschedulable};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::cache::{key_of, Cache};
use crate::events::Recorder;
use crate::pods::is_active;
use crate::queue::{work, Next, Queue};
use crate::Error;

/// Unschedulable pods are all tried again at least this often.
const FLUSH: Duration = Duration::from_secs(30);

struct State {
    sched: Scheduler,
    waiting: HashMap<String, Unschedulable>,
    /// Pods assumed and being bound (or bound and not yet seen bound by the informer):
    /// never decided twice.
    binding: HashSet<String>,
}

/// Bindings written at once; the next decisions do not wait for them (the pod is assumed).
const BINDS_IN_FLIGHT: usize = 32;

struct Loop {
    client: kube::Client,
    pods: Arc<Cache<Pod>>,
    claims: Arc<Cache<PersistentVolumeClaim>>,
    state: Mutex<State>,
    queue: Arc<Queue>,
    events: Recorder,
    binds: Arc<tokio::sync::Semaphore>,
}

fn ours(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.node_name.as_deref()).is_none_or(str::is_empty)
        && spec.and_then(|s| s.scheduler_name.as_deref()).is_none_or(|n| n.is_empty() || n == "default-scheduler")
        && is_active(pod)
}

fn bound(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty())
}

impl Loop {
    /// Bring back the waiting pods `event` might help.
    fn retry(&self, st: &mut State, event: ClusterEvent) {
        let keys: Vec<String> = st.waiting.iter().filter(|(_, u)| u.may_be_resolved_by(event)).map(|(k, _)| k.clone()).collect();
        for k in keys {
            st.waiting.remove(&k);
            self.queue.add(k);
        }
    }

    async fn reconcile(self: &Arc<Self>, key: &str) -> Result<Next, Error> {
        let Some(pod) = self.pods.get(key) else {
            self.state.lock().expect("state lock").waiting.remove(key);
            return Ok(Next::Done);
        };
        if !ours(&pod) {
            return Ok(Next::Done);
        }
        let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        // Local volumes: a claim already pinned to a node takes the pod there.
        let (volume_node, unpinned) = match crate::claims::pinning(&pod, &self.claims) {
            Ok(p) => p,
            Err(message) => {
                self.mark_unschedulable(&api, &pod, "Unschedulable", &format!("0/{} nodes are available: {message}.", self.node_count())).await?;
                return Ok(Next::After(Duration::from_secs(5)));
            }
        };
        let permit = self.binds.clone().acquire_owned().await.expect("the semaphore is never closed");
        let decision = {
            let mut st = self.state.lock().expect("state lock");
            if st.binding.contains(key) {
                return Ok(Next::Done);
            }
            let d = st.sched.schedule_pinned(&pod, volume_node.as_deref());
            if let Ok(node) = &d {
                if let Err(e) = st.sched.snapshot_mut().assume(&pod, node) {
                    return Err(Error::Invalid(format!("pod {key}: {e}")));
                }
                st.binding.insert(key.to_string());
            }
            d
        };
        match decision {
            Ok(node) => {
                // Bind in the background: the next decision already counts this pod.
                let (l, key) = (self.clone(), key.to_string());
                tokio::spawn(async move {
                    let _permit = permit;
                    // Pin the pod's new claims to the node before the pod is bound there,
                    // as kube-scheduler's volume binding does before its bind.
                    for c in &unpinned {
                        if let Err(e) = crate::claims::pin(&l.client, c, &node).await {
                            tracing::debug!(pod = %key, claim = %c.name_any(), error = %e, "pinning a claim failed; retrying");
                            let mut st = l.state.lock().expect("state lock");
                            st.sched.snapshot_mut().remove_pod(&ns, &name);
                            st.binding.remove(&key);
                            drop(st);
                            l.queue.retry(&key);
                            return;
                        }
                    }
                    let binding = Binding {
                        metadata: ObjectMeta { name: Some(name.clone()), namespace: Some(ns.clone()), uid: pod.uid(), ..Default::default() },
                        target: ObjectReference { api_version: Some("v1".into()), kind: Some("Node".into()), name: Some(node.clone()), ..Default::default() },
                    };
                    match api.create_subresource::<Binding, serde_json::Value>("binding", &name, &PostParams::default(), &binding).await {
                        Ok(_) => l.events.record(pod.as_ref(), false, "Scheduled", format!("Successfully assigned {ns}/{name} to {node}")),
                        Err(e) => {
                            let mut st = l.state.lock().expect("state lock");
                            st.sched.snapshot_mut().remove_pod(&ns, &name);
                            st.binding.remove(&key);
                            drop(st);
                            match e {
                                // Bound meanwhile (or gone): the informer tells the rest.
                                kube::Error::Api(ref r) if r.code == 404 || r.code == 409 => {}
                                e => {
                                    tracing::debug!(pod = %key, error = %e, "binding failed; retrying");
                                    l.queue.retry(&key);
                                }
                            }
                        }
                    }
                });
                Ok(Next::Done)
            }
            Err(ScheduleError::Unschedulable(u)) => {
                drop(permit);
                let message = u.to_string();
                self.state.lock().expect("state lock").waiting.insert(key.to_string(), u);
                self.mark_unschedulable(&api, &pod, "Unschedulable", &message).await?;
                Ok(Next::Done)
            }
            Err(ScheduleError::InvalidPod(e)) => {
                drop(permit);
                self.mark_unschedulable(&api, &pod, "SchedulerError", &e.to_string()).await?;
                Ok(Next::Done)
            }
        }
    }

    fn node_count(&self) -> usize {
        self.state.lock().expect("state lock").sched.snapshot().node_count()
    }

    async fn mark_unschedulable(&self, api: &Api<Pod>, pod: &Pod, reason: &str, message: &str) -> Result<(), Error> {
        let current = pod.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"));
        if current.is_some_and(|c| c.status == "False" && c.message.as_deref() == Some(message)) {
            return Ok(());
        }
        self.events.record(pod, true, "FailedScheduling", message.to_string());
        let cond = json!({"type": "PodScheduled", "status": "False", "reason": reason, "message": message, "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string()});
        match api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Pending", "conditions": [cond]}}))).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Run the scheduler with `client` until `stop`, under the Lease `kapp-scheduler`.
pub async fn run_scheduler(client: kube::Client, config: kapp_scheduler::Config, holder: &str, stop: impl Future<Output = ()>) {
    let c = client.clone();
    crate::under_lease(client, "kapp-scheduler", holder, move || run(c.clone(), config.clone()), stop).await;
}

async fn run(client: kube::Client, config: kapp_scheduler::Config) {
    let l = Arc::new(Loop {
        events: Recorder::new(client.clone(), "default-scheduler"),
        client: client.clone(),
        pods: Cache::new(),
        claims: Cache::new(),
        state: Mutex::new(State { sched: Scheduler::new(config), waiting: HashMap::new(), binding: HashSet::new() }),
        queue: Queue::new("scheduler"),
        binds: Arc::new(tokio::sync::Semaphore::new(BINDS_IN_FLIGHT)),
    });
    let nodes: Arc<Cache<Node>> = Cache::new();
    let services: Arc<Cache<Service>> = Cache::new();
    let namespaces: Arc<Cache<Namespace>> = Cache::new();
    {
        let w = Arc::downgrade(&l);
        nodes.on_change(move |old, new| {
            let Some(l) = w.upgrade() else { return };
            let mut st = l.state.lock().expect("state lock");
            match new {
                Some(n) => {
                    if let Err(e) = st.sched.snapshot_mut().upsert_node(n) {
                        tracing::warn!(node = %n.name_any(), error = %e, "node ignored by the scheduler");
                    }
                }
                None => st.sched.snapshot_mut().remove_node(&old.map(|o| o.name_any()).unwrap_or_default()),
            }
            l.retry(&mut st, if old.is_none() { ClusterEvent::NodeAdded } else { ClusterEvent::NodeUpdated });
        });
    }
    {
        let w = Arc::downgrade(&l);
        l.pods.on_change(move |old, new| {
            let Some(l) = w.upgrade() else { return };
            let mut st = l.state.lock().expect("state lock");
            match new {
                Some(p) if bound(p) && is_active(p) => {
                    st.binding.remove(&key_of(p));
                    if let Err(e) = st.sched.snapshot_mut().upsert_pod(p) {
                        tracing::warn!(pod = %key_of(p), error = %e, "pod ignored by the scheduler");
                    }
                    l.retry(&mut st, ClusterEvent::PodAdded);
                }
                Some(p) if ours(p) => l.queue.add(key_of(p)),
                _ => {
                    if let Some(p) = new.or(old) {
                        if old.is_some_and(bound) {
                            st.sched.snapshot_mut().remove_pod(&p.namespace().unwrap_or_default(), &p.name_any());
                            l.retry(&mut st, ClusterEvent::PodDeleted);
                        }
                        if new.is_none() {
                            st.waiting.remove(&key_of(p));
                            if st.binding.remove(&key_of(p)) {
                                // Deleted while assumed: release what it held.
                                st.sched.snapshot_mut().remove_pod(&p.namespace().unwrap_or_default(), &p.name_any());
                            }
                        }
                    }
                }
            }
        });
    }
    {
        let w = Arc::downgrade(&l);
        services.on_change(move |old, new| {
            let Some(l) = w.upgrade() else { return };
            let mut st = l.state.lock().expect("state lock");
            match new {
                Some(s) => st.sched.snapshot_mut().upsert_service(s),
                None => {
                    if let Some(o) = old {
                        st.sched.snapshot_mut().remove_service(&o.namespace().unwrap_or_default(), &o.name_any());
                    }
                }
            }
        });
    }
    {
        let w = Arc::downgrade(&l);
        namespaces.on_change(move |old, new| {
            let Some(l) = w.upgrade() else { return };
            let mut st = l.state.lock().expect("state lock");
            match new {
                Some(n) => st.sched.snapshot_mut().upsert_namespace(n),
                None => st.sched.snapshot_mut().remove_namespace(&old.map(|o| o.name_any()).unwrap_or_default()),
            }
            l.retry(&mut st, ClusterEvent::NamespaceChanged);
        });
    }
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(nodes.clone().run(Api::all(client.clone()), watcher::Config::default()));
    tasks.spawn(services.clone().run(Api::all(client.clone()), watcher::Config::default()));
    tasks.spawn(namespaces.clone().run(Api::all(client.clone()), watcher::Config::default()));
    tasks.spawn(l.claims.clone().run(Api::all(client.clone()), watcher::Config::default()));
    // Nodes, Services, Namespaces and claims first, so the first decisions see the whole cluster.
    nodes.synced().await;
    services.synced().await;
    namespaces.synced().await;
    l.claims.synced().await;
    tasks.spawn(l.pods.clone().run(Api::all(client.clone()), watcher::Config::default()));
    l.pods.synced().await;
    tracing::info!(nodes = nodes.len(), pods = l.pods.len(), "scheduler: caches synced");
    let l2 = l.clone();
    tasks.spawn(work(l.queue.clone(), 1, move |key: String| {
        let l = l2.clone();
        async move { l.reconcile(&key).await }
    }));
    let l3 = l.clone();
    tasks.spawn(async move {
        loop {
            tokio::time::sleep(FLUSH).await;
            let keys: Vec<String> = l3.state.lock().expect("state lock").waiting.drain().map(|(k, _)| k).collect();
            for k in keys {
                l3.queue.add(k);
            }
        }
    });
    while tasks.join_next().await.is_some() {}
}
