//! The deliberately small MCP server of `tests/fixtures/fake_mcp_server.py`: correct
//! JSON-RPC, misbehaviour on request, and a log of every request it received.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::PYTHON;

const FAKE_SERVER: &str = include_str!("../fixtures/fake_mcp_server.py");

pub struct FakeServer(Child);

impl Drop for FakeServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts it on 127.0.0.1:`port`, logging to `log`, and waits until it accepts connections.
pub fn start(port: u16, log: &Path) -> FakeServer {
    start_on("127.0.0.1", port, log)
}

/// As `start`, listening on `host` (`0.0.0.0`: one server behind every loopback address).
pub fn start_on(host: &str, port: u16, log: &Path) -> FakeServer {
    let child = Command::new(PYTHON)
        .args(["-c", FAKE_SERVER, &port.to_string()])
        .arg(log)
        .arg(host)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    crate::wait_listening(port, "fake MCP server");
    FakeServer(child)
}

/// Every request the server received, in order.
pub fn received(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
