//! Multi-round-trip requests (2026-07-28): what a server asks through
//! `resultType: "input_required"` is decided by the same `server_to_client` rules as a
//! server's requests in older versions; the `requestState` goes back to the server byte for
//! byte (never redacted), and the ledger ties the retry to the result that asked by the
//! state's SHA-256; the agent's answers are scanned like arguments. The official Python
//! SDK on both sides (`mcp` 2.3.0, `Client(mode="2026-07-28")`).

use gateway_tests::config::{RedactMode, Rule, Server, TestConfig};
use gateway_tests::peers::{python_server, run_json, venv_python, Peer};
use gateway_tests::{free_port, Gateway, GatewayOptions};
use serde_json::{json, Value};

const SERVER: &str = include_str!("../fixtures/mrtr_server.py");
const CLIENT: &str = include_str!("../fixtures/mrtr_client.py");
const STATE: &str = "state-AKIAIOSFODNN7EXAMPLE-1";

fn setup(name: &str, rules: &[Rule]) -> (Peer, Gateway, tempfile::TempDir) {
    gateway_tests::require_privileges();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("received.jsonl");
    let port_arg = port.to_string();
    let args = [port_arg.as_ref(), log.as_os_str()];
    let srv = python_server("mrtr-server", SERVER, &args, port, "/mcp");
    let gw = Gateway::start(
        name,
        GatewayOptions {
            ports: vec![port],
            config: rules.iter().rev().fold(
                TestConfig::allowing("agent", Server::at("mrtr", port))
                    .redact(RedactMode::Redact, RedactMode::Redact),
                |c, r| c.first(r.clone()),
            ),
            ..Default::default()
        },
    );
    (srv, gw, dir)
}

fn client(gw: &Gateway, srv: &Peer, note: &str, tools: &[&str]) -> Value {
    let mut args: Vec<String> = ["-c", CLIENT, &srv.url, note].map(String::from).to_vec();
    args.extend(tools.iter().map(|t| t.to_string()));
    run_json(gw.agent(venv_python().to_str().unwrap(), &args))
}

#[test]
fn an_input_request_a_rule_denies_never_reaches_the_agent() {
    let (srv, gw, dir) = setup(
        "mrtr-deny",
        &[Rule::deny("agent", "mrtr")
            .server_to_client()
            .methods(&["sampling/createMessage"])],
    );
    let out = client(&gw, &srv, "fine", &["ask_model", "ask_user"]);
    // The sampling request never reached the agent: its call failed with the rule's code.
    assert_eq!(out["asked"], json!(["elicitation/create"]), "{out}");
    let denied = &out["calls"][0];
    assert_eq!(denied["code"], -32012, "{out}");
    assert!(
        denied["message"]
            .as_str()
            .unwrap()
            .contains("sampling/createMessage"),
        "{out}"
    );
    assert_eq!(out["calls"][1]["text"], "user said: fine", "{out}");
    // The server never got a retry of the denied call.
    let got = gateway_tests::raw::lines(&dir.path().join("received.jsonl"));
    assert!(got.iter().all(|r| r["tool"] != "ask_model"), "{got:?}");

    let record = gw.wait_record("of the refused input request", |r| {
        r["type"] == "mcp" && r["name"] == "ask_model" && r["outcome"] == "refused"
    });
    assert_eq!(record["error_code"], -32012, "{record}");
    assert_eq!(record["refusal"], "policy", "{record}");
    assert!(
        record["decision"]["rule"]
            .as_str()
            .unwrap()
            .starts_with("rule[0] deny server_to_client"),
        "{record}"
    );
    assert_eq!(
        record["input_requests"][0]["method"], "sampling/createMessage",
        "{record}"
    );
    assert_eq!(record["input_requests"][0]["key"], "q", "{record}");
}

#[test]
fn the_state_goes_back_as_it_came_and_ties_the_retry_to_the_call() {
    let (srv, gw, dir) = setup("mrtr-pass", &[]);
    let token = format!("ghp_{}", "a1B2c3D4e5".repeat(4).get(..36).unwrap());
    let out = client(
        &gw,
        &srv,
        &format!("key {token}"),
        &["ask_model", "ask_user"],
    );
    assert_eq!(out["calls"][0]["text"], "model said: four", "{out}");
    let got = gateway_tests::raw::lines(&dir.path().join("received.jsonl"));
    // The SDK seals its state (AES-GCM) and refuses one changed by a single bit: the
    // server reading it back shows it came back byte for byte.
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|r| r["state"] == STATE), "{got:?}");
    // The agent's answer left without the secret.
    let note = got.iter().find(|r| r["tool"] == "ask_user").unwrap()["answers"]["u"]["content"]
        ["note"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !note.contains(&token) && note.contains("[REDACTED:"),
        "{note}"
    );

    // The result that asked and the retry that answered carry the same state digest.
    let asked = gw.wait_record("of the result asking for input", |r| {
        r["type"] == "mcp" && r["name"] == "ask_model" && r["input_requests"].is_array()
    });
    let digest = asked["request_state_sha256"].clone();
    assert_eq!(digest.as_str().map(str::len), Some(64), "{asked}");
    assert_eq!(asked["input_requests"][0]["decision"]["action"], "allow");
    let retry = gw.wait_record("of the retry", |r| {
        r["type"] == "mcp_call" && r["name"] == "ask_model" && r["request_state_sha256"] == digest
    });
    assert_ne!(
        retry["id"], asked["id"],
        "the retry is a new request: {retry}"
    );

    // A state the server never issued (the one field passed unread) does not leave.
    let before = gateway_tests::raw::lines(&dir.path().join("received.jsonl")).len();
    let forged = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {
        "name": "ask_model", "arguments": {"prompt": "x"},
        "inputResponses": {"q": {"role": "assistant", "content": {"type": "text", "text": "4"},
                                 "model": "m"}},
        "requestState": "exfiltrated-data",
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {}}}});
    let headers = json!({"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call",
                         "Mcp-Name": "ask_model"});
    let (status, answer) = gateway_tests::raw::post(&gw, None, srv.port, &headers, &forged);
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], -32600, "{answer}");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not one the server issued"));
    assert_eq!(
        gateway_tests::raw::lines(&dir.path().join("received.jsonl")).len(),
        before
    );
}
