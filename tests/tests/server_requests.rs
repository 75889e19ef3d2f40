//! What a server asks of an agent (sampling, elicitation, roots) is decided by rules of
//! their own direction: a denied request never reaches the agent, the server gets the
//! JSON-RPC error instead, and the ledger says which rule. What the agent answers is
//! scanned for secrets like a call's arguments. The official Python SDK on both sides,
//! over Streamable HTTP and the legacy HTTP+SSE transport.

use std::path::Path;
use std::process::Command;

use gateway_tests::peers::{python_server, run_json, venv_python, Peer};
use gateway_tests::{free_port, Gateway, GatewayOptions};
use serde_json::Value;

const SERVER: &str = include_str!("../fixtures/asking_server.py");
const CLIENT: &str = include_str!("../fixtures/asking_client.py");

fn server(port: u16, mode: &str, log: &Path) -> Peer {
    let path = if mode == "legacy" { "/sse" } else { "/mcp" };
    let port_arg = port.to_string();
    let args = [port_arg.as_ref(), mode.as_ref(), log.as_os_str()];
    python_server(&format!("asking-server-{mode}"), SERVER, &args, port, path)
}

fn client(gw: &Gateway, url: &str, transport: &str, note: &str, calls: &[&str]) -> Value {
    let mut args = vec![
        "-c".to_string(),
        CLIENT.to_string(),
        url.to_string(),
        transport.to_string(),
        note.to_string(),
    ];
    args.extend(calls.iter().map(|c| c.to_string()));
    run_json(gw.agent(venv_python().to_str().unwrap(), &args))
}

fn gateway(name: &str, port: u16, extra_rules: &str, redact: &str, pins: &str) -> Gateway {
    Gateway::start(
        name,
        GatewayOptions {
            ports: vec![port],
            pins: pins.into(),
            extra: format!(
                "[[server]]\nname = \"asking\"\naddress = \"127.0.0.1:{port}\"\n\
                 [redact]\nmode_requests = \"{redact}\"\n\
                 [policy]\nmode = \"enforce\"\n\
                 [[principal]]\nname = \"agent\"\nusers = [\"root\"]\n\
                 {extra_rules}\
                 [[rule]]\nprincipal = \"agent\"\nserver = \"asking\"\naction = \"allow\"\n"
            ),
            ..Default::default()
        },
    )
}

const DENY_SAMPLING: &str = "[[rule]]\nprincipal = \"agent\"\nserver = \"asking\"\n\
     direction = \"server_to_client\"\nmethods = [\"sampling/createMessage\"]\naction = \"deny\"\n";

fn github_token() -> String {
    format!("ghp_{}", "a1B2c3D4e5".repeat(4).get(..36).unwrap())
}

fn call<'a>(out: &'a Value, name: &str) -> &'a Value {
    out["calls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["call"] == name)
        .unwrap_or_else(|| panic!("no call {name} in {out}"))
}

fn denied_sampling_never_reaches_the_agent(mode: &str, transport: &str) {
    gateway_tests::require_privileges();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("received.jsonl");
    let srv = server(port, mode, &log);
    let gw = gateway(&format!("s2c-{mode}"), port, DENY_SAMPLING, "redact", "");
    let token = github_token();
    let note = format!("my key is {token}");
    let out = client(
        &gw,
        &srv.url,
        transport,
        &note,
        &["ask_model", "ask_user", "roots"],
    );

    // The agent never saw the sampling request; the others reached it.
    let asked: Vec<&str> = out["asked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(asked, ["elicitation/create", "roots/list"], "{out}");
    // The server got the gateway's error in place of an answer, and said so in its result.
    let got = gateway_tests::raw::lines(&log);
    let sampled = got
        .iter()
        .find(|r| r["tool"] == "ask_model")
        .expect("ask_model ran");
    assert_eq!(sampled["error"]["code"], -32012, "{got:?}");
    let message = sampled["error"]["message"].as_str().unwrap();
    assert!(message.contains("sampling/createMessage"), "{message}");
    assert!(call(&out, "ask_model")["text"]
        .as_str()
        .unwrap()
        .starts_with("refused -32012"));
    // The elicitation's answer left the host without the secret in it.
    let elicited = got
        .iter()
        .find(|r| r["tool"] == "ask_user")
        .expect("ask_user ran");
    let seen_note = elicited["note"].as_str().unwrap();
    assert!(
        !seen_note.contains(&token),
        "the secret reached the server: {seen_note}"
    );
    assert!(seen_note.contains("[REDACTED:"), "{seen_note}");
    assert_eq!(
        got.iter().find(|r| r["tool"] == "roots").unwrap()["roots"][0],
        "file:///srv/project"
    );

    // The ledger: the refusal, with its rule; the elicitation, with what was redacted.
    let refused = gw.wait_record("of the refused sampling request", |r| {
        r["type"] == "mcp" && r["method"] == "sampling/createMessage"
    });
    assert_eq!(refused["direction"], "server_to_client", "{refused}");
    assert_eq!(refused["outcome"], "refused", "{refused}");
    assert_eq!(refused["refusal"], "policy", "{refused}");
    assert_eq!(refused["error_code"], -32012, "{refused}");
    assert_eq!(refused["decision"]["action"], "deny", "{refused}");
    let rule = refused["decision"]["rule"].as_str().unwrap();
    assert!(
        rule.starts_with("rule[0] deny server_to_client agent sampling/createMessage"),
        "{rule}"
    );
    let elicitation = gw.wait_record("of the elicitation", |r| {
        r["type"] == "mcp" && r["method"] == "elicitation/create"
    });
    assert_eq!(elicitation["outcome"], "ok", "{elicitation}");
    assert_eq!(
        elicitation["direction"], "server_to_client",
        "{elicitation}"
    );
    assert!(
        elicitation["redactions"].is_object(),
        "the record says what was redacted from the agent's answer: {elicitation}"
    );
    let audit = gw.cli(&["audit", "verify"]);
    assert!(
        audit.status.success(),
        "{}",
        String::from_utf8_lossy(&audit.stderr)
    );
}

#[test]
fn denied_sampling_never_reaches_the_agent_over_streamable_http() {
    denied_sampling_never_reaches_the_agent("sse", "streamable");
}

#[test]
fn denied_sampling_never_reaches_the_agent_over_legacy_sse() {
    denied_sampling_never_reaches_the_agent("legacy", "sse");
}

/// `refuse` mode: an answer carrying a secret does not leave at all; the server gets
/// -32014 in its place.
#[test]
fn an_answer_with_a_secret_is_withheld_in_refuse_mode() {
    gateway_tests::require_privileges();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("received.jsonl");
    let srv = server(port, "sse", &log);
    let gw = gateway("s2c-refuse", port, "", "refuse", "");
    let out = client(
        &gw,
        &srv.url,
        "streamable",
        &github_token(),
        &["ask_user", "ask_model"],
    );
    let got = gateway_tests::raw::lines(&log);
    let elicited = got
        .iter()
        .find(|r| r["tool"] == "ask_user")
        .expect("ask_user ran");
    assert_eq!(elicited["error"]["code"], -32014, "{got:?}");
    assert!(elicited["error"]["message"]
        .as_str()
        .unwrap()
        .contains("github"));
    // Nothing denied sampling here: the default lets a server ask an agent that uses it.
    assert_eq!(call(&out, "ask_model")["text"], "model said: four", "{out}");
}

/// A rule of the wrong direction is refused at load, naming the key.
#[test]
fn a_server_request_in_a_client_rule_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[agents]\ncgroups = [\"/agents\"]\n\
         [[principal]]\nname = \"agent\"\nusers = [\"root\"]\n\
         [[rule]]\nprincipal = \"agent\"\nmethods = [\"sampling/createMessage\"]\naction = \"deny\"\n",
    )
    .unwrap();
    let out = Command::new(gateway_tests::gateway_bin())
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rule[0].methods") && err.contains("server_to_client"),
        "{err}"
    );
}

/// The same over stdio, where the gateway answers the server on its stdin and lists it
/// again there: a denied sampling request, and a tool changed between two calls.
#[test]
fn over_stdio_a_denied_request_is_answered_on_stdin_and_a_changed_tool_is_held() {
    gateway_tests::require_privileges();
    const AGENT: &str = "mcp-agent";
    let dir = tempfile::Builder::new()
        .prefix("mcp-gw-s2c-stdio-")
        .tempdir()
        .unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let script = dir.path().join("asking_server.py");
    std::fs::write(&script, SERVER).unwrap();
    let log = dir.path().join("received.jsonl");
    let python3 = venv_python().with_file_name("python3");
    let gw = Gateway::start(
        "s2c-stdio",
        GatewayOptions {
            ports: vec![free_port()],
            pins: "mode = \"tofu\"\n".into(),
            extra: format!(
                "[[server]]\nname = \"asking\"\ncommand = [\"*/python3*\", \"{}\"]\n\
                 [policy]\nmode = \"enforce\"\n\
                 [[principal]]\nname = \"agent\"\nusers = [\"{AGENT}\"]\n\
                 {}\
                 [[rule]]\nprincipal = \"agent\"\nserver = \"asking\"\naction = \"allow\"\n",
                script.display(),
                DENY_SAMPLING,
            ),
            ..Default::default()
        },
    );
    let argv = serde_json::json!([python3, script, "0", "stdio", log]);
    let args: Vec<String> = [
        "-c",
        CLIENT,
        &argv.to_string(),
        "stdio",
        "-",
        "list",
        "ask_model",
        "target",
        "change_target",
        "target",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = gw
        .agent_stdio(AGENT, venv_python().to_str().unwrap(), &args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}\n--- daemon:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    let out: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out["asked"], serde_json::json!([]), "{out}");
    assert!(
        call(&out, "ask_model")["text"]
            .as_str()
            .unwrap()
            .starts_with("refused -32012"),
        "{out}"
    );
    let calls = out["calls"].as_array().unwrap();
    assert_eq!(calls[2]["text"], "target ran with x", "{out}");
    assert_eq!(calls[4]["code"], -32015, "{out}");
    let refused = gw.wait_record("of the refused sampling request", |r| {
        r["type"] == "mcp" && r["method"] == "sampling/createMessage"
    });
    assert_eq!(refused["transport"], "stdio", "{refused}");
    assert_eq!(refused["outcome"], "refused", "{refused}");
    gw.wait_record("of the gateway's own listing over stdio", |r| {
        r["type"] == "mcp"
            && r["method"] == "tools/list"
            && r["outcome"] == "ok"
            && r["pins"].as_array().is_some_and(|p| {
                p.iter()
                    .any(|e| e["event"] == "held" && e["name"] == "target")
            })
    });
}

/// `action = "ask"`: the server's elicitation waits for a person (the agent's stream waits
/// behind it); approved, the agent answers it; denied, the server gets the refusal and the
/// agent never sees it.
#[test]
fn an_elicitation_a_rule_holds_waits_for_a_person() {
    gateway_tests::require_privileges();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("received.jsonl");
    let srv = server(port, "sse", &log);
    let gw = gateway(
        "s2c-ask",
        port,
        "[approvals]\ntimeout_s = 30\n\
         [[rule]]\nprincipal = \"agent\"\nserver = \"asking\"\ndirection = \"server_to_client\"\n\
         methods = [\"elicitation/create\"]\naction = \"ask\"\n",
        "redact",
        "",
    );
    let done = std::sync::atomic::AtomicBool::new(false);
    let out = std::thread::scope(|s| {
        // The administrator: approves the first request held, denies the second.
        s.spawn(|| {
            let mut seen = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let list = gw.cli(&["approvals", "list", "--json"]);
                if let Ok(list) = serde_json::from_slice::<Value>(&list.stdout) {
                    for h in list["held"].as_array().into_iter().flatten() {
                        if h["call"]["method"] != "elicitation/create" {
                            continue;
                        }
                        let id = h["id"].to_string();
                        seen += 1;
                        if seen == 1 {
                            gw.cli(&["approvals", "approve", &id]);
                        } else {
                            gw.cli(&["approvals", "deny", &id, "--reason", "not this one"]);
                        }
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
        let out = client(
            &gw,
            &srv.url,
            "streamable",
            "fine",
            &["ask_user", "ask_user"],
        );
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        out
    });
    let calls = out["calls"].as_array().unwrap();
    assert_eq!(calls[0]["text"], "user said: fine", "{out}");
    let second = calls[1]["text"].as_str().unwrap();
    assert!(
        second.starts_with("refused -32012") && second.contains("denied by an administrator"),
        "{out}"
    );
    assert_eq!(
        out["asked"],
        serde_json::json!(["elicitation/create"]),
        "{out}"
    );
    let held: Vec<Value> = gw
        .audit_records()
        .into_iter()
        .filter(|r| r["type"] == "approval" && r["event"] == "held")
        .collect();
    assert_eq!(held.len(), 2, "{held:?}");
    assert_eq!(held[0]["call"]["method"], "elicitation/create");
    let refused = gw.wait_record("of the denied elicitation", |r| {
        r["type"] == "mcp" && r["method"] == "elicitation/create" && r["outcome"] == "refused"
    });
    assert_eq!(refused["refusal"], "approval_denied", "{refused}");
}
