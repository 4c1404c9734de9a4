//! Hollow nodes: simulated kubelets for control-plane tests (Kubernetes' kubemark idea).
//! Each registers its Node as `system:node:<name>`, renews its Lease in kube-node-lease,
//! and reports the pods bound to it Running and Ready at once (or, with the annotation
//! `hollow.kapp.dev/exit: "<code>"`, finished with that exit code); a pod being deleted is
//! removed for good. `pause` stops all of that (a node that died or lost the network).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::{groups, ControlPlane};

/// The annotation that makes a hollow node finish a pod with this exit code.
pub const EXIT_ANNOTATION: &str = "hollow.kapp.dev/exit";

#[derive(Debug, Clone)]
pub struct HollowConfig {
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    pub labels: serde_json::Value,
    pub taints: serde_json::Value,
    pub heartbeat: Duration,
    /// Third octet of the pod addresses (10.244.<subnet>.x).
    pub subnet: u8,
}

impl Default for HollowConfig {
    fn default() -> Self {
        HollowConfig { cpu: "4".into(), memory: "8Gi".into(), pods: 110, labels: json!({}), taints: json!([]), heartbeat: Duration::from_millis(500), subnet: 1 }
    }
}

pub struct HollowNode {
    pub name: String,
    paused: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl HollowNode {
    /// Register node `name` and start simulating its kubelet.
    pub async fn start(cp: &ControlPlane, name: &str, cfg: HollowConfig) -> HollowNode {
        let client = cp.client(&format!("system:node:{name}"), &[groups::NODES]).await;
        let nodes: Api<Node> = Api::all(client.clone());
        let mut labels = cfg.labels.clone();
        labels["kubernetes.io/hostname"] = json!(name);
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": cfg.taints, "podCIDR": format!("10.244.{}.0/24", cfg.subnet)},
        }))
        .expect("a node");
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("register node {name}: {e}"),
        }
        report_ready(&nodes, name, &cfg).await;
        let (paused, _) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(heartbeat(client.clone(), name.to_string(), cfg.heartbeat, paused.subscribe())));
        tasks.push(tokio::spawn(run_pods(client, name.to_string(), cfg.subnet, paused.subscribe())));
        HollowNode { name: name.to_string(), paused, tasks }
    }

    /// Stop heartbeats and pod updates.
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    pub fn resume(&self) {
        self.paused.send_replace(false);
    }
}

impl Drop for HollowNode {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Wait until paused is `v` (the guard is dropped before returning, so this stays Send).
async fn until(rx: &mut tokio::sync::watch::Receiver<bool>, v: bool) {
    let _ = rx.wait_for(|p| *p == v).await.map(|_| ());
}

async fn report_ready(nodes: &Api<Node>, name: &str, cfg: &HollowConfig) {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let res = json!({"cpu": cfg.cpu, "memory": cfg.memory, "pods": cfg.pods.to_string()});
    let status = json!({"status": {
        "capacity": res, "allocatable": res,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "hollow kubelet is posting ready status", "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "addresses": [{"type": "InternalIP", "address": format!("192.168.{}.1", cfg.subnet)}, {"type": "Hostname", "address": name}],
        "nodeInfo": {"kubeletVersion": "kapp-hollow", "osImage": "hollow", "architecture": "amd64", "operatingSystem": "linux", "containerRuntimeVersion": "hollow://0",
                     "bootID": "", "kernelVersion": "", "kubeProxyVersion": "", "machineID": "", "systemUUID": ""},
    }});
    nodes.patch_status(name, &PatchParams::default(), &Patch::Merge(status)).await.expect("report node status");
}

async fn heartbeat(client: kube::Client, name: String, every: Duration, mut paused: tokio::sync::watch::Receiver<bool>) {
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    loop {
        until(&mut paused, false).await;
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name, "namespace": "kube-node-lease"},
                           "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now}});
        // Renew; the first beat (or one after the Lease was deleted) creates it.
        let res = match leases.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"renewTime": now}}))).await {
            Err(kube::Error::Api(e)) if e.code == 404 => leases.create(&PostParams::default(), &serde_json::from_value(lease).expect("a lease")).await.map(|_| ()),
            other => other.map(|_| ()),
        };
        if let Err(e) = res {
            eprintln!("hollow node {name}: lease: {e}");
        }
        tokio::time::sleep(every).await;
    }
}

async fn run_pods(client: kube::Client, name: String, subnet: u8, mut paused: tokio::sync::watch::Receiver<bool>) {
    let next_ip = Arc::new(AtomicU32::new(2));
    loop {
        until(&mut paused, false).await;
        let api: Api<Pod> = Api::all(client.clone());
        let mut stream = watcher::watcher(api, watcher::Config::default().fields(&format!("spec.nodeName={name}"))).boxed();
        loop {
            tokio::select! {
                ev = stream.next() => match ev {
                    Some(Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) => handle(&client, &p, subnet, &next_ip).await,
                    Some(_) => {}
                    None => break,
                },
                _ = until(&mut paused, true) => break,
            }
        }
    }
}

async fn handle(client: &kube::Client, pod: &Pod, subnet: u8, next_ip: &AtomicU32) {
    let ns = pod.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    if pod.metadata.deletion_timestamp.is_some() {
        let _ = api.delete(&pod.name_any(), &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await;
        return;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    if matches!(phase, "Running" | "Succeeded" | "Failed") {
        return;
    }
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let ip = format!("10.244.{subnet}.{}", next_ip.fetch_add(1, Ordering::Relaxed) % 250 + 2);
    let containers: Vec<String> = pod.spec.as_ref().map(|s| s.containers.iter().map(|c| c.name.clone()).collect()).unwrap_or_default();
    let exit: Option<i32> = pod.annotations().get(EXIT_ANNOTATION).and_then(|c| c.parse().ok());
    let status = match exit {
        None => json!({
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": format!("192.168.{subnet}.1"), "startTime": now,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
            ],
            "containerStatuses": containers.iter().map(|c| json!({"name": c, "ready": true, "restartCount": 0, "started": true, "image": "hollow", "imageID": "", "state": {"running": {"startedAt": now}}})).collect::<Vec<_>>(),
        }),
        Some(code) => json!({
            "phase": if code == 0 { "Succeeded" } else { "Failed" }, "podIP": ip, "hostIP": format!("192.168.{subnet}.1"), "startTime": now,
            "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now}],
            "containerStatuses": containers.iter().map(|c| json!({"name": c, "ready": false, "restartCount": 0, "image": "hollow", "imageID": "",
                "state": {"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" }, "startedAt": now, "finishedAt": now}}})).collect::<Vec<_>>(),
        }),
    };
    if let Err(e) = api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await {
        eprintln!("hollow node: pod {ns}/{}: {e}", pod.name_any());
    }
}
