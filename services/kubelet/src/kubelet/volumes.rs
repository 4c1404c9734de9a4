//! Pod volumes under `<pod dir>/volumes/<name>`: emptyDir (a directory, or tmpfs for
//! `medium: Memory`), configMap and secret (files written from the object; secrets on a
//! tmpfs so they never touch the disk), hostPath.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use k8s_openapi::api::core::v1::{ConfigMap, KeyToPath, Pod, Secret};
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
pub async fn prepare(client: &kube::Client, pod: &Pod, dir: &Path) -> Result<HashMap<String, Prepared>, String> {
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
        } else if let Some(c) = &v.config_map {
            let name = c.name.clone();
            let optional = c.optional.unwrap_or(false);
            let files = match Api::<ConfigMap>::namespaced(client.clone(), &ns).get_opt(&name).await.map_err(|e| format!("configmap {name}: {e}"))? {
                Some(cm) => {
                    let mut m: Vec<(String, Vec<u8>)> = cm.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
                    m.extend(cm.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)));
                    m
                }
                None if optional => Vec::new(),
                None => return Err(format!("configmap \"{name}\" not found")),
            };
            mkdir(&path)?;
            write_files(&path, &files, c.items.as_deref(), c.default_mode.unwrap_or(0o644))?;
            out.insert(v.name.clone(), Prepared { path, readonly: true });
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let optional = s.optional.unwrap_or(false);
            let files = match Api::<Secret>::namespaced(client.clone(), &ns).get_opt(&name).await.map_err(|e| format!("secret {name}: {e}"))? {
                Some(sec) => secret_data(&sec),
                None if optional => Vec::new(),
                None => return Err(format!("secret \"{name}\" not found")),
            };
            mkdir(&path)?;
            if !crate::runtime::is_mounted(&path) {
                tmpfs(&path, "mode=0755,size=16m")?;
            }
            write_files(&path, &files, s.items.as_deref(), s.default_mode.unwrap_or(0o644))?;
            out.insert(v.name.clone(), Prepared { path, readonly: true });
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

fn write_files(dir: &Path, data: &[(String, Vec<u8>)], items: Option<&[KeyToPath]>, default_mode: i32) -> Result<(), String> {
    let files = select_files(data, items, default_mode)?;
    for (rel, bytes, mode) in &files {
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        let tmp = p.with_file_name(format!(".{}.tmp", p.file_name().and_then(|n| n.to_str()).unwrap_or("f")));
        std::fs::write(&tmp, bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
        set_mode(&tmp, *mode & 0o7777)?;
        std::fs::rename(&tmp, &p).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
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
