//! The clock from an NTP server (SNTP, RFC 4330): one request per server, bounded, the
//! first good answer wins. Certificates are checked against the clock, so a node sets it
//! before its services start.

use std::net::{ToSocketAddrs, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from 1900 (NTP's era) to 1970.
const NTP_TO_UNIX: u64 = 2_208_988_800;

#[derive(Debug, thiserror::Error)]
#[error("{server}: {reason}")]
pub struct SntpError {
    pub server: String,
    pub reason: String,
}

/// A client request: version 4, mode 3 (client).
pub fn request() -> [u8; 48] {
    let mut p = [0u8; 48];
    p[0] = (4 << 3) | 3;
    p
}

/// The server's transmit time from a reply (mode 4, a non-zero stratum below 16). Pure.
pub fn parse_reply(reply: &[u8]) -> Result<SystemTime, String> {
    if reply.len() < 48 {
        return Err(format!("short reply ({} bytes)", reply.len()));
    }
    if reply[0] & 7 != 4 {
        return Err(format!("not a server reply (mode {})", reply[0] & 7));
    }
    if reply[1] == 0 || reply[1] >= 16 {
        return Err(format!("server not synchronised (stratum {})", reply[1]));
    }
    let secs = u64::from(u32::from_be_bytes([reply[40], reply[41], reply[42], reply[43]]));
    let frac = u64::from(u32::from_be_bytes([reply[44], reply[45], reply[46], reply[47]]));
    let unix = secs.checked_sub(NTP_TO_UNIX).ok_or("transmit time before 1970")?;
    Ok(UNIX_EPOCH + Duration::from_secs(unix) + Duration::from_nanos((frac * 1_000_000_000) >> 32))
}

/// Ask `server` (`host` or `host:port`, port 123 by default) for the time, waiting at most
/// `timeout`.
pub fn query(server: &str, timeout: Duration) -> Result<SystemTime, SntpError> {
    let fail = |reason: String| SntpError { server: server.to_string(), reason };
    let target = if server.contains(':') { server.to_string() } else { format!("{server}:123") };
    let addr = target.to_socket_addrs().map_err(|e| fail(e.to_string()))?.find(|a| a.is_ipv4()).ok_or_else(|| fail("no IPv4 address".into()))?;
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| fail(e.to_string()))?;
    socket.set_read_timeout(Some(timeout)).map_err(|e| fail(e.to_string()))?;
    socket.connect(addr).map_err(|e| fail(e.to_string()))?;
    let sent = SystemTime::now();
    socket.send(&request()).map_err(|e| fail(e.to_string()))?;
    let mut buf = [0u8; 128];
    let n = socket.recv(&mut buf).map_err(|e| fail(e.to_string()))?;
    let server_time = parse_reply(&buf[..n]).map_err(fail)?;
    // Half the round trip: the answer's age when it arrived.
    Ok(server_time + sent.elapsed().unwrap_or_default() / 2)
}

/// Set the system clock (CLOCK_REALTIME).
pub fn set_clock(t: SystemTime) -> Result<(), String> {
    let d = t.duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?;
    let ts = nix::sys::time::TimeSpec::new(d.as_secs() as libc::time_t, d.subsec_nanos() as libc::c_long);
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(stratum: u8, unix_secs: u64) -> [u8; 48] {
        let mut r = [0u8; 48];
        r[0] = (4 << 3) | 4;
        r[1] = stratum;
        r[40..44].copy_from_slice(&((unix_secs + NTP_TO_UNIX) as u32).to_be_bytes());
        r[44..48].copy_from_slice(&(1u32 << 31).to_be_bytes());
        r
    }

    #[test]
    fn replies_are_checked_and_read() {
        assert_eq!(parse_reply(&reply(2, 1_800_000_000)).unwrap(), UNIX_EPOCH + Duration::from_millis(1_800_000_000_500));
        assert!(parse_reply(&reply(0, 1)).unwrap_err().contains("stratum 0"));
        assert!(parse_reply(&request()).unwrap_err().contains("mode 3"));
        assert!(parse_reply(&[0u8; 10]).unwrap_err().contains("short"));
    }

    #[test]
    fn asks_a_server_on_loopback() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let (n, from) = server.recv_from(&mut buf).unwrap();
            assert_eq!((n, buf[0] & 7), (48, 3));
            server.send_to(&reply(1, 1_900_000_000), from).unwrap();
        });
        let got = query(&addr.to_string(), Duration::from_secs(5)).unwrap();
        let secs = got.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!((1_900_000_000..1_900_000_002).contains(&secs), "{secs}");
        t.join().unwrap();
        // Nobody answering: bounded.
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(query(&silent.local_addr().unwrap().to_string(), Duration::from_millis(200)).is_err());
    }
}
