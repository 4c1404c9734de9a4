//! A DHCPv4 client (RFC 2131) for one interface: DISCOVER → OFFER → REQUEST → ACK over a
//! UDP socket bound to the interface, broadcast both ways (the broadcast flag asks servers
//! to answer by broadcast, since we have no address yet). Bounded: each answer is waited
//! for at most `timeout`, and only our transaction's answers count. [`keep`] then holds the
//! lease: a REQUEST to the server at half its time (renewing), broadcast from 7/8 on
//! (rebinding), a new DISCOVER once it ran out.

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
    /// The client's address when it has one (renewing, rebinding).
    pub ciaddr: Ipv4Addr,
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
        if self.ciaddr.is_unspecified() {
            b[10] = 0x80; // broadcast flag: we cannot receive unicast yet
        }
        b[12..16].copy_from_slice(&self.ciaddr.octets());
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
            ciaddr: Ipv4Addr::new(b[12], b[13], b[14], b[15]),
            yiaddr: Ipv4Addr::new(b[16], b[17], b[18], b[19]),
            mac: b[28..34].try_into().ok()?,
            options,
        })
    }
}

fn request(kind: u8, xid: u32, mac: [u8; 6], extra: Vec<(u8, Vec<u8>)>) -> Message {
    let mut options = vec![(53, vec![kind]), (55, vec![1, 3, 6, 51, 54])];
    options.extend(extra);
    Message { op: 1, xid, ciaddr: Ipv4Addr::UNSPECIFIED, yiaddr: Ipv4Addr::UNSPECIFIED, mac, options }
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

/// A client socket on one interface (port 68, bound to the device).
struct Client {
    iface: String,
    mac: [u8; 6],
    socket: UdpSocket,
}

impl Client {
    fn open(iface: &str) -> Result<Client, String> {
        use nix::sys::socket::{setsockopt, sockopt};
        let mac = mac_of(iface)?;
        let socket = UdpSocket::bind("0.0.0.0:68").map_err(|e| format!("bind :68: {e}"))?;
        setsockopt(&socket, sockopt::BindToDevice, &std::ffi::OsString::from(iface)).map_err(|e| format!("bind to {iface}: {e}"))?;
        socket.set_broadcast(true).map_err(|e| e.to_string())?;
        Ok(Client { iface: iface.to_string(), mac, socket })
    }

    fn xid(&self) -> u32 {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        u32::from_be_bytes([self.mac[2], self.mac[3], self.mac[4], self.mac[5]]) ^ nanos
    }

    /// Send `msg` to `to` (again every RESEND while no answer comes: the first packets
    /// after a link comes up can be dropped, and so can a reply) until an answer of kind
    /// `want` to our transaction arrives, at most `timeout`.
    fn exchange(&self, msg: &Message, want: u8, to: SocketAddrV4, timeout: Duration) -> Result<Message, String> {
        let deadline = Instant::now() + timeout;
        let mut resend = Instant::now();
        let mut buf = [0u8; 1500];
        loop {
            let now = Instant::now();
            let left = deadline.saturating_duration_since(now);
            if left.is_zero() {
                return Err(format!("no answer on {} within {}s", self.iface, timeout.as_secs()));
            }
            if now >= resend {
                self.socket.send_to(&msg.encode(), to).map_err(|e| format!("send: {e}"))?;
                resend = now + RESEND;
            }
            self.socket.set_read_timeout(Some(left.min(resend.saturating_duration_since(now)).max(Duration::from_millis(1)))).map_err(|e| e.to_string())?;
            let n = match self.socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
                Err(e) => return Err(e.to_string()),
            };
            let Some(reply) = Message::decode(&buf[..n]) else { continue };
            if reply.op != 2 || reply.xid != msg.xid || reply.mac != self.mac {
                continue;
            }
            match reply.kind() {
                Some(k) if k == want => return Ok(reply),
                Some(NAK) => return Err("the server refused (NAK)".into()),
                _ => {}
            }
        }
    }
}

const BROADCAST: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);

/// Get a lease on `iface` (which must be up), waiting at most `timeout` for each answer.
pub fn obtain(iface: &str, timeout: Duration) -> Result<Lease, String> {
    let c = Client::open(iface)?;
    let xid = c.xid();
    let offer = c.exchange(&request(DISCOVER, xid, c.mac, vec![]), OFFER, BROADCAST, timeout)?;
    let server = offer.addr(54).ok_or("offer without a server identifier")?;
    let ack = c.exchange(&request(REQUEST, xid, c.mac, vec![(50, offer.yiaddr.octets().to_vec()), (54, server.octets().to_vec())]), ACK, BROADCAST, timeout)?;
    lease_from(&ack).ok_or_else(|| "ack without a server identifier".into())
}

/// Extend `lease`: a REQUEST carrying the address we hold, to the server that granted it
/// (renewing) or to everyone (`rebinding`, once that server stayed silent).
pub fn renew(iface: &str, lease: &Lease, rebinding: bool, timeout: Duration) -> Result<Lease, String> {
    let c = Client::open(iface)?;
    let mut msg = request(REQUEST, c.xid(), c.mac, vec![]);
    msg.ciaddr = lease.address;
    let to = if rebinding { BROADCAST } else { SocketAddrV4::new(lease.server, 67) };
    let ack = c.exchange(&msg, ACK, to, timeout)?;
    lease_from(&ack).ok_or_else(|| "ack without a server identifier".into())
}

/// What to do `elapsed` into a lease of `secs` seconds (RFC 2131's T1 = 1/2, T2 = 7/8).
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing until then.
    Wait(Duration),
    Renew,
    Rebind,
    /// It ran out: start over with DISCOVER.
    Expired,
    /// An infinite (or zero: not given) lease: never renewed.
    Never,
}

/// Pure.
pub fn step(secs: u32, elapsed: Duration) -> Step {
    if secs == 0 || secs == u32::MAX {
        return Step::Never;
    }
    let total = Duration::from_secs(u64::from(secs));
    let (t1, t2) = (total / 2, total * 7 / 8);
    match elapsed {
        e if e < t1 => Step::Wait(t1 - e),
        e if e < t2 => Step::Renew,
        e if e < total => Step::Rebind,
        _ => Step::Expired,
    }
}

/// Hold `lease` on `iface` for as long as the process lives (PID 1 runs it on a thread of
/// its own), saying what happens. Between failed tries it waits half the time left to the
/// next phase, at least 5 s.
pub fn keep(iface: &str, mut lease: Lease, say: impl Fn(&str)) {
    let mut since = Instant::now();
    loop {
        let elapsed = since.elapsed();
        let result = match step(lease.lease_secs, elapsed) {
            Step::Never => return,
            Step::Wait(d) => {
                std::thread::sleep(d);
                continue;
            }
            Step::Renew => renew(iface, &lease, false, Duration::from_secs(5)),
            Step::Rebind => renew(iface, &lease, true, Duration::from_secs(5)),
            Step::Expired => {
                say(&format!("DHCP lease of {} on {iface} expired; asking anew", lease.address));
                obtain(iface, Duration::from_secs(5))
            }
        };
        match result {
            Ok(l) => {
                if l.address != lease.address {
                    say(&format!("DHCP on {iface}: the server moved us from {} to {} (the node keeps serving on the old address until it restarts)", lease.address, l.address));
                }
                say(&format!("DHCP lease of {} on {iface} renewed for {}s", l.address, l.lease_secs));
                lease = l;
                since = Instant::now();
            }
            Err(e) => {
                let total = Duration::from_secs(u64::from(lease.lease_secs));
                let next_phase = [total / 2, total * 7 / 8, total].into_iter().find(|t| *t > elapsed).unwrap_or(total);
                let wait = ((next_phase.saturating_sub(elapsed)) / 2).max(Duration::from_secs(5));
                tracing::warn!(%iface, error = %e, "DHCP renewal; next try in {wait:?}");
                std::thread::sleep(wait);
            }
        }
    }
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
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::new(10, 9, 0, 5),
            mac,
            options: vec![(53, vec![ACK]), (1, vec![255, 255, 255, 0]), (3, vec![10, 9, 0, 1]), (6, vec![10, 9, 0, 1, 9, 9, 9, 9]), (51, 3600u32.to_be_bytes().to_vec()), (54, vec![10, 9, 0, 1])],
        };
        let lease = lease_from(&Message::decode(&ack.encode()).unwrap()).unwrap();
        assert_eq!(lease, Lease { address: Ipv4Addr::new(10, 9, 0, 5), prefix: 24, router: Some(Ipv4Addr::new(10, 9, 0, 1)), dns: vec![Ipv4Addr::new(10, 9, 0, 1), Ipv4Addr::new(9, 9, 9, 9)], server: Ipv4Addr::new(10, 9, 0, 1), lease_secs: 3600 });
        assert_eq!(Message::decode(&[0u8; 100]), None);
        // A renewal carries the address and asks for a unicast answer.
        let mut renewal = request(REQUEST, 43, mac, vec![]);
        renewal.ciaddr = Ipv4Addr::new(10, 9, 0, 5);
        let wire = renewal.encode();
        assert_eq!((wire[10], &wire[12..16]), (0, &[10, 9, 0, 5][..]));
        assert_eq!(Message::decode(&wire).unwrap(), renewal);
    }

    #[test]
    fn renew_at_half_rebind_at_seven_eighths_then_start_over() {
        let s = Duration::from_secs;
        assert_eq!(step(600, s(0)), Step::Wait(s(300)));
        assert_eq!(step(600, s(299)), Step::Wait(s(1)));
        assert_eq!(step(600, s(300)), Step::Renew);
        assert_eq!(step(600, s(525)), Step::Rebind);
        assert_eq!(step(600, s(600)), Step::Expired);
        assert_eq!(step(u32::MAX, s(10)), Step::Never);
        assert_eq!(step(0, s(10)), Step::Never);
    }
}
