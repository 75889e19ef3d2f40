//! `mcp-gateway approvals ...`: see the calls held for a person, and answer them, through
//! the running daemon's admin socket.

use std::path::Path;

use anyhow::Context;
use clap::Subcommand;
use gateway_daemon::admin;
use gateway_daemon::config::Config;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum ApprovalsCmd {
    /// Calls waiting for a decision, oldest first.
    List {
        /// Print the daemon's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Let call ID through (only that call, unless widened).
    Approve {
        id: u64,
        #[arg(long)]
        reason: Option<String>,
        /// Also approve this tool for the rest of the agent's MCP session, any arguments.
        #[arg(long, conflicts_with = "for_")]
        for_session: bool,
        /// Also approve this tool for this principal and process image, any arguments,
        /// for a while (e.g. 10m, 1h).
        #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
        for_: Option<std::time::Duration>,
    },
    /// Refuse call ID; the agent gets an error with the reason.
    Deny {
        id: u64,
        #[arg(long)]
        reason: Option<String>,
    },
}

pub fn run(cmd: ApprovalsCmd, config: &Path) -> anyhow::Result<()> {
    let cfg = Config::load(config)?.config;
    let call = |op: &str, args: Value| {
        admin::call(&cfg.admin.socket, op, args).with_context(|| format!("approvals: {op}"))
    };
    match cmd {
        ApprovalsCmd::List { json } => {
            let r = call("approvals.list", json!({}))?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print_list(&r);
            }
        }
        ApprovalsCmd::Approve {
            id,
            reason,
            for_session,
            for_,
        } => {
            let r = call(
                "approvals.approve",
                json!({"id": id, "reason": reason, "for_session": for_session,
                       "for_s": for_.map(|d| d.as_secs())}),
            )?;
            outln!(
                "approved call {id} ({}): {}",
                r["scope"].as_str().unwrap_or("call"),
                r["tool"].as_str().unwrap_or("")
            );
        }
        ApprovalsCmd::Deny { id, reason } => {
            let r = call("approvals.deny", json!({"id": id, "reason": reason}))?;
            outln!("denied call {id}: {}", r["tool"].as_str().unwrap_or(""));
        }
    }
    Ok(())
}

fn print_list(r: &Value) {
    let held = r["held"].as_array().cloned().unwrap_or_default();
    if held.is_empty() {
        outln!("no call waits for approval");
        return;
    }
    for h in held {
        let c = &h["call"];
        outln!(
            "#{}  {} {} on {}  by {} (uid {}, pid {}, {})  rule {}  expires in {} s",
            h["id"],
            c["method"].as_str().unwrap_or("?"),
            c["tool"].as_str().unwrap_or("?"),
            c["server"].as_str().unwrap_or("?"),
            c["principal"].as_str().unwrap_or("?"),
            c["uid"],
            c["tgid"],
            c["exe"].as_str().unwrap_or("?"),
            c["rule"].as_str().unwrap_or("?"),
            h["expires_in_s"],
        );
        outln!("    arguments: {}", c["arguments"]);
    }
}
