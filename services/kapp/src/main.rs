//! `kapp`: the node's multi-call binary. Each service runs as `kapp <service>`; this file
//! only parses arguments, sets up logging and hands over to the service's library.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "kapp", version, about = "kapp node services")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a member of the replicated store.
    Store(StoreArgs),
    /// Run the Kubernetes-compatible apiserver over the store.
    Apiserver(ApiserverArgs),
    /// Run the GitOps reconciler: make the cluster match a git repository.
    Gitops(GitopsArgs),
    /// Run the scheduler (one active per cluster, by Lease `kapp-scheduler`).
    Scheduler(LoopArgs),
    /// Run the controllers (one active per cluster, by Lease `kapp-controllers`).
    Controllers(LoopArgs),
    /// Run the Service proxy: Services and EndpointSlices → this node's nftables table.
    Proxy(ProxyArgs),
    /// Run the cluster DNS: authoritative for the cluster domain, the rest forwarded.
    Dns(DnsArgs),
    /// Show every store member's view of the cluster (read-only).
    StoreStatus(StoreStatusArgs),
    /// Run the node agent: the pods bound to this node, with libcontainer.
    Kubelet(KubeletArgs),
    /// Forward a loopback port to whichever head's apiserver answers (workers).
    Apilb(ApilbArgs),
    /// Generate cluster material offline.
    #[command(subcommand)]
    Gen(GenCommand),
    /// Run the whole stack as one node on this host (as root), following a git repository
    /// (by default the embedded example, committed into <state-dir>/repo). Ctrl-C stops it;
    /// running it again resumes.
    Up(UpArgs),
    /// Remove what `kapp up` put on the host: its bridge, pod namespaces, nftables table;
    /// sysctls back as they were.
    Down(DownArgs),
    /// PID 1 of a node (also what `/sbin/init -> kapp` runs): mounts, modules, network, the
    /// state partition, the node's services from its machine config; power off on SIGTERM.
    Init(InitArgs),
}

/// `kapp init`'s development flags (a node's PID 1 takes none).
#[derive(clap::Args)]
struct InitArgs {
    /// Read the machine config from this file instead of the machine's sources.
    #[arg(long, hide = true)]
    config: Option<PathBuf>,
    /// Treat this directory as the root filesystem (in a mount namespace of its own).
    #[arg(long, hide = true, default_value = "/")]
    root: PathBuf,
    /// Exit at the end instead of powering off or rebooting.
    #[arg(long, hide = true)]
    no_reboot: bool,
    /// Write console lines here instead of <root>/dev/console.
    #[arg(long, hide = true)]
    console: Option<PathBuf>,
}

/// PID-1 mode; returns the exit code (only when not rebooting).
fn run_init(a: InitArgs) -> i32 {
    let mut opts = kapp_init::pid1::Options::node();
    opts.root = a.root;
    opts.config = a.config;
    opts.reboot = !a.no_reboot;
    // Only the machine's own init touches its ESP (tests run with --no-reboot).
    opts.mark_boot = !a.no_reboot;
    opts.console = a.console;
    kapp_init::pid1::run(opts, |yaml, paths| {
        // /proc is mounted by now.
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/bin/kapp"));
        kapp_up::node::plan_node(yaml, paths, &exe)
    })
}

/// `kapp` started by the kernel: as `init` (argv[0]), or as PID 1 without `kapp init`'s own
/// arguments. The kernel's arguments are not ours.
fn started_as_init() -> bool {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let named_init = std::path::Path::new(&argv0).file_name().is_some_and(|n| n == "init");
    named_init || (std::process::id() == 1 && args.next().is_none_or(|a| a != "init"))
}

/// Where `kapp up` keeps its state and what it puts on the host (shared by up and down).
#[derive(clap::Args)]
struct UpHostArgs {
    /// All of the node's state: store, images, pods, logs, keys, the example repository.
    #[arg(long, default_value = "/var/lib/kapp-up")]
    state_dir: PathBuf,
    /// The pod bridge (it also carries the cluster DNS address).
    #[arg(long, default_value = "kapp0")]
    bridge: String,
    /// The Service proxy's nftables table (family inet).
    #[arg(long, default_value = "kapp")]
    table: String,
    /// Prefix of the pods' network namespace names.
    #[arg(long, default_value = "kapp-")]
    netns_prefix: String,
}

#[derive(clap::Args)]
struct UpArgs {
    #[command(flatten)]
    host: UpHostArgs,
    /// Repository to follow (file://, https://, git://); default: <state-dir>/repo, made
    /// from the example.
    #[arg(long)]
    repo: Option<String>,
    /// Branch to follow (default: the repository's HEAD).
    #[arg(long)]
    branch: Option<String>,
    /// Sub-path of the repository to render.
    #[arg(long, default_value = "")]
    path: String,
    /// Seconds between polls of the repository.
    #[arg(long, default_value_t = 5)]
    interval: u64,
    /// The node's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// The apiserver's port on 127.0.0.1.
    #[arg(long, default_value_t = 6443)]
    api_port: u16,
    /// The store's port on 127.0.0.1.
    #[arg(long, default_value_t = 2380)]
    store_port: u16,
    /// Seconds to wait for the cluster before showing its status anyway.
    #[arg(long, default_value_t = 300)]
    wait: u64,
    /// Copy every service's output to stderr.
    #[arg(long, short)]
    verbose: bool,
}

#[derive(clap::Args)]
struct DownArgs {
    #[command(flatten)]
    host: UpHostArgs,
    /// Remove the state directory too (the cluster, its keys, the example repository).
    #[arg(long)]
    purge: bool,
}

fn up_config(h: &UpHostArgs) -> Result<kapp_up::UpConfig> {
    let mut cfg = kapp_up::UpConfig::new(&h.state_dir, std::env::current_exe().context("find the kapp binary")?);
    cfg.bridge = h.bridge.clone();
    cfg.table = h.table.clone();
    cfg.netns_prefix = h.netns_prefix.clone();
    Ok(cfg)
}

async fn run_up(a: UpArgs) -> Result<()> {
    let mut cfg = up_config(&a.host)?;
    cfg.repo = a.repo;
    cfg.branch = a.branch;
    cfg.path = a.path;
    cfg.interval = Duration::from_secs(a.interval.max(1));
    if let Some(n) = a.node_name {
        cfg.node_name = n;
    }
    cfg.api_port = a.api_port;
    cfg.store_port = a.store_port;
    cfg.wait = Duration::from_secs(a.wait);
    cfg.verbose = a.verbose;
    Ok(kapp_up::up(cfg).await?)
}

fn parse_node(s: &str) -> Result<(String, std::net::Ipv4Addr), String> {
    let (name, ip) = s.split_once('=').ok_or_else(|| format!("{s:?} is not NAME=IP"))?;
    Ok((name.to_string(), ip.parse().map_err(|_| format!("{ip:?} is not an IPv4 address"))?))
}

#[derive(Subcommand)]
enum GenCommand {
    /// A new cluster: its CA and one self-contained machine config per node (<out>/<node>.yaml),
    /// a read-only kubeconfig (<out>/viewer.kubeconfig) and <out>/pki/ (the CA key: keep it
    /// offline).
    Cluster(ClusterArgs),
    /// A new cluster CA plus store member and store client certificates.
    Pki {
        /// Directory to write into (must not hold a CA already).
        #[arg(long)]
        out: PathBuf,
        /// Cluster name (goes into the CA's name).
        #[arg(long, default_value = "kapp")]
        cluster: String,
        /// Host names and addresses the store members are reached at, comma-separated.
        #[arg(long, default_value = "127.0.0.1,localhost")]
        hosts: String,
    },
    /// Print a kubeconfig for an identity (e.g. the viewer's: read-only).
    Kubeconfig {
        /// The apiserver, `https://host:port`.
        #[arg(long, default_value = "https://127.0.0.1:6443")]
        server: String,
        /// Cluster name in the kubeconfig.
        #[arg(long, default_value = "kapp")]
        cluster: String,
        /// User name in the kubeconfig.
        #[arg(long, default_value = "viewer")]
        user: String,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// A container image from this host's Debian packages, as an OCI image layout (for
    /// `kapp kubelet --import-dir`).
    Image {
        /// The reference the image is known by, e.g. `kapp.local/busybox:1`.
        #[arg(long = "ref")]
        reference: String,
        /// Installed Debian packages to take the files of (repeatable or comma-separated).
        #[arg(long = "package", value_delimiter = ',')]
        packages: Vec<String>,
        /// An extra file, `HOST:IMAGEPATH` (repeatable).
        #[arg(long = "file", value_parser = kapp_bootstrap::image::parse_file_arg)]
        files: Vec<(PathBuf, PathBuf)>,
        /// Link every applet of the image's /bin/busybox as /bin/<applet>.
        #[arg(long)]
        busybox_applets: bool,
        /// Entrypoint, one argument per occurrence.
        #[arg(long, allow_hyphen_values = true)]
        entrypoint: Vec<String>,
        /// Cmd, one argument per occurrence.
        #[arg(long, allow_hyphen_values = true)]
        cmd: Vec<String>,
        /// `NAME=value` (repeatable).
        #[arg(long)]
        env: Vec<String>,
        /// Working directory.
        #[arg(long)]
        workdir: Option<String>,
        /// The layout directory to write (replaced if it holds a layout).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(clap::Args)]
struct ClusterArgs {
    /// Cluster name.
    #[arg(long)]
    name: String,
    /// A head, NAME=IP (repeatable, in store member order; 1, 3 or 5).
    #[arg(long = "head", value_parser = parse_node, required = true)]
    heads: Vec<(String, std::net::Ipv4Addr)>,
    /// A worker, NAME=IP (repeatable).
    #[arg(long = "worker", value_parser = parse_node)]
    workers: Vec<(String, std::net::Ipv4Addr)>,
    /// The nodes' network prefix length.
    #[arg(long, default_value_t = 24)]
    prefix_len: u8,
    /// Default gateway.
    #[arg(long)]
    gateway: Option<std::net::Ipv4Addr>,
    /// Upstream DNS servers, comma-separated.
    #[arg(long, value_delimiter = ',')]
    dns: Vec<std::net::Ipv4Addr>,
    /// NTP servers, comma-separated.
    #[arg(long, value_delimiter = ',')]
    ntp: Vec<String>,
    /// The repository the cluster follows.
    #[arg(long)]
    git_url: String,
    #[arg(long)]
    git_branch: Option<String>,
    /// Sub-path of the repository to render.
    #[arg(long, default_value = "")]
    git_path: String,
    /// Let ordinary pods run on the heads too. Without it heads are tainted
    /// `node-role.kubernetes.io/control-plane:NoSchedule` when there are workers (a cluster
    /// of heads only always schedules on them).
    #[arg(long)]
    schedule_on_heads: bool,
    /// The git host's keys (`known_hosts` lines) for an ssh:// --git-url.
    #[arg(long)]
    git_known_hosts: Option<PathBuf>,
    /// Directory to write into (must not hold a cluster already).
    #[arg(long)]
    out: PathBuf,
}

fn gen_cluster(a: ClusterArgs) -> Result<()> {
    let head_taint = !a.schedule_on_heads && !a.workers.is_empty();
    let spec = kapp_bootstrap::cluster::ClusterSpec {
        name: a.name.clone(),
        heads: a.heads,
        workers: a.workers,
        prefix_len: a.prefix_len,
        gateway: a.gateway,
        dns: a.dns,
        ntp: a.ntp,
        git_url: a.git_url,
        git_branch: a.git_branch,
        git_path: a.git_path,
        head_taint,
        git_known_hosts: match &a.git_known_hosts {
            None => vec![],
            Some(p) => std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect(),
        },
    };
    let g = kapp_bootstrap::cluster::gen_cluster(&spec, &a.out)?;
    let kubeconfig = a.out.join("viewer.kubeconfig");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&kubeconfig).with_context(|| format!("write {}", kubeconfig.display()))?;
        f.write_all(kapp_runtime::kubeconfig(&a.name, &g.server, "viewer", &g.viewer).as_bytes())?;
    }
    for c in &g.configs {
        println!("wrote {}", c.display());
    }
    println!("wrote {} (read-only, {}) and {} (the CA key: keep it offline)", kubeconfig.display(), g.server, a.out.join("pki").display());
    println!("deploy key (give it read access to the repository; used for ssh:// URLs):\n{}", g.deploy_key);
    println!("age recipient (commit Secrets encrypted with `age -r $(cat {}/age-recipient)`):\n{}", a.out.display(), g.age_recipient);
    Ok(())
}

#[derive(clap::Args)]
struct ApiserverArgs {
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Store members, `host:port`, comma-separated.
    #[arg(long)]
    store: String,
    /// The serving certificate, also used as the store client identity (kapp:store-client).
    #[command(flatten)]
    tls: TlsArgs,
    /// File with the 32-byte key (raw, or 64 hex characters) Secrets are encrypted with at rest.
    #[arg(long)]
    secret_key_file: Option<PathBuf>,
    /// Append one JSON line per mutating request to this file.
    #[arg(long)]
    audit_log: Option<PathBuf>,
}

#[derive(clap::Args)]
struct LoopArgs {
    #[arg(long, default_value = "https://127.0.0.1:6443")]
    apiserver: String,
    #[command(flatten)]
    tls: TlsArgs,
    /// Lease holder identity (default: hostname-pid).
    #[arg(long)]
    holder: Option<String>,
}

fn holder_name(given: &Option<String>) -> String {
    given.clone().unwrap_or_else(|| format!("{}-{}", std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim(), std::process::id()))
}

async fn run_loop(a: LoopArgs, scheduler: bool) -> Result<()> {
    let tls = a.tls.load()?;
    let client = kapp_runtime::client(&a.apiserver, &tls).await?;
    let holder = holder_name(&a.holder);
    if scheduler {
        println!("kapp scheduler as {holder}");
        kapp_controllers::run_scheduler(client, kapp_scheduler::Config::default(), &holder, shutdown_signal()).await;
    } else {
        println!("kapp controllers as {holder}");
        kapp_controllers::run_controllers(client, kapp_controllers::Config::default(), &holder, shutdown_signal()).await;
    }
    Ok(())
}

#[derive(clap::Args)]
struct GitopsArgs {
    /// The apiserver, `https://host:port`.
    #[arg(long, default_value = "https://127.0.0.1:6443")]
    apiserver: String,
    /// The gitops identity (group kapp:gitops).
    #[command(flatten)]
    tls: TlsArgs,
    /// Repository URL: file://, https:// (token) or git://.
    #[arg(long)]
    repo: String,
    /// Branch to follow (default: the repository's HEAD).
    #[arg(long, conflicts_with_all = ["tag", "commit"])]
    branch: Option<String>,
    /// Tag to follow.
    #[arg(long, conflicts_with = "commit")]
    tag: Option<String>,
    /// Pinned commit to apply.
    #[arg(long)]
    commit: Option<String>,
    /// Sub-path of the repository to render.
    #[arg(long, default_value = "")]
    path: String,
    /// File holding an HTTPS token for the repository.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The deploy key (OpenSSH private key file) for an ssh:// repository.
    #[arg(long, requires = "known_hosts")]
    ssh_key_file: Option<PathBuf>,
    /// The git host's keys, `known_hosts` lines (hashed ones too): an ssh:// host must present
    /// one of them.
    #[arg(long)]
    known_hosts: Option<PathBuf>,
    /// Apply only commits signed by a key in this file: `authorized_keys` lines (SSH
    /// signatures) and ASCII-armored OpenPGP public key blocks (`gpg --armor --export`).
    #[arg(long)]
    trusted_keys: Option<PathBuf>,
    /// The cluster's age key file (`AGE-SECRET-KEY-1...` lines, as age-keygen writes): `*.age`
    /// files and age-armored Secret values are decrypted with it.
    #[arg(long)]
    decryption_key: Option<PathBuf>,
    /// Seconds between polls.
    #[arg(long, default_value_t = 15)]
    interval: u64,
    /// Seconds a fetch may take.
    #[arg(long, default_value_t = 60)]
    fetch_timeout: u64,
    /// Most bytes a fetch may download (and the checked-out tree may hold).
    #[arg(long, default_value_t = 256 << 20)]
    max_repo_bytes: u64,
    /// Where the repository cache lives.
    #[arg(long)]
    state_dir: PathBuf,
    /// Name of the GitSync object this instance reports to.
    #[arg(long, default_value = "cluster")]
    name: String,
    /// This instance's identity in the leader Lease (default: host name and pid).
    #[arg(long)]
    holder: Option<String>,
    /// Serve the push webhook here (plain HTTP, HMAC-verified).
    #[arg(long, requires = "webhook_secret_file")]
    webhook_listen: Option<SocketAddr>,
    /// File holding the webhook's HMAC secret.
    #[arg(long)]
    webhook_secret_file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ApilbArgs {
    /// Where the node's services connect.
    #[arg(long, default_value = "127.0.0.1:7445")]
    listen: SocketAddr,
    /// The heads' apiservers, `host:port`, comma-separated, in order of preference.
    #[arg(long)]
    backends: String,
}

async fn run_apilb(a: ApilbArgs) -> Result<()> {
    let backends = a.backends.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
    let lb = kapp_apilb::Balancer::new(kapp_apilb::Config::new(backends))?;
    let listener = kapp_apilb::Balancer::bind(a.listen).await?;
    println!("kapp apilb listening on {} for {}", a.listen, a.backends);
    tokio::select! {
        _ = lb.serve(listener) => {}
        _ = shutdown_signal() => {}
    }
    Ok(())
}

#[derive(clap::Args)]
struct ProxyArgs {
    /// The apiserver, `https://host:port`.
    #[arg(long, default_value = "https://127.0.0.1:6443")]
    apiserver: String,
    /// This node's identity (CN system:node:<name>, group kapp:nodes).
    #[command(flatten)]
    tls: TlsArgs,
    /// This node's name (for logs; topology-aware routing is not implemented yet).
    #[arg(long)]
    node_name: String,
    /// The pod network(s), comma-separated: ClusterIP traffic from elsewhere is masqueraded.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    /// The nftables table (family inet) kapp owns.
    #[arg(long, default_value = "kapp")]
    table: String,
    /// The nft program (a wrapper may run it elsewhere, e.g. in a namespace).
    #[arg(long, default_value = "nft")]
    nft: PathBuf,
    /// The conntrack program (conntrack-tools).
    #[arg(long, default_value = "conntrack")]
    conntrack: PathBuf,
    /// Seconds between consistency checks of the table.
    #[arg(long, default_value_t = 60)]
    check_interval: u64,
    /// Milliseconds to wait for more changes before programming.
    #[arg(long, default_value_t = 100)]
    debounce_ms: u64,
}

#[derive(clap::Args)]
struct DnsArgs {
    /// The apiserver, `https://host:port`.
    #[arg(long, default_value = "https://127.0.0.1:6443")]
    apiserver: String,
    /// This node's identity (any identity that may read Services, EndpointSlices, Pods).
    #[command(flatten)]
    tls: TlsArgs,
    /// Address to answer on (UDP and TCP): the one pods' resolv.conf names.
    #[arg(long, default_value = "10.96.0.10:53")]
    listen: SocketAddr,
    /// Upstream resolvers for names outside the cluster, `ip[:port]`, comma-separated.
    #[arg(long, default_value = "")]
    upstream: String,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    domain: String,
    /// Networks whose reverse (PTR) zones are answered here, comma-separated.
    #[arg(long, default_value = "10.96.0.0/12")]
    reverse_cidr: String,
    /// TTL of answers, seconds (5–30).
    #[arg(long, default_value_t = 5)]
    ttl: u32,
    /// Entries in the forwarding cache.
    #[arg(long, default_value_t = 4096)]
    cache_size: u64,
}

#[derive(clap::Args)]
struct KubeletArgs {
    /// This node's name (its identity's CN is `system:node:<name>`).
    #[arg(long)]
    node_name: String,
    /// The apiserver, `https://host:port`.
    #[arg(long, default_value = "https://127.0.0.1:6443")]
    apiserver: String,
    /// The node identity (group kapp:nodes); also serves the logs endpoint.
    #[command(flatten)]
    tls: TlsArgs,
    /// Images, pods, logs, addresses, container state.
    #[arg(long, default_value = "/var/lib/kapp/kubelet")]
    state_dir: PathBuf,
    /// This node's pod CIDR.
    #[arg(long)]
    pod_cidr: String,
    /// The address reported as the node's InternalIP and the pods' hostIP.
    #[arg(long)]
    node_ip: std::net::Ipv4Addr,
    /// Cluster DNS servers, comma-separated.
    #[arg(long, default_value = "10.96.0.10")]
    cluster_dns: String,
    /// Serve /containerLogs (HTTPS, mTLS) here.
    #[arg(long, default_value = "0.0.0.0:10250")]
    listen: SocketAddr,
    /// Registries spoken to over plain HTTP (`host:port`, comma-separated).
    #[arg(long, default_value = "")]
    insecure_registries: String,
    /// Import the OCI image layouts in this directory's subdirectories at start.
    #[arg(long)]
    import_dir: Option<PathBuf>,
    /// The pod bridge (created if missing).
    #[arg(long, default_value = "kapp0")]
    bridge: String,
    /// Prefix of the pods' network namespace names (unique per kubelet on one host).
    #[arg(long, default_value = "kapp-")]
    netns_prefix: String,
    /// On exit, stop this node's pods and remove what they left on the machine (`kapp up`
    /// does; a node's kubelet leaves them running).
    #[arg(long)]
    clean_on_exit: bool,
    /// Labels of this Node, `key=value,...`.
    #[arg(long, default_value = "", value_parser = kapp_kubelet::parse_labels)]
    node_labels: std::collections::BTreeMap<String, String>,
    /// Taints of this Node, `key[=value]:Effect,...`.
    #[arg(long, default_value = "", value_parser = kapp_kubelet::parse_taints)]
    register_with_taints: kapp_kubelet::Taints,
}

#[derive(clap::Args)]
struct StoreStatusArgs {
    /// Members to ask, `host:port`, comma-separated.
    #[arg(long)]
    endpoints: String,
    /// A certificate of group kapp:store-client (or kapp:store-peer).
    #[command(flatten)]
    tls: TlsArgs,
}

/// An identity: the cluster CA, a certificate and its key (PEM files).
#[derive(clap::Args)]
struct TlsArgs {
    /// Cluster CA certificate.
    #[arg(long)]
    ca: PathBuf,
    /// This identity's certificate.
    #[arg(long)]
    cert: PathBuf,
    /// This identity's private key.
    #[arg(long)]
    key: PathBuf,
}

impl TlsArgs {
    fn load(&self) -> Result<kapp_tls::Pem> {
        Ok(kapp_tls::Pem::load(&self.ca, &self.cert, &self.key)?)
    }
}

#[derive(clap::Args)]
struct StoreArgs {
    /// This member's id (a positive integer, unique in the cluster).
    #[arg(long)]
    id: u64,
    /// Address to listen on for raft and client traffic.
    #[arg(long)]
    listen: SocketAddr,
    /// The initial members: `id=host:port`, comma-separated, this one included (1, 3 or 5).
    #[arg(long)]
    members: String,
    /// Directory for the store's data (created on first start).
    #[arg(long)]
    data_dir: PathBuf,
    /// This member's identity; its organisations must include kapp:store-peer.
    #[command(flatten)]
    tls: TlsArgs,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// Minimum election timeout in milliseconds (the maximum is twice this).
    #[arg(long, default_value_t = 500)]
    election_ms: u64,
    /// Build a raft snapshot after this many log entries.
    #[arg(long, default_value_t = 20_000)]
    snapshot_every: u64,
    /// Keep this many revisions of history (0: never compact automatically).
    #[arg(long, default_value_t = 100_000)]
    keep_revisions: i64,
}

fn parse_members(s: &str) -> Result<BTreeMap<u64, String>> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part.split_once('=').with_context(|| format!("--members: {part:?} is not id=host:port"))?;
        let id: u64 = id.parse().with_context(|| format!("--members: {id:?} is not a member id"))?;
        if id == 0 {
            bail!("--members: member ids start at 1");
        }
        if out.insert(id, addr.to_string()).is_some() {
            bail!("--members: id {id} appears twice");
        }
    }
    Ok(out)
}

async fn run_store(a: StoreArgs) -> Result<()> {
    let members = parse_members(&a.members)?;
    let tls = a.tls.load()?;
    let mut cfg = kapp_store::StoreConfig::new(a.id, a.listen, members, a.data_dir, tls);
    cfg.heartbeat = Duration::from_millis(a.heartbeat_ms);
    cfg.election_timeout = (Duration::from_millis(a.election_ms), Duration::from_millis(a.election_ms * 2));
    cfg.snapshot_every = a.snapshot_every;
    cfg.keep_revisions = a.keep_revisions;
    let handle = kapp_store::StoreHandle::start(cfg).await.context("store failed to start")?;
    // Tell a supervisor (or a test) where we listen once we do.
    println!("kapp store {} listening on {}", handle.id, handle.addr);
    shutdown_signal().await;
    tracing::info!("shutting down");
    handle.shutdown().await;
    Ok(())
}

async fn run_apiserver(a: ApiserverArgs) -> Result<()> {
    let tls = a.tls.load()?;
    let endpoints = a.store.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    let store = kapp_store_client::StoreClient::new(kapp_store_client::ClientConfig::new(endpoints, tls.clone()))?;
    let listener = tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("listen on {}", a.listen))?;
    let secret_key = match &a.secret_key_file {
        None => None,
        Some(p) => {
            let raw = std::fs::read(p).with_context(|| format!("read {}", p.display()))?;
            let text = String::from_utf8_lossy(&raw).trim().to_string();
            if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
                Some((0..32).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16)).collect::<Result<Vec<u8>, _>>()?)
            } else {
                Some(raw)
            }
        }
    };
    let api = kapp_apiserver::ApiServer::start(kapp_apiserver::ApiServerConfig { tls, store, max_connections: 1024, secret_key, audit_log: a.audit_log.clone(), bookmark_interval: Duration::from_secs(60), watch_cache: Default::default() }, listener).await?;
    println!("kapp apiserver listening on {}", api.addr);
    shutdown_signal().await;
    api.shutdown().await;
    Ok(())
}

async fn run_kubelet(a: KubeletArgs) -> Result<()> {
    let mut cfg = kapp_kubelet::Config::new(&a.node_name, &a.apiserver, a.tls.load()?, &a.state_dir);
    cfg.pod_cidr = a.pod_cidr;
    cfg.node_ip = a.node_ip;
    cfg.cluster_dns = a.cluster_dns.split(',').filter(|s| !s.is_empty()).map(|s| s.trim().parse()).collect::<Result<_, _>>().context("--cluster-dns")?;
    cfg.listen = Some(a.listen);
    cfg.registry.insecure = a.insecure_registries.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
    cfg.import_dir = a.import_dir;
    cfg.bridge = a.bridge;
    cfg.netns_prefix = a.netns_prefix;
    cfg.labels = a.node_labels;
    cfg.taints = a.register_with_taints;
    let kubelet = kapp_kubelet::Kubelet::start(cfg).await?;
    shutdown_signal().await;
    if a.clean_on_exit {
        kubelet.shutdown_and_clean().await;
    } else {
        kubelet.shutdown().await;
    }
    Ok(())
}

async fn run_gitops(a: GitopsArgs) -> Result<()> {
    let tls = a.tls.load()?;
    let client = kapp_runtime::client(&a.apiserver, &tls).await?;
    let read = |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()));
    let auth = match (&a.token_file, &a.ssh_key_file, &a.known_hosts) {
        (Some(_), Some(_), _) => anyhow::bail!("--token-file and --ssh-key-file: give one"),
        (Some(p), None, _) => kapp_gitops::Auth::Token(read(p)?.trim().to_string()),
        (None, Some(k), Some(h)) => kapp_gitops::Auth::Ssh { key: read(k)?, known_hosts: kapp_gitops::source::parse_known_hosts(&read(h)?).with_context(|| h.display().to_string())? },
        (None, None, Some(_)) => anyhow::bail!("--known-hosts is for an ssh:// repository: give --ssh-key-file too"),
        _ => kapp_gitops::Auth::None,
    };
    let source = kapp_gitops::Source {
        url: a.repo.clone(),
        git_ref: kapp_api::kapp::GitRef { branch: a.branch.clone(), tag: a.tag.clone(), commit: a.commit.clone() },
        auth,
        timeout: Duration::from_secs(a.fetch_timeout),
        max_bytes: a.max_repo_bytes,
        trusted_keys: match &a.trusted_keys {
            None => vec![],
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?;
                let keys = kapp_gitops::trust::parse_keys(text.lines()).with_context(|| p.display().to_string())?;
                anyhow::ensure!(!keys.is_empty(), "{}: no trusted key in it (leave --trusted-keys out to apply unsigned commits)", p.display());
                keys
            }
        },
    };
    std::fs::create_dir_all(&a.state_dir).with_context(|| format!("create {}", a.state_dir.display()))?;
    let identities = match &a.decryption_key {
        None => vec![],
        Some(p) => kapp_age::parse_identities(&read(p)?).with_context(|| format!("--decryption-key {}", p.display()))?,
    };
    if let Some(id) = identities.first() {
        println!("kapp gitops decrypts secrets for age recipient {}", id.to_recipient());
    }
    let cfg = kapp_gitops::GitopsConfig { name: a.name.clone(), source, path: a.path.clone(), interval: Duration::from_secs(a.interval.max(1)), state_dir: a.state_dir.clone(), identities };
    let webhook = match (&a.webhook_listen, &a.webhook_secret_file) {
        (Some(addr), Some(f)) => {
            let secret = std::fs::read(f).with_context(|| format!("read {}", f.display()))?;
            let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listen on {addr}"))?;
            println!("kapp gitops webhook on http://{}/hook", l.local_addr()?);
            Some((l, secret.trim_ascii().to_vec()))
        }
        _ => None,
    };
    let holder = holder_name(&a.holder);
    println!("kapp gitops following {} as {holder}", a.repo);
    kapp_gitops::run(client, cfg, &holder, webhook, shutdown_signal()).await;
    Ok(())
}

fn parse_cidrs(flag: &str, s: &str) -> Result<Vec<(std::net::IpAddr, u8)>> {
    s.split(',').map(str::trim).filter(|c| !c.is_empty()).map(|c| kapp_proxy::parse_cidr(c).with_context(|| format!("--{flag}: {c:?} is not a network (a.b.c.d/n)"))).collect()
}

async fn run_proxy(a: ProxyArgs) -> Result<()> {
    let tls = a.tls.load()?;
    let client = kapp_runtime::client(&a.apiserver, &tls).await?;
    let cfg = kapp_proxy::RenderConfig { table: a.table.clone(), cluster_cidrs: parse_cidrs("cluster-cidr", &a.cluster_cidr)?, ..Default::default() };
    let proxier = kapp_proxy::Proxier::new(cfg, kapp_proxy::NftCommand::new(&a.nft), kapp_proxy::ConntrackCommand::new(&a.conntrack));
    let pacing = kapp_proxy::Pacing { debounce: Duration::from_millis(a.debounce_ms), check_interval: Duration::from_secs(a.check_interval.max(1)) };
    println!("kapp proxy on node {} programming table inet {}", a.node_name, a.table);
    kapp_proxy::run(client, proxier, pacing, shutdown_signal()).await;
    Ok(())
}

async fn run_dns(a: DnsArgs) -> Result<()> {
    let tls = a.tls.load()?;
    let client = kapp_runtime::client(&a.apiserver, &tls).await?;
    if !(1..=3600).contains(&a.ttl) {
        bail!("--ttl: {} is out of range (1-3600 seconds)", a.ttl);
    }
    let zones = kapp_dns::ZoneConfig::new(&a.domain, a.ttl, &parse_cidrs("reverse-cidr", &a.reverse_cidr)?).with_context(|| format!("--domain {:?}", a.domain))?;
    let servers = a
        .upstream
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| kapp_dns::parse_upstream(u).with_context(|| format!("--upstream: {u:?} is not ip[:port]")))
        .collect::<Result<Vec<_>>>()?;
    let upstreams = kapp_dns::Upstreams { servers, cache_size: a.cache_size, timeout: None };
    let (server, zones) = kapp_dns::DnsServer::start(zones, a.listen, &upstreams).await?;
    println!("kapp dns listening on {} (udp) and {} (tcp)", server.udp_addr, server.tcp_addr);
    kapp_dns::run(client, zones, Duration::from_millis(100), shutdown_signal()).await;
    server.shutdown().await;
    Ok(())
}

async fn store_status(a: StoreStatusArgs) -> Result<()> {
    let tls = a.tls.load()?;
    let endpoints: Vec<String> = a.endpoints.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    let mut cfg = kapp_store_client::ClientConfig::new(endpoints.clone(), tls);
    cfg.attempt_timeout = Duration::from_secs(2);
    let client = kapp_store_client::StoreClient::new(cfg)?;
    println!("{:<22} {:>3} {:<10} {:>6} {:>6} {:>9} {:>9} {:>9}", "ENDPOINT", "ID", "STATE", "LEADER", "TERM", "COMMITTED", "APPLIED", "REVISION");
    let mut unreachable = 0;
    for (i, ep) in endpoints.iter().enumerate() {
        match client.member_status(i).await {
            Ok(st) => println!(
                "{:<22} {:>3} {:<10} {:>6} {:>6} {:>9} {:>9} {:>9}",
                ep,
                st.id,
                st.state,
                st.leader.map_or("-".into(), |l| l.to_string()),
                st.term,
                st.committed.map_or("-".into(), |c| c.to_string()),
                st.applied.map_or("-".into(), |c| c.to_string()),
                st.revision
            ),
            Err(e) => {
                unreachable += 1;
                println!("{ep:<22} unreachable: {e}");
            }
        }
    }
    if unreachable == endpoints.len() {
        bail!("no member answered");
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn init_logging(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("KAPP_LOG").unwrap_or_else(|_| default_filter.into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> Result<()> {
    if started_as_init() {
        init_logging("warn");
        std::process::exit(run_init(InitArgs { config: None, root: PathBuf::from("/"), no_reboot: false, console: None }));
    }
    let cli = Cli::parse();
    if let Command::Init(a) = cli.command {
        init_logging("warn");
        std::process::exit(run_init(a));
    }
    // `kapp up` talks to a person: its services log to files; it says only what goes wrong.
    let default_filter = if matches!(cli.command, Command::Up(_)) { "warn,kube_client=off" } else { "info,openraft=warn" };
    init_logging(default_filter);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Store(a) => run_store(a).await,
            Command::StoreStatus(a) => store_status(a).await,
            Command::Apiserver(a) => run_apiserver(a).await,
            Command::Gitops(a) => run_gitops(a).await,
            Command::Scheduler(a) => run_loop(a, true).await,
            Command::Controllers(a) => run_loop(a, false).await,
            Command::Proxy(a) => run_proxy(a).await,
            Command::Dns(a) => run_dns(a).await,
            Command::Kubelet(a) => run_kubelet(a).await,
            Command::Apilb(a) => run_apilb(a).await,
            Command::Up(a) => run_up(a).await,
            Command::Down(a) => Ok(kapp_up::down(&up_config(&a.host)?, a.purge).await?),
            Command::Init(_) => unreachable!("handled before the runtime"),
            Command::Gen(GenCommand::Cluster(a)) => gen_cluster(a),
            Command::Gen(GenCommand::Pki { out, cluster, hosts }) => {
                let hosts: Vec<&str> = hosts.split(',').map(str::trim).filter(|h| !h.is_empty()).collect();
                kapp_bootstrap::gen_pki(&out, &cluster, &hosts)?;
                println!("wrote a new cluster CA and the store, apiserver, gitops and viewer certificates to {}", out.display());
                Ok(())
            }
            Command::Gen(GenCommand::Kubeconfig { server, cluster, user, tls }) => {
                print!("{}", kapp_runtime::kubeconfig(&cluster, &server, &user, &tls.load()?));
                Ok(())
            }
            Command::Gen(GenCommand::Image { reference, packages, files, busybox_applets, entrypoint, cmd, env, workdir, out }) => {
                let spec = kapp_bootstrap::image::ImageSpec { reference, packages, files, busybox_applets, entrypoint, cmd, env, workdir };
                let built = kapp_bootstrap::image::build_layout(&spec, &out)?;
                println!("{} {} ({} files, {} bytes compressed) in {}", built.reference, built.manifest_digest, built.files, built.layer_bytes, out.display());
                Ok(())
            }
        }
    })
}
