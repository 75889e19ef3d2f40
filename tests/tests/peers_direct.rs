//! The MCP test peers talking straight to each other, without the gateway: proof that the
//! servers start, that the clients work and print what the gateway tests will compare, and
//! that those results are deterministic. Needs `cargo xtask peers`; no root, no daemon.
//!
//! `cargo test -p gateway-tests --test peers_direct`

use gateway_tests::free_port;
use gateway_tests::peers::{
    everything, python_client_cmd, rmcp_client_cmd, rmcp_server, run_json, without_client, Profile,
    Transport, ECHO_TEXT, PROGRESS_STEPS,
};
use serde_json::{json, Value};

const EVERYTHING_RESOURCE: &str = "demo://resource/static/document/architecture.md";

/// What every client run must show, whatever the server.
fn assert_common(v: &Value, client: &str) {
    assert_eq!(v["client"], client, "{v:#}");
    assert_eq!(v["echo"]["sent"], ECHO_TEXT, "{v:#}");
    let p = &v["progress"];
    assert_eq!(p["steps"], PROGRESS_STEPS, "{v:#}");
    assert_eq!(
        p["count"], PROGRESS_STEPS,
        "one progress notification per step: {v:#}"
    );
    let values: Vec<f64> = p["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let expected: Vec<f64> = (1..=PROGRESS_STEPS).map(|i| i as f64).collect();
    assert_eq!(values, expected, "{v:#}");
    assert_eq!(p["final"].as_f64(), Some(PROGRESS_STEPS as f64), "{v:#}");
    assert_eq!(p["total"].as_f64(), Some(PROGRESS_STEPS as f64), "{v:#}");
}

fn assert_everything(v: &Value, client: &str) {
    assert_common(v, client);
    assert_eq!(v["profile"], "everything", "{v:#}");
    assert_eq!(v["server_name"], "mcp-servers/everything", "{v:#}");
    assert_eq!(v["protocol_version"], "2025-11-25", "{v:#}");
    let tools = v["tools"].as_array().unwrap();
    for t in ["echo", "get-sum", "trigger-long-running-operation"] {
        assert!(tools.contains(&json!(t)), "no tool {t}: {v:#}");
    }
    assert_eq!(v["echo"]["text"], format!("Echo: {ECHO_TEXT}"), "{v:#}");
    assert_eq!(
        v["progress"]["result"][0]["text"],
        format!("Long running operation completed. Duration: 1 seconds, Steps: {PROGRESS_STEPS}."),
        "{v:#}"
    );
    let contents = &v["resource"]["contents"];
    assert_eq!(contents.as_array().unwrap().len(), 1, "{v:#}");
    assert_eq!(contents[0]["uri"], EVERYTHING_RESOURCE, "{v:#}");
    assert_eq!(contents[0]["mime_type"], "text/markdown", "{v:#}");
    let text = contents[0]["text"].as_str().unwrap();
    assert!(
        text.starts_with("# Everything Server"),
        "resource text: {text:?}"
    );
    let prompts = v["prompts"].as_array().unwrap();
    for p in ["simple-prompt", "args-prompt"] {
        assert!(prompts.contains(&json!(p)), "no prompt {p}: {v:#}");
    }
    assert_eq!(
        v["prompt"]["messages"],
        json!([{"role": "user", "content": {"type": "text", "text": "What's weather in Lyon, Rhone?"}}]),
        "{v:#}"
    );
}

fn assert_rmcp(v: &Value, client: &str) {
    assert_common(v, client);
    assert_eq!(v["profile"], "rmcp", "{v:#}");
    assert_eq!(v["server_name"], "rmcp-test-server", "{v:#}");
    assert_eq!(v["tools"], json!(["add", "echo", "slow_count"]), "{v:#}");
    assert_eq!(v["echo"]["text"], ECHO_TEXT, "{v:#}");
    assert_eq!(
        v["echo"]["content"],
        json!([{"type": "text", "text": ECHO_TEXT}]),
        "{v:#}"
    );
    assert_eq!(
        v["progress"]["result"],
        json!([{"type": "text", "text": "done"}]),
        "{v:#}"
    );
    assert_eq!(
        v["resource"]["contents"],
        json!([{"uri": "test://hello", "mime_type": "text/plain", "text": "hello world", "blob": null}]),
        "{v:#}"
    );
    assert_eq!(v["prompts"], json!(["greet"]), "{v:#}");
    assert_eq!(
        v["prompt"]["messages"],
        json!([{"role": "user", "content": {"type": "text", "text": "Hello, Ada! Please greet me back."}}]),
        "{v:#}"
    );
}

#[test]
fn python_client_everything_streamable() {
    let server = everything(Transport::Streamable, free_port());
    let first = run_json(python_client_cmd(&server.url, Transport::Streamable));
    assert_everything(&first, "python-mcp");
    // Deterministic: a second session prints exactly the same.
    let second = run_json(python_client_cmd(&server.url, Transport::Streamable));
    assert_eq!(first, second);
}

#[test]
fn python_client_everything_sse() {
    let sse = everything(Transport::Sse, free_port());
    assert!(sse.url.ends_with("/sse"), "{}", sse.url);
    let v = run_json(python_client_cmd(&sse.url, Transport::Sse));
    assert_everything(&v, "python-mcp");
    // The same results as over Streamable HTTP.
    let streamable = everything(Transport::Streamable, free_port());
    let w = run_json(python_client_cmd(&streamable.url, Transport::Streamable));
    assert_eq!(v, w);
}

#[test]
fn rmcp_client_rmcp_server() {
    let server = rmcp_server(free_port());
    let v = run_json(rmcp_client_cmd(&server.url, Profile::Rmcp));
    assert_rmcp(&v, "rmcp");
    // rmcp offers 2026-07-28 in `initialize`; the server answers with the newest version that
    // still has the handshake.
    assert_eq!(v["protocol_version"], "2025-11-25", "{v:#}");
    let again = run_json(rmcp_client_cmd(&server.url, Profile::Auto));
    assert_eq!(v, again);
}

#[test]
fn rmcp_client_rmcp_server_discover() {
    // The stateless 2026-07-28 protocol: `server/discover`, per-request metadata, no session.
    let server = rmcp_server(free_port());
    let mut cmd = rmcp_client_cmd(&server.url, Profile::Rmcp);
    cmd.args(["--lifecycle", "discover"]);
    let v = run_json(cmd);
    assert_rmcp(&v, "rmcp");
    assert_eq!(v["protocol_version"], "2026-07-28", "{v:#}");
}

#[test]
fn rmcp_client_everything_streamable() {
    let server = everything(Transport::Streamable, free_port());
    let v = run_json(rmcp_client_cmd(&server.url, Profile::Auto));
    assert_everything(&v, "rmcp");
    // Two SDKs, one server: the same results.
    let py = run_json(python_client_cmd(&server.url, Transport::Streamable));
    assert_eq!(without_client(&v), without_client(&py));
}

#[test]
fn python_client_rmcp_server() {
    let server = rmcp_server(free_port());
    let v = run_json(python_client_cmd(&server.url, Transport::Streamable));
    assert_rmcp(&v, "python-mcp");
    assert_eq!(v["protocol_version"], "2025-11-25", "{v:#}");
    let rmcp = run_json(rmcp_client_cmd(&server.url, Profile::Rmcp));
    assert_eq!(without_client(&v), without_client(&rmcp));
}

#[test]
fn a_stopped_server_fails_the_client_clearly() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/mcp");
    for (name, mut cmd) in [
        ("python", python_client_cmd(&url, Transport::Streamable)),
        ("rmcp", rmcp_client_cmd(&url, Profile::Auto)),
    ] {
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(out.stdout.is_empty(), "{name} printed a result");
        assert!(
            stderr.contains(&url),
            "{name}'s message names the server: {stderr}"
        );
    }
}
