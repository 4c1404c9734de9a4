//! The balancer against real TCP servers on loopback: connections go to the first backend
//! while it answers, to the next as soon as it stops, and stay there.

use std::time::Duration;

use kapp_apilb::{Balancer, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A backend that greets every connection with its name and then echoes.
async fn backend(name: &'static str) -> (String, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                s.write_all(name.as_bytes()).await.unwrap();
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, task)
}

/// Connect through the balancer, read the greeting, check an echo.
async fn greet(lb: &str) -> String {
    let mut s = TcpStream::connect(lb).await.unwrap();
    let mut name = [0u8; 1];
    s.read_exact(&mut name).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    s.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
    String::from_utf8(name.to_vec()).unwrap()
}

#[tokio::test]
async fn connections_move_to_the_next_apiserver_when_one_stops_answering() {
    let (a, a_task) = backend("a").await;
    let (b, _b_task) = backend("b").await;
    // A port nobody listens on comes first: it is skipped at once.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string();
    let lb = Balancer::new(Config::new(vec![dead, a, b])).unwrap();
    let listener = Balancer::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(lb.clone().serve(listener));

    assert_eq!(greet(&addr).await, "a");
    assert_eq!(greet(&addr).await, "a");
    assert_eq!(lb.preferred(), 1);
    // Backend a goes away (its listener closes): the next connection lands on b, and the
    // ones after it go there first.
    a_task.abort();
    let _ = a_task.await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(greet(&addr).await, "b");
    assert_eq!(lb.preferred(), 2);
    assert_eq!(greet(&addr).await, "b");
}

#[tokio::test]
async fn no_backend_is_refused_and_none_answering_closes_the_client() {
    assert!(Balancer::new(Config::new(vec![])).is_err());
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string();
    let lb = Balancer::new(Config::new(vec![dead])).unwrap();
    let listener = Balancer::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(lb.serve(listener));
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("closed, not left hanging");
    assert!(matches!(n, Ok(0) | Err(_)));
}
