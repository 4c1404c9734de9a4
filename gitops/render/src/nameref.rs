//! Name references: after prefixes, suffixes and hashes changed names, fields that name a
//! ConfigMap, Secret, ServiceAccount, PersistentVolumeClaim, Service or (Cluster)Role are
//! pointed at the new name (kustomize's `nameReference` config and `nameref` filter).

use serde_json::Value;

use crate::resource::Res;
use crate::transforms::{cluster_scoped, visit};

/// Workload kinds and where their pod spec is.
const POD_SPECS: &[(&str, &str)] = &[
    ("Pod", "spec"),
    ("PodTemplate", "template/spec"),
    ("Deployment", "spec/template/spec"),
    ("ReplicaSet", "spec/template/spec"),
    ("DaemonSet", "spec/template/spec"),
    ("StatefulSet", "spec/template/spec"),
    ("ReplicationController", "spec/template/spec"),
    ("Job", "spec/template/spec"),
    ("CronJob", "spec/jobTemplate/spec/template/spec"),
];

/// `(referent kind, paths inside a pod spec)`.
const POD_REFS: &[(&str, &[&str])] = &[
    (
        "ConfigMap",
        &[
            "volumes/configMap/name",
            "containers/env/valueFrom/configMapKeyRef/name",
            "initContainers/env/valueFrom/configMapKeyRef/name",
            "containers/envFrom/configMapRef/name",
            "initContainers/envFrom/configMapRef/name",
            "volumes/projected/sources/configMap/name",
        ],
    ),
    (
        "Secret",
        &[
            "volumes/secret/secretName",
            "containers/env/valueFrom/secretKeyRef/name",
            "initContainers/env/valueFrom/secretKeyRef/name",
            "containers/envFrom/secretRef/name",
            "initContainers/envFrom/secretRef/name",
            "imagePullSecrets/name",
            "volumes/projected/sources/secret/name",
        ],
    ),
    ("ServiceAccount", &["serviceAccountName"]),
    ("PersistentVolumeClaim", &["volumes/persistentVolumeClaim/claimName"]),
];

/// `(referent kind, referrer kind, path)` outside pod specs.
const OTHER_REFS: &[(&str, &str, &str)] = &[
    ("Secret", "Ingress", "spec/tls/secretName"),
    ("Secret", "ServiceAccount", "imagePullSecrets/name"),
    ("Service", "StatefulSet", "spec/serviceName"),
    ("Service", "Ingress", "spec/rules/http/paths/backend/service/name"),
    ("Service", "Ingress", "spec/defaultBackend/service/name"),
    ("Role", "RoleBinding", "roleRef/name"),
    ("ClusterRole", "RoleBinding", "roleRef/name"),
    ("ClusterRole", "ClusterRoleBinding", "roleRef/name"),
];

/// What a candidate referent looks like, taken before any referrer is changed.
struct Candidate {
    kind: String,
    prev: Vec<String>,
    name: String,
    namespace: String,
    affixes: Vec<String>,
}

/// Rewrite every reference in `list`; an ambiguous one is an error.
pub(crate) fn fix(list: &mut [Res]) -> Result<(), String> {
    let cands: Vec<Candidate> = list
        .iter()
        .filter(|r| !r.prev.is_empty())
        .map(|r| Candidate {
            kind: r.kind().to_string(),
            prev: r.prev.iter().map(|(n, _)| n.clone()).collect(),
            name: r.name().to_string(),
            namespace: r.namespace().to_string(),
            affixes: r.affixes.clone(),
        })
        .collect();
    if cands.is_empty() {
        return Ok(());
    }
    for r in list.iter_mut() {
        let kind = r.kind().to_string();
        let mut refs: Vec<(&str, String)> = Vec::new();
        if let Some((_, spec)) = POD_SPECS.iter().find(|(k, _)| *k == kind) {
            for (referent, paths) in POD_REFS {
                refs.extend(paths.iter().map(|p| (*referent, format!("{spec}/{p}"))));
            }
        }
        refs.extend(OTHER_REFS.iter().filter(|(_, k, _)| *k == kind).map(|(referent, _, p)| (*referent, p.to_string())));
        let role_kind = r.obj.pointer("/roleRef/kind").and_then(Value::as_str).map(str::to_string);
        let referrer = (cluster_scoped(&kind), r.namespace().to_string(), r.affixes.clone());
        let mut failure = None;
        for (referent, path) in refs {
            if path.starts_with("roleRef") && role_kind.as_deref() != Some(referent) {
                continue;
            }
            let segs: Vec<&str> = path.split('/').collect();
            let (last, parent) = segs.split_last().expect("paths are not empty");
            visit(&mut r.obj, parent, false, &mut |m| {
                let Some(Value::String(old)) = m.get_mut(*last) else { return };
                match select(&cands, referent, old, &referrer) {
                    Ok(Some(new)) => *old = new,
                    Ok(None) => {}
                    Err(e) => failure = Some(e),
                }
            });
        }
        if let Some(e) = failure {
            return Err(format!("{}: {e}", r.id()));
        }
    }
    Ok(())
}

/// kustomize's `selectReferral`: candidates of the kind that once had the name, in the
/// referrer's namespace, narrowed by equal prefixes/suffixes when several remain.
fn select(cands: &[Candidate], kind: &str, old: &str, referrer: &(bool, String, Vec<String>)) -> Result<Option<String>, String> {
    let (referrer_cluster, referrer_ns, referrer_affixes) = referrer;
    let ns_eq = |a: &str, b: &str| (if a.is_empty() { "default" } else { a }) == (if b.is_empty() { "default" } else { b });
    let found: Vec<&Candidate> = cands
        .iter()
        .filter(|c| c.kind == kind && c.prev.iter().any(|p| p == old))
        .filter(|c| *referrer_cluster || cluster_scoped(&c.kind) || c.kind == "ServiceAccount" || ns_eq(&c.namespace, referrer_ns))
        .collect();
    let pick = |f: &[&Candidate]| -> Result<Option<String>, String> {
        match f {
            [] => Ok(None),
            [one] => Ok(Some(one.name.clone())),
            [first, rest @ ..] if rest.iter().all(|c| c.name == first.name && c.namespace == first.namespace) => Ok(Some(first.name.clone())),
            many => Err(format!("{old:?} could name any of {}", many.iter().map(|c| format!("{kind}/{}", c.name)).collect::<Vec<_>>().join(", "))),
        }
    };
    if found.len() <= 1 {
        return pick(&found);
    }
    let same_affixes: Vec<&Candidate> = found.iter().copied().filter(|c| c.affixes == *referrer_affixes).collect();
    pick(if same_affixes.is_empty() { &found } else { &same_affixes })
}
