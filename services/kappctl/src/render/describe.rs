//! `kappctl describe` and `kappctl events` as text: an object's summary (what matters for its
//! kind, then its conditions) and the events about it.

use kapp_api::table::{human_age, parse_rfc3339};
use serde_json::Value;

use super::get::tone_of;
use super::style::{clip, table, Cell, Style, Tone};
use crate::view::{event_view, pod_problem};

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn age(now: i64, t: &str) -> String {
    parse_rfc3339(t).map_or("<unknown>".into(), |t| human_age(now - t))
}

/// `key=value` pairs of a string map, one per line after the first.
fn pairs(m: &Value) -> Vec<String> {
    let mut v: Vec<String> = m.as_object().into_iter().flatten().map(|(k, v)| format!("{k}={}", s(v))).collect();
    v.sort();
    v
}

/// Aligned `Key:  value` lines.
struct Fields {
    out: String,
    indent: usize,
}

const KEY_WIDTH: usize = 14;

impl Fields {
    fn field(&mut self, key: &str, value: impl AsRef<str>) {
        let pad = " ".repeat(self.indent);
        let value = value.as_ref();
        self.out.push_str(&format!("{pad}{:<w$}{}\n", format!("{key}:"), if value.is_empty() { "<none>" } else { value }, w = KEY_WIDTH));
    }

    fn list(&mut self, key: &str, values: &[String]) {
        if values.is_empty() {
            self.field(key, "<none>");
            return;
        }
        self.field(key, &values[0]);
        let pad = " ".repeat(self.indent + KEY_WIDTH);
        for v in &values[1..] {
            self.out.push_str(&format!("{pad}{v}\n"));
        }
    }

    fn heading(&mut self, key: &str) {
        self.out.push_str(&format!("{}{key}:\n", " ".repeat(self.indent)));
    }

    fn raw(&mut self, text: &str) {
        self.out.push_str(text);
    }
}

/// An object's summary followed by its events.
pub fn describe(obj: &Value, events: &[Value], now: i64, style: Style) -> String {
    let meta = &obj["metadata"];
    let kind = s(&obj["kind"]);
    let mut f = Fields { out: String::new(), indent: 0 };
    f.field("Name", s(&meta["name"]));
    if meta["namespace"].is_string() {
        f.field("Namespace", s(&meta["namespace"]));
    }
    f.field("Kind", format!("{kind} ({})", s(&obj["apiVersion"])));
    f.list("Labels", &pairs(&meta["labels"]));
    f.list("Annotations", &pairs(&meta["annotations"]).iter().map(|a| clip(a, 120)).collect::<Vec<_>>());
    let created = s(&meta["creationTimestamp"]);
    f.field("Created", if created.is_empty() { String::new() } else { format!("{created} ({} ago)", age(now, &created)) });
    if meta["deletionTimestamp"].is_string() {
        f.field("Deleting", format!("since {}", s(&meta["deletionTimestamp"])));
    }
    let owners: Vec<String> = meta["ownerReferences"].as_array().into_iter().flatten().map(|o| format!("{}/{}", s(&o["kind"]), s(&o["name"]))).collect();
    if !owners.is_empty() {
        f.list("Controlled By", &owners);
    }
    let spec = &obj["spec"];
    let st = &obj["status"];
    match kind.as_str() {
        "Pod" => pod(&mut f, obj, style),
        "Deployment" | "StatefulSet" | "ReplicaSet" => {
            let desired = spec["replicas"].as_i64().unwrap_or(1);
            f.field(
                "Replicas",
                format!("{desired} desired | {} updated | {} total | {} ready | {} available", st["updatedReplicas"].as_i64().unwrap_or(0), st["replicas"].as_i64().unwrap_or(0), st["readyReplicas"].as_i64().unwrap_or(0), st["availableReplicas"].as_i64().unwrap_or(0)),
            );
            f.list("Selector", &pairs(&spec["selector"]["matchLabels"]));
            template(&mut f, &spec["template"]);
        }
        "DaemonSet" => {
            f.field("Pods", format!("{} desired | {} current | {} ready | {} updated", st["desiredNumberScheduled"].as_i64().unwrap_or(0), st["currentNumberScheduled"].as_i64().unwrap_or(0), st["numberReady"].as_i64().unwrap_or(0), st["updatedNumberScheduled"].as_i64().unwrap_or(0)));
            f.list("Selector", &pairs(&spec["selector"]["matchLabels"]));
            template(&mut f, &spec["template"]);
        }
        "Job" => {
            f.field("Completions", format!("{}/{}", st["succeeded"].as_i64().unwrap_or(0), spec["completions"].as_i64().unwrap_or(1)));
            f.field("Pods", format!("{} active | {} succeeded | {} failed", st["active"].as_i64().unwrap_or(0), st["succeeded"].as_i64().unwrap_or(0), st["failed"].as_i64().unwrap_or(0)));
            template(&mut f, &spec["template"]);
        }
        "Service" => {
            f.field("Type", spec["type"].as_str().unwrap_or("ClusterIP"));
            f.field("Cluster IP", s(&spec["clusterIP"]));
            let ports: Vec<String> = spec["ports"].as_array().into_iter().flatten().map(|p| format!("{} {}/{} -> {}", p["name"].as_str().unwrap_or("<unnamed>"), s(&p["port"]), p["protocol"].as_str().unwrap_or("TCP"), s(&p["targetPort"]))).collect();
            f.list("Ports", &ports);
            f.list("Selector", &pairs(&spec["selector"]));
        }
        "Node" => node(&mut f, obj),
        "GitSync" => gitsync(&mut f, obj, now, style),
        "ConfigMap" => {
            let keys: Vec<String> = obj["data"].as_object().into_iter().flatten().map(|(k, v)| format!("{k} ({} bytes)", v.as_str().map_or(0, str::len))).collect();
            f.list("Data", &keys);
        }
        "Secret" => {
            f.field("Type", obj["type"].as_str().unwrap_or("Opaque"));
            let keys: Vec<String> = obj["data"].as_object().into_iter().flatten().map(|(k, _)| k.clone()).collect();
            if obj.get("data").is_none() {
                f.field("Data", "hidden (viewers do not see Secret data)");
            } else {
                f.list("Data", &keys);
            }
        }
        _ => {
            for (key, v) in [("Spec", spec), ("Status", st)] {
                if v.is_object() {
                    f.heading(key);
                    for line in serde_yaml::to_string(v).unwrap_or_default().lines() {
                        f.raw(&format!("  {line}\n"));
                    }
                }
            }
        }
    }
    if let Some(conds) = st["conditions"].as_array().filter(|c| !c.is_empty()) {
        f.heading("Conditions");
        let rows: Vec<Vec<Cell>> = conds
            .iter()
            .map(|c| {
                let status = s(&c["status"]);
                let bad_when_true = matches!(s(&c["type"]).as_str(), "MemoryPressure" | "DiskPressure" | "PIDPressure" | "NetworkUnavailable" | "Failed" | "ReplicaFailure");
                let tone = match (status.as_str(), bad_when_true) {
                    ("True", false) | ("False", true) => Tone::Good,
                    ("True", true) | ("False", false) => Tone::Bad,
                    _ => Tone::Warn,
                };
                vec![s(&c["type"]).into(), Cell::new(status, tone), s(&c["reason"]).into(), clip(&s(&c["message"]), 100).into()]
            })
            .collect();
        f.raw(&table(style, "  ", &["TYPE", "STATUS", "REASON", "MESSAGE"], &rows));
    }
    f.raw(&events_section(events, now, style));
    f.out
}

fn pod(f: &mut Fields, obj: &Value, style: Style) {
    let spec = &obj["spec"];
    let st = &obj["status"];
    f.field("Node", s(&spec["nodeName"]));
    let (status, why) = match pod_problem(obj) {
        Some(p) => (p.reason, p.message),
        None => (st["phase"].as_str().unwrap_or("Pending").to_string(), String::new()),
    };
    f.field("Status", style.paint(tone_of(&status), &status));
    if !why.is_empty() {
        f.field("Reason", clip(&why, 200));
    }
    f.field("IP", s(&st["podIP"]));
    let statuses: Vec<&Value> = st["initContainerStatuses"].as_array().into_iter().chain(st["containerStatuses"].as_array()).flatten().collect();
    f.heading("Containers");
    for c in spec["initContainers"].as_array().into_iter().flatten().chain(spec["containers"].as_array().into_iter().flatten()) {
        let name = s(&c["name"]);
        let cs = statuses.iter().find(|x| x["name"] == c["name"]);
        let state = cs.map(|cs| {
            let state = &cs["state"];
            if state["running"].is_object() {
                format!("Running since {}", s(&state["running"]["startedAt"]))
            } else if state["waiting"].is_object() {
                format!("Waiting: {}", state["waiting"]["reason"].as_str().unwrap_or(""))
            } else if state["terminated"].is_object() {
                format!("Terminated: {} (exit code {})", state["terminated"]["reason"].as_str().unwrap_or(""), s(&state["terminated"]["exitCode"]))
            } else {
                "Unknown".into()
            }
        });
        f.raw(&format!("  {name}:\n"));
        let mut inner = Fields { out: String::new(), indent: 4 };
        inner.field("Image", s(&c["image"]));
        inner.field("State", state.unwrap_or_else(|| "not started".into()));
        if let Some(cs) = cs {
            let last = &cs["lastState"]["terminated"];
            if last.is_object() {
                inner.field("Last State", format!("Terminated: {} (exit code {}) at {}", last["reason"].as_str().unwrap_or(""), s(&last["exitCode"]), s(&last["finishedAt"])));
            }
            inner.field("Ready", if cs["ready"].as_bool() == Some(true) { "True" } else { "False" });
            inner.field("Restarts", s(&cs["restartCount"]));
        }
        f.raw(&inner.out);
    }
}

fn template(f: &mut Fields, t: &Value) {
    let images: Vec<String> = t["spec"]["containers"].as_array().into_iter().flatten().map(|c| format!("{}: {}", s(&c["name"]), s(&c["image"]))).collect();
    f.list("Containers", &images);
}

fn node(f: &mut Fields, obj: &Value) {
    let meta = &obj["metadata"];
    let roles: Vec<String> = meta["labels"].as_object().into_iter().flatten().filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/").map(String::from)).collect();
    f.field("Roles", roles.join(","));
    f.field("Schedulable", if obj["spec"]["unschedulable"].as_bool() == Some(true) { "no (cordoned)" } else { "yes" });
    let taints: Vec<String> = obj["spec"]["taints"].as_array().into_iter().flatten().map(|t| format!("{}={}:{}", s(&t["key"]), s(&t["value"]), s(&t["effect"]))).collect();
    f.list("Taints", &taints);
    let addrs: Vec<String> = obj["status"]["addresses"].as_array().into_iter().flatten().map(|a| format!("{}: {}", s(&a["type"]), s(&a["address"]))).collect();
    f.list("Addresses", &addrs);
    let info = &obj["status"]["nodeInfo"];
    f.field("Version", s(&info["kubeletVersion"]));
    f.field("OS Image", s(&info["osImage"]));
    f.field("Kernel", s(&info["kernelVersion"]));
    f.field("Runtime", s(&info["containerRuntimeVersion"]));
    for key in ["capacity", "allocatable"] {
        let v = pairs(&obj["status"][key]);
        if !v.is_empty() {
            f.list(&format!("{}{}", key[..1].to_uppercase(), &key[1..]), &v);
        }
    }
}

fn gitsync(f: &mut Fields, obj: &Value, now: i64, style: Style) {
    let spec = &obj["spec"];
    let st = &obj["status"];
    f.field("Repository", s(&spec["url"]));
    let r = &spec["ref"];
    let reference = ["branch", "tag", "commit"].iter().find_map(|k| r[*k].as_str().map(|v| format!("{k} {v}"))).unwrap_or_else(|| "HEAD".into());
    f.field("Ref", reference);
    if spec["path"].is_string() {
        f.field("Path", s(&spec["path"]));
    }
    let state = s(&st["state"]);
    f.field("State", style.paint(tone_of(&state), &state));
    if st["message"].is_string() {
        f.field("Message", s(&st["message"]));
    }
    for (key, label) in [("appliedCommit", "Applied"), ("fetchedCommit", "Fetched")] {
        let c = &st[key];
        if c.is_object() {
            let t = s(&c["time"]);
            f.field(label, format!("{} {} ({}, {} ago)", s(&c["sha"]).chars().take(12).collect::<String>(), s(&c["subject"]), s(&c["author"]), age(now, &t)));
        }
    }
    let n = &st["counts"];
    if n.is_object() {
        f.field("Last Apply", format!("{} objects: {} created, {} updated, {} pruned, {} unchanged", s(&n["objects"]), s(&n["created"]), s(&n["updated"]), s(&n["pruned"]), s(&n["unchanged"])));
    }
    if let Some(errors) = st["errors"].as_array().filter(|e| !e.is_empty()) {
        f.heading("Errors");
        for e in errors {
            match serde_json::from_value::<kapp_api::kapp::SyncError>(e.clone()) {
                Ok(e) => f.raw(&format!("  {}\n", style.paint(Tone::Bad, &crate::view::sync_error_line(&e)))),
                Err(_) => f.raw(&format!("  {e}\n")),
            }
        }
    }
}

/// The `Events:` part of describe.
fn events_section(events: &[Value], now: i64, style: Style) -> String {
    if events.is_empty() {
        return "Events:        <none>\n".into();
    }
    let mut out = "Events:\n".to_string();
    out.push_str(&events_table(events, now, style, false, "  "));
    out
}

/// Events oldest first, as `kubectl events` lists them.
pub fn events_table(events: &[Value], now: i64, style: Style, with_namespace: bool, indent: &str) -> String {
    let mut sorted: Vec<(&Value, crate::view::EventView)> = events.iter().map(|e| (e, event_view(e))).collect();
    sorted.sort_by_key(|(_, v)| parse_rfc3339(&v.last_seen));
    let rows: Vec<Vec<Cell>> = sorted
        .iter()
        .map(|(e, v)| {
            let ty = e["type"].as_str().unwrap_or("Normal");
            let mut row: Vec<Cell> = Vec::new();
            if with_namespace {
                row.push(v.namespace.as_str().into());
            }
            row.push(age(now, &v.last_seen).into());
            row.push(Cell::new(ty, if ty == "Warning" { Tone::Warn } else { Tone::Plain }));
            row.push(v.reason.as_str().into());
            row.push(v.object.as_str().into());
            let msg = clip(&v.message, 160);
            row.push((if v.count > 1 { format!("{msg} (x{})", v.count) } else { msg }).into());
            row
        })
        .collect();
    let mut headers = vec![];
    if with_namespace {
        headers.push("NAMESPACE");
    }
    headers.extend(["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]);
    table(style, indent, &headers, &rows)
}
