//! The UDP side of the server: hickory's `Catalog` answers, but the socket loop is ours.
//!
//! hickory-server's own UDP loop spawns a task per datagram and sends every answer through
//! a channel to the task that owns the socket; for a cluster DNS that answers almost every
//! query from memory, that machinery cost more than the answer. Here a query for one of
//! kapp's zones is answered inline by the receiving task and written straight to the
//! socket; anything else (forwarded upstream, which waits on the network) runs in its own
//! task, at most [`MAX_FORWARDING`] at a time — beyond that the query is dropped and the
//! client retries, as it would with a busy server.

use std::net::SocketAddr;
use std::sync::Arc;

use hickory_proto::op::{Header, Metadata, MessageType, ResponseCode};
use hickory_proto::rr::{LowerName, Name, Record};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{Catalog, MessageResponse};
use tokio::net::UdpSocket;
use tokio::sync::{watch, Semaphore};

/// Forwarded queries in flight at most.
pub const MAX_FORWARDING: usize = 1024;

/// Writes one encoded answer to the socket it came in on.
#[derive(Clone)]
struct Reply {
    socket: Arc<UdpSocket>,
    dst: SocketAddr,
}

#[async_trait::async_trait]
impl ResponseHandler for Reply {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let id = response.metadata().id;
        // RFC 1035 4.2.1: 512 bytes unless the client's EDNS says more.
        let max = response.edns().map_or(512, |e| e.max_payload());
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(max);
        let info = match response.destructive_emit(&mut encoder) {
            Ok(info) => info,
            Err(error) => {
                tracing::warn!(%error, "dns answer does not encode; SERVFAIL");
                bytes.clear();
                let mut metadata = Metadata::new(id, MessageType::Response, hickory_proto::op::OpCode::Query);
                metadata.response_code = ResponseCode::ServFail;
                let header = Header { metadata, counts: Default::default() };
                header.emit(&mut BinEncoder::new(&mut bytes)).map_err(NetError::from)?;
                ResponseInfo::from(header)
            }
        };
        self.socket.send_to(&bytes, self.dst).await.map_err(NetError::from)?;
        Ok(info)
    }
}

/// The catalog shared by the UDP loop and hickory's TCP server.
pub struct SharedCatalog(pub Arc<Catalog>);

#[async_trait::async_trait]
impl RequestHandler for SharedCatalog {
    async fn handle_request<R: ResponseHandler, T: hickory_server::net::runtime::Time>(&self, request: &Request, response_handle: R) -> ResponseInfo {
        self.0.handle_request::<R, T>(request, response_handle).await
    }
}

/// Whether `name` is inside one of `zones`.
fn ours(zones: &[LowerName], name: &LowerName) -> bool {
    zones.iter().any(|z| z.zone_of(name))
}

/// A FORMERR for a datagram whose header parses but whose body does not.
fn format_error(raw: &[u8]) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(raw)).ok()?;
    let mut metadata = Metadata::new(header.metadata.id, MessageType::Response, header.metadata.op_code);
    metadata.response_code = ResponseCode::FormErr;
    let mut out = Vec::with_capacity(12);
    Header { metadata, counts: Default::default() }.emit(&mut BinEncoder::new(&mut out)).ok()?;
    Some(out)
}

/// Serve `socket` until `stop` turns true.
pub async fn serve(socket: UdpSocket, catalog: Arc<Catalog>, zones: Vec<Name>, mut stop: watch::Receiver<bool>) {
    let socket = Arc::new(socket);
    let zones: Arc<[LowerName]> = zones.iter().map(LowerName::new).collect();
    let forwarding = Arc::new(Semaphore::new(MAX_FORWARDING));
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, src) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors of earlier answers surface here on Linux; keep serving.
                    tracing::debug!(error = %e, "dns udp receive");
                    continue;
                }
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        if src.port() == 0 || src.ip().is_unspecified() {
            continue;
        }
        let raw = buf[..n].to_vec();
        let request = match Request::from_bytes(raw, src, Protocol::Udp) {
            Ok(r) => r,
            Err(_) => {
                if let Some(err) = format_error(&buf[..n]) {
                    let _ = socket.send_to(&err, src).await;
                }
                continue;
            }
        };
        let reply = Reply { socket: socket.clone(), dst: src };
        let local = request.request_info().is_ok_and(|info| ours(&zones, info.query.name()));
        if local {
            catalog.handle_request::<_, TokioTime>(&request, reply).await;
        } else {
            let Ok(permit) = forwarding.clone().try_acquire_owned() else {
                tracing::debug!(%src, "too many forwarded queries in flight; dropped");
                continue;
            };
            let catalog = catalog.clone();
            tokio::spawn(async move {
                catalog.handle_request::<_, TokioTime>(&request, reply).await;
                drop(permit);
            });
        }
    }
}
