//! In-process control planes for tests (tier 2 of DESIGN.md): a store cluster on loopback,
//! an apiserver over it, and kube-rs clients holding any identity the cluster CA issues.

use std::path::Path;
use std::time::Duration;

use kapp_apiserver::{ApiServer, ApiServerConfig};
use kapp_store::testing::TestCluster;

pub use kapp_store::testing;

pub mod hollow;

/// Identity groups, as the apiserver authorises them.
pub use kapp_api::groups;

/// A store of `members` members and one apiserver over it.
pub struct ControlPlane {
    pub store: TestCluster,
    pub api: Option<ApiServer>,
    pub url: String,
    addr: std::net::SocketAddr,
}

impl ControlPlane {
    pub async fn start(dir: &Path, members: usize) -> ControlPlane {
        let store = TestCluster::start(members, dir).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let api = start_api(&store, listener).await;
        ControlPlane { store, api: Some(api), url: format!("https://{addr}"), addr }
    }

    /// A kube-rs client with identity `cn` in `groups`.
    pub async fn client(&self, cn: &str, groups: &[&str]) -> kube::Client {
        self.client_at(&self.url, cn, groups).await
    }

    /// A kube-rs client of the apiserver at `url` with identity `cn` in `groups`.
    pub async fn client_at(&self, url: &str, cn: &str, groups: &[&str]) -> kube::Client {
        kapp_runtime::client(url, &self.identity(cn, groups)).await.expect("kube client")
    }

    /// The PEM identity `cn` in `groups` (for kubeconfigs and processes).
    pub fn identity(&self, cn: &str, groups: &[&str]) -> kapp_tls::Pem {
        self.store.pki.ca.issue(cn, groups, &[]).expect("issue a client certificate")
    }

    /// Stop the apiserver (the store keeps running).
    pub async fn stop_api(&mut self) {
        if let Some(api) = self.api.take() {
            api.shutdown().await;
        }
    }

    /// Start the apiserver again on the same address.
    pub async fn restart_api(&mut self) {
        self.stop_api().await;
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("rebind {}: {e}", self.addr),
            }
        };
        self.api = Some(start_api(&self.store, listener).await);
    }

    /// Another apiserver (another "head") over store member `member`; its URL.
    pub async fn extra_api(&self, member: u64) -> (ApiServer, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let url = format!("https://{}", listener.local_addr().expect("local addr"));
        (serve(&self.store, self.store.client_of(member), listener).await, url)
    }

    pub async fn shutdown(mut self) {
        self.stop_api().await;
        self.store.shutdown().await;
    }
}

async fn start_api(store: &TestCluster, listener: tokio::net::TcpListener) -> ApiServer {
    serve(store, store.client(), listener).await
}

async fn serve(store: &TestCluster, client: kapp_store_client::StoreClient, listener: tokio::net::TcpListener) -> ApiServer {
    let serving = store.pki.ca.issue("apiserver", &[], &["127.0.0.1"]).expect("issue the serving certificate");
    let cfg = ApiServerConfig { tls: serving, store: client, max_connections: 2048, secret_key: Some(vec![7; 32]), audit_log: None, bookmark_interval: Duration::from_millis(500), watch_cache: Default::default() };
    ApiServer::start(cfg, listener).await.expect("start the apiserver")
}
