//! Manifest pins against a real MCP server (the official Python SDK) that pulls the rug:
//! after it changes a tool's description and adds a tool, the agent's next listing lacks
//! both and calls to either are refused, until an administrator approves them with
//! `mcp-gateway pins` through the running daemon's admin socket.

use std::process::Command;

use gateway_tests::peers::{run_json, venv_python};
use gateway_tests::{free_port, Gateway, GatewayOptions};
use serde_json::{json, Value};

const CLIENT: &str = include_str!("../fixtures/policy_client.py");
use gateway_tests::peers::rug_server as bank;

/// The agent lists the tools, then calls balance and withdraw_funds.
fn agent(gw: &Gateway, url: &str) -> Value {
    let calls = json!([
        {"name": "balance", "arguments": {"account": "acme"}},
        {"name": "withdraw_funds", "arguments": {"account": "acme", "amount": 5}},
    ]);
    let mut cmd = Command::new(venv_python());
    cmd.arg("-c").arg(CLIENT).arg(url).arg(calls.to_string());
    run_json(gw.wrap(cmd))
}

fn cli_ok(gw: &Gateway, args: &[&str]) -> String {
    let out = gw.cli(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "mcp-gateway {args:?} failed: {stdout}{}\ndaemon log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    stdout
}

#[test]
fn a_rug_pull_is_held_until_an_administrator_approves_it() {
    let port = free_port();
    let gw = Gateway::start(
        "pins-rug",
        GatewayOptions {
            ports: vec![port],
            extra: format!("[[server]]\nname = \"bank\"\naddress = \"127.0.0.1:{port}\"\n"),
            pins: "mode = \"tofu\"\n".into(),
            ..Default::default()
        },
    );
    let server = bank(port, "v1");
    let url = server.url.clone();

    // First sight: both tools pinned; a tool the server never listed is refused.
    let first = agent(&gw, &url);
    assert_eq!(first["tools"], json!(["balance", "deposit"]), "{first}");
    assert_eq!(first["calls"][0]["ok"], true, "{first}");
    assert_eq!(first["calls"][1]["code"], -32015, "{first}");
    assert!(first["calls"][1]["error"]
        .as_str()
        .unwrap()
        .contains("never listed"));

    // The rug pull: same server, changed description, one more tool.
    drop(server);
    let _server = bank(port, "v2");
    let second = agent(&gw, &url);
    assert_eq!(
        second["tools"],
        json!(["deposit"]),
        "both are hidden: {second}"
    );
    for (call, why) in [
        (0, "changed since it was approved"),
        (1, "new and not approved"),
    ] {
        let c = &second["calls"][call];
        assert_eq!(c["ok"], false, "{second}");
        assert_eq!(c["code"], -32015, "{second}");
        let e = c["error"].as_str().unwrap();
        assert!(e.contains(why) && e.contains("pins diff bank"), "{e}");
    }
    let listing = gw.wait_record("of the held definitions", |r| {
        r["type"] == "mcp"
            && r["method"] == "tools/list"
            && r["pins"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["event"] == "held"))
    });
    let held: Vec<(String, String)> = listing["pins"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "held")
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["change"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        held,
        [
            ("balance".to_string(), "changed".to_string()),
            ("withdraw_funds".to_string(), "added".to_string())
        ]
    );
    let balance = &listing["pins"][0];
    let checks: Vec<&str> = balance["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["check"].as_str())
        .collect();
    assert!(
        checks.contains(&"credential_reference") && checks.contains(&"instruction_to_model"),
        "the poisoned description is flagged: {balance}"
    );

    // The administrator looks, then approves.
    let list = cli_ok(&gw, &["pins", "list"]);
    assert!(
        list.contains("bank") && list.contains("waiting=2"),
        "{list}"
    );
    let diff = cli_ok(&gw, &["pins", "diff", "bank"]);
    assert!(
        diff.contains("Shows the balance of an account.\""),
        "old text: {diff}"
    );
    assert!(diff.contains("id_rsa"), "new text: {diff}");
    assert!(
        diff.contains("withdraw_funds") && diff.contains("(nothing approved)"),
        "{diff}"
    );
    let approved = cli_ok(&gw, &["pins", "approve", "bank"]);
    assert!(approved.contains("tool/balance") && approved.contains("tool/withdraw_funds"));
    let admin = gw.wait_record("of the approval", |r| r["type"] == "pins_admin");
    assert_eq!(admin["op"], "approve");
    assert_eq!(admin["by_uid"], 0);

    let third = agent(&gw, &url);
    assert_eq!(
        third["tools"],
        json!(["balance", "deposit", "withdraw_funds"]),
        "{third}"
    );
    assert_eq!(third["calls"][0]["ok"], true, "{third}");
    assert_eq!(third["calls"][1]["ok"], true, "{third}");
    assert!(third["calls"][1]["text"]
        .as_str()
        .unwrap()
        .contains("withdrew 5"));
}

#[test]
fn the_pins_command_says_clearly_when_the_daemon_is_not_there() {
    let mut gw = Gateway::start(
        "pins-nodaemon",
        GatewayOptions {
            ports: vec![free_port()],
            ..Default::default()
        },
    );
    gw.stop();
    let out = gw.cli(&["pins", "list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no mcp-gateway daemon is listening"), "{err}");
}
