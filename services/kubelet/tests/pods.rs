//! The kubelet against a real kernel, a real registry and an in-process control plane.
//! Root only (namespaces, mounts, cgroups); CI runs as root.

mod common;

use std::time::{Duration, Instant};

use common::{container, Node};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

const START: Duration = Duration::from_secs(60);

/// Pull (two layers, a whiteout), a pod Running with its status, node registration and
/// Lease, logs over HTTPS, then graceful deletion cleans up everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pod_runs_reports_and_is_cleaned_up() {
    if !common::root_or_skip("pod_runs_reports_and_is_cleaned_up") {
        return;
    }
    // Image garbage collection at any disk use, every second: the image stays while a pod
    // uses it and goes after.
    let node = Node::start("run", |c| {
        c.image_gc = kapp_kubelet::image::gc::GcPolicy { high_percent: 0, low_percent: 0, min_unused: Duration::ZERO };
        c.image_gc_period = Duration::from_secs(1);
    })
    .await;
    let script = "echo hello; cat /etc/hello; test ! -e /etc/motd && echo whiteout-ok; echo env=$FROM_IMAGE; id -u; trap 'echo bye; exit 0' TERM; while true; do sleep 0.2; done";
    let created = node.create_pod("web", json!({"containers": [{"name": "main", "image": node.image, "command": ["sh", "-c", script]}], "terminationGracePeriodSeconds": 20})).await;
    let uid = created.metadata.uid.clone().unwrap();
    let p = node.wait_pod("web", START, "Running", |p| p["status"]["phase"] == "Running").await;
    let st = &p["status"];
    let ip = st["podIP"].as_str().expect("podIP");
    assert!(ip.starts_with("10.244.7.") && ip != "10.244.7.1", "{ip}");
    assert_eq!(st["hostIP"], "10.244.7.1");
    let c = container(&p, "main");
    assert!(c["state"]["running"]["startedAt"].is_string(), "{c}");
    assert_eq!(c["ready"], true);
    assert_eq!(c["restartCount"], 0);
    assert!(c["imageID"].as_str().unwrap().contains("@sha256:"), "{c}");
    assert!(st["conditions"].as_array().unwrap().iter().any(|x| x["type"] == "Ready" && x["status"] == "True"), "{st}");

    // Node and Lease.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(node.client.clone());
    let n = serde_json::to_value(nodes.get(&node.cfg.node_name).await.unwrap()).unwrap();
    assert_eq!(n["spec"]["podCIDR"], "10.244.7.0/24");
    assert!(n["status"]["capacity"]["cpu"].is_string() && n["status"]["capacity"]["pods"] == "110", "{}", n["status"]);
    assert!(n["status"]["conditions"].as_array().unwrap().iter().any(|x| x["type"] == "Ready" && x["status"] == "True"));
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(node.client.clone(), "kube-node-lease");
    let lease = leases.get(&node.cfg.node_name).await.expect("node lease");
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some(node.cfg.node_name.as_str()));

    // Logs (the whiteout hid /etc/motd; the image's env came through).
    let log = node.wait_log("web", "main", "env=yes", Duration::from_secs(10)).await;
    for needle in ["hello\n", "hello from layer two", "whiteout-ok", "env=yes", "\n0\n"] {
        assert!(log.contains(needle), "{needle:?} missing from:\n{log}");
    }
    let (code, tail) = node.logs("web", "main", "tailLines=1").await;
    assert_eq!((code, tail.as_str()), (200, "0\n"));
    let (code, _) = node.logs("web", "nope", "").await;
    assert_eq!(code, 400);

    // The kernel objects exist while the pod runs.
    let (ns, veth) = kapp_kubelet::net::names(&node.cfg.netns_prefix, &uid);
    assert!(std::path::Path::new("/run/netns").join(&ns).exists());
    let pod_dir = node.state_dir.join("pods").join(&uid);
    assert!(!common::mounts_below(&pod_dir).is_empty());
    assert!(!node.kubelet.as_ref().unwrap().pod_cgroup_dirs(&uid).is_empty());
    let links = std::process::Command::new("ip").args(["-n", &node.netns.0, "link", "show", &veth]).output().unwrap();
    assert!(links.status.success(), "the veth's node end is in the node namespace");

    // Collection has run every second meanwhile; the image in use stayed.
    assert_eq!(std::fs::read_dir(node.state_dir.join("images/refs")).unwrap().count(), 1, "the image in use is kept");

    // Graceful deletion: SIGTERM reaches the container, then everything goes.
    let t = Instant::now();
    node.pods().delete("web", &DeleteParams::default()).await.unwrap();
    node.wait_gone("web", Duration::from_secs(30)).await;
    assert!(t.elapsed() < Duration::from_secs(15), "the container handled SIGTERM; no need to wait out the grace period");
    assert!(!std::path::Path::new("/run/netns").join(&ns).exists(), "pod netns removed");
    assert!(common::mounts_below(&pod_dir).is_empty(), "no mounts left: {:?}", common::mounts_below(&pod_dir));
    assert!(!pod_dir.exists());
    assert!(node.kubelet.as_ref().unwrap().pod_cgroup_dirs(&uid).is_empty(), "cgroups removed: {:?}", node.kubelet.as_ref().unwrap().pod_cgroup_dirs(&uid));
    let links = std::process::Command::new("ip").args(["-n", &node.netns.0, "link", "show", &veth]).output().unwrap();
    assert!(!links.status.success(), "veth removed");
    let ipam = std::fs::read_to_string(node.state_dir.join("ipam.json")).unwrap();
    assert!(!ipam.contains(&uid), "address released: {ipam}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let count = |d: &str| std::fs::read_dir(node.state_dir.join("images").join(d)).unwrap().count();
    while count("refs") > 0 || count("layers") > 0 || count("blobs/sha256") > 0 {
        assert!(Instant::now() < deadline, "unused image collected: refs {}, layers {}, blobs {}", count("refs"), count("layers"), count("blobs/sha256"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    node.shutdown().await;
}

/// Two containers talk over the pod's localhost; an init container prepares an emptyDir;
/// env from a ConfigMap and the downward API; configMap, downwardAPI and projected
/// (configMap + secret + downward API) volumes, rewritten when the ConfigMap changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn containers_share_the_pod_network_and_config() {
    if !common::root_or_skip("containers_share_the_pod_network_and_config") {
        return;
    }
    let node = Node::start("share", |c| c.volume_refresh = Duration::from_secs(1)).await;
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({"metadata": {"name": "creds", "namespace": "default"}, "stringData": {"password": "pw-from-a-secret"}})).unwrap();
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(node.client.clone(), "default").create(&PostParams::default(), &secret).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(node.client.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "default"}, "data": {"greeting": "hi-from-configmap", "file.txt": "from-a-volume"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    node.create_pod(
        "duo",
        json!({
            "volumes": [
                {"name": "shared", "emptyDir": {}},
                {"name": "cfg", "configMap": {"name": "settings"}},
                {"name": "info", "downwardAPI": {"items": [
                    {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                    {"path": "mem", "resourceFieldRef": {"containerName": "client", "resource": "limits.memory", "divisor": "1Mi"}},
                ]}},
                {"name": "all", "projected": {"sources": [
                    {"configMap": {"name": "settings", "items": [{"key": "greeting", "path": "greeting"}]}},
                    {"secret": {"name": "creds"}},
                    {"downwardAPI": {"items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
                ]}},
            ],
            "initContainers": [{"name": "prep", "image": node.image, "command": ["sh", "-c", "echo page-from-init > /data/index.html"], "volumeMounts": [{"name": "shared", "mountPath": "/data"}]}],
            "containers": [
                {"name": "server", "image": node.image, "command": ["httpd", "-f", "-p", "8080", "-h", "/data"], "volumeMounts": [{"name": "shared", "mountPath": "/data"}]},
                {"name": "client", "image": node.image,
                 "command": ["sh", "-c", "echo greeting=$GREETING ip=$MY_IP pod=$MY_NAME; cat /cfg/file.txt; echo; echo info=$(cat /info/name)/$(cat /info/mem) all=$(cat /all/greeting)/$(cat /all/password)/$(cat /all/ns); until wget -q -O - http://127.0.0.1:8080/index.html; do sleep 0.2; done; echo fetched; until grep -q changed /cfg/file.txt; do sleep 0.2; done; echo refreshed; exec sleep 3600"],
                 "resources": {"limits": {"memory": "64Mi"}},
                 "env": [
                    {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}},
                    {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                 ],
                 "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}, {"name": "info", "mountPath": "/info"}, {"name": "all", "mountPath": "/all"}]},
            ],
            "terminationGracePeriodSeconds": 1,
        }),
    )
    .await;
    let p = node.wait_pod("duo", START, "Running", |p| p["status"]["phase"] == "Running").await;
    let init = &p["status"]["initContainerStatuses"][0];
    assert_eq!(init["state"]["terminated"]["exitCode"], 0, "{init}");
    assert_eq!(init["state"]["terminated"]["reason"], "Completed");
    let ip = p["status"]["podIP"].as_str().unwrap().to_string();
    let log = node.wait_log("duo", "client", "fetched", Duration::from_secs(20)).await;
    assert!(log.contains("greeting=hi-from-configmap"), "{log}");
    assert!(log.contains(&format!("ip={ip} pod=duo")), "{log}");
    assert!(log.contains("from-a-volume"), "{log}");
    assert!(log.contains("page-from-init"), "the init container's file, served over localhost: {log}");
    assert!(log.contains("info=duo/64 all=hi-from-configmap/pw-from-a-secret/default"), "downwardAPI and projected volumes: {log}");
    cms.patch("settings", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(json!({"data": {"file.txt": "changed"}}))).await.unwrap();
    node.wait_log("duo", "client", "refreshed", Duration::from_secs(20)).await;
    node.pods().delete("duo", &DeleteParams::default()).await.unwrap();
    node.wait_gone("duo", Duration::from_secs(30)).await;
    node.shutdown().await;
}

/// A memory limit is enforced and reported as OOMKilled; the pod fails (restartPolicy Never).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_limit_is_oom_killed() {
    if !common::root_or_skip("memory_limit_is_oom_killed") {
        return;
    }
    let node = Node::start("oom", |_| {}).await;
    node.create_pod(
        "hog",
        json!({
            "restartPolicy": "Never",
            "containers": [{"name": "hog", "image": node.image, "command": ["sh", "-c", "echo start; exec dd if=/dev/zero of=/dev/null bs=256M count=1"],
                            "resources": {"limits": {"memory": "32Mi"}}}],
        }),
    )
    .await;
    let p = node.wait_pod("hog", START, "Failed", |p| p["status"]["phase"] == "Failed").await;
    let c = container(&p, "hog");
    assert_eq!(c["state"]["terminated"]["reason"], "OOMKilled", "{c}");
    assert_eq!(c["state"]["terminated"]["exitCode"], 137, "{c}");
    assert_eq!(c["restartCount"], 0);
    node.wait_log("hog", "hog", "start", Duration::from_secs(5)).await;
    node.pods().delete("hog", &DeleteParams::default()).await.unwrap();
    node.wait_gone("hog", Duration::from_secs(30)).await;
    node.shutdown().await;
}

/// A crashing container is restarted: at once the first time, then after a 10 s back-off
/// (CrashLoopBackOff), its last state and restart count reported; previous logs served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_restarts_with_backoff() {
    if !common::root_or_skip("crash_restarts_with_backoff") {
        return;
    }
    let node = Node::start("crash", |_| {}).await;
    node.create_pod("crash", json!({"containers": [{"name": "c", "image": node.image, "command": ["sh", "-c", "echo run-$(date +%s%N); exit 3"]}], "terminationGracePeriodSeconds": 1})).await;
    let p = node
        .wait_pod("crash", START, "CrashLoopBackOff after a restart", |p| {
            let c = container(p, "c");
            c["restartCount"] == 1 && c["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        })
        .await;
    let backoff_seen = Instant::now();
    let c = container(&p, "c");
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 3, "{c}");
    assert_eq!(c["lastState"]["terminated"]["reason"], "Error", "{c}");
    assert!(c["state"]["waiting"]["message"].as_str().unwrap().contains("back-off 10s"), "{c}");
    assert_eq!(p["status"]["phase"], "Running");
    let p = node.wait_pod("crash", Duration::from_secs(30), "the second restart", |p| container(p, "c")["restartCount"].as_u64() >= Some(2)).await;
    let waited = backoff_seen.elapsed();
    assert!(waited >= Duration::from_secs(7), "the back-off held the restart for ~10 s, not {waited:?}");
    let _ = p;
    let (code, prev) = node.logs("crash", "c", "previous=true").await;
    assert_eq!(code, 200);
    assert!(prev.starts_with("run-"), "{prev}");
    node.pods().delete("crash", &DeleteParams::default()).await.unwrap();
    node.wait_gone("crash", Duration::from_secs(30)).await;
    node.shutdown().await;
}

/// Air gap: an OCI layout in the import directory is imported at start, and a pod with
/// imagePullPolicy Never runs an image no registry has; an index is resolved to amd64.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn air_gapped_import_and_index() {
    if !common::root_or_skip("air_gapped_import_and_index") {
        return;
    }
    let import = tempfile::tempdir().unwrap();
    common::write_layout(&import.path().join("busybox"), "offline.example/tools/busybox:v1", &common::busybox_image(true));
    let dir = import.path().to_path_buf();
    let node = Node::start("airgap", move |c| c.import_dir = Some(dir)).await;
    // A multi-platform index pushed to the registry is pulled as linux/amd64.
    node.registry.push("test/multi", "latest", &common::busybox_image(true)).await;
    node.create_pod(
        "offline",
        json!({"restartPolicy": "Never", "containers": [
            {"name": "a", "image": "offline.example/tools/busybox:v1", "imagePullPolicy": "Never", "command": ["sh", "-c", "cat /etc/hello"]},
            {"name": "b", "image": format!("{}/test/multi", node.registry.addr), "command": ["sh", "-c", "echo multi-ok arch=${ARCH:-amd64}"]},
        ]}),
    )
    .await;
    let p = node.wait_pod("offline", START, "Succeeded", |p| p["status"]["phase"] == "Succeeded").await;
    assert_eq!(container(&p, "a")["state"]["terminated"]["exitCode"], 0);
    let log = node.wait_log("offline", "a", "hello from layer two", Duration::from_secs(5)).await;
    assert!(log.contains("hello from layer two"));
    node.wait_log("offline", "b", "multi-ok arch=amd64", Duration::from_secs(5)).await;
    // Never with an image that is nowhere: ErrImageNeverPull-like waiting, no pull attempted.
    node.create_pod("missing", json!({"containers": [{"name": "m", "image": "offline.example/none:v1", "imagePullPolicy": "Never"}]})).await;
    let p = node.wait_pod("missing", START, "a pull error", |p| container(p, "m")["state"]["waiting"]["reason"].as_str().is_some_and(|r| r.contains("ImagePull"))).await;
    assert!(container(&p, "m")["state"]["waiting"]["message"].as_str().unwrap().contains("Never"));
    for n in ["offline", "missing"] {
        node.pods().delete(n, &DeleteParams::default()).await.unwrap();
    }
    node.wait_gone("missing", Duration::from_secs(30)).await;
    node.shutdown().await;
}

/// A registry that wants credentials: a pod without an imagePullSecret gets ErrImagePull,
/// one with a dockerconfigjson Secret runs (basic auth).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn private_registry_with_pull_secret() {
    if !common::root_or_skip("private_registry_with_pull_secret") {
        return;
    }
    let node = Node::start_with("auth", Some(("puller", "pa55word")), |_| {}).await;
    node.create_pod("anon", json!({"containers": [{"name": "c", "image": node.image, "command": ["sleep", "60"]}], "terminationGracePeriodSeconds": 0})).await;
    let p = node.wait_pod("anon", START, "ErrImagePull", |p| container(p, "c")["state"]["waiting"]["reason"] == "ErrImagePull").await;
    assert!(container(&p, "c")["state"]["waiting"]["message"].as_str().unwrap().contains("unauthorized"), "{}", container(&p, "c"));
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(node.client.clone(), "default");
    let cfg = json!({"auths": {node.registry.addr.to_string(): {"username": "puller", "password": "pa55word"}}}).to_string();
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "regcred", "namespace": "default"},
        "type": "kubernetes.io/dockerconfigjson", "stringData": {".dockerconfigjson": cfg},
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    node.create_pod("authed", json!({"imagePullSecrets": [{"name": "regcred"}], "restartPolicy": "Never", "containers": [{"name": "c", "image": node.image, "command": ["echo", "pulled-with-credentials"]}]})).await;
    node.wait_pod("authed", START, "Succeeded", |p| p["status"]["phase"] == "Succeeded").await;
    node.wait_log("authed", "c", "pulled-with-credentials", Duration::from_secs(5)).await;
    for n in ["anon", "authed"] {
        node.pods().delete(n, &DeleteParams::default()).await.unwrap();
    }
    node.wait_gone("anon", Duration::from_secs(30)).await;
    node.shutdown().await;
}

/// A persistentVolumeClaim pinned to this node keeps its data on the node across pods; a
/// claim pinned elsewhere (or not yet) keeps the pod waiting with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claim_keeps_its_data_on_its_node_across_pods() {
    if !common::root_or_skip("a_claim_keeps_its_data_on_its_node_across_pods") {
        return;
    }
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    let node = Node::start("claim", |_| {}).await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(node.client.clone(), "default");
    let claim = |name: &str, pinned: Option<&str>| -> PersistentVolumeClaim {
        let annotations = pinned.map(|n| json!({"volume.kubernetes.io/selected-node": n})).unwrap_or(json!({}));
        serde_json::from_value(json!({"metadata": {"name": name, "annotations": annotations}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})).unwrap()
    };
    let data = claims.create(&PostParams::default(), &claim("data", Some(&node.cfg.node_name))).await.unwrap();
    claims.create(&PostParams::default(), &claim("elsewhere", Some("another-node"))).await.unwrap();
    let pod = |cmd: &str, claim: &str| {
        json!({
            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": claim}}],
            "containers": [{"name": "c", "image": node.image, "command": ["sh", "-c", cmd], "volumeMounts": [{"name": "d", "mountPath": "/data"}]}],
            "terminationGracePeriodSeconds": 1,
        })
    };
    node.create_pod("writer", pod("echo kept-across-pods > /data/file; echo written; exec sleep 3600", "data")).await;
    node.wait_log("writer", "c", "written", Duration::from_secs(30)).await;
    let on_node = node.state_dir.join("local-path").join(format!("pvc-{}_default_data", data.metadata.uid.unwrap())).join("file");
    assert_eq!(std::fs::read_to_string(&on_node).unwrap(), "kept-across-pods\n");
    node.delete_pod("writer").await;
    node.create_pod("reader", pod("cat /data/file; exec sleep 3600", "data")).await;
    node.wait_log("reader", "c", "kept-across-pods", Duration::from_secs(30)).await;

    node.create_pod("stray", pod("exec sleep 3600", "elsewhere")).await;
    let p = node.wait_pod("stray", Duration::from_secs(20), "the reason it waits", |p| p["status"]["message"].as_str().is_some_and(|m| m.contains("keeps its data on node another-node"))).await;
    assert_ne!(p["status"]["phase"], "Running");
    node.delete_pod("reader").await;
    node.delete_pod("stray").await;
    node.shutdown().await;
}
