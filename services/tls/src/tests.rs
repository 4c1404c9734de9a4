//! End-to-end tests: certificates, handshakes, serving, the client.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use x509_parser::extensions::GeneralName;

use crate::pki::Ca;
use crate::*;

/// A CA with a server certificate for 127.0.0.1 and a client certificate for "alice".
struct Fixture {
    ca: Ca,
    server: Pem,
    alice: Pem,
}

fn fixture() -> Fixture {
    let ca = Ca::generate("test").unwrap();
    let server = ca
        .issue("store-0", &["kapp:stores"], &["127.0.0.1", "localhost"])
        .unwrap();
    let alice = ca.issue("alice", &["system:masters", "devs"], &[]).unwrap();
    Fixture { ca, server, alice }
}

/// A running [`serve`] whose handler answers with the peer's CN ("anonymous" without one).
struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    requests: Arc<AtomicUsize>,
}

impl Server {
    async fn start(pem: &Pem, auth: ClientAuth, max_connections: usize) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Server::start_on(listener, pem, auth, max_connections)
    }

    fn start_on(
        listener: TcpListener,
        pem: &Pem,
        auth: ClientAuth,
        max_connections: usize,
    ) -> Server {
        let addr = listener.local_addr().unwrap();
        let tls = server_config(pem, auth).unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let handler = move |_request: http::Request<hyper::body::Incoming>,
                            identity: Option<Arc<Identity>>| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let name =
                    identity.map_or_else(|| "anonymous".to_owned(), |i| i.common_name.clone());
                http::Response::new(full(name))
            }
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, tls, max_connections, handler, async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            stop: Some(stop),
            task,
            requests,
        }
    }

    /// Triggers shutdown and waits for `serve` to return; returns how long that took.
    async fn stop(mut self) -> Duration {
        let started = Instant::now();
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("serve did not return")
            .unwrap()
            .unwrap();
        started.elapsed()
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Runs [`serve`] with `handler` (client auth required) until the returned sender fires.
fn spawn_serve<H, F>(
    listener: TcpListener,
    pem: &Pem,
    max_connections: usize,
    handler: H,
) -> (oneshot::Sender<()>, JoinHandle<std::io::Result<()>>)
where
    H: crate::server::Handler<F>,
    F: std::future::Future<Output = http::Response<Body>> + Send + 'static,
{
    let tls = server_config(pem, ClientAuth::Required).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, tls, max_connections, handler, async {
        let _ = stopped.await;
    }));
    (stop, task)
}

fn get(path: &str) -> http::Request<Body> {
    http::Request::builder().uri(path).body(empty()).unwrap()
}

async fn text(response: http::Response<hyper::body::Incoming>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

async fn ask(client: &H2Client) -> Result<String, TlsError> {
    let response = tokio::time::timeout(Duration::from_secs(10), client.send(get("/whoami")))
        .await
        .expect("request hung")?;
    assert_eq!(response.status(), http::StatusCode::OK);
    Ok(text(response).await)
}

fn client_for(server: &Server, pem: &Pem) -> H2Client {
    H2Client::new(server.addr.to_string(), client_config(pem).unwrap())
}

fn first_cert(pem: &str) -> Vec<u8> {
    parse_certs(pem, "test").unwrap()[0].to_vec()
}

async fn wait_until_disconnected(client: &H2Client) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.is_connected().await {
        assert!(
            Instant::now() < deadline,
            "client never noticed the closed connection"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn public_types_are_thread_safe() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<TlsError>();
    assert_send_sync::<H2Client>();
    assert_send_sync::<Body>();
    assert_send_sync::<Pem>();
    assert_send_sync::<Identity>();
    assert_send_sync::<pki::Ca>();
}

#[test]
fn issued_certificate_carries_common_name_and_all_organizations() {
    let ca = Ca::generate("prod").unwrap();
    let pem = ca
        .issue(
            "node-1",
            &["system:nodes", "kapp:stores", "Ünïcode org"],
            &["127.0.0.1", "::1", "node-1.kapp.local"],
        )
        .unwrap();
    assert_eq!(pem.ca, ca.cert_pem());

    let der = first_cert(&pem.cert);
    assert_eq!(
        identity_from_der(&der).unwrap(),
        Identity {
            common_name: "node-1".into(),
            organizations: vec![
                "system:nodes".into(),
                "kapp:stores".into(),
                "Ünïcode org".into()
            ],
        }
    );

    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let ca_der = first_cert(&ca.cert_pem());
    let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    assert_eq!(cert.issuer().as_raw(), ca_cert.subject().as_raw());
    assert_eq!(
        ca_cert
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "prod CA"
    );
    assert!(ca_cert.is_ca());
    assert!(!cert.is_ca());
    let ca_years = (ca_cert.validity().not_after.timestamp()
        - ca_cert.validity().not_before.timestamp())
        / (365 * 24 * 3600);
    assert_eq!(ca_years, 10);

    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let sans = &cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert!(sans.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])));
    let mut v6 = [0u8; 16];
    v6[15] = 1;
    assert!(sans.contains(&GeneralName::IPAddress(&v6)));
    assert!(sans.contains(&GeneralName::DNSName("node-1.kapp.local")));
    assert_eq!(sans.len(), 3);

    // Without organizations the identity has none.
    let plain = ca.issue("bob", &[], &[]).unwrap();
    let identity = identity_from_der(&first_cert(&plain.cert)).unwrap();
    assert_eq!(identity.common_name, "bob");
    assert!(identity.organizations.is_empty());

    assert!(matches!(
        ca.issue("", &[], &[]),
        Err(TlsError::NoCommonName)
    ));
    assert!(identity_from_der(b"not a certificate").is_err());
}

#[tokio::test]
async fn round_trip_reports_client_identity() {
    let f = fixture();
    let server = Server::start(&f.server, ClientAuth::Required, 16).await;
    let client = client_for(&server, &f.alice);
    assert_eq!(client.addr(), server.addr.to_string());
    assert_eq!(ask(&client).await.unwrap(), "alice");
    // A clone shares the connection and works too.
    assert_eq!(ask(&client.clone()).await.unwrap(), "alice");
    assert_eq!(server.requests(), 2);
    server.stop().await;
}

#[tokio::test]
async fn ca_loaded_from_pem_issues_certificates_that_chain() {
    let f = fixture();
    let loaded = Ca::from_pem(&f.ca.cert_pem(), &f.ca.key_pem()).unwrap();
    assert_eq!(loaded.cert_pem(), f.ca.cert_pem());
    let carol = loaded.issue("carol", &["devs"], &[]).unwrap();
    let server = Server::start(&f.server, ClientAuth::Required, 16).await;
    assert_eq!(ask(&client_for(&server, &carol)).await.unwrap(), "carol");
    server.stop().await;

    let other = Ca::generate("other").unwrap();
    assert!(matches!(
        Ca::from_pem(&f.ca.cert_pem(), &other.key_pem()),
        Err(TlsError::KeyMismatch)
    ));
    assert!(matches!(
        Ca::from_pem(&f.alice.cert, &f.alice.key),
        Err(TlsError::NotCa)
    ));
    assert!(matches!(
        Ca::from_pem("garbage", &f.ca.key_pem()),
        Err(TlsError::NoCertificate { .. })
    ));
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let f = fixture();
    let other = Ca::generate("other").unwrap();
    let mallory = other.issue("mallory", &["system:masters"], &[]).unwrap();
    // Mallory trusts our CA (so she accepts the server) but her certificate is from another CA.
    let mallory = Pem {
        ca: f.ca.cert_pem(),
        ..mallory
    };
    for auth in [ClientAuth::Required, ClientAuth::Optional] {
        let server = Server::start(&f.server, auth, 16).await;
        let result = ask(&client_for(&server, &mallory)).await;
        assert!(result.is_err(), "{auth:?}: mallory got {result:?}");
        // The server still works for legitimate clients, and never saw mallory's request.
        assert_eq!(ask(&client_for(&server, &f.alice)).await.unwrap(), "alice");
        assert_eq!(server.requests(), 1, "{auth:?}");
        server.stop().await;
    }
}

#[tokio::test]
async fn optional_client_auth_admits_anonymous_clients() {
    let f = fixture();
    let server = Server::start(&f.server, ClientAuth::Optional, 16).await;
    let anonymous = H2Client::new(
        server.addr.to_string(),
        client_config_anonymous(&f.ca.cert_pem()).unwrap(),
    );
    assert_eq!(ask(&anonymous).await.unwrap(), "anonymous");
    assert_eq!(ask(&client_for(&server, &f.alice)).await.unwrap(), "alice");
    server.stop().await;
}

#[tokio::test]
async fn required_client_auth_refuses_anonymous_clients() {
    let f = fixture();
    let server = Server::start(&f.server, ClientAuth::Required, 16).await;
    let anonymous = H2Client::new(
        server.addr.to_string(),
        client_config_anonymous(&f.ca.cert_pem()).unwrap(),
    );
    let result = ask(&anonymous).await;
    assert!(result.is_err(), "anonymous got {result:?}");
    assert_eq!(server.requests(), 0);
    server.stop().await;
}

#[tokio::test]
async fn server_certificate_must_name_the_address() {
    let f = fixture();
    let elsewhere =
        f.ca.issue("store-1", &[], &["store-1.kapp.internal", "10.9.9.9"])
            .unwrap();
    let server = Server::start(&elsewhere, ClientAuth::Required, 16).await;
    let result = ask(&client_for(&server, &f.alice)).await;
    assert!(
        matches!(result, Err(TlsError::Handshake { .. })),
        "got {result:?}"
    );
    assert_eq!(server.requests(), 0);
    // Naming the server explicitly makes it acceptable.
    let named = client_for(&server, &f.alice).with_server_name("store-1.kapp.internal");
    assert_eq!(ask(&named).await.unwrap(), "alice");
    server.stop().await;
}

fn node_identity(name: &str) -> Identity {
    Identity {
        common_name: format!("system:node:{name}"),
        organizations: vec!["kapp:nodes".into()],
    }
}

/// Reaches `server` as `pem`, accepting only a server that is `expected`.
fn peer_client(server: &Server, pem: &Pem, expected: &Identity) -> H2Client {
    H2Client::new(
        server.addr.to_string(),
        client_config_for_peer(pem, expected).unwrap(),
    )
}

/// The message of a refused handshake.
async fn refusal(client: &H2Client) -> String {
    match ask(client).await {
        Err(e @ TlsError::Handshake { .. }) => e.to_string(),
        other => panic!("expected a refused handshake, got {other:?}"),
    }
}

#[tokio::test]
async fn peer_config_accepts_a_server_by_its_identity_whatever_its_address() {
    let f = fixture();
    // A node certificate naming no address at all.
    let node = f.ca.issue("system:node:a", &["kapp:nodes"], &[]).unwrap();
    let server = Server::start(&node, ClientAuth::Required, 16).await;
    // The address check refuses it; the identity check accepts it, presenting alice.
    assert!(refusal(&client_for(&server, &f.alice)).await.contains("not valid for"));
    assert_eq!(
        ask(&peer_client(&server, &f.alice, &node_identity("a")))
            .await
            .unwrap(),
        "alice"
    );
    // Another node's name, or a group the certificate lacks: refused, saying who answered.
    let mut admin_a = node_identity("a");
    admin_a.organizations.push("kapp:admins".into());
    for wrong in [node_identity("b"), admin_a] {
        let message = refusal(&peer_client(&server, &f.alice, &wrong)).await;
        assert!(
            message.contains(r#"the server is "system:node:a" in ["kapp:nodes"]"#),
            "{message}"
        );
    }
    assert_eq!(server.requests(), 1);
    server.stop().await;
}

#[tokio::test]
async fn peer_config_still_demands_the_cluster_ca_and_a_valid_certificate() {
    let f = fixture();
    // The right name from another CA (the server itself trusts our CA, so only the
    // client's check can refuse it).
    let other = Ca::generate("other").unwrap();
    let forged = Pem {
        ca: f.ca.cert_pem(),
        ..other.issue("system:node:a", &["kapp:nodes"], &[]).unwrap()
    };
    let server = Server::start(&forged, ClientAuth::Required, 16).await;
    let message = refusal(&peer_client(&server, &f.alice, &node_identity("a"))).await;
    assert!(message.contains("UnknownIssuer"), "{message}");
    server.stop().await;
    // The right name, expired.
    let expired =
        f.ca.issue_with_validity("system:node:a", &["kapp:nodes"], &[], Duration::from_secs(1))
            .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let server = Server::start(&expired, ClientAuth::Required, 16).await;
    let message = refusal(&peer_client(&server, &f.alice, &node_identity("a"))).await;
    assert!(message.contains("expired"), "{message}");
    assert_eq!(server.requests(), 0);
    server.stop().await;
}

#[tokio::test]
async fn client_reconnects_after_server_restart() {
    let f = fixture();
    let first = Server::start(&f.server, ClientAuth::Required, 16).await;
    let addr = first.addr;
    let client = client_for(&first, &f.alice);
    assert_eq!(ask(&client).await.unwrap(), "alice");
    assert!(client.is_connected().await);

    // An idle connection does not hold up shutdown.
    assert!(first.stop().await < Duration::from_secs(2));
    wait_until_disconnected(&client).await;
    assert!(ask(&client).await.is_err(), "nothing listens any more");

    let second = Server::start_on(
        TcpListener::bind(addr).await.unwrap(),
        &f.server,
        ClientAuth::Required,
        16,
    );
    assert_eq!(ask(&client).await.unwrap(), "alice");
    assert_eq!(second.requests(), 1);
    second.stop().await;
}

#[tokio::test]
async fn max_connections_makes_further_connections_wait() {
    let f = fixture();
    let bob = f.ca.issue("bob", &[], &[]).unwrap();
    let server = Server::start(&f.server, ClientAuth::Required, 1).await;
    let alice = client_for(&server, &f.alice);
    assert_eq!(ask(&alice).await.unwrap(), "alice");

    // Alice's connection stays open: bob's connection is not accepted meanwhile.
    let bob = client_for(&server, &bob).with_connect_timeout(Duration::from_secs(10));
    let waiting = tokio::spawn(async move { ask(&bob).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !waiting.is_finished(),
        "bob was served while alice held the only slot"
    );
    assert_eq!(server.requests(), 1);

    // Once alice's connection closes, bob gets through.
    alice.disconnect().await;
    drop(alice);
    let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("bob still waiting after alice left")
        .unwrap();
    assert_eq!(answer.unwrap(), "bob");
    assert_eq!(server.requests(), 2);
    server.stop().await;
}

#[tokio::test]
async fn concurrent_requests_share_one_connection() {
    const REQUESTS: usize = 64;
    let f = fixture();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // No request is answered before all of them have arrived, and the server admits one
    // connection only: this passes only if all requests are in flight on one connection.
    let barrier = Arc::new(tokio::sync::Barrier::new(REQUESTS));
    let handler = move |_request: http::Request<hyper::body::Incoming>,
                        identity: Option<Arc<Identity>>| {
        let barrier = barrier.clone();
        async move {
            barrier.wait().await;
            http::Response::new(full(identity.unwrap().common_name.clone()))
        }
    };
    let (stop, task) = spawn_serve(listener, &f.server, 1, handler);
    let client = H2Client::new(addr.to_string(), client_config(&f.alice).unwrap())
        .with_connect_timeout(Duration::from_secs(2));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..REQUESTS {
        let client = client.clone();
        tasks.spawn(async move { ask(&client).await });
    }
    while let Some(result) = tasks.join_next().await {
        assert_eq!(result.unwrap().unwrap(), "alice");
    }
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn connect_errors_are_typed() {
    let f = fixture();
    // A port nothing listens on.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let client = H2Client::new(addr.to_string(), client_config(&f.alice).unwrap());
    assert!(matches!(
        client.send(get("/")).await,
        Err(TlsError::Connect { .. })
    ));
    // A listener that never completes the TLS handshake.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = H2Client::new(
        silent.local_addr().unwrap().to_string(),
        client_config(&f.alice).unwrap(),
    )
    .with_connect_timeout(Duration::from_millis(300));
    assert!(matches!(
        client.send(get("/")).await,
        Err(TlsError::ConnectTimeout { .. })
    ));
    let bad = H2Client::new("no port here", client_config(&f.alice).unwrap());
    assert!(bad.send(get("/")).await.is_err());
}

#[tokio::test]
async fn stream_body_delivers_chunks_as_they_are_produced() {
    let f = fixture();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let go_on = Arc::new(Notify::new());
    let producer_gone = Arc::new(Notify::new());
    let handler = {
        let go_on = go_on.clone();
        let producer_gone = producer_gone.clone();
        move |_request: http::Request<hyper::body::Incoming>, _identity: Option<Arc<Identity>>| {
            let go_on = go_on.clone();
            let producer_gone = producer_gone.clone();
            async move {
                let (tx, rx) = mpsc::channel::<Bytes>(4);
                tokio::spawn(async move {
                    tx.send(Bytes::from_static(b"first")).await.unwrap();
                    go_on.notified().await;
                    tx.send(Bytes::from_static(b"second")).await.unwrap();
                    producer_gone.notify_one();
                });
                http::Response::new(stream_body(rx))
            }
        }
    };
    let (stop, task) = spawn_serve(listener, &f.server, 4, handler);

    let client = H2Client::new(addr.to_string(), client_config(&f.alice).unwrap());
    let mut body = client.send(get("/watch")).await.unwrap().into_body();
    let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first chunk not delivered before the stream ended")
        .unwrap()
        .unwrap();
    assert_eq!(frame.into_data().unwrap(), "first");
    go_on.notify_one();
    let rest = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(rest, "second");
    producer_gone.notified().await;

    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_waits_for_in_flight_streams_but_not_forever() {
    let f = fixture();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Senders are kept here so the streamed bodies never end.
    let senders = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let senders = senders.clone();
        move |_request: http::Request<hyper::body::Incoming>, _identity: Option<Arc<Identity>>| {
            let (tx, rx) = mpsc::channel::<Bytes>(1);
            senders.lock().unwrap().push(tx);
            async move { http::Response::new(stream_body(rx)) }
        }
    };
    let (stop, task) = spawn_serve(listener, &f.server, 4, handler);
    let client = H2Client::new(addr.to_string(), client_config(&f.alice).unwrap());
    let response = client.send(get("/watch")).await.unwrap();
    assert_eq!(senders.lock().unwrap().len(), 1);

    let started = Instant::now();
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("serve did not return")
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(4),
        "did not wait for the stream: {took:?}"
    );
    assert!(took < Duration::from_secs(8), "waited too long: {took:?}");
    // The aborted stream surfaces as an error (or end) on the client, not a hang.
    let collected = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
        .await
        .expect("client body hangs after the server went away");
    assert!(collected.is_err());
}

#[test]
fn pem_files_round_trip_and_load_errors_name_the_file() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.crt");
    let cert = dir.path().join("alice.crt");
    let key = dir.path().join("alice.key");
    f.alice.write_files(&ca, &cert, &key).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let loaded = Pem::load(&ca, &cert, &key).unwrap();
    assert_eq!(loaded, f.alice);
    client_config(&loaded).unwrap();

    let missing = dir.path().join("missing.key");
    let error = Pem::load(&ca, &cert, &missing).unwrap_err();
    assert!(
        matches!(&error, TlsError::Io { path, .. } if path == &missing),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("missing.key"),
        "message does not name the file: {error}"
    );

    // A key file given as certificate: the error names that file.
    let error = Pem::load(&ca, &key, &key).unwrap_err();
    assert!(
        matches!(&error, TlsError::NoCertificate { origin } if origin.contains("alice.key")),
        "{error:?}"
    );
    // A certificate given as key.
    let error = Pem::load(&ca, &cert, &cert).unwrap_err();
    assert!(
        matches!(&error, TlsError::NoPrivateKey { origin } if origin.contains("alice.crt")),
        "{error:?}"
    );
}
