//! Test harness: Debian's `docker-registry` on loopback, a busybox image built here and
//! pushed with the distribution API, an in-process control plane and a kubelet whose bridge
//! lives in a network namespace the test creates (nothing touches the host's network).

#![allow(dead_code)]

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Pod;
use kapp_kubelet::image::Digest;
use kapp_testkit::{groups, ControlPlane};
use kube::api::{Api, PostParams};
use serde_json::{json, Value};

/// Whether the test can run; prints why not.
pub fn root_or_skip(name: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    eprintln!("SKIP {name}: the kubelet tests need root (namespaces, mounts, cgroups); CI runs them as root");
    false
}

fn have(cmd: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {cmd}")).stdout(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Install Debian packages the tests need when missing (tests/install-deps.sh should have).
pub fn ensure_packages() {
    install_missing(&[("docker-registry", "docker-registry"), ("/bin/busybox", "busybox-static")]);
}

/// apt-get install the package of every `(command or absolute path, package)` that is
/// missing; panics if that fails. The packages belong in tests/install-deps.sh too.
pub fn install_missing(wanted: &[(&str, &str)]) {
    let missing: Vec<&str> = wanted.iter().filter(|(what, _)| if what.starts_with('/') { !Path::new(what).exists() } else { !have(what) }).map(|(_, package)| *package).collect();
    if missing.is_empty() {
        return;
    }
    eprintln!("installing {missing:?} (add them to tests/install-deps.sh)");
    let ok = Command::new("apt-get").args(["install", "-y", "-qq", "--no-install-recommends"]).args(&missing).env("DEBIAN_FRONTEND", "noninteractive").status().is_ok_and(|s| s.success());
    assert!(ok, "could not install {missing:?}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `docker-registry` process on loopback with its storage in a temporary directory.
pub struct Registry {
    child: Child,
    pub addr: SocketAddr,
    /// `Basic …` when the registry wants credentials.
    pub auth: Option<String>,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub async fn start() -> Registry {
        Registry::start_with(None).await
    }

    /// With `credentials`, the registry refuses anonymous requests (htpasswd, bcrypt).
    pub async fn start_with(credentials: Option<(&str, &str)>) -> Registry {
        ensure_packages();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cfg = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        let mut cfg = cfg;
        let mut auth = None;
        if let Some((user, pass)) = credentials {
            let out = Command::new("python3").args(["-W", "ignore", "-c", &format!("import crypt; print(crypt.crypt({pass:?}, crypt.mksalt(crypt.METHOD_BLOWFISH)))")]).output().unwrap();
            let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
            assert!(hash.starts_with("$2"), "bcrypt hash from python3: {hash:?}");
            std::fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n")).unwrap();
            cfg.push_str(&format!("auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n", dir.path().join("htpasswd").display()));
            use base64::Engine;
            auth = Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))));
        }
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry").arg("serve").arg(&cfg_path).stdout(log.try_clone().unwrap()).stderr(log).spawn().expect("start docker-registry");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let reg = Registry { child, addr, auth, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _, _)) = reg.http("GET", &format!("http://{addr}/v2/"), &[], Bytes::new()).await {
                break;
            }
            assert!(Instant::now() < deadline, "docker-registry did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        reg
    }

    async fn http(&self, method: &str, url: &str, headers: &[(&str, &str)], body: Bytes) -> Result<(u16, Vec<(String, String)>, Bytes), String> {
        let mut h: Vec<(&str, &str)> = headers.to_vec();
        if let Some(a) = &self.auth {
            h.push(("authorization", a.as_str()));
        }
        http(method, url, &h, body).await
    }

    /// Push blobs and a manifest (by tag) with the distribution API; the manifest digest.
    pub async fn push(&self, repo: &str, tag: &str, image: &TestImage) -> String {
        for blob in image.blobs.iter() {
            let (code, headers, _) = self.http("POST", &format!("http://{}/v2/{repo}/blobs/uploads/", self.addr), &[], Bytes::new()).await.unwrap();
            assert_eq!(code, 202, "start upload");
            let loc = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("location")).map(|(_, v)| v.clone()).expect("upload location");
            let url = if loc.starts_with("http") { loc } else { format!("http://{}{loc}", self.addr) };
            let sep = if url.contains('?') { '&' } else { '?' };
            let (code, _, body) = self.http("PUT", &format!("{url}{sep}digest={}", Digest::of(blob)), &[("content-type", "application/octet-stream")], Bytes::from(blob.clone())).await.unwrap();
            assert_eq!(code, 201, "upload blob: {}", String::from_utf8_lossy(&body));
        }
        for (media_type, body) in &image.manifests {
            let reference = if std::ptr::eq(body, &image.manifests.last().unwrap().1) { tag.to_string() } else { Digest::of(body).to_string() };
            let (code, _, resp) = self.http("PUT", &format!("http://{}/v2/{repo}/manifests/{reference}", self.addr), &[("content-type", media_type)], Bytes::from(body.clone())).await.unwrap();
            assert_eq!(code, 201, "put manifest: {}", String::from_utf8_lossy(&resp));
        }
        Digest::of(&image.manifests.last().unwrap().1).to_string()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain-HTTP request: status, headers, body.
pub async fn http(method: &str, url: &str, headers: &[(&str, &str)], body: Bytes) -> Result<(u16, Vec<(String, String)>, Bytes), String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client.request(req.body(Full::new(body)).unwrap()).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let hs = resp.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect();
    let b = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, hs, b))
}

/// An image: its blobs (layers, config) and manifests (the last one is tagged; an index
/// comes after the manifest it lists).
pub struct TestImage {
    pub blobs: Vec<Vec<u8>>,
    pub manifests: Vec<(String, Vec<u8>)>,
    pub config: Vec<u8>,
    pub layers: Vec<(Vec<u8>, &'static str)>,
}

fn tar_entry(b: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, data: &[u8], mode: u32, link: Option<&str>) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    match link {
        Some(l) => b.append_link(&mut h, path, l).unwrap(),
        None => b.append_data(&mut h, path, data).unwrap(),
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// busybox-static as a two-layer OCI image: layer 1 has busybox, its applets, /etc/motd and
/// /etc/passwd; layer 2 deletes /etc/motd (whiteout) and adds /etc/hello. With `index`,
/// an image index (arm64 decoy first) is what the tag names.
pub fn busybox_image(index: bool) -> TestImage {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)");
    let applets = Command::new("/bin/busybox").arg("--list").output().unwrap();
    let mut l1 = tar::Builder::new(Vec::new());
    for d in ["bin/", "etc/", "tmp/", "root/", "www/"] {
        tar_entry(&mut l1, d, tar::EntryType::Directory, b"", if d == "tmp/" { 0o1777 } else { 0o755 }, None);
    }
    tar_entry(&mut l1, "bin/busybox", tar::EntryType::Regular, &busybox, 0o755, None);
    for a in String::from_utf8_lossy(&applets.stdout).lines() {
        if a != "busybox" && !a.is_empty() {
            tar_entry(&mut l1, &format!("bin/{a}"), tar::EntryType::Symlink, b"", 0o777, Some("busybox"));
        }
    }
    tar_entry(&mut l1, "etc/motd", tar::EntryType::Regular, b"deleted by the next layer\n", 0o644, None);
    tar_entry(&mut l1, "etc/passwd", tar::EntryType::Regular, b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n", 0o644, None);
    tar_entry(&mut l1, "etc/group", tar::EntryType::Regular, b"root:x:0:\nnogroup:x:65534:\n", 0o644, None);
    let l1 = l1.into_inner().unwrap();
    let mut l2 = tar::Builder::new(Vec::new());
    tar_entry(&mut l2, "etc/", tar::EntryType::Directory, b"", 0o755, None);
    tar_entry(&mut l2, "etc/.wh.motd", tar::EntryType::Regular, b"", 0o644, None);
    tar_entry(&mut l2, "etc/hello", tar::EntryType::Regular, b"hello from layer two\n", 0o644, None);
    let l2 = l2.into_inner().unwrap();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin", "FROM_IMAGE=yes"], "Cmd": ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(&l1).to_string(), Digest::of(&l2).to_string()]},
    }))
    .unwrap();
    let g1 = gzip(&l1);
    let g2 = gzip(&l2);
    let layer = |b: &Vec<u8>| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": Digest::of(b).to_string(), "size": b.len()});
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": Digest::of(&config).to_string(), "size": config.len()},
        "layers": [layer(&g1), layer(&g2)],
    }))
    .unwrap();
    let mut manifests = vec![("application/vnd.oci.image.manifest.v1+json".to_string(), manifest.clone())];
    let mut blobs = vec![g1.clone(), g2.clone(), config.clone()];
    if index {
        // An arm64 decoy: same layers, a config saying ARCH=arm64 (the amd64 one says nothing).
        let arm_config = serde_json::to_vec(&json!({
            "architecture": "arm64", "os": "linux",
            "config": {"Env": ["PATH=/bin", "ARCH=arm64"], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [Digest::of(&l1).to_string(), Digest::of(&l2).to_string()]},
        }))
        .unwrap();
        let arm = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": Digest::of(&arm_config).to_string(), "size": arm_config.len()},
            "layers": [layer(&g1), layer(&g2)],
        }))
        .unwrap();
        blobs.push(arm_config);
        let idx = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": Digest::of(&arm).to_string(), "size": arm.len(), "platform": {"os": "linux", "architecture": "arm64"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": Digest::of(&manifest).to_string(), "size": manifest.len(), "platform": {"os": "linux", "architecture": "amd64"}},
            ],
        }))
        .unwrap();
        manifests.insert(0, ("application/vnd.oci.image.manifest.v1+json".to_string(), arm));
        manifests.push(("application/vnd.oci.image.index.v1+json".to_string(), idx));
    }
    TestImage { blobs, manifests, config, layers: vec![(g1, "gzip"), (g2, "gzip")] }
}

/// Write `image` as an OCI image layout named `name` into `dir`.
pub fn write_layout(dir: &Path, name: &str, image: &TestImage) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    for b in image.blobs.iter().chain(image.manifests.iter().map(|(_, m)| m)) {
        std::fs::write(blobs.join(Digest::of(b).hex()), b).unwrap();
    }
    let (mt, top) = image.manifests.last().unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion": "1.0.0"}"#).unwrap();
    let index = json!({"schemaVersion": 2, "manifests": [{"mediaType": mt, "digest": Digest::of(top).to_string(), "size": top.len(), "annotations": {"org.opencontainers.image.ref.name": name}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// A network namespace the test owns (the node's bridge lives there); removed on drop.
pub struct NodeNetns(pub String);

impl NodeNetns {
    pub fn create(tag: &str) -> NodeNetns {
        let name = format!("kt-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        assert!(Command::new("ip").args(["netns", "add", &name]).status().unwrap().success(), "ip netns add {name}");
        NodeNetns(name)
    }
}

impl Drop for NodeNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A control plane, a registry with the busybox image, and one kubelet.
pub struct Node {
    pub cp: Option<ControlPlane>,
    pub kubelet: Option<kapp_kubelet::Kubelet>,
    pub registry: Registry,
    pub netns: NodeNetns,
    pub client: kube::Client,
    pub image: String,
    pub state_dir: PathBuf,
    pub cfg: kapp_kubelet::Config,
    pub viewer: kapp_tls::Pem,
    _dir: tempfile::TempDir,
}

impl Node {
    pub async fn start(tag: &str, tweak: impl FnOnce(&mut kapp_kubelet::Config)) -> Node {
        Node::start_with(tag, None, tweak).await
    }

    /// With registry credentials (anonymous pulls refused).
    pub async fn start_with(tag: &str, credentials: Option<(&str, &str)>, tweak: impl FnOnce(&mut kapp_kubelet::Config)) -> Node {
        let mut node = Node::without_kubelet(tag, credentials, tweak).await;
        node.kubelet = Some(kapp_kubelet::Kubelet::start(node.cfg.clone()).await.expect("kubelet starts"));
        node
    }

    /// Everything but the kubelet, whose configuration is `cfg` (a benchmark runs it as a
    /// process of its own).
    pub async fn without_kubelet(tag: &str, credentials: Option<(&str, &str)>, tweak: impl FnOnce(&mut kapp_kubelet::Config)) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::start_with(credentials).await;
        registry.push("test/busybox", "1", &busybox_image(false)).await;
        let cp = ControlPlane::start(&dir.path().join("cp"), 1).await;
        let client = cp.client("gitops", &[groups::GITOPS]).await;
        let netns = NodeNetns::create(tag);
        let node_name = format!("node-{tag}");
        let identity = cp.store.pki.ca.issue(&format!("system:node:{node_name}"), &[groups::NODES], &["127.0.0.1"]).unwrap();
        let state_dir = dir.path().join("state");
        let mut cfg = kapp_kubelet::Config::new(&node_name, &cp.url, identity, &state_dir);
        cfg.pod_cidr = "10.244.7.0/24".into();
        cfg.node_ip = Ipv4Addr::new(10, 244, 7, 1);
        cfg.node_netns = Some(netns.0.clone());
        cfg.netns_prefix = format!("kt{}-", std::process::id());
        cfg.cgroup_parent = format!("kapp-test-{tag}-{}", std::process::id());
        cfg.registry.insecure = vec![registry.addr.to_string()];
        cfg.listen = Some("127.0.0.1:0".parse().unwrap());
        tweak(&mut cfg);
        let viewer = cp.identity("viewer", &[groups::VIEWERS]);
        let image = format!("{}/test/busybox:1", registry.addr);
        Node { cp: Some(cp), kubelet: None, registry, netns, client, image, state_dir, cfg, viewer, _dir: dir }
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    /// Create a pod bound to this node from a JSON spec.
    pub async fn create_pod(&self, name: &str, spec: Value) -> Pod {
        let mut spec = spec;
        spec["nodeName"] = json!(self.cfg.node_name);
        let pod: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec})).unwrap();
        self.pods().create(&PostParams::default(), &pod).await.expect("create pod")
    }

    /// Poll pod `name` until `ok` holds (or panic with its last status after `timeout`).
    pub async fn wait_pod(&self, name: &str, timeout: Duration, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        let mut error = String::new();
        loop {
            match self.pods().get_opt(name).await {
                Ok(Some(p)) => {
                    last = serde_json::to_value(&p).unwrap();
                    if ok(&last) {
                        return last;
                    }
                }
                Ok(None) => error = "not found".into(),
                Err(e) => error = e.to_string(),
            }
            assert!(Instant::now() < deadline, "pod {name}: timed out waiting for {what}; last error {error:?}; last seen:\n{}", serde_json::to_string_pretty(&last["status"]).unwrap());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Wait until pod `name` is gone from the apiserver.
    pub async fn wait_gone(&self, name: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.pods().get_opt(name).await.unwrap().is_some() {
            assert!(Instant::now() < deadline, "pod {name} was not deleted");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Delete pod `name` (its own grace period) and wait until it is gone.
    pub async fn delete_pod(&self, name: &str) {
        self.pods().delete(name, &kube::api::DeleteParams::default()).await.expect("delete pod");
        self.wait_gone(name, Duration::from_secs(40)).await;
    }

    /// A container's log through the kubelet's HTTPS endpoint.
    pub async fn logs(&self, pod: &str, container: &str, query: &str) -> (u16, String) {
        let addr = self.kubelet.as_ref().unwrap().logs_addr.unwrap();
        let c = kapp_tls::H2Client::new(addr.to_string(), kapp_tls::client_config(&self.viewer).unwrap());
        let req = http::Request::get(format!("/containerLogs/default/{pod}/{container}?{query}")).body(kapp_tls::empty()).unwrap();
        let resp = c.send(req).await.expect("logs request");
        let code = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    /// Wait until a container's log contains `needle`.
    pub async fn wait_log(&self, pod: &str, container: &str, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let (code, text) = self.logs(pod, container, "").await;
            if code == 200 && text.contains(needle) {
                return text;
            }
            assert!(Instant::now() < deadline, "log of {pod}/{container} never contained {needle:?}; last ({code}):\n{text}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(k) = self.kubelet.take() {
            k.shutdown_and_clean().await;
        }
        if let Some(cp) = self.cp.take() {
            cp.shutdown().await;
        }
        let cg = format!("/{}", self.cfg.cgroup_parent);
        for h in std::fs::read_dir("/sys/fs/cgroup").map(|r| r.flatten().map(|e| e.path()).collect::<Vec<_>>()).unwrap_or_default() {
            let _ = std::fs::remove_dir(h.join(cg.trim_start_matches('/')));
        }
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(cg.trim_start_matches('/')));
    }
}

/// A test that fails leaves no containers, mounts or pod namespaces behind: kill what runs
/// in the kubelet's cgroups, delete the namespaces of its pods, unmount below the state
/// directory.
/// After a clean `shutdown` there is nothing left to do.
impl Drop for Node {
    fn drop(&mut self) {
        let parent = self.cfg.cgroup_parent.trim_start_matches('/').to_string();
        let mut cgroups: Vec<PathBuf> = Vec::new();
        for h in std::fs::read_dir("/sys/fs/cgroup").map(|r| r.flatten().map(|e| e.path()).collect::<Vec<_>>()).unwrap_or_default() {
            collect_dirs(&h.join(&parent), &mut cgroups);
        }
        for d in &cgroups {
            for pid in std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default().lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        let mut mounts = mounts_below(&self.state_dir);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(Path::new(&m), nix::mount::MntFlags::MNT_DETACH);
        }
        // Only this node's pods: every kubelet of this test process shares the prefix.
        for e in std::fs::read_dir(self.state_dir.join("pods")).map(|r| r.flatten().collect::<Vec<_>>()).unwrap_or_default() {
            let (netns, _) = kapp_kubelet::net::names(&self.cfg.netns_prefix, &e.file_name().to_string_lossy());
            if Path::new("/run/netns").join(&netns).exists() {
                let _ = Command::new("ip").args(["netns", "del", &netns]).status();
            }
        }
        // Deepest first; a cgroup whose processes are still dying may stay.
        cgroups.sort_by_key(|d| std::cmp::Reverse(d.as_os_str().len()));
        for d in cgroups {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_path_buf());
    for e in std::fs::read_dir(dir).map(|r| r.flatten().collect::<Vec<_>>()).unwrap_or_default() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&e.path(), out);
        }
    }
}

pub fn status(p: &Value) -> &Value {
    &p["status"]
}

pub fn container<'a>(p: &'a Value, name: &str) -> &'a Value {
    p["status"]["containerStatuses"].as_array().and_then(|a| a.iter().find(|c| c["name"] == name)).unwrap_or(&Value::Null)
}

/// Mount points at or below `dir`.
pub fn mounts_below(dir: &Path) -> Vec<String> {
    kapp_kubelet::runtime::mounts_below(dir)
}
