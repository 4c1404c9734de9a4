//! Table tests over plain data: nodes and pods written as JSON, decisions and messages
//! checked as strings.

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{json, Value};

use crate::pod_info::PodInfo;
use crate::resources::pod_requests;
use crate::scores::{self, Cluster, Spread};
use crate::snapshot::NodeInfo;
use crate::{Config, ScheduleError, Scheduler, Snapshot};

/// `base` with `extra` merged in, objects key by key.
fn merge(mut base: Value, extra: &Value) -> Value {
    match (&mut base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                let merged = merge(b.remove(k).unwrap_or(Value::Null), v);
                b.insert(k.clone(), merged);
            }
            base
        }
        _ => extra.clone(),
    }
}

/// A ready node with 4 cpu, 32Gi and 110 pods, plus `extra`.
fn node(name: &str, extra: Value) -> Node {
    let base = json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "allocatable": {"cpu": "4", "memory": "32Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    });
    serde_json::from_value(merge(base, &extra)).unwrap()
}

/// A pod in `default` with one container requesting `cpu` and 128Mi, plus `extra`.
fn pod(name: &str, cpu: &str, extra: Value) -> Pod {
    let base = json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "app", "image": "app:1", "resources": {"requests": {"cpu": cpu, "memory": "128Mi"}}}]},
    });
    serde_json::from_value(merge(base, &extra)).unwrap()
}

/// `pod` bound to `node`.
fn bound(name: &str, node: &str, extra: Value) -> Pod {
    pod(name, "100m", merge(json!({"spec": {"nodeName": node}}), &extra))
}

fn scheduler(nodes: &[Node], pods: &[Pod]) -> Scheduler {
    let mut s = Scheduler::new(Config::default());
    for n in nodes {
        s.snapshot_mut().upsert_node(n).unwrap();
    }
    for p in pods {
        s.snapshot_mut().upsert_pod(p).unwrap();
    }
    s
}

fn outcome(result: Result<String, ScheduleError>) -> String {
    result.unwrap_or_else(|e| e.to_string())
}

#[test]
fn requests_like_kubernetes() {
    let cases = [
        // containers add up
        (json!({"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "1Gi"}}},
            {"name": "b", "resources": {"requests": {"cpu": "200m", "memory": "1Gi"}}}]}),
         (300, 2 << 30), (300, 2 << 30)),
        // an init container bigger than the sum wins
        (json!({"initContainers": [{"name": "i", "resources": {"requests": {"cpu": "1"}}}],
                "containers": [{"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}),
         (1000, 64 << 20), (1000, 200 << 20)),
        // a sidecar keeps running: added to the containers and to later init containers
        (json!({"initContainers": [
                    {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "200m"}}},
                    {"name": "init", "resources": {"requests": {"cpu": "500m"}}}],
                "containers": [{"name": "a", "resources": {"requests": {"cpu": "100m"}}}]}),
         (700, 0), (700, 400 << 20)),
        // overhead is added
        (json!({"overhead": {"cpu": "250m", "memory": "120Mi"},
                "containers": [{"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "8Mi"}}}]}),
         (350, 128 << 20), (350, 128 << 20)),
        // limits stand in for missing requests
        (json!({"containers": [{"name": "a", "resources": {"limits": {"cpu": "2", "memory": "1G"}}}]}),
         (2000, 1_000_000_000), (2000, 1_000_000_000)),
        // nothing requested: zero for the fit, 100m / 200Mi for scoring
        (json!({"containers": [{"name": "a"}]}), (0, 0), (100, 200 << 20)),
        // an explicit zero stays zero for scoring
        (json!({"containers": [{"name": "a", "resources": {"requests": {"cpu": "0", "memory": "0"}}}]}), (0, 0), (0, 0)),
    ];
    for (spec, (cpu, memory), (nz_cpu, nz_memory)) in cases {
        let p: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap();
        let got = pod_requests(&p).unwrap();
        assert_eq!((got.requests.milli_cpu, got.requests.memory), (cpu, memory), "{spec}");
        assert_eq!((got.non_zero_milli_cpu, got.non_zero_memory), (nz_cpu, nz_memory), "{spec}");
    }
    let gpu = pod("g", "1", json!({"spec": {"containers": [{"name": "app", "resources": {"limits": {"nvidia.com/gpu": "2"}}}]}}));
    assert_eq!(pod_requests(&gpu).unwrap().requests.other["nvidia.com/gpu"], 2);
}

#[test]
fn bad_quantities_name_pod_container_and_field() {
    let cases = [
        (pod("p", "lots", json!({})),
         r#"pod default/p: container "app": resources.requests[cpu]: "lots" is not a quantity (a number with an optional suffix, like 100m, 0.5, 128Mi, 1G or 1e3)"#),
        (pod("p", "-1", json!({})), r#"pod default/p: container "app": resources.requests[cpu]: "-1" is negative"#),
        (pod("p", "1", json!({"spec": {"overhead": {"memory": "1Xi"}}})),
         r#"pod default/p: spec.overhead[memory]: "1Xi" is not a quantity (a number with an optional suffix, like 100m, 0.5, 128Mi, 1G or 1e3)"#),
    ];
    for (p, want) in cases {
        let mut s = scheduler(&[node("n1", json!({}))], &[]);
        assert_eq!(outcome(s.schedule(&p)), want);
    }
    let bad = node("n1", json!({"status": {"allocatable": {"memory": "32 Gi"}}}));
    let mut snapshot = Snapshot::new();
    snapshot.upsert_node(&node("n1", json!({}))).unwrap();
    let err = snapshot.upsert_node(&bad).unwrap_err();
    assert!(err.to_string().starts_with(r#"node n1: status.allocatable[memory]: "32 Gi" is not a quantity"#), "{err}");
    assert_eq!(snapshot.node_count(), 0, "a node that cannot be read takes no pods");

    // A bound pod with unreadable requests still takes its pod slot.
    let mut s = scheduler(&[node("n1", json!({"status": {"allocatable": {"pods": "1"}}}))], &[]);
    let err = s.snapshot_mut().upsert_pod(&bound("b", "n1", json!({"spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": "x"}}}]}}))).unwrap_err();
    assert!(err.to_string().starts_with(r#"pod default/b: container "app": resources.requests[cpu]: "x""#), "{err}");
    assert_eq!(outcome(s.schedule(&pod("p", "1", json!({})))), "0/1 nodes are available: 1 Too many pods.");
}

#[test]
fn namespace_selectors_read_namespace_labels() {
    let mut s = scheduler(&[node("n1", json!({}))], &[bound("w", "n1", json!({"metadata": {"namespace": "prod", "labels": {"app": "web"}}}))]);
    let anti = pod("p", "1", json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "web"}}, "namespaceSelector": {"matchLabels": {"env": "prod"}}, "topologyKey": "kubernetes.io/hostname"}]}}}}));
    // Namespace labels unknown: the selector matches no namespace, so nothing repels.
    assert_eq!(outcome(s.schedule(&anti)), "n1");
    s.snapshot_mut().upsert_namespace(&serde_json::from_value(json!({"metadata": {"name": "prod", "labels": {"env": "prod"}}})).unwrap());
    assert_eq!(outcome(s.schedule(&anti)), "0/1 nodes are available: 1 node(s) didn't match pod anti-affinity rules.");
}

/// name, nodes, pods bound, the pod to place, the node or message wanted
type Case = (&'static str, Vec<Node>, Vec<Pod>, Pod, &'static str);

/// Filters and the message, one case per row: the nodes, the pods already bound, the
/// pod to place, and the node it goes to or the message.
#[test]
fn filters() {
    let control_plane = json!({"spec": {"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}});
    let zone = |z: &str| json!({"metadata": {"labels": {"zone": z}}});
    let web = json!({"metadata": {"labels": {"app": "web"}}});
    let affinity = |kind: &str, key: &str, selector: Value| {
        json!({"spec": {"affinity": {kind: {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": selector, "topologyKey": key}]}}}})
    };
    let node_affinity = |terms: Value| {
        json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}}})
    };
    let cases: Vec<Case> = vec![
        ("fits", vec![node("n1", json!({}))], vec![], pod("p", "1", json!({})), "n1"),
        ("the message",
         vec![node("cp", control_plane.clone()), node("n1", json!({})), node("n2", json!({}))], vec![],
         pod("p", "5", json!({})),
         "0/3 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, 2 Insufficient cpu."),
        ("cpu, memory and an extended resource, all reported",
         vec![node("n1", json!({}))], vec![],
         pod("p", "4001m", json!({"spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": "4001m", "memory": "33Gi", "example.com/dongle": "1"}}}]}})),
         "0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient example.com/dongle, 1 Insufficient memory."),
        ("bound pods use up the node",
         vec![node("n1", json!({}))], vec![bound("a", "n1", json!({"spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": "3500m"}}}]}}))],
         pod("p", "600m", json!({})), "0/1 nodes are available: 1 Insufficient cpu."),
        ("pod slots", vec![node("n1", json!({"status": {"allocatable": {"pods": "1"}}}))], vec![bound("a", "n1", json!({}))],
         pod("p", "0", json!({})), "0/1 nodes are available: 1 Too many pods."),
        ("nodeSelector",
         vec![node("n1", zone("a")), node("n2", zone("b"))], vec![],
         pod("p", "1", json!({"spec": {"nodeSelector": {"zone": "b"}}})), "n2"),
        ("nodeSelector matches nothing",
         vec![node("n1", zone("a"))], vec![],
         pod("p", "1", json!({"spec": {"nodeSelector": {"zone": "c"}}})),
         "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."),
        ("required node affinity: terms ORed",
         vec![node("n1", zone("a")), node("n2", zone("b")), node("n3", zone("c"))], vec![],
         pod("p", "1", node_affinity(json!([
             {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["x"]}]},
             {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n3"]}]}]))),
         "n3"),
        ("required node affinity: expressions ANDed",
         vec![node("n1", zone("a")), node("n2", zone("b"))], vec![],
         pod("p", "1", node_affinity(json!([{"matchExpressions": [
             {"key": "zone", "operator": "In", "values": ["a", "b"]},
             {"key": "zone", "operator": "NotIn", "values": ["a"]}]}]))),
         "n2"),
        ("no node selector terms match nothing",
         vec![node("n1", json!({}))], vec![], pod("p", "1", node_affinity(json!([]))),
         "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."),
        ("NoExecute filters",
         vec![node("n1", json!({"spec": {"taints": [{"key": "k", "value": "v", "effect": "NoExecute"}]}}))], vec![],
         pod("p", "1", json!({})), "0/1 nodes are available: 1 node(s) had untolerated taint {k: v}."),
        ("PreferNoSchedule does not filter",
         vec![node("n1", json!({"spec": {"taints": [{"key": "k", "effect": "PreferNoSchedule"}]}}))], vec![],
         pod("p", "1", json!({})), "n1"),
        ("tolerated taint",
         vec![node("cp", control_plane.clone())], vec![],
         pod("p", "1", json!({"spec": {"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}]}})),
         "cp"),
        ("empty key with Exists tolerates everything",
         vec![node("n1", json!({"spec": {"unschedulable": true, "taints": [{"key": "a", "effect": "NoSchedule"}, {"key": "b", "value": "c", "effect": "NoExecute"}]}}))],
         vec![], pod("p", "1", json!({"spec": {"tolerations": [{"operator": "Exists"}]}})), "n1"),
        ("cordoned", vec![node("n1", json!({"spec": {"unschedulable": true}}))], vec![], pod("p", "1", json!({})),
         "0/1 nodes are available: 1 node(s) were unschedulable."),
        ("cordoned but tolerated", vec![node("n1", json!({"spec": {"unschedulable": true}}))], vec![],
         pod("p", "1", json!({"spec": {"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]}})),
         "n1"),
        ("not ready", vec![
            node("n1", json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})),
            node("n2", json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}})),
            node("n3", json!({"status": {"conditions": []}}))],
         vec![], pod("p", "1", json!({})), "0/3 nodes are available: 3 node(s) were not ready."),
        ("pod affinity: to the zone of a matching pod",
         vec![node("n1", zone("a")), node("n2", zone("b")), node("n3", zone("b"))],
         vec![bound("w", "n3", web.clone())],
         pod("p", "1", affinity("podAffinity", "zone", json!({"matchLabels": {"app": "web"}}))),
         "n2"), // n2 and n3 tie on zone; n2 is less allocated
        ("pod affinity: nothing matches",
         vec![node("n1", zone("a"))], vec![],
         pod("p", "1", affinity("podAffinity", "zone", json!({"matchLabels": {"app": "web"}}))),
         "0/1 nodes are available: 1 node(s) didn't match pod affinity rules."),
        ("pod affinity: the first of a group with affinity to itself",
         vec![node("n1", zone("a")), node("n2", json!({}))], vec![],
         pod("p", "1", merge(affinity("podAffinity", "zone", json!({"matchLabels": {"app": "web"}})), &web)),
         "n1"), // n2 has no zone label
        ("pod affinity: other namespaces do not count",
         vec![node("n1", zone("a"))], vec![bound("w", "n1", merge(web.clone(), &json!({"metadata": {"namespace": "other"}})))],
         pod("p", "1", affinity("podAffinity", "zone", json!({"matchLabels": {"app": "web"}}))),
         "0/1 nodes are available: 1 node(s) didn't match pod affinity rules."),
        ("pod anti-affinity: away from matching pods",
         vec![node("n1", json!({})), node("n2", json!({}))], vec![bound("w", "n1", web.clone())],
         pod("p", "1", affinity("podAntiAffinity", "kubernetes.io/hostname", json!({"matchLabels": {"app": "web"}}))),
         "n2"),
        ("pod anti-affinity: listed namespaces count",
         vec![node("n1", json!({}))], vec![bound("w", "n1", merge(web.clone(), &json!({"metadata": {"namespace": "other"}})))],
         pod("p", "1", json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
             {"labelSelector": {"matchLabels": {"app": "web"}}, "namespaces": ["other"], "topologyKey": "kubernetes.io/hostname"}]}}}})),
         "0/1 nodes are available: 1 node(s) didn't match pod anti-affinity rules."),
        ("pod anti-affinity: an empty namespaceSelector means all namespaces",
         vec![node("n1", json!({}))], vec![bound("w", "n1", merge(web.clone(), &json!({"metadata": {"namespace": "other"}})))],
         pod("p", "1", json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
             {"labelSelector": {"matchLabels": {"app": "web"}}, "namespaceSelector": {}, "topologyKey": "kubernetes.io/hostname"}]}}}})),
         "0/1 nodes are available: 1 node(s) didn't match pod anti-affinity rules."),
        ("existing pods' anti-affinity keeps the pod out of their zone",
         vec![node("n1", zone("a")), node("n2", zone("a")), node("n3", zone("b"))],
         vec![bound("guard", "n1", affinity("podAntiAffinity", "zone", json!({"matchLabels": {"app": "web"}})))],
         pod("p", "1", web.clone()), "n3"),
        ("existing pods' anti-affinity: the message",
         vec![node("n1", zone("a"))],
         vec![bound("guard", "n1", affinity("podAntiAffinity", "zone", json!({"matchLabels": {"app": "web"}})))],
         pod("p", "1", web.clone()),
         "0/1 nodes are available: 1 node(s) didn't satisfy existing pods anti-affinity rules."),
        ("no nodes", vec![], vec![], pod("p", "1", json!({})), "no nodes available to schedule pods"),
    ];
    for (name, nodes, pods, incoming, want) in cases {
        let mut s = scheduler(&nodes, &pods);
        assert_eq!(outcome(s.schedule(&incoming)), want, "{name}");
    }
}

fn node_info<'a>(snapshot: &'a Snapshot, name: &str) -> &'a NodeInfo {
    snapshot.nodes.iter().find(|n| n.name == name).unwrap()
}

#[test]
fn resource_scores() {
    let s = scheduler(&[node("n1", json!({}))], &[bound("a", "n1", json!({"spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": "1", "memory": "8Gi"}}}]}}))]);
    let n1 = node_info(s.snapshot(), "n1");
    let request = |cpu: &str, memory: &str| {
        PodInfo::new(&pod("p", cpu, json!({"spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": cpu, "memory": memory}}}]}}))).unwrap()
    };
    // (cpu, memory) → (least allocated, balanced allocation)
    let cases = [
        (("1", "8Gi"), (50, 100)),   // 2/4 cpu, 16/32Gi: half free, perfectly balanced
        (("1", "0"), (62, 87)),      // 2/4 cpu, 8/32Gi: (50+75)/2; 1 - |0.5-0.25|/2
        (("3", "24Gi"), (0, 100)),   // full
        (("4", "8Gi"), (25, 75)),    // cpu over: 0 for cpu, fraction capped at 1
    ];
    for ((cpu, memory), (least, balanced)) in cases {
        let p = request(cpu, memory);
        assert_eq!(scores::least_allocated(n1, &p), least, "{cpu} {memory}");
        assert_eq!(scores::balanced_allocation(n1, &p), balanced, "{cpu} {memory}");
    }
    // A container without requests counts as 100m and 200Mi.
    let empty = PodInfo::new(&pod("p", "0", json!({"spec": {"containers": [{"name": "app"}]}}))).unwrap();
    let free_cpu = (4000 - 1100) * 100 / 4000;
    let free_memory = ((32i64 << 30) - (8 << 30) - (200 << 20)) * 100 / (32 << 30);
    assert_eq!(scores::least_allocated(n1, &empty), (free_cpu + free_memory) / 2);
}

#[test]
fn other_scores() {
    let owned = |uid: &str| json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": uid, "controller": true}]}});
    let zone = |z: &str| json!({"metadata": {"labels": {"topology.kubernetes.io/zone": z, "disk": "ssd"}}});
    let nodes = [
        node("a1", merge(zone("a"), &json!({"status": {"images": [{"names": ["big:1"], "sizeBytes": 524288000}]}}))),
        node("a2", merge(zone("a"), &json!({"spec": {"taints": [{"key": "k", "effect": "PreferNoSchedule"}]}}))),
        node("b1", json!({"metadata": {"labels": {"topology.kubernetes.io/zone": "b"}}})),
    ];
    let pods = [
        bound("o1", "a1", owned("rs-1")),
        bound("o2", "a1", owned("rs-1")),
        bound("o3", "a2", owned("rs-1")),
        bound("x", "b1", owned("rs-2")),
        bound("gone", "b1", merge(owned("rs-1"), &json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}}))),
    ];
    let s = scheduler(&nodes, &pods);
    let snapshot = s.snapshot();
    let feasible: Vec<&NodeInfo> = ["a1", "a2", "b1"].iter().map(|n| node_info(snapshot, n)).collect();
    let incoming = PodInfo::new(&pod("p", "1", merge(owned("rs-1"), &json!({
        "spec": {
            "containers": [{"name": "app", "image": "big:1"}],
            "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 80, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}},
                {"weight": 20, "preference": {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a2"]}]}}]}},
        }})))).unwrap();
    let each = |f: &dyn Fn(&NodeInfo) -> i64| feasible.iter().map(|n| f(n)).collect::<Vec<_>>();

    // spread: counts 2, 1, 0 by node; 3, 3, 0 by zone
    let spread = Spread { owner_uid: incoming.owner_uid.as_deref(), services: vec![] };
    let counts = each(&|n| scores::spread_count(n, &incoming, &spread));
    assert_eq!(counts, [2, 1, 0]);
    // a1: 0/3 + 2/3·0; a2: 50/3 + 0; b1: 100/3 + 2/3·100
    assert_eq!(scores::normalize_spread(&feasible, 2, counts), [0, 16, 100]);

    let mut affinity = each(&|n| scores::preferred_node_affinity(n, &incoming));
    assert_eq!(affinity, [80, 100, 0]);
    scores::normalize(&mut affinity, false);
    assert_eq!(affinity, [80, 100, 0]);

    let mut taints = each(&|n| scores::intolerable_taints(n, &incoming));
    assert_eq!(taints, [0, 1, 0]);
    scores::normalize(&mut taints, true);
    assert_eq!(taints, [100, 0, 100]);
    let tolerant = PodInfo::new(&pod("p", "1", json!({"spec": {"tolerations": [{"key": "k", "operator": "Exists"}]}}))).unwrap();
    assert_eq!(scores::intolerable_taints(feasible[1], &tolerant), 0);

    // 500MB on one node of three: 500·⅓ ≈ 166MB; (166 - 23) / (1000 - 23) → 14
    let cluster = Cluster { node_count: 3, zones: 2, image_nodes: &snapshot.image_nodes };
    let shares = cluster.image_shares(&incoming);
    assert_eq!(each(&|n| scores::image_locality(n, &incoming, &shares)), [14, 0, 0]);
}

#[test]
fn scores_decide() {
    // Spreading: two replicas already on n1, so the third goes elsewhere.
    let owned = json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u1", "controller": true}]}});
    let nodes = [node("n1", json!({})), node("n2", json!({}))];
    let mut s = scheduler(&nodes, &[bound("r1", "n1", owned.clone()), bound("r2", "n1", owned.clone())]);
    assert_eq!(outcome(s.schedule(&pod("r3", "100m", owned.clone()))), "n2");

    // Service spreading: pods the Service selects count even without an owner.
    let mut s = scheduler(&nodes, &[bound("w1", "n2", json!({"metadata": {"labels": {"app": "web"}}}))]);
    let service = serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"selector": {"app": "web"}}})).unwrap();
    s.snapshot_mut().upsert_service(&service);
    s.snapshot_mut().upsert_pod(&bound("w2", "n1", json!({}))).unwrap(); // balance cpu
    assert_eq!(outcome(s.schedule(&pod("w3", "100m", json!({"metadata": {"labels": {"app": "web"}}})))), "n1");

    // Ties go round-robin.
    let nodes = [node("a", json!({})), node("b", json!({})), node("c", json!({}))];
    let mut s = scheduler(&nodes, &[]);
    let picks: Vec<String> = (0..6).map(|_| outcome(s.schedule(&pod("p", "1", json!({}))))).collect();
    assert_eq!(picks, ["a", "b", "c", "a", "b", "c"]);
}

#[test]
fn assumed_pods_are_never_double_booked() {
    let nodes: Vec<Node> = (0..3).map(|i| node(&format!("n{i}"), json!({"status": {"allocatable": {"cpu": "1"}}}))).collect();
    let mut s = scheduler(&nodes, &[]);
    let mut placed = Vec::new();
    let last = loop {
        let p = pod(&format!("p{}", placed.len()), "300m", json!({}));
        match s.schedule(&p) {
            Ok(node) => {
                s.snapshot_mut().assume(&p, &node).unwrap();
                placed.push((p, node));
            }
            Err(e) => break e.to_string(),
        }
    };
    assert_eq!(placed.len(), 9, "three 300m pods fit in each 1-cpu node");
    assert_eq!(last, "0/3 nodes are available: 3 Insufficient cpu.");
    for n in &nodes {
        let (requested, count) = s.snapshot().requested(n.metadata.name.as_deref().unwrap()).unwrap();
        assert_eq!((requested.milli_cpu, count), (900, 3));
    }

    // The watch shows the pod unbound first (an older version): the assumption stays.
    let (first, node) = placed[0].clone();
    s.snapshot_mut().upsert_pod(&first).unwrap();
    assert_eq!(s.snapshot().pod_node("default", "p0"), Some((node.as_str(), true)));
    // Then bound: confirmed, counted once.
    let mut confirmed = first.clone();
    confirmed.spec.as_mut().unwrap().node_name = Some(node.clone());
    s.snapshot_mut().upsert_pod(&confirmed).unwrap();
    assert_eq!(s.snapshot().pod_node("default", "p0"), Some((node.as_str(), false)));
    assert_eq!(s.snapshot().requested(&node).unwrap().1, 3);
    // A failed binding is forgotten and frees room.
    s.snapshot_mut().remove_pod("default", "p1");
    assert_eq!(outcome(s.schedule(&pod("again", "300m", json!({})))), placed[1].1);
    // A finished pod frees room too.
    confirmed.status = Some(serde_json::from_value(json!({"phase": "Succeeded"})).unwrap());
    s.snapshot_mut().upsert_pod(&confirmed).unwrap();
    assert_eq!(s.snapshot().pod_node("default", "p0"), None);
}

#[test]
fn pods_outlive_their_node_in_the_snapshot() {
    let mut s = scheduler(&[node("n1", json!({"status": {"allocatable": {"cpu": "1"}}}))], &[]);
    s.snapshot_mut().upsert_pod(&bound("a", "n1", json!({"spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": "1"}}}]}}))).unwrap();
    s.snapshot_mut().remove_node("n1");
    s.snapshot_mut().upsert_node(&node("n1", json!({"status": {"allocatable": {"cpu": "1"}}}))).unwrap();
    assert_eq!(outcome(s.schedule(&pod("p", "1", json!({})))), "0/1 nodes are available: 1 Insufficient cpu.");
    // An update keeps the pods and takes the new allocatable.
    s.snapshot_mut().upsert_node(&node("n1", json!({"status": {"allocatable": {"cpu": "2"}}}))).unwrap();
    assert_eq!(outcome(s.schedule(&pod("p", "1", json!({})))), "n1");
}

#[test]
fn nodes_to_find_follow_kube_scheduler() {
    let s = Scheduler::new(Config::default());
    for (nodes, want) in [(50, 50), (100, 100), (200, 100), (1000, 420), (5000, 500), (6000, 300)] {
        assert_eq!(s.feasible_nodes_to_find(nodes), want, "{nodes}");
    }
    let all = Scheduler::new(Config { percentage_of_nodes_to_score: Some(100), ..Config::default() });
    assert_eq!(all.feasible_nodes_to_find(5000), 5000);
}

#[test]
fn large_clusters_stop_early_and_rotate() {
    let nodes: Vec<Node> = (0..1000).map(|i| node(&format!("n{i:04}"), json!({}))).collect();
    let mut s = scheduler(&nodes, &[]);
    let first = outcome(s.schedule(&pod("p", "1", json!({}))));
    let second = outcome(s.schedule(&pod("p", "1", json!({}))));
    // 420 nodes searched each time, so the second search starts where the first stopped.
    let index = |n: &str| n[1..].parse::<usize>().unwrap();
    assert!(index(&first) < 420, "{first}");
    assert!((420..840).contains(&index(&second)), "{second}");
}

#[test]
fn claims_pinned_to_a_node_allow_only_that_node() {
    let nodes = [node("a", json!({})), node("b", json!({})), node("c", json!({}))];
    let mut s = scheduler(&nodes, &[]);
    for _ in 0..3 {
        assert_eq!(outcome(s.schedule_pinned(&pod("db-0", "100m", json!({})), Some("b"))), "b");
    }
    let busy = node("b", json!({"status": {"allocatable": {"cpu": "50m"}}}));
    let mut s = scheduler(&[nodes[0].clone(), busy, nodes[2].clone()], &[]);
    assert_eq!(
        outcome(s.schedule_pinned(&pod("db-0", "100m", json!({})), Some("b"))),
        "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had volume node affinity conflict."
    );
    assert_eq!(outcome(s.schedule_pinned(&pod("db-0", "100m", json!({})), Some("gone"))), "0/3 nodes are available: 3 node(s) had volume node affinity conflict.");
}
