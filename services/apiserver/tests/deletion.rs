//! Deletion as Kubernetes does it: finalizers hold an object (with a deletionTimestamp)
//! until the last one is removed; Foreground and Orphan policies add theirs; a pod on a node
//! waits for its kubelet unless deleted with a zero grace period.

use kapp_apiserver::GITOPS;
use kapp_store::testing::TestCluster;
use serde_json::json;

mod common;
use common::call;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizers_policies_and_graceful_pod_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestCluster::start(1, dir.path()).await;
    let (api, c) = common::start(&store, GITOPS, None, None).await;
    let j = "application/json";
    let cms = "/api/v1/namespaces/default/configmaps";

    // Plain object: gone at once.
    let (code, _) = call(&c, "POST", cms, Some(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "plain"}})), j).await;
    assert_eq!(code, 201);
    let (code, _) = call(&c, "DELETE", &format!("{cms}/plain"), None, j).await;
    assert_eq!(code, 200);
    assert_eq!(call(&c, "GET", &format!("{cms}/plain"), None, j).await.0, 404);
    assert_eq!(call(&c, "DELETE", &format!("{cms}/plain"), None, j).await.0, 404);

    // A finalizer holds the object, marked for deletion; removing it finishes the deletion.
    let held = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "held", "finalizers": ["example.com/cleanup"]}, "data": {"a": "1"}});
    assert_eq!(call(&c, "POST", cms, Some(held), j).await.0, 201);
    let (code, marked) = call(&c, "DELETE", &format!("{cms}/held"), None, j).await;
    assert_eq!(code, 200);
    assert!(marked["metadata"]["deletionTimestamp"].is_string(), "{marked}");
    let (code, still) = call(&c, "GET", &format!("{cms}/held"), None, j).await;
    assert_eq!(code, 200);
    assert!(still["metadata"]["deletionTimestamp"].is_string());
    // An update cannot undo the deletion.
    let mut undo = still.clone();
    undo["metadata"].as_object_mut().unwrap().remove("deletionTimestamp");
    undo["data"]["a"] = json!("2");
    let (code, after) = call(&c, "PUT", &format!("{cms}/held"), Some(undo), j).await;
    assert_eq!(code, 200, "{after}");
    assert!(after["metadata"]["deletionTimestamp"].is_string());
    let (code, _) = call(&c, "PATCH", &format!("{cms}/held"), Some(json!({"metadata": {"finalizers": null}})), "application/merge-patch+json").await;
    assert_eq!(code, 200);
    assert_eq!(call(&c, "GET", &format!("{cms}/held"), None, j).await.0, 404, "the last finalizer removed deletes the object");

    // Foreground and Orphan policies add their finalizers (the garbage collector's cue).
    for (policy, fin) in [("Foreground", "foregroundDeletion"), ("Orphan", "orphan")] {
        let name = policy.to_lowercase();
        assert_eq!(call(&c, "POST", cms, Some(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}})), j).await.0, 201);
        let (code, o) = call(&c, "DELETE", &format!("{cms}/{name}"), Some(json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": policy})), j).await;
        assert_eq!(code, 200);
        assert_eq!(o["metadata"]["finalizers"], json!([fin]), "{o}");
    }
    assert_eq!(call(&c, "DELETE", &format!("{cms}/x"), Some(json!({"propagationPolicy": "Sideways"})), j).await.0, 400);

    // A pod on a node waits for its kubelet; grace period 0 removes it.
    let pods = "/api/v1/namespaces/default/pods";
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 20, "containers": [{"name": "c", "image": "i"}]}});
    assert_eq!(call(&c, "POST", pods, Some(pod), j).await.0, 201);
    let (code, p) = call(&c, "DELETE", &format!("{pods}/p"), None, j).await;
    assert_eq!(code, 200);
    assert_eq!(p["metadata"]["deletionGracePeriodSeconds"], 20);
    assert_eq!(call(&c, "GET", &format!("{pods}/p"), None, j).await.0, 200, "still there for the kubelet to stop");
    let (code, _) = call(&c, "DELETE", &format!("{pods}/p"), Some(json!({"gracePeriodSeconds": 0})), j).await;
    assert_eq!(code, 200);
    assert_eq!(call(&c, "GET", &format!("{pods}/p"), None, j).await.0, 404);
    // An unscheduled pod goes at once.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "q"}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
    assert_eq!(call(&c, "POST", pods, Some(pod), j).await.0, 201);
    assert_eq!(call(&c, "DELETE", &format!("{pods}/q"), None, j).await.0, 200);
    assert_eq!(call(&c, "GET", &format!("{pods}/q"), None, j).await.0, 404);

    api.shutdown().await;
    store.shutdown().await;
}
