//! Bad input on the MCP path: each bad request gets a clear JSON-RPC or HTTP error, never
//! reaches the server when refused, and costs neither the connection's other requests, nor
//! other agents, nor the daemon.

use std::process::{Command, Stdio};

use gateway_tests::{free_port, run_probe, Gateway, GatewayOptions, PYTHON};
use serde_json::Value;

const BAD_AGENT: &str = include_str!("../fixtures/bad_agent.py");
const RAW_AGENT: &str = include_str!("../fixtures/raw_agent.py");

use gateway_tests::fake::{received, start as start_fake};

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
    let died = gw.wait_record("for the stream that died", |r| {
        r["type"] == "mcp" && r["id"] == "13"
    });
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

fn b64(bytes: &[u8]) -> String {
    use std::io::Write;
    // Python does the decoding on the other side; base64 via the interpreter keeps the
    // test crate free of another dependency.
    let mut child = Command::new(PYTHON)
        .args(["-c", "import base64,sys; sys.stdout.write(base64.b64encode(sys.stdin.buffer.read()).decode())"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
}

fn unb64(text: &str) -> Vec<u8> {
    let out = Command::new(PYTHON)
        .args([
            "-c",
            "import base64,sys; sys.stdout.buffer.write(base64.b64decode(sys.argv[1]))",
            text,
        ])
        .output()
        .unwrap();
    out.stdout
}

fn raw_post(gw: &Gateway, port: u16, body: &[u8], headers: &str) -> Value {
    run_probe(gw.agent(
        PYTHON,
        &[
            "-c".into(),
            RAW_AGENT.into(),
            "127.0.0.1".into(),
            port.to_string(),
            b64(body),
            headers.into(),
        ],
    ))
}

#[test]
fn messages_pass_byte_for_byte() {
    let port = free_port();
    let gw = Gateway::start(
        "verbatim",
        GatewayOptions {
            ports: vec![port],
            ..Default::default()
        },
    );
    let log = gw.dir.path().join("server.log");
    let _server = start_fake(port, &log);
    // Legal JSON-RPC in an unusual shape: odd spacing, escapes, key order, unknown fields.
    let body = "{\"params\" : {\"name\":\"verbatim\", \"arguments\":{\"q\":\"\\u00e9t\u{e9}\"}, \"x-future\":[1e2]},\n \"method\":\"tools/call\",\"id\":\"a-1\",\"jsonrpc\":\"2.0\"}";
    let out = raw_post(&gw, port, body.as_bytes(), "{}");
    assert_eq!(out["status"], 200, "{out}");
    // What the server received is exactly what the agent sent...
    let at_server = received(&log);
    assert_eq!(at_server[0]["raw"], body, "{at_server:?}");
    // ...and what the agent received is exactly what the server sent.
    let expected = "{ \"id\" :\"a-1\",\"result\":{\"text\":\"caf\\u00e9 \u{2615}\",\"x-unknown\":[1,2.50,{}]} ,  \"jsonrpc\":\"2.0\"}";
    let got = unb64(out["body_b64"].as_str().unwrap());
    assert_eq!(String::from_utf8_lossy(&got), expected);
}

#[test]
fn a_session_id_is_not_a_credential_for_another_program() {
    let port = free_port();
    let gw = Gateway::start(
        "hijack",
        GatewayOptions {
            ports: vec![port],
            ..Default::default()
        },
    );
    let log = gw.dir.path().join("server.log");
    let _server = start_fake(port, &log);
    let init = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"a","version":"1"}}}"#;
    let out = raw_post(&gw, port, init, "{}");
    let session = out["session"]
        .as_str()
        .expect("the server opened a session")
        .to_string();

    // The same program (python) goes on using its session.
    let call = br#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    let hdr = format!("{{\"Mcp-Session-Id\": \"{session}\"}}");
    assert_eq!(raw_post(&gw, port, call, &hdr)["status"], 200);

    // Another program presenting the stolen id is refused before the server sees it.
    let mut curl = Command::new("curl");
    curl.args(["-sS", "-X", "POST", "-H", "Content-Type: application/json"])
        .args(["-H", "Accept: application/json, text/event-stream"])
        .args(["-H", &format!("Mcp-Session-Id: {session}")])
        .args([
            "-w",
            "\n%{http_code}",
            "--data",
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#,
        ])
        .arg(format!("http://127.0.0.1:{port}/mcp"));
    let out = gw.wrap(curl).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("403"), "{text}");
    assert!(text.contains("belongs to another principal"), "{text}");
    assert!(text.contains("-32010"), "{text}");
    let ids: Vec<i64> = received(&log)
        .iter()
        .filter_map(|e| e["id"].as_i64())
        .collect();
    assert_eq!(ids, vec![1, 2], "the hijacked request reached the server");
    let refused = gw.wait_record("the refusal", |r| r["outcome"] == "refused");
    assert_eq!(refused["id"], "3");
    assert!(
        refused["principal"]["exe"]
            .as_str()
            .unwrap()
            .contains("curl"),
        "{refused}"
    );
}

/// A number beyond a double or a lone surrogate is JSON the upstream may read (Python reads
/// `1e999` as inf) but the gateway's rule and redaction stages cannot: such a call is
/// refused, so padding the arguments cannot slip past an argument rule or the secret guard.
#[test]
fn values_the_gateway_cannot_read_are_refused_not_forwarded() {
    let port = free_port();
    let gw = Gateway::start(
        "unreadable",
        GatewayOptions {
            ports: vec![port],
            extra: r#"
[redact]
mode_requests = "refuse"

[policy]
mode = "enforce"

[[principal]]
name = "agent"
users = [0]

[[rule]]
principal = "agent"
tools = ["echo"]
action = "allow"
arguments = { type = "object", properties = { a = { type = "integer", maximum = 10 } } }
"#
            .into(),
            ..Default::default()
        },
    );
    let log = gw.dir.path().join("server.log");
    let _server = start_fake(port, &log);
    let call = |id: u32, args: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{args}}}}}"#
        )
    };

    // Within the rule: forwarded.
    let ok = raw_post(&gw, port, call(1, r#"{"a":5}"#).as_bytes(), "{}");
    assert_eq!(ok["status"], 200, "{ok}");
    // Beyond the rule: denied.
    let denied = raw_post(&gw, port, call(2, r#"{"a":1000}"#).as_bytes(), "{}");
    assert_eq!(denied["status"], 200, "{denied}");
    assert_eq!(error_code(&body(&denied)), -32012, "{denied}");

    for (id, args) in [
        (3, r#"{"a":1000,"pad":1e999}"#),
        (4, r#"{"a":1000,"pad":"\ud800"}"#),
        (5, r#"{"a":1,"key":"AKIAQX3TZLMB7NRWK2EH","pad":-1E400}"#),
    ] {
        let r = raw_post(&gw, port, call(id, args).as_bytes(), "{}");
        assert_eq!(r["status"], 400, "{args}: {r}");
        let reply = body(&r);
        assert_eq!(error_code(&reply), -32700, "{args}: {reply}");
        let msg = reply["error"]["message"].as_str().unwrap();
        assert!(msg.contains("cannot check"), "{args}: {msg}");
    }
    let ids: Vec<Value> = received(&log).iter().map(|m| m["id"].clone()).collect();
    assert_eq!(
        ids,
        vec![Value::from(1)],
        "only the call within the rule reached the server"
    );
}

/// The JSON body of a `raw_post` answer.
fn body(r: &Value) -> Value {
    serde_json::from_slice(&unb64(r["body_b64"].as_str().unwrap())).unwrap()
}

/// A call whose name, uri or `_meta` the gateway cannot read unambiguously is refused with
/// -32602 and never reaches the server: a member twice (also spelled with an escape), `_meta`
/// twice, a `progressToken` twice or of the wrong type, a protocol version that is not a
/// string — alone and inside a batch. With any of these, a lenient read had found no name,
/// so a rule denying the tool did not match and the pins check was skipped.
#[test]
fn a_call_whose_name_cannot_be_read_unambiguously_is_refused() {
    let port = free_port();
    let gw = Gateway::start(
        "dup-keys",
        GatewayOptions {
            ports: vec![port],
            extra: "[policy]\nmode = \"enforce\"\n\
                    [[principal]]\nname = \"agent\"\nusers = [0]\n\
                    [[rule]]\nprincipal = \"agent\"\ntools = [\"delete_all\"]\naction = \"deny\"\n\
                    [[rule]]\nprincipal = \"agent\"\naction = \"allow\"\n"
                .into(),
            ..Default::default()
        },
    );
    let log = gw.dir.path().join("server.log");
    let _server = start_fake(port, &log);
    let v = "io.modelcontextprotocol/protocolVersion";
    let attacks = [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_all","name":"delete_all"}}"#.to_string(),
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"other","na\u006de":"delete_all"}}"#.to_string(),
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"delete_all","_meta":{},"_meta":{}}}"#.to_string(),
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"delete_all","_meta":{"progressToken":1,"progressToken":2}}}"#.to_string(),
        r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"delete_all","_meta":{"progressToken":true}}}"#.to_string(),
        format!(r#"{{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{{"name":"delete_all","_meta":{{"{v}":5}}}}}}"#),
        r#"[{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"other"}},{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"delete_all","name":"delete_all"}}]"#.to_string(),
    ];
    for body in &attacks {
        let out = raw_post(&gw, port, body.as_bytes(), "{}");
        assert_eq!(out["status"], 400, "{body}: {out}");
        let reply = String::from_utf8(unb64(out["body_b64"].as_str().unwrap())).unwrap();
        assert!(reply.contains("-32602"), "{body}: {reply}");
        assert!(
            reply.contains("cannot read this call unambiguously"),
            "{body}: {reply}"
        );
    }
    assert!(
        received(&log).is_empty(),
        "a refused call reached the server: {:?}",
        received(&log)
    );
    // The audit has each refusal, with its reason.
    let refused = gw
        .audit_records()
        .into_iter()
        .filter(|r| r["type"] == "mcp" && r["outcome"] == "refused")
        .count();
    assert!(refused >= attacks.len(), "{:#?}", gw.audit_records());
    // An ordinary call still goes through.
    let ok = raw_post(
        &gw,
        port,
        br#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"other","arguments":{}}}"#,
        "{}",
    );
    assert_eq!(ok["status"], 200, "{ok}");
    assert_eq!(received(&log).len(), 1);
}

/// What an agent sends can be quoted back in a refusal (a tool's name), and each refusal is
/// copied into every request's error and every message's record: the quote is bounded, and
/// a batch of more messages than may be pending is refused before anything is made of it.
#[test]
fn a_refusal_quoting_the_agent_stays_small_and_huge_batches_are_refused_whole() {
    let port = free_port();
    let gw = Gateway::start(
        "bad-bounded",
        GatewayOptions {
            ports: vec![port],
            extra: "[policy]\nmode = \"enforce\"\n[[principal]]\nname = \"agent\"\nusers = [0]\n\
                    [[rule]]\nprincipal = \"agent\"\ntools = [\"echo\"]\naction = \"allow\"\n"
                .into(),
            ..Default::default()
        },
    );
    let log = gw.dir.path().join("server.log");
    let _server = start_fake(port, &log);

    let name = "n".repeat(60_000);
    let call = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{name}","arguments":{{}}}}}}"#
    );
    let r = raw_post(&gw, port, call.as_bytes(), "{}");
    assert_eq!(r["status"], 200, "{r}");
    let reply = body(&r);
    assert_eq!(error_code(&reply), -32012, "{reply}");
    let msg = reply["error"]["message"].as_str().unwrap();
    assert!(msg.len() < 1200, "{} bytes of message", msg.len());
    assert!(msg.ends_with("bytes)"), "says it was cut: {msg}");

    let batch: Vec<String> = (0..1100)
        .map(|i| format!(r#"{{"jsonrpc":"2.0","method":"notifications/n{i}"}}"#))
        .collect();
    let batch = format!("[{}]", batch.join(","));
    let r = raw_post(
        &gw,
        port,
        batch.as_bytes(),
        r#"{"MCP-Protocol-Version": "2025-03-26"}"#,
    );
    assert_eq!(r["status"], 400, "{r}");
    let reply = body(&r);
    assert_eq!(error_code(&reply), -32600, "{reply}");
    let msg = reply["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("1100 messages") && msg.contains("http.max_pending"),
        "{msg}"
    );
    assert!(received(&log).is_empty(), "nothing reached the server");
}
