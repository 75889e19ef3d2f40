//! `mcp-gateway status`: the running daemon's state, asked over its admin socket.

use std::path::Path;

use anyhow::Context;
use gateway_daemon::admin;
use gateway_daemon::config::Config;
use gateway_daemon::status;
use serde_json::{json, Value};

pub fn run(config: &Path, json: bool) -> anyhow::Result<()> {
    let report = fetch(config)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", status::render_text(&report));
    }
    Ok(())
}

/// The daemon's answer to the `status` op, on the admin socket named in `config`.
pub fn fetch(config: &Path) -> anyhow::Result<Value> {
    let cfg = Config::load(config)?.config;
    fetch_from(&cfg.admin.socket)
}

pub fn fetch_from(socket: &Path) -> anyhow::Result<Value> {
    admin::call(socket, "status", json!({})).context("status")
}
