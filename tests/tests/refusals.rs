//! Every way the gateway refuses a call reaches real agents as that call's JSON-RPC error,
//! promptly, and the session goes on: the official Python SDK and TypeScript SDK clients,
//! over Streamable HTTP (the server answering in JSON, and in event streams), the
//! 2026-07-28 stateless revision and the legacy HTTP+SSE transport. The tests read what the
//! client library surfaced (its error's code and message), not the bytes on the wire.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gateway_tests::peers::{python_server, refusal_client_cmd, run_json, Peer, Sdk};
use gateway_tests::{free_port, Gateway, GatewayOptions};
use serde_json::{json, Value};

const SERVER: &str = include_str!("../fixtures/refusal_server.py");
/// `approvals.timeout_s`: the timed-out case waits this long.
const APPROVAL_TIMEOUT_S: u64 = 3;
/// The rate limit: calls per window. The rate-limited case comes first and makes more than
/// that many calls in a row (the window is long enough for them on a loaded machine), then
/// waits the window out; the other cases make fewer calls than that in any window.
const RATE_CALLS: u64 = 10;
const RATE_WINDOW_S: u64 = 4;

/// The server, logging what it runs to `log`.
fn server(port: u16, mode: &str, log: &Path) -> Peer {
    let path = if mode == "legacy" { "/sse" } else { "/mcp" };
    let port_arg = port.to_string();
    let args = [port_arg.as_ref(), mode.as_ref(), log.as_os_str()];
    python_server(&format!("refusal-server-{mode}"), SERVER, &args, port, path)
}

/// The tool calls the server ran: (tool, arguments).
fn ran(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Enforcing, pins on first use (the example config's defaults), approvals, secrets in
/// arguments refused, and a rate limit.
fn gateway(name: &str, port: u16) -> Gateway {
    gateway_in(name, port, "enforce")
}

fn gateway_in(name: &str, port: u16, mode: &str) -> Gateway {
    Gateway::start(
        name,
        GatewayOptions {
            ports: vec![port],
            pins: "mode = \"tofu\"\n".into(),
            extra: format!(
                "[[server]]\nname = \"refusals\"\naddress = \"127.0.0.1:{port}\"\n\
                 [approvals]\ntimeout_s = {APPROVAL_TIMEOUT_S}\n\
                 [redact]\nmode_requests = \"refuse\"\n\
                 [policy]\nmode = \"{mode}\"\n\
                 [[principal]]\nname = \"agent\"\nusers = [\"root\"]\n\
                 rate_calls = {RATE_CALLS}\nrate_window_s = {RATE_WINDOW_S}\n\
                 [[rule]]\nprincipal = \"agent\"\nserver = \"refusals\"\ntools = [\"delete_all\"]\naction = \"deny\"\n\
                 [[rule]]\nprincipal = \"agent\"\nserver = \"refusals\"\ntools = [\"transfer\", \"pay\"]\naction = \"ask\"\n\
                 [[rule]]\nprincipal = \"agent\"\nserver = \"refusals\"\ntools = [\"echo\"]\naction = \"allow\"\n\
                 arguments = {{ type = \"object\", properties = {{ text = {{ type = \"string\", maxLength = 60 }} }} }}\n\
                 [[rule]]\nprincipal = \"agent\"\nserver = \"refusals\"\ntools = [\"add\"]\naction = \"allow\"\n"
            ),
            ..Default::default()
        },
    )
}

/// One case per kind of refusal: (label, call, the code the agent must get, words its
/// message must hold).
fn cases() -> (Value, Vec<(&'static str, i64, &'static str)>) {
    let github_token = format!("ghp_{}", "a1B2c3D4e5".repeat(4).get(..36).unwrap());
    let calls = json!([
        {"label": "rate", "tool": "echo", "arguments": {"text": "again"},
         "repeat": RATE_CALLS * 4, "pause": RATE_WINDOW_S as f64 + 0.3},
        {"label": "policy", "tool": "delete_all", "arguments": {}},
        {"label": "schema", "tool": "echo", "arguments": {"text": "x".repeat(100)}},
        {"label": "secret", "tool": "echo", "arguments": {"text": github_token}},
        {"label": "pins", "tool": "add", "arguments": {"a": 1, "b": 2}},
        {"label": "approval_denied", "tool": "transfer", "arguments": {"amount": 7}},
        {"label": "approval_timed_out", "tool": "pay", "arguments": {"amount": 9}},
    ]);
    let expect = vec![
        ("policy", -32012, "denied by policy"),
        ("schema", -32012, "maxLength"),
        ("secret", -32014, "github"),
        ("pins", -32015, "not approved"),
        ("rate", -32013, "rate limit"),
        ("approval_denied", -32012, "denied by an administrator"),
        ("approval_timed_out", -32012, "none came within"),
    ];
    (calls, expect)
}

/// The kind of refusal the ledger records for each case.
fn refusal_kind(label: &str) -> &'static str {
    match label {
        "policy" | "schema" => "policy",
        "secret" => "exfiltration",
        "pins" => "unpinned",
        "rate" => "rate_limit",
        "approval_denied" => "approval_denied",
        "approval_timed_out" => "approval_timeout",
        other => panic!("no kind for case {other}"),
    }
}

/// Plays the administrator: denies every held `transfer` until told to stop.
fn deny_transfers(gw: &Gateway, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let out = gw.cli(&["approvals", "list", "--json"]);
        if let Ok(list) = serde_json::from_slice::<Value>(&out.stdout) {
            for h in list["held"].as_array().into_iter().flatten() {
                if h["call"]["tool"] == "transfer" {
                    let id = h["id"].to_string();
                    gw.cli(&["approvals", "deny", &id, "--reason", "not today"]);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Runs the cases with each client over `transport`; asserts what each library surfaced,
/// and that the server ran none of the refused calls.
fn refusals_reach(gw: &Gateway, url: &str, log: &Path, clients: &[(Sdk, &str)]) {
    let (calls, expect) = cases();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| deny_transfers(gw, &stop));
        // The administrator stops however this ends (a failed assertion too).
        let _stop = StopOnDrop(&stop);
        for &(sdk, transport) in clients {
            let got = run_json(gw.wrap(refusal_client_cmd(sdk, url, transport, &calls)));
            let who = format!("{sdk:?} over {transport}");
            // The held tool is hidden from the listing (pins), the rest is there.
            let tools = got["tools"].as_array().unwrap();
            assert!(!tools.contains(&json!("add")), "{who}: {got}");
            assert!(tools.contains(&json!("echo")), "{who}: {got}");
            for (label, code, words) in &expect {
                let r = &got[*label];
                assert_eq!(r["code"], *code, "{who}, {label}: {r}\n{}", gw.log());
                let message = r["message"].as_str().unwrap_or_default();
                assert!(message.contains(words), "{who}, {label}: {message:?}");
                // Promptly: at once, or as soon as the approval wait ends.
                let within = match *label {
                    "approval_timed_out" => APPROVAL_TIMEOUT_S as f64 + 3.0,
                    _ => 3.0,
                };
                let took = r["seconds"].as_f64().unwrap();
                assert!(took < within, "{who}, {label}: the error took {took} s");
                assert_eq!(
                    r["next_ok"], true,
                    "{who}, {label}: the next call failed: {r}"
                );
            }
            println!("{who}: every refusal surfaced as its JSON-RPC error: {got}");
        }
    });
    // The modern clients spoke 2026-07-28 (told apart by their executable), refusals too.
    let records = gw.audit_records();
    for (sdk, _) in clients.iter().filter(|(_, t)| *t == "modern") {
        let exe = match sdk {
            Sdk::Python => "python",
            Sdk::TypeScript => "node",
        };
        let modern = records.iter().any(|r| {
            r["type"] == "mcp"
                && r["outcome"] == "refused"
                && r["protocol_version"] == "2026-07-28"
                && r["principal"]["exe"]
                    .as_str()
                    .is_some_and(|e| e.contains(exe))
        });
        assert!(
            modern,
            "no refusal of {sdk:?} recorded under protocol 2026-07-28"
        );
    }
    // Each refusal is in the ledger, of its kind, with the code the agent got.
    let refused: Vec<(i64, String)> = gw
        .audit_records()
        .iter()
        .filter(|r| r["type"] == "mcp" && r["outcome"] == "refused")
        .filter_map(|r| {
            Some((
                r["error_code"].as_i64()?,
                r["refusal"].as_str()?.to_string(),
            ))
        })
        .collect();
    for (label, code, _) in &expect {
        let kind = refusal_kind(label);
        assert!(
            refused.iter().any(|(c, k)| c == code && k == kind),
            "no refused record of kind {kind} with {code}: {refused:?}"
        );
    }
    // The server ran the follow-up echoes and the calls under the rate, and nothing else.
    let ran = ran(log);
    assert!(!ran.is_empty());
    for call in &ran {
        let text = call["arguments"]["text"].as_str().unwrap_or_default();
        assert!(
            call["tool"] == "echo" && (text == "still here" || text == "again"),
            "the server ran a refused call: {call}"
        );
    }
}

/// A server in `mode` (json, sse, legacy) behind an enforcing gateway, and each client
/// over its transport.
fn refusals_reach_with(mode: &str, clients: &[(Sdk, &str)]) {
    let port = free_port();
    let gw = gateway(&format!("refusals-{mode}"), port);
    let log = gw.dir.path().join("ran.jsonl");
    let server = server(port, mode, &log);
    refusals_reach(&gw, &server.url, &log, clients);
}

/// Streamable HTTP clients, and the 2026-07-28 revision's stateless requests.
const STREAMABLE: [(Sdk, &str); 4] = [
    (Sdk::Python, "streamable"),
    (Sdk::TypeScript, "streamable"),
    (Sdk::Python, "modern"),
    (Sdk::TypeScript, "modern"),
];

#[test]
fn refusals_reach_clients_when_the_server_answers_in_json() {
    refusals_reach_with("json", &STREAMABLE);
}

#[test]
fn refusals_reach_clients_when_the_server_answers_in_event_streams() {
    refusals_reach_with("sse", &STREAMABLE);
}

#[test]
fn refusals_reach_legacy_sse_clients_on_their_stream() {
    refusals_reach_with("legacy", &[(Sdk::Python, "sse"), (Sdk::TypeScript, "sse")]);
}

/// `mode = "observe"`: the same policy, pins, redaction and limits change nothing the agent
/// sends or gets (every call runs, secrets pass as sent), and the audit still says what
/// enforcing would have done.
#[test]
fn observe_mode_changes_nothing_and_records_what_enforce_would_do() {
    let port = free_port();
    let gw = gateway_in("refusals-observe", port, "observe");
    let log = gw.dir.path().join("ran.jsonl");
    let server = server(port, "sse", &log);
    let (calls, _) = cases();
    let got = run_json(gw.wrap(refusal_client_cmd(
        Sdk::Python,
        &server.url,
        "streamable",
        &calls,
    )));
    let text = |label: &str| got[label]["ok"][0]["text"].as_str().map(str::to_string);
    assert_eq!(
        text("policy").as_deref(),
        Some("deleted everything"),
        "{got}"
    );
    assert_eq!(text("pins").as_deref(), Some("3"), "{got}");
    assert_eq!(
        text("approval_denied").as_deref(),
        Some("transferred 7"),
        "{got}"
    );
    assert_eq!(text("schema").unwrap().len(), 100, "{got}");
    // The secret went out and came back as sent: nothing redacted either way.
    let secret = calls[3]["arguments"]["text"].as_str().unwrap();
    assert_eq!(text("secret").as_deref(), Some(secret), "{got}");
    assert!(got["rate"]["ok"].is_array(), "no rate limit: {got}");
    let tools = got["tools"].as_array().unwrap();
    assert!(tools.contains(&json!("add")), "pins hid nothing: {got}");

    // Every call ran at the server, the ones enforcing would refuse too.
    let tools: Vec<Value> = ran(&log).iter().map(|c| c["tool"].clone()).collect();
    for tool in ["delete_all", "add", "transfer", "pay"] {
        assert!(
            tools.contains(&json!(tool)),
            "{tool} did not run: {tools:?}"
        );
    }
    // The last case's exchange is on record before the ledger is read.
    gw.wait_record("of the last call", |r| {
        r["type"] == "mcp" && r["name"] == "pay" && r["outcome"] == "ok"
    });
    let records = gw.mcp_records();
    let refused = records.iter().filter(|r| r["outcome"] == "refused").count();
    assert_eq!(refused, 0, "{records:#?}");
    // What enforcing would have done is on record.
    let denied = gw.wait_record("of the would-be denial", |r| {
        r["type"] == "mcp_call" && r["name"] == "delete_all"
    });
    assert_eq!(denied["decision"]["action"], "deny", "{denied}");
    assert_eq!(denied["decision"]["enforced"], false, "{denied}");
    let held = records
        .iter()
        .filter_map(|r| r["pins"].as_array())
        .flatten()
        .find(|e| e["name"] == "add")
        .cloned();
    assert_eq!(
        held.as_ref().map(|e| &e["event"]),
        Some(&json!("held")),
        "{records:#?}"
    );
    assert!(
        records.iter().all(|r| r.get("hidden").is_none()),
        "{records:#?}"
    );
}
