//! The three PATCH flavours kubectl sends: JSON merge patch (RFC 7386), JSON patch
//! (RFC 6902) and strategic merge patch.
//!
//! Strategic merge follows the per-field patch strategies of the built-in Kubernetes types
//! (`patchStrategy` / `patchMergeKey` in their Go definitions), kept in one table
//! (`FIELDS`): lists with a merge key merge element by element (containers by `name`,
//! container ports by `containerPort`, Service ports by `port`, volume mounts by
//! `mountPath`, ...), primitive lists with `patchStrategy: merge` (finalizers) are unions,
//! every other list is replaced. The directives `$patch: replace|delete|merge` (on maps and
//! on list elements), `$deleteFromPrimitiveList/<field>`, `$setElementOrder/<field>` and
//! `$retainKeys` are honoured. A kind whose API group is not a built-in one (no dot in the
//! group, or a group ending in `.k8s.io`) is a custom resource: as upstream, it has no
//! strategies, so maps merge and lists are replaced (JSON merge semantics). An object
//! without `kind` (the apiserver always has one) resolves fields by name alone.
//!
//! Two list orders exist upstream: the apiserver keeps the target's order and appends new
//! elements ([`ListOrder::TargetFirst`]); kustomize (kyaml `merge2` with
//! `ListIncreaseDirection: Prepend`) puts the patch's elements first, then the elements only
//! the target has ([`ListOrder::PatchFirst`]).

use serde_json::{Map, Value};

/// Which patch a request carries, from its content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        let ct = ct.split(';').next().unwrap_or("").trim();
        match ct {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            _ => None,
        }
    }
}

/// Apply `patch` to `target`. A strategic merge takes the strategies of the kind named by
/// `target`'s `apiVersion` and `kind`, in the apiserver's list order.
pub fn apply(kind: PatchType, target: &Value, patch: &Value) -> Result<Value, String> {
    match kind {
        PatchType::Merge => Ok(merge(target, patch)),
        PatchType::Strategic => {
            let gvk = (str_at(target, "apiVersion"), str_at(target, "kind"));
            Ok(strategic_merge(target, patch, gvk.0, gvk.1, ListOrder::TargetFirst)?.unwrap_or(Value::Null))
        }
        PatchType::Json => json_patch(target, patch),
    }
}

fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// RFC 7386 JSON merge patch: objects merge, `null` deletes, everything else replaces.
fn merge(target: &Value, patch: &Value) -> Value {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            let mut out = t.clone();
            for (k, pv) in p {
                if pv.is_null() {
                    out.remove(k);
                } else {
                    let merged = merge(out.get(k).unwrap_or(&Value::Null), pv);
                    out.insert(k.clone(), merged);
                }
            }
            Value::Object(out)
        }
        (_, Value::Object(_)) => merge(&Value::Object(Map::new()), patch),
        (_, p) => p.clone(),
    }
}

/// Where the elements of a merged list go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListOrder {
    /// The target's elements in their order, then new ones from the patch (the apiserver).
    TargetFirst,
    /// The patch's elements in its order, then those only the target has (kustomize).
    PatchFirst,
}

/// How a field of a type merges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Strategy {
    /// A map (or a list of maps, element by element) of the named type.
    Type(&'static str),
    /// A list of maps merged by `key`; elements are of type `item` ("" when they hold no
    /// strategic fields).
    MergeList { key: &'static str, item: &'static str },
    /// A list of scalars merged as a set (`patchStrategy: merge` without a key).
    MergePrimitive,
}
use Strategy::{MergeList, MergePrimitive, Type};

/// `(type, field, strategy)`: every field of the built-in types that is not a plain map or
/// an atomic list, and the paths that lead to them. Type names are Kubernetes' own, except
/// `Workload` (a spec holding a pod `template`) and the `Root:<Kind>` entries, which say
/// what each kind's top-level fields are.
const FIELDS: &[(&str, &str, Strategy)] = &[
    ("ObjectMeta", "finalizers", MergePrimitive),
    ("ObjectMeta", "ownerReferences", MergeList { key: "uid", item: "" }),
    ("PodTemplateSpec", "metadata", Type("ObjectMeta")),
    ("PodTemplateSpec", "spec", Type("PodSpec")),
    ("PodSpec", "containers", MergeList { key: "name", item: "Container" }),
    ("PodSpec", "initContainers", MergeList { key: "name", item: "Container" }),
    ("PodSpec", "ephemeralContainers", MergeList { key: "name", item: "Container" }),
    ("PodSpec", "volumes", MergeList { key: "name", item: "" }),
    ("PodSpec", "imagePullSecrets", MergeList { key: "name", item: "" }),
    ("PodSpec", "hostAliases", MergeList { key: "ip", item: "" }),
    ("PodSpec", "topologySpreadConstraints", MergeList { key: "topologyKey", item: "" }),
    ("PodSpec", "resourceClaims", MergeList { key: "name", item: "" }),
    ("PodSpec", "schedulingGates", MergeList { key: "name", item: "" }),
    ("Container", "env", MergeList { key: "name", item: "" }),
    ("Container", "ports", MergeList { key: "containerPort", item: "" }),
    ("Container", "volumeMounts", MergeList { key: "mountPath", item: "" }),
    ("Container", "volumeDevices", MergeList { key: "devicePath", item: "" }),
    ("PodStatus", "conditions", MergeList { key: "type", item: "" }),
    ("PodStatus", "podIPs", MergeList { key: "ip", item: "" }),
    ("PodStatus", "hostIPs", MergeList { key: "ip", item: "" }),
    ("PodStatus", "resourceClaimStatuses", MergeList { key: "name", item: "" }),
    ("Workload", "template", Type("PodTemplateSpec")),
    ("WorkloadStatus", "conditions", MergeList { key: "type", item: "" }),
    ("JobTemplateSpec", "metadata", Type("ObjectMeta")),
    ("JobTemplateSpec", "spec", Type("Workload")),
    ("CronJobSpec", "jobTemplate", Type("JobTemplateSpec")),
    ("ServiceSpec", "ports", MergeList { key: "port", item: "" }),
    ("NodeSpec", "podCIDRs", MergePrimitive),
    ("NodeStatus", "addresses", MergeList { key: "type", item: "" }),
    ("NodeStatus", "conditions", MergeList { key: "type", item: "" }),
    ("NamespaceStatus", "conditions", MergeList { key: "type", item: "" }),
    ("PersistentVolumeClaimStatus", "conditions", MergeList { key: "type", item: "" }),
    ("Root:Pod", "spec", Type("PodSpec")),
    ("Root:Pod", "status", Type("PodStatus")),
    ("Root:PodTemplate", "template", Type("PodTemplateSpec")),
    ("Root:Deployment", "spec", Type("Workload")),
    ("Root:Deployment", "status", Type("WorkloadStatus")),
    ("Root:ReplicaSet", "spec", Type("Workload")),
    ("Root:ReplicaSet", "status", Type("WorkloadStatus")),
    ("Root:DaemonSet", "spec", Type("Workload")),
    ("Root:DaemonSet", "status", Type("WorkloadStatus")),
    ("Root:StatefulSet", "spec", Type("Workload")),
    ("Root:StatefulSet", "status", Type("WorkloadStatus")),
    ("Root:ReplicationController", "spec", Type("Workload")),
    ("Root:ReplicationController", "status", Type("WorkloadStatus")),
    ("Root:Job", "spec", Type("Workload")),
    ("Root:Job", "status", Type("WorkloadStatus")),
    ("Root:CronJob", "spec", Type("CronJobSpec")),
    ("Root:Service", "spec", Type("ServiceSpec")),
    ("Root:Node", "spec", Type("NodeSpec")),
    ("Root:Node", "status", Type("NodeStatus")),
    ("Root:Namespace", "status", Type("NamespaceStatus")),
    ("Root:PersistentVolumeClaim", "status", Type("PersistentVolumeClaimStatus")),
];

/// The type of an object whose kind is not known: fields resolve by their name alone.
const ANY: &str = "*";

fn strategy(ty: &str, field: &str) -> Option<Strategy> {
    if ty.starts_with("Root:") && field == "metadata" {
        return Some(Type("ObjectMeta"));
    }
    FIELDS.iter().find(|(t, f, _)| (*t == ty || ty == ANY) && *f == field).map(|(_, _, s)| *s)
}

/// Whether `apiVersion` names a built-in API group (which has patch strategies) rather than
/// a custom resource's.
pub fn is_builtin_group(api_version: &str) -> bool {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    !group.contains('.') || group.ends_with(".k8s.io")
}

/// Strategic merge of `patch` into `target`, an object of `kind` in `api_version` (which
/// pick the strategies). `Ok(None)` when the patch deletes the whole object
/// (`$patch: delete` at the top).
pub fn strategic_merge(target: &Value, patch: &Value, api_version: &str, kind: &str, order: ListOrder) -> Result<Option<Value>, String> {
    // A custom resource has no strategies: type "" knows no fields.
    let root = match kind {
        "" => ANY.to_string(),
        _ if is_builtin_group(api_version) => format!("Root:{kind}"),
        _ => String::new(),
    };
    Smp { order }.value(Some(target), patch, &root, "")
}

struct Smp {
    order: ListOrder,
}

const DELETE_FROM: &str = "$deleteFromPrimitiveList/";
const SET_ORDER: &str = "$setElementOrder/";

impl Smp {
    /// Merge `patch` into `target` (absent: nothing there yet) as a value of type `ty`;
    /// `path` is for messages. `None`: the value is deleted.
    fn value(&self, target: Option<&Value>, patch: &Value, ty: &str, path: &str) -> Result<Option<Value>, String> {
        match patch {
            Value::Object(p) => {
                let empty = Map::new();
                let t = match target {
                    Some(Value::Object(t)) => t,
                    _ => &empty,
                };
                self.map(t, p, ty, path)
            }
            Value::Null => Ok(None),
            other => Ok(Some(strip(other))),
        }
    }

    fn map(&self, t: &Map<String, Value>, p: &Map<String, Value>, ty: &str, path: &str) -> Result<Option<Value>, String> {
        match p.get("$patch").map(|d| d.as_str().unwrap_or("")) {
            None | Some("merge") => {}
            Some("replace") => return Ok(Some(strip(&Value::Object(p.clone())))),
            Some("delete") => return Ok(None),
            Some(other) => return Err(format!("{path}: unknown $patch directive {other:?}")),
        }
        let mut out = t.clone();
        let mut orders = Vec::new();
        for (k, pv) in p {
            if let Some(field) = k.strip_prefix(DELETE_FROM) {
                let gone = pv.as_array().ok_or_else(|| format!("{path}/{k}: must be a list"))?;
                if let Some(Value::Array(list)) = out.get_mut(field) {
                    list.retain(|v| !gone.contains(v));
                }
                continue;
            }
            if let Some(field) = k.strip_prefix(SET_ORDER) {
                orders.push((field.to_string(), pv.clone()));
                continue;
            }
            if k == "$patch" || k == "$retainKeys" {
                continue;
            }
            let sub = format!("{path}/{k}");
            let strat = strategy(ty, k);
            let merged = match (strat, pv) {
                (Some(MergeList { key, item }), Value::Array(pl)) => Some(self.merge_list(list_at(&out, k), pl, key, item, &sub)?),
                (Some(MergePrimitive), Value::Array(pl)) => Some(self.union(list_at(&out, k), pl)),
                (Some(Type(child)), _) => self.value(out.get(k), pv, child, &sub)?,
                _ => self.value(out.get(k), pv, "", &sub)?,
            };
            match merged {
                Some(v) => out.insert(k.clone(), v),
                None => out.remove(k),
            };
        }
        for (field, order) in orders {
            let key = match strategy(ty, &field) {
                Some(MergeList { key, .. }) => Some(key),
                _ => None,
            };
            if let (Some(Value::Array(list)), Value::Array(order)) = (out.get_mut(&field), &order) {
                set_order(list, order, key);
            }
        }
        if let Some(Value::Array(keep)) = p.get("$retainKeys") {
            out.retain(|k, _| keep.iter().any(|x| x.as_str() == Some(k)));
        }
        Ok(Some(Value::Object(out)))
    }

    fn merge_list(&self, t: &[Value], p: &[Value], key: &str, item: &str, path: &str) -> Result<Value, String> {
        let directive = |e: &Value| e.get("$patch").and_then(Value::as_str).map(str::to_string);
        if p.iter().any(|e| directive(e).as_deref() == Some("replace")) {
            return Ok(Value::Array(p.iter().filter(|e| directive(e).is_none()).map(strip).collect()));
        }
        let key_of = |e: &Value| e.get(key).cloned();
        let mut rest: Vec<Value> = t.to_vec();
        let mut merged = Vec::new();
        for (i, pe) in p.iter().enumerate() {
            let sub = format!("{path}/{i}");
            let Some(k) = key_of(pe) else {
                if !pe.is_object() {
                    merged.push(pe.clone());
                    continue;
                }
                return Err(format!("{sub}: element does not contain the merge key {key:?}"));
            };
            let pos = rest.iter().position(|e| key_of(e).as_ref() == Some(&k));
            if directive(pe).as_deref() == Some("delete") {
                if let Some(i) = pos {
                    rest.remove(i);
                }
                continue;
            }
            let old = pos.map(|i| &rest[i]);
            let Some(v) = self.value(old, pe, item, &sub)? else { continue };
            match (self.order, pos) {
                (ListOrder::TargetFirst, Some(i)) => rest[i] = v,
                (ListOrder::TargetFirst, None) => merged.push(v),
                (ListOrder::PatchFirst, Some(i)) => {
                    rest.remove(i);
                    merged.push(v);
                }
                (ListOrder::PatchFirst, None) => merged.push(v),
            }
        }
        Ok(Value::Array(match self.order {
            ListOrder::TargetFirst => rest.into_iter().chain(merged).collect(),
            ListOrder::PatchFirst => merged.into_iter().chain(rest).collect(),
        }))
    }

    fn union(&self, t: &[Value], p: &[Value]) -> Value {
        let (first, second) = match self.order {
            ListOrder::TargetFirst => (t, p),
            ListOrder::PatchFirst => (p, t),
        };
        let mut out: Vec<Value> = Vec::new();
        for v in first.iter().chain(second) {
            if !out.contains(v) {
                out.push(v.clone());
            }
        }
        Value::Array(out)
    }
}

fn list_at<'a>(m: &'a Map<String, Value>, k: &str) -> &'a [Value] {
    m.get(k).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// Order `list` by `order` (merge-key values, or the values themselves for a primitive
/// list); elements the order does not name keep their relative order after those it does.
fn set_order(list: &mut [Value], order: &[Value], key: Option<&str>) {
    let rank = |e: &Value| {
        let id = match key {
            Some(k) => e.get(k).cloned().unwrap_or(Value::Null),
            None => e.clone(),
        };
        order.iter().position(|o| match key {
            Some(k) => o.get(k) == Some(&id),
            None => *o == id,
        })
        .unwrap_or(usize::MAX)
    };
    list.sort_by_key(rank);
}

/// `v` without strategic-merge directives (what lands in the result when the target had
/// nothing to merge with).
fn strip(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip).collect()),
        other => other.clone(),
    }
}

/// Resolve an RFC 6901 pointer's parent and last token.
fn split_pointer(path: &str) -> Result<(Vec<String>, String), String> {
    if !path.starts_with('/') {
        return Err(format!("json patch path {path:?} must start with '/'"));
    }
    let mut toks: Vec<String> = path[1..].split('/').map(|t| t.replace("~1", "/").replace("~0", "~")).collect();
    let last = toks.pop().unwrap_or_default();
    Ok((toks, last))
}

fn parent_mut<'a>(doc: &'a mut Value, toks: &[String]) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m.get_mut(t).ok_or_else(|| format!("path segment {t:?} does not exist"))?,
            Value::Array(a) => {
                let i: usize = t.parse().map_err(|_| format!("{t:?} is not an array index"))?;
                a.get_mut(i).ok_or_else(|| format!("index {i} is out of range"))?
            }
            _ => return Err(format!("path segment {t:?} goes through a scalar")),
        };
    }
    Ok(cur)
}

fn json_patch(target: &Value, patch: &Value) -> Result<Value, String> {
    let ops = patch.as_array().ok_or("a json patch must be a list of operations")?;
    let mut doc = target.clone();
    for (n, op) in ops.iter().enumerate() {
        let what = op["op"].as_str().ok_or(format!("operation {n}: op is missing"))?;
        let path = op["path"].as_str().ok_or(format!("operation {n}: path is missing"))?;
        let (toks, last) = split_pointer(path)?;
        let ctx = |e: String| format!("operation {n} ({what} {path}): {e}");
        match what {
            "add" | "replace" => {
                let value = op.get("value").cloned().ok_or_else(|| ctx("value is missing".into()))?;
                let parent = parent_mut(&mut doc, &toks).map_err(ctx)?;
                match parent {
                    Value::Object(m) => {
                        if what == "replace" && !m.contains_key(&last) {
                            return Err(ctx("nothing to replace".into()));
                        }
                        m.insert(last, value);
                    }
                    Value::Array(a) if last == "-" && what == "add" => a.push(value),
                    Value::Array(a) => {
                        let i: usize = last.parse().map_err(|_| ctx(format!("{last:?} is not an array index")))?;
                        if what == "add" && i <= a.len() {
                            a.insert(i, value);
                        } else if what == "replace" && i < a.len() {
                            a[i] = value;
                        } else {
                            return Err(ctx(format!("index {i} is out of range")));
                        }
                    }
                    _ => return Err(ctx("parent is a scalar".into())),
                }
            }
            "remove" => {
                let parent = parent_mut(&mut doc, &toks).map_err(ctx)?;
                let removed = match parent {
                    Value::Object(m) => m.remove(&last).is_some(),
                    Value::Array(a) => match last.parse::<usize>() {
                        Ok(i) if i < a.len() => {
                            a.remove(i);
                            true
                        }
                        _ => false,
                    },
                    _ => false,
                };
                if !removed {
                    return Err(ctx("nothing to remove".into()));
                }
            }
            "test" => {
                let parent = parent_mut(&mut doc, &toks).map_err(ctx)?;
                let cur = match parent {
                    Value::Object(m) => m.get(&last).cloned(),
                    Value::Array(a) => last.parse::<usize>().ok().and_then(|i| a.get(i).cloned()),
                    _ => None,
                };
                if cur.as_ref() != op.get("value") {
                    return Err(ctx("test failed".into()));
                }
            }
            other => return Err(ctx(format!("unsupported op {other:?}"))),
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let t = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        let p = json!({"a": "z", "c": {"f": null}, "l": [3], "n": {"x": 1}});
        assert_eq!(apply(PatchType::Merge, &t, &p).unwrap(), json!({"a": "z", "c": {"d": "e"}, "l": [3], "n": {"x": 1}}));
    }

    #[test]
    fn strategic_merge_merges_named_lists() {
        let t = json!({"spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}});
        let p = json!({"spec": {"containers": [{"name": "b", "image": "b:2"}, {"name": "c", "image": "c:1"}, {"name": "a", "$patch": "delete"}]}});
        let out = apply(PatchType::Strategic, &t, &p).unwrap();
        assert_eq!(out, json!({"spec": {"containers": [{"name": "b", "image": "b:2"}, {"name": "c", "image": "c:1"}]}}));
        // A plain merge patch replaces the list.
        let out = apply(PatchType::Merge, &t, &json!({"spec": {"containers": [{"name": "x"}]}})).unwrap();
        assert_eq!(out["spec"]["containers"], json!([{"name": "x"}]));
    }

    #[test]
    fn json_patch_follows_rfc_6902() {
        let t = json!({"spec": {"replicas": 1, "l": ["a"]}, "metadata": {"labels": {"x/y": "1"}}});
        let p = json!([
            {"op": "test", "path": "/spec/replicas", "value": 1},
            {"op": "replace", "path": "/spec/replicas", "value": 4},
            {"op": "add", "path": "/spec/l/-", "value": "b"},
            {"op": "add", "path": "/spec/l/0", "value": "z"},
            {"op": "remove", "path": "/metadata/labels/x~1y"}
        ]);
        assert_eq!(apply(PatchType::Json, &t, &p).unwrap(), json!({"spec": {"replicas": 4, "l": ["z", "a", "b"]}, "metadata": {"labels": {}}}));
        assert!(apply(PatchType::Json, &t, &json!([{"op": "test", "path": "/spec/replicas", "value": 2}])).unwrap_err().contains("test failed"));
        assert!(apply(PatchType::Json, &t, &json!([{"op": "remove", "path": "/nope"}])).is_err());
        assert!(apply(PatchType::Json, &t, &json!({"op": "add"})).is_err());
        assert_eq!(PatchType::from_content_type("application/strategic-merge-patch+json; charset=utf-8"), Some(PatchType::Strategic));
    }
}

#[cfg(test)]
mod strategic_tests {
    use super::*;
    use serde_json::json;

    fn deploy(spec: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": {"spec": spec}}})
    }

    /// `(name, target pod spec, patch pod spec, expected pod spec)` under the apiserver's order.
    #[test]
    fn strategic_merge_follows_the_field_strategies() {
        let cases = [
            (
                "containers merge by name, env by name, new elements appended",
                json!({"containers": [{"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]}, {"name": "b", "image": "b:1"}]}),
                json!({"containers": [{"name": "a", "env": [{"name": "Y", "value": "3"}, {"name": "Z", "value": "4"}]}, {"name": "c", "image": "c:1"}]}),
                json!({"containers": [{"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "3"}, {"name": "Z", "value": "4"}]}, {"name": "b", "image": "b:1"}, {"name": "c", "image": "c:1"}]}),
            ),
            (
                "ports merge by containerPort, volumeMounts by mountPath",
                json!({"containers": [{"name": "a", "ports": [{"containerPort": 80, "name": "http"}], "volumeMounts": [{"name": "v", "mountPath": "/a"}]}]}),
                json!({"containers": [{"name": "a", "ports": [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 81}], "volumeMounts": [{"name": "w", "mountPath": "/a"}]}]}),
                json!({"containers": [{"name": "a", "ports": [{"containerPort": 80, "name": "http", "protocol": "TCP"}, {"containerPort": 81}], "volumeMounts": [{"name": "w", "mountPath": "/a"}]}]}),
            ),
            (
                "tolerations have no strategy: replaced",
                json!({"tolerations": [{"key": "a"}], "volumes": [{"name": "v", "emptyDir": {}}]}),
                json!({"tolerations": [{"key": "b"}], "volumes": [{"name": "w", "secret": {"secretName": "s"}}]}),
                json!({"tolerations": [{"key": "b"}], "volumes": [{"name": "v", "emptyDir": {}}, {"name": "w", "secret": {"secretName": "s"}}]}),
            ),
            (
                "$patch: delete on an element, null deletes a field",
                json!({"containers": [{"name": "a", "image": "a:1", "args": ["x"]}, {"name": "b"}]}),
                json!({"containers": [{"name": "b", "$patch": "delete"}, {"name": "a", "args": null}]}),
                json!({"containers": [{"name": "a", "image": "a:1"}]}),
            ),
            (
                "$patch: replace on a list element replaces the list",
                json!({"imagePullSecrets": [{"name": "a"}, {"name": "b"}]}),
                json!({"imagePullSecrets": [{"name": "c"}, {"$patch": "replace"}]}),
                json!({"imagePullSecrets": [{"name": "c"}]}),
            ),
            (
                "$patch: replace on a map replaces the map",
                json!({"nodeSelector": {"a": "1", "b": "2"}}),
                json!({"nodeSelector": {"c": "3", "$patch": "replace"}}),
                json!({"nodeSelector": {"c": "3"}}),
            ),
            (
                "$retainKeys drops the keys it does not list",
                json!({"volumes": [{"name": "v", "emptyDir": {}}]}),
                json!({"volumes": [{"name": "v", "hostPath": {"path": "/x"}, "$retainKeys": ["name", "hostPath"]}]}),
                json!({"volumes": [{"name": "v", "hostPath": {"path": "/x"}}]}),
            ),
            (
                "$setElementOrder orders the merged list",
                json!({"containers": [{"name": "a"}, {"name": "b"}]}),
                json!({"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}], "containers": [{"name": "a", "image": "x"}]}),
                json!({"containers": [{"name": "b"}, {"name": "a", "image": "x"}]}),
            ),
        ];
        for (name, t, p, want) in cases {
            let out = apply(PatchType::Strategic, &deploy(t), &deploy(p)).unwrap();
            assert_eq!(out["spec"]["template"]["spec"], want, "{name}");
        }
    }

    #[test]
    fn finalizers_merge_and_delete_from_primitive_list() {
        let t = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "finalizers": ["a", "b"]}});
        let p = json!({"metadata": {"finalizers": ["c", "a"], "$deleteFromPrimitiveList/finalizers": ["b"]}});
        assert_eq!(apply(PatchType::Strategic, &t, &p).unwrap()["metadata"]["finalizers"], json!(["a", "c"]));
    }

    #[test]
    fn service_ports_merge_by_port() {
        let t = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 80, "name": "http"}]}});
        let p = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}]}});
        assert_eq!(apply(PatchType::Strategic, &t, &p).unwrap()["spec"]["ports"], json!([{"port": 80, "name": "http", "targetPort": 8080}, {"port": 443}]));
    }

    #[test]
    fn custom_resources_replace_lists() {
        let t = json!({"apiVersion": "example.com/v1", "kind": "Foo", "metadata": {"name": "f", "finalizers": ["a"]}, "spec": {"containers": [{"name": "a"}]}});
        let p = json!({"metadata": {"finalizers": ["b"]}, "spec": {"containers": [{"name": "b"}]}});
        let out = apply(PatchType::Strategic, &t, &p).unwrap();
        assert_eq!(out["spec"]["containers"], json!([{"name": "b"}]));
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
        assert!(is_builtin_group("apps/v1") && is_builtin_group("v1") && is_builtin_group("networking.k8s.io/v1") && !is_builtin_group("example.com/v1"));
    }

    #[test]
    fn kustomize_order_puts_patch_elements_first() {
        let t = deploy(json!({"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}));
        let p = deploy(json!({"containers": [{"name": "c", "image": "c:2"}, {"name": "new"}, {"name": "b", "$patch": "delete"}]}));
        let out = strategic_merge(&t, &p, "apps/v1", "Deployment", ListOrder::PatchFirst).unwrap().unwrap();
        assert_eq!(out["spec"]["template"]["spec"]["containers"], json!([{"name": "c", "image": "c:2"}, {"name": "new"}, {"name": "a"}]));
        let gone = strategic_merge(&t, &json!({"$patch": "delete"}), "apps/v1", "Deployment", ListOrder::PatchFirst).unwrap();
        assert_eq!(gone, None);
    }
}
