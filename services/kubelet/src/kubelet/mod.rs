//! The kubelet loop: register the Node, heartbeat through a Lease in `kube-node-lease`,
//! watch the pods bound to this node (`fieldSelector=spec.nodeName=<node>`) into a cache,
//! and run one [`pod`] worker per pod uid. Watch events only wake workers; workers read
//! the cache.

pub mod plan;
pub mod pod;
pub mod probe;
mod prober;
pub mod volumes;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::Api;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::image::{ImageStore, RegistryOptions};
use crate::net::ipam::{Cidr, Ipam};
use crate::net::routes::{self, PodRoutes};
use crate::net::NodeNetwork;
use crate::runtime::Runtime;
use plan::Backoff;

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("client: {0}")]
    Client(#[from] kapp_runtime::RuntimeError),
    #[error("image store: {0}")]
    Image(#[from] crate::image::ImageError),
    #[error("runtime: {0}")]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("network: {0}")]
    Net(#[from] crate::net::NetError),
    #[error("registering node {node}: {source}")]
    Register { node: String, source: kube::Error },
    #[error("logs server: {0}")]
    Server(String),
    #[error("{}: {reason}", path.display())]
    Io { path: PathBuf, reason: String },
}

/// Everything the kubelet is told.
#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: String,
    /// The apiserver, `https://host:port`.
    pub apiserver: String,
    /// The node identity (CN `system:node:<name>`, group `kapp:nodes`); also serves the
    /// logs endpoint.
    pub identity: kapp_tls::Pem,
    /// Images, pods, logs, IPAM, container state.
    pub state_dir: PathBuf,
    pub pod_cidr: String,
    /// The address reported as hostIP / InternalIP.
    pub node_ip: Ipv4Addr,
    pub cluster_dns: Vec<Ipv4Addr>,
    pub cluster_domain: String,
    pub bridge: String,
    /// Named network namespace holding the bridge (None: the kubelet's own).
    pub node_netns: Option<String>,
    /// Prefix of pod network namespace names.
    pub netns_prefix: String,
    /// cgroup parent of pods (`/<parent>/pod<uid>/<container>`).
    pub cgroup_parent: String,
    pub registry: RegistryOptions,
    /// Directories of OCI image layouts imported at start (air gap).
    pub import_dir: Option<PathBuf>,
    /// Serve `/containerLogs` here (HTTPS, mTLS).
    pub listen: Option<SocketAddr>,
    pub max_pods: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub log_max_bytes: u64,
    pub pids_limit: i64,
    pub heartbeat: Duration,
    /// How often the routes to other nodes' pods are checked and repaired without a change.
    pub route_resync: Duration,
    /// When unused images are removed (disk use thresholds, least recently used first).
    pub image_gc: crate::image::gc::GcPolicy,
    /// How often the image filesystem's use is checked against `image_gc`.
    pub image_gc_period: Duration,
    /// How often configMap, secret, downwardAPI and projected volumes are rewritten from
    /// their sources (Kubernetes: the sync period, a minute).
    pub volume_refresh: Duration,
    /// Labels the Node carries besides the well-known `kubernetes.io/{hostname,os,arch}`
    /// (the machine config's, and the role label on heads); set at every registration.
    pub labels: BTreeMap<String, String>,
    /// Taints the Node carries (the machine config's); added at every registration when
    /// missing, never removed from it (others', like the node controller's, stay too).
    pub taints: Vec<Taint>,
}

impl Config {
    /// Defaults for everything but the node's identity and addresses.
    pub fn new(node_name: &str, apiserver: &str, identity: kapp_tls::Pem, state_dir: &Path) -> Config {
        Config {
            node_name: node_name.to_string(),
            apiserver: apiserver.to_string(),
            identity,
            state_dir: state_dir.to_path_buf(),
            pod_cidr: "10.88.0.0/24".into(),
            node_ip: Ipv4Addr::LOCALHOST,
            cluster_dns: vec![Ipv4Addr::new(10, 96, 0, 10)],
            cluster_domain: "cluster.local".into(),
            bridge: "kapp0".into(),
            node_netns: None,
            netns_prefix: "kapp-".into(),
            cgroup_parent: "kapp".into(),
            registry: RegistryOptions::default(),
            import_dir: None,
            listen: None,
            max_pods: 110,
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            log_max_bytes: 10 << 20,
            pids_limit: 4096,
            heartbeat: Duration::from_secs(10),
            route_resync: Duration::from_secs(30),
            volume_refresh: Duration::from_secs(30),
            image_gc: Default::default(),
            image_gc_period: Duration::from_secs(300),
            labels: BTreeMap::new(),
            taints: Vec::new(),
        }
    }
}

/// A pod worker: its wake-up and its task.
pub(crate) type WorkerHandle = (Arc<Notify>, JoinHandle<()>);

/// What every pod worker shares.
pub(crate) struct Shared {
    pub cfg: Config,
    pub client: kube::Client,
    pub images: ImageStore,
    pub runtime: Runtime,
    pub net: NodeNetwork,
    pub ipam: tokio::sync::Mutex<Ipam>,
    pub pods: Store<Pod>,
    pub backoff: Backoff,
    pub workers: Mutex<HashMap<String, WorkerHandle>>,
    /// The node's CPU and memory use (`/stats/node`).
    pub stats: Arc<crate::stats::Sampler>,
    /// Container runs an earlier kubelet left (id and shim), by pod uid and container name,
    /// until their pods' workers take them over.
    pub adoptable: Mutex<HashMap<(String, String), (String, crate::runtime::Shim)>>,
}

impl Shared {
    /// The run of container `name` of pod `uid` an earlier kubelet left, if any.
    pub fn take_adoptable(&self, uid: &str, name: &str) -> Option<(String, crate::runtime::Shim)> {
        self.adoptable.lock().expect("adoptable lock").remove(&(uid.to_string(), name.to_string()))
    }

    pub fn pod(&self, uid: &str) -> Option<Pod> {
        self.pods.state().into_iter().find(|p| p.metadata.uid.as_deref() == Some(uid)).map(|p| (*p).clone())
    }

    /// Wake (starting if needed) the worker of `uid`.
    fn wake(self: &Arc<Self>, uid: &str) {
        let mut w = self.workers.lock().expect("workers lock");
        if let Some((n, _)) = w.get(uid) {
            n.notify_one();
            return;
        }
        let n = Arc::new(Notify::new());
        let task = tokio::spawn(tracing::Instrument::instrument(pod::run(self.clone(), uid.to_string(), n.clone()), tracing::info_span!("pod", uid)));
        w.insert(uid.to_string(), (n, task));
    }
}

/// A running kubelet.
pub struct Kubelet {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
    /// Where the logs endpoint listens.
    pub logs_addr: Option<SocketAddr>,
}

impl Kubelet {
    /// Prepare the node (stores, bridge, leftovers of an earlier run), register it and start
    /// the loops.
    pub async fn start(cfg: Config) -> Result<Kubelet, KubeletError> {
        let client = kapp_runtime::client(&cfg.apiserver, &cfg.identity).await?;
        let mkdir = |p: &Path| std::fs::create_dir_all(p).map_err(|e| KubeletError::Io { path: p.to_path_buf(), reason: e.to_string() });
        for d in ["pods", "logs"] {
            mkdir(&cfg.state_dir.join(d))?;
        }
        let images = ImageStore::open(&cfg.state_dir.join("images"), cfg.registry.clone())?;
        let runtime = Runtime::new(&cfg.state_dir.join("containers"))?;
        let cidr = Cidr::parse(&cfg.pod_cidr)?;
        let net = NodeNetwork { bridge: cfg.bridge.clone(), cidr, node_netns: cfg.node_netns.clone(), prefix: cfg.netns_prefix.clone() };
        net.setup().await?;
        let ipam = Ipam::open(cidr, &cfg.state_dir.join("ipam.json"))?;
        if let Some(dir) = &cfg.import_dir {
            import_all(&images, dir).await;
        }
        // Containers of an earlier kubelet whose shims still run (or wrote their exits) are
        // adopted by their pods' workers; the rest (no shim: their output went nowhere) are
        // removed with their root filesystems. Pod sandboxes (network, address, IPC, volumes)
        // stay, and the workers start what is missing as the pods' status says.
        let mut adoptable: HashMap<(String, String), (String, crate::runtime::Shim)> = HashMap::new();
        for id in runtime.list() {
            // A run's bundle is `<state>/pods/<uid>/containers/<name>` (see `pod`).
            let found = runtime.adoptable(&id).and_then(|shim| Some(((dir_name(shim.bundle.parent()?.parent()?)?, dir_name(&shim.bundle)?), shim)));
            match found {
                // One run per container at a time: a worker deletes a run before it starts the next.
                Some((key, shim)) if !adoptable.contains_key(&key) => {
                    tracing::info!(id, running = shim.pid.is_some(), "a container of an earlier kubelet, to adopt");
                    adoptable.insert(key, (id, shim));
                }
                _ => {
                    tracing::info!(id, "removing a container left by an earlier run");
                    runtime.delete(&id);
                }
            }
        }
        for pod in std::fs::read_dir(cfg.state_dir.join("pods")).map(|rd| rd.flatten().map(|e| e.path()).collect::<Vec<_>>()).unwrap_or_default() {
            for ctr in std::fs::read_dir(pod.join("containers")).map(|rd| rd.flatten().map(|e| e.path()).collect::<Vec<_>>()).unwrap_or_default() {
                if !adoptable.contains_key(&(dir_name(&pod).unwrap_or_default(), dir_name(&ctr).unwrap_or_default())) {
                    unmount_all(&ctr);
                }
            }
        }
        let (reader, writer) = reflector::store::<Pod>();
        let shared = Arc::new(Shared {
            backoff: Backoff { base: cfg.backoff_base, max: cfg.backoff_max },
            cfg,
            client,
            images,
            runtime,
            net,
            ipam: tokio::sync::Mutex::new(ipam),
            pods: reader,
            workers: Mutex::default(),
            stats: Arc::new(crate::stats::Sampler::new(Path::new("/proc"))),
            adoptable: Mutex::new(adoptable),
        });
        register(&shared).await?;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = vec![
            tokio::spawn(heartbeat(shared.clone(), stop_rx.clone())),
            tokio::spawn(watch_pods(shared.clone(), writer, stop_rx.clone())),
            tokio::spawn(follow_node_routes(shared.clone(), stop_rx.clone())),
            tokio::spawn(crate::stats::run(shared.stats.clone(), stop_rx.clone())),
            tokio::spawn(collect_claims(shared.clone(), stop_rx.clone())),
            tokio::spawn(collect_images(shared.clone(), stop_rx.clone())),
        ];
        let mut logs_addr = None;
        if let Some(addr) = shared.cfg.listen {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| KubeletError::Server(format!("bind {addr}: {e}")))?;
            logs_addr = listener.local_addr().ok();
            tasks.push(tokio::spawn(crate::server::serve(shared.clone(), listener, stop_rx)));
        }
        tracing::info!(node = %shared.cfg.node_name, "kubelet started");
        Ok(Kubelet { shared, tasks, stop, logs_addr })
    }

    /// Stop the loops and the pod workers (as if the process ended); containers keep
    /// running, and nothing new is created.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        // The loops first: the pod watch starts workers.
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        let workers: Vec<WorkerHandle> = self.shared.workers.lock().expect("workers lock").drain().map(|(_, w)| w).collect();
        for (_, t) in workers {
            t.abort();
            let _ = t.await;
        }
        self.shared.runtime.close();
    }

    /// Stop the loops and remove every pod of this node from the machine (containers,
    /// mounts, namespaces, addresses, cgroups) without touching the apiserver.
    pub async fn shutdown_and_clean(self) {
        let shared = self.shared.clone();
        self.shutdown().await;
        clean_node(&shared, &HashSet::new()).await;
        if let Err(e) = PodRoutes::new(shared.cfg.node_netns.clone()).sync(&Default::default()).await {
            tracing::warn!(error = %e, "removing the routes to other nodes' pods");
        }
    }

    /// The kubelet's pod cgroup (relative), for tests and diagnostics.
    pub fn pod_cgroup(&self, uid: &str) -> String {
        format!("/{}/pod{uid}", self.shared.cfg.cgroup_parent)
    }

    /// Every cgroup directory of the pod that still exists.
    pub fn pod_cgroup_dirs(&self, uid: &str) -> Vec<PathBuf> {
        self.shared.runtime.cgroup_dirs(&self.pod_cgroup(uid))
    }
}

async fn import_all(images: &ImageStore, dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.join("index.json").is_file() {
            match images.import_layout(&p).await {
                Ok(imgs) => tracing::info!(layout = %p.display(), images = imgs.len(), "imported images"),
                Err(err) => tracing::warn!(layout = %p.display(), error = %err, "image import failed"),
            }
        }
    }
}

/// Remove what pods not in `keep` left on the machine.
async fn clean_node(shared: &Shared, keep: &HashSet<String>) {
    for id in shared.runtime.list() {
        if !keep.iter().any(|uid| id.starts_with(uid.as_str())) {
            shared.runtime.delete(&id);
        }
    }
    shared.adoptable.lock().expect("adoptable lock").retain(|(uid, _), _| keep.contains(uid));
    let pods_dir = shared.cfg.state_dir.join("pods");
    let mut uids: HashSet<String> = std::fs::read_dir(&pods_dir).map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).collect()).unwrap_or_default();
    uids.extend(shared.ipam.lock().await.owners());
    for uid in uids.difference(keep) {
        let dir = pods_dir.join(uid);
        unmount_all(&dir);
        let _ = shared.net.remove_pod(uid).await;
        let _ = shared.ipam.lock().await.release(uid);
        shared.runtime.remove_cgroup(&format!("/{}/pod{uid}", shared.cfg.cgroup_parent));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The last component of `p`, as text.
fn dir_name(p: &Path) -> Option<String> {
    p.file_name()?.to_str().map(str::to_string)
}

/// Unmount everything at or below `dir`, deepest first.
pub(crate) fn unmount_all(dir: &Path) {
    let mut mounts = crate::runtime::mounts_below(dir);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        crate::runtime::unmount(Path::new(&m));
    }
}

fn now_micro() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn now_secs() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The Node's status. Pure but for the clock and the machine's size.
fn node_status(shared: &Shared) -> Value {
    let cfg = &shared.cfg;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // (working set, total) in bytes.
    let memory = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| crate::stats::memory(&m)).unwrap_or((0, 0));
    let capacity = json!({"cpu": cpus.to_string(), "memory": format!("{}Ki", memory.1 / 1024), "pods": cfg.max_pods.to_string()});
    let t = now_secs();
    let cond = |ty: &str, st: &str, reason: &str, msg: &str| json!({"type": ty, "status": st, "reason": reason, "message": msg, "lastHeartbeatTime": t, "lastTransitionTime": t});
    let images: Vec<Value> = shared
        .images
        .list()
        .into_iter()
        .take(50)
        .map(|i| {
            let repo = i.name.rsplit_once(':').filter(|(_, tag)| !tag.contains('/')).map_or(i.name.as_str(), |(r, _)| r).to_string();
            json!({"names": [format!("{repo}@{}", i.digest), i.name], "sizeBytes": i.size})
        })
        .collect();
    let uname = nix::sys::utsname::uname().ok();
    // Kubernetes' hard eviction thresholds: nodefs.available < 10%, memory.available < 100Mi.
    let disk_low = crate::image::gc::fs_usage(&cfg.state_dir).is_some_and(|(total, avail)| u128::from(avail) * 10 < u128::from(total));
    let mem_low = memory.1 > 0 && memory.1 - memory.0 < 100 << 20;
    let disk = if disk_low { cond("DiskPressure", "True", "KubeletHasDiskPressure", "less than 10% of the state filesystem is free") } else { cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure") };
    let mem = if mem_low { cond("MemoryPressure", "True", "KubeletHasInsufficientMemory", "less than 100Mi of memory is available") } else { cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available") };
    json!({
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": [
            mem,
            disk,
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        ],
        "addresses": [{"type": "InternalIP", "address": cfg.node_ip.to_string()}, {"type": "Hostname", "address": cfg.node_name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.listen.map_or(0, |a| a.port())}},
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "",
            "kernelVersion": uname.as_ref().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
            "osImage": "kapp", "containerRuntimeVersion": "libcontainer://0.7", "kubeletVersion": concat!("v1.33.0-kapp.", env!("CARGO_PKG_VERSION")),
            "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
        },
        "images": images,
    })
}

/// Create (or update) this node's Node object and status.
async fn register(shared: &Shared) -> Result<(), KubeletError> {
    let cfg = &shared.cfg;
    let api: Api<Node> = Api::all(shared.client.clone());
    let err = |source| KubeletError::Register { node: cfg.node_name.clone(), source };
    let mut labels = cfg.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), cfg.node_name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("kubernetes.io/arch".into(), "amd64".into());
    let spec = json!({"podCIDR": cfg.pod_cidr, "podCIDRs": [cfg.pod_cidr], "taints": cfg.taints});
    let node: Node = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": cfg.node_name, "labels": labels}, "spec": spec})).expect("a node");
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let existing = api.get(&cfg.node_name).await.map_err(err)?;
            let taints = with_taints(existing.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or_default(), &cfg.taints);
            let spec = json!({"podCIDR": cfg.pod_cidr, "podCIDRs": [cfg.pod_cidr], "taints": taints});
            api.patch(&cfg.node_name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": labels}, "spec": spec}))).await.map_err(err)?;
        }
        Err(e) => return Err(err(e)),
    }
    api.patch_status(&cfg.node_name, &PatchParams::default(), &Patch::Merge(json!({"status": node_status(shared)}))).await.map_err(err)?;
    Ok(())
}

/// A `--node-labels` or `--register-with-taints` value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{item:?}: {reason}")]
pub struct FlagError {
    pub item: String,
    pub reason: &'static str,
}

/// `key=value,key2=value2` (the kubelet's `--node-labels` syntax); empty → no labels.
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, FlagError> {
    let mut out = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let bad = |reason| FlagError { item: item.to_string(), reason };
        let (k, v) = item.split_once('=').ok_or_else(|| bad("is not key=value"))?;
        if !kapp_api::validation::is_qualified_name(k) {
            return Err(bad("the key is not a valid label key"));
        }
        if !kapp_api::validation::is_label_value(v) {
            return Err(bad("the value is not a valid label value"));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// A Node's taints (one name, so that a command-line parser takes them as one value).
pub type Taints = Vec<Taint>;

/// `key[=value]:Effect,...` (the kubelet's `--register-with-taints` syntax).
pub fn parse_taints(s: &str) -> Result<Taints, FlagError> {
    let mut out: Vec<Taint> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let bad = |reason| FlagError { item: item.to_string(), reason };
        let (kv, effect) = item.rsplit_once(':').ok_or_else(|| bad("is not key[=value]:Effect"))?;
        if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
            return Err(bad("the effect is not NoSchedule, PreferNoSchedule or NoExecute"));
        }
        let (key, value) = match kv.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (kv, None),
        };
        if !kapp_api::validation::is_qualified_name(key) {
            return Err(bad("the key is not a valid taint key"));
        }
        if value.as_deref().is_some_and(|v| !kapp_api::validation::is_label_value(v)) {
            return Err(bad("the value is not a valid taint value"));
        }
        if out.iter().any(|t| t.key == key && t.effect == effect) {
            return Err(bad("a taint with this key and effect is given twice"));
        }
        out.push(Taint { key: key.to_string(), value, effect: effect.to_string(), time_added: None });
    }
    Ok(out)
}

/// The Node's taints after registration: all it has, plus each configured one it lacks
/// (one per key and effect, as the apiserver requires).
fn with_taints(existing: &[Taint], configured: &[Taint]) -> Vec<Taint> {
    let mut out = existing.to_vec();
    for t in configured {
        if !out.iter().any(|e| e.key == t.key && e.effect == t.effect) {
            out.push(t.clone());
        }
    }
    out
}

/// Renew the Lease and the Node status every heartbeat.
async fn heartbeat(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let leases: Api<Lease> = Api::namespaced(shared.client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(shared.client.clone());
    let name = shared.cfg.node_name.clone();
    let duration = (shared.cfg.heartbeat.as_secs() * 4).max(10) as i32;
    loop {
        let spec = json!({"holderIdentity": name, "leaseDurationSeconds": duration, "renewTime": now_micro()});
        let renewed = match leases.get_opt(&name).await {
            Ok(Some(_)) => leases.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"spec": spec}))).await.map(|_| ()),
            Ok(None) => {
                let lease: Lease = serde_json::from_value(json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name, "namespace": "kube-node-lease"}, "spec": spec})).expect("a lease");
                leases.create(&PostParams::default(), &lease).await.map(|_| ())
            }
            Err(e) => Err(e),
        };
        if let Err(e) = renewed {
            tracing::warn!(node = %name, error = %e, "lease renewal");
        }
        if let Err(e) = nodes.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": node_status(&shared)}))).await {
            tracing::warn!(node = %name, error = %e, "node status");
        }
        tokio::select! {
            _ = tokio::time::sleep(shared.cfg.heartbeat) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Watch this node's pods into the cache and wake their workers.
/// Every `image_gc_period`, remove unused images when the image filesystem is too full.
async fn collect_images(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let root = shared.cfg.state_dir.join("images");
    let policy = shared.cfg.image_gc;
    let mut tick = tokio::time::interval(shared.cfg.image_gc_period);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let Some((total, avail)) = crate::image::gc::fs_usage(&root) else { continue };
        let want = policy.bytes_to_free(total, avail);
        if want == 0 {
            continue;
        }
        let in_use = shared.pods.state().iter().flat_map(|p| p.spec.iter().flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten())).filter_map(|c| c.image.clone()).collect::<Vec<_>>()).collect();
        match shared.images.collect(&in_use, want, policy.min_unused).await {
            Ok(removed) => tracing::info!(want, removed = removed.len(), "image garbage collection"),
            Err(e) => tracing::warn!(error = %e, "image garbage collection"),
        }
    }
}

/// Every minute, remove the local data of claims that were deleted.
async fn collect_claims(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let root = shared.cfg.state_dir.join(volumes::CLAIMS_DIR);
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if !root.is_dir() {
            continue;
        }
        let claims = match Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::all(shared.client.clone()).list(&kube::api::ListParams::default()).await {
            Ok(l) => l.items,
            Err(e) => {
                tracing::warn!(error = %e, "listing claims");
                continue;
            }
        };
        let live = claims.into_iter().filter_map(|c| c.metadata.uid).collect();
        let in_use = shared.pods.state().iter().flat_map(|p| {
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            p.spec.iter().flat_map(|s| s.volumes.iter().flatten()).filter_map(|v| v.persistent_volume_claim.as_ref()).map(move |c| (ns.clone(), c.claim_name.clone())).collect::<Vec<_>>()
        }).collect();
        for dir in volumes::collect_claims(&root, &live, &in_use) {
            tracing::info!(dir = %dir.display(), "removed the data of a deleted claim");
        }
    }
}

/// Keep the routes to other nodes' pods (host-gw, `net::routes`) in step with the Nodes: at
/// once when what they call for changes, and every `route_resync` whatever happened, which
/// repairs routes someone else changed.
async fn follow_node_routes(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let routes = PodRoutes::new(shared.cfg.node_netns.clone());
    let (nodes, writer) = reflector::store::<Node>();
    let stream = reflector::reflector(writer, watcher(Api::<Node>::all(shared.client.clone()), watcher::Config::default()));
    tokio::pin!(stream);
    let mut resync = tokio::time::interval(shared.cfg.route_resync);
    let (mut listed, mut last) = (false, None);
    loop {
        let forced = tokio::select! {
            ev = stream.next() => match ev {
                None => return,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "node watch");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    listed = true;
                    false
                }
                Some(Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_))) => false,
                Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => continue,
            },
            _ = resync.tick() => true,
            _ = stop.changed() => return,
        };
        if !listed {
            continue;
        }
        let want = routes::desired(nodes.state().iter().map(|n| &**n), &shared.cfg.node_name, shared.net.cidr);
        if !forced && last.as_ref() == Some(&want) {
            continue;
        }
        match routes.sync(&want).await {
            Ok(()) => last = Some(want),
            Err(e) => {
                tracing::warn!(error = %e, "routes to other nodes' pods");
                last = None;
            }
        }
    }
}

async fn watch_pods(shared: Arc<Shared>, writer: reflector::store::Writer<Pod>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let api: Api<Pod> = Api::all(shared.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", shared.cfg.node_name));
    let stream = reflector::reflector(writer, watcher(api, cfg));
    tokio::pin!(stream);
    let mut cleaned = false;
    loop {
        let ev = tokio::select! {
            ev = stream.next() => ev,
            _ = stop.changed() => return,
        };
        match ev {
            None => return,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "pod watch");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Some(Ok(watcher::Event::Apply(p) | watcher::Event::Delete(p) | watcher::Event::InitApply(p))) => {
                if let Some(uid) = &p.metadata.uid {
                    if cleaned {
                        shared.wake(uid);
                    }
                }
            }
            Some(Ok(watcher::Event::Init)) => {}
            Some(Ok(watcher::Event::InitDone)) => {
                let present: HashSet<String> = shared.pods.state().iter().filter_map(|p| p.metadata.uid.clone()).collect();
                if !cleaned {
                    // Leftovers of pods deleted while this kubelet was away.
                    clean_node(&shared, &present).await;
                    cleaned = true;
                }
                let mut all: Vec<String> = shared.workers.lock().expect("workers lock").keys().cloned().collect();
                all.extend(present);
                for uid in all {
                    shared.wake(&uid);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, effect: &str) -> Taint {
        Taint { key: key.into(), effect: effect.into(), value: None, time_added: None }
    }

    #[test]
    fn registration_adds_missing_taints_and_keeps_the_rest() {
        let unreachable = taint("node.kubernetes.io/unreachable", "NoExecute");
        let head = taint("node-role.kubernetes.io/control-plane", "NoSchedule");
        // The node controller's taint stays; ours is added once, not twice.
        assert_eq!(with_taints(&[unreachable.clone()], &[head.clone()]), [unreachable.clone(), head.clone()]);
        assert_eq!(with_taints(&[head.clone(), unreachable.clone()], &[head.clone()]), [head.clone(), unreachable]);
        // Same key, another effect: a different taint.
        let no_exec = taint("node-role.kubernetes.io/control-plane", "NoExecute");
        assert_eq!(with_taints(&[head.clone()], &[no_exec.clone()]), [head, no_exec]);
    }

    #[test]
    fn flags_parse_like_the_kubelets_and_bad_items_are_named() {
        let l = parse_labels("zone=a, node-role.kubernetes.io/control-plane=").unwrap();
        assert_eq!(l.get("zone").map(String::as_str), Some("a"));
        assert_eq!(l.get("node-role.kubernetes.io/control-plane").map(String::as_str), Some(""));
        assert!(parse_labels("").unwrap().is_empty());
        assert_eq!(parse_labels("zone").unwrap_err().to_string(), "\"zone\": is not key=value");
        assert!(parse_labels("bad key=x").is_err());
        let t = parse_taints("node-role.kubernetes.io/control-plane:NoSchedule,gpu=yes:NoExecute").unwrap();
        assert_eq!(t[0], taint("node-role.kubernetes.io/control-plane", "NoSchedule"));
        assert_eq!((t[1].key.as_str(), t[1].value.as_deref(), t[1].effect.as_str()), ("gpu", Some("yes"), "NoExecute"));
        assert!(parse_taints("gpu=yes").unwrap_err().to_string().contains("key[=value]:Effect"));
        assert!(parse_taints("gpu:Sometimes").unwrap_err().to_string().contains("effect"));
        assert!(parse_taints("a:NoSchedule,a=b:NoSchedule").unwrap_err().to_string().contains("twice"));
    }
}
