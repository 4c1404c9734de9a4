//! The pure part of gitops: from the rendered documents of a commit and the live managed
//! objects, what to create, update and prune. No IO.

use std::collections::{BTreeMap, HashMap};

use kapp_api::kapp::{ApplyCounts, SyncError, COMMIT_ANNOTATION, MANAGED_BY_LABEL, SOURCE_ANNOTATION};
use kapp_api::Resource;
use serde_json::{json, Value};

/// One object the commit wants, resolved and validated.
#[derive(Clone, Debug)]
pub struct Desired {
    pub file: String,
    pub document: usize,
    pub res: &'static Resource,
    pub namespace: String,
    pub name: String,
    /// The manifest with gitops' label and source annotation added.
    pub object: Value,
}

/// `Kind/namespace/name` (`Kind/name` for cluster-scoped kinds): how objects are told apart.
pub fn object_id(res: &Resource, namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        format!("{}/{name}", res.kind)
    } else {
        format!("{}/{namespace}/{name}", res.kind)
    }
}

impl Desired {
    pub fn id(&self) -> String {
        object_id(self.res, &self.namespace, &self.name)
    }
}

/// Where a document sits in the apply order: Namespaces; then ServiceAccounts, ConfigMaps,
/// Secrets (and cluster settings); Services; then workloads and the rest.
pub fn rank(kind: &str) -> u8 {
    match kind {
        "Namespace" => 0,
        "ClusterSettings" | "ServiceAccount" | "ConfigMap" | "Secret" | "PersistentVolumeClaim" => 1,
        "Service" | "Endpoints" | "EndpointSlice" => 2,
        _ => 3,
    }
}

/// Resolve and validate every document; all errors at once, each naming file, document,
/// object and field. Adds the managed-by label and the source annotation.
pub fn prepare(docs: Vec<kapp_render::Document>, sync_name: &str) -> Result<Vec<Desired>, Vec<SyncError>> {
    let mut out: Vec<Desired> = Vec::with_capacity(docs.len());
    let mut errors = Vec::new();
    let mut seen: HashMap<String, (String, usize)> = HashMap::new();
    for d in docs {
        let file = d.file.to_string_lossy().into_owned();
        let mut obj = d.object;
        let api_version = obj["apiVersion"].as_str().unwrap_or("").to_string();
        let kind = obj["kind"].as_str().unwrap_or("").to_string();
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        let err = |object: String, field: &str, reason: String| SyncError { file: file.clone(), document: Some(d.index), object, field: field.into(), reason };
        let Some(res) = kapp_api::by_kind(&api_version, &kind) else {
            errors.push(err(format!("{kind}/{name}"), "kind", format!("no resource serves apiVersion {api_version:?} kind {kind:?}")));
            continue;
        };
        if res.kind == "GitSync" {
            errors.push(err(format!("GitSync/{name}"), "kind", "GitSync objects are written by gitops itself, not from git".into()));
            continue;
        }
        let mut namespace = obj["metadata"]["namespace"].as_str().unwrap_or("").to_string();
        if res.namespaced && namespace.is_empty() {
            namespace = "default".into();
            obj["metadata"]["namespace"] = json!(namespace);
        }
        if !res.namespaced && !namespace.is_empty() {
            errors.push(err(format!("{kind}/{name}"), "metadata.namespace", format!("{kind} is cluster-scoped and takes no namespace")));
            continue;
        }
        let id = object_id(res, &namespace, &name);
        if let Err(fields) = kapp_api::validate(res, &obj) {
            errors.extend(fields.into_iter().map(|f| err(id.clone(), &f.field, f.to_string())));
            continue;
        }
        if let Some((f, i)) = seen.get(&id) {
            errors.push(err(id.clone(), "metadata.name", format!("{id} is also defined in {f} (document {i})")));
            continue;
        }
        seen.insert(id, (file.clone(), d.index));
        let meta = obj["metadata"].as_object_mut().expect("validated: metadata is a map");
        for k in ["resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"] {
            meta.remove(k);
        }
        let labels = meta.entry("labels").or_insert_with(|| json!({}));
        labels[MANAGED_BY_LABEL] = json!(sync_name);
        let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
        annotations[SOURCE_ANNOTATION] = json!(format!("{file}#{}", d.index));
        if let Some(a) = annotations.as_object_mut() {
            a.remove(COMMIT_ANNOTATION);
        }
        out.push(Desired { file, document: d.index, res, namespace, name, object: obj });
    }
    if errors.is_empty() {
        out.sort_by(|a, b| (rank(a.res.kind), a.id()).cmp(&(rank(b.res.kind), b.id())));
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Whether `live` holds everything `want` says (maps: every key of `want`, recursively;
/// lists: same length, element by element; scalars: equal). Fields the server or other
/// components add (defaults, status, uid...) do not count as differences.
pub fn contains(live: &Value, want: &Value) -> bool {
    match (live, want) {
        (Value::Object(l), Value::Object(w)) => w.iter().all(|(k, wv)| match l.get(k) {
            Some(lv) => contains(lv, wv),
            None => says_nothing(wv),
        }),
        (Value::Array(l), Value::Array(w)) => l.len() == w.len() && l.iter().zip(w).all(|(lv, wv)| contains(lv, wv)),
        (Value::Number(l), Value::Number(w)) => l == w || l.as_f64() == w.as_f64(),
        _ => live == want,
    }
}

/// Whether `v` says nothing (absent, null, `{}` or `[]`).
fn says_nothing(v: &Value) -> bool {
    v.is_null() || v.as_object().is_some_and(|m| m.is_empty()) || v.as_array().is_some_and(|a| a.is_empty())
}

/// Whether the live object matches the desired one: `contains` for everything, except
/// that labels and annotations must match exactly (one removed in git is removed live
/// too), the commit annotation is ignored, and so is status for kinds whose status is
/// written elsewhere. Runs for every managed object at every poll, so it compares in
/// place rather than copying objects.
pub fn in_sync(res: &Resource, live: &Value, want: &Value) -> bool {
    // A Secret's stringData is stored folded into data: compare what would be stored.
    let folded;
    let want = if res.kind == "Secret" && want.get("stringData").is_some() {
        let mut w = want.clone();
        kapp_api::defaults::apply(res, &mut w);
        folded = w;
        &folded
    } else {
        want
    };
    let (Some(l), Some(w)) = (live.as_object(), want.as_object()) else { return false };
    let skip_status = res.has(kapp_api::Subresource::Status);
    let body = w.iter().filter(|(k, _)| *k != "metadata" && !(skip_status && *k == "status")).all(|(k, wv)| l.get(k).map_or_else(|| says_nothing(wv), |lv| contains(lv, wv)));
    body && metadata_in_sync(&live["metadata"], &want["metadata"])
}

/// The entries of the map `m[k]` (none if absent), without the commit annotation.
fn entries<'a>(m: &'a Value, k: &str) -> impl Iterator<Item = (&'a String, &'a Value)> {
    m.get(k).and_then(Value::as_object).into_iter().flatten().filter(|(k, _)| *k != COMMIT_ANNOTATION)
}

/// An annotation Kubernetes' own components write on objects they manage (its prefix's
/// domain is `kubernetes.io` or `k8s.io` or below, like `deployment.kubernetes.io/revision`),
/// which git need not hold. Pure.
pub fn written_by_the_system(key: &str) -> bool {
    key.split_once('/').is_some_and(|(domain, _)| ["kubernetes.io", "k8s.io"].iter().any(|d| domain == *d || domain.ends_with(&format!(".{d}"))))
}

fn metadata_in_sync(live: &Value, want: &Value) -> bool {
    // Order-independent: serde_json maps may keep insertion order. Labels match exactly;
    // annotations too, except those the system adds that git does not mention.
    let wanted = |k: &str| entries(want, k).all(|(name, v)| live[k].get(name) == Some(v));
    let labels = entries(live, "labels").count() == entries(want, "labels").count() && wanted("labels");
    let annotations = wanted("annotations") && entries(live, "annotations").all(|(name, _)| want["annotations"].get(name).is_some() || written_by_the_system(name));
    let rest = want.as_object().is_none_or(|w| w.iter().filter(|(k, _)| *k != "labels" && *k != "annotations").all(|(k, wv)| live.get(k).map_or_else(|| says_nothing(wv), |lv| contains(lv, wv))));
    labels && annotations && rest
}

/// What one apply must do.
#[derive(Debug, Default)]
pub struct Plan {
    /// Items of the Apply request, in apply order (prunes last, in reverse order).
    pub items: Vec<Value>,
    /// For each item, the desired document it came from (`None` for prunes).
    pub sources: Vec<Option<usize>>,
    pub counts: ApplyCounts,
    /// Updates of objects already applied from this very commit: someone changed them.
    pub drifted: usize,
}

/// Compare desired with live (`id` → live object with its resourceVersion) for `commit`.
pub fn plan(desired: &[Desired], live: &BTreeMap<String, Value>, commit: &str) -> Plan {
    let mut p = Plan { counts: ApplyCounts { objects: desired.len(), ..Default::default() }, ..Default::default() };
    for (i, d) in desired.iter().enumerate() {
        let id = d.id();
        let mut obj = d.object.clone();
        obj["metadata"]["annotations"][COMMIT_ANNOTATION] = json!(commit);
        match live.get(&id) {
            None => {
                p.items.push(json!({"object": obj}));
                p.sources.push(Some(i));
                p.counts.created += 1;
            }
            Some(l) if in_sync(d.res, l, &d.object) => p.counts.unchanged += 1,
            Some(l) => {
                if l["metadata"]["annotations"][COMMIT_ANNOTATION].as_str() == Some(commit) {
                    p.drifted += 1;
                }
                p.items.push(json!({"object": obj, "resourceVersion": l["metadata"]["resourceVersion"]}));
                p.sources.push(Some(i));
                p.counts.updated += 1;
            }
        }
    }
    let wanted: std::collections::HashSet<String> = desired.iter().map(Desired::id).collect();
    let mut prunes: Vec<(u8, String, Value)> = Vec::new();
    for (id, l) in live {
        if wanted.contains(id) {
            continue;
        }
        let kind = l["kind"].as_str().unwrap_or("");
        let item = json!({
            "delete": {"apiVersion": l["apiVersion"], "kind": kind, "namespace": l["metadata"]["namespace"], "name": l["metadata"]["name"]},
            "resourceVersion": l["metadata"]["resourceVersion"],
        });
        prunes.push((rank(kind), id.clone(), item));
    }
    prunes.sort_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1)));
    p.counts.pruned = prunes.len();
    for (_, _, item) in prunes {
        p.items.push(item);
        p.sources.push(None);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn doc(file: &str, index: usize, object: Value) -> kapp_render::Document {
        kapp_render::Document { file: PathBuf::from(file), index, object }
    }

    fn cm(name: &str, v: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": v}})
    }

    #[test]
    fn prepare_orders_by_dependency_and_marks_objects() {
        let docs = vec![
            doc("app.yaml", 0, json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"}, "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}})),
            doc("app.yaml", 1, cm("conf", "1")),
            doc("ns.yaml", 0, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})),
        ];
        let d = prepare(docs, "cluster").unwrap();
        let ids: Vec<String> = d.iter().map(Desired::id).collect();
        assert_eq!(ids, ["Namespace/shop", "ConfigMap/default/conf", "Deployment/shop/web"]);
        assert_eq!(d[1].object["metadata"]["labels"][MANAGED_BY_LABEL], "cluster");
        assert_eq!(d[1].object["metadata"]["annotations"][SOURCE_ANNOTATION], "app.yaml#1");
    }

    #[test]
    fn prepare_names_file_document_and_field_of_every_error() {
        let docs = vec![
            doc("a.yaml", 0, cm("ok", "1")),
            doc("a.yaml", 1, json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad_Name"}})),
            doc("b.yaml", 2, json!({"apiVersion": "v9", "kind": "Widget", "metadata": {"name": "w"}})),
            doc("c.yaml", 0, json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": "eighty"}]}})),
            doc("d.yaml", 0, cm("ok", "2")),
        ];
        let errors = prepare(docs, "cluster").unwrap_err();
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert_eq!((errors[0].file.as_str(), errors[0].document, errors[0].field.as_str()), ("a.yaml", Some(1), "metadata.name"));
        assert_eq!((errors[1].file.as_str(), errors[1].document, errors[1].field.as_str()), ("b.yaml", Some(2), "kind"));
        assert!(errors[2].field.starts_with("spec.ports"), "{:?}", errors[2]);
        assert!(errors[3].reason.contains("a.yaml"), "duplicate names the other file: {:?}", errors[3]);
    }

    #[test]
    fn contains_ignores_server_added_fields_but_not_changes() {
        let want = json!({"spec": {"containers": [{"name": "c", "image": "a"}]}});
        let live = json!({"spec": {"containers": [{"name": "c", "image": "a", "imagePullPolicy": "Always"}], "restartPolicy": "Always"}, "status": {}});
        assert!(contains(&live, &want));
        let changed = json!({"spec": {"containers": [{"name": "c", "image": "b"}]}});
        assert!(!contains(&changed, &want));
        let extra = json!({"spec": {"containers": [{"name": "c", "image": "a"}, {"name": "d", "image": "a"}]}});
        assert!(!contains(&extra, &want), "a list with an extra element differs");
    }

    fn live_of(d: &Desired, rv: &str, commit: &str) -> Value {
        let mut l = d.object.clone();
        l["metadata"]["resourceVersion"] = json!(rv);
        l["metadata"]["uid"] = json!("u");
        l["metadata"]["annotations"][COMMIT_ANNOTATION] = json!(commit);
        l
    }

    #[test]
    fn plan_creates_updates_prunes_and_counts_drift() {
        let d = prepare(vec![doc("a.yaml", 0, cm("a", "1")), doc("a.yaml", 1, cm("b", "1")), doc("a.yaml", 2, cm("c", "1"))], "cluster").unwrap();
        let mut live = BTreeMap::new();
        live.insert(d[1].id(), live_of(&d[1], "7", "old"));
        let mut drifted = live_of(&d[2], "8", "new");
        drifted["data"]["k"] = json!("edited");
        live.insert(d[2].id(), drifted);
        let mut gone = live_of(&d[0], "9", "old");
        gone["metadata"]["name"] = json!("gone");
        live.insert("ConfigMap/default/gone".into(), gone);
        let p = plan(&d, &live, "new");
        assert_eq!(p.counts, ApplyCounts { objects: 3, created: 1, updated: 1, pruned: 1, unchanged: 1 });
        assert_eq!(p.drifted, 1);
        assert_eq!(p.items.len(), 3);
        assert_eq!(p.items[0]["object"]["metadata"]["annotations"][COMMIT_ANNOTATION], "new");
        assert_eq!(p.items[1]["resourceVersion"], "8");
        assert_eq!(p.items[2]["delete"]["name"], "gone");
        assert_eq!(p.items[2]["resourceVersion"], "9");
    }

    #[test]
    fn a_secrets_string_data_is_in_sync_with_the_data_it_is_stored_as() {
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"password": "hunter2"}});
        let d = prepare(vec![doc("s.yaml", 0, secret)], "cluster").unwrap();
        let mut live = live_of(&d[0], "7", "c");
        live.as_object_mut().unwrap().remove("stringData");
        live["data"] = json!({"password": "aHVudGVyMg=="});
        live["type"] = json!("Opaque");
        assert!(in_sync(d[0].res, &live, &d[0].object));
        live["data"]["password"] = json!("b3RoZXI=");
        assert!(!in_sync(d[0].res, &live, &d[0].object), "another password is drift");
    }

    #[test]
    fn annotations_the_system_adds_are_not_drift_but_any_other_extra_one_is() {
        let d = prepare(vec![doc("a.yaml", 0, cm("a", "1"))], "cluster").unwrap();
        let mut live = live_of(&d[0], "7", "c");
        live["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = json!("3");
        assert!(in_sync(d[0].res, &live, &d[0].object), "the deployment controller's revision is not drift");
        live["metadata"]["annotations"]["team.example.com/owner"] = json!("someone");
        assert!(!in_sync(d[0].res, &live, &d[0].object), "an annotation added by hand is");
        live["metadata"]["annotations"].as_object_mut().unwrap().remove("team.example.com/owner");
        live["metadata"]["labels"]["extra"] = json!("x");
        assert!(!in_sync(d[0].res, &live, &d[0].object), "labels match exactly");
        assert!(written_by_the_system("kubernetes.io/change-cause") && written_by_the_system("deprecated.daemonset.template.generation.k8s.io/x"));
        assert!(!written_by_the_system("app.example.com/x") && !written_by_the_system("nokubernetes.io/x") && !written_by_the_system("plain"));
    }

    #[test]
    fn a_new_commit_that_changes_nothing_writes_nothing() {
        let d = prepare(vec![doc("a.yaml", 0, cm("a", "1"))], "cluster").unwrap();
        let mut live = BTreeMap::new();
        live.insert(d[0].id(), live_of(&d[0], "7", "old"));
        let p = plan(&d, &live, "new");
        assert!(p.items.is_empty());
        assert_eq!(p.counts.unchanged, 1);
    }

    #[test]
    fn a_label_removed_in_git_is_an_update() {
        let d = prepare(vec![doc("a.yaml", 0, cm("a", "1"))], "cluster").unwrap();
        let mut l = live_of(&d[0], "7", "old");
        l["metadata"]["labels"]["extra"] = json!("x");
        let mut live = BTreeMap::new();
        live.insert(d[0].id(), l);
        assert_eq!(plan(&d, &live, "new").counts.updated, 1);
    }
}
