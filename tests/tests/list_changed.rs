//! Pins follow a server's change notifications: on `notifications/tools/list_changed` the
//! gateway lists the server's tools itself, so a tool changed between two calls is refused
//! at the second (-32015) though the agent never listed again. The official Python SDK on
//! both sides, over Streamable HTTP (the notification on the call's event stream) and the
//! legacy HTTP+SSE transport; and in 2026-07-28, the change coming on a
//! `subscriptions/listen` stream.

use gateway_tests::config::{Rule, Server, TestConfig};
use gateway_tests::peers::{python_server, run_json, venv_python};
use gateway_tests::{free_port, Gateway, GatewayOptions};
use serde_json::Value;

const SERVER: &str = include_str!("../fixtures/asking_server.py");
const CLIENT: &str = include_str!("../fixtures/asking_client.py");

fn gateway(name: &str, port: u16) -> Gateway {
    Gateway::start(
        name,
        GatewayOptions {
            ports: vec![port],
            pins: "mode = \"tofu\"\n".into(),
            config: TestConfig {
                rules: vec![Rule::allow("agent", "asking").methods(&["*"])],
                ..TestConfig::allowing("agent", Server::at("asking", port))
            },
            ..Default::default()
        },
    )
}

fn changed_between_two_calls(mode: &str, transport: &str) {
    gateway_tests::require_privileges();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("received.jsonl");
    let path = if mode == "legacy" { "/sse" } else { "/mcp" };
    let port_arg = port.to_string();
    let args = [port_arg.as_ref(), mode.as_ref(), log.as_os_str()];
    let srv = python_server(&format!("asking-server-{mode}"), SERVER, &args, port, path);
    let gw = gateway(&format!("relist-{mode}"), port);
    let args: Vec<String> = [
        "-c",
        CLIENT,
        &srv.url,
        transport,
        "-",
        "list",
        "target",
        "change_target",
        "target",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = run_json(gw.agent(venv_python().to_str().unwrap(), &args));
    let calls = out["calls"].as_array().unwrap();
    assert_eq!(calls[1]["text"], "target ran with x", "{out}");
    assert_eq!(calls[2]["text"], "changed", "{out}");
    // No listing between the change and this call: the gateway's own listing held it.
    assert_eq!(calls[3]["code"], -32015, "{out}");
    let message = calls[3]["message"].as_str().unwrap();
    assert!(
        message.contains("changed since it was approved"),
        "{message}"
    );

    let relisted = gw.wait_record("of the gateway's own listing", |r| {
        r["type"] == "mcp"
            && r["method"] == "tools/list"
            && r["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("listed by the gateway"))
    });
    assert_eq!(relisted["outcome"], "ok", "{relisted}");
    let held: Vec<&Value> = relisted["pins"]
        .as_array()
        .unwrap_or_else(|| panic!("no pin events: {relisted}"))
        .iter()
        .filter(|e| e["event"] == "held")
        .collect();
    assert_eq!(held.len(), 1, "{relisted}");
    assert_eq!(held[0]["name"], "target");
    assert_eq!(held[0]["change"], "changed");
    let refused = gw.wait_record("of the refused call", |r| {
        r["type"] == "mcp" && r["method"] == "tools/call" && r["outcome"] == "refused"
    });
    assert_eq!(refused["name"], "target", "{refused}");
    assert_eq!(refused["refusal"], "unpinned", "{refused}");
    assert_eq!(refused["error_code"], -32015, "{refused}");
    // The pins say so too, for the administrator.
    let diff = gw.cli(&["pins", "diff", "asking"]);
    let diff = String::from_utf8_lossy(&diff.stdout);
    assert!(diff.contains("target"), "{diff}");
}

#[test]
fn a_tool_changed_after_list_changed_is_refused_at_the_next_call_streamable_http() {
    changed_between_two_calls("sse", "streamable");
}

#[test]
fn a_tool_changed_after_list_changed_is_refused_at_the_next_call_legacy_sse() {
    changed_between_two_calls("legacy", "sse");
}

/// 2026-07-28: the change comes on a `subscriptions/listen` stream; the gateway's own
/// listing is a stateless request (its version in `_meta` and the `Mcp-Method` header).
#[test]
fn a_tool_changed_after_a_listen_event_is_refused_at_the_next_call_2026_07_28() {
    gateway_tests::require_privileges();
    const LISTEN: &str = include_str!("../fixtures/listen_client.py");
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("received.jsonl");
    let port_arg = port.to_string();
    let args = [port_arg.as_ref(), "sse".as_ref(), log.as_os_str()];
    let srv = python_server("asking-server-modern", SERVER, &args, port, "/mcp");
    let gw = gateway("relist-modern", port);
    let args = ["-c", LISTEN, &srv.url].map(String::from).to_vec();
    let out = run_json(gw.agent(venv_python().to_str().unwrap(), &args));
    let calls = out["calls"].as_array().unwrap();
    assert_eq!(calls[0]["text"], "target ran with x", "{out}");
    assert_eq!(calls[2]["event"], "ToolsListChanged", "{out}");
    assert_eq!(calls[3]["code"], -32015, "{out}");
    let relisted = gw.wait_record("of the gateway's own listing", |r| {
        r["type"] == "mcp"
            && r["method"] == "tools/list"
            && r["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("listed by the gateway"))
    });
    assert_eq!(relisted["outcome"], "ok", "{relisted}");
    assert_eq!(relisted["protocol_version"], "2026-07-28", "{relisted}");
}

/// A resource template changed after `notifications/resources/list_changed`: reading a URI
/// under it is refused like a call to a held tool.
#[test]
fn a_read_under_a_template_changed_after_list_changed_is_refused() {
    gateway_tests::require_privileges();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("received.jsonl");
    let port_arg = port.to_string();
    let args = [port_arg.as_ref(), "sse".as_ref(), log.as_os_str()];
    let srv = python_server("asking-server-templates", SERVER, &args, port, "/mcp");
    let gw = gateway("relist-templates", port);
    let args = [
        "-c",
        CLIENT,
        &srv.url,
        "streamable",
        "-",
        "list",
        "templates",
        "read",
        "change_logs",
        "read",
    ]
    .map(String::from)
    .to_vec();
    let out = run_json(gw.agent(venv_python().to_str().unwrap(), &args));
    let calls = out["calls"].as_array().unwrap();
    assert_eq!(calls[2]["text"], "log app.log", "{out}");
    assert_eq!(calls[4]["code"], -32015, "{out}");
    let message = calls[4]["message"].as_str().unwrap();
    assert!(
        message.contains("file:///logs/{name}") && message.contains("held"),
        "{message}"
    );
    let refused = gw.wait_record("of the refused read", |r| {
        r["type"] == "mcp" && r["method"] == "resources/read" && r["outcome"] == "refused"
    });
    assert_eq!(refused["refusal"], "unpinned", "{refused}");
}
