//! The OS boundary: `nft` and `conntrack`. Traits so the proxier is tested with
//! recording fakes; the real implementations run the programs (a wrapper path lets a
//! test run them inside a network namespace: `exec ip netns exec node nft "$@"`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nftables::schema::{NfListObject, NfObject};

use crate::model::Family;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("run {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("nft refused the transaction: {stderr}")]
    Refused { stderr: String },
    #[error("read the table: {0}")]
    List(#[from] nftables::helper::NftablesError),
    #[error("unexpected nft json: {0}")]
    Json(String),
    #[error("conntrack failed: {0}")]
    Conntrack(String),
}

/// What the proxier needs from nftables.
pub trait Nft: Send {
    /// Run one transaction (nft's text syntax): all of it or nothing.
    fn apply(&mut self, program: &str) -> Result<(), ExecError>;
    /// The names of the chains in `inet <table>` (empty when the table is missing).
    fn chains(&mut self, table: &str) -> Result<BTreeSet<String>, ExecError>;
    /// A map's elements: key (as `a . b . c`) → verdict (`goto chain`) or data (`a . b`).
    fn map_elements(&mut self, table: &str, map: &str) -> Result<BTreeMap<String, String>, ExecError>;
    /// A set's elements (as `a . b`).
    fn set_elements(&mut self, table: &str, set: &str) -> Result<BTreeSet<String>, ExecError>;
    /// How many rules a chain holds.
    fn rule_count(&mut self, table: &str, chain: &str) -> Result<usize, ExecError>;
}

/// What the proxier needs from conntrack: forget UDP flows to an endpoint that went away.
pub trait Conntrack: Send {
    /// Delete UDP entries that were DNATed from `dst:port` (`dst` None: any local address,
    /// for NodePorts) to `endpoint`. Returns how many went.
    fn delete_udp(&mut self, family: Family, dst: Option<IpAddr>, port: u16, endpoint: IpAddr) -> Result<u32, ExecError>;
    /// Delete UDP entries to `dst:port` (flows that predate the service's endpoints).
    fn delete_udp_to(&mut self, dst: IpAddr, port: u16) -> Result<u32, ExecError>;
}

/// The real `nft`.
pub struct NftCommand {
    pub program: PathBuf,
}

impl NftCommand {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        NftCommand { program: program.into() }
    }

    fn list_raw(&self, args: &[&str]) -> Result<Option<serde_json::Value>, ExecError> {
        match nftables::helper::get_current_ruleset_raw(Some(&self.program), args.iter().copied()) {
            Ok(s) => Ok(Some(serde_json::from_str(&s).map_err(|e| ExecError::Json(e.to_string()))?)),
            Err(nftables::helper::NftablesError::NftFailed { stderr, .. }) if stderr.contains("No such file or directory") => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

impl Nft for NftCommand {
    fn apply(&mut self, program: &str) -> Result<(), ExecError> {
        // Text, not `-j`: the program uses named verdict maps, which the nftables crate's
        // typed schema cannot declare, and `nft -j -f -` given text ignores syntax errors.
        let spawn_err = |source| ExecError::Spawn { program: self.program.display().to_string(), source };
        let mut child = Command::new(&self.program).args(["-f", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().map_err(spawn_err)?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let written = stdin.write_all(program.as_bytes());
        drop(stdin);
        let out = child.wait_with_output().map_err(spawn_err)?;
        if !out.status.success() {
            let mut stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            stderr.truncate(4096);
            return Err(ExecError::Refused { stderr });
        }
        written.map_err(spawn_err)
    }

    fn chains(&mut self, table: &str) -> Result<BTreeSet<String>, ExecError> {
        let set = match nftables::helper::get_current_ruleset_with_args(Some(&self.program), ["list", "chains", "inet"]) {
            Ok(set) => set,
            Err(nftables::helper::NftablesError::NftFailed { stderr, .. }) if stderr.contains("No such file or directory") => return Ok(BTreeSet::new()),
            Err(e) => return Err(e.into()),
        };
        Ok(set
            .objects
            .iter()
            .filter_map(|o| match o {
                NfObject::ListObject(NfListObject::Chain(c)) if c.table == table => Some(c.name.to_string()),
                _ => None,
            })
            .collect())
    }

    fn map_elements(&mut self, table: &str, map: &str) -> Result<BTreeMap<String, String>, ExecError> {
        // Parsed by hand: the crate's `Map` has no `verdict` value type.
        let Some(v) = self.list_raw(&["list", "map", "inet", table, map])? else { return Ok(BTreeMap::new()) };
        let mut out = BTreeMap::new();
        for e in elements(&v, "map")? {
            let (Some(k), Some(value)) = (e.get(0), e.get(1)) else { return Err(ExecError::Json(format!("element {e}"))) };
            let value = match ["goto", "jump"].iter().find_map(|kind| value[kind]["target"].as_str().map(|t| format!("{kind} {t}"))) {
                Some(verdict) => verdict,
                None => element_text(value),
            };
            out.insert(element_text(k), value);
        }
        Ok(out)
    }

    fn set_elements(&mut self, table: &str, set: &str) -> Result<BTreeSet<String>, ExecError> {
        let Some(v) = self.list_raw(&["list", "set", "inet", table, set])? else { return Ok(BTreeSet::new()) };
        Ok(elements(&v, "set")?.iter().map(element_text).collect())
    }

    fn rule_count(&mut self, table: &str, chain: &str) -> Result<usize, ExecError> {
        let Some(v) = self.list_raw(&["list", "chain", "inet", table, chain])? else { return Ok(0) };
        Ok(v["nftables"].as_array().map_or(0, |a| a.iter().filter(|o| o.get("rule").is_some()).count()))
    }
}

/// The `elem` array of the one map or set in a listing.
fn elements<'a>(v: &'a serde_json::Value, kind: &str) -> Result<&'a [serde_json::Value], ExecError> {
    let objs = v["nftables"].as_array().ok_or_else(|| ExecError::Json("no nftables array".into()))?;
    Ok(objs.iter().find_map(|o| o[kind]["elem"].as_array()).map_or(&[], |a| a.as_slice()))
}

/// An element key or value as nft's text syntax writes it: `a . b . c` for concatenations.
fn element_text(v: &serde_json::Value) -> String {
    match v.get("concat").and_then(|c| c.as_array()) {
        Some(parts) => parts.iter().map(scalar).collect::<Vec<_>>().join(" . "),
        None => scalar(v),
    }
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The real `conntrack` (conntrack-tools).
pub struct ConntrackCommand {
    pub program: PathBuf,
}

impl ConntrackCommand {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        ConntrackCommand { program: program.into() }
    }

    fn delete(&self, args: &[String]) -> Result<u32, ExecError> {
        let out = Command::new(&self.program)
            .arg("-D")
            .args(args)
            .output()
            .map_err(|source| ExecError::Spawn { program: self.program.display().to_string(), source })?;
        // "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been deleted." on
        // stderr; exit status 1 when nothing matched.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let n = stderr.split("): ").nth(1).and_then(|s| s.split_whitespace().next()).and_then(|n| n.parse().ok());
        match n {
            Some(n) => Ok(n),
            None if out.status.success() => Ok(0),
            None => Err(ExecError::Conntrack(stderr.trim().to_string())),
        }
    }
}

impl Conntrack for ConntrackCommand {
    fn delete_udp(&mut self, family: Family, dst: Option<IpAddr>, port: u16, endpoint: IpAddr) -> Result<u32, ExecError> {
        let mut args = vec!["-f".to_string(), if family == Family::V4 { "ipv4" } else { "ipv6" }.into(), "-p".into(), "udp".into()];
        if let Some(d) = dst {
            args.extend(["--orig-dst".into(), d.to_string()]);
        }
        args.extend(["--orig-port-dst".into(), port.to_string(), "--reply-src".into(), endpoint.to_string()]);
        self.delete(&args)
    }

    fn delete_udp_to(&mut self, dst: IpAddr, port: u16) -> Result<u32, ExecError> {
        let family = if dst.is_ipv4() { "ipv4" } else { "ipv6" };
        self.delete(&["-f".into(), family.into(), "-p".into(), "udp".into(), "--orig-dst".into(), dst.to_string(), "--orig-port-dst".into(), port.to_string()])
    }
}
