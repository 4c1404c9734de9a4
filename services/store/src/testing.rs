//! Helpers for tests that run real store members in-process on loopback: a throwaway CA,
//! certificates for members and clients, and a cluster that can stop, restart and
//! partition its members.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kapp_store_client::{ClientConfig, StoreClient};
use kapp_tls::{pki::Ca, Pem};
use tokio::net::TcpListener;

use crate::node::{StoreConfig, StoreHandle};
use crate::types::NodeId;
use crate::{CLIENT_GROUP, PEER_GROUP};

/// A CA with one member certificate (valid for 127.0.0.1 and localhost) and one client
/// certificate.
pub struct TestPki {
    pub ca: Ca,
    pub member: Pem,
    pub client: Pem,
}

impl TestPki {
    pub fn new() -> TestPki {
        let ca = Ca::generate("test").expect("generate CA");
        let member = ca.issue("store-member", &[PEER_GROUP, CLIENT_GROUP], &["127.0.0.1", "localhost"]).expect("issue member cert");
        let client = ca.issue("apiserver", &[CLIENT_GROUP], &[]).expect("issue client cert");
        TestPki { ca, member, client }
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

/// A store cluster of `n` members in this process.
pub struct TestCluster {
    pub pki: TestPki,
    pub dir: PathBuf,
    pub members: BTreeMap<NodeId, String>,
    pub handles: BTreeMap<NodeId, StoreHandle>,
    /// Applied to every member's config before it starts.
    pub tune: fn(&mut StoreConfig),
}

/// Short timers so tests see elections in a fraction of a second.
pub fn fast_timers(c: &mut StoreConfig) {
    c.heartbeat = Duration::from_millis(50);
    c.election_timeout = (Duration::from_millis(300), Duration::from_millis(600));
    c.request_timeout = Duration::from_secs(3);
}

impl TestCluster {
    /// Start `n` members with data under `dir`, and wait for a leader.
    pub async fn start(n: usize, dir: &Path) -> TestCluster {
        Self::start_tuned(n, dir, fast_timers).await
    }

    pub async fn start_tuned(n: usize, dir: &Path, tune: fn(&mut StoreConfig)) -> TestCluster {
        let mut listeners = BTreeMap::new();
        let mut members = BTreeMap::new();
        for id in 1..=n as NodeId {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
            members.insert(id, l.local_addr().expect("local addr").to_string());
            listeners.insert(id, l);
        }
        let mut c = TestCluster { pki: TestPki::new(), dir: dir.to_path_buf(), members, handles: BTreeMap::new(), tune };
        for (id, l) in listeners {
            let h = StoreHandle::start_with_listener(c.config(id), l).await.expect("start member");
            c.handles.insert(id, h);
        }
        c.wait_leader(Duration::from_secs(20)).await;
        c
    }

    /// The configuration member `id` starts with.
    pub fn config(&self, id: NodeId) -> StoreConfig {
        let listen = self.members[&id].parse().expect("member address");
        let mut cfg = StoreConfig::new(id, listen, self.members.clone(), self.dir.join(format!("m{id}")), self.pki.member.clone());
        (self.tune)(&mut cfg);
        cfg
    }

    /// A client that knows every member.
    pub fn client(&self) -> StoreClient {
        let mut cfg = ClientConfig::new(self.members.values().cloned().collect(), self.pki.client.clone());
        cfg.attempt_timeout = Duration::from_secs(2);
        cfg.deadline = Duration::from_secs(30);
        StoreClient::new(cfg).expect("client")
    }

    /// A client of one member only.
    pub fn client_of(&self, id: NodeId) -> StoreClient {
        let mut cfg = ClientConfig::new(vec![self.members[&id].clone()], self.pki.client.clone());
        cfg.attempt_timeout = Duration::from_secs(2);
        cfg.deadline = Duration::from_secs(5);
        StoreClient::new(cfg).expect("client")
    }

    /// Watch streams served by all running members together.
    pub fn watchers(&self) -> usize {
        self.handles.values().map(|h| h.watchers()).sum()
    }

    /// Wait until the running members agree on a leader; returns its id.
    pub async fn wait_leader(&self, within: Duration) -> NodeId {
        let deadline = Instant::now() + within;
        loop {
            let leaders: Vec<Option<NodeId>> = self.handles.values().map(|h| h.status().leader).collect();
            if let Some(Some(l)) = leaders.first() {
                if self.handles.contains_key(l) && leaders.iter().all(|x| *x == Some(*l)) && self.handles[l].status().state == "Leader" {
                    return *l;
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader within {within:?}: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stop a member (its data stays).
    pub async fn stop(&mut self, id: NodeId) {
        if let Some(h) = self.handles.remove(&id) {
            h.shutdown().await;
        }
    }

    /// Start a stopped member again from its data directory.
    pub async fn restart(&mut self, id: NodeId) {
        let cfg = self.config(id);
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(cfg.listen).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "port still busy");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot rebind {}: {e}", cfg.listen),
            }
        };
        let h = StoreHandle::start_with_listener(cfg, listener).await.expect("restart member");
        self.handles.insert(id, h);
    }

    /// Cut member `id` off from every other member, both ways.
    pub fn partition(&self, id: NodeId) {
        for (other, h) in &self.handles {
            if *other == id {
                for peer in self.members.keys().filter(|p| **p != id) {
                    h.faults().block(*peer);
                }
            } else {
                h.faults().block(id);
            }
        }
    }

    /// Restore all traffic.
    pub fn heal(&self) {
        for h in self.handles.values() {
            h.faults().heal();
        }
    }

    pub async fn shutdown(mut self) {
        let ids: Vec<NodeId> = self.handles.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}
