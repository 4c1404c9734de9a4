//! HTTP/2-over-TLS client to one server address.

use std::error::Error as _;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;
use tracing::debug;

use crate::server::{KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT};
use crate::{Body, TlsError};

/// Default for [`H2Client::with_connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// An HTTP/2 client to ONE server address (`"host:port"`), over TLS, keeping one multiplexed
/// connection and reconnecting lazily when it breaks.
///
/// Cheap to clone: clones share the connection. The TLS server name (checked against the
/// server certificate's SANs) is the host part of the address (an IP address or DNS name) unless
/// overridden with [`H2Client::with_server_name`]. HTTP/2 PINGs are sent every 10 s, also while
/// idle, and a server that does not answer within 10 s is considered gone.
#[derive(Clone)]
pub struct H2Client {
    config: Arc<Config>,
    shared: Arc<Shared>,
}

struct Config {
    addr: String,
    server_name: Option<String>,
    tls: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
}

#[derive(Default)]
struct Shared {
    /// Held across (re)connecting, so only one caller connects at a time and the others wait
    /// for its result.
    state: Mutex<State>,
    /// Number of failed connection attempts so far (read before waiting for `state`).
    failures: AtomicU64,
}

#[derive(Default)]
struct State {
    /// The cached connection and its generation number.
    connection: Option<(u64, SendRequest<Body>)>,
    /// Generation of the last connection established.
    generation: u64,
    /// Why the last connection attempt failed.
    last_failure: String,
}

impl std::fmt::Debug for H2Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Client")
            .field("addr", &self.config.addr)
            .field("server_name", &self.config.server_name)
            .field("connect_timeout", &self.config.connect_timeout)
            .finish()
    }
}

impl H2Client {
    /// A client for `addr` (`"host:port"`, IPv6 hosts in brackets). Does not connect yet.
    pub fn new(addr: impl Into<String>, tls: Arc<rustls::ClientConfig>) -> H2Client {
        H2Client {
            config: Arc::new(Config {
                addr: addr.into(),
                server_name: None,
                tls,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            }),
            shared: Arc::default(),
        }
    }

    /// Uses `name` instead of the address's host as TLS server name. The result no longer shares
    /// its connection with clones of `self`.
    #[must_use]
    pub fn with_server_name(self, name: &str) -> Self {
        self.reconfigure(|config| config.server_name = Some(name.to_owned()))
    }

    /// Sets the time allowed to establish a connection (TCP, TLS and HTTP/2 handshakes);
    /// default 3 s. The result no longer shares its connection with clones of `self`.
    #[must_use]
    pub fn with_connect_timeout(self, timeout: Duration) -> Self {
        self.reconfigure(|config| config.connect_timeout = timeout)
    }

    /// The server address.
    pub fn addr(&self) -> &str {
        &self.config.addr
    }

    /// Sends one request and returns the response head (the body streams in afterwards).
    ///
    /// The URI may be just a path (`"/v1/txn"`); scheme (`https`) and authority (the address)
    /// are filled in when missing. If there is no usable connection one is established first;
    /// concurrent callers share one connection and only one of them (re)connects at a time.
    ///
    /// A cached connection found closed before the request is sent is replaced transparently.
    /// A request that fails after it was handed to the connection is not retried (it may have
    /// reached the server); if the failure broke the connection, the cached connection is
    /// dropped so the next call reconnects. Errors of a single stream (e.g. reset by the server)
    /// leave the shared connection in place.
    pub async fn send(
        &self,
        mut request: http::Request<Body>,
    ) -> Result<http::Response<hyper::body::Incoming>, TlsError> {
        self.complete_uri(&mut request)?;
        let (generation, mut sender) = self.connection().await?;
        let (generation, mut sender) = if sender.ready().await.is_ok() {
            (generation, sender)
        } else {
            // Closed between the check in `connection` and now: the request was not sent yet.
            self.invalidate(generation).await;
            let (generation, mut sender) = self.connection().await?;
            sender.ready().await?;
            (generation, sender)
        };
        match sender.send_request(request).await {
            Ok(response) => Ok(response),
            Err(error) => {
                if sender.is_closed() || is_connection_error(&error) {
                    debug!(addr = %self.config.addr, %error, "dropping broken connection");
                    self.invalidate(generation).await;
                }
                Err(TlsError::Http(error))
            }
        }
    }

    /// Drops the cached connection (if any). Requests in flight on it continue; the connection
    /// closes once they are done, and the next [`H2Client::send`] connects anew.
    pub async fn disconnect(&self) {
        self.shared.state.lock().await.connection = None;
    }

    /// Whether a connection is cached and not known to be closed (it may still turn out dead on
    /// the next request). Waits while another caller is connecting.
    pub async fn is_connected(&self) -> bool {
        matches!(self.shared.state.lock().await.connection.as_ref(), Some((_, sender)) if !sender.is_closed())
    }

    fn reconfigure(self, change: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config {
            addr: self.config.addr.clone(),
            server_name: self.config.server_name.clone(),
            tls: self.config.tls.clone(),
            connect_timeout: self.config.connect_timeout,
        };
        change(&mut config);
        H2Client {
            config: Arc::new(config),
            shared: Arc::default(),
        }
    }

    fn complete_uri(&self, request: &mut http::Request<Body>) -> Result<(), TlsError> {
        let uri = request.uri();
        if uri.scheme().is_some() && uri.authority().is_some() {
            return Ok(());
        }
        let mut parts = std::mem::take(request.uri_mut()).into_parts();
        if parts.scheme.is_none() {
            parts.scheme = Some(Scheme::HTTPS);
        }
        if parts.authority.is_none() {
            parts.authority = Some(Authority::from_str(&self.config.addr).map_err(|_| {
                TlsError::InvalidAddress {
                    addr: self.config.addr.clone(),
                }
            })?);
        }
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        *request.uri_mut() = http::Uri::from_parts(parts)?;
        Ok(())
    }

    /// Returns the cached connection if it is open, otherwise connects (one caller at a time).
    async fn connection(&self) -> Result<(u64, SendRequest<Body>), TlsError> {
        let failures_before = self.shared.failures.load(Ordering::Acquire);
        let mut state = self.shared.state.lock().await;
        if let Some((generation, sender)) = state.connection.as_ref() {
            if !sender.is_closed() {
                return Ok((*generation, sender.clone()));
            }
        }
        state.connection = None;
        // While we waited for the lock another caller tried to connect and failed: report that
        // instead of queueing up another attempt (each may take the whole connect timeout).
        if self.shared.failures.load(Ordering::Acquire) != failures_before {
            return Err(TlsError::ConnectFailed {
                addr: self.config.addr.clone(),
                reason: state.last_failure.clone(),
            });
        }
        match self.connect().await {
            Ok(sender) => {
                state.generation += 1;
                state.connection = Some((state.generation, sender.clone()));
                Ok((state.generation, sender))
            }
            Err(error) => {
                state.last_failure = error.to_string();
                self.shared.failures.fetch_add(1, Ordering::AcqRel);
                Err(error)
            }
        }
    }

    /// Drops the cached connection if it is still the one of `generation`.
    async fn invalidate(&self, generation: u64) {
        let mut state = self.shared.state.lock().await;
        if matches!(state.connection.as_ref(), Some((g, _)) if *g == generation) {
            state.connection = None;
        }
    }

    async fn connect(&self) -> Result<SendRequest<Body>, TlsError> {
        let config = &self.config;
        let addr = &config.addr;
        let name = config
            .server_name
            .clone()
            .unwrap_or_else(|| host_of(addr).to_owned());
        let server_name =
            ServerName::try_from(name.clone()).map_err(|_| TlsError::InvalidServerName { name })?;
        let connect = async {
            let tcp =
                TcpStream::connect(addr.as_str())
                    .await
                    .map_err(|source| TlsError::Connect {
                        addr: addr.clone(),
                        source,
                    })?;
            if let Err(error) = tcp.set_nodelay(true) {
                debug!(%addr, %error, "setting TCP_NODELAY failed");
            }
            let tls = TlsConnector::from(config.tls.clone())
                .connect(server_name, tcp)
                .await
                .map_err(|source| TlsError::Handshake {
                    addr: addr.clone(),
                    source,
                })?;
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(KEEP_ALIVE_INTERVAL)
                .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
                .keep_alive_while_idle(true)
                .handshake::<_, Body>(TokioIo::new(tls))
                .await?;
            let addr = addr.clone();
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    debug!(%addr, %error, "http/2 connection ended with an error");
                }
            });
            Ok::<_, TlsError>(sender)
        };
        tokio::time::timeout(config.connect_timeout, connect)
            .await
            .map_err(|_| TlsError::ConnectTimeout { addr: addr.clone() })?
    }
}

/// The host part of `"host:port"`, without IPv6 brackets.
fn host_of(addr: &str) -> &str {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => addr,
    };
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Whether `error` concerns the whole connection rather than one stream: hyper reports
/// I/O failures, timeouts and a closed connection like this.
fn is_connection_error(error: &hyper::Error) -> bool {
    if error.is_closed() || error.is_canceled() || error.is_timeout() {
        return true;
    }
    let mut source = error.source();
    while let Some(e) = source {
        if e.is::<std::io::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("127.0.0.1:2379"), "127.0.0.1");
        assert_eq!(host_of("store-0.kapp.local:2379"), "store-0.kapp.local");
        assert_eq!(host_of("[::1]:2379"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }
}
