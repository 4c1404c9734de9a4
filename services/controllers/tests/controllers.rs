//! The controllers and the scheduler against the real apiserver and store in-process, with
//! hollow nodes (simulated kubelets). Timers are shortened where a test waits on them.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, PersistentVolumeClaim, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kapp_testkit::hollow::{HollowConfig, HollowNode, EXIT_ANNOTATION};
use kapp_testkit::{groups, ControlPlane};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::{json, Value};

struct Cluster {
    cp: ControlPlane,
    admin: kube::Client,
    nodes: Vec<HollowNode>,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

fn fast() -> kapp_controllers::Config {
    kapp_controllers::Config {
        node_monitor_period: Duration::from_millis(200),
        node_monitor_grace: Duration::from_secs(2),
        pod_eviction_timeout: Duration::from_secs(2),
        job_backoff: Duration::from_millis(100),
        ..Default::default()
    }
}

impl Cluster {
    async fn start(nodes: &[(&str, HollowConfig)], cfg: kapp_controllers::Config) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let cp = ControlPlane::start(dir.path(), 1).await;
        let admin = cp.client("admin", &[groups::CONTROLLERS]).await;
        let mut stop = Vec::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        stop.push(tx);
        let sched = cp.client("kapp-scheduler", &[groups::SCHEDULER]).await;
        tokio::spawn(async move { kapp_controllers::run_scheduler(sched, Default::default(), "test", async { let _ = rx.await; }).await });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        stop.push(tx);
        let ctl = cp.client("kapp-controllers", &[groups::CONTROLLERS]).await;
        tokio::spawn(async move { kapp_controllers::run_controllers(ctl, cfg, "test", async { let _ = rx.await; }).await });
        let mut hollow = Vec::new();
        for (name, c) in nodes {
            hollow.push(HollowNode::start(&cp, name, c.clone()).await);
        }
        Cluster { cp, admin, nodes: hollow, stop, _dir: dir }
    }

    fn api<K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>>(&self) -> Api<K> {
        Api::namespaced(self.admin.clone(), "default")
    }

    async fn create<K>(&self, v: Value) -> K
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()> + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
    {
        let obj: K = serde_json::from_value(v).unwrap();
        self.api::<K>().create(&PostParams::default(), &obj).await.unwrap()
    }

    async fn pods(&self, selector: &str) -> Vec<Pod> {
        self.api::<Pod>().list(&ListParams::default().labels(selector)).await.unwrap().items
    }

    async fn stop(mut self) {
        for s in self.stop.drain(..) {
            let _ = s.send(());
        }
        self.nodes.clear();
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.cp.shutdown().await;
    }
}

fn nodes(names: &[&str]) -> Vec<(String, HollowConfig)> {
    names.iter().enumerate().map(|(i, n)| (n.to_string(), HollowConfig { subnet: i as u8 + 1, ..Default::default() })).collect()
}

async fn wait_for<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if f().await {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none() && p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn node_of(p: &Pod) -> String {
    p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default()
}

fn deployment(name: &str, replicas: i32, image: &str, strategy: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "default"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}, "strategy": strategy,
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": image, "ports": [{"name": "http", "containerPort": 8080}]}]}}}
    })
}

async fn start(names: &[&str], cfg: kapp_controllers::Config) -> Cluster {
    let n = nodes(names);
    let refs: Vec<(&str, HollowConfig)> = n.iter().map(|(a, b)| (a.as_str(), b.clone())).collect();
    Cluster::start(&refs, cfg).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_update_never_drops_below_the_minimum_available() {
    let c = start(&["n1", "n2", "n3"], fast()).await;
    c.create::<Deployment>(deployment("web", 6, "web:1", json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 2, "maxUnavailable": 1}}))).await;
    let d: Api<Deployment> = c.api();
    let avail = |n: i32, gen: i64| {
        let d = d.clone();
        move || {
            let d = d.clone();
            async move {
                let x = d.get("web").await.unwrap();
                let s = x.status.unwrap_or_default();
                s.available_replicas == Some(n) && s.updated_replicas == Some(n) && s.replicas == Some(n) && s.observed_generation >= Some(gen)
            }
        }
    };
    wait_for("6 available replicas", 60, avail(6, 1)).await;
    // Follow every pod change and count ready pods throughout the rollout.
    let api: Api<Pod> = c.api();
    let (min_tx, mut min_rx) = tokio::sync::watch::channel(usize::MAX);
    let monitor = tokio::spawn(async move {
        let mut seen: HashMap<String, Pod> = HashMap::new();
        let mut listed = false;
        let mut stream = watcher::watcher(api, watcher::Config::default().labels("app=web")).boxed();
        while let Some(Ok(ev)) = stream.next().await {
            match ev {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                    seen.insert(p.name_any(), p);
                }
                watcher::Event::Delete(p) => {
                    seen.remove(&p.name_any());
                }
                watcher::Event::InitDone => listed = true,
                watcher::Event::Init => seen.clear(),
            }
            // Counted from the first complete list on (one watch: every change in order).
            if listed {
                let n = seen.values().filter(|p| ready(p)).count();
                min_tx.send_modify(|m| *m = (*m).min(n));
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    min_rx.mark_changed();
    d.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "web:2"}]}}}}))).await.unwrap();
    wait_for("the rollout to finish", 90, avail(6, 2)).await;
    let pods = c.pods("app=web").await;
    let live: Vec<&Pod> = pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
    assert_eq!(live.len(), 6);
    assert!(live.iter().all(|p| p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("web:2")), "every pod runs the new image");
    let min = *min_rx.borrow_and_update();
    monitor.abort();
    assert!(min >= 5, "ready pods fell to {min} during the rollout (replicas 6, maxUnavailable 1)");
    let rs: Vec<ReplicaSet> = c.api::<ReplicaSet>().list(&ListParams::default()).await.unwrap().items;
    assert_eq!(rs.len(), 2, "the old ReplicaSet is kept as history");
    let x = d.get("web").await.unwrap();
    assert_eq!(x.annotations().get("deployment.kubernetes.io/revision").map(String::as_str), Some("2"));
    let conds = x.status.unwrap().conditions.unwrap();
    assert!(conds.iter().any(|c| c.type_ == "Progressing" && c.reason.as_deref() == Some("NewReplicaSetAvailable")), "{conds:?}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_stops_heartbeating_goes_not_ready_and_its_pods_are_replaced() {
    let c = start(&["n1", "n2"], fast()).await;
    c.create::<Deployment>(deployment("app", 4, "app:1", json!({}))).await;
    wait_for("4 ready pods on both nodes", 60, || async {
        let pods = c.pods("app=app").await;
        pods.iter().filter(|p| ready(p)).count() == 4 && pods.iter().any(|p| node_of(p) == "n1")
    })
    .await;
    c.nodes[0].pause();
    let nodes: Api<Node> = Api::all(c.admin.clone());
    wait_for("n1 NotReady and tainted unreachable", 30, || async {
        let n = nodes.get("n1").await.unwrap();
        let unknown = n.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "Unknown"));
        let tainted = n.spec.as_ref().and_then(|s| s.taints.as_ref()).is_some_and(|ts| ts.iter().any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute"));
        unknown && tainted
    })
    .await;
    wait_for("all 4 ready pods on n2", 60, || async {
        let pods = c.pods("app=app").await;
        let ready_on_n2 = pods.iter().filter(|p| ready(p) && node_of(p) == "n2").count();
        let live_on_n1 = pods.iter().filter(|p| node_of(p) == "n1" && p.metadata.deletion_timestamp.is_none()).count();
        ready_on_n2 == 4 && live_on_n1 == 0
    })
    .await;
    // The node comes back: its taints go.
    c.nodes[0].resume();
    wait_for("n1 untainted", 30, || async {
        let n = nodes.get("n1").await.unwrap();
        n.spec.as_ref().and_then(|s| s.taints.as_ref()).is_none_or(|ts| ts.iter().all(|t| !t.key.starts_with("node.kubernetes.io/")))
    })
    .await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daemonset_follows_nodes_coming_and_going() {
    let c = start(&["n1", "n2"], fast()).await;
    c.create::<DaemonSet>(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "a", "image": "agent:1"}]}}}
    }))
    .await;
    let on = |want: Vec<&'static str>| {
        let c = &c;
        move || {
            let want = want.clone();
            async move {
                let mut got: Vec<String> = c.pods("app=agent").await.iter().filter(|p| ready(p)).map(node_of).collect();
                got.sort();
                got == want
            }
        }
    };
    wait_for("a pod on n1 and n2", 60, on(vec!["n1", "n2"])).await;
    let n3 = HollowNode::start(&c.cp, "n3", HollowConfig { subnet: 3, ..Default::default() }).await;
    wait_for("a pod on n3 too", 60, on(vec!["n1", "n2", "n3"])).await;
    // A tainted node is not eligible.
    let n4 = HollowNode::start(&c.cp, "n4", HollowConfig { subnet: 4, taints: json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]), ..Default::default() }).await;
    let nodes: Api<Node> = Api::all(c.admin.clone());
    c.nodes[1].pause();
    nodes.delete("n2", &DeleteParams::default()).await.unwrap();
    wait_for("n2's pod gone", 60, on(vec!["n1", "n3"])).await;
    wait_for("2 desired (n4 is tainted, n2 gone)", 30, || async {
        let ds: DaemonSet = c.api::<DaemonSet>().get("agent").await.unwrap();
        ds.status.is_some_and(|s| s.desired_number_scheduled == 2 && s.number_ready == 2)
    })
    .await;
    assert!(c.pods("app=agent").await.iter().all(|p| node_of(p) != "n4"), "nothing on the tainted node");
    drop((n3, n4));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_retries_up_to_its_backoff_limit_and_another_completes() {
    let c = start(&["n1"], fast()).await;
    let job = |name: &str, exit: i32, extra: Value| {
        let mut v = json!({
            "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": "default"},
            "spec": {"template": {"metadata": {"annotations": {EXIT_ANNOTATION: exit.to_string()}}, "spec": {"restartPolicy": "Never", "containers": [{"name": "j", "image": "job:1"}]}}}
        });
        for (k, x) in extra.as_object().unwrap() {
            v["spec"][k] = x.clone();
        }
        v
    };
    c.create::<Job>(job("fails", 1, json!({"backoffLimit": 2}))).await;
    c.create::<Job>(job("works", 0, json!({"completions": 3, "parallelism": 2}))).await;
    let jobs: Api<Job> = c.api();
    let condition = |name: &'static str, ty: &'static str| {
        let jobs = jobs.clone();
        move || {
            let jobs = jobs.clone();
            async move {
                let j = jobs.get(name).await.unwrap();
                j.status.and_then(|s| s.conditions).is_some_and(|cs| cs.iter().any(|c| c.type_ == ty && c.status == "True"))
            }
        }
    };
    wait_for("job fails Failed", 60, condition("fails", "Failed")).await;
    wait_for("job works Complete", 60, condition("works", "Complete")).await;
    let failed = jobs.get("fails").await.unwrap();
    let st = failed.status.unwrap();
    assert_eq!(st.failed, Some(3), "backoffLimit 2: the third failure ends it");
    let reason = st.conditions.unwrap().into_iter().find(|c| c.type_ == "Failed").unwrap().reason;
    assert_eq!(reason.as_deref(), Some("BackoffLimitExceeded"));
    assert_eq!(c.pods("job-name=fails").await.len(), 3, "no pod after the limit");
    let works = jobs.get("works").await.unwrap().status.unwrap();
    assert_eq!(works.succeeded, Some(3));
    assert!(works.completion_time.is_some());
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_statefulset_starts_in_order_and_stops_from_the_top() {
    let c = start(&["n1", "n2"], fast()).await;
    // Record the order of pod events.
    let api: Api<Pod> = c.api();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, &'static str)>::new()));
    let log2 = log.clone();
    let monitor = tokio::spawn(async move {
        let mut stream = watcher::watcher(api, watcher::Config::default().labels("app=db")).boxed();
        let mut known: BTreeMap<String, bool> = BTreeMap::new();
        while let Some(Ok(ev)) = stream.next().await {
            let mut l = log2.lock().unwrap();
            match ev {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                    let name = p.name_any();
                    if !known.contains_key(&name) {
                        l.push((name.clone(), "created"));
                    }
                    let r = ready(&p);
                    if r && known.get(&name) != Some(&true) {
                        l.push((name.clone(), "ready"));
                    }
                    if p.metadata.deletion_timestamp.is_some() {
                        l.push((name.clone(), "deleting"));
                    }
                    known.insert(name, r);
                }
                watcher::Event::Delete(p) => {
                    known.remove(&p.name_any());
                    l.push((p.name_any(), "deleted"));
                }
                _ => {}
            }
        }
    });
    c.create::<StatefulSet>(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "namespace": "default"},
        "spec": {"replicas": 3, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                 "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "db", "image": "db:1"}]}},
                 "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}
    }))
    .await;
    wait_for("db-0..2 ready", 60, || async { c.pods("app=db").await.iter().filter(|p| ready(p)).count() == 3 }).await;
    let events: Vec<(String, &str)> = log.lock().unwrap().clone();
    let pos = |name: &str, what: &str| events.iter().position(|(n, w)| n == name && *w == what).unwrap_or_else(|| panic!("{name} {what} not in {events:?}"));
    assert!(pos("db-0", "ready") < pos("db-1", "created"), "db-1 waited for db-0: {events:?}");
    assert!(pos("db-1", "ready") < pos("db-2", "created"), "db-2 waited for db-1: {events:?}");
    let pod = c.api::<Pod>().get("db-1").await.unwrap();
    assert_eq!(pod.spec.as_ref().unwrap().hostname.as_deref(), Some("db-1"));
    let claims: Vec<String> = c.api::<PersistentVolumeClaim>().list(&ListParams::default()).await.unwrap().items.iter().map(|p| p.name_any()).collect();
    assert_eq!(claims.len(), 3, "{claims:?}");
    assert!(claims.contains(&"data-db-2".to_string()));
    // Local volumes: each claim was pinned to its pod's node before the bind, and is Bound.
    for i in 0..3 {
        let claim = c.api::<PersistentVolumeClaim>().get(&format!("data-db-{i}")).await.unwrap();
        let pod = c.api::<Pod>().get(&format!("db-{i}")).await.unwrap();
        assert_eq!(claim.annotations().get(kapp_controllers::claims::SELECTED_NODE), Some(&node_of(&pod)), "data-db-{i}");
        assert_eq!(claim.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Bound"));
        assert_eq!(claim.status.as_ref().and_then(|s| s.capacity.as_ref()).map(|c| c["storage"].0.clone()), Some("1Gi".to_string()));
    }
    c.api::<StatefulSet>().patch("db", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 1}}))).await.unwrap();
    wait_for("only db-0 left", 60, || async {
        let pods = c.pods("app=db").await;
        pods.len() == 1 && pods[0].name_any() == "db-0"
    })
    .await;
    let events: Vec<(String, &str)> = log.lock().unwrap().clone();
    let pos = |name: &str, what: &str| events.iter().position(|(n, w)| n == name && *w == what).unwrap_or_else(|| panic!("{name} {what} not in {events:?}"));
    assert!(pos("db-2", "deleted") < pos("db-1", "deleting"), "db-2 went before db-1 was asked to: {events:?}");
    monitor.abort();
    assert_eq!(c.api::<PersistentVolumeClaim>().list(&ListParams::default()).await.unwrap().items.len(), 3, "claims outlive their pods");
    // A replaced pod goes back to where its claim keeps the data.
    let home = c.api::<PersistentVolumeClaim>().get("data-db-0").await.unwrap().annotations()[kapp_controllers::claims::SELECTED_NODE].clone();
    for round in 0..3 {
        let old = c.api::<Pod>().get("db-0").await.unwrap().uid();
        c.api::<Pod>().delete("db-0", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await.unwrap();
        wait_for("db-0 replaced and ready", 60, || async {
            c.api::<Pod>().get_opt("db-0").await.unwrap().is_some_and(|p| p.uid() != old && ready(&p))
        })
        .await;
        assert_eq!(node_of(&c.api::<Pod>().get("db-0").await.unwrap()), home, "round {round}");
    }
    // A pod bound by its own nodeName (no scheduler) gets its claim pinned to that node.
    c.create::<Pod>(json!({"metadata": {"name": "direct", "namespace": "default"}, "spec": {"nodeName": "n2", "containers": [{"name": "c", "image": "c:1"}], "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "direct"}}]}})).await;
    c.create::<PersistentVolumeClaim>(json!({"metadata": {"name": "direct", "namespace": "default"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})).await;
    wait_for("the claim of a pod bound by nodeName pinned to its node", 20, || async {
        c.api::<PersistentVolumeClaim>().get("direct").await.unwrap().annotations().get(kapp_controllers::claims::SELECTED_NODE).map(String::as_str) == Some("n2")
    })
    .await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletion_cascades_in_the_background_and_the_foreground_and_orphans_stay() {
    let c = start(&["n1"], fast()).await;
    let d: Api<Deployment> = c.api();
    let rs: Api<ReplicaSet> = c.api();
    for name in ["bg", "fg", "orphan"] {
        c.create::<Deployment>(deployment(name, 2, "x:1", json!({}))).await;
    }
    wait_for("6 ready pods", 60, || async { c.pods("app in (bg,fg,orphan)").await.iter().filter(|p| ready(p)).count() == 6 }).await;

    d.delete("bg", &DeleteParams::background()).await.unwrap();
    wait_for("bg's ReplicaSet and pods gone", 60, || async { c.pods("app=bg").await.is_empty() && rs.list(&ListParams::default().labels("app=bg")).await.unwrap().items.is_empty() }).await;

    d.delete("fg", &DeleteParams::foreground()).await.unwrap();
    let held = d.get_opt("fg").await.unwrap();
    assert!(held.is_some_and(|x| x.metadata.deletion_timestamp.is_some()), "a foreground deletion waits for the dependents");
    wait_for("fg gone after its dependents", 60, || async { d.get_opt("fg").await.unwrap().is_none() }).await;
    assert!(c.pods("app=fg").await.is_empty(), "no pod of fg outlives it");

    d.delete("orphan", &DeleteParams { propagation_policy: Some(PropagationPolicy::Orphan), ..Default::default() }).await.unwrap();
    wait_for("orphan gone", 60, || async { d.get_opt("orphan").await.unwrap().is_none() }).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let left = rs.list(&ListParams::default().labels("app=orphan")).await.unwrap().items;
    assert_eq!(left.len(), 1, "the ReplicaSet stays");
    assert!(left[0].owner_references().is_empty(), "without its owner reference");
    assert_eq!(c.pods("app=orphan").await.iter().filter(|p| ready(p)).count(), 2, "its pods keep running");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn placement_honours_taints_affinity_and_spreading() {
    let mut cfgs = nodes(&["db1", "w1", "w2"]);
    cfgs[0].1.labels = json!({"disk": "ssd"});
    cfgs[0].1.taints = json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]);
    let refs: Vec<(&str, HollowConfig)> = cfgs.iter().map(|(a, b)| (a.as_str(), b.clone())).collect();
    let c = Cluster::start(&refs, fast()).await;
    let mut db = deployment("db", 1, "db:1", json!({}));
    db["spec"]["template"]["spec"]["tolerations"] = json!([{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]);
    db["spec"]["template"]["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}]}}});
    c.create::<Deployment>(db).await;
    let mut web = deployment("web", 2, "web:1", json!({}));
    web["spec"]["template"]["spec"]["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}});
    c.create::<Deployment>(web).await;
    wait_for("db and web placed", 60, || async { c.pods("app in (db,web)").await.iter().filter(|p| ready(p)).count() == 3 }).await;
    let db_pods = c.pods("app=db").await;
    assert_eq!(node_of(&db_pods[0]), "db1", "the tolerating, ssd-requiring pod lands on the tainted ssd node");
    let mut web_nodes: Vec<String> = c.pods("app=web").await.iter().map(node_of).collect();
    web_nodes.sort();
    assert_eq!(web_nodes, ["w1", "w2"], "anti-affinity spreads web, the taint keeps it off db1");
    // A third web pod fits nowhere: it says why, and lands when a node that fits appears.
    c.api::<Deployment>().patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 3}}))).await.unwrap();
    let found = std::sync::Mutex::new(String::new());
    wait_for("an Unschedulable condition", 30, || async {
        for p in c.pods("app=web").await {
            if let Some(cond) = p.status.and_then(|s| s.conditions).and_then(|cs| cs.into_iter().find(|c| c.type_ == "PodScheduled" && c.status == "False")) {
                *found.lock().unwrap() = cond.message.unwrap_or_default();
                return true;
            }
        }
        false
    })
    .await;
    let message = found.into_inner().unwrap();
    assert!(message.starts_with("0/3 nodes are available:"), "{message}");
    assert!(message.contains("untolerated taint"), "{message}");
    assert!(message.contains("anti-affinity"), "{message}");
    let _w3 = HollowNode::start(&c.cp, "w3", HollowConfig { subnet: 9, ..Default::default() }).await;
    wait_for("the third web pod on w3", 60, || async { c.pods("app=web").await.iter().any(|p| ready(p) && node_of(p) == "w3") }).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn endpointslices_follow_ready_pods_and_namespaces_are_emptied_on_delete() {
    let c = start(&["n1"], fast()).await;
    let ns: Api<Namespace> = Api::all(c.admin.clone());
    ns.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "shop"}})).unwrap()).await.unwrap();
    let sa: Api<ServiceAccount> = Api::namespaced(c.admin.clone(), "shop");
    wait_for("the default ServiceAccount", 30, || async { sa.get_opt("default").await.unwrap().is_some() }).await;
    let mut d = deployment("web", 2, "web:1", json!({}));
    d["metadata"]["namespace"] = json!("shop");
    let deployments: Api<Deployment> = Api::namespaced(c.admin.clone(), "shop");
    deployments.create(&PostParams::default(), &serde_json::from_value(d).unwrap()).await.unwrap();
    let svc: Api<Service> = Api::namespaced(c.admin.clone(), "shop");
    svc.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})).unwrap()).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c.admin.clone(), "shop");
    cms.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"a": "b"}})).unwrap()).await.unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(c.admin.clone(), "shop");
    wait_for("a slice with 2 ready endpoints on port 8080", 60, || async {
        let items = slices.list(&ListParams::default().labels("kubernetes.io/service-name=web")).await.unwrap().items;
        items.len() == 1
            && items[0].endpoints.iter().filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true)).count() == 2
            && items[0].ports.as_ref().is_some_and(|ps| ps.len() == 1 && ps[0].port == Some(8080) && ps[0].name.as_deref() == Some("http"))
    })
    .await;
    deployments.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 1}}))).await.unwrap();
    wait_for("one endpoint", 60, || async {
        let items = slices.list(&ListParams::default().labels("kubernetes.io/service-name=web")).await.unwrap().items;
        items.len() == 1 && items[0].endpoints.len() == 1
    })
    .await;
    ns.delete("shop", &DeleteParams::default()).await.unwrap();
    let terminating = ns.get("shop").await.unwrap();
    assert_eq!(terminating.status.and_then(|s| s.phase).as_deref(), Some("Terminating"));
    let refused = cms.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "late"}})).unwrap()).await;
    assert!(matches!(refused, Err(kube::Error::Api(ref e)) if e.code == 403), "{refused:?}");
    wait_for("namespace shop gone with everything in it", 60, || async { ns.get_opt("shop").await.unwrap().is_none() }).await;
    let pods: Api<Pod> = Api::namespaced(c.admin.clone(), "shop");
    assert!(pods.list(&ListParams::default()).await.unwrap().items.is_empty());
    assert!(cms.list(&ListParams::default()).await.unwrap().items.is_empty());
    assert!(deployments.list(&ListParams::default()).await.unwrap().items.is_empty());
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cronjob_starts_a_job_on_the_minute_and_keeps_its_history_short() {
    use k8s_openapi::api::batch::v1::CronJob;
    let c = start(&["n1"], fast()).await;
    c.create::<CronJob>(json!({
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "tick", "namespace": "default"},
        "spec": {"schedule": "* * * * *", "concurrencyPolicy": "Forbid", "successfulJobsHistoryLimit": 1,
                 "jobTemplate": {"spec": {"template": {"metadata": {"annotations": {EXIT_ANNOTATION: "0"}},
                                                       "spec": {"restartPolicy": "Never", "containers": [{"name": "t", "image": "tick:1"}]}}}}}
    }))
    .await;
    let jobs: Api<Job> = c.api();
    let cj: Api<CronJob> = c.api();
    // The next minute boundary is at most 60 s away.
    wait_for("a completed Job and lastSuccessfulTime", 80, || async {
        let done = jobs.list(&ListParams::default()).await.unwrap().items.iter().any(|j| {
            j.name_any().starts_with("tick-") && j.status.as_ref().and_then(|s| s.succeeded) == Some(1)
        });
        let st = cj.get("tick").await.unwrap().status.unwrap_or_default();
        done && st.last_schedule_time.is_some() && st.last_successful_time.is_some()
    })
    .await;
    let js = jobs.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(js.len(), 1, "one run so far");
    let j = &js[0];
    let minute: i64 = j.name_any().strip_prefix("tick-").unwrap().parse().unwrap();
    let scheduled = cj.get("tick").await.unwrap().status.unwrap().last_schedule_time.unwrap().0.as_second();
    assert_eq!(minute * 60, scheduled, "the Job is named after its scheduled minute");
    assert!(j.owner_references().iter().any(|r| r.kind == "CronJob" && r.name == "tick"));
    c.stop().await;
}
