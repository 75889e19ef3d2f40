//! An agent that closes a call's event stream cancels it: the gateway closes its side of
//! the server's stream at once, so the server sees the close (and can stop the work) rather
//! than streaming into a gateway nobody reads.

use gateway_tests::peers::{python_server, run_json};
use gateway_tests::{free_port, Gateway, GatewayOptions, PYTHON};

const SERVER: &str = include_str!("../fixtures/slow_sse_server.py");
const AGENT: &str = include_str!("../fixtures/close_agent.py");

#[test]
fn the_server_sees_the_agent_close_a_stream_at_once() {
    gateway_tests::require_privileges();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("closed.jsonl");
    let port_arg = port.to_string();
    let args = [port_arg.as_ref(), log.as_os_str()];
    let _srv = python_server("slow-sse-server", SERVER, &args, port, "/mcp");
    let gw = Gateway::start(
        "stream-close",
        GatewayOptions {
            ports: vec![port],
            ..Default::default()
        },
    );
    let out = run_json(gw.agent(
        PYTHON,
        &[
            "-c".into(),
            AGENT.into(),
            "127.0.0.1".into(),
            port.to_string(),
        ],
    ));
    assert_eq!(out["first_event"], true, "{out}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let seen = loop {
        if let Some(line) = std::fs::read_to_string(&log)
            .ok()
            .and_then(|t| t.lines().next().map(String::from))
        {
            break serde_json::from_str::<serde_json::Value>(&line).unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server saw nothing"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let after = seen["closed_after_s"]
        .as_f64()
        .unwrap_or_else(|| panic!("the server never saw the close: {seen}"));
    // The agent closes right after the first event; a second covers a loaded machine, far
    // below the 30 s the server would stream on.
    assert!(
        after < 1.5,
        "the server saw the close only after {after:.2}s"
    );
    gw.wait_record("of the call the agent gave up", |r| {
        r["type"] == "mcp" && r["method"] == "tools/call" && r["outcome"] == "no_response"
    });
}
