//! Bad input on the MCP path: each bad request gets a clear JSON-RPC or HTTP error, never
//! reaches the server when refused, and costs neither the connection's other requests, nor
//! other agents, nor the daemon.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gateway_tests::{free_port, run_probe, Gateway, GatewayOptions, PYTHON};
use serde_json::Value;

const FAKE_SERVER: &str = include_str!("../fixtures/fake_mcp_server.py");
const BAD_AGENT: &str = include_str!("../fixtures/bad_agent.py");

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_fake(port: u16, log: &std::path::Path) -> Server {
    let child = Command::new(PYTHON)
        .args(["-c", FAKE_SERVER, &port.to_string()])
        .arg(log)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "fake MCP server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server(child)
}

fn received(log: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn error_code(v: &Value) -> i64 {
    v["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("not a JSON-RPC error: {v}"))
}

#[test]
fn bad_requests_get_clear_errors_and_cost_nothing_else() {
    let port = free_port();
    let gw = Gateway::start(
        "badinput",
        GatewayOptions {
            ports: vec![port],
            extra: "[http]\nmax_request_bytes = 4096\n".into(),
            ..Default::default()
        },
    );
    let log = gw.dir.path().join("server.log");
    let _server = start_fake(port, &log);

    let out = run_probe(gw.agent(
        PYTHON,
        &[
            "-c".into(),
            BAD_AGENT.into(),
            "127.0.0.1".into(),
            port.to_string(),
        ],
    ));

    let r = &out["malformed"];
    assert_eq!(r["status"], 400, "{r}");
    assert_eq!(error_code(&r["body"]), -32700);
    assert!(
        r["body"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not JSON"),
        "{r}"
    );

    // The same kept-alive connection goes on working.
    assert_eq!(out["good_after_malformed"]["status"], 200);
    assert_eq!(
        out["good_after_malformed"]["body"]["result"]["method"],
        "tools/call"
    );

    let r = &out["too_large"];
    assert_eq!(r["status"], 413, "{r}");
    assert!(
        r["body"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("4096"),
        "{r}"
    );

    for label in ["method_mismatch", "name_mismatch"] {
        let r = &out[label];
        assert_eq!(r["status"], 400, "{label}: {r}");
        assert_eq!(error_code(&r["body"]), -32020, "{label}: {r}");
        assert!(
            r["body"]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("header says"),
            "{r}"
        );
    }
    assert_eq!(
        out["name_match_2026"]["status"], 200,
        "{}",
        out["name_match_2026"]
    );

    let r = &out["batch_2025_06_18"];
    assert_eq!(r["status"], 400, "{r}");
    assert_eq!(
        r["body"].as_array().unwrap().len(),
        2,
        "one error per request: {r}"
    );
    assert_eq!(error_code(&r["body"][0]), -32600);
    assert_eq!(out["batch_2025_03_26"]["status"], 200);
    assert_eq!(out["batch_2025_03_26"]["body"].as_array().unwrap().len(), 2);

    assert_eq!(out["not_jsonrpc"]["status"], 400);
    assert_eq!(error_code(&out["not_jsonrpc"]["body"]), -32600);

    let r = &out["garbage_reply"];
    assert_eq!(r["status"], 502, "{r}");
    assert_eq!(r["body"]["id"], 11);
    assert!(
        r["body"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not JSON-RPC"),
        "{r}"
    );
    assert_eq!(out["good_again"]["status"], 200);

    // The server died mid-stream: the agent has the progress event it sent, then a
    // JSON-RPC error for its request instead of a hang or a torn event.
    let r = &out["die_mid_stream"];
    assert_eq!(r["status"], 200, "{r}");
    let events = r["events"].as_array().unwrap();
    assert_eq!(events[0]["method"], "notifications/progress", "{r}");
    let last = events.last().unwrap();
    assert_eq!(last["id"], 13, "{r}");
    assert_eq!(error_code(last), -32011);

    // Refused requests never reached the server.
    let seen: Vec<i64> = received(&log)
        .iter()
        .filter_map(|e| e["id"].as_i64())
        .collect();
    for refused in [1, 3, 4, 5, 7, 8] {
        assert!(
            !seen.contains(&refused),
            "request {refused} reached the server: {seen:?}"
        );
    }
    for forwarded in [2, 6, 9, 10, 11, 12, 13] {
        assert!(
            seen.contains(&forwarded),
            "request {forwarded} missing at the server: {seen:?}"
        );
    }

    // The audit names each refusal and failure.
    let mcp: Vec<Value> = gw
        .audit_records()
        .into_iter()
        .filter(|r| r["type"] == "mcp")
        .collect();
    let outcome_of = |id: &str| {
        mcp.iter()
            .find(|r| r["id"] == id)
            .map(|r| r["outcome"].as_str().unwrap().to_string())
    };
    assert_eq!(outcome_of("4").as_deref(), Some("refused"));
    assert_eq!(outcome_of("7").as_deref(), Some("refused"));
    assert_eq!(outcome_of("2").as_deref(), Some("ok"));
    assert_eq!(outcome_of("11").as_deref(), Some("upstream_error"));
    let died = gw.wait_record("for the stream that died", |r| r["id"] == "13");
    assert_eq!(died["outcome"], "upstream_error");
    let v2026 = mcp.iter().find(|r| r["id"] == "6").unwrap();
    assert_eq!(v2026["protocol_version"], "2026-07-28");
    assert_eq!(v2026["name"], "echo");

    // The daemon is alive and serves another agent.
    let again = run_probe(gw.agent(
        PYTHON,
        &[
            "-c".into(),
            BAD_AGENT.into(),
            "127.0.0.1".into(),
            port.to_string(),
        ],
    ));
    assert_eq!(again["good_after_malformed"]["status"], 200);
}
