//! Redaction on the wire: secrets and personal data in a tool result reach the unmodified
//! agent as markers — in a JSON response and in an SSE stream split mid-secret — and an
//! agent sending a private key in its arguments is refused when so configured. The ledger
//! counts what was redacted and never holds the values.

use gateway_tests::fake::{received, start as start_fake};
use gateway_tests::{free_port, run_probe, Gateway, GatewayOptions, PYTHON};
use serde_json::{json, Value};

const AWS_KEY: &str = "AKIAZ7QX3M2L5RT6PW4N";
const BCRYPT: &str = "$2b$12$KIXQJQ3gV0pW3dX8b9Yk8eQ5v7m2WvZ3Yx1dG9uO8kH0m1QvT6a2C";
const EMAIL: &str = "jane.doe@acme-robotics.com";

const AGENT: &str = r#"
import http.client, json, sys
port = int(sys.argv[1])
def call(i, name, args):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    c.request("POST", "/mcp", body=json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call",
              "params": {"name": name, "arguments": args}}),
              headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
    r = c.getresponse()
    raw = r.read().decode()
    if (r.getheader("Content-Type") or "").startswith("text/event-stream"):
        msgs = [json.loads(l[5:]) for l in raw.splitlines() if l.startswith("data:")]
        return {"status": r.status, "sse": True, "body": msgs[-1]}
    return {"status": r.status, "sse": False, "body": json.loads(raw)}
key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\nQyNTUxOQAAACDx7v3bPqY6uM2hX0nU7wQk2sJd0aE5gq8tYk1fH2nQ5AAAAJgN5l0gDeZd\n-----END OPENSSH PRIVATE KEY-----"
print(json.dumps({
    "json": call(1, "secret_json", {}),
    "sse": call(2, "secret_sse", {}),
    "exfiltrate": call(3, "echo", {"note": "here is my key " + key}),
    "clean": call(4, "echo", {"note": "nothing to see"}),
}))
"#;

/// An agent that makes each call of argv[2] (a JSON list of [id, tool, arguments]) as one
/// raw POST and prints, for each, the status and the body exactly as it arrived.
const RAW_CALLS: &str = r#"
import http.client, json, sys
port, calls = int(sys.argv[1]), json.loads(sys.argv[2])
out = []
for i, name, args in calls:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    c.request("POST", "/mcp", body=json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call",
              "params": {"name": name, "arguments": args}}),
              headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
    r = c.getresponse()
    try:
        raw = r.read().decode()
    except Exception as e:
        raw = "the response could not be read: %r" % e
    out.append({"status": r.status, "raw": raw})
print(json.dumps(out))
"#;

/// A gateway with the fake server behind it, and `calls` made through it by `RAW_CALLS`.
fn raw_calls(name: &str, calls: Value) -> (Gateway, Vec<Value>) {
    let port = free_port();
    let gw = Gateway::start(
        name,
        GatewayOptions {
            ports: vec![port],
            ..Default::default()
        },
    );
    let log = gw.dir.path().join("server.log");
    let server = start_fake(port, &log);
    let out = run_probe(gw.agent(
        PYTHON,
        &[
            "-c".into(),
            RAW_CALLS.into(),
            port.to_string(),
            calls.to_string(),
        ],
    ));
    drop(server);
    (gw, out.as_array().expect("a list").clone())
}

fn assert_redacted(result: &Value) {
    let text = result["content"][0]["text"].as_str().unwrap();
    for secret in [AWS_KEY, BCRYPT, EMAIL] {
        assert!(!text.contains(secret), "{secret} reached the agent: {text}");
    }
    assert!(text.contains("[REDACTED:"), "{text}");
    assert!(text.starts_with("deploy log: user [REDACTED:"), "{text}");
    // structuredContent keeps its shape: strings stay strings.
    let owner = result["structuredContent"]["owner"].as_str().unwrap();
    let hash = result["structuredContent"]["hash"].as_str().unwrap();
    assert!(
        owner.starts_with("[REDACTED:") && hash.starts_with("[REDACTED:"),
        "{result}"
    );
}

#[test]
fn secrets_in_results_are_redacted_and_secrets_in_arguments_refused() {
    let port = free_port();
    let gw = Gateway::start(
        "redact",
        GatewayOptions {
            ports: vec![port],
            extra: "[redact]\nmode_requests = \"refuse\"\n".into(),
            ..Default::default()
        },
    );
    let log = gw.dir.path().join("server.log");
    let _server = start_fake(port, &log);

    let out = run_probe(gw.agent(PYTHON, &["-c".into(), AGENT.into(), port.to_string()]));
    assert_eq!(out["json"]["sse"], false);
    assert_redacted(&out["json"]["body"]["result"]);
    assert_eq!(out["sse"]["sse"], true, "{out}");
    assert_redacted(&out["sse"]["body"]["result"]);

    let r = &out["exfiltrate"];
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["body"]["error"]["code"], -32014, "{r}");
    let msg = r["body"]["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("private_key") || msg.contains("private key"),
        "{msg}"
    );
    assert!(
        !msg.contains("BEGIN OPENSSH"),
        "the refusal must not echo the secret: {msg}"
    );
    assert_eq!(out["clean"]["status"], 200);
    let ids: Vec<i64> = received(&log)
        .iter()
        .filter_map(|e| e["id"].as_i64())
        .collect();
    assert_eq!(ids, vec![1, 2, 4], "the refused call reached the server");

    // The ledger counts redactions per detector and never holds a value.
    let rec = gw.wait_record("the JSON exchange", |r| {
        r["type"] == "mcp" && r["id"] == "1"
    });
    let counts = rec["redactions"].as_object().expect("redaction counts");
    assert!(
        counts.values().map(|v| v.as_u64().unwrap()).sum::<u64>() >= 5,
        "{rec}"
    );
    let sse = gw.wait_record("the SSE exchange", |r| r["type"] == "mcp" && r["id"] == "2");
    assert_eq!(sse["redactions"], rec["redactions"]);
    let ledger = std::fs::read_to_string(&gw.audit).unwrap();
    for secret in [AWS_KEY, BCRYPT, EMAIL, "BEGIN OPENSSH"] {
        assert!(!ledger.contains(secret), "{secret} is in the ledger");
    }
}

#[test]
fn arguments_are_redacted_in_redact_mode() {
    let port = free_port();
    let gw = Gateway::start(
        "redact-args",
        GatewayOptions {
            ports: vec![port],
            extra: "[redact]\nmode_requests = \"redact\"\n".into(),
            ..Default::default()
        },
    );
    let log = gw.dir.path().join("server.log");
    let _server = start_fake(port, &log);
    let out = run_probe(gw.agent(PYTHON, &["-c".into(), AGENT.into(), port.to_string()]));
    assert_eq!(out["exfiltrate"]["status"], 200, "{out}");
    // The server got the call, with the key replaced by a marker.
    let at_server = received(&log);
    let call = at_server
        .iter()
        .find(|e| e["id"] == 3)
        .expect("call 3 forwarded");
    let raw = call["raw"].as_str().unwrap();
    assert!(!raw.contains("BEGIN OPENSSH"), "{raw}");
    assert!(raw.contains("[REDACTED:"), "{raw}");
    let rec = gw.wait_record("the call record", |r| {
        r["type"] == "mcp_call" && r["id"] == "3"
    });
    assert!(rec["argument_redactions"].is_object(), "{rec}");
    // `status` counts every redaction the ledger shows: in results and in arguments.
    let sum = |key: &str| -> u64 {
        gw.audit_records()
            .iter()
            .filter_map(|r| r[key].as_object())
            .flat_map(|o| o.values())
            .filter_map(|n| n.as_u64())
            .sum()
    };
    let (results, arguments) = (sum("redactions"), sum("argument_redactions"));
    assert!(arguments > 0);
    let st = gw.cli(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(
        status["metrics"]["redactions"].as_u64(),
        Some(results + arguments),
        "{}",
        status["metrics"]
    );
}

/// A server result holding a number no double holds (`1e999`, which Python reads as inf)
/// cannot be read for redaction, so it never reaches the agent: as JSON the agent gets a
/// 502, as an SSE event the event is dropped; both are recorded.
#[test]
fn results_the_gateway_cannot_read_never_reach_the_agent() {
    const RAW: &str = r#"
import http.client, json, sys
port = int(sys.argv[1])
def call(i, name):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    c.request("POST", "/mcp", body=json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call",
              "params": {"name": name, "arguments": {}}}),
              headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
    r = c.getresponse()
    return {"status": r.status, "raw": r.read().decode()}
print(json.dumps({"json": call(1, "secret_json_inf"), "sse": call(2, "secret_sse_inf"),
                  "twice": call(3, "twice")}))
"#;
    let port = free_port();
    let gw = Gateway::start(
        "redactinf",
        GatewayOptions {
            ports: vec![port],
            ..Default::default()
        },
    );
    let log = gw.dir.path().join("server.log");
    let _server = start_fake(port, &log);
    let out = run_probe(gw.agent(PYTHON, &["-c".into(), RAW.into(), port.to_string()]));
    for case in ["json", "sse"] {
        let raw = out[case]["raw"].as_str().unwrap();
        for secret in [AWS_KEY, BCRYPT, EMAIL] {
            assert!(
                !raw.contains(secret),
                "{case}: {secret} reached the agent: {raw}"
            );
        }
    }
    // A result with a key given twice (`content`, the first copy holding a secret): a
    // client reading the first copy would see what redaction of the last never looked at.
    let twice = out["twice"]["raw"].as_str().unwrap();
    assert!(!twice.contains(AWS_KEY), "{twice}");
    assert_eq!(out["twice"]["status"], 502, "{out}");
    assert!(twice.contains("appears twice"), "{twice}");
    assert_eq!(out["json"]["status"], 502, "{out}");
    assert!(
        out["json"]["raw"]
            .as_str()
            .unwrap()
            .contains("cannot check"),
        "{out}"
    );
    let dropped = gw.wait_record("the dropped event", |r| {
        r["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("server event dropped"))
    });
    assert!(
        dropped["detail"]
            .as_str()
            .unwrap()
            .contains("number out of range"),
        "{dropped}"
    );
}

/// A server's result reaches the agent only as the gateway read it, whatever the spelling of
/// its Content-Type: in any case or with parameters it is read (and redacted) as clients
/// read it; a type some client reads one way and another the other, or a success body of a
/// type no client reads while a call waits, is not passed on (502 and a JSON-RPC error).
#[test]
fn a_content_type_in_any_spelling_does_not_carry_a_result_past_redaction() {
    let read = [
        "Application/JSON",
        "APPLICATION/JSON; charset=utf-8",
        "Text/Event-Stream",
        "text/event-stream;charset=UTF-8",
    ];
    let refused = ["text/plain", "application/json; x=text/event-stream"];
    let calls: Vec<Value> = read
        .iter()
        .chain(refused.iter())
        .enumerate()
        .map(|(i, ct)| json!([i + 1, "secret_typed", {"content_type": ct}]))
        .collect();
    let (_gw, out) = raw_calls("redact-ctype", Value::Array(calls));
    let out = &out;
    for case in out {
        let raw = case["raw"].as_str().unwrap();
        for secret in [AWS_KEY, EMAIL] {
            assert!(!raw.contains(secret), "{secret} reached the agent: {case}");
        }
    }
    for case in &out[..read.len()] {
        assert_eq!(case["status"], 200, "{case}");
        assert!(
            case["raw"].as_str().unwrap().contains("[REDACTED:"),
            "{case}"
        );
    }
    for case in &out[read.len()..] {
        assert_eq!(case["status"], 502, "{case}");
        let raw = case["raw"].as_str().unwrap();
        assert!(raw.contains("cannot read"), "{case}");
        assert!(raw.contains("\"error\""), "a JSON-RPC error: {case}");
    }
}

/// Secrets in a server's JSON-RPC error (its message and data) are redacted like a result's,
/// and a result whose id is written `2.0` for request `2` is paired, so redacted too.
#[test]
fn secrets_in_errors_and_under_a_float_id_are_redacted() {
    let (_gw, out) = raw_calls(
        "redact-errors",
        json!([[2, "secret_error", {}], [3, "secret_float_id", {}]]),
    );
    let out = json!({"secret_error": out[0], "secret_float_id": out[1]});
    for case in ["secret_error", "secret_float_id"] {
        let raw = out[case]["raw"].as_str().unwrap();
        assert_eq!(out[case]["status"], 200, "{out}");
        for secret in [AWS_KEY, BCRYPT, EMAIL] {
            assert!(
                !raw.contains(secret),
                "{case}: {secret} reached the agent: {raw}"
            );
        }
        assert!(raw.contains("[REDACTED:"), "{case}: {raw}");
    }
    let error: Value = serde_json::from_str(out["secret_error"]["raw"].as_str().unwrap()).unwrap();
    assert_eq!(error["error"]["code"], -32000, "{error}");
}

/// On an MCP event stream, an event the gateway cannot read as JSON-RPC (a duplicated key)
/// and a response to no request it saw never reach the agent: they were never checked.
/// The stream's real answer does, and the audit records each dropped event.
#[test]
fn stray_and_unreadable_server_events_never_reach_the_agent() {
    let (gw, out) = raw_calls("redact-stray", json!([[5, "secret_stray_events", {}]]));
    let out = &out[0];
    let raw = out["raw"].as_str().unwrap();
    for secret in [AWS_KEY, BCRYPT, EMAIL] {
        assert!(!raw.contains(secret), "{secret} reached the agent: {raw}");
    }
    assert!(raw.contains("clean"), "the real answer arrived: {raw}");
    assert!(!raw.contains("1005"), "the stray response arrived: {raw}");
    let dropped: Vec<Value> = gw
        .audit_records()
        .into_iter()
        .filter(|r| {
            r["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("server event dropped"))
        })
        .collect();
    assert_eq!(dropped.len(), 2, "{:#?}", gw.audit_records());
}

/// The same in one JSON body: a response there to no request of the POST was never checked,
/// so the whole answer is dropped and the call gets an error instead (502).
#[test]
fn a_json_answer_with_a_stray_response_never_reaches_the_agent() {
    let (gw, out) = raw_calls("redact-stray-json", json!([[6, "secret_stray_json", {}]]));
    let out = &out[0];
    let raw = out["raw"].as_str().unwrap();
    for secret in [AWS_KEY, BCRYPT, EMAIL] {
        assert!(!raw.contains(secret), "{secret} reached the agent: {raw}");
    }
    assert_eq!(out["status"], 502, "{out}");
    assert!(raw.contains("no request of this POST"), "{out}");
    let dropped = gw.wait_record("the dropped response", |r| {
        r["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("server response dropped"))
    });
    assert_eq!(dropped["id"], "1006", "{dropped}");
}

/// An agent that POSTs each raw body of argv[2] (a JSON list of strings) as it is and
/// prints, for each, the status and the body that came back.
const RAW_BODIES: &str = r#"
import http.client, json, sys
port, bodies = int(sys.argv[1]), json.loads(sys.argv[2])
out = []
for body in bodies:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    c.request("POST", "/mcp", body=body.encode(),
              headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
    r = c.getresponse()
    out.append({"status": r.status, "raw": r.read().decode()})
print(json.dumps(out))
"#;

/// Redacting a call's arguments changes those and nothing else the server receives (the
/// rest of the body stays as the agent wrote it, spacing and key order too); arguments
/// given twice, which the gateway would check once and a server might read otherwise, are
/// refused and never reach the server.
#[test]
fn redacted_arguments_change_nothing_else_and_duplicated_arguments_are_refused() {
    let port = free_port();
    let gw = Gateway::start(
        "redact-splice",
        GatewayOptions {
            ports: vec![port],
            extra: "[redact]\nmode_requests = \"redact\"\n".into(),
            ..Default::default()
        },
    );
    let log = gw.dir.path().join("server.log");
    let _server = start_fake(port, &log);
    let spliced = format!(
        "{{ \"params\" : {{\"_meta\": {{\"progressToken\": 5}}, \"arguments\" : {{\"note\": \"key {AWS_KEY}\"}},\n \"name\":\"echo\"}}, \"id\":7, \"method\":\"tools/call\", \"jsonrpc\":\"2.0\" }}"
    );
    let twice = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"note\":\"{AWS_KEY}\"}},\"arguments\":{{\"note\":\"fine\"}}}}}}"
    );
    let out = run_probe(gw.agent(
        PYTHON,
        &[
            "-c".into(),
            RAW_BODIES.into(),
            port.to_string(),
            json!([spliced, twice]).to_string(),
        ],
    ));
    assert_eq!(out[0]["status"], 200, "{out}");
    let at_server = received(&log);
    let call = at_server
        .iter()
        .find(|e| e["id"] == 7)
        .expect("call 7 forwarded");
    let expected = spliced.replace(
        &format!("{{\"note\": \"key {AWS_KEY}\"}}"),
        "{\"note\":\"key [REDACTED:aws_access_key_id]\"}",
    );
    assert_ne!(expected, spliced);
    assert_eq!(call["raw"].as_str(), Some(expected.as_str()), "{call}");
    let rec = gw.wait_record("the call record", |r| {
        r["type"] == "mcp_call" && r["id"] == "7"
    });
    assert_eq!(rec["argument_redactions"]["aws_access_key_id"], 1, "{rec}");

    assert_eq!(out[1]["status"], 400, "{out}");
    let refused: Value = serde_json::from_str(out[1]["raw"].as_str().unwrap()).unwrap();
    assert_eq!(refused["error"]["code"], -32602, "{refused}");
    assert!(
        !at_server.iter().any(|e| e["id"] == 8),
        "the call with its arguments twice reached the server"
    );
    let rec = gw.wait_record("the refusal", |r| r["type"] == "mcp" && r["id"] == "8");
    assert_eq!(rec["outcome"], "refused", "{rec}");
}

/// Whatever the agent sends is guarded, not only a tool's arguments: in `redact` mode a
/// prompt's arguments are redacted like a tool's, and a secret where a marker would change
/// what the message addresses or says (a resource's URI, a tool call's `_meta`, a
/// cancellation's reason) is refused; none of it reaches the server.
#[test]
fn secrets_anywhere_in_what_the_agent_sends_are_redacted_or_refused() {
    let port = free_port();
    let gw = Gateway::start(
        "redact-everywhere",
        GatewayOptions {
            ports: vec![port],
            extra: "[redact]\nmode_requests = \"redact\"\n".into(),
            ..Default::default()
        },
    );
    let log = gw.dir.path().join("server.log");
    let _server = start_fake(port, &log);
    let bodies = [
        json!({"jsonrpc": "2.0", "id": 21, "method": "prompts/get",
               "params": {"name": "review", "arguments": {"code": format!("key = {AWS_KEY}")}}}),
        json!({"jsonrpc": "2.0", "id": 22, "method": "resources/read",
               "params": {"uri": format!("file:///tmp/{AWS_KEY}.txt")}}),
        json!({"jsonrpc": "2.0", "id": 23, "method": "tools/call",
               "params": {"name": "echo", "arguments": {"note": "fine"},
                          "_meta": {"trace": AWS_KEY}}}),
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
               "params": {"requestId": 1, "reason": format!("leaking {AWS_KEY}")}}),
        json!({"jsonrpc": "2.0", "id": 24, "method": "tools/call",
               "params": {"name": "echo", "arguments": {"note": "clean"}}}),
        // Members a server receives as sent: the id, and one JSON-RPC does not name.
        json!({"jsonrpc": "2.0", "id": format!("call-{AWS_KEY}"), "method": "tools/call",
               "params": {"name": "echo", "arguments": {"note": "fine"}}}),
        json!({"jsonrpc": "2.0", "id": 26, "method": "tools/call", "note": AWS_KEY,
               "params": {"name": "echo", "arguments": {"note": "fine"}}}),
        // An answer no request of the server's is waiting for, under an id no request has.
        json!({"jsonrpc": "2.0", "id": null, "error": {"code": 1, "message": AWS_KEY}}),
    ];
    let mut raw: Vec<String> = bodies.iter().map(Value::to_string).collect();
    raw.extend([
        // A key given twice inside the arguments: the gateway would read one copy.
        format!(
            r#"{{"jsonrpc":"2.0","id":27,"method":"tools/call","params":{{"name":"echo","arguments":{{"q":"{AWS_KEY}","q":"x"}}}}}}"#
        ),
        // An answer's member that no answer has: sent as it is.
        format!(r#"{{"jsonrpc":"2.0","id":28,"result":{{}},"params":{{"leak":"{AWS_KEY}"}}}}"#),
        r#"{"jsonrpc":"2.0","id":30,"method":"tools/call","params":{"name":"echo","arguments":{"password":"Tr0ub4dor&3x"}}}"#.to_string(),
        // A secret as a key of the arguments, which `redact` does not rewrite.
        format!(
            r#"{{"jsonrpc":"2.0","id":29,"method":"tools/call","params":{{"name":"echo","arguments":{{"{AWS_KEY}":"x"}}}}}}"#
        ),
    ]);
    let out = run_probe(gw.agent(
        PYTHON,
        &[
            "-c".into(),
            RAW_BODIES.into(),
            port.to_string(),
            json!(raw).to_string(),
        ],
    ));
    let at_server = received(&log);
    let text = serde_json::to_string(&at_server).unwrap();
    // A value named a secret by its key: redacted, though no string holds `password=…`.
    let keyed = at_server
        .iter()
        .find(|e| e["id"] == 30)
        .expect("call 30 forwarded");
    let raw30 = keyed["raw"].as_str().unwrap();
    assert!(
        raw30.contains(r#""password":"[REDACTED:secret_assignment]""#)
            && !raw30.contains("Tr0ub4dor"),
        "{keyed}"
    );
    assert!(
        !text.contains(AWS_KEY),
        "a secret reached the server: {text}"
    );
    // The prompt went, its argument redacted; the clean call went.
    let prompt = at_server
        .iter()
        .find(|e| e["id"] == 21)
        .expect("prompts/get forwarded");
    assert!(
        prompt["raw"]
            .as_str()
            .unwrap()
            .contains("key = [REDACTED:aws_access_key_id]"),
        "{prompt}"
    );
    assert!(at_server.iter().any(|e| e["id"] == 24), "{text}");
    // The answer went, its message redacted.
    let answer = at_server
        .iter()
        .find(|e| e["id"].is_null() && e["method"].is_null())
        .expect("the answer forwarded");
    assert!(
        answer["raw"]
            .as_str()
            .unwrap()
            .contains("[REDACTED:aws_access_key_id]"),
        "{answer}"
    );
    // The others were refused with the exfiltration code, naming the detector.
    // A key given twice is not read at all.
    let twice: Value = serde_json::from_str(out[8]["raw"].as_str().unwrap()).unwrap();
    assert!(
        twice["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("appears twice")),
        "{twice}"
    );
    for (i, what) in [
        (1, "uri"),
        (2, "_meta"),
        (5, "id"),
        (6, "an unnamed member"),
        (11, "a key of the arguments"),
    ] {
        let answer: Value = serde_json::from_str(out[i]["raw"].as_str().unwrap()).unwrap();
        assert_eq!(answer["error"]["code"], -32014, "{what}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains("aws_access_key_id"), "{what}: {message}");
        assert!(!message.contains(AWS_KEY), "{what}: {message}");
    }
    assert!(
        !at_server
            .iter()
            .any(|e| e["method"] == "notifications/cancelled"),
        "{text}"
    );
    assert!(
        (400..500).contains(&out[3]["status"].as_u64().unwrap()),
        "the refused notification: {}",
        out[3]
    );
    for id in ["22", "23"] {
        let rec = gw.wait_record("the refusal", |r| r["type"] == "mcp" && r["id"] == id);
        assert_eq!(rec["outcome"], "refused", "{rec}");
        assert_eq!(rec["refusal"], "exfiltration", "{rec}");
    }
}
