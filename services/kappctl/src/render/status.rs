//! `kappctl status` as text: one screen, sections in the order a person asks "is my cluster
//! healthy, and which commit is live?".

use kapp_api::kapp::CommitInfo;
use kapp_api::table::{human_age, parse_rfc3339};

use super::style::{clip, table, Cell, Style, Tone};
use crate::view::{sync_error_line, ClusterView, Section, Verdict};

/// Workloads and jobs listed one by one up to this many; beyond, only the unhealthy ones.
pub const LIST_ALL_UP_TO: usize = 20;
/// Longest message shown in a table cell.
const MESSAGE_WIDTH: usize = 100;

/// `t` (RFC 3339) as an age relative to the observation: `5m`, or `-`.
fn age(view: &ClusterView, t: &str) -> String {
    match (parse_rfc3339(&view.observed_at), parse_rfc3339(t)) {
        (Some(now), Some(t)) => human_age(now - t),
        _ => "-".into(),
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or("-".into(), |x| x.to_string())
}

fn heading<T>(out: &mut String, style: Style, title: &str, summary: &str, sec: &Section<T>) -> bool {
    out.push('\n');
    let mut line = style.paint(Tone::Bold, title);
    if !summary.is_empty() {
        line.push_str(&format!(" ({summary})"));
    }
    out.push_str(&line);
    out.push('\n');
    if let Some(e) = &sec.error {
        out.push_str(&format!("  {}\n", style.paint(Tone::Bad, &format!("could not be read: {e}"))));
        return false;
    }
    if let Some(n) = &sec.note {
        out.push_str(&format!("  {}\n", style.paint(Tone::Dim, n)));
        return false;
    }
    true
}

/// The whole status screen.
pub fn render(v: &ClusterView, style: Style) -> String {
    let mut out = String::new();
    let verdict_tone = match v.health.verdict {
        Verdict::Healthy => Tone::Good,
        Verdict::Degraded => Tone::Bad,
    };
    let version = match (v.cluster.kapp_version.as_str(), v.cluster.kubernetes_version.as_str()) {
        ("", "") => "-".to_string(),
        ("", k) => format!("Kubernetes API {k}"),
        (kapp, "") => format!("kapp {kapp}"),
        (kapp, k) => format!("kapp {kapp} (Kubernetes API {k})"),
    };
    let facts = [("Cluster", format!("{}  {}", style.paint(Tone::Bold, &v.cluster.name), style.paint(Tone::Dim, &v.cluster.server))), ("Version", version), ("Health", style.paint(verdict_tone, &format!("{:?}", v.health.verdict)))];
    for (k, val) in facts {
        out.push_str(&format!("{:<9}{val}\n", format!("{k}:")));
    }
    for r in &v.health.reasons {
        out.push_str(&format!("{:<9}- {}\n", "", style.paint(Tone::Bad, r)));
    }

    // Heads.
    let healthy = v.heads.items.iter().filter(|h| h.healthy).count();
    if heading(&mut out, style, "HEADS", &format!("{healthy}/{} healthy", v.heads.items.len()), &v.heads) {
        let rows: Vec<Vec<Cell>> = v
            .heads
            .items
            .iter()
            .map(|h| {
                let role_tone = if h.role == "Leader" { Tone::Bold } else { Tone::Plain };
                vec![
                    opt(h.id).into(),
                    h.endpoint.as_str().into(),
                    Cell::new(if h.role.is_empty() { "-" } else { h.role.as_str() }, role_tone),
                    opt(h.term).into(),
                    opt(h.commit_index).into(),
                    opt(h.lag).into(),
                    if h.healthy { Cell::new("healthy", Tone::Good) } else { Cell::new(clip(&h.problem, MESSAGE_WIDTH), Tone::Bad) },
                ]
            })
            .collect();
        if rows.is_empty() {
            out.push_str("  no store members reported\n");
        } else {
            out.push_str(&table(style, "  ", &["ID", "ENDPOINT", "ROLE", "TERM", "COMMIT", "LAG", "HEALTH"], &rows));
        }
    }

    // Nodes.
    let ready = v.nodes.items.iter().filter(|n| n.healthy).count();
    if heading(&mut out, style, "NODES", &format!("{ready}/{} ready", v.nodes.items.len()), &v.nodes) {
        if v.nodes.items.is_empty() {
            out.push_str("  no node has joined yet\n");
        } else {
            let rows: Vec<Vec<Cell>> = v
                .nodes
                .items
                .iter()
                .map(|n| {
                    let status = if n.schedulable { n.status.clone() } else { format!("{},SchedulingDisabled", n.status) };
                    vec![
                        n.name.as_str().into(),
                        Cell::new(status, if n.healthy { Tone::Good } else { Tone::Bad }),
                        (if n.roles.is_empty() { "<none>".to_string() } else { n.roles.join(",") }).into(),
                        (if n.version.is_empty() { "-" } else { n.version.as_str() }).into(),
                        (if n.os_image.is_empty() { "-" } else { n.os_image.as_str() }).into(),
                        n.pods.to_string().into(),
                        n.cpu.clone().unwrap_or_else(|| "-".into()).into(),
                        n.memory.clone().unwrap_or_else(|| "-".into()).into(),
                    ]
                })
                .collect();
            out.push_str(&table(style, "  ", &["NAME", "STATUS", "ROLES", "VERSION", "OS IMAGE", "PODS", "CPU", "MEMORY"], &rows));
            for n in v.nodes.items.iter().filter(|n| !n.message.is_empty()) {
                out.push_str(&format!("  {}: {}\n", n.name, style.paint(Tone::Bad, &clip(&n.message, MESSAGE_WIDTH))));
            }
        }
    }

    // GitOps.
    let synced = v.gitops.items.iter().filter(|g| g.healthy).count();
    if heading(&mut out, style, "GITOPS", &format!("{synced}/{} in sync", v.gitops.items.len()), &v.gitops) {
        if v.gitops.items.is_empty() {
            out.push_str("  no GitSync: gitops is not following a repository\n");
        }
        for g in &v.gitops.items {
            let tone = match g.state.as_str() {
                "Synced" => Tone::Good,
                "Failed" => Tone::Bad,
                _ => Tone::Warn,
            };
            let mut source = g.url.clone();
            if !g.reference.is_empty() {
                source.push_str(&format!(" ({})", g.reference));
            }
            if !g.path.is_empty() {
                source.push_str(&format!(" path {}", g.path));
            }
            out.push_str(&format!("  {}   {}   {}\n", style.paint(Tone::Bold, &g.name), style.paint(tone, if g.state.is_empty() { "Pending" } else { g.state.as_str() }), source));
            let commit_row = |label: &str, c: &Option<CommitInfo>| -> Vec<Cell> {
                match c {
                    None => vec![label.into(), "-".into(), "".into(), "".into(), "".into()],
                    Some(c) => vec![
                        label.into(),
                        Cell::new(c.sha.chars().take(8).collect::<String>(), Tone::Bold),
                        clip(&c.subject, 60).into(),
                        c.author.as_str().into(),
                        (if c.time.is_empty() { String::new() } else { format!("{} ago", age(v, &c.time)) }).into(),
                    ],
                }
            };
            let mut rows = vec![commit_row("applied", &g.applied)];
            if g.fetched.as_ref().map(|c| &c.sha) != g.applied.as_ref().map(|c| &c.sha) {
                rows.push(commit_row("fetched", &g.fetched));
            }
            out.push_str(&table(style, "    ", &["", "COMMIT", "SUBJECT", "AUTHOR", "AGE"], &rows));
            if !g.message.is_empty() && !g.healthy {
                out.push_str(&format!("    message: {}\n", style.paint(Tone::Bad, &clip(&g.message, 200))));
            }
            if !g.errors.is_empty() {
                out.push_str(&format!("    {}\n", style.paint(Tone::Bad, &format!("errors ({}):", g.errors.len()))));
                for e in g.errors.iter().take(10) {
                    out.push_str(&format!("      {}\n", clip(&sync_error_line(e), 200)));
                }
                if g.errors.len() > 10 {
                    out.push_str(&format!("      ... and {} more (kappctl describe gitsync {})\n", g.errors.len() - 10, g.name));
                }
            }
        }
    }

    // Workloads.
    let ready = v.workloads.items.iter().filter(|w| w.healthy).count();
    if heading(&mut out, style, "WORKLOADS", &format!("{ready}/{} ready", v.workloads.items.len()), &v.workloads) {
        let all = v.workloads.items.len() <= LIST_ALL_UP_TO;
        let shown: Vec<Vec<Cell>> = v
            .workloads
            .items
            .iter()
            .filter(|w| all || !w.healthy)
            .map(|w| vec![w.kind.as_str().into(), w.namespace.as_str().into(), w.name.as_str().into(), Cell::new(format!("{}/{}", w.ready, w.desired), if w.healthy { Tone::Good } else { Tone::Warn })])
            .collect();
        if v.workloads.items.is_empty() {
            out.push_str("  no Deployments, DaemonSets or StatefulSets\n");
        } else if !shown.is_empty() {
            out.push_str(&table(style, "  ", &["KIND", "NAMESPACE", "NAME", "READY"], &shown));
        }
        if !all {
            out.push_str(&format!("  {} more, all ready (kappctl get deployments,daemonsets,statefulsets -A)\n", ready));
        }
    }

    // Jobs.
    if !v.jobs.items.is_empty() || v.jobs.error.is_some() {
        let done = v.jobs.items.iter().filter(|j| j.state == "Complete").count();
        if heading(&mut out, style, "JOBS", &format!("{done}/{} complete", v.jobs.items.len()), &v.jobs) {
            let all = v.jobs.items.len() <= LIST_ALL_UP_TO;
            let rows: Vec<Vec<Cell>> = v
                .jobs
                .items
                .iter()
                .filter(|j| all || j.state != "Complete")
                .map(|j| {
                    let tone = match j.state.as_str() {
                        "Complete" => Tone::Good,
                        "Failed" => Tone::Bad,
                        _ => Tone::Plain,
                    };
                    vec![j.namespace.as_str().into(), j.name.as_str().into(), format!("{}/{}", j.succeeded, j.completions).into(), Cell::new(j.state.as_str(), tone), clip(&j.message, MESSAGE_WIDTH).into()]
                })
                .collect();
            if !rows.is_empty() {
                out.push_str(&table(style, "  ", &["NAMESPACE", "NAME", "COMPLETIONS", "STATE", "MESSAGE"], &rows));
            }
        }
    }

    // Pods.
    let summary = format!("{} total, {} not running/ready", v.pods.total, v.pods.items.len());
    if heading(&mut out, style, "PODS", &summary, &v.pods) && !v.pods.items.is_empty() {
        let rows: Vec<Vec<Cell>> = v
            .pods
            .items
            .iter()
            .map(|p| {
                vec![
                    p.namespace.as_str().into(),
                    p.name.as_str().into(),
                    (if p.node.is_empty() { "-" } else { p.node.as_str() }).into(),
                    Cell::new(p.reason.as_str(), Tone::Bad),
                    p.restarts.to_string().into(),
                    clip(&p.message, MESSAGE_WIDTH).into(),
                ]
            })
            .collect();
        out.push_str(&table(style, "  ", &["NAMESPACE", "NAME", "NODE", "REASON", "RESTARTS", "MESSAGE"], &rows));
    }

    // Warning events.
    let summary = if v.warnings.total > v.warnings.items.len() { format!("last hour: {}, newest {} shown", v.warnings.total, v.warnings.items.len()) } else { format!("last hour: {}", v.warnings.total) };
    if heading(&mut out, style, "WARNINGS", &summary, &v.warnings) && !v.warnings.items.is_empty() {
        let rows: Vec<Vec<Cell>> = v
            .warnings
            .items
            .iter()
            .map(|e| {
                vec![
                    age(v, &e.last_seen).into(),
                    e.namespace.as_str().into(),
                    e.object.as_str().into(),
                    Cell::new(e.reason.as_str(), Tone::Warn),
                    (if e.count > 1 { format!("{} (x{})", clip(&e.message, MESSAGE_WIDTH), e.count) } else { clip(&e.message, MESSAGE_WIDTH) }).into(),
                ]
            })
            .collect();
        out.push_str(&table(style, "  ", &["AGE", "NAMESPACE", "OBJECT", "REASON", "MESSAGE"], &rows));
    }
    out
}
