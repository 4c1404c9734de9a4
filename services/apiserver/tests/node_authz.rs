//! A node's identity writes only its own Node, its Lease and the status of pods bound to it.

use kapp_apiserver::{GITOPS, NODES};
use kapp_store::testing::TestCluster;
use serde_json::json;

mod common;
use common::call;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_writes_only_what_is_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestCluster::start(1, dir.path()).await;
    let (api, admin) = common::start(&store, GITOPS, None, None).await;
    let n1 = common::client_as(&store, &api, "system:node:n1", &[NODES]);
    let j = "application/json";
    let node = |name: &str| json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}});
    let lease = |ns: &str, name: &str| json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name, "namespace": ns}, "spec": {"holderIdentity": name}});
    let pod = |name: &str, on: &str| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"nodeName": on, "containers": [{"name": "c", "image": "i"}]}});

    assert_eq!(call(&n1, "POST", "/api/v1/nodes", Some(node("n1")), j).await.0, 201);
    assert_eq!(call(&n1, "POST", "/api/v1/nodes", Some(node("n2")), j).await.0, 403);
    assert_eq!(call(&admin, "POST", "/api/v1/nodes", Some(node("n2")), j).await.0, 201);
    assert_eq!(call(&n1, "PATCH", "/api/v1/nodes/n2/status", Some(json!({"status": {"phase": "x"}})), "application/merge-patch+json").await.0, 403);
    assert_eq!(call(&n1, "PATCH", "/api/v1/nodes/n1/status", Some(json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})), "application/merge-patch+json").await.0, 200);

    let leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    assert_eq!(call(&n1, "POST", leases, Some(lease("kube-node-lease", "n1")), j).await.0, 201);
    assert_eq!(call(&n1, "POST", leases, Some(lease("kube-node-lease", "n2")), j).await.0, 403);
    assert_eq!(call(&n1, "POST", "/apis/coordination.k8s.io/v1/namespaces/default/leases", Some(lease("default", "n1")), j).await.0, 403);

    let pods = "/api/v1/namespaces/default/pods";
    assert_eq!(call(&admin, "POST", pods, Some(pod("mine", "n1")), j).await.0, 201);
    assert_eq!(call(&admin, "POST", pods, Some(pod("theirs", "n2")), j).await.0, 201);
    assert_eq!(call(&n1, "POST", pods, Some(pod("new", "n1")), j).await.0, 403, "nodes do not create pods");
    let st = json!({"status": {"phase": "Running"}});
    assert_eq!(call(&n1, "PATCH", &format!("{pods}/mine/status"), Some(st.clone()), "application/merge-patch+json").await.0, 200);
    assert_eq!(call(&n1, "PATCH", &format!("{pods}/theirs/status"), Some(st.clone()), "application/merge-patch+json").await.0, 403);
    assert_eq!(call(&n1, "PATCH", &format!("{pods}/mine"), Some(json!({"metadata": {"labels": {"a": "b"}}})), "application/merge-patch+json").await.0, 403, "spec and metadata are not a node's");
    assert_eq!(call(&n1, "DELETE", &format!("{pods}/theirs"), Some(json!({"gracePeriodSeconds": 0})), j).await.0, 403);
    assert_eq!(call(&n1, "DELETE", &format!("{pods}/mine"), Some(json!({"gracePeriodSeconds": 0})), j).await.0, 200);
    assert_eq!(call(&n1, "POST", "/api/v1/namespaces/default/configmaps", Some(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})), j).await.0, 403);
    // A node certificate without the node name prefix writes nothing.
    let odd = common::client_as(&store, &api, "n1", &[NODES]);
    assert_eq!(call(&odd, "PATCH", "/api/v1/nodes/n1/status", Some(json!({"status": {}})), "application/merge-patch+json").await.0, 403);
    // Nodes read everything.
    assert_eq!(call(&n1, "GET", &format!("{pods}/theirs"), None, j).await.0, 200);

    api.shutdown().await;
    store.shutdown().await;
}
