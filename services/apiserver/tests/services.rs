//! Service addresses: ClusterIPs and NodePorts are allocated, kept, refused when taken or
//! changed, and released when the Service goes.

use k8s_openapi::api::core::v1::Service;
use kapp_testkit::{groups, ControlPlane};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;

fn svc(name: &str, spec: serde_json::Value) -> Service {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

fn ip(s: &Service) -> String {
    s.spec.as_ref().unwrap().cluster_ip.clone().unwrap()
}

#[tokio::test]
async fn services_get_their_own_addresses_until_they_go() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), 1).await;
    let client = cp.client("gitops", &[groups::GITOPS]).await;
    let api: Api<Service> = Api::namespaced(client, "default");
    let pp = PostParams::default();
    let a = api.create(&pp, &svc("a", json!({"ports": [{"port": 80}]}))).await.unwrap();
    let b = api.create(&pp, &svc("b", json!({"type": "NodePort", "ports": [{"port": 80}]}))).await.unwrap();
    assert!(ip(&a).starts_with("10.") && ip(&a) != ip(&b), "{} {}", ip(&a), ip(&b));
    let octets: Vec<u8> = ip(&a).split('.').map(|o| o.parse().unwrap()).collect();
    assert!(octets[0] == 10 && (96..112).contains(&octets[1]), "inside 10.96.0.0/12: {}", ip(&a));
    let node_port = b.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].node_port.unwrap();
    assert!((30000..=32767).contains(&node_port));

    // Asking for a taken address is refused, naming the field.
    let taken = api.create(&pp, &svc("c", json!({"clusterIP": ip(&a), "ports": [{"port": 80}]}))).await;
    match taken {
        Err(kube::Error::Api(e)) => assert!(e.code == 422 && e.message.contains("spec.clusterIP") && e.message.contains("already allocated"), "{e:?}"),
        other => panic!("expected 422, got {other:?}"),
    }
    // Updates keep the addresses; the ClusterIP cannot move.
    let b2 = api.patch("b", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}}))).await.unwrap();
    assert_eq!(ip(&b2), ip(&b));
    assert_eq!(b2.spec.unwrap().ports.unwrap()[0].node_port, Some(node_port));
    let moved = api.patch("b", &PatchParams::default(), &Patch::Merge(json!({"spec": {"clusterIP": "10.96.0.77"}}))).await;
    assert!(matches!(moved, Err(kube::Error::Api(ref e)) if e.code == 422 && e.message.contains("immutable")), "{moved:?}");

    // Once a is deleted its address is free again.
    api.delete("a", &DeleteParams::default()).await.unwrap();
    let c = api.create(&pp, &svc("c", json!({"clusterIP": ip(&a), "ports": [{"port": 80}]}))).await.unwrap();
    assert_eq!(ip(&c), ip(&a));
    let headless = api.create(&pp, &svc("h", json!({"clusterIP": "None", "ports": [{"port": 80}]}))).await.unwrap();
    assert_eq!(ip(&headless), "None");
    cp.shutdown().await;
}
