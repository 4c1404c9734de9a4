//! The DNS server on loopback, queried with hickory's resolver and with `dig`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{LowerName, Name, RData, RecordSet, RecordType, RrKey};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::Resolver;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kapp_dns::{records, DnsServer, Records, Upstreams, ZoneConfig};
use serde_json::json;

fn resolver(at: SocketAddr) -> Resolver<TokioRuntimeProvider> {
    let mut udp = ConnectionConfig::udp();
    udp.port = at.port();
    let ns = NameServerConfig::new(at.ip(), true, vec![udp]);
    let mut b = Resolver::builder_with_config(ResolverConfig::from_parts(None, vec![], vec![ns]), TokioRuntimeProvider::default());
    b.options_mut().cache_size = 0;
    b.options_mut().timeout = Duration::from_secs(2);
    b.build().unwrap()
}

fn zone_config() -> ZoneConfig {
    ZoneConfig::new("cluster.local", 5, &[("10.96.0.0".parse().unwrap(), 12), ("fd00:96::".parse().unwrap(), 112)]).unwrap()
}

fn objects() -> (Vec<Service>, Vec<EndpointSlice>, Vec<Pod>) {
    let svc = |v| serde_json::from_value::<Service>(v).unwrap();
    let services = vec![
        svc(json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:96::a"],
            "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}})),
        svc(json!({"metadata": {"name": "db", "namespace": "prod"}, "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}})),
        svc(json!({"metadata": {"name": "ext", "namespace": "default"}, "spec": {"type": "ExternalName", "externalName": "db.prod.svc.cluster.local"}})),
    ];
    let slices = vec![serde_json::from_value(json!({"metadata": {"name": "db-1", "namespace": "prod", "labels": {"kubernetes.io/service-name": "db"}},
        "addressType": "IPv4", "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.244.1.5"], "hostname": "db-0"},
            {"addresses": ["10.244.1.6"], "hostname": "db-1"},
            {"addresses": ["10.244.1.7"], "hostname": "db-2", "conditions": {"ready": false}}
        ]}))
    .unwrap()];
    let pods = vec![serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "default"}, "status": {"podIP": "10.244.2.3"}})).unwrap()];
    (services, slices, pods)
}

async fn answers(r: &Resolver<TokioRuntimeProvider>, name: &str, t: RecordType) -> Vec<String> {
    let mut v: Vec<String> = r.lookup(name, t).await.unwrap_or_else(|e| panic!("{name} {t}: {e}")).answers().iter().filter(|a| a.record_type() == t).map(|a| a.data.to_string()).collect();
    v.sort();
    v
}

/// `dig` output: (status, answer lines "name ttl type data"). Blocks its thread: the tests
/// run the server on a multi-threaded runtime.
fn dig(at: SocketAddr, name: &str, t: &str) -> Option<(String, Vec<String>)> {
    let out = Command::new("dig").args([&format!("@{}", at.ip()), "-p", &at.port().to_string(), "+time=2", "+tries=1", name, t]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let Some(status) = text.split("status: ").nth(1).and_then(|s| s.split(',').next()) else { panic!("dig {name} {t}: {text}{}", String::from_utf8_lossy(&out.stderr)) };
    let status = status.to_string();
    let mut answer = vec![];
    let mut in_answer = false;
    for l in text.lines() {
        if l.starts_with(";; ANSWER SECTION") {
            in_answer = true;
        } else if l.is_empty() {
            in_answer = false;
        } else if in_answer {
            let f: Vec<&str> = l.split_whitespace().collect();
            answer.push(format!("{} {} {} {}", f[0], f[1], f[3], f[4..].join(" ")));
        }
    }
    Some((status, answer))
}

fn have_dig() -> bool {
    let ok = Command::new("dig").arg("-v").output().is_ok();
    if !ok {
        eprintln!("dig is not installed (bind9-dnsutils): skipping its half");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_type_with_hickory_and_dig() {
    let (server, mut zones) = DnsServer::start(zone_config(), "127.0.0.1:0".parse().unwrap(), &Upstreams::default()).await.unwrap();
    let (s, e, p) = objects();
    zones.apply(&records(zones.config(), &s, &e, &p)).await;
    let r = resolver(server.udp_addr);

    assert_eq!(answers(&r, "web.default.svc.cluster.local.", RecordType::A).await, ["10.96.0.10"]);
    assert_eq!(answers(&r, "web.default.svc.cluster.local.", RecordType::AAAA).await, ["fd00:96::a"]);
    assert_eq!(answers(&r, "_http._tcp.web.default.svc.cluster.local.", RecordType::SRV).await, ["0 100 80 web.default.svc.cluster.local."]);
    assert_eq!(answers(&r, "_dns._udp.web.default.svc.cluster.local.", RecordType::SRV).await, ["0 100 53 web.default.svc.cluster.local."]);
    assert_eq!(answers(&r, "10.0.96.10.in-addr.arpa.", RecordType::PTR).await, ["web.default.svc.cluster.local."]);
    let v6ptr = kapp_dns::records::ptr_name("fd00:96::a".parse().unwrap()).to_ascii();
    assert_eq!(answers(&r, &v6ptr, RecordType::PTR).await, ["web.default.svc.cluster.local."]);
    // Headless: the ready endpoints, each also under its hostname, SRV per endpoint.
    assert_eq!(answers(&r, "db.prod.svc.cluster.local.", RecordType::A).await, ["10.244.1.5", "10.244.1.6"]);
    assert_eq!(answers(&r, "db-1.db.prod.svc.cluster.local.", RecordType::A).await, ["10.244.1.6"]);
    assert_eq!(
        answers(&r, "_pg._tcp.db.prod.svc.cluster.local.", RecordType::SRV).await,
        ["0 50 5432 db-0.db.prod.svc.cluster.local.", "0 50 5432 db-1.db.prod.svc.cluster.local."]
    );
    assert_eq!(answers(&r, "10-244-2-3.default.pod.cluster.local.", RecordType::A).await, ["10.244.2.3"]);
    // ExternalName: a CNAME, chased inside the zone.
    let ext = r.lookup("ext.default.svc.cluster.local.", RecordType::A).await.unwrap();
    let kinds: Vec<RecordType> = ext.answers().iter().map(|a| a.record_type()).collect();
    assert_eq!(kinds[0], RecordType::CNAME, "{kinds:?}");
    assert!(ext.answers().iter().all(|a| a.ttl <= 5));

    // NXDOMAIN for a name that does not exist, NODATA (NOERROR, no answer) for a name
    // that exists without that type, and for an empty non-terminal.
    let nx = r.lookup("nope.default.svc.cluster.local.", RecordType::A).await.unwrap_err();
    assert!(nx.is_nx_domain(), "{nx}");
    let nodata = r.lookup("db.prod.svc.cluster.local.", RecordType::AAAA).await.unwrap_err();
    assert!(nodata.is_no_records_found() && !nodata.is_nx_domain(), "{nodata}");
    let ent = r.lookup("prod.svc.cluster.local.", RecordType::A).await.unwrap_err();
    assert!(ent.is_no_records_found() && !ent.is_nx_domain(), "{ent}");

    if have_dig() {
        let at = server.udp_addr;
        let (st, ans) = dig(at, "web.default.svc.cluster.local", "A").unwrap();
        assert_eq!((st.as_str(), ans), ("NOERROR", vec!["web.default.svc.cluster.local. 5 A 10.96.0.10".to_string()]));
        let (_, ans) = dig(at, "web.default.svc.cluster.local", "AAAA").unwrap();
        assert_eq!(ans, ["web.default.svc.cluster.local. 5 AAAA fd00:96::a"]);
        let (_, ans) = dig(at, "_http._tcp.web.default.svc.cluster.local", "SRV").unwrap();
        assert_eq!(ans, ["_http._tcp.web.default.svc.cluster.local. 5 SRV 0 100 80 web.default.svc.cluster.local."]);
        let (_, ans) = dig(at, "10.0.96.10.in-addr.arpa", "PTR").unwrap();
        assert_eq!(ans, ["10.0.96.10.in-addr.arpa. 5 PTR web.default.svc.cluster.local."]);
        let (_, ans) = dig(at, "db.prod.svc.cluster.local", "A").unwrap();
        assert_eq!(ans.len(), 2);
        let (_, ans) = dig(at, "10-244-2-3.default.pod.cluster.local", "A").unwrap();
        assert_eq!(ans, ["10-244-2-3.default.pod.cluster.local. 5 A 10.244.2.3"]);
        assert_eq!(dig(at, "nope.default.svc.cluster.local", "A").unwrap(), ("NXDOMAIN".to_string(), vec![]));
        assert_eq!(dig(at, "db.prod.svc.cluster.local", "AAAA").unwrap(), ("NOERROR".to_string(), vec![]));
        // Negative answers carry the SOA (its minimum is the negative TTL).
        for (name, t) in [("nope.default.svc.cluster.local", "A"), ("db.prod.svc.cluster.local", "AAAA"), ("svc.cluster.local", "A")] {
            let out = Command::new("dig").args([&format!("@{}", at.ip()), "-p", &at.port().to_string(), name, t]).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("AUTHORITY: 1") && text.contains("SOA\tns.dns.cluster.local."), "{name} {t}: {text}");
        }
        // Over TCP too.
        let out = Command::new("dig").args([&format!("@{}", at.ip()), "-p", &server.tcp_addr.port().to_string(), "+tcp", "+short", "web.default.svc.cluster.local", "A"]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10.96.0.10");
    }
    server.shutdown().await;
}

/// A stand-in upstream: authoritative for `example.test` with one A record.
async fn upstream() -> (DnsServer, kapp_dns::Zones) {
    let cfg = ZoneConfig::new("example.test", 60, &[]).unwrap();
    let (server, mut zones) = DnsServer::start(cfg, "127.0.0.1:0".parse().unwrap(), &Upstreams::default()).await.unwrap();
    let name = Name::from_ascii("www.example.test.").unwrap();
    let mut set = RecordSet::with_ttl(name.clone(), RecordType::A, 60);
    set.add_rdata(RData::A(A("192.0.2.7".parse().unwrap())));
    let mut recs: Records = BTreeMap::new();
    recs.entry(Name::from_ascii("example.test.").unwrap()).or_default().insert(RrKey::new(LowerName::new(&name), RecordType::A), set);
    zones.apply(&recs).await;
    (server, zones)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_names_are_forwarded_and_cached() {
    let (up, _upzones) = upstream().await;
    let upstreams = Upstreams { servers: vec![up.udp_addr], cache_size: 128, timeout: Some(Duration::from_secs(1)) };
    let (server, mut zones) = DnsServer::start(zone_config(), "127.0.0.1:0".parse().unwrap(), &upstreams).await.unwrap();
    let (s, e, p) = objects();
    zones.apply(&records(zones.config(), &s, &e, &p)).await;
    let r = resolver(server.udp_addr);
    assert_eq!(answers(&r, "www.example.test.", RecordType::A).await, ["192.0.2.7"]);
    assert!(r.lookup("missing.example.test.", RecordType::A).await.unwrap_err().is_nx_domain());
    // Cluster names still come from us, not the upstream.
    assert_eq!(answers(&r, "web.default.svc.cluster.local.", RecordType::A).await, ["10.96.0.10"]);
    if have_dig() {
        let (st, ans) = dig(server.udp_addr, "www.example.test", "A").unwrap();
        assert_eq!(st, "NOERROR");
        assert_eq!(ans.len(), 1);
        assert!(ans[0].ends_with("A 192.0.2.7"), "{ans:?}");
    }
    // The upstream goes away: the forwarder's cache still answers.
    up.shutdown().await;
    assert_eq!(answers(&r, "www.example.test.", RecordType::A).await, ["192.0.2.7"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_is_answered_at_once_and_bumps_the_serial() {
    let (server, mut zones) = DnsServer::start(zone_config(), "127.0.0.1:0".parse().unwrap(), &Upstreams::default()).await.unwrap();
    let (mut s, e, p) = objects();
    zones.apply(&records(zones.config(), &s, &e, &p)).await;
    let r = resolver(server.udp_addr);
    assert_eq!(answers(&r, "web.default.svc.cluster.local.", RecordType::A).await, ["10.96.0.10"]);
    let serial = zones.serial();
    s[0].spec.as_mut().unwrap().cluster_ips = Some(vec!["10.96.0.20".into()]);
    s[0].spec.as_mut().unwrap().cluster_ip = Some("10.96.0.20".into());
    s.push(serde_json::from_value(json!({"metadata": {"name": "new", "namespace": "default"}, "spec": {"clusterIP": "10.96.0.21", "ports": [{"port": 80}]}})).unwrap());
    let t = Instant::now();
    let stats = zones.apply(&records(zones.config(), &s, &e, &p)).await;
    assert!(stats.sets_changed >= 4, "{stats:?}");
    assert_eq!(answers(&r, "web.default.svc.cluster.local.", RecordType::A).await, ["10.96.0.20"]);
    assert_eq!(answers(&r, "new.default.svc.cluster.local.", RecordType::A).await, ["10.96.0.21"]);
    assert!(r.lookup("web.default.svc.cluster.local.", RecordType::AAAA).await.unwrap_err().is_no_records_found());
    assert!(r.lookup("10.0.96.10.in-addr.arpa.", RecordType::PTR).await.unwrap_err().is_nx_domain());
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(zones.serial(), serial + 1);
    let soa = r.lookup("cluster.local.", RecordType::SOA).await.unwrap();
    assert!(soa.answers()[0].data.to_string().contains(&format!(" {} ", serial + 1)), "{}", soa.answers()[0].data);
    // Nothing changed: nothing written, serial kept.
    assert_eq!(zones.apply(&records(zones.config(), &s, &e, &p)).await.sets_changed, 0);
    assert_eq!(zones.serial(), serial + 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_query_gets_formerr_and_the_server_keeps_answering() {
    let (server, mut zones) = DnsServer::start(zone_config(), "127.0.0.1:0".parse().unwrap(), &Upstreams::default()).await.unwrap();
    let (s, e, p) = objects();
    zones.apply(&records(zones.config(), &s, &e, &p)).await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // A header announcing one question, then a label running past the datagram's end.
    let mut bad = vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    bad.extend_from_slice(&[40, b'w', b'e', b'b']);
    sock.send_to(&bad, server.udp_addr).await.unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await.expect("an answer").unwrap();
    assert_eq!(n, 12, "a bare header");
    assert_eq!(&buf[..2], &[0x12, 0x34], "the query's id");
    assert_eq!(buf[2] & 0x80, 0x80, "a response");
    assert_eq!(buf[3] & 0x0f, 1, "FORMERR");
    // Shorter than a header: ignored, and the next query is answered as usual.
    sock.send_to(&[1, 2, 3], server.udp_addr).await.unwrap();
    let r = resolver(server.udp_addr);
    assert_eq!(answers(&r, "web.default.svc.cluster.local.", RecordType::A).await, ["10.96.0.10"]);
    server.shutdown().await;
}
