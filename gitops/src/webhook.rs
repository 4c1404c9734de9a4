//! The webhook a git host calls on push: `POST /hook` with the body signed like GitHub's
//! `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>` (Gitea and GitLab-style
//! hosts can send the same). A valid call wakes the reconciler at once; anything else gets
//! 401/404/413 and changes nothing. Plain HTTP on the head's address: the HMAC, not the
//! transport, authenticates the caller, and the body carries nothing gitops trusts.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};

/// Largest webhook body read.
const MAX_BODY: usize = 1 << 20;
/// Webhook connections served at once.
const MAX_CONNECTIONS: usize = 64;

/// Whether `header` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`.
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else { return false };
    let mac = hmac_sha256::HMAC::mac(body, secret);
    let want: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    // Constant time over the expected length.
    hex.len() == want.len() && hex.bytes().zip(want.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

async fn handle(req: Request<Incoming>, secret: Arc<Vec<u8>>, trigger: Arc<Notify>) -> Response<Full<Bytes>> {
    let reply = |code: StatusCode, msg: &str| Response::builder().status(code).body(Full::new(Bytes::from(format!("{msg}\n")))).expect("valid response");
    if req.method() != hyper::Method::POST || req.uri().path() != "/hook" {
        return reply(StatusCode::NOT_FOUND, "POST /hook");
    }
    let sig = req.headers().get("x-hub-signature-256").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(StatusCode::PAYLOAD_TOO_LARGE, "body over 1 MiB"),
    };
    if !verify(&secret, &body, &sig) {
        tracing::warn!("webhook call with a missing or wrong signature");
        return reply(StatusCode::UNAUTHORIZED, "X-Hub-Signature-256 does not match");
    }
    trigger.notify_one();
    reply(StatusCode::ACCEPTED, "fetching")
}

/// Serve the webhook on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, secret: Vec<u8>, trigger: Arc<Notify>) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let secret = Arc::new(secret);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = listener.accept().await?;
        let Ok(permit) = slots.clone().acquire_owned().await else { return Ok(addr) };
        let (secret, trigger) = (secret.clone(), trigger.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (secret, trigger) = (secret.clone(), trigger.clone());
                async move { Ok::<_, std::convert::Infallible>(handle(req, secret, trigger).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, svc);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked() {
        // GitHub's documented example: secret "It's a Secret to Everybody", body "Hello, World!".
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(verify(b"It's a Secret to Everybody", b"Hello, World!", sig));
        assert!(!verify(b"wrong", b"Hello, World!", sig));
        assert!(!verify(b"It's a Secret to Everybody", b"Hello, World?", sig));
        assert!(!verify(b"It's a Secret to Everybody", b"Hello, World!", "sha1=abc"));
    }
}
