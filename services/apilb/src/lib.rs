//! `kapp apilb`: a TCP balancer on a node's loopback in front of every head's apiserver
//! (Talos calls theirs KubePrism). The node's kubelet, proxy and dns talk to
//! `https://127.0.0.1:<port>`; each connection goes to the head that answered last, or, when
//! that one does not take the connection within [`Config::connect_timeout`], to the next
//! head in order. TLS passes through untouched: every apiserver's certificate is valid for
//! `127.0.0.1`, and the clients' certificates reach the apiserver as they were sent.
//!
//! A head that dies without closing its connections (power off) is noticed by TCP
//! keepalive and `TCP_USER_TIMEOUT` on the upstream side within
//! [`Config::dead_after`]; the client's connection is then closed, the client reconnects,
//! and its new connection goes to a live head. Connections are bounded
//! ([`Config::max_connections`]): past that, new ones wait in the listen backlog.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

#[derive(Clone, Debug)]
pub struct Config {
    /// The apiservers, `host:port`, in order of preference.
    pub backends: Vec<String>,
    /// How long one apiserver may take to accept a connection before the next is tried.
    pub connect_timeout: Duration,
    /// How long an upstream connection may go without an answer (keepalive probes,
    /// unacknowledged data) before it counts as dead and both sides are closed.
    pub dead_after: Duration,
    pub max_connections: usize,
}

impl Config {
    pub fn new(backends: Vec<String>) -> Config {
        Config { backends, connect_timeout: Duration::from_secs(1), dead_after: Duration::from_secs(15), max_connections: 512 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("no apiserver to balance over: give at least one backend")]
    NoBackends,
    #[error("listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// A running balancer.
pub struct Balancer {
    cfg: Config,
    /// The index of the backend that last took a connection.
    preferred: AtomicUsize,
}

impl Balancer {
    pub fn new(cfg: Config) -> Result<Arc<Balancer>, LbError> {
        if cfg.backends.is_empty() {
            return Err(LbError::NoBackends);
        }
        Ok(Arc::new(Balancer { cfg, preferred: AtomicUsize::new(0) }))
    }

    /// Bind `addr`.
    pub async fn bind(addr: SocketAddr) -> Result<TcpListener, LbError> {
        TcpListener::bind(addr).await.map_err(|source| LbError::Listen { addr, source })
    }

    /// Accept and forward connections until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let slots = Arc::new(Semaphore::new(self.cfg.max_connections));
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else { return };
            let (client, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: wait a little instead of spinning.
                    tracing::warn!(error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let me = self.clone();
            tokio::spawn(async move {
                me.forward(client, peer).await;
                drop(permit);
            });
        }
    }

    /// The backend index connections go to first.
    pub fn preferred(&self) -> usize {
        self.preferred.load(Ordering::Relaxed)
    }

    /// Connect to the preferred backend, else the others in order.
    async fn connect(&self) -> Option<(usize, TcpStream)> {
        let n = self.cfg.backends.len();
        let first = self.preferred();
        for i in (0..n).map(|k| (first + k) % n) {
            let addr = &self.cfg.backends[i];
            match tokio::time::timeout(self.cfg.connect_timeout, TcpStream::connect(addr.as_str())).await {
                Ok(Ok(s)) => {
                    if i != first {
                        tracing::info!(backend = %addr, "apiserver: switched");
                        self.preferred.store(i, Ordering::Relaxed);
                    }
                    return Some((i, s));
                }
                Ok(Err(e)) => tracing::debug!(backend = %addr, error = %e, "apiserver: connect"),
                Err(_) => tracing::debug!(backend = %addr, "apiserver: connect timed out"),
            }
        }
        None
    }

    async fn forward(&self, mut client: TcpStream, peer: SocketAddr) {
        let Some((i, mut upstream)) = self.connect().await else {
            tracing::warn!(client = %peer, backends = ?self.cfg.backends, "no apiserver answered; closing the connection");
            return;
        };
        if let Err(e) = detect_death(&upstream, self.cfg.dead_after) {
            tracing::warn!(error = %e, "keepalive on the upstream connection");
        }
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok(_) => {}
            Err(e) => tracing::debug!(client = %peer, backend = %self.cfg.backends[i], error = %e, "connection ended"),
        }
    }
}

/// Keepalive probes after a third of `dead_after` idle, then every sixth, three of them;
/// and `TCP_USER_TIMEOUT` for data sent but never acknowledged.
fn detect_death(s: &TcpStream, dead_after: Duration) -> std::io::Result<()> {
    let sock = socket2::SockRef::from(s);
    let idle = (dead_after / 3).max(Duration::from_secs(1));
    let interval = (dead_after / 6).max(Duration::from_secs(1));
    sock.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(idle).with_interval(interval).with_retries(3))?;
    sock.set_tcp_user_timeout(Some(dead_after))
}
