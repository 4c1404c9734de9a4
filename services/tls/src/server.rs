//! HTTP/2-over-TLS server loop.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::{identity_from_der, Body, Identity};

/// What serves a request: called with the request and the peer's identity (when it sent a
/// client certificate from the cluster CA).
pub trait Handler<F>: Fn(http::Request<hyper::body::Incoming>, Option<Arc<Identity>>) -> F + Clone + Send + Sync + 'static {}

impl<H, F> Handler<F> for H where H: Fn(http::Request<hyper::body::Incoming>, Option<Arc<Identity>>) -> F + Clone + Send + Sync + 'static {}

/// Time allowed for a client to complete the TLS handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight connections may take to finish once shutdown starts.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// HTTP/2 PING interval; with [`KEEP_ALIVE_TIMEOUT`] a dead peer is noticed within ~20 s.
pub(crate) const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long to wait for a PING acknowledgement before closing the connection.
pub(crate) const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Maximum concurrent HTTP/2 streams per connection.
pub(crate) const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Serves HTTP/2 over TLS on `listener` until `shutdown` resolves.
///
/// * At most `max_connections` connections are open at once (at least 1); further accepts wait
///   until a connection closes.
/// * The TLS handshake must complete within 10 s; failed handshakes are logged at debug level and
///   dropped.
/// * Each request is passed to `handler` together with the peer's [`Identity`] (from its verified
///   client certificate; `None` if it presented none, see [`crate::ClientAuth::Optional`]).
/// * HTTP/2: at most 1024 concurrent streams per connection; a PING every 10 s, and a peer that
///   does not answer within 10 s is disconnected.
///
/// On shutdown the listener is closed, every connection is told to finish (GOAWAY: in-flight
/// requests complete, no new ones are accepted), and connections still open after 5 s are
/// aborted. Then this returns. Accept errors are logged and retried, so this returns `Ok` in
/// practice; the `Result` is kept for future use.
pub async fn serve<H, F>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    max_connections: usize,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    H: Handler<F>,
    F: Future<Output = http::Response<Body>> + Send + 'static,
{
    let local_addr = listener.local_addr().ok();
    let acceptor = TlsAcceptor::from(tls);
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT);
    let builder = Arc::new(builder);
    let permits = Arc::new(Semaphore::new(max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);

    loop {
        // Reap finished connection tasks so the set does not grow.
        while connections.try_join_next().is_some() {}

        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(?local_addr, %error, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let handler = handler.clone();
        let stop = stop_rx.clone();
        connections.spawn(async move {
            serve_connection(tcp, peer, acceptor, builder, handler, stop).await;
            drop(permit);
        });
    }

    drop(listener);
    let _ = stop_tx.send(true);
    let open = connections.len();
    if open > 0 {
        debug!(?local_addr, open, "shutting down, waiting for connections");
    }
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        info!(
            ?local_addr,
            remaining = connections.len(),
            "connections still open after the shutdown grace period; aborting them"
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// Run a hyper connection to its end, shutting it down gracefully when told to stop.
macro_rules! drive {
    ($connection:ident, $stop:ident, $peer:ident, $proto:literal) => {{
        tokio::pin!($connection);
        let mut stopping = false;
        loop {
            tokio::select! {
                result = $connection.as_mut() => {
                    if let Err(error) = result {
                        debug!(peer = %$peer, %error, concat!($proto, " connection ended with an error"));
                    }
                    return;
                }
                _ = $stop.wait_for(|stopping| *stopping), if !stopping => {
                    stopping = true;
                    $connection.as_mut().graceful_shutdown();
                }
            }
        }
    }};
}

/// Runs one connection: TLS handshake, identity extraction, HTTP/2 until done or shut down.
async fn serve_connection<H, F>(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    builder: Arc<http2::Builder<TokioExecutor>>,
    handler: H,
    mut stop: watch::Receiver<bool>,
) where
    H: Handler<F>,
    F: Future<Output = http::Response<Body>> + Send + 'static,
{
    if let Err(error) = tcp.set_nodelay(true) {
        debug!(%peer, %error, "setting TCP_NODELAY failed");
    }
    let tls = tokio::select! {
        handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                debug!(%peer, %error, "tls handshake failed");
                return;
            }
            Err(_elapsed) => {
                debug!(%peer, "tls handshake timed out");
                return;
            }
        },
        _ = stop.wait_for(|stopping| *stopping) => return,
    };

    let identity = match tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
    {
        None => None,
        Some(cert) => match identity_from_der(cert) {
            Ok(identity) => Some(Arc::new(identity)),
            Err(error) => {
                debug!(%peer, %error, "client certificate carries no usable identity");
                return;
            }
        },
    };

    let service = hyper::service::service_fn(move |request| {
        let response = handler(request, identity.clone());
        async move { Ok::<_, Infallible>(response.await) }
    });
    let h2 = tls.get_ref().1.alpn_protocol() == Some(crate::ALPN_H2);
    if h2 {
        let connection = builder.serve_connection(TokioIo::new(tls), service);
        drive!(connection, stop, peer, "http/2");
    } else {
        // Clients that do not speak HTTP/2 (Python's urllib3, curl --http1.1) get HTTP/1.1.
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HANDSHAKE_TIMEOUT)
            .serve_connection(TokioIo::new(tls), service);
        drive!(connection, stop, peer, "http/1.1");
    }
}
