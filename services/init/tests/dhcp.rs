//! The DHCP client against a small DHCP server, across a veth pair between two network
//! namespaces this test makes (root needed): the interface gets the offered address and
//! default route, the lease carries the DNS servers, and the lease (4 s here) is renewed
//! at half its time with a REQUEST carrying the address.

use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use kapp_init::pid1::dhcp::Message;
use kapp_init::pid1::net::{configure, NetPlan};

fn ip(args: &[&str]) {
    assert!(Command::new("ip").args(args).status().unwrap().success(), "ip {args:?}");
}

struct Netns(String);

impl Netns {
    fn new(name: String) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        ip(&["netns", "add", &name]);
        Netns(name)
    }
}

/// Move the calling thread into network namespace `name`.
fn enter(name: &str) {
    let f = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Answers every DISCOVER with an OFFER and every REQUEST with an ACK of 10.99.0.50/24 for
/// 4 s, in namespace `server`, until a REQUEST carries that address (a renewal); returns
/// what it saw as (message type, ciaddr). The caller keeps the namespace until the client
/// is done: deleting it destroys the veth pair, and with it an ACK still queued for the
/// client (a flake under load, seen as the client losing its interface: "no MAC address").
fn serve(server: String) -> std::thread::JoinHandle<Vec<(u8, Ipv4Addr)>> {
    let (bound, ready) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        enter(&server);
        let s = UdpSocket::bind("0.0.0.0:67").unwrap();
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::BindToDevice, &std::ffi::OsString::from("dh-s")).unwrap();
        s.set_broadcast(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        bound.send(()).unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 1500];
        while !seen.iter().any(|(k, ci): &(u8, Ipv4Addr)| *k == 3 && !ci.is_unspecified()) {
            let n = s.recv(&mut buf).unwrap();
            let req = Message::decode(&buf[..n]).unwrap();
            let kind = req.option(53).unwrap()[0];
            seen.push((kind, req.ciaddr));
            let reply_kind = if kind == 1 { 2 } else { 5 };
            let reply = Message {
                op: 2,
                xid: req.xid,
                ciaddr: req.ciaddr,
                yiaddr: Ipv4Addr::new(10, 99, 0, 50),
                mac: req.mac,
                options: vec![(53, vec![reply_kind]), (54, vec![10, 99, 0, 1]), (1, vec![255, 255, 255, 0]), (3, vec![10, 99, 0, 1]), (6, vec![10, 99, 0, 53]), (51, 4u32.to_be_bytes().to_vec())],
            };
            s.send_to(&reply.encode(), "255.255.255.255:68").unwrap();
        }
        seen
    });
    ready.recv_timeout(Duration::from_secs(10)).expect("the server is listening");
    handle
}

#[test]
fn an_interface_gets_its_address_route_and_resolvers_from_dhcp() {
    if !nix::unistd::geteuid().is_root() {
        return eprintln!("skipped: needs root");
    }
    let id = std::process::id();
    let server = Netns::new(format!("dhcp-s-{id}"));
    let client = Netns::new(format!("dhcp-c-{id}"));
    ip(&["-n", &server.0, "link", "add", "dh-s", "type", "veth", "peer", "name", "dh-c", "netns", &client.0]);
    ip(&["-n", &server.0, "addr", "add", "10.99.0.1/24", "dev", "dh-s"]);
    ip(&["-n", &server.0, "link", "set", "dh-s", "up"]);
    let name = client.0.clone();
    let served = serve(server.0.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    // The client's thread stays in its namespace holding the lease (as PID 1's does).
    std::thread::spawn(move || {
        enter(&name);
        let plan = NetPlan { interface: Some("dh-c".into()), dhcp: true, ..NetPlan::default() };
        let configured = configure(&plan, std::path::Path::new("/sys"));
        let lease = configured.as_ref().ok().and_then(|c| c.lease.clone());
        tx.send(configured).unwrap();
        if let Some(lease) = lease {
            kapp_init::pid1::dhcp::keep("dh-c", lease, |line| eprintln!("{line}"));
        }
    });
    let configured = rx.recv_timeout(Duration::from_secs(60)).unwrap().unwrap();
    let lease = configured.lease.unwrap();
    assert_eq!((lease.address, lease.prefix, lease.router, lease.dns.clone(), lease.lease_secs), (Ipv4Addr::new(10, 99, 0, 50), 24, Some(Ipv4Addr::new(10, 99, 0, 1)), vec![Ipv4Addr::new(10, 99, 0, 53)], 4));
    let seen = served.join().unwrap();
    let ours = Ipv4Addr::new(10, 99, 0, 50);
    let renewal = seen.iter().position(|s| *s == (3, ours)).expect("a renewal");
    assert_eq!(seen[0], (1, Ipv4Addr::UNSPECIFIED), "DISCOVER first: {seen:?}");
    assert_eq!(seen[..renewal].iter().filter(|(k, _)| *k == 3).count(), 1, "one REQUEST for the offer, then the renewal: {seen:?}");
    let out = Command::new("ip").args(["-n", &client.0, "-4", "-o", "addr", "show", "dev", "dh-c"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("inet 10.99.0.50/24"), "{}", String::from_utf8_lossy(&out.stdout));
    let out = Command::new("ip").args(["-n", &client.0, "-4", "route"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("default via 10.99.0.1 dev dh-c"), "{}", String::from_utf8_lossy(&out.stdout));
}
