//! `ask` rules with a real MCP server (the official Python SDK) and an unmodified SDK
//! agent: the call is held while the agent waits, and an administrator answers it with
//! `mcp-gateway approvals` through the daemon's admin socket — approved, denied, or left
//! to time out. Every step is in the audit with the uid that decided.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gateway_tests::peers::{venv_python, Peer};
use gateway_tests::{free_port, gateway_bin, Gateway, GatewayOptions};
use serde_json::{json, Value};

const CLIENT: &str = include_str!("../fixtures/policy_client.py");
fn bank(port: u16) -> Peer {
    gateway_tests::peers::rug_server(port, "v2")
}

/// A daemon for one test (`name` must be unique: it names the daemon's pins).
fn gateway(name: &str, port: u16, timeout_s: u64, approvals: &str) -> Gateway {
    Gateway::start(
        name,
        GatewayOptions {
            ports: vec![port],
            extra: format!(
                "[[server]]\nname = \"bank\"\naddress = \"127.0.0.1:{port}\"\n\
                 [approvals]\ntimeout_s = {timeout_s}\n{approvals}\
                 [policy]\nmode = \"enforce\"\n\
                 [[principal]]\nname = \"agent\"\nexe = [\"/usr/bin/python3*\"]\n\
                 [[rule]]\nprincipal = \"agent\"\nserver = \"bank\"\ntools = [\"withdraw_funds\"]\naction = \"ask\"\n\
                 [[rule]]\nprincipal = \"agent\"\nserver = \"bank\"\naction = \"allow\"\n"
            ),
            ..Default::default()
        },
    )
}

/// The SDK agent: lists the tools, then makes `calls`; it runs while the test plays
/// administrator.
fn agent(gw: &Gateway, url: &str, calls: Value) -> Child {
    let mut cmd = Command::new(venv_python());
    cmd.arg("-c").arg(CLIENT).arg(url).arg(calls.to_string());
    gw.wrap(cmd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the agent")
}

fn withdraw(gw: &Gateway, url: &str, amount: u32) -> Child {
    let calls =
        json!([{"name": "withdraw_funds", "arguments": {"account": "acme", "amount": amount}}]);
    agent(gw, url, calls)
}

fn finish(mut agent: Child) -> Value {
    let mut out = String::new();
    agent
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = agent.wait().unwrap();
    assert!(status.success(), "agent failed: {out}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{out:?}: {e}"))
}

fn cli(gw: &Gateway, args: &[&str]) -> String {
    let out = gw.cli(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "mcp-gateway {args:?}: {stdout}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    stdout
}

/// Waits until the daemon holds a call for `amount`; returns its id.
fn held(gw: &Gateway, amount: u32) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list: Value = serde_json::from_str(&cli(gw, &["approvals", "list", "--json"])).unwrap();
        if let Some(h) = list["held"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["call"]["arguments"]["amount"] == amount)
        {
            let c = &h["call"];
            assert_eq!(c["tool"], "withdraw_funds", "{h}");
            assert_eq!(c["server"], "bank");
            assert_eq!(c["principal"], "agent");
            assert!(c["arguments_sha256"].as_str().unwrap().len() == 64, "{h}");
            return h["id"].as_u64().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no held call: {list}\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn held_calls_are_approved_denied_or_time_out() {
    let port = free_port();
    let server = bank(port);
    let gw = gateway("approvals-decide", port, 3, "");

    // Approved from the command line: the call completes.
    let agent = withdraw(&gw, &server.url, 5);
    let id = held(&gw, 5);
    let text = cli(
        &gw,
        &[
            "approvals",
            "approve",
            &id.to_string(),
            "--reason",
            "payroll",
        ],
    );
    assert!(text.contains(&format!("approved call {id}")), "{text}");
    let out = finish(agent);
    assert_eq!(out["calls"][0]["ok"], true, "{out}");
    assert!(out["calls"][0]["text"]
        .as_str()
        .unwrap()
        .contains("withdrew 5"));

    // Denied: a clear error naming who and why; the server never sees it.
    let agent = withdraw(&gw, &server.url, 7);
    let id = held(&gw, 7);
    cli(
        &gw,
        &["approvals", "deny", &id.to_string(), "--reason", "too much"],
    );
    let out = finish(agent);
    let c = &out["calls"][0];
    assert_eq!(c["ok"], false, "{out}");
    assert_eq!(c["code"], -32012, "{out}");
    let e = c["error"].as_str().unwrap();
    assert!(
        e.contains("denied by an administrator (uid 0): too much"),
        "{e}"
    );

    // Nobody answers: denied when the timeout passes.
    let t0 = Instant::now();
    let out = finish(withdraw(&gw, &server.url, 9));
    assert!(t0.elapsed() >= Duration::from_secs(3));
    let e = out["calls"][0]["error"].as_str().unwrap_or_default();
    assert!(e.contains("none came within 3 s"), "{out}");

    let records = gw.audit_records();
    let events: Vec<(&str, Option<u64>)> = records
        .iter()
        .filter(|r| r["type"] == "approval")
        .map(|r| (r["event"].as_str().unwrap(), r["by_uid"].as_u64()))
        .collect();
    assert_eq!(
        events,
        [
            ("held", None),
            ("approved", Some(0)),
            ("held", None),
            ("denied", Some(0)),
            ("held", None),
            ("timed_out", None)
        ],
        "{records:#?}"
    );
    let calls: Vec<&Value> = records
        .iter()
        .filter(|r| r["type"] == "mcp_call" && r["name"] == "withdraw_funds")
        .collect();
    assert_eq!(
        calls.len(),
        1,
        "only the approved call was forwarded: {calls:#?}"
    );
    assert_eq!(calls[0]["decision"]["reason"], "approved by uid 0 (call)");

    // The ledger names each held call by its connection and the digest of its
    // parameters; the arguments the administrator decided on (shown by `approvals list`,
    // above) stay out of it.
    // (The test's agent has its calls on its command line, which flow records show.)
    for r in records.iter().filter(|r| r["type"] != "flow") {
        assert!(
            !r.to_string().contains("acme"),
            "arguments in the ledger: {r}"
        );
    }
    let approvals: Vec<&Value> = records.iter().filter(|r| r["type"] == "approval").collect();
    for a in &approvals {
        let call = a["call"].as_object().unwrap();
        assert!(!call.contains_key("arguments"), "{a}");
        assert_eq!(call["arguments_sha256"].as_str().unwrap().len(), 64, "{a}");
    }
    let approved = approvals.iter().find(|a| a["event"] == "approved").unwrap();
    assert_eq!(
        approved["call"]["connection"], calls[0]["connection"],
        "{approved}"
    );
    assert_eq!(
        approved["call"]["arguments_sha256"], calls[0]["params_sha256"],
        "{approved}"
    );
    let denied = approvals.iter().find(|a| a["event"] == "denied").unwrap();
    let refused = records
        .iter()
        .find(|r| {
            r["type"] == "mcp" && r["name"] == "withdraw_funds" && r["refusal"] == "approval_denied"
        })
        .unwrap_or_else(|| panic!("no refused record: {records:#?}"));
    assert_eq!(
        denied["call"]["connection"], refused["connection"],
        "{denied}"
    );
}

#[test]
fn approvals_widened_to_the_session_and_refused_to_non_admins() {
    let port = free_port();
    let server = bank(port);
    let gw = gateway("approvals-widen", port, 30, "");

    // The agent withdraws twice in one session; approving the first for the session lets
    // the second through without a second question.
    let calls = json!([
        {"name": "withdraw_funds", "arguments": {"account": "acme", "amount": 11}},
        {"name": "withdraw_funds", "arguments": {"account": "acme", "amount": 12}},
    ]);
    let running = agent(&gw, &server.url, calls);
    let id = held(&gw, 11);
    cli(
        &gw,
        &["approvals", "approve", &id.to_string(), "--for-session"],
    );
    let out = finish(running);
    assert_eq!(out["calls"][0]["ok"], true, "{out}");
    assert_eq!(out["calls"][1]["ok"], true, "{out}");
    assert!(gw
        .audit_records()
        .iter()
        .any(|r| r["type"] == "approval" && r["event"] == "granted"));

    // An ordinary user may not use the admin socket.
    for p in [gw.dir.path(), gw.config.as_path()] {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(gateway_bin())
        .args(["approvals", "list", "--config"])
        .arg(&gw.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("permission denied on") && err.contains("admin.sock"),
        "the socket refuses uid 65534: {err}"
    );
}

#[test]
fn an_agent_waiting_with_a_progress_token_hears_why() {
    let port = free_port();
    let server = bank(port);
    let gw = gateway("approvals-progress", port, 30, "progress_interval_s = 1\n");
    let calls = json!([{"name": "withdraw_funds", "progress": true,
                        "arguments": {"account": "acme", "amount": 21}}]);
    let running = agent(&gw, &server.url, calls);
    let id = held(&gw, 21);
    std::thread::sleep(Duration::from_millis(2500));
    cli(&gw, &["approvals", "approve", &id.to_string()]);
    let out = finish(running);
    let c = &out["calls"][0];
    assert_eq!(c["ok"], true, "{out}");
    assert!(c["text"].as_str().unwrap().contains("withdrew 21"), "{out}");
    let notes = c["progress"].as_array().unwrap();
    assert!(notes.len() >= 2, "progress while held: {out}");
    assert!(
        notes[0]
            .as_str()
            .unwrap()
            .contains(&format!("approvals approve {id}")),
        "{out}"
    );
}
