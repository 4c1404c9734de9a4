//! `kapp scheduler` and `kapp controllers` as processes against an in-process control
//! plane with a hollow node: a Deployment and its Service converge (pods scheduled, Running,
//! an EndpointSlice of ready addresses); a second `kapp controllers` takes over the Lease
//! when the first stops, and the next change converges too.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kapp_e2e::{write_identity, Proc};
use kapp_testkit::hollow::{HollowConfig, HollowNode};
use kapp_testkit::{groups, ControlPlane};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

async fn eventually<F: FnMut() -> Fut, Fut: std::future::Future<Output = bool>>(what: &str, within: Duration, mut f: F) {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn spawn(cp: &ControlPlane, dir: &Path, what: &str, holder: &str, group: &str) -> Proc {
    let ids = dir.join(holder);
    std::fs::create_dir_all(&ids).unwrap();
    let mut args: Vec<String> = [what, "--apiserver", &cp.url, "--holder", holder].iter().map(|s| s.to_string()).collect();
    args.extend(write_identity(&ids, &cp.identity(&format!("kapp-{what}"), &[group])));
    Proc::spawn(holder, &args, &dir.join(format!("{holder}.log"))).unwrap()
}

async fn ready_pods(pods: &Api<Pod>) -> usize {
    let list = pods.list(&ListParams::default().labels("app=web")).await.unwrap().items;
    list.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("n1"))
        .filter(|p| p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_and_controllers_processes_converge_a_deployment_and_hand_over() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), 1).await;
    let _node = HollowNode::start(&cp, "n1", HollowConfig::default()).await;
    let mut sched = spawn(&cp, dir.path(), "scheduler", "sched-a", groups::SCHEDULER);
    let mut first = spawn(&cp, dir.path(), "controllers", "ctl-a", groups::CONTROLLERS);

    let client = cp.client("gitops", &[groups::GITOPS]).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "web:1", "ports": [{"name": "http", "containerPort": 8080}]}]}}}}))
    .unwrap();
    deployments.create(&PostParams::default(), &d).await.unwrap();
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}})).unwrap();
    Api::<Service>::namespaced(client.clone(), "default").create(&PostParams::default(), &svc).await.unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    eventually("2 ready pods on n1", Duration::from_secs(60), || async { ready_pods(&pods).await == 2 }).await;
    eventually("an EndpointSlice with 2 ready endpoints on 8080", Duration::from_secs(30), || async {
        let items = slices.list(&ListParams::default().labels("kubernetes.io/service-name=web")).await.unwrap().items;
        items.iter().any(|s| {
            s.endpoints.iter().filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true)).count() == 2
                && s.ports.as_ref().is_some_and(|ps| ps.iter().any(|p| p.port == Some(8080)))
        })
    })
    .await;

    // The active controllers stop; a standby takes the Lease over and carries on.
    let mut second = spawn(&cp, dir.path(), "controllers", "ctl-b", groups::CONTROLLERS);
    first.terminate(Duration::from_secs(20)).unwrap();
    deployments.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 3}}))).await.unwrap();
    eventually("3 ready pods after the hand-over", Duration::from_secs(90), || async { ready_pods(&pods).await == 3 }).await;
    assert!(second.output().contains("kapp controllers as ctl-b"), "{}", second.output());

    second.terminate(Duration::from_secs(20)).unwrap();
    sched.terminate(Duration::from_secs(20)).unwrap();
    cp.shutdown().await;
}
