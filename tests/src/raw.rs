//! Exact requests from an agent (`tests/fixtures/raw_agent.py`, run in the agent cgroup),
//! and the JSON-lines logs the test servers keep of what they received.

use std::path::Path;

use base64::Engine as _;
use serde_json::Value;

use crate::peers::{run_json, venv_python};
use crate::Gateway;

const RAW: &str = include_str!("../fixtures/raw_agent.py");

/// POSTs `body` with `headers` to 127.0.0.1:`port`/mcp from the test's agent (or as
/// `user`): the HTTP status and the JSON answer (null when it is not JSON).
pub fn post(
    gw: &Gateway,
    user: Option<&str>,
    port: u16,
    headers: &Value,
    body: &Value,
) -> (u16, Value) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let args = [
        "-c".to_string(),
        RAW.to_string(),
        "127.0.0.1".into(),
        port.to_string(),
        b64.encode(body.to_string()),
        headers.to_string(),
    ];
    let python = venv_python();
    let cmd = match user {
        None => gw.agent(python.to_str().unwrap(), &args),
        Some(u) => gw.agent_as(u, python.to_str().unwrap(), &args),
    };
    let out = run_json(cmd);
    let bytes = b64.decode(out["body_b64"].as_str().unwrap()).unwrap();
    (out["status"].as_u64().unwrap() as u16, answer_of(&bytes))
}

/// The JSON answer in a body: the body itself, or the last message of an event stream.
fn answer_of(bytes: &[u8]) -> Value {
    if let Ok(v) = serde_json::from_slice(bytes) {
        return v;
    }
    String::from_utf8_lossy(bytes)
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .next_back()
        .unwrap_or(Value::Null)
}

/// The JSON lines of `log` (a test server's record of what it received), in order.
pub fn lines(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
