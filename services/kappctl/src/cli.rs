//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::creds::CredArgs;

#[derive(Parser, Debug)]
#[command(name = "kappctl", version, about = "Read a kapp cluster: its health, its objects, their events and logs. kappctl never writes.")]
pub struct Cli {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the apiserver is and who kappctl is there.
#[derive(Args, Debug, Clone, Default)]
pub struct ConnArgs {
    /// Kubeconfig to read (default: $KUBECONFIG, then /var/lib/kapp/viewer.kubeconfig).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The apiserver, `https://host:port` (overrides the kubeconfig's).
    #[arg(long, global = true, value_name = "URL")]
    pub server: Option<String>,
    /// Cluster CA certificate (with --cert and --key).
    #[arg(long, global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// A directory `kapp gen pki` wrote: use its viewer identity (ca.pem, viewer.pem, viewer.key).
    #[arg(long, global = true, value_name = "DIR")]
    pub pki: Option<PathBuf>,
}

impl ConnArgs {
    pub fn creds(&self) -> CredArgs {
        CredArgs { kubeconfig: self.kubeconfig.clone(), server: self.server.clone(), ca: self.ca.clone(), cert: self.cert.clone(), key: self.key.clone(), pki: self.pki.clone() }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Is the cluster healthy, and which commit is live? Exit code 0 healthy, 1 degraded, 2 unreachable.
    Status(StatusArgs),
    /// List objects of a kind (kinds by plural, singular, short name or Kind; comma-separated).
    Get(GetArgs),
    /// Show one object in detail, with its events.
    Describe(DescribeArgs),
    /// List events.
    Events(EventsArgs),
    /// Print a container's log.
    Logs(LogsArgs),
    /// Print a read-only kubeconfig (the viewer identity) for kubectl, k9s and other tools.
    Kubeconfig(KubeconfigArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StatusOutput {
    Text,
    Json,
    Yaml,
    /// What was read, before interpretation (for bug reports and test fixtures).
    #[value(hide = true)]
    Raw,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    pub output: StatusOutput,
    /// Refresh until interrupted.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Seconds between refreshes with --watch.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub interval: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GetOutput {
    Wide,
    Json,
    Yaml,
    Name,
}

/// Which namespace: `-n`, or every one with `-A`.
#[derive(Args, Debug, Clone, Default)]
pub struct NsArgs {
    /// Namespace (default: the kubeconfig context's, else `default`).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// Kind(s): `pods`, `po`, `deployments.apps`, `pods,services`.
    pub kind: String,
    /// Object names (all when none).
    pub names: Vec<String>,
    #[command(flatten)]
    pub ns: NsArgs,
    /// Label selector, e.g. `app=web,tier!=db`.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Field selector, e.g. `spec.nodeName=n1`.
    #[arg(long)]
    pub field_selector: Option<String>,
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<GetOutput>,
    /// Leave out the header line.
    #[arg(long)]
    pub no_headers: bool,
}

#[derive(Args, Debug)]
pub struct DescribeArgs {
    pub kind: String,
    pub name: String,
    #[command(flatten)]
    pub ns: NsArgs,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    #[command(flatten)]
    pub ns: NsArgs,
    /// Only events about this object, `kind/name`.
    #[arg(long = "for", value_name = "KIND/NAME")]
    pub for_object: Option<String>,
    /// Only these types, comma-separated (Normal, Warning).
    #[arg(long)]
    pub types: Option<String>,
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<GetOutput>,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    pub pod: String,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Container (default: the pod's only one).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Keep streaming new lines.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// The previous, terminated instance of the container.
    #[arg(short = 'p', long)]
    pub previous: bool,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<u64>,
    /// Prefix each line with its time.
    #[arg(long)]
    pub timestamps: bool,
}

#[derive(Args, Debug)]
pub struct KubeconfigArgs {
    /// Name of the user entry.
    #[arg(long, default_value = "viewer")]
    pub user: String,
}
