//! `kapp-bench-store`: kapp's replicated store against etcd 3.4, side by side, on loopback.
//!
//! For each system, member count and client concurrency ("cell") the benchmark starts a fresh
//! cluster in a new data directory, waits until a write succeeds, finds the leader and points
//! the client at it, then runs, each for a fixed time:
//!
//! 1. warm-up writes (not counted),
//! 2. writes: unconditional puts of 13-byte keys `bench/NNNNNNN` (100,000 distinct keys,
//!    cycled) with 256-byte values of fresh pseudo-random (incompressible) bytes,
//! 3. linearizable reads of random keys among those written.
//!
//! `clients` is the number of concurrent tasks, each with one request outstanding; all of a
//! cell's tasks share one client object (one HTTP/2 connection per member), as etcd's Go
//! client and kapp's apiserver do. Server RSS is sampled (VmRSS, summed over members) at the
//! end of the cell; server CPU time is read from /proc before and after each phase.
//!
//! Everything is bounded: each phase stops at its deadline, each cell has a hard timeout,
//! and all servers are stopped (SIGTERM, then SIGKILL) at the end of their cell.

mod cluster;
mod etcd;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use kapp_store_client::{ClientConfig, StoreClient};

use cluster::{Certs, Cluster, System};
use etcd::EtcdClient;

/// Distinct keys written (then cycled).
const KEYSPACE: u64 = 100_000;
/// Value size in bytes.
const VALUE_BYTES: usize = 256;

#[derive(Parser, Debug)]
#[command(name = "kapp-bench-store", about = "kapp's store against etcd, side by side, on loopback")]
struct Args {
    /// Seconds each measured phase (writes, then reads) of a cell runs.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Seconds of writes before the measured write phase (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Smoke test: 1 s phases, 0.2 s warm-up, 1-member clusters only.
    #[arg(long)]
    quick: bool,
    /// Cluster sizes to run.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    members: Vec<usize>,
    /// Concurrent client tasks to run with.
    #[arg(long, value_delimiter = ',', default_value = "1,256")]
    clients: Vec<usize>,
    /// Systems to run: kapp, etcd.
    #[arg(long, value_delimiter = ',', default_value = "kapp,etcd")]
    systems: Vec<String>,
    /// The `kapp` binary (default: `kapp` next to this binary).
    #[arg(long)]
    kapp: Option<PathBuf>,
    /// The `etcd` binary.
    #[arg(long, default_value = "etcd")]
    etcd: PathBuf,
    /// Run etcd without TLS (plain HTTP/2 for clients and peers). Default: mTLS, like kapp.
    #[arg(long)]
    etcd_plaintext: bool,
    /// Directory under which the temporary data directories of both systems are made.
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
    /// Write the results as markdown to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// A connected client of either system.
#[derive(Clone)]
enum Target {
    Kapp(StoreClient),
    Etcd(EtcdClient),
}

impl Target {
    async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        match self {
            Target::Kapp(c) => {
                c.put(key, value).await?;
            }
            Target::Etcd(c) => {
                c.put(&key, &value).await?;
            }
        }
        Ok(())
    }

    async fn get(&self, key: Vec<u8>) -> Result<()> {
        let len = match self {
            Target::Kapp(c) => c.get(key.clone()).await?.map(|kv| kv.value.len()),
            Target::Etcd(c) => c.get(&key).await?.map(|v| v.len()),
        };
        match len {
            Some(VALUE_BYTES) => Ok(()),
            Some(n) => bail!("read {} returned {n} bytes", String::from_utf8_lossy(&key)),
            None => bail!("read {} found no value", String::from_utf8_lossy(&key)),
        }
    }
}

fn key_of(i: u64) -> Vec<u8> {
    format!("bench/{:07}", i % KEYSPACE).into_bytes()
}

/// xorshift64*: cheap per-task pseudo-random numbers (no need for quality here).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn value(&mut self) -> Vec<u8> {
        let mut v = Vec::with_capacity(VALUE_BYTES);
        while v.len() < VALUE_BYTES {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(VALUE_BYTES);
        v
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Write,
    Read,
}

/// What one phase measured.
#[derive(Debug, Clone, Default)]
struct Phase {
    ops: u64,
    errors: u64,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
    first_error: Option<String>,
    /// Server CPU seconds used during the phase (sum over members).
    server_cpu_s: f64,
}

impl Phase {
    fn per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// Nearest-rank percentile of sorted microsecond samples, in milliseconds.
fn percentile_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    f64::from(sorted_us[rank - 1]) / 1000.0
}

/// Run `clients` tasks doing `kind` operations until `dur` has passed. Writes number keys
/// from `counter`; reads pick keys below `readable`.
async fn run_phase(target: &Target, kind: Kind, clients: usize, dur: Duration, counter: &Arc<AtomicU64>, readable: u64) -> Phase {
    let start = Instant::now();
    let deadline = start + dur;
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let mut tasks = Vec::with_capacity(clients);
    for t in 0..clients {
        let target = target.clone();
        let counter = counter.clone();
        let first_error = first_error.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(t as u64 + 1 + (counter.load(Ordering::Relaxed) << 20));
            let mut lat_us: Vec<u32> = Vec::with_capacity(4096);
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let began = Instant::now();
                let r = match kind {
                    Kind::Write => {
                        let n = counter.fetch_add(1, Ordering::Relaxed);
                        target.put(key_of(n), rng.value()).await
                    }
                    Kind::Read => target.get(key_of(rng.next() % readable.max(1))).await,
                };
                match r {
                    Ok(()) => lat_us.push(began.elapsed().as_micros().min(u128::from(u32::MAX)) as u32),
                    Err(e) => {
                        errors += 1;
                        first_error.lock().expect("lock").get_or_insert_with(|| format!("{e:#}"));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (lat_us, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok((lat, e)) => {
                all.extend(lat);
                errors += e;
            }
            Err(e) => {
                errors += 1;
                first_error.lock().expect("lock").get_or_insert_with(|| format!("task failed: {e}"));
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let first_error = first_error.lock().expect("lock").clone();
    Phase {
        ops: all.len() as u64,
        errors,
        secs,
        p50_ms: percentile_ms(&all, 0.50),
        p99_ms: percentile_ms(&all, 0.99),
        first_error,
        server_cpu_s: 0.0,
    }
}

/// One cell's results.
#[derive(Debug, Clone)]
struct Cell {
    system: System,
    members: usize,
    clients: usize,
    write: Phase,
    read: Phase,
    rss_kib: u64,
    notes: Vec<String>,
}

struct Ctx {
    args: Args,
    kapp: PathBuf,
    certs: Certs,
    run_dir: PathBuf,
    clk_tck: f64,
    /// /proc/loadavg when the run began (other work on the machine skews the numbers).
    load_at_start: String,
}

/// Retry `f` until it succeeds or `limit` passes.
async fn retry<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() >= limit => return Err(e.context(format!("{what}: gave up after {limit:?}"))),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A client used only to ask members who leads.
enum Probe {
    Kapp(StoreClient, usize),
    Etcd(EtcdClient),
}

impl Probe {
    /// Index of the leader among the endpoints, and the current term.
    async fn leader(&self) -> Result<(usize, u64)> {
        match self {
            Probe::Kapp(c, n) => {
                for i in 0..*n {
                    let s = c.member_status(i).await?;
                    if s.leader == Some(s.id) {
                        return Ok((i, s.term));
                    }
                }
            }
            Probe::Etcd(c) => {
                for i in 0..c.endpoint_count() {
                    let s = c.status(i).await?;
                    if s.leader != 0 && s.leader == s.member_id {
                        return Ok((i, s.raft_term));
                    }
                }
            }
        }
        bail!("no member says it is the leader")
    }
}

fn leader_first(addrs: &[String], leader: usize) -> Vec<String> {
    let mut v = addrs.to_vec();
    v.rotate_left(leader);
    v
}

async fn run_cell(ctx: &Ctx, system: System, members: usize, clients: usize) -> Result<Cell> {
    let dir = ctx.run_dir.join(format!("{}-{members}m-{clients}c", system.name()));
    std::fs::create_dir_all(&dir)?;
    let ready_limit = Duration::from_secs(60);
    let mut cluster = match system {
        System::Kapp => Cluster::start_kapp(&ctx.kapp, members, &dir, &ctx.certs).await?,
        System::Etcd => Cluster::start_etcd(&ctx.args.etcd, members, &dir, &ctx.certs, !ctx.args.etcd_plaintext).await?,
    };
    let addrs = cluster.client_addrs();
    let result = async {
        // Ready once a write succeeds; then find the leader and point the client at it.
        let (target, probe) = match system {
            System::Kapp => {
                let probe = StoreClient::new(ClientConfig::new(addrs.clone(), ctx.certs.client.clone()))?;
                retry("first write", ready_limit, || async { Ok(probe.put("bench-ready", "1").await.map(|_| ())?) }).await?;
                let probe = Probe::Kapp(probe, members);
                let (leader, _) = retry("find the leader", ready_limit, || probe.leader()).await?;
                let client = StoreClient::new(ClientConfig::new(leader_first(&addrs, leader), ctx.certs.client.clone()))?;
                (Target::Kapp(client), probe)
            }
            System::Etcd => {
                let tls = if ctx.args.etcd_plaintext { None } else { Some(&ctx.certs.client) };
                let probe = EtcdClient::new(&addrs, tls)?;
                retry("first write", ready_limit, || async { probe.put(b"bench-ready", b"1").await.map(|_| ()) }).await?;
                let probe = Probe::Etcd(probe);
                let (leader, _) = retry("find the leader", ready_limit, || probe.leader()).await?;
                (Target::Etcd(EtcdClient::new(&leader_first(&addrs, leader), tls)?), probe)
            }
        };
        let (leader_before, term_before) = probe.leader().await?;
        let counter = Arc::new(AtomicU64::new(0));
        if ctx.args.warmup > 0.0 {
            run_phase(&target, Kind::Write, clients, Duration::from_secs_f64(ctx.args.warmup), &counter, 0).await;
        }
        let phase = Duration::from_secs_f64(ctx.args.seconds);
        let cpu0 = cluster.cpu_ticks()?;
        let mut write = run_phase(&target, Kind::Write, clients, phase, &counter, 0).await;
        let cpu1 = cluster.cpu_ticks()?;
        write.server_cpu_s = (cpu1 - cpu0) as f64 / ctx.clk_tck;
        cluster.check_alive()?;
        let readable = counter.load(Ordering::Relaxed).min(KEYSPACE);
        if write.ops == 0 {
            bail!("no write succeeded: {}", write.first_error.clone().unwrap_or_default());
        }
        let mut read = run_phase(&target, Kind::Read, clients, phase, &counter, readable).await;
        let cpu2 = cluster.cpu_ticks()?;
        read.server_cpu_s = (cpu2 - cpu1) as f64 / ctx.clk_tck;
        cluster.check_alive()?;
        let rss_kib = cluster.rss_kib()?;
        let mut notes = Vec::new();
        match probe.leader().await {
            Ok((leader_after, term_after)) if leader_after != leader_before || term_after != term_before => {
                notes.push(format!("leader changed during the cell (term {term_before} -> {term_after})"))
            }
            Ok(_) => {}
            Err(e) => notes.push(format!("could not check the leader at the end: {e:#}")),
        }
        for (what, p) in [("write", &write), ("read", &read)] {
            if p.errors > 0 {
                notes.push(format!("{} {what} errors, first: {}", p.errors, p.first_error.clone().unwrap_or_default()));
            }
        }
        Ok(Cell { system, members, clients, write, read, rss_kib, notes })
    }
    .await;
    if result.is_err() {
        for (i, m) in cluster.members.iter().enumerate() {
            eprintln!("--- {} member {} log tail ---\n{}", system.name(), i + 1, cluster::log_tail(&m.log, 15));
        }
    }
    cluster.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn cmd_output(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn meminfo_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find_map(|l| l.strip_prefix("MemTotal:")).map(|v| v.trim().to_string()))
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())))
        .unwrap_or_else(|| "unknown".into())
}

/// Filesystem type and device of the mount holding `path`.
fn filesystem_of(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && path.starts_with(f[1])).then(|| (f[1].len(), format!("{} on {} ({})", f[2], f[1], f[0])))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, s)| s)
        .unwrap_or_else(|| "unknown".into())
}

fn fmt_rate(v: f64) -> String {
    format!("{v:.0}")
}

fn fmt_ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

fn results_table(cells: &[Cell]) -> String {
    let mut s = String::new();
    s.push_str("| system | members | clients | writes/s | write p50 ms | write p99 ms | reads/s | read p50 ms | read p99 ms | server RSS MiB | server CPU s (writes / reads) | errors |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for c in cells {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} / {:.1} | {} |",
            c.system.name(),
            c.members,
            c.clients,
            fmt_rate(c.write.per_sec()),
            fmt_ms(c.write.p50_ms),
            fmt_ms(c.write.p99_ms),
            fmt_rate(c.read.per_sec()),
            fmt_ms(c.read.p50_ms),
            fmt_ms(c.read.p99_ms),
            c.rss_kib as f64 / 1024.0,
            c.write.server_cpu_s,
            c.read.server_cpu_s,
            c.write.errors + c.read.errors,
        );
    }
    s
}

fn ratio_table(cells: &[Cell]) -> String {
    let mut s = String::new();
    s.push_str("| members | clients | writes/s kapp/etcd | write p99 kapp/etcd | reads/s kapp/etcd | read p99 kapp/etcd | RSS kapp/etcd |\n");
    s.push_str("|---:|---:|---:|---:|---:|---:|---:|\n");
    let mut any = false;
    for k in cells.iter().filter(|c| c.system == System::Kapp) {
        let Some(e) = cells.iter().find(|c| c.system == System::Etcd && c.members == k.members && c.clients == k.clients) else {
            continue;
        };
        any = true;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            k.members,
            k.clients,
            ratio(k.write.per_sec(), e.write.per_sec()),
            ratio(k.write.p99_ms, e.write.p99_ms),
            ratio(k.read.per_sec(), e.read.per_sec()),
            ratio(k.read.p99_ms, e.read.p99_ms),
            ratio(k.rss_kib as f64, e.rss_kib as f64),
        );
    }
    if any {
        s
    } else {
        String::new()
    }
}

fn report(ctx: &Ctx, cells: &[Cell], failures: &[String], started: &str, wall: Duration) -> String {
    let a = &ctx.args;
    let mut s = String::new();
    let command = std::env::var("KAPP_BENCH_COMMAND").unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" "));
    let profile = if cfg!(debug_assertions) { "debug (dev profile) — NOT representative" } else { "release" };
    let etcd_version = cmd_output(&a.etcd.to_string_lossy(), &["--version"])
        .map(|v| v.lines().filter(|l| l.starts_with("etcd Version") || l.starts_with("Go Version")).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|| "unknown".into());
    let kapp_version = cmd_output(&ctx.kapp.to_string_lossy(), &["--version"]).unwrap_or_else(|| "unknown".into());
    let rustc = cmd_output("rustc", &["--version"]).unwrap_or_else(|| "unknown".into());
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let git = cmd_output("git", &["-C", &repo.to_string_lossy(), "rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "no commit".into());
    let dirty = cmd_output("git", &["-C", &repo.to_string_lossy(), "status", "--porcelain"]).is_some();
    let etcd_tls = if a.etcd_plaintext {
        "**etcd ran WITHOUT TLS** (plain HTTP/2 for clients and peers) while kapp used mTLS: this favours etcd"
    } else {
        "both systems used mTLS for client and peer traffic, with certificates from the same CA (ECDSA P-256)"
    };

    let _ = writeln!(s, "# Store benchmark: kapp store vs etcd\n");
    let _ = writeln!(s, "- command: `{command}`");
    let _ = writeln!(s, "- date: {started} (wall time {:.0} s)", wall.as_secs_f64());
    let _ = writeln!(
        s,
        "- machine: {} CPUs ({}), {} memory, kernel {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        cpu_model(),
        meminfo_total(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()
    );
    let _ = writeln!(s, "- load average (1/5/15 min) at start: {}; at end: {}", ctx.load_at_start, loadavg());
    let _ = writeln!(s, "- data directories: {} ({}) for both systems", a.work_dir.display(), filesystem_of(&a.work_dir));
    let _ = writeln!(s, "- versions: kapp `{kapp_version}` (git {git}{}), {etcd_version}; {rustc}", if dirty { ", uncommitted changes" } else { "" });
    let _ = writeln!(s, "- build profile of kapp and the benchmark: {profile}");
    let _ = writeln!(
        s,
        "- each cell: fresh cluster, {:.1} s warm-up writes (not counted), {:.1} s writes, {:.1} s reads",
        a.warmup, a.seconds, a.seconds
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "## Results\n");
    s.push_str(&results_table(cells));
    let ratios = ratio_table(cells);
    if !ratios.is_empty() {
        let _ = writeln!(s, "\nRatios kapp/etcd (throughput: higher is better for kapp; p99 and RSS: lower is better for kapp):\n");
        s.push_str(&ratios);
    }
    let notes: Vec<String> = cells
        .iter()
        .flat_map(|c| c.notes.iter().map(move |n| format!("- {} {}m/{}c: {n}", c.system.name(), c.members, c.clients)))
        .chain(failures.iter().map(|f| format!("- FAILED: {f}")))
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(s, "\nNotes from the run:\n\n{}", notes.join("\n"));
    }
    let _ = writeln!(s, "\n## Method\n");
    let _ = writeln!(
        s,
        "- Workload: keys `bench/NNNNNNN` (exactly 13 bytes; 100,000 distinct keys, cycled), values exactly {VALUE_BYTES} bytes of fresh \
pseudo-random (incompressible) bytes per write. Writes are unconditional puts (kapp: `StoreClient::put`, a one-op transaction; \
etcd: `KV.Put`). Reads get one random key among those written (kapp: `StoreClient::get`, linearizable; etcd: `KV.Range` without \
`serializable`, linearizable)."
    );
    let _ = writeln!(
        s,
        "- Clients: `clients` concurrent tokio tasks, each with one request outstanding, sharing one client (one HTTP/2 connection \
per member) in the benchmark process, which runs on the same {} CPUs as the servers. Before measuring, the client is pointed \
at the current leader (both systems), so no request is forwarded by a follower unless leadership moves (then a note says so).",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    let _ = writeln!(
        s,
        "- etcd is driven over gRPC (HTTP/2, protobuf) by a minimal client in this crate (`tests/bench/src/etcd.rs`) built on the \
same hyper/rustls stack as kapp's client, not through etcd's JSON gateway."
    );
    let _ = writeln!(s, "- TLS: {etcd_tls}.");
    let _ = writeln!(
        s,
        "- Durability: defaults of both. etcd fsyncs its WAL before acknowledging (and bbolt on commit); kapp's store syncs its \
RocksDB WAL before raft counts an entry as persisted, so before acknowledging. Raft timing: defaults of both (etcd: heartbeat \
100 ms, election 1000 ms, snapshot every 100,000 entries; kapp: heartbeat 100 ms, election 500-1000 ms, snapshot every 20,000 entries)."
    );
    let _ = writeln!(
        s,
        "- Latency: per successful request, client-side, nearest-rank percentiles. Throughput: successful requests / phase wall time \
(until the last in-flight request of the phase returned). RSS: VmRSS from /proc/<pid>/status summed over the members, sampled \
at the end of the cell (after the read phase). Server CPU: utime+stime from /proc/<pid>/stat summed over members, per phase."
    );
    s
}

async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

async fn run_all(ctx: &Ctx, systems: &[System], cells: &mut Vec<Cell>, failures: &mut Vec<String>) {
    let cell_limit = Duration::from_secs_f64(ctx.args.warmup + 2.0 * ctx.args.seconds + 240.0);
    for &members in &ctx.args.members {
        for &clients in &ctx.args.clients {
            for &system in systems {
                eprintln!("== {} members={members} clients={clients}", system.name());
                match tokio::time::timeout(cell_limit, run_cell(ctx, system, members, clients)).await {
                    Ok(Ok(c)) => {
                        eprintln!(
                            "   writes/s {:.0} (p50 {} ms, p99 {} ms)  reads/s {:.0} (p50 {} ms, p99 {} ms)  rss {:.1} MiB  errors {}",
                            c.write.per_sec(),
                            fmt_ms(c.write.p50_ms),
                            fmt_ms(c.write.p99_ms),
                            c.read.per_sec(),
                            fmt_ms(c.read.p50_ms),
                            fmt_ms(c.read.p99_ms),
                            c.rss_kib as f64 / 1024.0,
                            c.write.errors + c.read.errors
                        );
                        for n in &c.notes {
                            eprintln!("   note: {n}");
                        }
                        cells.push(c);
                    }
                    Ok(Err(e)) => {
                        eprintln!("   FAILED: {e:#}");
                        failures.push(format!("{} {members}m/{clients}c: {e:#}", system.name()));
                    }
                    Err(_) => {
                        eprintln!("   FAILED: timed out after {cell_limit:?}");
                        failures.push(format!("{} {members}m/{clients}c: timed out after {cell_limit:?}", system.name()));
                    }
                }
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.seconds = 1.0;
        args.warmup = 0.2;
        args.members = vec![1];
    }
    let seconds_ok = args.seconds > 0.0 && args.seconds <= 3600.0;
    if !seconds_ok || !(0.0..=600.0).contains(&args.warmup) {
        bail!("--seconds must be in (0, 3600] and --warmup in [0, 600]");
    }
    if args.members.iter().any(|m| *m == 0 || *m > 5) || args.clients.iter().any(|c| *c == 0 || *c > 10_000) {
        bail!("--members must be 1..=5 and --clients 1..=10000");
    }
    let mut systems = Vec::new();
    for s in &args.systems {
        systems.push(match s.as_str() {
            "kapp" => System::Kapp,
            "etcd" => System::Etcd,
            other => bail!("unknown system {other:?} (kapp, etcd)"),
        });
    }
    let kapp = match &args.kapp {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.parent().ok_or_else(|| anyhow!("no directory for current exe"))?.join("kapp"),
    };
    if systems.contains(&System::Kapp) && !kapp.exists() {
        bail!("kapp binary {} not found (build it, or pass --kapp)", kapp.display());
    }
    let started = cmd_output("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]).unwrap_or_else(|| "unknown".into());
    let t0 = Instant::now();
    std::fs::create_dir_all(&args.work_dir)?;
    let tmp = tempfile::Builder::new().prefix("kapp-bench-").tempdir_in(&args.work_dir).context("make the temporary directory")?;
    let max_members = args.members.iter().copied().max().unwrap_or(1);
    let certs = Certs::generate(&tmp.path().join("certs"), max_members)?;
    let clk_tck = cmd_output("getconf", &["CLK_TCK"]).and_then(|v| v.parse().ok()).unwrap_or(100.0);
    let ctx = Ctx { kapp, certs, run_dir: tmp.path().to_path_buf(), clk_tck, load_at_start: loadavg(), args };

    let mut cells = Vec::new();
    let mut failures = Vec::new();
    // On SIGINT/SIGTERM stop at once: dropping the running cell kills its servers.
    let interrupted = tokio::select! {
        () = run_all(&ctx, &systems, &mut cells, &mut failures) => false,
        () = termination() => true,
    };
    if interrupted {
        eprintln!("interrupted; servers stopped");
        failures.push("run interrupted by a signal".into());
    }
    let md = report(&ctx, &cells, &failures, &started, t0.elapsed());
    println!("{md}");
    if let Some(out) = &ctx.args.out {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(out, &md).with_context(|| format!("write {}", out.display()))?;
        eprintln!("results written to {}", out.display());
    }
    drop(tmp);
    if !failures.is_empty() {
        bail!("{} cell(s) failed", failures.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_have_the_documented_sizes() {
        assert_eq!(key_of(0).len(), 13);
        assert_eq!(key_of(KEYSPACE - 1).len(), 13);
        assert_eq!(key_of(KEYSPACE + 5), key_of(5));
        let mut r = Rng::new(1);
        let (a, b) = (r.value(), r.value());
        assert_eq!(a.len(), VALUE_BYTES);
        assert_ne!(a, b);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_ms(&v, 0.50), 50.0);
        assert_eq!(percentile_ms(&v, 0.99), 99.0);
        assert_eq!(percentile_ms(&[7000], 0.99), 7.0);
        assert!(percentile_ms(&[], 0.5).is_nan());
    }
}
