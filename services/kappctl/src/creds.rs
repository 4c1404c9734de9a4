//! Where kappctl's identity comes from, first match wins:
//!
//! 1. `--ca --cert --key` (PEM files; `--server`, default `https://127.0.0.1:6443`);
//! 2. `--pki DIR`: the directory `kapp gen pki --out DIR` wrote (its `ca.pem`, `viewer.pem`,
//!    `viewer.key`);
//! 3. `--kubeconfig FILE`, else `$KUBECONFIG` (its first file);
//! 4. [`DEFAULT_KUBECONFIG`], else the viewer identity in [`DEFAULT_PKI`].
//!
//! `--server` overrides the server of 2-4. Only client-certificate identities work: kapp
//! authenticates nothing else.

use std::path::{Path, PathBuf};

use base64::Engine;
use kapp_tls::Pem;
use serde::Deserialize;

use crate::error::Error;

/// A node's viewer kubeconfig.
pub const DEFAULT_KUBECONFIG: &str = "/var/lib/kapp/viewer.kubeconfig";
/// A node's PKI directory (as `kapp gen pki` lays it out).
pub const DEFAULT_PKI: &str = "/var/lib/kapp/pki";
/// The apiserver when nothing names one.
pub const DEFAULT_SERVER: &str = "https://127.0.0.1:6443";

/// The files of `kapp gen pki` kappctl uses (`kapp_bootstrap::files`; kappctl does not link
/// the bootstrap crate, a test checks the names agree).
pub mod pki_files {
    pub const CA_CERT: &str = "ca.pem";
    pub const VIEWER_CERT: &str = "viewer.pem";
    pub const VIEWER_KEY: &str = "viewer.key";
}

/// What the command line says about credentials.
#[derive(Clone, Debug, Default)]
pub struct CredArgs {
    pub kubeconfig: Option<PathBuf>,
    pub server: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub pki: Option<PathBuf>,
}

/// Where to look when the command line names nothing (the environment and the defaults).
#[derive(Clone, Debug)]
pub struct Fallbacks {
    /// `$KUBECONFIG`.
    pub env_kubeconfig: Option<String>,
    pub kubeconfig: PathBuf,
    pub pki: PathBuf,
}

impl Fallbacks {
    /// The real environment and the node's paths.
    pub fn from_env() -> Fallbacks {
        Fallbacks { env_kubeconfig: std::env::var("KUBECONFIG").ok().filter(|s| !s.is_empty()), kubeconfig: DEFAULT_KUBECONFIG.into(), pki: DEFAULT_PKI.into() }
    }
}

/// An identity at an apiserver.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub server: String,
    pub pem: Pem,
    /// The cluster's name: from the CA's common name (`kapp gen pki --cluster` writes
    /// `"<name> CA"`), else the kubeconfig's cluster entry.
    pub cluster: String,
    /// The namespace commands default to (the kubeconfig context's, else `default`).
    pub namespace: String,
    /// Where the identity came from, for messages.
    pub source: String,
}

pub fn resolve(args: &CredArgs, fb: &Fallbacks) -> Result<Credentials, Error> {
    let server = |d: &str| args.server.clone().unwrap_or_else(|| d.to_string());
    if args.ca.is_some() || args.cert.is_some() || args.key.is_some() {
        let (Some(ca), Some(cert), Some(key)) = (&args.ca, &args.cert, &args.key) else {
            return Err(Error::Credentials("--ca, --cert and --key go together: give all three".into()));
        };
        let pem = load_pem(ca, cert, key)?;
        return Ok(finish(server(DEFAULT_SERVER), pem, None, None, format!("--cert {}", cert.display())));
    }
    if let Some(dir) = &args.pki {
        return from_pki(dir, server(DEFAULT_SERVER));
    }
    let named = args.kubeconfig.clone().or_else(|| fb.env_kubeconfig.as_ref().and_then(|k| k.split(':').find(|p| !p.is_empty()).map(PathBuf::from)));
    if let Some(path) = named {
        return from_kubeconfig(&path, args.server.as_deref());
    }
    if fb.kubeconfig.exists() {
        return from_kubeconfig(&fb.kubeconfig, args.server.as_deref());
    }
    if fb.pki.join(pki_files::VIEWER_CERT).exists() {
        return from_pki(&fb.pki, server(DEFAULT_SERVER));
    }
    Err(Error::Credentials(format!(
        "none found: pass --kubeconfig FILE, set KUBECONFIG, pass --pki DIR (what `kapp gen pki` wrote) or --ca/--cert/--key (looked for {} and {})",
        fb.kubeconfig.display(),
        fb.pki.join(pki_files::VIEWER_CERT).display()
    )))
}

fn load_pem(ca: &Path, cert: &Path, key: &Path) -> Result<Pem, Error> {
    Pem::load(ca, cert, key).map_err(|e| Error::Credentials(e.to_string()))
}

fn from_pki(dir: &Path, server: String) -> Result<Credentials, Error> {
    let pem = load_pem(&dir.join(pki_files::CA_CERT), &dir.join(pki_files::VIEWER_CERT), &dir.join(pki_files::VIEWER_KEY))?;
    Ok(finish(server, pem, None, None, format!("the viewer identity in {}", dir.display())))
}

fn finish(server: String, pem: Pem, kube_cluster: Option<String>, namespace: Option<String>, source: String) -> Credentials {
    let cluster = cluster_name(&pem.ca).or(kube_cluster).unwrap_or_else(|| "kapp".into());
    Credentials { server, pem, cluster, namespace: namespace.filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into()), source }
}

/// The cluster name from a CA certificate whose common name is `"<name> CA"`.
pub fn cluster_name(ca_pem: &str) -> Option<String> {
    let der = rustls_pemfile::certs(&mut ca_pem.as_bytes()).next()?.ok()?;
    let id = kapp_tls::identity_from_der(&der).ok()?;
    Some(id.common_name.strip_suffix(" CA").unwrap_or(&id.common_name).to_string())
}

/// The identity (common name and groups) a PEM certificate carries.
pub fn identity(cert_pem: &str) -> Option<kapp_tls::Identity> {
    let der = rustls_pemfile::certs(&mut cert_pem.as_bytes()).next()?.ok()?;
    kapp_tls::identity_from_der(&der).ok()
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct Kubeconfig {
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    users: Vec<NamedUser>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
    #[serde(default)]
    current_context: String,
}

#[derive(Deserialize)]
struct NamedCluster {
    name: String,
    #[serde(default)]
    cluster: ClusterEntry,
}

#[derive(Deserialize)]
struct NamedUser {
    name: String,
    #[serde(default)]
    user: UserEntry,
}

#[derive(Deserialize)]
struct NamedContext {
    name: String,
    #[serde(default)]
    context: ContextEntry,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct ClusterEntry {
    #[serde(default)]
    server: String,
    certificate_authority: Option<String>,
    certificate_authority_data: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct UserEntry {
    client_certificate: Option<String>,
    client_certificate_data: Option<String>,
    client_key: Option<String>,
    client_key_data: Option<String>,
    token: Option<String>,
}

#[derive(Deserialize, Default)]
struct ContextEntry {
    #[serde(default)]
    cluster: String,
    #[serde(default)]
    user: String,
    namespace: Option<String>,
}

/// Read a kubeconfig's current context: its cluster's server and CA, its user's certificate.
pub fn from_kubeconfig(path: &Path, server_override: Option<&str>) -> Result<Credentials, Error> {
    let file_err = |detail: String| Error::File { path: path.to_path_buf(), detail };
    let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
    let kc: Kubeconfig = serde_yaml::from_str(&text).map_err(|e| file_err(format!("not a kubeconfig: {e}")))?;
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == kc.current_context)
        .or_else(|| if kc.current_context.is_empty() && kc.contexts.len() == 1 { kc.contexts.first() } else { None })
        .ok_or_else(|| file_err(format!("no context named {:?} (current-context)", kc.current_context)))?;
    let ctx = &ctx.context;
    let cluster = kc.clusters.iter().find(|c| c.name == ctx.cluster).ok_or_else(|| file_err(format!("no cluster named {:?}", ctx.cluster)))?;
    let user = kc.users.iter().find(|u| u.name == ctx.user).ok_or_else(|| file_err(format!("no user named {:?}", ctx.user)))?;
    let (c, u) = (&cluster.cluster, &user.user);
    let dir = path.parent().unwrap_or(Path::new("."));
    let material = |data: &Option<String>, file: &Option<String>, what: &str| -> Result<String, Error> {
        if let Some(d) = data.as_deref().filter(|d| !d.is_empty()) {
            let raw = base64::engine::general_purpose::STANDARD.decode(d.trim()).map_err(|e| file_err(format!("{what}-data is not base64: {e}")))?;
            return String::from_utf8(raw).map_err(|_| file_err(format!("{what}-data is not PEM text")));
        }
        if let Some(f) = file.as_deref().filter(|f| !f.is_empty()) {
            let p = dir.join(f);
            return std::fs::read_to_string(&p).map_err(|e| Error::File { path: p, detail: e.to_string() });
        }
        if what != "certificate-authority" && u.token.is_some() {
            return Err(file_err(format!("user {:?} has a token: kapp authenticates client certificates only", user.name)));
        }
        Err(file_err(format!("{what:?} is missing for context {:?}", kc.current_context)))
    };
    let pem = Pem {
        ca: material(&c.certificate_authority_data, &c.certificate_authority, "certificate-authority")?,
        cert: material(&u.client_certificate_data, &u.client_certificate, "client-certificate")?,
        key: material(&u.client_key_data, &u.client_key, "client-key")?,
    };
    let server = server_override.map(String::from).unwrap_or_else(|| c.server.clone());
    if server.is_empty() {
        return Err(file_err(format!("cluster {:?} has no server", cluster.name)));
    }
    Ok(finish(server, pem, Some(cluster.name.clone()), ctx.namespace.clone(), format!("kubeconfig {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fb(dir: &Path) -> Fallbacks {
        Fallbacks { env_kubeconfig: None, kubeconfig: dir.join("none.kubeconfig"), pki: dir.join("no-pki") }
    }

    #[test]
    fn a_kubeconfig_from_kapp_runtime_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let ca = kapp_tls::pki::Ca::generate("prod").unwrap();
        let pem = ca.issue("viewer", &["kapp:viewers"], &[]).unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, kapp_runtime::kubeconfig("prod", "https://10.0.0.1:6443", "viewer", &pem)).unwrap();
        let c = resolve(&CredArgs { kubeconfig: Some(path.clone()), ..Default::default() }, &fb(dir.path())).unwrap();
        assert_eq!((c.server.as_str(), c.cluster.as_str(), c.namespace.as_str()), ("https://10.0.0.1:6443", "prod", "default"));
        assert_eq!(c.pem, pem);
        // $KUBECONFIG is used when no flag names one; --server overrides the file's server.
        let f = Fallbacks { env_kubeconfig: Some(format!(":{}:other", path.display())), ..fb(dir.path()) };
        let c = resolve(&CredArgs { server: Some("https://h:1".into()), ..Default::default() }, &f).unwrap();
        assert_eq!(c.server, "https://h:1");
        assert_eq!(identity(&c.pem.cert).unwrap().organizations, ["kapp:viewers"]);
    }

    #[test]
    fn pki_dirs_flags_and_missing_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let ca = kapp_tls::pki::Ca::generate("lab").unwrap();
        let pem = ca.issue("viewer", &["kapp:viewers"], &[]).unwrap();
        let p = |f: &str| dir.path().join(f);
        pem.write_files(&p(pki_files::CA_CERT), &p(pki_files::VIEWER_CERT), &p(pki_files::VIEWER_KEY)).unwrap();
        let c = resolve(&CredArgs { pki: Some(dir.path().into()), ..Default::default() }, &fb(dir.path())).unwrap();
        assert_eq!((c.server.as_str(), c.cluster.as_str()), (DEFAULT_SERVER, "lab"));
        // The default PKI directory is the last resort.
        let c = resolve(&CredArgs::default(), &Fallbacks { pki: dir.path().into(), ..fb(dir.path()) }).unwrap();
        assert!(c.source.contains("viewer identity"), "{}", c.source);
        let half = CredArgs { cert: Some(p(pki_files::VIEWER_CERT)), ..Default::default() };
        assert!(resolve(&half, &fb(dir.path())).unwrap_err().to_string().contains("go together"));
        let err = resolve(&CredArgs::default(), &fb(dir.path())).unwrap_err();
        assert!(err.to_string().contains("--kubeconfig") && err.exit_code() == 2, "{err}");
        let missing = CredArgs { kubeconfig: Some(p("nope")), ..Default::default() };
        assert!(resolve(&missing, &fb(dir.path())).unwrap_err().to_string().contains("nope"));
    }
}
