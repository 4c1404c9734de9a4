//! What every kapp component that talks to the apiserver shares:
//!
//! - [`kubeconfig`] / [`client`]: a kubeconfig for a kapp identity (its certificate from the
//!   cluster CA) and a kube-rs client built from it — the same file kubectl reads.
//! - [`cache`]: informers — a kind watched into a local cache with an owner index, an
//!   optional index of the caller's, and change hooks (controllers, scheduler);
//!   [`follow`]: such a cache that wakes one `Notify` per burst of changes (proxy, dns).
//! - [`lease`]: leader election through a `coordination.k8s.io/v1` Lease, so exactly one
//!   instance of gitops, the scheduler and the controllers acts at a time.
//!
//! No component may know another's internals; they meet only through the apiserver.

pub mod cache;
pub mod follow;
pub mod lease;

use base64::Engine;
use kapp_tls::Pem;

/// Why a client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("kube client: {0}")]
    Client(#[from] kube::Error),
}

/// A kubeconfig (YAML) for `user` at `server` (`https://host:port`) with the identity's
/// certificates embedded.
pub fn kubeconfig(cluster: &str, server: &str, user: &str, pem: &Pem) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {"server": server, "certificate-authority-data": b64(&pem.ca)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(&pem.cert), "client-key-data": b64(&pem.key)}}],
        "contexts": [{"name": format!("{user}@{cluster}"), "context": {"cluster": cluster, "user": user}}],
        "current-context": format!("{user}@{cluster}"),
    });
    serde_yaml::to_string(&doc).expect("a kubeconfig serialises")
}

/// A kube-rs client for the identity `pem` at `server`.
pub async fn client(server: &str, pem: &Pem) -> Result<kube::Client, RuntimeError> {
    let kc = kube::config::Kubeconfig::from_yaml(&kubeconfig("kapp", server, "kapp", pem))?;
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?;
    cfg.connect_timeout = Some(std::time::Duration::from_secs(5));
    cfg.read_timeout = Some(std::time::Duration::from_secs(300));
    Ok(kube::Client::try_from(cfg)?)
}
