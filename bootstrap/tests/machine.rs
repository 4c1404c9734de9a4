//! `kapp gen cluster` output and the machine config's rules: every generated config
//! validates and its identities work; each rule, broken, is refused naming its field.

use std::net::Ipv4Addr;
use std::path::Path;

use kapp_bootstrap::cluster::{gen_cluster, ClusterSpec};
use kapp_bootstrap::machine::{MachineConfig, Role};
use kapp_bootstrap::GenError;

fn spec(heads: &[(&str, [u8; 4])], workers: &[(&str, [u8; 4])]) -> ClusterSpec {
    let nodes = |v: &[(&str, [u8; 4])]| v.iter().map(|(n, ip)| (n.to_string(), Ipv4Addr::from(*ip))).collect();
    ClusterSpec {
        name: "demo".into(),
        heads: nodes(heads),
        workers: nodes(workers),
        prefix_len: 24,
        gateway: Some(Ipv4Addr::new(10, 77, 0, 1)),
        dns: vec![Ipv4Addr::new(10, 77, 0, 1)],
        ntp: vec!["pool.ntp.org".into()],
        git_url: "https://git.example/cluster.git".into(),
        git_branch: Some("main".into()),
        git_path: "prod".into(),
        head_taint: false,
        git_known_hosts: vec![],
    }
}

fn three_heads(out: &Path) -> kapp_bootstrap::cluster::Generated {
    gen_cluster(&spec(&[("h1", [10, 77, 0, 11]), ("h2", [10, 77, 0, 12]), ("h3", [10, 77, 0, 13])], &[("w1", [10, 77, 0, 21])]), out).unwrap()
}

fn load(path: &Path) -> MachineConfig {
    MachineConfig::parse(&std::fs::read_to_string(path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn pem(ca: &str, id: &kapp_bootstrap::machine::Identity) -> kapp_tls::Pem {
    kapp_tls::Pem { ca: ca.into(), cert: id.certificate.clone(), key: id.key.clone() }
}

#[test]
fn generated_configs_validate_and_their_identities_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let g = three_heads(out);
    assert_eq!(g.server, "https://10.77.0.11:6443");
    let names: Vec<_> = g.configs.iter().map(|p| p.file_name().unwrap().to_str().unwrap().to_string()).collect();
    assert_eq!(names, ["h1.yaml", "h2.yaml", "h3.yaml", "w1.yaml"]);
    assert!(out.join("pki/ca.key").exists() && out.join("pki/ca.pem").exists());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&g.configs[0]).unwrap().permissions().mode() & 0o777, 0o600);
    let ca = std::fs::read_to_string(out.join("pki/ca.pem")).unwrap();
    let mut pods = std::collections::BTreeSet::new();
    for (i, path) in g.configs.iter().enumerate() {
        let cfg = load(path);
        assert_eq!(cfg.cluster.ca, ca, "every node trusts the one CA");
        assert_eq!(cfg.store_members(), [(1, Ipv4Addr::new(10, 77, 0, 11)), (2, Ipv4Addr::new(10, 77, 0, 12)), (3, Ipv4Addr::new(10, 77, 0, 13))]);
        assert!(pods.insert(cfg.node.pod_cidr.clone()), "pod networks differ");
        let node = pem(&ca, &kapp_bootstrap::machine::Identity { certificate: cfg.node.certificate.clone(), key: cfg.node.key.clone() });
        kapp_tls::client_config(&node).unwrap();
        kapp_tls::server_config(&node, kapp_tls::ClientAuth::Required).unwrap();
        if i < 3 {
            assert_eq!(cfg.node.role, Role::Head);
            let h = cfg.head.as_ref().unwrap();
            for id in [&h.store, &h.apiserver, &h.scheduler, &h.controllers, &h.gitops] {
                kapp_tls::server_config(&pem(&ca, id), kapp_tls::ClientAuth::Required).unwrap();
                kapp_tls::client_config(&pem(&ca, id)).unwrap();
            }
            assert_eq!(h.git.url, "https://git.example/cluster.git");
            let files: Vec<_> = cfg.identity_files().into_iter().map(|(n, _, private)| (n, private)).collect();
            assert!(files.contains(&("store.key".into(), true)) && files.contains(&("ca.pem".into(), false)) && files.contains(&("secret.key".into(), true)));
        } else {
            assert_eq!(cfg.node.role, Role::Worker);
            assert!(cfg.head.is_none());
            assert_eq!(cfg.identity_files().len(), 3);
        }
    }
    // The Secret key is the cluster's: the same on every head.
    let keys: std::collections::BTreeSet<_> = g.configs[..3].iter().map(|p| load(p).head.unwrap().secret_key).collect();
    assert_eq!(keys.len(), 1);
    // So is the age key; its recipient is written beside the configs.
    let ages: std::collections::BTreeSet<_> = g.configs[..3].iter().map(|p| load(p).head.unwrap().git.decryption_key.unwrap()).collect();
    assert_eq!(ages.len(), 1);
    let id: kapp_age::Identity = ages.first().unwrap().parse().unwrap();
    assert_eq!(id.to_recipient(), g.age_recipient);
    assert_eq!(std::fs::read_to_string(out.join("age-recipient")).unwrap().trim(), g.age_recipient.to_string());
    let files = load(&g.configs[0]).identity_files();
    assert!(files.iter().any(|(n, text, private)| n == "git-decryption-key" && *private && text.trim() == id.to_secret_string()));
    assert!(!format!("{:?}", load(&g.configs[0]).head.unwrap().git).contains(&id.to_secret_string()));
    // A real mTLS handshake between two heads' store identities over loopback.
    handshake(&ca, &load(&g.configs[0]).head.unwrap().store, &load(&g.configs[1]).head.unwrap().store);
    // Never over an existing cluster.
    assert!(matches!(three_heads_err(out), GenError::Exists { .. }));
}

fn three_heads_err(out: &Path) -> GenError {
    gen_cluster(&spec(&[("h1", [10, 77, 0, 11])], &[]), out).unwrap_err()
}

/// A TLS server with `server`'s identity (requiring client certificates) accepts a client
/// presenting `client`'s identity, reached as 127.0.0.1.
fn handshake(ca: &str, server: &kapp_bootstrap::machine::Identity, client: &kapp_bootstrap::machine::Identity) {
    use std::io::{Read, Write};
    let scfg = kapp_tls::server_config(&pem(ca, server), kapp_tls::ClientAuth::Required).unwrap();
    let ccfg = kapp_tls::client_config(&pem(ca, client)).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (mut tcp, _) = listener.accept().unwrap();
        let mut conn = rustls::ServerConnection::new(scfg).unwrap();
        let mut s = rustls::Stream::new(&mut conn, &mut tcp);
        let mut b = [0u8; 2];
        s.read_exact(&mut b).unwrap();
        s.write_all(b"ok").unwrap();
        s.flush().unwrap();
    });
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let mut conn = rustls::ClientConnection::new(ccfg, "127.0.0.1".try_into().unwrap()).unwrap();
    let mut s = rustls::Stream::new(&mut conn, &mut tcp);
    s.write_all(b"hi").unwrap();
    let mut b = [0u8; 2];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ok");
    t.join().unwrap();
}

#[test]
fn generation_refuses_an_even_number_of_heads_and_one_node_is_a_head() {
    let dir = tempfile::tempdir().unwrap();
    let e = gen_cluster(&spec(&[("h1", [10, 77, 0, 11]), ("h2", [10, 77, 0, 12])], &[]), dir.path()).unwrap_err();
    assert!(e.to_string().contains("2 heads given: a cluster needs an odd number"), "{e}");
    let e = gen_cluster(&spec(&[("h1", [10, 77, 0, 11])], &[("h1", [10, 77, 0, 12])]), dir.path()).unwrap_err();
    assert!(e.to_string().contains("given twice"), "{e}");
    assert!(!dir.path().join("pki").exists(), "nothing written for a refused spec");
    let mut s = spec(&[("solo", [10, 77, 0, 11])], &[]);
    s.head_taint = true;
    let g = gen_cluster(&s, dir.path()).unwrap();
    let cfg = load(&g.configs[0]);
    assert_eq!(cfg.node.role, Role::Head);
    assert_eq!(cfg.node.taints[0].key, "node-role.kubernetes.io/control-plane");
}

/// Each rule broken on an otherwise valid config (a head and a worker of one cluster, and a
/// head of another cluster for certificates that do not chain): the field and the reason.
#[test]
fn each_rule_is_refused_naming_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let g = three_heads(&dir.path().join("a"));
    let other = gen_cluster(&spec(&[("h1", [10, 77, 0, 11])], &[]), &dir.path().join("b")).unwrap();
    let head = load(&g.configs[0]);
    let worker = load(&g.configs[3]);
    let foreign = load(&other.configs[0]);
    type Edit = Box<dyn Fn(&mut MachineConfig)>;
    let cases: Vec<(&str, &MachineConfig, Edit, &str, &str)> = vec![
        ("bad address", &head, Box::new(|c| c.network.addresses[0] = "10.0.0.300/24".into()), "network.addresses[0]", "\"10.0.0.300/24\" is not an IPv4 CIDR"),
        ("no prefix", &worker, Box::new(|c| c.network.addresses[0] = "10.77.0.21".into()), "network.addresses[0]", "is not an IPv4 CIDR"),
        ("no address", &worker, Box::new(|c| c.network.addresses.clear()), "network.addresses", "no static address and dhcp is off"),
        ("gateway elsewhere", &worker, Box::new(|c| c.network.gateway = Some("192.168.1.1".into())), "network.gateway", "192.168.1.1 is in none of network.addresses"),
        ("bad dns", &worker, Box::new(|c| c.network.dns = vec!["dns.example".into()]), "network.dns[0]", "is not an IPv4 address"),
        ("bad ntp", &worker, Box::new(|c| c.network.ntp = vec!["no spaces".into()]), "network.ntp[0]", "neither an address nor a host name"),
        ("api version", &worker, Box::new(|c| c.api_version = "v1".into()), "apiVersion", "is not \"kapp.dev/v1\""),
        ("kind", &worker, Box::new(|c| c.kind = "Pod".into()), "kind", "is not \"MachineConfig\""),
        ("cluster name", &worker, Box::new(|c| c.cluster.name = "Demo".into()), "cluster.name", "is not a DNS label"),
        ("even heads", &worker, Box::new(|c| { c.cluster.heads.pop(); }), "cluster.heads", "2 heads: a cluster has an odd number"),
        ("head twice", &worker, Box::new(|c| c.cluster.heads[2].name = "h1".into()), "cluster.heads[2].name", "appears twice"),
        ("head address", &worker, Box::new(|c| c.cluster.heads[1].address = "h2".into()), "cluster.heads[1].address", "is not an IPv4 address"),
        ("pod cidr outside", &worker, Box::new(|c| c.node.pod_cidr = "10.99.0.0/24".into()), "node.podCidr", "is not inside cluster.clusterCidr"),
        ("no ca", &worker, Box::new(|c| c.cluster.ca = "not a certificate".into()), "cluster.ca", "holds no PEM certificate"),
        ("node cert of another cluster", &worker, Box::new(move |c| c.node.certificate = foreign.node.certificate.clone()), "node.certificate", "does not chain to cluster.ca"),
        ("node cert of another node", &worker, { let h = head.clone(); Box::new(move |c| { c.node.certificate = h.node.certificate.clone(); c.node.key = h.node.key.clone(); }) }, "node.certificate", "not valid for serving 10.77.0.21"),
        ("node name not the cert's", &worker, Box::new(|c| c.node.name = "w2".into()), "node.certificate", "common name \"system:node:w1\" is not \"system:node:w2\""),
        ("key of another cert", &worker, { let h = head.clone(); Box::new(move |c| c.node.key = h.node.key.clone()) }, "node.key", "does not match node.certificate"),
        ("no key", &worker, Box::new(|c| c.node.key = "x".into()), "node.key", "holds no PEM private key"),
        ("worker with head section", &worker, { let h = head.clone(); Box::new(move |c| c.head = h.head.clone()) }, "head", "only a head has this section"),
        ("head without head section", &head, Box::new(|c| c.head = None), "head", "a head needs"),
        ("head not listed", &head, Box::new(|c| c.cluster.heads[0].name = "h9".into()), "cluster.heads", "has role head but is not in the list"),
        ("listed as head, role worker", &worker, Box::new(|c| c.cluster.heads[0].name = "w1".into()), "node.role", "listed in cluster.heads but its role is worker"),
        ("head moved", &head, Box::new(|c| c.cluster.heads[0].address = "10.77.0.99".into()), "network.addresses", "must be its cluster.heads[0].address 10.77.0.99"),
        ("store cert swapped", &head, Box::new(|c| { let h = c.head.as_mut().unwrap(); std::mem::swap(&mut h.store, &mut h.apiserver); }), "head.store.certificate", "is not \"store-h1\""),
        ("scheduler group", &head, Box::new(|c| { let h = c.head.as_mut().unwrap(); h.scheduler = h.controllers.clone(); }), "head.scheduler.certificate", "common name \"controllers\" is not \"scheduler\""),
        ("secret key", &head, Box::new(|c| c.head.as_mut().unwrap().secret_key = "abc".into()), "head.secretKey", "64 hex characters"),
        ("git url", &head, Box::new(|c| c.head.as_mut().unwrap().git.url = "ftp://x".into()), "head.git.url", "is not a file://"),
        ("ssh without a key", &head, Box::new(|c| c.head.as_mut().unwrap().git.url = "ssh://git@host/repo".into()), "head.git.sshKey", "needs the deploy key"),
        ("ssh without known hosts", &head, Box::new(|c| { let g = &mut c.head.as_mut().unwrap().git; g.url = "ssh://git@host/repo".into(); g.ssh_key = Some("-----BEGIN OPENSSH PRIVATE KEY-----".into()); }), "head.git.knownHosts", "needs the git host's keys"),
        ("hashed known host without its hash", &head, Box::new(|c| c.head.as_mut().unwrap().git.known_hosts = vec!["|1|YWJj ssh-ed25519 AAAA".into()]), "head.git.knownHosts[0]", "`|1|<salt>|<hash> <key type> <base64>`"),
        ("known host marker", &head, Box::new(|c| c.head.as_mut().unwrap().git.known_hosts = vec!["example.com ssh-ed25519 AAAA".into(), "@revoked * ssh-ed25519 AAAA".into()]), "head.git.knownHosts[1]", "markers are not supported"),
        ("trusted key", &head, Box::new(|c| c.head.as_mut().unwrap().git.trusted_keys = vec!["ssh-ed25519 AAAAC3Nz ops".into(), "ssh-dss AAAA".into()]), "head.git.trustedKeys[1]", "is not an authorized_keys line"),
        ("armored key cut short", &head, Box::new(|c| c.head.as_mut().unwrap().git.trusted_keys = vec!["-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ\n".into()]), "head.git.trustedKeys[0]", "an OpenPGP public key block that has no END line"),
        ("armored key not base64", &head, Box::new(|c| c.head.as_mut().unwrap().git.trusted_keys = vec!["-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnot base64!\n-----END PGP PUBLIC KEY BLOCK-----\n".into()]), "head.git.trustedKeys[0]", "does not hold base64"),
        ("decryption key checksum", &head, Box::new(|c| { let g = &mut c.head.as_mut().unwrap().git; let k = g.decryption_key.as_mut().unwrap(); let last = if k.ends_with('Q') { "P" } else { "Q" }; k.replace_range(k.len() - 1.., last); }), "head.git.decryptionKey", "invalid checksum"),
        ("decryption key is a recipient", &head, Box::new(|c| c.head.as_mut().unwrap().git.decryption_key = Some(kapp_age::Identity::generate().to_recipient().to_string())), "head.git.decryptionKey", "not an age secret key"),
        ("decryption key garbage", &head, Box::new(|c| c.head.as_mut().unwrap().git.decryption_key = Some("AGE-SECRET-KEY-1".into())), "head.git.decryptionKey", "not an age secret key"),
        ("taint effect", &worker, Box::new(|c| c.node.taints = vec![kapp_bootstrap::machine::Taint { key: "a".into(), value: String::new(), effect: "Never".into() }]), "node.taints[0].effect", "is not NoSchedule"),
        ("label", &worker, Box::new(|c| { c.node.labels.insert("a".into(), "not valid!".into()); }), "node.labels[a]", "is not a valid label"),
    ];
    for (what, base, edit, field, reason) in cases {
        let mut c = base.clone();
        edit(&mut c);
        let e = c.validate().expect_err(what);
        assert_eq!(e.field, field, "{what}: {e}");
        assert!(e.reason.contains(reason), "{what}: {e}");
        // The same through YAML.
        assert_eq!(MachineConfig::parse(&c.to_yaml()).unwrap_err(), e, "{what}");
    }
    // Hashed known_hosts entries (`ssh-keygen -H`) and armored OpenPGP keys are accepted.
    let mut c = head.clone();
    let g = &mut c.head.as_mut().unwrap().git;
    g.known_hosts = vec!["|1|vWkaRunjPyQ1OmxyTIzFahCWHmM=|Yheb+906FNPn5JuPfrQpCz0nyuQ= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG15FYnQjhd5RNObrvsouFiUDvpIR5TyLaSLdpwP2uno".into()];
    g.trusted_keys = vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG15FYnQjhd5RNObrvsouFiUDvpIR5TyLaSLdpwP2uno ops".into(), "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ0000BYJKwYBBAHaRw8BAQdA\n=AbCd\n-----END PGP PUBLIC KEY BLOCK-----\n".into()];
    c.validate().unwrap();
    assert_eq!(MachineConfig::parse(&c.to_yaml()).unwrap(), c, "a multi-line key survives YAML");
    // Unknown fields and wrong types: serde's path.
    let yaml = worker.to_yaml();
    let e = MachineConfig::parse(&yaml.replace("network:\n", "network:\n  mtu: 9000\n")).unwrap_err();
    assert_eq!(e.field, "network.mtu", "{e}");
    assert!(e.reason.contains("unknown field `mtu`"), "{e}");
    let e = MachineConfig::parse(&yaml.replace("role: worker", "role: boss")).unwrap_err();
    assert_eq!(e.field, "node.role", "{e}");
    let e = MachineConfig::parse(&format!("{yaml}extra: 1\n")).unwrap_err();
    assert!(e.reason.contains("unknown field `extra`"), "{e}");
    let e = MachineConfig::parse("- a list").unwrap_err();
    assert_eq!(e.field, "(document)", "{e}");
}
