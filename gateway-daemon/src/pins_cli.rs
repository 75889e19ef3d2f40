//! `mcp-gateway pins ...`: review and approve tool manifests on the running daemon,
//! through its admin socket.

use std::path::Path;

use anyhow::Context;
use clap::Subcommand;
use gateway_daemon::admin;
use gateway_daemon::config::Config;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum PinsCmd {
    /// Servers seen, what is pinned, and what waits for review.
    List,
    /// What waits on SERVER: the approved definition beside the one now listed.
    Diff { server: String },
    /// Approve what waits on SERVER (only NAME when given); it is listed and callable again.
    Approve {
        server: String,
        name: Option<String>,
    },
    /// Reject what waits on SERVER (only NAME): it stays hidden and refused.
    Reject {
        server: String,
        name: Option<String>,
    },
    /// Forget everything pinned for SERVER: its next listing is a first sight.
    Forget { server: String },
}

pub fn run(cmd: PinsCmd, config: &Path) -> anyhow::Result<()> {
    let cfg = Config::load(config)?.config;
    let call = |op: &str, args: Value| {
        admin::call(&cfg.admin.socket, op, args).with_context(|| format!("pins: {op}"))
    };
    match cmd {
        PinsCmd::List => print_list(&call("pins.list", json!({}))?),
        PinsCmd::Diff { server } => print_diff(&call("pins.diff", json!({ "server": server }))?),
        PinsCmd::Approve { server, name } => {
            let r = call("pins.approve", json!({ "server": server, "name": name }))?;
            outln!("approved on {server}: {}", names(&r));
        }
        PinsCmd::Reject { server, name } => {
            let r = call("pins.reject", json!({ "server": server, "name": name }))?;
            outln!("rejected on {server}: {}", names(&r));
        }
        PinsCmd::Forget { server } => {
            let r = call("pins.forget", json!({ "server": server }))?;
            outln!("forgot {} definitions of {server}", r["forgotten"]);
        }
    }
    Ok(())
}

fn names(r: &Value) -> String {
    r["keys"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn print_list(r: &Value) {
    let servers = r["servers"].as_array().cloned().unwrap_or_default();
    if servers.is_empty() {
        outln!("no server has been seen yet");
        return;
    }
    for s in servers {
        let pending = s["pending"].as_array().cloned().unwrap_or_default();
        outln!(
            "{}  mode={}  approved={}  missing={}  waiting={}",
            s["server"].as_str().unwrap_or("?"),
            s["mode"].as_str().unwrap_or("?"),
            s["approved"],
            s["missing"],
            pending.len()
        );
        for p in pending {
            outln!(
                "    {} {} ({}{}{})",
                p["kind"].as_str().unwrap_or("?"),
                p["name"].as_str().unwrap_or("?"),
                p["change"].as_str().unwrap_or("?"),
                match p["findings"].as_u64() {
                    Some(0) | None => String::new(),
                    Some(n) => format!(", {n} poisoning findings"),
                },
                if p["rejected"] == true {
                    ", rejected"
                } else {
                    ""
                }
            );
        }
    }
}

const COLUMN: usize = 58;

/// Splits a line into pieces no wider than a column, so long descriptions are shown whole.
fn wrap(line: &str) -> Vec<String> {
    let chars: Vec<char> = line.chars().collect();
    if chars.is_empty() {
        return vec![String::new()];
    }
    chars.chunks(COLUMN).map(|c| c.iter().collect()).collect()
}

fn pretty(v: &Value) -> String {
    if v.is_null() {
        "(nothing approved)".into()
    } else {
        serde_json::to_string_pretty(v).expect("JSON serialises")
    }
}

fn print_diff(r: &Value) {
    let server = r["server"].as_str().unwrap_or("?");
    let pending = r["pending"].as_array().cloned().unwrap_or_default();
    if pending.is_empty() {
        outln!("nothing waits for review on {server}");
        return;
    }
    for p in pending {
        outln!(
            "== {} {} on {server}: {}{}",
            p["kind"].as_str().unwrap_or("?"),
            p["name"].as_str().unwrap_or("?"),
            p["change"].as_str().unwrap_or("?"),
            if p["rejected"] == true {
                " (rejected)"
            } else {
                ""
            }
        );
        for f in p["findings"].as_array().into_iter().flatten() {
            outln!(
                "   ! {} at {}: {}",
                f["check"].as_str().unwrap_or("?"),
                f["field"].as_str().unwrap_or("?"),
                f["detail"].as_str().unwrap_or("?")
            );
        }
        let (old, new) = (pretty(&p["approved"]), pretty(&p["listed"]));
        outln!("   {:<COLUMN$} | listed now", "approved");
        outln!("   {:-<COLUMN$}-+-{:-<COLUMN$}", "", "");
        let diff = similar::TextDiff::from_lines(&old, &new);
        for op in diff.ops() {
            let (mut left, mut right) = (Vec::new(), Vec::new());
            for change in diff.iter_changes(op) {
                let text = change.value().trim_end_matches('\n');
                match change.tag() {
                    similar::ChangeTag::Equal => {
                        left.push((' ', text));
                        right.push((' ', text));
                    }
                    similar::ChangeTag::Delete => left.push(('-', text)),
                    similar::ChangeTag::Insert => right.push(('+', text)),
                }
            }
            let rows = left.len().max(right.len());
            for i in 0..rows {
                let l = left.get(i).copied().unwrap_or((' ', ""));
                let r = right.get(i).copied().unwrap_or((' ', ""));
                let (lw, rw) = (wrap(l.1), wrap(r.1));
                for j in 0..lw.len().max(rw.len()) {
                    let lm = if j == 0 { l.0 } else { ' ' };
                    let rm = if j == 0 { r.0 } else { ' ' };
                    let marker = if l.0 != ' ' || r.0 != ' ' { '|' } else { ' ' };
                    outln!(
                        " {lm} {:<COLUMN$} {marker} {rm} {}",
                        lw.get(j).map(String::as_str).unwrap_or(""),
                        rw.get(j).map(String::as_str).unwrap_or("")
                    );
                }
            }
        }
        outln!();
    }
}
