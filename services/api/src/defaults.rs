//! Kubernetes' defaults for the built-in kinds (the `SetDefaults_*` functions of
//! `k8s.io/api`'s defaulters that matter to a user reading an object back): applied to every
//! written object before validation, so `kubectl get -o yaml` shows what the cluster acts on,
//! and every component reads one meaning. Only fields that are absent (or null, or an empty
//! string) are set; nothing given is changed. Pure.

use serde_json::{json, Map, Value};

use crate::Resource;

/// Set Kubernetes' defaults on `obj`, an object of `res`.
pub fn apply(res: &Resource, obj: &mut Value) {
    match (res.group, res.kind) {
        ("", "Pod") => {
            if let Some(s) = map_at(obj, &["spec"]) {
                pod_spec(s, true);
            }
        }
        ("", "Service") => {
            if let Some(s) = map_at(obj, &["spec"]) {
                service_spec(s);
            }
        }
        ("", "Secret") => {
            if let Some(o) = obj.as_object_mut() {
                set(o, "type", json!("Opaque"));
                fold_string_data(o);
            }
        }
        ("", "PersistentVolumeClaim") => {
            if let Some(s) = map_at(obj, &["spec"]) {
                set(s, "volumeMode", json!("Filesystem"));
            }
        }
        ("apps", "Deployment") => {
            if let Some(s) = map_at(obj, &["spec"]) {
                set(s, "replicas", json!(1));
                set(s, "revisionHistoryLimit", json!(10));
                set(s, "progressDeadlineSeconds", json!(600));
                let strategy = entry_map(s, "strategy");
                set(strategy, "type", json!("RollingUpdate"));
                if strategy["type"] == "RollingUpdate" {
                    let ru = entry_map(strategy, "rollingUpdate");
                    set(ru, "maxUnavailable", json!("25%"));
                    set(ru, "maxSurge", json!("25%"));
                }
                template(s, true);
            }
        }
        ("apps", "ReplicaSet") => {
            if let Some(s) = map_at(obj, &["spec"]) {
                set(s, "replicas", json!(1));
                template(s, true);
            }
        }
        ("apps", "DaemonSet") => {
            if let Some(s) = map_at(obj, &["spec"]) {
                set(s, "revisionHistoryLimit", json!(10));
                let strategy = entry_map(s, "updateStrategy");
                set(strategy, "type", json!("RollingUpdate"));
                if strategy["type"] == "RollingUpdate" {
                    let ru = entry_map(strategy, "rollingUpdate");
                    set(ru, "maxUnavailable", json!(1));
                    set(ru, "maxSurge", json!(0));
                }
                template(s, true);
            }
        }
        ("apps", "StatefulSet") => {
            if let Some(s) = map_at(obj, &["spec"]) {
                set(s, "replicas", json!(1));
                set(s, "revisionHistoryLimit", json!(10));
                set(s, "podManagementPolicy", json!("OrderedReady"));
                let strategy = entry_map(s, "updateStrategy");
                set(strategy, "type", json!("RollingUpdate"));
                if strategy["type"] == "RollingUpdate" {
                    set(entry_map(strategy, "rollingUpdate"), "partition", json!(0));
                }
                let retention = entry_map(s, "persistentVolumeClaimRetentionPolicy");
                set(retention, "whenDeleted", json!("Retain"));
                set(retention, "whenScaled", json!("Retain"));
                template(s, true);
            }
        }
        ("batch", "Job") => {
            if let Some(s) = map_at(obj, &["spec"]) {
                job_spec(s);
            }
        }
        ("batch", "CronJob") => {
            if let Some(s) = map_at(obj, &["spec"]) {
                set(s, "concurrencyPolicy", json!("Allow"));
                set(s, "suspend", json!(false));
                set(s, "successfulJobsHistoryLimit", json!(3));
                set(s, "failedJobsHistoryLimit", json!(1));
                if let Some(js) = s.get_mut("jobTemplate").and_then(|j| j.get_mut("spec")).and_then(Value::as_object_mut) {
                    template(js, false);
                }
            }
        }
        _ => {}
    }
}

/// The map at `path` below `obj`, if every step is a map.
fn map_at<'a>(obj: &'a mut Value, path: &[&str]) -> Option<&'a mut Map<String, Value>> {
    path.iter().try_fold(obj, |v, k| v.get_mut(*k))?.as_object_mut()
}

/// Whether a field counts as unset: absent, null or an empty string.
fn unset(m: &Map<String, Value>, key: &str) -> bool {
    m.get(key).is_none_or(|v| v.is_null() || v.as_str() == Some(""))
}

/// `stringData` is write-only, as in Kubernetes: its entries replace those of `data`,
/// base64-encoded, and it is not stored. Left as it is when a value is not a string, for
/// validation to name.
fn fold_string_data(o: &mut Map<String, Value>) {
    use base64::Engine;
    let all_strings = match o.get("stringData") {
        Some(Value::Object(m)) => m.values().all(Value::is_string),
        Some(Value::Null) => true,
        _ => false,
    };
    if !all_strings {
        return;
    }
    let Some(Value::Object(sd)) = o.remove("stringData") else { return };
    let data = entry_map(o, "data");
    for (k, v) in sd {
        let plain = v.as_str().unwrap_or_default();
        data.insert(k, json!(base64::engine::general_purpose::STANDARD.encode(plain)));
    }
}

fn set(m: &mut Map<String, Value>, key: &str, value: Value) {
    if unset(m, key) {
        m.insert(key.to_string(), value);
    }
}

/// The map under `key`, made (empty) if unset or not a map.
fn entry_map<'a>(m: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    if !m.get(key).is_some_and(Value::is_object) {
        m.insert(key.to_string(), json!({}));
    }
    m.get_mut(key).and_then(Value::as_object_mut).expect("just made a map")
}

/// Each map in the array under `key`.
fn each<'a>(m: &'a mut Map<String, Value>, key: &str) -> impl Iterator<Item = &'a mut Map<String, Value>> {
    m.get_mut(key).and_then(Value::as_array_mut).into_iter().flatten().filter_map(Value::as_object_mut)
}

/// A workload's `template.spec`. Jobs' pods get no restartPolicy: it must be given
/// (OnFailure or Never), as Kubernetes' validation says.
fn template(workload_spec: &mut Map<String, Value>, restart_always: bool) {
    if let Some(s) = workload_spec.get_mut("template").and_then(|t| t.get_mut("spec")).and_then(Value::as_object_mut) {
        pod_spec(s, restart_always);
    }
}

fn job_spec(s: &mut Map<String, Value>) {
    if unset(s, "completions") && unset(s, "parallelism") {
        s.insert("completions".into(), json!(1));
    }
    set(s, "parallelism", json!(1));
    set(s, "backoffLimit", json!(6));
    set(s, "completionMode", json!("NonIndexed"));
    set(s, "suspend", json!(false));
    template(s, false);
}

fn pod_spec(s: &mut Map<String, Value>, restart_always: bool) {
    if restart_always {
        set(s, "restartPolicy", json!("Always"));
    }
    set(s, "terminationGracePeriodSeconds", json!(30));
    set(s, "dnsPolicy", json!("ClusterFirst"));
    set(s, "schedulerName", json!("default-scheduler"));
    set(s, "enableServiceLinks", json!(true));
    if !s.get("securityContext").is_some_and(Value::is_object) {
        s.insert("securityContext".into(), json!({}));
    }
    for key in ["initContainers", "containers"] {
        for c in each(s, key) {
            container(c);
        }
    }
    for v in each(s, "volumes") {
        for source in ["configMap", "secret"] {
            if let Some(src) = v.get_mut(source).and_then(Value::as_object_mut) {
                set(src, "defaultMode", json!(0o644));
            }
        }
    }
}

fn container(c: &mut Map<String, Value>) {
    set(c, "terminationMessagePath", json!("/dev/termination-log"));
    set(c, "terminationMessagePolicy", json!("File"));
    let policy = if c.get("image").and_then(Value::as_str).is_some_and(latest) { "Always" } else { "IfNotPresent" };
    set(c, "imagePullPolicy", json!(policy));
    for p in each(c, "ports") {
        set(p, "protocol", json!("TCP"));
    }
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
            set(p, "timeoutSeconds", json!(1));
            set(p, "periodSeconds", json!(10));
            set(p, "successThreshold", json!(1));
            set(p, "failureThreshold", json!(3));
            if let Some(h) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
                set(h, "scheme", json!("HTTP"));
            }
        }
    }
    for e in each(c, "env") {
        if let Some(f) = e.get_mut("valueFrom").and_then(|v| v.get_mut("fieldRef")).and_then(Value::as_object_mut) {
            set(f, "apiVersion", json!("v1"));
        }
    }
}

/// Whether an image reference means "the latest": no digest and no tag, or tag `latest`.
fn latest(image: &str) -> bool {
    if image.contains('@') {
        return false;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split_once(':').is_none_or(|(_, tag)| tag == "latest")
}

fn service_spec(s: &mut Map<String, Value>) {
    set(s, "type", json!("ClusterIP"));
    set(s, "sessionAffinity", json!("None"));
    if s["type"] != "ExternalName" {
        set(s, "internalTrafficPolicy", json!("Cluster"));
    }
    if s["type"] == "NodePort" || s["type"] == "LoadBalancer" {
        set(s, "externalTrafficPolicy", json!("Cluster"));
    }
    for p in each(s, "ports") {
        set(p, "protocol", json!("TCP"));
        if unset(p, "targetPort") || p["targetPort"] == 0 {
            if let Some(port) = p.get("port").cloned() {
                p.insert("targetPort".into(), port);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::by_kind;

    fn defaulted(api_version: &str, kind: &str, obj: Value) -> Value {
        let mut obj = obj;
        apply(by_kind(api_version, kind).expect("a served kind"), &mut obj);
        obj
    }

    #[test]
    fn a_deployment_gets_kubernetes_defaults_down_to_its_containers() {
        let d = defaulted(
            "apps/v1",
            "Deployment",
            json!({"spec": {"template": {"spec": {
                "containers": [
                    {"name": "a", "image": "busybox", "ports": [{"containerPort": 80}], "readinessProbe": {"httpGet": {"path": "/", "port": 80}}},
                    {"name": "b", "image": "reg:5000/x/busybox:1.36", "imagePullPolicy": "Never", "env": [{"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]},
                    {"name": "c", "image": "busybox@sha256:abcd"}
                ],
                "volumes": [{"name": "v", "configMap": {"name": "cm"}}],
                "terminationGracePeriodSeconds": 5
            }}}}),
        );
        let s = &d["spec"];
        assert_eq!((s["replicas"].clone(), s["revisionHistoryLimit"].clone(), s["progressDeadlineSeconds"].clone()), (json!(1), json!(10), json!(600)));
        assert_eq!(s["strategy"], json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}));
        let p = &s["template"]["spec"];
        assert_eq!(p["restartPolicy"], "Always");
        assert_eq!(p["terminationGracePeriodSeconds"], 5, "a given value stays");
        assert_eq!((p["dnsPolicy"].as_str(), p["schedulerName"].as_str()), (Some("ClusterFirst"), Some("default-scheduler")));
        let c = &p["containers"];
        assert_eq!(c[0]["imagePullPolicy"], "Always", "no tag means latest");
        assert_eq!(c[1]["imagePullPolicy"], "Never");
        assert_eq!(c[2]["imagePullPolicy"], "IfNotPresent", "a digest is pinned");
        assert_eq!(c[0]["ports"][0]["protocol"], "TCP");
        assert_eq!(c[0]["readinessProbe"]["periodSeconds"], 10);
        assert_eq!(c[0]["readinessProbe"]["failureThreshold"], 3);
        assert_eq!(c[0]["readinessProbe"]["httpGet"]["scheme"], "HTTP");
        assert_eq!(c[1]["env"][0]["valueFrom"]["fieldRef"]["apiVersion"], "v1");
        assert_eq!(c[0]["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(p["volumes"][0]["configMap"]["defaultMode"], 420);
        assert_eq!(defaulted("apps/v1", "Deployment", d.clone()), d, "defaulting twice changes nothing");
    }

    #[test]
    fn recreate_gets_no_rolling_update_and_jobs_no_restart_policy() {
        let d = defaulted("apps/v1", "Deployment", json!({"spec": {"strategy": {"type": "Recreate"}}}));
        assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
        let j = defaulted("batch/v1", "Job", json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x:1"}]}}}}));
        assert_eq!((j["spec"]["completions"].clone(), j["spec"]["parallelism"].clone(), j["spec"]["backoffLimit"].clone()), (json!(1), json!(1), json!(6)));
        assert!(j["spec"]["template"]["spec"]["restartPolicy"].is_null(), "a Job's pods must say OnFailure or Never themselves");
        let work_queue = defaulted("batch/v1", "Job", json!({"spec": {"parallelism": 3}}));
        assert!(work_queue["spec"]["completions"].is_null(), "parallelism without completions is a work queue");
        let cj = defaulted("batch/v1", "CronJob", json!({"spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x"}]}}}}}}));
        assert_eq!(cj["spec"]["concurrencyPolicy"], "Allow");
        assert_eq!(cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"], "Always");
    }

    #[test]
    fn services_secrets_and_unknown_kinds() {
        let s = defaulted("v1", "Service", json!({"spec": {"ports": [{"port": 80}, {"port": 53, "protocol": "UDP", "targetPort": "dns"}]}}));
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(s["spec"]["sessionAffinity"], "None");
        assert_eq!(s["spec"]["ports"][0], json!({"port": 80, "protocol": "TCP", "targetPort": 80}));
        assert_eq!(s["spec"]["ports"][1]["targetPort"], "dns");
        assert!(s["spec"]["externalTrafficPolicy"].is_null());
        let np = defaulted("v1", "Service", json!({"spec": {"type": "NodePort", "ports": [{"port": 80}]}}));
        assert_eq!(np["spec"]["externalTrafficPolicy"], "Cluster");
        assert_eq!(defaulted("v1", "Secret", json!({"data": {}}))["type"], "Opaque");
        let s = defaulted("v1", "Secret", json!({"data": {"a": "eA==", "b": "eQ=="}, "stringData": {"b": "hunter2", "c": ""}}));
        assert_eq!(s["data"], json!({"a": "eA==", "b": "aHVudGVyMg==", "c": ""}), "stringData folded into data, winning");
        assert!(s.get("stringData").is_none());
        let odd = defaulted("v1", "Secret", json!({"stringData": {"n": 1}}));
        assert_eq!(odd["stringData"]["n"], 1, "left for validation to refuse");
        let cm = json!({"data": {"a": "b"}});
        assert_eq!(defaulted("v1", "ConfigMap", cm.clone()), cm);
    }
}
