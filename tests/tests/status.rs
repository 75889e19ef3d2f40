//! `mcp-gateway status` / `top` and the Prometheus endpoint of a running daemon, after a
//! real agent's calls: the numbers an administrator reads are the ones that happened.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use gateway_tests::peers::{run_json, venv_python};
use gateway_tests::{free_port, Gateway, GatewayOptions};
use serde_json::{json, Value};

const CLIENT: &str = include_str!("../fixtures/policy_client.py");

/// The Python SDK client, as the gateway's agent, making `calls` on the server at `url`.
fn agent_calls(gw: &Gateway, url: &str, calls: &Value) -> Value {
    let mut agent = Command::new(venv_python());
    agent.arg("-c").arg(CLIENT).arg(url).arg(calls.to_string());
    run_json(gw.wrap(agent))
}

fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn status_top_and_metrics_report_what_the_agent_did() {
    let (port, metrics_port) = (free_port(), free_port());
    let server = gateway_tests::peers::rug_server(port, "v1");
    let gw = Gateway::start(
        "status",
        GatewayOptions {
            ports: vec![port],
            extra: format!(
                "[[server]]\nname = \"bank\"\naddress = \"127.0.0.1:{port}\"\n\
                 [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"
            ),
            pins: "mode = \"tofu\"\n".into(),
            ..Default::default()
        },
    );
    let calls = json!([{"name": "balance", "arguments": {"account": "a"}},
                       {"name": "withdraw_funds", "arguments": {"account": "a", "amount": 1}}]);
    let out = agent_calls(&gw, &server.url, &calls);
    assert_eq!(out["calls"][0]["ok"], true, "{out}");
    assert_eq!(out["calls"][1]["code"], -32015, "never listed: {out}");

    let st = gw.cli(&["status", "--json"]);
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let status: Value = serde_json::from_slice(&st.stdout).unwrap();
    let text = status.to_string();
    assert!(
        text.contains(&gw.listen4.to_string()),
        "listener shown: {status:#}"
    );
    assert!(text.contains("connect4"), "programs shown: {status:#}");
    assert!(text.contains(&gw.cgroup), "agent cgroup shown: {status:#}");
    let human = gw.cli(&["status"]);
    assert!(human.status.success());
    let human = String::from_utf8_lossy(&human.stdout).into_owned();
    assert!(human.contains("bank"), "{human}");
    let top = gw.cli(&["top"]);
    assert!(
        top.status.success(),
        "{}",
        String::from_utf8_lossy(&top.stderr)
    );

    let m = scrape(metrics_port);
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    let line = |prefix: &str| {
        m.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{m}"))
            .to_string()
    };
    assert!(
        line(r#"mcp_gateway_mcp_calls_total{server="bank",method="tools/call",outcome="ok"}"#)
            .ends_with(" 1"),
        "{m}"
    );
    assert!(
        line(r#"mcp_gateway_denied_total{reason="unpinned"}"#).ends_with(" 1"),
        "{m}"
    );
    assert!(line("mcp_gateway_flows_total{").len() > 10);
    assert!(
        !m.contains(r#"outcome="malformed""#),
        "the server's empty 202 acknowledgements are not malformed: {m}"
    );
}

/// `RUST_LOG` as an operator writes it. Levels by target (`info`) take the daemon's static
/// filter: no debug line. A span directive (`info,[conn]=debug`) needs the full filter and
/// still works: debug lines appear, and only inside a connection's span.
#[test]
fn rust_log_levels_and_span_directives_select_the_lines_they_name() {
    let port = free_port();
    let server = gateway_tests::peers::rug_server(port, "v1");
    let calls = json!([{"name": "balance", "arguments": {"account": "a"}}]);
    let mut logs = Vec::new();
    for filter in ["info", "info,[conn]=debug"] {
        let mut gw = Gateway::start(
            "rust-log",
            GatewayOptions {
                ports: vec![port],
                log: Some(filter.into()),
                ..Default::default()
            },
        );
        let out = agent_calls(&gw, &server.url, &calls);
        assert_eq!(out["calls"][0]["ok"], true, "{out}");
        gw.stop();
        logs.push(gw.log());
    }
    let debug = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("DEBUG"))
            .map(str::to_string)
            .collect()
    };
    assert!(logs[0].contains("INFO"), "{}", logs[0]);
    assert_eq!(debug(&logs[0]), Vec::<String>::new(), "RUST_LOG=info");
    let lines = debug(&logs[1]);
    assert!(
        !lines.is_empty(),
        "RUST_LOG=info,[conn]=debug:\n{}",
        logs[1]
    );
    for l in &lines {
        assert!(
            l.contains("conn{"),
            "a debug line outside a connection: {l}"
        );
    }
}
