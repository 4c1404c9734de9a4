//! The node's network over rtnetlink (no `ip` binary on the image): loopback up, static
//! IPv4 addresses and a default route on one interface, extra local addresses, and the
//! resolver file. Each request is acknowledged or fails with the kernel's error.

use std::net::Ipv4Addr;
use std::path::Path;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkFlags, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// What to configure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetPlan {
    /// The interface for the addresses (None: the first one with a device behind it).
    pub interface: Option<String>,
    /// `(address, prefix length)`.
    pub addresses: Vec<(Ipv4Addr, u8)>,
    pub gateway: Option<Ipv4Addr>,
    /// Addresses put on `lo` as /32 (e.g. the cluster DNS address every node serves).
    pub local: Vec<Ipv4Addr>,
    /// Upstream resolvers for `resolv.conf`.
    pub dns: Vec<Ipv4Addr>,
    /// Without static addresses: ask a DHCP server.
    pub dhcp: bool,
}

/// What [`configure`] set up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Configured {
    pub interface: Option<String>,
    pub addresses: Vec<(Ipv4Addr, u8)>,
    /// The DHCP lease, if one was taken.
    pub lease: Option<super::dhcp::Lease>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("{what}: {source}")]
    Request { what: String, source: std::io::Error },
    #[error("interface {0:?} does not exist")]
    NoInterface(String),
    #[error("no network interface besides lo (looked in {0})")]
    NoDevice(String),
    #[error("{path}: {source}")]
    File { path: String, source: std::io::Error },
    #[error("dhcp: {0}")]
    Dhcp(String),
}

/// One rtnetlink socket; requests are sent one at a time and wait for their answer.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    pub fn open() -> Result<Netlink, NetError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetError::Socket)?;
        socket.bind_auto().map_err(NetError::Socket)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(NetError::Socket)?;
        // Bound: a kernel that never answers does not hang PID 1.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
        set_timeout(fd, std::time::Duration::from_secs(5)).map_err(NetError::Socket)?;
        Ok(Netlink { socket, seq: 0 })
    }

    fn request(&mut self, what: &str, message: RouteNetlinkMessage, flags: u16) -> Result<(), NetError> {
        let fail = |source| NetError::Request { what: what.to_string(), source };
        self.seq += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(message));
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(fail)?;
        loop {
            let (data, _) = self.socket.recv_from_full().map_err(fail)?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..]).map_err(|e| fail(std::io::Error::other(e.to_string())))?;
                let len = reply.header.length as usize;
                if reply.header.sequence_number == self.seq {
                    if let NetlinkPayload::Error(e) = reply.payload {
                        return match e.code {
                            None => Ok(()),
                            Some(_) => Err(fail(e.to_io())),
                        };
                    }
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }

    /// Set a link up.
    pub fn link_up(&mut self, index: u32, name: &str) -> Result<(), NetError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.request(&format!("set {name} up"), RouteNetlinkMessage::SetLink(m), 0)
    }

    /// Add an IPv4 address; one that is already there is fine.
    pub fn add_address(&mut self, index: u32, name: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = prefix;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(addr.into()));
        m.attributes.push(AddressAttribute::Address(addr.into()));
        if prefix < 31 {
            let host_bits = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
            m.attributes.push(AddressAttribute::Broadcast(Ipv4Addr::from(u32::from(addr) | host_bits)));
        }
        existing_ok(self.request(&format!("add {addr}/{prefix} to {name}"), RouteNetlinkMessage::NewAddress(m), NLM_F_CREATE | NLM_F_EXCL))
    }

    /// Add the IPv4 default route through `gateway`; one that is already there is fine.
    pub fn add_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> Result<(), NetError> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Static;
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        m.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        m.attributes.push(RouteAttribute::Oif(index));
        existing_ok(self.request(&format!("default route via {gateway}"), RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_EXCL))
    }
}

fn existing_ok(r: Result<(), NetError>) -> Result<(), NetError> {
    match r {
        Err(NetError::Request { source, .. }) if source.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

fn set_timeout(fd: i32, t: std::time::Duration) -> std::io::Result<()> {
    let tv = libc::timeval { tv_sec: t.as_secs() as libc::time_t, tv_usec: 0 };
    #[allow(unsafe_code)]
    // SAFETY: setsockopt reads a timeval of the size given from a live stack value.
    let rc = unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&tv as *const libc::timeval).cast(), std::mem::size_of::<libc::timeval>() as libc::socklen_t) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn index_of(name: &str) -> Result<u32, NetError> {
    nix::net::if_::if_nametoindex(name).map_err(|_| NetError::NoInterface(name.to_string()))
}

/// The interface to configure when none is named: the first (by index) whose
/// `<sys>/class/net/<name>/device` exists (a real or virtio NIC), else the first that is not
/// `lo`.
pub fn pick_interface(sys: &Path) -> Result<String, NetError> {
    let dir = sys.join("class/net");
    let mut links: Vec<(u32, String, bool)> = std::fs::read_dir(&dir)
        .map_err(|source| NetError::File { path: dir.display().to_string(), source })?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let index = std::fs::read_to_string(e.path().join("ifindex")).ok()?.trim().parse().ok()?;
            Some((index, name, e.path().join("device").exists()))
        })
        .filter(|(_, n, _)| n != "lo")
        .collect();
    links.sort();
    links.iter().find(|l| l.2).or(links.first()).map(|l| l.1.clone()).ok_or_else(|| NetError::NoDevice(dir.display().to_string()))
}

/// How long [`configure`] waits for the interface to appear.
pub const INTERFACE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Bring up `lo` (with `plan.local`) and the interface (waiting up to [`INTERFACE_WAIT`] for
/// it to appear) with its addresses and route. Returns the interface configured (None when
/// the plan has no address). Blocking.
pub fn configure(plan: &NetPlan, sys: &Path) -> Result<Configured, NetError> {
    let mut nl = Netlink::open()?;
    let lo = index_of("lo")?;
    nl.link_up(lo, "lo")?;
    for a in &plan.local {
        nl.add_address(lo, "lo", *a, 32)?;
    }
    if plan.addresses.is_empty() && !plan.dhcp {
        return Ok(Configured::default());
    }
    // A NIC's driver may still be probing (modules load asynchronously): wait, bounded.
    let deadline = std::time::Instant::now() + INTERFACE_WAIT;
    let (name, index) = loop {
        let found = match &plan.interface {
            Some(n) => index_of(n).map(|i| (n.clone(), i)),
            None => pick_interface(sys).and_then(|n| Ok((n.clone(), index_of(&n)?))),
        };
        match found {
            Ok(f) => break f,
            Err(e) if std::time::Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    };
    nl.link_up(index, &name)?;
    let (addresses, gateway, lease) = if plan.addresses.is_empty() {
        let lease = obtain_lease(&name)?;
        (vec![(lease.address, lease.prefix)], lease.router, Some(lease))
    } else {
        (plan.addresses.clone(), plan.gateway, None)
    };
    for (a, p) in &addresses {
        nl.add_address(index, &name, *a, *p)?;
    }
    if let Some(g) = gateway {
        nl.add_default_route(index, g)?;
    }
    Ok(Configured { interface: Some(name), addresses, lease })
}

/// A DHCP lease: three tries of 5 s each.
fn obtain_lease(iface: &str) -> Result<super::dhcp::Lease, NetError> {
    let mut last = String::new();
    for _ in 0..3 {
        match super::dhcp::obtain(iface, std::time::Duration::from_secs(5)) {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(NetError::Dhcp(last))
}

/// `resolv.conf` text for these upstreams. Pure.
pub fn resolv_conf(dns: &[Ipv4Addr]) -> String {
    let mut s = String::from("# written by kapp-init from the machine config\n");
    for d in dns {
        s.push_str(&format!("nameserver {d}\n"));
    }
    s
}

/// Write `<run>/kapp/resolv.conf` (what the image's /etc/resolv.conf points at).
pub fn write_resolv_conf(run: &Path, dns: &[Ipv4Addr]) -> Result<(), NetError> {
    let dir = run.join("kapp");
    let path = dir.join("resolv.conf");
    let io = |source| NetError::File { path: path.display().to_string(), source };
    std::fs::create_dir_all(&dir).map_err(io)?;
    std::fs::write(&path, resolv_conf(dns)).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_lists_the_upstreams() {
        assert_eq!(resolv_conf(&[Ipv4Addr::new(10, 77, 0, 1), Ipv4Addr::new(9, 9, 9, 9)]).lines().skip(1).collect::<Vec<_>>(), ["nameserver 10.77.0.1", "nameserver 9.9.9.9"]);
    }

    #[test]
    fn picks_the_first_interface_with_a_device() {
        let d = tempfile::tempdir().unwrap();
        for (name, index, device) in [("lo", 1, false), ("dummy0", 2, false), ("eth1", 4, true), ("eth0", 3, true)] {
            let p = d.path().join("class/net").join(name);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("ifindex"), format!("{index}\n")).unwrap();
            if device {
                std::fs::create_dir(p.join("device")).unwrap();
            }
        }
        assert_eq!(pick_interface(d.path()).unwrap(), "eth0");
        std::fs::remove_dir(d.path().join("class/net/eth0/device")).unwrap();
        std::fs::remove_dir(d.path().join("class/net/eth1/device")).unwrap();
        assert_eq!(pick_interface(d.path()).unwrap(), "dummy0");
    }
}
