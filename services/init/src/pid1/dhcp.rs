//! A DHCPv4 client (RFC 2131) for one interface: DISCOVER → OFFER → REQUEST → ACK over a
//! UDP socket bound to the interface, broadcast both ways (the broadcast flag asks servers
//! to answer by broadcast, since we have no address yet). Bounded: each answer is waited
//! for at most `timeout`, and only our transaction's answers count.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

const COOKIE: [u8; 4] = [99, 130, 83, 99];
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;

/// What the server granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub server: Ipv4Addr,
    pub lease_secs: u32,
}

/// One DHCP message, the parts we use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub op: u8,
    pub xid: u32,
    pub yiaddr: Ipv4Addr,
    pub mac: [u8; 6],
    /// `(code, value)` in order.
    pub options: Vec<(u8, Vec<u8>)>,
}

impl Message {
    pub fn option(&self, code: u8) -> Option<&[u8]> {
        self.options.iter().find(|(c, _)| *c == code).map(|(_, v)| v.as_slice())
    }
    fn kind(&self) -> Option<u8> {
        self.option(53).and_then(|v| v.first().copied())
    }
    fn addr(&self, code: u8) -> Option<Ipv4Addr> {
        self.option(code).filter(|v| v.len() >= 4).map(|v| Ipv4Addr::new(v[0], v[1], v[2], v[3]))
    }

    /// The wire form (a BOOTREQUEST/REPLY with the broadcast flag). Pure.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; 236];
        b[0] = self.op;
        b[1] = 1; // Ethernet
        b[2] = 6;
        b[4..8].copy_from_slice(&self.xid.to_be_bytes());
        b[10] = 0x80; // broadcast flag
        b[16..20].copy_from_slice(&self.yiaddr.octets());
        b[28..34].copy_from_slice(&self.mac);
        b.extend_from_slice(&COOKIE);
        for (code, value) in &self.options {
            b.push(*code);
            b.push(value.len() as u8);
            b.extend_from_slice(value);
        }
        b.push(255);
        b
    }

    /// Parse a message; None if it is not DHCP. Pure.
    pub fn decode(b: &[u8]) -> Option<Message> {
        if b.len() < 240 || b[236..240] != COOKIE {
            return None;
        }
        let mut options = Vec::new();
        let mut i = 240;
        while i < b.len() {
            match b[i] {
                0 => i += 1,
                255 => break,
                code => {
                    let len = *b.get(i + 1)? as usize;
                    options.push((code, b.get(i + 2..i + 2 + len)?.to_vec()));
                    i += 2 + len;
                }
            }
        }
        Some(Message {
            op: b[0],
            xid: u32::from_be_bytes(b[4..8].try_into().ok()?),
            yiaddr: Ipv4Addr::new(b[16], b[17], b[18], b[19]),
            mac: b[28..34].try_into().ok()?,
            options,
        })
    }
}

fn request(kind: u8, xid: u32, mac: [u8; 6], extra: Vec<(u8, Vec<u8>)>) -> Message {
    let mut options = vec![(53, vec![kind]), (55, vec![1, 3, 6, 51, 54])];
    options.extend(extra);
    Message { op: 1, xid, yiaddr: Ipv4Addr::UNSPECIFIED, mac, options }
}

/// The lease an ACK grants. Pure.
pub fn lease_from(ack: &Message) -> Option<Lease> {
    let mask = ack.addr(1).unwrap_or(Ipv4Addr::new(255, 255, 255, 0));
    Some(Lease {
        address: ack.yiaddr,
        prefix: u32::from(mask).count_ones() as u8,
        router: ack.addr(3),
        dns: ack.option(6).unwrap_or_default().chunks_exact(4).map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3])).collect(),
        server: ack.addr(54)?,
        lease_secs: ack.option(51).filter(|v| v.len() == 4).map_or(0, |v| u32::from_be_bytes([v[0], v[1], v[2], v[3]])),
    })
}

/// The interface's MAC address (from getifaddrs: netlink, so this network namespace's).
/// A link dump racing a change can come back without the link: asked again, bounded.
fn mac_of(iface: &str) -> Result<[u8; 6], String> {
    for _ in 0..20 {
        let found = nix::ifaddrs::getifaddrs().map_err(|e| format!("getifaddrs: {e}"))?.filter(|a| a.interface_name == iface).find_map(|a| a.address?.as_link_addr()?.addr());
        if let Some(mac) = found {
            return Ok(mac);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("{iface}: no MAC address"))
}

/// How long a DHCP client waits for an answer before sending its message again.
const RESEND: Duration = Duration::from_secs(1);

/// Get a lease on `iface` (which must be up), waiting at most `timeout` for each answer.
pub fn obtain(iface: &str, timeout: Duration) -> Result<Lease, String> {
    use nix::sys::socket::{setsockopt, sockopt};
    let mac = mac_of(iface)?;
    let socket = UdpSocket::bind("0.0.0.0:68").map_err(|e| format!("bind :68: {e}"))?;
    setsockopt(&socket, sockopt::BindToDevice, &std::ffi::OsString::from(iface)).map_err(|e| format!("bind to {iface}: {e}"))?;
    socket.set_broadcast(true).map_err(|e| e.to_string())?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    let xid = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]) ^ nanos;
    let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    // Sent again every RESEND while no answer comes: the first packets after a link comes
    // up can be dropped (its queue is activated asynchronously), and so can a reply.
    let exchange = |msg: Message, want: u8| -> Result<Message, String> {
        let deadline = Instant::now() + timeout;
        let mut resend = Instant::now();
        let mut buf = [0u8; 1500];
        loop {
            let now = Instant::now();
            let left = deadline.saturating_duration_since(now);
            if left.is_zero() {
                return Err(format!("no answer on {iface} within {}s", timeout.as_secs()));
            }
            if now >= resend {
                socket.send_to(&msg.encode(), to).map_err(|e| format!("send: {e}"))?;
                resend = now + RESEND;
            }
            socket.set_read_timeout(Some(left.min(resend.saturating_duration_since(now)).max(Duration::from_millis(1)))).map_err(|e| e.to_string())?;
            let n = match socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
                Err(e) => return Err(e.to_string()),
            };
            let Some(reply) = Message::decode(&buf[..n]) else { continue };
            if reply.op != 2 || reply.xid != msg.xid || reply.mac != mac {
                continue;
            }
            match reply.kind() {
                Some(k) if k == want => return Ok(reply),
                Some(NAK) => return Err("the server refused (NAK)".into()),
                _ => {}
            }
        }
    };
    let offer = exchange(request(DISCOVER, xid, mac, vec![]), OFFER)?;
    let server = offer.addr(54).ok_or("offer without a server identifier")?;
    let ack = exchange(request(REQUEST, xid, mac, vec![(50, offer.yiaddr.octets().to_vec()), (54, server.octets().to_vec())]), ACK)?;
    lease_from(&ack).ok_or_else(|| "ack without a server identifier".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_an_ack_is_a_lease() {
        let mac = [2, 0, 0, 0, 0, 7];
        let req = request(REQUEST, 42, mac, vec![(50, vec![10, 9, 0, 5])]);
        let back = Message::decode(&req.encode()).unwrap();
        assert_eq!(back, req);
        let ack = Message {
            op: 2,
            xid: 42,
            yiaddr: Ipv4Addr::new(10, 9, 0, 5),
            mac,
            options: vec![(53, vec![ACK]), (1, vec![255, 255, 255, 0]), (3, vec![10, 9, 0, 1]), (6, vec![10, 9, 0, 1, 9, 9, 9, 9]), (51, 3600u32.to_be_bytes().to_vec()), (54, vec![10, 9, 0, 1])],
        };
        let lease = lease_from(&Message::decode(&ack.encode()).unwrap()).unwrap();
        assert_eq!(lease, Lease { address: Ipv4Addr::new(10, 9, 0, 5), prefix: 24, router: Some(Ipv4Addr::new(10, 9, 0, 1)), dns: vec![Ipv4Addr::new(10, 9, 0, 1), Ipv4Addr::new(9, 9, 9, 9)], server: Ipv4Addr::new(10, 9, 0, 1), lease_secs: 3600 });
        assert_eq!(Message::decode(&[0u8; 100]), None);
    }
}
