//! The boxed body type used for requests and responses, and constructors for it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Frame;
use tokio::sync::mpsc;

/// Error type of [`Body`]: any boxed error.
pub type BodyError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Request/response body type used everywhere; boxed so handlers can stream (e.g. watches).
pub type Body = BoxBody<Bytes, BodyError>;

/// A body holding `bytes` in one piece.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// Boxes any body whose error converts into [`BodyError`] (e.g. a received
/// `hyper::body::Incoming`, to forward it).
pub fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BodyError>,
{
    body.map_err(Into::into).boxed()
}

/// A streaming body: each message received on `rx` is sent as one DATA frame, and the body ends
/// when every sender has been dropped.
///
/// When the peer goes away (or the request/response is dropped) the receiver is dropped, so the
/// producer's `send` fails: that is the signal to stop producing.
pub fn stream_body(rx: mpsc::Receiver<Bytes>) -> Body {
    ChannelBody { rx }.boxed()
}

/// Reads a whole body into memory, failing if it is longer than `limit` bytes.
pub async fn collect_limited<B>(body: B, limit: usize) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BodyError>,
{
    Ok(Limited::new(body, limit).collect().await?.to_bytes())
}

struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

