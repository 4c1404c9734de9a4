//! Server-side printing: the columns `kubectl get` shows for each kind, computed from the
//! object alone (pure functions, so kappctl can print the same way).

use serde_json::{json, Value};

/// One column: its header, Kubernetes type ("string", "integer", "date"), and priority
/// (0 always shown, 1 only with `-o wide`).
pub struct Column {
    pub name: &'static str,
    pub kind: &'static str,
    pub priority: u8,
}

const fn col(name: &'static str, kind: &'static str, priority: u8) -> Column {
    Column { name, kind, priority }
}

/// The columns of `kind`.
pub fn columns(kind: &str) -> Vec<Column> {
    let mut c = vec![col("Name", "string", 0)];
    c.extend(match kind {
        "Pod" => vec![col("Ready", "string", 0), col("Status", "string", 0), col("Restarts", "string", 0), col("Age", "string", 0), col("IP", "string", 1), col("Node", "string", 1)],
        "Deployment" => vec![col("Ready", "string", 0), col("Up-to-date", "integer", 0), col("Available", "integer", 0), col("Age", "string", 0)],
        "ReplicaSet" => vec![col("Desired", "integer", 0), col("Current", "integer", 0), col("Ready", "integer", 0), col("Age", "string", 0)],
        "StatefulSet" => vec![col("Ready", "string", 0), col("Age", "string", 0)],
        "DaemonSet" => vec![col("Desired", "integer", 0), col("Current", "integer", 0), col("Ready", "integer", 0), col("Age", "string", 0)],
        "Service" => vec![col("Type", "string", 0), col("Cluster-IP", "string", 0), col("External-IP", "string", 0), col("Port(s)", "string", 0), col("Age", "string", 0)],
        "Node" => vec![col("Status", "string", 0), col("Roles", "string", 0), col("Age", "string", 0), col("Version", "string", 0)],
        "Namespace" => vec![col("Status", "string", 0), col("Age", "string", 0)],
        "ConfigMap" => vec![col("Data", "integer", 0), col("Age", "string", 0)],
        "Secret" => vec![col("Type", "string", 0), col("Data", "integer", 0), col("Age", "string", 0)],
        "Job" => vec![col("Completions", "string", 0), col("Age", "string", 0)],
        "CronJob" => vec![col("Schedule", "string", 0), col("Suspend", "string", 0), col("Active", "integer", 0), col("Age", "string", 0)],
        "GitSync" => vec![col("State", "string", 0), col("Applied", "string", 0), col("Fetched", "string", 0), col("Message", "string", 0), col("Age", "string", 0), col("URL", "string", 1)],
        _ => vec![col("Age", "string", 0)],
    });
    c
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

fn len(v: &Value) -> usize {
    v.as_object().map_or(0, |m| m.len())
}

/// kubectl's short age: `45s`, `12m`, `5h`, `3d`, `2y`.
pub fn human_age(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 2 => format!("{}m", s / 60),
        s if s < 86_400 * 2 => format!("{}h", s / 3600),
        s if s < 86_400 * 365 * 2 => format!("{}d", s / 86_400),
        s => format!("{}y", s / (86_400 * 365)),
    }
}

/// Seconds since the Unix epoch of an RFC 3339 UTC time stamp (`2026-11-21T10:00:00Z`).
pub fn parse_rfc3339(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let n = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d, hh, mm, ss) = (n(0..4)?, n(5..7)?, n(8..10)?, n(11..13)?, n(14..16)?, n(17..19)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Now as RFC 3339 in UTC, seconds precision (Kubernetes' `metav1.Time`).
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format_rfc3339(i64::try_from(now).unwrap_or(0))
}

/// Unix seconds as RFC 3339 in UTC (`2026-11-21T10:00:00Z`).
pub fn format_rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The cells of one row for `obj` at time `now` (Unix seconds).
pub fn cells(obj: &Value, now: i64) -> Vec<Value> {
    let age = obj["metadata"]["creationTimestamp"].as_str().and_then(parse_rfc3339).map_or("<unknown>".to_string(), |t| human_age(now - t));
    let name = json!(s(&obj["metadata"]["name"]));
    let spec = &obj["spec"];
    let st = &obj["status"];
    let rest: Vec<Value> = match obj["kind"].as_str().unwrap_or("") {
        "Pod" => {
            let total = spec["containers"].as_array().map_or(0, Vec::len);
            let statuses = st["containerStatuses"].as_array().cloned().unwrap_or_default();
            let ready = statuses.iter().filter(|c| c["ready"].as_bool() == Some(true)).count();
            let restarts: i64 = statuses.iter().map(|c| int(&c["restartCount"])).sum();
            let waiting = statuses.iter().find_map(|c| c["state"]["waiting"]["reason"].as_str().map(String::from));
            let phase = waiting.unwrap_or_else(|| st["phase"].as_str().unwrap_or("Pending").to_string());
            let status = if obj["metadata"]["deletionTimestamp"].is_string() { "Terminating".to_string() } else { phase };
            let ip = st["podIP"].as_str().unwrap_or("<none>");
            let node = spec["nodeName"].as_str().unwrap_or("<none>");
            vec![json!(format!("{ready}/{total}")), json!(status), json!(restarts.to_string()), json!(age), json!(ip), json!(node)]
        }
        "Deployment" => vec![
            json!(format!("{}/{}", int(&st["readyReplicas"]), spec["replicas"].as_i64().unwrap_or(1))),
            json!(int(&st["updatedReplicas"])),
            json!(int(&st["availableReplicas"])),
            json!(age),
        ],
        "ReplicaSet" | "DaemonSet" => {
            let (desired, current) = if obj["kind"] == "DaemonSet" {
                (int(&st["desiredNumberScheduled"]), int(&st["currentNumberScheduled"]))
            } else {
                (spec["replicas"].as_i64().unwrap_or(1), int(&st["replicas"]))
            };
            let ready = if obj["kind"] == "DaemonSet" { int(&st["numberReady"]) } else { int(&st["readyReplicas"]) };
            vec![json!(desired), json!(current), json!(ready), json!(age)]
        }
        "StatefulSet" => vec![json!(format!("{}/{}", int(&st["readyReplicas"]), spec["replicas"].as_i64().unwrap_or(1))), json!(age)],
        "Service" => {
            let ports: Vec<String> = spec["ports"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            let proto = p["protocol"].as_str().unwrap_or("TCP");
                            match p["nodePort"].as_i64() {
                                Some(np) => format!("{}:{np}/{proto}", int(&p["port"])),
                                None => format!("{}/{proto}", int(&p["port"])),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            vec![
                json!(spec["type"].as_str().unwrap_or("ClusterIP")),
                json!(spec["clusterIP"].as_str().unwrap_or("<none>")),
                json!("<none>"),
                json!(if ports.is_empty() { "<none>".to_string() } else { ports.join(",") }),
                json!(age),
            ]
        }
        "Node" => {
            let ready = st["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "Ready")).map(|c| c["status"] == "True");
            let mut status = match ready {
                Some(true) => "Ready".to_string(),
                Some(false) => "NotReady".to_string(),
                None => "Unknown".to_string(),
            };
            if spec["unschedulable"].as_bool() == Some(true) {
                status.push_str(",SchedulingDisabled");
            }
            let roles: Vec<String> = obj["metadata"]["labels"]
                .as_object()
                .map(|l| l.keys().filter_map(|k| k.strip_prefix("node-role.kubernetes.io/").map(String::from)).collect())
                .unwrap_or_default();
            vec![json!(status), json!(if roles.is_empty() { "<none>".into() } else { roles.join(",") }), json!(age), json!(s(&st["nodeInfo"]["kubeletVersion"]))]
        }
        "Namespace" => vec![json!(st["phase"].as_str().unwrap_or("Active")), json!(age)],
        "ConfigMap" => vec![json!(len(&obj["data"]) + len(&obj["binaryData"])), json!(age)],
        "Secret" => vec![json!(obj["type"].as_str().unwrap_or("Opaque")), json!(len(&obj["data"])), json!(age)],
        "Job" => vec![json!(format!("{}/{}", int(&st["succeeded"]), spec["completions"].as_i64().unwrap_or(1))), json!(age)],
        "CronJob" => vec![
            json!(s(&spec["schedule"])),
            json!(if spec["suspend"].as_bool() == Some(true) { "True" } else { "False" }),
            json!(st["active"].as_array().map_or(0, Vec::len)),
            json!(age),
        ],
        "GitSync" => {
            let short = |c: &Value| c["sha"].as_str().map_or("<none>".to_string(), |sha| sha.chars().take(8).collect());
            vec![json!(s(&st["state"])), json!(short(&st["appliedCommit"])), json!(short(&st["fetchedCommit"])), json!(s(&st["message"])), json!(age), json!(s(&spec["url"]))]
        }
        _ => vec![json!(age)],
    };
    let mut out = vec![name];
    out.extend(rest);
    out
}

/// A `meta.k8s.io/v1` Table of `objects` (all of one kind), as `kubectl get` asks for.
pub fn table(kind: &str, objects: &[Value], resource_version: &str, continue_token: Option<&str>, now: i64) -> Value {
    let defs: Vec<Value> = columns(kind)
        .iter()
        .map(|c| json!({"name": c.name, "type": c.kind, "format": if c.name == "Name" { "name" } else { "" }, "description": "", "priority": c.priority}))
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            json!({
                "cells": cells(o, now),
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"].clone()},
            })
        })
        .collect();
    let mut meta = json!({"resourceVersion": resource_version});
    if let Some(c) = continue_token {
        meta["continue"] = json!(c);
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": defs, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_match_the_columns_for_every_kind() {
        let now = parse_rfc3339("2026-11-21T12:00:00Z").unwrap();
        let meta = json!({"name": "x", "creationTimestamp": "2026-11-21T11:00:00Z"});
        for kind in ["Pod", "Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Service", "Node", "Namespace", "ConfigMap", "Secret", "Job", "CronJob", "Lease"] {
            let obj = json!({"kind": kind, "metadata": meta});
            assert_eq!(cells(&obj, now).len(), columns(kind).len(), "{kind}");
        }
        let d = json!({"kind": "Deployment", "metadata": meta, "spec": {"replicas": 3}, "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
        assert_eq!(cells(&d, now), vec![json!("x"), json!("2/3"), json!(3), json!(2), json!("60m")]);
        let p = json!({"kind": "Pod", "metadata": meta, "spec": {"containers": [{}, {}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [{"ready": true, "restartCount": 1}, {"ready": false, "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        assert_eq!(cells(&p, now), vec![json!("x"), json!("1/2"), json!("CrashLoopBackOff"), json!("3"), json!("60m"), json!("10.0.0.5"), json!("n1")]);
    }

    #[test]
    fn ages_and_times() {
        assert_eq!(human_age(5), "5s");
        assert_eq!(human_age(600), "10m");
        assert_eq!(human_age(3 * 3600), "3h");
        assert_eq!(human_age(5 * 86_400), "5d");
        assert_eq!(parse_rfc3339("1970-01-02T00:00:01Z"), Some(86_401));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert_eq!(parse_rfc3339("bad"), None);
    }
}
