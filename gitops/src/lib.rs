//! The GitOps reconciler: git is the only write path for desired state.
//!
//! - `source`: git2 fetch of the followed ref into a bare repository, tree export (bounded
//!   by a timeout and a size limit).
//! - `plan`: pure — documents → validated desired objects (dependency order, managed-by
//!   label, source annotation); desired vs live → creates, updates (drift included), prunes.
//! - `reconcile`: the loop — fetch, render (`kapp-render`), validate, diff, then ONE Apply
//!   request, which the apiserver writes in one store transaction with the GitSync status.
//! - `webhook`: HMAC-verified push notifications that trigger an immediate fetch.
//! - `trust`, `openpgp`: signed commits (SSH and OpenPGP signatures) checked with ring.
//! - `secrets`: age-encrypted Secret values decrypted with the cluster's key (whole `*.age`
//!   files are decrypted by `kapp-render` as it reads them).
//!
//! gitops knows the apiserver's REST API and nothing of the store.

pub mod openpgp;
pub mod plan;
pub mod reconcile;
pub mod secrets;
pub mod source;
pub mod trust;
pub mod webhook;

pub use reconcile::{Gitops, GitopsConfig, SyncFailure};
pub use source::{Auth, Source};

use std::future::Future;
use std::sync::Arc;

/// Run gitops on this head: serve the webhook (if given), and reconcile whenever this head
/// holds the `kapp-gitops` Lease, until `stop` resolves.
pub async fn run(client: kube::Client, cfg: GitopsConfig, holder: &str, webhook: Option<(tokio::net::TcpListener, Vec<u8>)>, stop: impl Future<Output = ()>) {
    let trigger = Arc::new(tokio::sync::Notify::new());
    let hook = webhook.map(|(listener, secret)| tokio::spawn(webhook::serve(listener, secret, trigger.clone())));
    let lease = kapp_runtime::lease::LeaseConfig::new("kapp-gitops", holder);
    let work = |lost| {
        let (client, cfg, trigger) = (client.clone(), cfg.clone(), trigger.clone());
        async move { Gitops::new(client, cfg).await.run(trigger, lost).await }
    };
    kapp_runtime::lease::lead(client.clone(), lease, work, stop).await;
    if let Some(h) = hook {
        h.abort();
    }
}
