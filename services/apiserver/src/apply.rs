//! `POST /apis/kapp.dev/v1/gitsyncs/<name>/apply`: gitops writes a whole commit's changes —
//! creates, updates, prunes and the GitSync's new status — in ONE store transaction, so the
//! cluster never shows half a commit. Only the gitops identity may call it.
//!
//! Body (`kind: Apply`):
//! ```json
//! {"dryRun": false,
//!  "items": [{"object": {...}, "resourceVersion": "12"},        // update if still at 12
//!            {"object": {...}},                                  // create: must not exist
//!            {"delete": {"apiVersion": "v1", "kind": "ConfigMap", "namespace": "a", "name": "b"},
//!             "resourceVersion": "15"}],                         // prune if still at 15
//!  "spec": {...}, "status": {...}}                               // the GitSync's, optional
//! ```
//! Every item is validated before anything is written; one invalid item refuses the whole
//! request (422 naming each item, object and field). A stale `resourceVersion` anywhere
//! refuses the whole request with 409 naming the object; gitops relists and retries.
//!
//! An update replaces the object with the manifest, keeping what the server or other
//! components own: uid, creationTimestamp, status (kinds with a status subresource),
//! finalizers others added, a deletionTimestamp, a Service's allocated clusterIP and a pod's
//! nodeName when the manifest leaves them out.

use http::{Response, StatusCode};
use kapp_api::kapp::MAX_APPLY_ITEMS;
use kapp_api::{keys, validate, Resource};
use kapp_store_client::{limits, Compare, KeyRange, Op, Txn};
use kapp_tls::Body;
use serde_json::{json, Value};

use crate::util::{self, status};
use crate::{fail, json_response, keep_status, stamp_new, store_failure, Ctx, Target};

const _: () = assert!(2 * MAX_APPLY_ITEMS + 2 <= limits::MAX_TXN_OPS, "an Apply of plain items and the GitSync must fit one transaction");

/// One item of the request, resolved and validated.
struct Item {
    res: &'static Resource,
    namespace: String,
    name: String,
    key: String,
    /// The mod revision the caller saw; `None`: the object must not exist.
    expect: Option<i64>,
    /// The object to store; `None`: delete.
    object: Option<Value>,
}

impl Item {
    fn describe(&self) -> String {
        if self.namespace.is_empty() {
            format!("{}/{}", self.res.kind, self.name)
        } else {
            format!("{}/{}/{}", self.res.kind, self.namespace, self.name)
        }
    }
}

fn cause(index: usize, what: &str, field: &str, message: String) -> Value {
    json!({"reason": "FieldValueInvalid", "field": format!("items[{index}]{}{field}", if field.is_empty() { "" } else { "." }), "message": format!("{what}: {message}")})
}

/// 422 for item `i` whose object the apiserver refuses while writing (a Service address).
fn item_invalid(i: usize, item: &Item, errors: Vec<kapp_api::FieldError>) -> Response<Body> {
    let what = item.describe();
    let causes: Vec<Value> = errors.iter().map(|e| cause(i, &what, &e.field, e.to_string())).collect();
    let msg = format!("Apply is invalid: {}", causes.iter().filter_map(|c| c["message"].as_str()).collect::<Vec<_>>().join("; "));
    json_response(StatusCode::UNPROCESSABLE_ENTITY, &status(422, "Invalid", &msg, Some(json!({"causes": causes}))))
}

/// Resolve item `i` of the request, or say what is wrong with it.
fn resolve(i: usize, raw: &Value) -> Result<Item, Vec<Value>> {
    let expect = match raw.get("resourceVersion") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_str().and_then(|s| s.parse::<i64>().ok()) {
            Some(rv) => Some(rv),
            None => return Err(vec![cause(i, "item", "resourceVersion", format!("{v} is not a resource version"))]),
        },
    };
    let (head, object) = match (raw.get("object"), raw.get("delete")) {
        (Some(o), None) => (o, true),
        (None, Some(d)) => (d, false),
        _ => return Err(vec![cause(i, "item", "", "needs exactly one of `object` or `delete`".into())]),
    };
    let api_version = head["apiVersion"].as_str().unwrap_or("");
    let kind = head["kind"].as_str().unwrap_or("");
    let Some(res) = kapp_api::by_kind(api_version, kind) else {
        return Err(vec![cause(i, "item", "", format!("no resource serves apiVersion {api_version:?} kind {kind:?}"))]);
    };
    let meta = if object { &head["metadata"] } else { head };
    let name = meta["name"].as_str().unwrap_or("").to_string();
    let mut namespace = meta["namespace"].as_str().unwrap_or("").to_string();
    if res.namespaced && namespace.is_empty() {
        namespace = "default".into();
    }
    if !res.namespaced && !namespace.is_empty() {
        return Err(vec![cause(i, &format!("{kind}/{name}"), "metadata.namespace", format!("{kind} is not namespaced"))]);
    }
    let key = keys::object_key(res, &namespace, &name);
    let mut item = Item { res, namespace, name, key, expect, object: None };
    if object {
        let mut obj = head.clone();
        if res.namespaced && obj["metadata"].is_object() {
            obj["metadata"]["namespace"] = json!(item.namespace);
        }
        if let Err(errors) = kapp_api::admit(res, &mut obj) {
            let what = item.describe();
            return Err(errors.into_iter().map(|e| cause(i, &what, &e.field, e.to_string())).collect());
        }
        item.object = Some(obj);
    } else if item.name.is_empty() {
        return Err(vec![cause(i, &format!("{kind}"), "delete.name", "name is required".into())]);
    }
    Ok(item)
}

/// Fields the server or other components own, carried over from the stored object.
fn carry_over(res: &Resource, stored: &Value, mut new: Value) -> Value {
    let meta = new["metadata"].as_object_mut().expect("validated: metadata is a map");
    meta.remove("resourceVersion");
    meta.insert("uid".into(), stored["metadata"]["uid"].clone());
    meta.insert("creationTimestamp".into(), stored["metadata"]["creationTimestamp"].clone());
    for k in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
        match stored["metadata"].get(k) {
            Some(v) => meta.insert(k.into(), v.clone()),
            None => meta.remove(k),
        };
    }
    let mut finalizers: Vec<Value> = stored["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
    for f in meta.get("finalizers").and_then(Value::as_array).cloned().unwrap_or_default() {
        if !finalizers.contains(&f) {
            finalizers.push(f);
        }
    }
    if !finalizers.is_empty() {
        meta.insert("finalizers".into(), json!(finalizers));
    }
    new = keep_status(res, stored, new);
    let keep: &[&str] = match res.kind {
        "Service" => &["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"],
        "Pod" => &["nodeName"],
        _ => &[],
    };
    for k in keep {
        if new["spec"].get(*k).is_none() {
            if let Some(v) = stored["spec"].get(*k) {
                new["spec"][*k] = v.clone();
            }
        }
    }
    new
}

fn without_version(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    v
}

/// Serve one apply request for GitSync `t.name`.
pub(crate) async fn apply(ctx: &Ctx, t: &Target, body: Value) -> Response<Body> {
    let sync_name = t.name.clone().unwrap_or_default();
    let Some(raw_items) = body["items"].as_array() else {
        return fail(400, "BadRequest", "an Apply needs an `items` list");
    };
    if raw_items.len() > MAX_APPLY_ITEMS {
        let msg = format!("an Apply may change at most {MAX_APPLY_ITEMS} objects in one transaction; this one has {}", raw_items.len());
        return fail(413, "RequestEntityTooLarge", &msg);
    }
    let dry_run = body["dryRun"].as_bool().unwrap_or(false);
    let mut items = Vec::with_capacity(raw_items.len());
    let mut causes = Vec::new();
    for (i, raw) in raw_items.iter().enumerate() {
        match resolve(i, raw) {
            Ok(item) => items.push(item),
            Err(c) => causes.extend(c),
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (i, item) in items.iter().enumerate() {
        if !seen.insert(item.key.clone()) {
            causes.push(cause(i, &item.describe(), "", "the same object appears twice".into()));
        }
    }
    // The GitSync itself, with the new spec and status.
    let sync_res = t.res;
    let sync_key = keys::object_key(sync_res, "", &sync_name);
    let stored_sync = match ctx.store.get(sync_key.clone()).await {
        Err(e) => return store_failure(e),
        Ok(kv) => kv,
    };
    let mut sync = match &stored_sync {
        Some(kv) => match ctx.codec.decode(&kv.value) {
            Ok(v) => v,
            Err(e) => return fail(500, "InternalError", &e.to_string()),
        },
        None => json!({"apiVersion": sync_res.api_version(), "kind": sync_res.kind, "metadata": {"name": sync_name, "uid": util::uuid4(), "creationTimestamp": util::now_rfc3339()}}),
    };
    if let Some(spec) = body.get("spec").filter(|s| !s.is_null()) {
        sync["spec"] = spec.clone();
    }
    if let Some(st) = body.get("status").filter(|s| !s.is_null()) {
        sync["status"] = st.clone();
    }
    if let Err(errors) = validate(sync_res, &sync) {
        causes.extend(errors.into_iter().map(|e| json!({"reason": "FieldValueInvalid", "field": e.field, "message": format!("GitSync/{sync_name}: {e}")})));
    }
    if !causes.is_empty() {
        let msg = format!("Apply to GitSync \"{sync_name}\" is invalid: {}", causes.iter().filter_map(|c| c["message"].as_str()).collect::<Vec<_>>().join("; "));
        let details = json!({"name": sync_name, "group": sync_res.group, "kind": sync_res.kind, "causes": causes});
        return json_response(StatusCode::UNPROCESSABLE_ENTITY, &status(422, "Invalid", &msg, Some(details)));
    }

    // Read what is stored for every item (bounded concurrency), then build one transaction.
    let mut stored = Vec::with_capacity(items.len());
    for chunk in items.chunks(32) {
        let gets: Vec<_> = chunk
            .iter()
            .map(|it| {
                let (store, key) = (ctx.store.clone(), it.key.clone());
                async move { store.get(key).await }
            })
            .collect();
        for g in futures_util::future::join_all(gets).await {
            match g {
                Err(e) => return store_failure(e),
                Ok(kv) => stored.push(kv),
            }
        }
    }
    let mut txn = Txn::default();
    let mut results = Vec::with_capacity(items.len());
    for (i, (item, current)) in items.iter().zip(&stored).enumerate() {
        let conflict = match (item.expect, current) {
            (None, Some(_)) => Some("already exists".to_string()),
            (Some(rv), None) => Some(format!("was deleted (expected resourceVersion {rv})")),
            (Some(rv), Some(kv)) if kv.mod_revision != rv => Some(format!("has been modified (resourceVersion {} is not {rv})", kv.mod_revision)),
            _ => None,
        };
        if let Some(why) = conflict {
            let msg = format!("Operation cannot be fulfilled on {}: the object {why}; relist and apply again", item.describe());
            return json_response(StatusCode::CONFLICT, &status(409, "Conflict", &msg, Some(json!({"name": item.name, "kind": item.res.plural}))));
        }
        txn.compare.push(match item.expect {
            None => Compare::absent(item.key.clone()),
            Some(rv) => Compare::mod_revision(item.key.clone(), rv),
        });
        let old = match current {
            None => None,
            Some(kv) => match ctx.codec.decode(&kv.value) {
                Ok(v) => Some(v),
                Err(e) => return fail(500, "InternalError", &format!("{}: {e}", item.describe())),
            },
        };
        let action = match (&item.object, &old) {
            (Some(obj), None) => {
                let mut new = stamp_new(item.res, obj.clone());
                if item.res.kind == "Service" {
                    match crate::alloc::settle(None, &mut new) {
                        Ok((c, o)) => {
                            txn.compare.extend(c);
                            txn.success.extend(o);
                        }
                        Err(errors) => return item_invalid(i, item, errors),
                    }
                }
                txn.success.push(Op::Put { key: item.key.clone().into_bytes(), value: ctx.codec.encode(item.res.kind, &new), prev_kv: false });
                "created"
            }
            (Some(obj), Some(old)) => {
                let mut new = carry_over(item.res, old, obj.clone());
                if item.res.kind == "Service" {
                    match crate::alloc::settle(Some(old), &mut new) {
                        Ok((c, o)) => {
                            txn.compare.extend(c);
                            txn.success.extend(o);
                        }
                        Err(errors) => return item_invalid(i, item, errors),
                    }
                }
                if without_version(&new) == without_version(old) {
                    "unchanged"
                } else {
                    txn.success.push(Op::Put { key: item.key.clone().into_bytes(), value: ctx.codec.encode(item.res.kind, &new), prev_kv: false });
                    "updated"
                }
            }
            (None, Some(old)) => {
                let namespace = item.res.kind == "Namespace";
                let finalizers = old["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
                if finalizers || namespace {
                    // Deletion waits for the finalizers' owners, as a DELETE would; a
                    // Namespace waits for the namespace controller to empty it.
                    let mut marked = old.clone();
                    if namespace {
                        crate::mark_namespace_terminating(&mut marked);
                    }
                    if !marked["metadata"]["deletionTimestamp"].is_string() {
                        marked["metadata"]["deletionTimestamp"] = json!(util::now_rfc3339());
                        marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                    }
                    let marked = without_version(&marked);
                    txn.success.push(Op::Put { key: item.key.clone().into_bytes(), value: ctx.codec.encode(item.res.kind, &marked), prev_kv: false });
                } else {
                    txn.success.push(Op::Delete { range: KeyRange::single(item.key.clone()), prev_kv: false });
                    if item.res.kind == "Service" {
                        txn.success.extend(crate::alloc::release(old));
                    }
                }
                "deleted"
            }
            (None, None) => unreachable!("a delete of an absent object is a conflict above"),
        };
        results.push(json!({"kind": item.res.kind, "namespace": item.namespace, "name": item.name, "action": action}));
    }
    txn.compare.push(match &stored_sync {
        None => Compare::absent(sync_key.clone()),
        Some(kv) => Compare::mod_revision(sync_key.clone(), kv.mod_revision),
    });
    let sync_stored = without_version(&sync);
    txn.success.push(Op::Put { key: sync_key.into_bytes(), value: ctx.codec.encode(sync_res.kind, &sync_stored), prev_kv: false });
    // Each item costs a compare and an operation (a Service more, for its allocations):
    // an Apply that does not fit one transaction is refused whole, and gitops sends less.
    let ops = txn.compare.len() + txn.success.len() + txn.failure.len();
    if ops > limits::MAX_TXN_OPS {
        return fail(413, "RequestEntityTooLarge", &format!("this Apply of {} items needs {ops} store operations and compares, over the limit of {} of one transaction: send fewer items", items.len(), limits::MAX_TXN_OPS));
    }
    if dry_run {
        return json_response(StatusCode::OK, &json!({"apiVersion": sync_res.api_version(), "kind": "ApplyResult", "dryRun": true, "results": results}));
    }
    match ctx.store.txn(txn).await {
        Err(e) => store_failure(e),
        Ok(r) if !r.succeeded => json_response(
            StatusCode::CONFLICT,
            &status(409, "Conflict", &format!("Operation cannot be fulfilled on GitSync \"{sync_name}\": an object of the commit changed meanwhile; relist and apply again"), None),
        ),
        Ok(r) => json_response(StatusCode::OK, &json!({"apiVersion": sync_res.api_version(), "kind": "ApplyResult", "resourceVersion": r.revision.to_string(), "results": results})),
    }
}
