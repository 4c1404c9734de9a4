//! Pod volumes under `<pod dir>/volumes/<name>`: emptyDir (a directory, or tmpfs for
//! `medium: Memory`), configMap, secret, downwardAPI and projected (files written from the
//! objects and the pod, switched atomically and refreshed periodically; anything holding
//! Secret data on a tmpfs so it never touches the disk), hostPath, and
//! persistentVolumeClaim: a directory per claim on the state partition, used only on the
//! node the claim is pinned to (local volumes) and removed once the claim is gone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use k8s_openapi::api::core::v1::{ConfigMap, DownwardAPIVolumeFile, KeyToPath, PersistentVolumeClaim, Pod, ResourceFieldSelector, Secret, Volume};
use kube::Api;

/// A prepared volume: where it is on the node, and whether mounts of it are forced
/// read-only.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub path: PathBuf,
    pub readonly: bool,
}

/// Default size of memory-backed volumes without a sizeLimit.
const TMPFS_DEFAULT: &str = "size=64m";

/// Make every volume of `pod` exist under `dir`. Errors are messages for the pod's status.
/// Claims keep their data under `claims_root` when pinned to `node` (local volumes).
pub async fn prepare(client: &kube::Client, pod: &Pod, dir: &Path, node: &str, claims_root: &Path) -> Result<HashMap<String, Prepared>, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let mut out = HashMap::new();
    let vols = pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default();
    for v in vols {
        let path = dir.join("volumes").join(&v.name);
        let mkdir = |p: &Path| std::fs::create_dir_all(p).map_err(|e| format!("volume {}: {e}", v.name));
        if let Some(e) = &v.empty_dir {
            mkdir(&path)?;
            set_mode(&path, 0o777)?;
            if e.medium.as_deref() == Some("Memory") && !crate::runtime::is_mounted(&path) {
                let size = e.size_limit.as_ref().and_then(|q| super::plan::parse_bytes(&q.0)).map(|b| format!("size={b}")).unwrap_or_else(|| TMPFS_DEFAULT.into());
                tmpfs(&path, &format!("mode=1777,{size}"))?;
            }
            out.insert(v.name.clone(), Prepared { path, readonly: false });
        } else if let Some((files, in_memory)) = contents(client, pod, &ns, &v).await? {
            mkdir(&path)?;
            if in_memory && !crate::runtime::is_mounted(&path) {
                tmpfs(&path, "mode=0755,size=16m")?;
            }
            publish(&path, &files).map_err(|e| format!("volume {}: {e}", v.name))?;
            out.insert(v.name.clone(), Prepared { path, readonly: true });
        } else if let Some(c) = &v.persistent_volume_claim {
            let path = claim_dir(client, &ns, &c.claim_name, node, claims_root).await?;
            out.insert(v.name.clone(), Prepared { path, readonly: c.read_only.unwrap_or(false) });
        } else if let Some(h) = &v.host_path {
            let p = PathBuf::from(&h.path);
            match h.type_.as_deref() {
                Some("DirectoryOrCreate") => mkdir(&p)?,
                Some("Directory") if !p.is_dir() => return Err(format!("hostPath {} is not a directory", h.path)),
                _ => {}
            }
            out.insert(v.name.clone(), Prepared { path: p, readonly: false });
        } else {
            return Err(format!("volume {}: this kind of volume is not supported yet", v.name));
        }
    }
    Ok(out)
}

/// Where claims keep their data, under the kubelet's state directory.
pub const CLAIMS_DIR: &str = "local-path";

/// The annotation the scheduler pins a claim to its node with.
const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// The directory of claim `name` in `ns` on this node (made on first use): refused unless
/// the claim is pinned to `node`, so one claim's data never lives on two nodes.
async fn claim_dir(client: &kube::Client, ns: &str, name: &str, node: &str, root: &Path) -> Result<PathBuf, String> {
    let claim = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns).get_opt(name).await.map_err(|e| format!("persistentvolumeclaim {name}: {e}"))?;
    let Some(claim) = claim else { return Err(format!("persistentvolumeclaim \"{name}\" not found")) };
    match claim.metadata.annotations.as_ref().and_then(|a| a.get(SELECTED_NODE)).filter(|n| !n.is_empty()) {
        None => return Err(format!("persistentvolumeclaim \"{name}\" is not bound to a node yet")),
        Some(n) if n != node => return Err(format!("persistentvolumeclaim \"{name}\" keeps its data on node {n}, not {node}")),
        Some(_) => {}
    }
    let uid = claim.metadata.uid.clone().unwrap_or_default();
    let dir = root.join(claim_dir_name(&uid, ns, name));
    if !dir.is_dir() {
        std::fs::create_dir_all(&dir).map_err(|e| format!("persistentvolumeclaim {name}: {}: {e}", dir.display()))?;
        set_mode(&dir, 0o777)?;
    }
    Ok(dir)
}

/// `pvc-<uid>_<namespace>_<name>`, as k3s' local-path provisioner names them.
fn claim_dir_name(uid: &str, ns: &str, name: &str) -> String {
    format!("pvc-{uid}_{ns}_{name}")
}

/// Remove the data of claims that no longer exist (their uid is not in `live`) unless a pod
/// of this node still mounts them (`in_use`: namespace and name): the claims' reclaim policy
/// is Delete. Returns what it removed.
pub fn collect_claims(root: &Path, live: &std::collections::HashSet<String>, in_use: &std::collections::HashSet<(String, String)>) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let mut parts = name.strip_prefix("pvc-").unwrap_or_default().splitn(3, '_');
        let (Some(uid), Some(ns), Some(claim)) = (parts.next(), parts.next(), parts.next()) else { continue };
        if live.contains(uid) || in_use.contains(&(ns.to_string(), claim.to_string())) {
            continue;
        }
        if std::fs::remove_dir_all(e.path()).is_ok() {
            removed.push(e.path());
        }
    }
    removed
}

/// Write the current contents of every configMap, secret, downwardAPI and projected volume
/// of `pod` again (the kubelet's periodic refresh: containers see a change without a
/// restart, except through subPath mounts, as in Kubernetes). Returns the first error.
pub async fn refresh(client: &kube::Client, pod: &Pod, dir: &Path) -> Result<(), String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let mut first = Ok(());
    for v in pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default() {
        let path = dir.join("volumes").join(&v.name);
        let r = match contents(client, pod, &ns, &v).await {
            Ok(Some((files, _))) if path.is_dir() => publish(&path, &files).map_err(|e| format!("volume {}: {e}", v.name)),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if first.is_ok() {
            first = r;
        }
    }
    first
}

/// Whether `pod` has volumes whose contents come from objects or the pod itself.
pub fn has_contents(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.volumes.as_ref()).is_some_and(|vs| vs.iter().any(|v| v.config_map.is_some() || v.secret.is_some() || v.downward_api.is_some() || v.projected.is_some()))
}

/// A file of a volume: its path inside the volume, bytes and mode.
pub type File = (String, Vec<u8>, u32);

/// The files of a configMap, secret, downwardAPI or projected volume, and whether they are
/// kept in memory only (anything holding Secret data); `None` for other kinds.
async fn contents(client: &kube::Client, pod: &Pod, ns: &str, v: &Volume) -> Result<Option<(Vec<File>, bool)>, String> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    if let Some(c) = &v.config_map {
        let data = config_map_data(&cms, &c.name, c.optional.unwrap_or(false)).await?;
        return Ok(Some((select_files(&data, c.items.as_deref(), c.default_mode.unwrap_or(0o644))?, false)));
    }
    if let Some(s) = &v.secret {
        let data = secret_data_of(&secrets, s.secret_name.as_deref().unwrap_or_default(), s.optional.unwrap_or(false)).await?;
        return Ok(Some((select_files(&data, s.items.as_deref(), s.default_mode.unwrap_or(0o644))?, true)));
    }
    if let Some(d) = &v.downward_api {
        return Ok(Some((downward_files(pod, d.items.as_deref().unwrap_or_default(), d.default_mode.unwrap_or(0o644))?, false)));
    }
    let Some(p) = &v.projected else { return Ok(None) };
    let mode = p.default_mode.unwrap_or(0o644);
    let mut files = Vec::new();
    for (i, src) in p.sources.iter().flatten().enumerate() {
        if let Some(c) = &src.config_map {
            let data = config_map_data(&cms, &c.name, c.optional.unwrap_or(false)).await?;
            files.extend(select_files(&data, c.items.as_deref(), mode)?);
        } else if let Some(s) = &src.secret {
            let data = secret_data_of(&secrets, &s.name, s.optional.unwrap_or(false)).await?;
            files.extend(select_files(&data, s.items.as_deref(), mode)?);
        } else if let Some(d) = &src.downward_api {
            files.extend(downward_files(pod, d.items.as_deref().unwrap_or_default(), mode)?);
        } else if src.service_account_token.is_some() {
            return Err(format!("volume {}: sources[{i}].serviceAccountToken: not supported (kapp issues no service-account tokens; components use client certificates)", v.name));
        } else {
            return Err(format!("volume {}: sources[{i}]: this kind of projection is not supported", v.name));
        }
    }
    let mut seen = std::collections::HashSet::new();
    if let Some((p, _, _)) = files.iter().find(|(p, _, _)| !seen.insert(p.clone())) {
        return Err(format!("volume {}: two sources project {p:?}", v.name));
    }
    Ok(Some((files, true)))
}

async fn config_map_data(api: &Api<ConfigMap>, name: &str, optional: bool) -> Result<Vec<(String, Vec<u8>)>, String> {
    match api.get_opt(name).await.map_err(|e| format!("configmap {name}: {e}"))? {
        Some(cm) => {
            let mut m: Vec<(String, Vec<u8>)> = cm.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
            m.extend(cm.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)));
            Ok(m)
        }
        None if optional => Ok(Vec::new()),
        None => Err(format!("configmap \"{name}\" not found")),
    }
}

async fn secret_data_of(api: &Api<Secret>, name: &str, optional: bool) -> Result<Vec<(String, Vec<u8>)>, String> {
    match api.get_opt(name).await.map_err(|e| format!("secret {name}: {e}"))? {
        Some(s) => Ok(secret_data(&s)),
        None if optional => Ok(Vec::new()),
        None => Err(format!("secret \"{name}\" not found")),
    }
}

/// The files of a downwardAPI volume (or projection). Pure. Fields as Kubernetes allows
/// them in volumes: the pod's name, namespace, uid, labels and annotations (whole, as
/// sorted `key="value"` lines, or one key), and containers' requests and limits.
pub fn downward_files(pod: &Pod, items: &[DownwardAPIVolumeFile], default_mode: i32) -> Result<Vec<File>, String> {
    let m = &pod.metadata;
    let lines = |map: Option<&std::collections::BTreeMap<String, String>>| {
        map.into_iter().flatten().map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone()))).collect::<Vec<_>>().join("\n")
    };
    let mut out = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let value = if let Some(f) = &it.field_ref {
            let key = |prefix: &str| f.field_path.strip_prefix(prefix).and_then(|r| r.strip_suffix("']")).map(str::to_string);
            match f.field_path.as_str() {
                "metadata.name" => m.name.clone().unwrap_or_default(),
                "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
                "metadata.uid" => m.uid.clone().unwrap_or_default(),
                "metadata.labels" => lines(m.labels.as_ref()),
                "metadata.annotations" => lines(m.annotations.as_ref()),
                p => match (key("metadata.labels['"), key("metadata.annotations['")) {
                    (Some(k), _) => m.labels.as_ref().and_then(|l| l.get(&k).cloned()).unwrap_or_default(),
                    (_, Some(k)) => m.annotations.as_ref().and_then(|l| l.get(&k).cloned()).unwrap_or_default(),
                    _ => return Err(format!("items[{i}].fieldRef.fieldPath: {p:?} is not supported in a volume")),
                },
            }
        } else if let Some(r) = &it.resource_field_ref {
            resource_value(pod, r).map_err(|e| format!("items[{i}].resourceFieldRef: {e}"))?
        } else {
            return Err(format!("items[{i}]: neither fieldRef nor resourceFieldRef"));
        };
        out.push((it.path.clone(), value.into_bytes(), it.mode.unwrap_or(default_mode) as u32));
    }
    let paths: Vec<KeyToPath> = out.iter().map(|(p, _, _)| KeyToPath { key: p.clone(), path: p.clone(), mode: None }).collect();
    let data: Vec<(String, Vec<u8>)> = out.iter().map(|(p, _, _)| (p.clone(), Vec::new())).collect();
    select_files(&data, Some(&paths), 0)?; // the same path rules as configMap items
    Ok(out)
}

/// A container's request or limit as the downward API shows it: cpu in whole cores (or in
/// units of the divisor), memory in bytes (or the divisor), rounded up.
fn resource_value(pod: &Pod, r: &ResourceFieldSelector) -> Result<String, String> {
    let name = r.container_name.as_deref().filter(|n| !n.is_empty()).ok_or("containerName is required in a volume")?;
    let c = pod.spec.iter().flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten())).find(|c| c.name == name).ok_or_else(|| format!("no container {name:?}"))?;
    let (kind, what) = r.resource.split_once('.').ok_or_else(|| format!("resource {:?}", r.resource))?;
    let res = c.resources.clone().unwrap_or_default();
    let q = match kind {
        "limits" => res.limits,
        "requests" => res.requests,
        _ => return Err(format!("resource {:?}", r.resource)),
    }
    .and_then(|m| m.get(what).cloned());
    let div = r.divisor.as_ref().map(|d| d.0.clone());
    let ceil = |v: i64, d: i64| if d <= 0 { v } else { (v + d - 1) / d };
    Ok(match (what, q) {
        ("cpu", Some(q)) => {
            let m = super::plan::parse_millicores(&q.0).ok_or_else(|| format!("cpu {:?}", q.0))?;
            ceil(m, div.and_then(|d| super::plan::parse_millicores(&d)).unwrap_or(1000)).to_string()
        }
        ("memory" | "ephemeral-storage", Some(q)) => {
            let b = super::plan::parse_bytes(&q.0).ok_or_else(|| format!("{what} {:?}", q.0))?;
            ceil(b, div.and_then(|d| super::plan::parse_bytes(&d)).unwrap_or(1)).to_string()
        }
        (_, Some(q)) => q.0,
        (_, None) => "0".into(),
    })
}

/// Make `dir` hold exactly `files`, switching all of them at once, as Kubernetes' atomic
/// writer does: the files go into a fresh `..<n>` directory, the `..data` symlink is
/// renamed onto it, and each top-level name is a symlink through `..data`. Nothing is
/// rewritten when the contents are unchanged.
pub fn publish(dir: &Path, files: &[File]) -> std::io::Result<()> {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let data = dir.join("..data");
    if let Ok(current) = std::fs::read_link(&data) {
        let cur = dir.join(&current);
        let same = files.iter().all(|(p, b, m)| {
            let f = cur.join(p);
            std::fs::read(&f).is_ok_and(|x| x == *b) && std::fs::metadata(&f).is_ok_and(|md| md.permissions().mode() & 0o7777 == m & 0o7777)
        }) && count_files(&cur) == files.len();
        if same {
            return Ok(());
        }
    }
    let old = std::fs::read_link(&data).ok();
    let gen = (0u64..).map(|n| format!("..{n}")).find(|n| !dir.join(n).exists() && old.as_deref() != Some(Path::new(n))).expect("a free name");
    let new = dir.join(&gen);
    std::fs::create_dir(&new)?;
    for (rel, bytes, mode) in files {
        let p = new.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, bytes)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & 0o7777))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&gen, &tmp)?;
    std::fs::rename(&tmp, &data)?;
    let top: std::collections::BTreeSet<String> = files.iter().filter_map(|(p, _, _)| p.split('/').next().map(String::from)).collect();
    for name in &top {
        let link = dir.join(name);
        match std::fs::symlink_metadata(&link) {
            Ok(md) if md.file_type().is_symlink() => continue,
            Ok(md) if md.is_dir() => std::fs::remove_dir_all(&link)?,
            Ok(_) => std::fs::remove_file(&link)?,
            Err(_) => {}
        }
        symlink(Path::new("..data").join(name), &link)?;
    }
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("..") {
            if name != "..data" && name != gen {
                std::fs::remove_dir_all(e.path())?;
            }
        } else if !top.contains(&name) {
            if e.file_type()?.is_dir() {
                std::fs::remove_dir_all(e.path())?;
            } else {
                std::fs::remove_file(e.path())?;
            }
        }
    }
    Ok(())
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| if e.file_type().is_ok_and(|t| t.is_dir()) { count_files(&e.path()) } else { 1 }).sum()
}

/// A Secret's data, decoded (`data` is base64 on the wire and already decoded by
/// k8s-openapi; `stringData` is plain).
pub fn secret_data(s: &Secret) -> Vec<(String, Vec<u8>)> {
    let mut m: Vec<(String, Vec<u8>)> = s.data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
    m.extend(s.string_data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())));
    m
}

/// Credentials per registry host from `kubernetes.io/dockerconfigjson` secrets.
pub fn docker_credentials(secrets: &[Secret]) -> HashMap<String, crate::image::Credentials> {
    let mut out = HashMap::new();
    for s in secrets {
        for (k, v) in secret_data(s) {
            if k != ".dockerconfigjson" && k != ".dockercfg" {
                continue;
            }
            let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&v) else { continue };
            let auths = if k == ".dockercfg" { &doc } else { &doc["auths"] };
            for (host, a) in auths.as_object().into_iter().flatten() {
                let host = host.trim_start_matches("https://").trim_start_matches("http://").split('/').next().unwrap_or("").to_string();
                let (mut user, mut pass) = (a["username"].as_str().unwrap_or("").to_string(), a["password"].as_str().unwrap_or("").to_string());
                if let Some(auth) = a["auth"].as_str() {
                    if let Ok(d) = base64::engine::general_purpose::STANDARD.decode(auth) {
                        if let Some((u, p)) = String::from_utf8_lossy(&d).split_once(':') {
                            (user, pass) = (u.to_string(), p.to_string());
                        }
                    }
                }
                if !user.is_empty() {
                    out.insert(host, crate::image::Credentials { username: user, password: pass });
                }
            }
        }
    }
    out
}

fn set_mode(p: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(|e| format!("{}: {e}", p.display()))
}

fn tmpfs(p: &Path, opts: &str) -> Result<(), String> {
    nix::mount::mount(Some("tmpfs"), p, Some("tmpfs"), nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV, Some(opts)).map_err(|e| format!("tmpfs at {}: {e}", p.display()))
}

/// Which files a configMap/secret volume holds: all keys, or only `items` at their paths.
/// Pure.
pub fn select_files(data: &[(String, Vec<u8>)], items: Option<&[KeyToPath]>, default_mode: i32) -> Result<Vec<(String, Vec<u8>, u32)>, String> {
    let mut out = Vec::new();
    match items {
        None => {
            for (k, v) in data {
                out.push((k.clone(), v.clone(), default_mode as u32));
            }
        }
        Some(items) => {
            for it in items {
                let Some((_, v)) = data.iter().find(|(k, _)| *k == it.key) else {
                    return Err(format!("key {:?} not found", it.key));
                };
                out.push((it.path.clone(), v.clone(), it.mode.unwrap_or(default_mode) as u32));
            }
        }
    }
    for (p, _, _) in &out {
        if p.is_empty() || p.starts_with('/') || p.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(format!("invalid path {p:?}"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    #[test]
    fn items_select_and_check_paths() {
        let data = vec![("a".to_string(), b"1".to_vec()), ("b".to_string(), b"2".to_vec())];
        assert_eq!(select_files(&data, None, 0o644).unwrap().len(), 2);
        let items = vec![KeyToPath { key: "b".into(), path: "sub/b.txt".into(), mode: Some(0o600) }];
        assert_eq!(select_files(&data, Some(&items), 0o644).unwrap(), vec![("sub/b.txt".to_string(), b"2".to_vec(), 0o600)]);
        let bad = vec![KeyToPath { key: "a".into(), path: "../x".into(), mode: None }];
        assert!(select_files(&data, Some(&bad), 0o644).is_err());
        let missing = vec![KeyToPath { key: "zz".into(), path: "x".into(), mode: None }];
        assert!(select_files(&data, Some(&missing), 0o644).is_err());
    }

    #[test]
    fn publish_switches_every_file_at_once_and_drops_what_left() {
        let d = tempfile::tempdir().unwrap();
        let read = |p: &str| std::fs::read_to_string(d.path().join(p)).unwrap();
        publish(d.path(), &[("a".into(), b"1".to_vec(), 0o644), ("sub/b".into(), b"2".to_vec(), 0o600)]).unwrap();
        assert_eq!((read("a"), read("sub/b")), ("1".into(), "2".into()));
        let first = std::fs::read_link(d.path().join("..data")).unwrap();
        publish(d.path(), &[("a".into(), b"1".to_vec(), 0o644), ("sub/b".into(), b"2".to_vec(), 0o600)]).unwrap();
        assert_eq!(std::fs::read_link(d.path().join("..data")).unwrap(), first, "unchanged contents are not rewritten");
        publish(d.path(), &[("a".into(), b"3".to_vec(), 0o644)]).unwrap();
        assert_eq!(read("a"), "3");
        assert!(!d.path().join("sub").exists(), "a key that left is gone");
        let mut names: Vec<String> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names.len(), 3, "a, ..data and one generation: {names:?}");
        // A volume written before the atomic layout (plain files) is taken over.
        let old = tempfile::tempdir().unwrap();
        std::fs::write(old.path().join("a"), "stale").unwrap();
        publish(old.path(), &[("a".into(), b"new".to_vec(), 0o644)]).unwrap();
        assert_eq!(std::fs::read_to_string(old.path().join("a")).unwrap(), "new");
    }

    #[test]
    fn downward_api_files() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"b": "2", "a": "x\"y"}},
            "spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "1500m", "memory": "64Mi"}}}]}
        }))
        .unwrap();
        let items: Vec<DownwardAPIVolumeFile> = serde_json::from_value(serde_json::json!([
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "b", "fieldRef": {"fieldPath": "metadata.labels['b']"}},
            {"path": "cpu", "resourceFieldRef": {"containerName": "c", "resource": "limits.cpu"}},
            {"path": "cpu_m", "resourceFieldRef": {"containerName": "c", "resource": "limits.cpu", "divisor": "1m"}},
            {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory", "divisor": "1Mi"}, "mode": 0o600},
        ]))
        .unwrap();
        let f = downward_files(&pod, &items, 0o644).unwrap();
        let get = |p: &str| f.iter().find(|x| x.0 == p).map(|x| String::from_utf8(x.1.clone()).unwrap()).unwrap();
        assert_eq!(get("labels"), "a=\"x\\\"y\"\nb=\"2\"");
        assert_eq!((get("name"), get("b"), get("cpu"), get("cpu_m"), get("mem")), ("p".into(), "2".into(), "2".into(), "1500".into(), "64".into()));
        assert_eq!(f.iter().find(|x| x.0 == "mem").unwrap().2, 0o600);
        let bad: Vec<DownwardAPIVolumeFile> = serde_json::from_value(serde_json::json!([{"path": "ip", "fieldRef": {"fieldPath": "status.podIP"}}])).unwrap();
        assert!(downward_files(&pod, &bad, 0o644).unwrap_err().contains("items[0].fieldRef.fieldPath"));
        let escape: Vec<DownwardAPIVolumeFile> = serde_json::from_value(serde_json::json!([{"path": "../x", "fieldRef": {"fieldPath": "metadata.name"}}])).unwrap();
        assert!(downward_files(&pod, &escape, 0o644).is_err());
    }

    #[test]
    fn claim_data_goes_with_its_claim_unless_a_pod_still_mounts_it() {
        let root = tempfile::tempdir().unwrap();
        for (uid, ns, name) in [("u1", "db", "data-pg-0"), ("u2", "db", "data-pg-1"), ("u3", "web", "cache")] {
            std::fs::create_dir_all(root.path().join(claim_dir_name(uid, ns, name)).join("sub")).unwrap();
        }
        std::fs::create_dir(root.path().join("not-a-claim")).unwrap();
        let live = ["u1".to_string()].into();
        let in_use = [("web".to_string(), "cache".to_string())].into();
        let removed = collect_claims(root.path(), &live, &in_use);
        assert_eq!(removed, vec![root.path().join("pvc-u2_db_data-pg-1")]);
        assert!(root.path().join("pvc-u1_db_data-pg-0").is_dir() && root.path().join("pvc-u3_web_cache").is_dir() && root.path().join("not-a-claim").is_dir());
    }

    #[test]
    fn pull_secrets() {
        let auth = base64::engine::general_purpose::STANDARD.encode("bob:s3cret");
        let cfg = format!(r#"{{"auths": {{"https://reg.example:5000/v1/": {{"auth": "{auth}"}}, "other.io": {{"username": "u", "password": "p"}}}}}}"#);
        let s = Secret { data: Some([(".dockerconfigjson".to_string(), ByteString(cfg.into_bytes()))].into()), ..Default::default() };
        let c = docker_credentials(&[s]);
        assert_eq!(c["reg.example:5000"].username, "bob");
        assert_eq!(c["reg.example:5000"].password, "s3cret");
        assert_eq!(c["other.io"].password, "p");
    }
}
