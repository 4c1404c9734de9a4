//! The controllers: one shared set of informers, one queue and reconcile per controller.

mod claim;
mod cronjob;
mod daemonset;
mod deployment;
mod endpointslice;
mod gc;
mod job;
mod namespace;
mod node;
mod replicaset;
mod statefulset;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolumeClaim, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, PostParams, PropagationPolicy};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};

use crate::cache::{key_of, Cache};
use crate::events::Recorder;
use crate::queue::{work, Next, Queue};
use crate::{Config, Error};

/// Everything the controllers share.
pub(crate) struct Ctx {
    pub client: kube::Client,
    pub cfg: Config,
    pub events: Recorder,
    pub pods: Arc<Cache<Pod>>,
    pub nodes: Arc<Cache<Node>>,
    pub leases: Arc<Cache<Lease>>,
    pub namespaces: Arc<Cache<Namespace>>,
    pub services: Arc<Cache<Service>>,
    pub slices: Arc<Cache<EndpointSlice>>,
    pub accounts: Arc<Cache<ServiceAccount>>,
    pub claims: Arc<Cache<PersistentVolumeClaim>>,
    pub replicasets: Arc<Cache<ReplicaSet>>,
    pub deployments: Arc<Cache<Deployment>>,
    pub daemonsets: Arc<Cache<DaemonSet>>,
    pub statefulsets: Arc<Cache<StatefulSet>>,
    pub jobs: Arc<Cache<Job>>,
    pub cronjobs: Arc<Cache<CronJob>>,
    pub q: Queues,
    pub expect: Expectations,
    pub node_state: node::Monitor,
    /// Per Job: failures seen and when their count last rose (for the pod backoff).
    pub job_failures: Mutex<HashMap<String, (i32, Instant)>>,
}

pub(crate) struct Queues {
    pub replicaset: Arc<Queue>,
    pub deployment: Arc<Queue>,
    pub daemonset: Arc<Queue>,
    pub statefulset: Arc<Queue>,
    pub job: Arc<Queue>,
    pub cronjob: Arc<Queue>,
    pub slice: Arc<Queue>,
    pub node: Arc<Queue>,
    pub namespace: Arc<Queue>,
    pub gc: Arc<Queue>,
    /// Pods bound without the scheduler whose claims are not pinned yet.
    pub claim: Arc<Queue>,
}

/// Pods a controller created or deleted and has not seen in its cache yet (client-go's
/// expectations): until they show, the cache is behind and the controller must not act
/// on it again, or it would create twice.
#[derive(Default)]
pub(crate) struct Expectations(Mutex<HashMap<String, Expected>>);

/// Pod keys expected to appear, pod keys expected to go, and since when.
type Expected = (HashSet<String>, HashSet<String>, Instant);

/// Expectations older than this are given up (a lost event must not wedge a controller).
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(30);

impl Expectations {
    pub fn expect(&self, owner: &str, created: Vec<String>, deleted: Vec<String>) {
        let mut m = self.0.lock().expect("expectations lock");
        let e = m.entry(owner.to_string()).or_insert_with(|| (HashSet::new(), HashSet::new(), Instant::now()));
        e.0.extend(created);
        e.1.extend(deleted);
        e.2 = Instant::now();
    }

    /// Whether the pod cache has caught up with what `owner`'s controller did.
    pub fn satisfied(&self, owner: &str, pods: &Cache<Pod>) -> bool {
        let mut m = self.0.lock().expect("expectations lock");
        let Some((add, del, at)) = m.get_mut(owner) else { return true };
        add.retain(|k| pods.get(k).is_none());
        del.retain(|k| pods.get(k).is_some_and(|p| p.metadata.deletion_timestamp.is_none()));
        let done = (add.is_empty() && del.is_empty()) || at.elapsed() > EXPECTATION_TIMEOUT;
        if done {
            m.remove(owner);
        }
        done
    }
}

impl Ctx {
    pub fn api<K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>>(&self, ns: &str) -> Api<K> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Create `pods` (at most `burst`), recording them as expected for `owner_key`. Stops
    /// at the first failure (Kubernetes' slow start: a failing batch does not repeat).
    pub async fn create_pods(&self, owner_key: &str, ns: &str, pods: Vec<Pod>) -> Result<usize, Error> {
        let api: Api<Pod> = self.api(ns);
        let mut made = 0;
        let mut batch = 1;
        let mut pods = pods.into_iter().take(self.cfg.burst).peekable();
        while pods.peek().is_some() {
            let chunk: Vec<Pod> = pods.by_ref().take(batch).collect();
            let pp = PostParams::default();
            let results = futures_util::future::join_all(chunk.iter().map(|p| api.create(&pp, p))).await;
            let mut names = Vec::new();
            let mut failed = None;
            for r in results {
                match r {
                    Ok(p) => names.push(format!("{ns}/{}", p.name_any())),
                    Err(e) => failed = Some(e),
                }
            }
            made += names.len();
            self.expect.expect(owner_key, names, Vec::new());
            if let Some(e) = failed {
                return Err(e.into());
            }
            batch = (batch * 2).min(64);
        }
        Ok(made)
    }

    /// Delete `pods`, recording them as expected gone for `owner_key`.
    pub async fn delete_pods(&self, owner_key: &str, pods: &[Arc<Pod>]) -> Result<(), Error> {
        let names: Vec<String> = pods.iter().map(|p| key_of(p.as_ref())).collect();
        self.expect.expect(owner_key, Vec::new(), names);
        let results = futures_util::future::join_all(pods.iter().map(|p| {
            let api: Api<Pod> = self.api(&p.namespace().unwrap_or_default());
            async move { api.delete(&p.name_any(), &DeleteParams::default()).await }
        }))
        .await;
        for r in results {
            match r {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// The pods cache's index: the node a pod is bound to.
fn node_of(p: &Pod) -> Option<String> {
    p.spec.as_ref()?.node_name.clone().filter(|n| !n.is_empty())
}

/// Enqueue the controlling owner of `obj` if it is of kind `kind`.
fn enqueue_owner<K: Resource>(obj: Option<&K>, kind: &str, q: &Queue) {
    let Some(obj) = obj else { return };
    for r in obj.meta().owner_references.iter().flatten().filter(|r| r.controller == Some(true) && r.kind == kind) {
        match obj.meta().namespace.as_deref() {
            Some(ns) => q.add(format!("{ns}/{}", r.name)),
            None => q.add(r.name.clone()),
        }
    }
}

fn enqueue_self<K: Resource>(q: &Arc<Queue>) -> impl Fn(Option<&K>, Option<&K>) + Send + Sync + 'static {
    let q = q.clone();
    move |old, new| {
        if let Some(o) = new.or(old) {
            q.add(key_of(o));
        }
    }
}

fn spawn_cache<K>(tasks: &mut tokio::task::JoinSet<()>, cache: &Arc<Cache<K>>, api: Api<K>, cfg: watcher::Config)
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    tasks.spawn(cache.clone().run(api, cfg));
}

fn propagation(policy: PropagationPolicy) -> DeleteParams {
    DeleteParams { propagation_policy: Some(policy), ..Default::default() }
}

/// Run the controllers with `client` until `stop`, under the Lease `kapp-controllers`.
pub async fn run_controllers(client: kube::Client, cfg: Config, holder: &str, stop: impl Future<Output = ()>) {
    let c = client.clone();
    crate::under_lease(client, "kapp-controllers", holder, move || run_all(c.clone(), cfg.clone()), stop).await;
}

async fn run_all(client: kube::Client, cfg: Config) {
    let q = Queues {
        replicaset: Queue::new("replicaset"),
        deployment: Queue::new("deployment"),
        daemonset: Queue::new("daemonset"),
        statefulset: Queue::new("statefulset"),
        job: Queue::new("job"),
        cronjob: Queue::new("cronjob"),
        slice: Queue::new("endpointslice"),
        node: Queue::new("node"),
        namespace: Queue::new("namespace"),
        gc: Queue::new("garbagecollector"),
        claim: Queue::new("claim"),
    };
    let ctx = Arc::new(Ctx {
        events: Recorder::new(client.clone(), "kapp-controllers"),
        client,
        cfg,
        pods: Cache::with_index(node_of),
        nodes: Cache::new(),
        leases: Cache::new(),
        namespaces: Cache::new(),
        services: Cache::new(),
        slices: Cache::new(),
        accounts: Cache::new(),
        claims: Cache::new(),
        replicasets: Cache::new(),
        deployments: Cache::new(),
        daemonsets: Cache::new(),
        statefulsets: Cache::new(),
        jobs: Cache::new(),
        cronjobs: Cache::new(),
        q,
        expect: Expectations::default(),
        node_state: node::Monitor::default(),
        job_failures: Mutex::default(),
    });
    wire(&ctx);
    let mut tasks = tokio::task::JoinSet::new();
    let c = ctx.client.clone();
    let all = watcher::Config::default;
    spawn_cache(&mut tasks, &ctx.pods, Api::all(c.clone()), all());
    spawn_cache(&mut tasks, &ctx.nodes, Api::all(c.clone()), all());
    spawn_cache(&mut tasks, &ctx.leases, Api::namespaced(c.clone(), "kube-node-lease"), all());
    spawn_cache(&mut tasks, &ctx.namespaces, Api::all(c.clone()), all());
    spawn_cache(&mut tasks, &ctx.services, Api::all(c.clone()), all());
    spawn_cache(&mut tasks, &ctx.slices, Api::all(c.clone()), all());
    spawn_cache(&mut tasks, &ctx.accounts, Api::all(c.clone()), all());
    spawn_cache(&mut tasks, &ctx.claims, Api::all(c.clone()), all());
    spawn_cache(&mut tasks, &ctx.replicasets, Api::all(c.clone()), all());
    spawn_cache(&mut tasks, &ctx.deployments, Api::all(c.clone()), all());
    spawn_cache(&mut tasks, &ctx.daemonsets, Api::all(c.clone()), all());
    spawn_cache(&mut tasks, &ctx.statefulsets, Api::all(c.clone()), all());
    spawn_cache(&mut tasks, &ctx.jobs, Api::all(c.clone()), all());
    spawn_cache(&mut tasks, &ctx.cronjobs, Api::all(c.clone()), all());
    // Act only on complete caches: a half-listed cache would look like missing pods.
    ctx.pods.synced().await;
    ctx.nodes.synced().await;
    ctx.leases.synced().await;
    ctx.namespaces.synced().await;
    ctx.services.synced().await;
    ctx.slices.synced().await;
    ctx.accounts.synced().await;
    ctx.claims.synced().await;
    ctx.replicasets.synced().await;
    ctx.deployments.synced().await;
    ctx.daemonsets.synced().await;
    ctx.statefulsets.synced().await;
    ctx.jobs.synced().await;
    ctx.cronjobs.synced().await;
    tracing::info!("controllers: caches synced");

    macro_rules! worker {
        ($queue:ident, $n:expr, $f:path) => {{
            let ctx2 = ctx.clone();
            tasks.spawn(work(ctx.q.$queue.clone(), $n, move |key: String| {
                let ctx = ctx2.clone();
                async move { $f(&ctx, &key).await }
            }));
        }};
    }
    worker!(replicaset, 2, replicaset::reconcile);
    worker!(deployment, 2, deployment::reconcile);
    worker!(daemonset, 1, daemonset::reconcile);
    worker!(statefulset, 1, statefulset::reconcile);
    worker!(job, 1, job::reconcile);
    worker!(cronjob, 1, cronjob::reconcile);
    worker!(slice, 2, endpointslice::reconcile);
    worker!(node, 1, node::reconcile);
    worker!(namespace, 1, namespace::reconcile);
    worker!(gc, 1, gc::reconcile);
    worker!(claim, 1, claim::reconcile);
    tasks.spawn(resync(ctx.clone()));
    tasks.spawn(ticks(ctx.clone()));
    while tasks.join_next().await.is_some() {}
}

/// Enqueue every key of every controller.
fn enqueue_all(ctx: &Ctx) {
    fn all<K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static>(c: &Cache<K>, q: &Queue) {
        for o in c.list() {
            q.add(key_of(o.as_ref()));
        }
    }
    all(&ctx.replicasets, &ctx.q.replicaset);
    all(&ctx.deployments, &ctx.q.deployment);
    all(&ctx.daemonsets, &ctx.q.daemonset);
    all(&ctx.statefulsets, &ctx.q.statefulset);
    all(&ctx.jobs, &ctx.q.job);
    all(&ctx.cronjobs, &ctx.q.cronjob);
    all(&ctx.services, &ctx.q.slice);
    all(&ctx.nodes, &ctx.q.node);
    all(&ctx.namespaces, &ctx.q.namespace);
    gc::enqueue_orphans(ctx);
}

async fn resync(ctx: Arc<Ctx>) {
    loop {
        enqueue_all(&ctx);
        tokio::time::sleep(ctx.cfg.resync).await;
    }
}

/// The timers: nodes every monitor period, CronJobs every check period.
async fn ticks(ctx: Arc<Ctx>) {
    let mut nodes = tokio::time::interval(ctx.cfg.node_monitor_period);
    let mut crons = tokio::time::interval(ctx.cfg.cronjob_period);
    loop {
        tokio::select! {
            _ = nodes.tick() => for n in ctx.nodes.list() { ctx.q.node.add(n.name_any()) },
            _ = crons.tick() => for c in ctx.cronjobs.list() { ctx.q.cronjob.add(key_of(c.as_ref())) },
        }
    }
}

/// Which keys each change concerns.
fn wire(ctx: &Arc<Ctx>) {
    let q = &ctx.q;
    ctx.replicasets.on_change(enqueue_self(&q.replicaset));
    ctx.deployments.on_change(enqueue_self(&q.deployment));
    ctx.daemonsets.on_change(enqueue_self(&q.daemonset));
    ctx.statefulsets.on_change(enqueue_self(&q.statefulset));
    ctx.jobs.on_change(enqueue_self(&q.job));
    ctx.cronjobs.on_change(enqueue_self(&q.cronjob));
    ctx.services.on_change(enqueue_self(&q.slice));
    ctx.namespaces.on_change(enqueue_self(&q.namespace));
    ctx.nodes.on_change(enqueue_self(&q.node));
    {
        // Bound pods with claims, and the bound pods of a claim that appears or changes.
        let cq = q.claim.clone();
        ctx.pods.on_change(move |_, new| {
            if let Some(p) = new.filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()) && !crate::claims::claim_names(p).is_empty()) {
                cq.add(key_of(p));
            }
        });
        let (cq, pods) = (q.claim.clone(), Arc::downgrade(&ctx.pods));
        ctx.claims.on_change(move |_, new| {
            let (Some(c), Some(pods)) = (new, pods.upgrade()) else { return };
            let ns = c.namespace();
            for p in pods.list() {
                if p.namespace() == ns && p.spec.as_ref().is_some_and(|s| s.node_name.is_some()) && crate::claims::claim_names(&p).contains(&c.name_any()) {
                    cq.add(key_of(p.as_ref()));
                }
            }
        });
    }
    {
        let (ds, nq) = (q.daemonset.clone(), q.node.clone());
        let dss = Arc::downgrade(&ctx.daemonsets);
        ctx.nodes.on_change(move |old, new| {
            // Node changes concern every DaemonSet (eligibility) and the node itself.
            if let Some(n) = new.or(old) {
                nq.add(n.name_any());
            }
            if let Some(dss) = dss.upgrade() {
                for d in dss.list() {
                    ds.add(key_of(d.as_ref()));
                }
            }
        });
    }
    {
        let nq = q.node.clone();
        ctx.leases.on_change(move |old, new| {
            if let Some(l) = new.or(old) {
                nq.add(l.name_any());
            }
        });
    }
    {
        let (rs, ds, sts, job, slice) = (q.replicaset.clone(), q.daemonset.clone(), q.statefulset.clone(), q.job.clone(), q.slice.clone());
        let services = Arc::downgrade(&ctx.services);
        ctx.pods.on_change(move |old, new| {
            for p in [old, new] {
                enqueue_owner(p, "ReplicaSet", &rs);
                enqueue_owner(p, "DaemonSet", &ds);
                enqueue_owner(p, "StatefulSet", &sts);
                enqueue_owner(p, "Job", &job);
            }
            // Services of the namespace whose selector matches the old or the new labels.
            if let (Some(p), Some(services)) = (new.or(old), services.upgrade()) {
                let ns = p.namespace().unwrap_or_default();
                for s in services.list_namespace(&ns) {
                    let matches = |pod: Option<&Pod>| pod.is_some_and(|pod| endpointslice::selects(&s, pod));
                    if matches(old) || matches(new) {
                        slice.add(key_of(s.as_ref()));
                    }
                }
            }
        });
    }
    {
        let dq = q.deployment.clone();
        ctx.replicasets.on_change(move |old, new| {
            for r in [old, new] {
                enqueue_owner(r, "Deployment", &dq);
            }
        });
    }
    {
        let cq = q.cronjob.clone();
        ctx.jobs.on_change(move |old, new| {
            for j in [old, new] {
                enqueue_owner(j, "CronJob", &cq);
            }
        });
    }
    {
        let sq = q.slice.clone();
        ctx.slices.on_change(move |old, new| {
            if let Some(s) = new.or(old) {
                if let Some(svc) = s.labels().get(endpointslice::SERVICE_LABEL) {
                    sq.add(format!("{}/{svc}", s.namespace().unwrap_or_default()));
                }
            }
        });
    }
    gc::wire(ctx);
}

/// Delete `obj` if it still has `uid` (a recreated namesake is left alone).
pub(crate) async fn delete_exact<K>(api: &Api<K>, obj: &K, dp: &DeleteParams) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut dp = dp.clone();
    dp.preconditions = Some(kube::api::Preconditions { uid: obj.uid(), resource_version: None });
    match api.delete(&obj.name_any(), &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn requeue(d: Duration) -> Result<Next, Error> {
    Ok(Next::After(d))
}
