//! kappctl, the read-only CLI users get: it reads a kapp cluster through the apiserver and
//! cannot write to it, by construction (every request is a GET through
//! [`readonly::ReadOnlyClient`]) and by its credentials (the viewer identity).
//!
//! Layers, so most of it is tested without a cluster:
//! - [`creds`]: which identity and apiserver (kubeconfig, `--pki DIR`, or PEM flags);
//! - [`readonly`]: the one HTTP choke point (GET only);
//! - [`gather`]: reads for `status` into a [`view::Raw`];
//! - [`view`]: `Raw` → [`view::ClusterView`] and its health verdict (pure);
//! - [`render`]: views, Tables and objects → text (pure; colour only on a terminal).

pub mod cli;
pub mod creds;
pub mod error;
pub mod gather;
pub mod readonly;
pub mod render;
pub mod resolve;
pub mod view;

use std::io::Write;
use std::time::Duration;

use futures_util::io::AsyncReadExt;
use serde_json::Value;

use cli::{Command, GetArgs, GetOutput, NsArgs, StatusOutput};
use creds::{Credentials, Fallbacks};
use error::{exit, Error};
use readonly::{Get, ReadOnlyClient};
use render::style::Style;

/// Where output goes and how it looks.
pub struct Io<'a> {
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
    pub style: Style,
    /// Standard output is a terminal (`--watch` redraws in place).
    pub terminal: bool,
}

/// Run one command; the exit code, or the error to report (whose code is its own).
pub async fn run(cli: cli::Cli, fallbacks: &Fallbacks, io: &mut Io<'_>) -> Result<i32, Error> {
    let creds = creds::resolve(&cli.conn.creds(), fallbacks)?;
    if let Command::Kubeconfig(a) = &cli.command {
        return kubeconfig(&creds, &a.user, io);
    }
    let client = ReadOnlyClient::connect(&creds.server, &creds.pem).await?;
    match cli.command {
        Command::Status(a) if a.watch => watch_status(&client, &creds, a.output, Duration::from_secs(a.interval), io).await,
        Command::Status(a) => status(&client, &creds, a.output, io).await,
        Command::Get(a) => get(&client, &creds, &a, io).await,
        Command::Describe(a) => describe(&client, &creds, &a.kind, &a.name, &a.ns, io).await,
        Command::Events(a) => events(&client, &creds, &a, io).await,
        Command::Logs(a) => logs(&client, &creds, &a, io).await,
        Command::Kubeconfig(_) => unreachable!("handled above"),
    }
}

/// Gather, build and render the status once: the text and the exit code.
pub async fn status_once(client: &ReadOnlyClient, cluster: &str, output: StatusOutput, style: Style) -> Result<(String, i32), Error> {
    let raw = gather::gather(client, cluster).await?;
    let view = view::build(&raw);
    let code = view.health.verdict.exit_code();
    let text = match output {
        StatusOutput::Text => render::status::render(&view, style),
        StatusOutput::Json => render::get::to_json(&serde_json::to_value(&view).expect("a view serialises")),
        StatusOutput::Yaml => serde_yaml::to_string(&view).expect("a view serialises"),
        StatusOutput::Raw => render::get::to_json(&serde_json::to_value(&raw).expect("raw serialises")),
    };
    Ok((text, code))
}

async fn status(client: &ReadOnlyClient, creds: &Credentials, output: StatusOutput, io: &mut Io<'_>) -> Result<i32, Error> {
    let (text, code) = status_once(client, &creds.cluster, output, io.style).await?;
    io.out.write_all(text.as_bytes())?;
    Ok(code)
}

/// `status --watch`: redraw every `interval` until interrupted; an unreachable apiserver is
/// shown and retried, not fatal.
async fn watch_status(client: &ReadOnlyClient, creds: &Credentials, output: StatusOutput, interval: Duration, io: &mut Io<'_>) -> Result<i32, Error> {
    let mut code;
    loop {
        let text = match status_once(client, &creds.cluster, output, io.style).await {
            Ok((text, c)) => {
                code = c;
                text
            }
            Err(e) => {
                code = e.exit_code();
                format!("{}\n", io.style.paint(render::style::Tone::Bad, &format!("error: {e}")))
            }
        };
        if io.terminal {
            // Home, draw, clear what the previous frame left below.
            io.out.write_all(b"\x1b[H\x1b[2J")?;
            io.out.write_all(text.as_bytes())?;
            let stamp = kapp_api::table::now_rfc3339();
            io.out.write_all(io.style.paint(render::style::Tone::Dim, &format!("\nevery {}s, last {stamp}; Ctrl-C stops\n", interval.as_secs())).as_bytes())?;
        } else {
            io.out.write_all(text.as_bytes())?;
            io.out.write_all(b"\n")?;
        }
        io.out.flush()?;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(code),
        }
    }
}

fn namespace(ns: &NsArgs, creds: &Credentials) -> Option<String> {
    if ns.all_namespaces {
        None
    } else {
        Some(ns.namespace.clone().unwrap_or_else(|| creds.namespace.clone()))
    }
}

/// A Table of every object of a list (following `continue`), rows merged.
async fn list_table(client: &ReadOnlyClient, path: &str, labels: &str, fields: &str) -> Result<Value, Error> {
    let mut merged: Option<Value> = None;
    let mut token = String::new();
    for _ in 0..40 {
        let get = Get::table(path).query("labelSelector", labels).query("fieldSelector", fields).query("limit", "500").query("continue", token.clone());
        let mut page: Value = client.json(get).await?;
        if page["kind"] != "Table" {
            page = render::get::fallback_table(&page, now());
        }
        let next = page["metadata"]["continue"].as_str().unwrap_or("").to_string();
        match &mut merged {
            None => merged = Some(page),
            Some(m) => {
                let rows = page["rows"].as_array().cloned().unwrap_or_default();
                if let Some(r) = m["rows"].as_array_mut() {
                    r.extend(rows);
                }
            }
        }
        if next.is_empty() {
            break;
        }
        token = next;
    }
    Ok(merged.unwrap_or(Value::Null))
}

fn now() -> i64 {
    kapp_api::table::parse_rfc3339(&kapp_api::table::now_rfc3339()).unwrap_or(0)
}

async fn get(client: &ReadOnlyClient, creds: &Credentials, a: &GetArgs, io: &mut Io<'_>) -> Result<i32, Error> {
    let ns = namespace(&a.ns, creds);
    let labels = a.selector.clone().unwrap_or_default();
    let fields = a.field_selector.clone().unwrap_or_default();
    let words: Vec<&str> = a.kind.split(',').filter(|w| !w.is_empty()).collect();
    if words.is_empty() {
        return Err(Error::Usage("name a kind, e.g. `kappctl get pods`".into()));
    }
    if ns.is_none() && !a.names.is_empty() {
        return Err(Error::Usage("a resource cannot be retrieved by name across all namespaces".into()));
    }
    let mut documents: Vec<Value> = Vec::new();
    let mut printed = 0;
    for word in words {
        let kind = resolve::resolve(client, word).await?;
        let ns_for_kind = ns.as_deref().filter(|_| kind.namespaced);
        match a.output {
            Some(GetOutput::Json | GetOutput::Yaml) => {
                if a.names.is_empty() {
                    let items = gather::list_all(client, &kind.collection(ns_for_kind), &labels, &fields).await?;
                    documents.extend(items.into_iter().map(|mut o| {
                        fill_kind(&mut o, &kind);
                        o
                    }));
                } else {
                    for name in &a.names {
                        documents.push(client.json(Get::json(kind.object(ns_for_kind.unwrap_or(""), name))).await?);
                    }
                }
            }
            _ => {
                let table = if a.names.is_empty() {
                    list_table(client, &kind.collection(ns_for_kind), &labels, &fields).await?
                } else {
                    let mut merged: Option<Value> = None;
                    for name in &a.names {
                        let mut t: Value = client.json(Get::table(kind.object(ns_for_kind.unwrap_or(""), name))).await?;
                        if t["kind"] != "Table" {
                            t = render::get::fallback_table(&t, now());
                        }
                        match &mut merged {
                            None => merged = Some(t),
                            Some(m) => {
                                let rows = t["rows"].as_array().cloned().unwrap_or_default();
                                if let Some(r) = m["rows"].as_array_mut() {
                                    r.extend(rows);
                                }
                            }
                        }
                    }
                    merged.unwrap_or(Value::Null)
                };
                let rows = table["rows"].as_array().map_or(0, Vec::len);
                if rows == 0 {
                    continue;
                }
                if printed > 0 && a.output != Some(GetOutput::Name) {
                    io.out.write_all(b"\n")?;
                }
                printed += 1;
                let text = if a.output == Some(GetOutput::Name) {
                    render::get::names(&kind.qualified(), &table)
                } else {
                    let opts = render::get::TableOptions { wide: a.output == Some(GetOutput::Wide), namespace_column: ns.is_none() && kind.namespaced, no_headers: a.no_headers };
                    render::get::render_table(&table, opts, io.style)
                };
                io.out.write_all(text.as_bytes())?;
            }
        }
    }
    match a.output {
        Some(GetOutput::Json | GetOutput::Yaml) => {
            let doc = if documents.len() == 1 && !a.names.is_empty() { documents.remove(0) } else { render::get::as_list(&serde_json::json!({"items": documents})) };
            let text = if a.output == Some(GetOutput::Json) { render::get::to_json(&doc) } else { render::get::to_yaml(&doc) };
            io.out.write_all(text.as_bytes())?;
        }
        _ if printed == 0 => {
            let place = match &ns {
                Some(n) => format!(" in {n} namespace"),
                None => String::new(),
            };
            writeln!(io.err, "No resources found{place}.")?;
        }
        _ => {}
    }
    Ok(exit::OK)
}

/// List items carry no apiVersion/kind; give them back theirs (as kubectl does).
fn fill_kind(o: &mut Value, kind: &resolve::Kind) {
    if o["kind"].is_null() {
        o["kind"] = Value::from(kind.kind.clone());
    }
    if o["apiVersion"].is_null() {
        o["apiVersion"] = Value::from(if kind.group.is_empty() { kind.version.clone() } else { format!("{}/{}", kind.group, kind.version) });
    }
}

async fn describe(client: &ReadOnlyClient, creds: &Credentials, word: &str, name: &str, ns: &NsArgs, io: &mut Io<'_>) -> Result<i32, Error> {
    let kind = resolve::resolve(client, word).await?;
    let ns = if kind.namespaced { ns.namespace.clone().unwrap_or_else(|| creds.namespace.clone()) } else { String::new() };
    let mut obj: Value = client.json(Get::json(kind.object(&ns, name))).await?;
    fill_kind(&mut obj, &kind);
    let mut fields = format!("involvedObject.name={name}");
    if kind.namespaced {
        fields.push_str(&format!(",involvedObject.namespace={ns}"));
    }
    let events_path = if kind.namespaced { format!("/api/v1/namespaces/{ns}/events") } else { "/api/v1/events".to_string() };
    // Events are a courtesy: an object is described even when they cannot be read.
    let events: Vec<Value> = gather::list_all(client, &events_path, "", &fields)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["involvedObject"]["kind"].as_str().is_none_or(|k| k == kind.kind) && e["involvedObject"]["name"] == name)
        .collect();
    io.out.write_all(render::describe::describe(&obj, &events, now(), io.style).as_bytes())?;
    Ok(exit::OK)
}

async fn events(client: &ReadOnlyClient, creds: &Credentials, a: &cli::EventsArgs, io: &mut Io<'_>) -> Result<i32, Error> {
    let ns = namespace(&a.ns, creds);
    let path = match &ns {
        Some(n) => format!("/api/v1/namespaces/{n}/events"),
        None => "/api/v1/events".into(),
    };
    let mut fields = Vec::new();
    let mut for_kind = None;
    if let Some(f) = &a.for_object {
        let (k, name) = f.split_once('/').ok_or_else(|| Error::Usage(format!("--for {f:?}: expected KIND/NAME")))?;
        for_kind = Some(resolve::from_table(k).map_or_else(|| k.to_string(), |r| r.kind));
        fields.push(format!("involvedObject.name={name}"));
    }
    let types: Vec<String> = a.types.as_deref().unwrap_or("").split(',').filter(|t| !t.is_empty()).map(|t| t.trim().to_lowercase()).collect();
    let events: Vec<Value> = gather::list_all(client, &path, "", &fields.join(","))
        .await?
        .into_iter()
        .filter(|e| for_kind.as_deref().is_none_or(|k| e["involvedObject"]["kind"] == k))
        .filter(|e| types.is_empty() || types.contains(&e["type"].as_str().unwrap_or("Normal").to_lowercase()))
        .collect();
    match a.output {
        Some(GetOutput::Json) => io.out.write_all(render::get::to_json(&render::get::as_list(&serde_json::json!({"items": events}))).as_bytes())?,
        Some(GetOutput::Yaml) => io.out.write_all(render::get::to_yaml(&render::get::as_list(&serde_json::json!({"items": events}))).as_bytes())?,
        _ if events.is_empty() => {
            let place = ns.map(|n| format!(" in {n} namespace")).unwrap_or_default();
            writeln!(io.err, "No events found{place}.")?;
        }
        _ => io.out.write_all(render::describe::events_table(&events, now(), io.style, ns.is_none(), "").as_bytes())?,
    }
    Ok(exit::OK)
}

/// The `pods/log` request for these arguments.
pub fn log_request(namespace: &str, a: &cli::LogsArgs) -> Get {
    let flag = |b: bool| if b { "true" } else { "" };
    Get::text(format!("/api/v1/namespaces/{namespace}/pods/{}/log", a.pod))
        .query("container", a.container.clone().unwrap_or_default())
        .query("follow", flag(a.follow))
        .query("previous", flag(a.previous))
        .query("tailLines", a.tail.map(|t| t.to_string()).unwrap_or_default())
        .query("timestamps", flag(a.timestamps))
}

async fn logs(client: &ReadOnlyClient, creds: &Credentials, a: &cli::LogsArgs, io: &mut Io<'_>) -> Result<i32, Error> {
    let ns = a.namespace.clone().unwrap_or_else(|| creds.namespace.clone());
    let mut body = client.stream(log_request(&ns, a)).await?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            n = body.read(&mut buf) => n.map_err(|e| Error::Unreachable { server: client.server().to_string(), detail: format!("reading the log: {}", error::chain(&e)) })?,
            _ = tokio::signal::ctrl_c() => 0,
        };
        if n == 0 {
            break;
        }
        io.out.write_all(&buf[..n])?;
        io.out.flush()?;
    }
    Ok(exit::OK)
}

/// Print a kubeconfig for the identity kappctl uses, refusing one that may write.
fn kubeconfig(creds: &Credentials, user: &str, io: &mut Io<'_>) -> Result<i32, Error> {
    let id = creds::identity(&creds.pem.cert).ok_or_else(|| Error::Credentials(format!("the certificate from {} cannot be read", creds.source)))?;
    if id.organizations.iter().any(|o| o != kapp_api::groups::VIEWERS) || id.organizations.is_empty() {
        return Err(Error::Credentials(format!(
            "{} (from {}) is in {:?}, not only {}: kappctl hands out read-only kubeconfigs only; use the viewer identity (--pki DIR, or viewer.pem/viewer.key)",
            id.common_name,
            creds.source,
            id.organizations,
            kapp_api::groups::VIEWERS
        )));
    }
    io.out.write_all(kapp_runtime::kubeconfig(&creds.cluster, &creds.server, user, &creds.pem).as_bytes())?;
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_requests_carry_only_the_options_given() {
        let mut a = cli::LogsArgs { pod: "web-1".into(), namespace: None, container: None, follow: false, previous: false, tail: None, timestamps: false };
        assert_eq!(log_request("shop", &a).uri(), "/api/v1/namespaces/shop/pods/web-1/log");
        a.container = Some("app".into());
        a.follow = true;
        a.previous = true;
        a.tail = Some(20);
        let req = log_request("shop", &a).to_request().unwrap();
        assert_eq!(req.uri(), "/api/v1/namespaces/shop/pods/web-1/log?container=app&follow=true&previous=true&tailLines=20");
        readonly::ensure_read_only(&req).unwrap();
    }
}
