//! Bad and heavy input costs bounded time and memory and is answered clearly, to that
//! client alone: bodies exactly at and just over the limit, stalled half-requests
//! (slowloris) beside an ordinary agent, and a thousand MCP sessions at once.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use gateway_tests::{fake, free_port, run_probe, Gateway, GatewayOptions, PYTHON};
use serde_json::Value;

const LOAD_AGENT: &str = include_str!("../fixtures/load_agent.py");

fn gateway(name: &str, port: u16, extra: &str) -> Gateway {
    Gateway::start(
        name,
        GatewayOptions {
            ports: vec![port],
            extra: extra.into(),
            ..Default::default()
        },
    )
}

fn load_agent(gw: &Gateway, port: u16, args: &[&str]) -> Command {
    let mut a = vec![
        "-c".to_string(),
        LOAD_AGENT.into(),
        "127.0.0.1".into(),
        port.to_string(),
    ];
    a.extend(args.iter().map(|s| s.to_string()));
    gw.agent(PYTHON, &a)
}

#[test]
fn a_body_at_the_limit_passes_and_one_byte_more_is_refused() {
    let port = free_port();
    let gw = gateway("limit", port, "[http]\nmax_request_bytes = 4096\n");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let _server = fake::start(port, &log);

    let at = run_probe(load_agent(&gw, port, &["sized", "4096"]));
    assert_eq!(at["size"], 4096);
    assert_eq!(at["status"], 200, "{at}");
    assert_eq!(at["body"]["result"]["method"], "tools/call", "{at}");

    let over = run_probe(load_agent(&gw, port, &["sized", "4097"]));
    assert_eq!(over["status"], 413, "{over}");
    assert_eq!(over["body"]["error"]["code"], -32010, "{over}");
    let calls = fake::received(&log)
        .into_iter()
        .filter(|r| r["method"] == "tools/call")
        .count();
    assert_eq!(
        calls, 1,
        "only the body within the limit reached the server"
    );
}

#[test]
fn stalled_half_requests_do_not_slow_an_ordinary_agent() {
    let port = free_port();
    let gw = gateway("slowloris", port, "");
    let dir = tempfile::tempdir().unwrap();
    let _server = fake::start(port, &dir.path().join("server.log"));
    let out = run_probe(load_agent(&gw, port, &["slowloris", "200"]));
    assert_eq!(out["stalled"], 200);
    assert_eq!(out["status"], 200, "{out}");
    assert!(
        out["seconds"].as_f64().unwrap() < 5.0,
        "an ordinary request waited behind stalled ones: {out}"
    );
    assert!(gw.pid().is_some(), "the daemon is alive");
}

#[test]
fn a_thousand_sessions_at_once_are_all_served() {
    let port = free_port();
    let gw = gateway("sessions", port, "");
    let dir = tempfile::tempdir().unwrap();
    let _server = fake::start(port, &dir.path().join("server.log"));
    let mut agent = load_agent(&gw, port, &["sessions", "1000", "50"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(agent.stdout.take().unwrap()).lines();
    let open: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(open["sessions"], 1000, "{open}");

    let st = gw.cli(&["status", "--json"]);
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let status: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(
        status["sessions"]["total"], 1000,
        "the daemon tracks every session: {status:#}"
    );

    agent.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let done: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(agent.wait().unwrap().success());
    assert_eq!(done["calls_ok"], 1000, "{done}");
}
