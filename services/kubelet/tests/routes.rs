//! Routes to other nodes' pods (host-gw) follow the Node objects, in the kernel of a real
//! network namespace: added, moved, repaired and removed, and nobody else's route touched.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Node;
use k8s_openapi::api::core::v1::Node as NodeObject;
use kapp_api::groups;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn ip(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip").arg("-n").arg(ns).args(args).output().unwrap();
    assert!(out.status.success(), "ip -n {ns} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Wait until the node namespace's routing table satisfies `ok`.
async fn wait_routes(ns: &str, what: &str, ok: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let table = ip(ns, &["-4", "route", "show"]);
        if ok(&table) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}; routes now:\n{table}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_routes_follow_the_nodes() {
    if !common::root_or_skip("pod_routes_follow_the_nodes") {
        return;
    }
    let node = Node::start("routes", |c| c.route_resync = Duration::from_secs(1)).await;
    let ns = node.netns.0.clone();
    // The node's link to its peers, and a route that is not the kubelet's.
    ip(&ns, &["link", "add", "kr0", "type", "veth", "peer", "name", "kr1"]);
    ip(&ns, &["addr", "add", "192.0.2.1/24", "dev", "kr0"]);
    ip(&ns, &["link", "set", "kr0", "up"]);
    ip(&ns, &["link", "set", "kr1", "up"]);
    ip(&ns, &["route", "add", "10.99.9.0/24", "via", "192.0.2.9"]);

    // Another node registers with its pod CIDR and address, as its kubelet would.
    let peer = node.cp.as_ref().unwrap().client("system:node:peer", &[groups::NODES]).await;
    let nodes: Api<NodeObject> = Api::all(peer);
    let obj = serde_json::from_value(json!({"metadata": {"name": "peer"}, "spec": {"podCIDR": "10.99.1.0/24", "podCIDRs": ["10.99.1.0/24"]}})).unwrap();
    nodes.create(&PostParams::default(), &obj).await.unwrap();
    let address = |a: &str| json!({"status": {"addresses": [{"type": "InternalIP", "address": a}]}});
    nodes.patch_status("peer", &PatchParams::default(), &Patch::Merge(address("192.0.2.2"))).await.unwrap();
    wait_routes(&ns, "a route to the peer's pods", |t| t.contains("10.99.1.0/24 via 192.0.2.2 dev kr0 proto 75")).await;

    // The peer's address changes: the route follows.
    nodes.patch_status("peer", &PatchParams::default(), &Patch::Merge(address("192.0.2.3"))).await.unwrap();
    wait_routes(&ns, "the route moved to the new address", |t| t.contains("10.99.1.0/24 via 192.0.2.3 dev kr0 proto 75") && !t.contains("192.0.2.2")).await;

    // Someone removes it: the periodic check puts it back.
    ip(&ns, &["route", "del", "10.99.1.0/24"]);
    wait_routes(&ns, "the removed route repaired", |t| t.contains("10.99.1.0/24 via 192.0.2.3")).await;

    // The Node goes: so does its route, and only its route.
    Api::<NodeObject>::all(node.client.clone()).delete("peer", &DeleteParams::default()).await.unwrap();
    wait_routes(&ns, "the route removed with its Node", |t| !t.contains("10.99.1.0/24")).await;
    let table = ip(&ns, &["-4", "route", "show"]);
    assert!(table.contains("10.99.9.0/24 via 192.0.2.9"), "someone else's route stays:\n{table}");
    assert!(table.contains("10.244.7.0/24 dev"), "the node's own pod network stays:\n{table}");
}
