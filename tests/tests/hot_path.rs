//! What the hot path promises beyond correctness, seen from the agent's socket.

use gateway_tests::peers::{python_server, run_json};
use gateway_tests::{free_port, Gateway, GatewayOptions, PYTHON};

const SERVER: &str = include_str!("../fixtures/one_write_server.py");
const AGENT: &str = include_str!("../fixtures/segments_agent.py");

/// A server that sends an answer whole (its head and an event stream of two events, in one
/// write) has it reach the agent in one TCP segment, not one per event: hyper hands the
/// upstream body over a chunk at a time, and the gateway drives the upstream connection
/// itself rather than flushing what it has between chunks. Each write is a segment the
/// agent's socket and its reader wake for.
#[test]
fn an_answer_that_arrived_whole_leaves_in_one_segment() {
    gateway_tests::require_privileges();
    let port = free_port();
    let port_arg = port.to_string();
    let _srv = python_server(
        "one-write-server",
        SERVER,
        &[port_arg.as_ref()],
        port,
        "/mcp",
    );
    let gw = Gateway::start(
        "one-segment",
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
    for step in ["initialize", "call"] {
        let answer = &out[step];
        assert_eq!(answer["status"], "200", "{step}: {out}");
        let events = answer["events"].as_array().expect("events");
        assert_eq!(events.len(), 2, "{step}: both events pass: {out}");
        assert!(
            events[1].as_str().unwrap().contains("\"result\""),
            "{step}: {out}"
        );
        assert_eq!(answer["segments"], 1, "{step}: {out}");
    }
    assert!(
        out["call"]["events"][1].as_str().unwrap().contains("whole"),
        "{out}"
    );
    gw.wait_record("of the call", |r| {
        r["type"] == "mcp" && r["method"] == "tools/call" && r["outcome"] == "ok"
    });
}
