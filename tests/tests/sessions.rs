//! A session belongs to the principal that opened it, at the server it was opened with:
//! the gateway knows only the sessions it saw a server open, refuses any other id (another
//! principal's, one presented at another address of the same server, a made-up one) rather
//! than adopt it, and no principal can make it forget another's by opening many. Legacy SSE
//! endpoints are matched as servers route them, and owned the same way.

use gateway_tests::fake::{received, start_on};
use gateway_tests::peers::{everything, Transport};
use gateway_tests::{free_port, run_probe, Gateway, GatewayOptions, PYTHON};
use serde_json::{json, Value};

/// Runs the requests of argv[1] (a JSON list of {addr, port, host?, session?, path?,
/// body}) one after another, each on its own connection; prints, per request, the status,
/// the session the answer named and the body.
const CLIENT: &str = r#"
import http.client, json, sys
out = []
for r in json.loads(sys.argv[1]):
    c = http.client.HTTPConnection(r["addr"], r["port"], timeout=10)
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
         "Host": r.get("host", "%s:%d" % (r["addr"], r["port"]))}
    if r.get("session"):
        h["Mcp-Session-Id"] = r["session"]
    c.request("POST", r.get("path", "/mcp"), body=json.dumps(r["body"]), headers=h)
    resp = c.getresponse()
    body = resp.read().decode(errors="replace")
    out.append({"status": resp.status, "session": resp.getheader("Mcp-Session-Id"), "body": body})
    c.close()
print(json.dumps(out))
"#;

fn call(id: u64, tool: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": tool, "arguments": {}}})
}

fn initialize(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize",
           "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                      "clientInfo": {"name": "sessions-test", "version": "1"}}})
}

/// Runs CLIENT in the agent cgroup, as root or (with `nobody`) as uid 65534.
fn client(gw: &Gateway, nobody: bool, requests: &Value) -> Vec<Value> {
    let script = ["-c".to_string(), CLIENT.to_string(), requests.to_string()];
    let cmd = if nobody {
        gw.agent_as("65534", PYTHON, &script)
    } else {
        gw.agent(PYTHON, &script)
    };
    match run_probe(cmd) {
        Value::Array(a) => a,
        other => panic!("the client printed {other}"),
    }
}

#[test]
fn a_session_is_its_openers_at_the_address_it_was_opened_with() {
    let port = free_port();
    let gw = Gateway::start(
        "sessions-owner",
        GatewayOptions {
            ports: vec![port],
            extra: "[http]\nmax_sessions = 8\nmax_sessions_per_user = 4\n".into(),
            ..Default::default()
        },
    );
    let log = gw.dir.path().join("server.log");
    // One server behind every loopback address.
    let _server = start_on("0.0.0.0", port, &log);
    let at = |addr: &str| json!({"addr": addr, "port": port});
    let with = |addr: &str, session: &str, body: Value| {
        let mut r = at(addr);
        r["session"] = session.into();
        r["body"] = body;
        r
    };

    let opened = client(
        &gw,
        false,
        &json!([{"addr": "127.0.0.1", "port": port, "body": initialize(1)}]),
    );
    let session = opened[0]["session"]
        .as_str()
        .expect("a session id")
        .to_string();

    let mut attacks = vec![
        // The owner's id, from another principal: refused as before.
        with("127.0.0.1", &session, call(2, "theirs_same_address")),
        // The same id at another address of the same server, naming the first in Host.
        {
            let mut r = with("127.0.0.2", &session, call(3, "theirs_other_address"));
            r["host"] = format!("127.0.0.1:{port}").into();
            r
        },
        // An id the server never issued through the gateway.
        with("127.0.0.1", "0123456789abcdef", call(4, "theirs_made_up")),
    ];
    // Then many sessions of its own, to push the owner's out.
    for i in 0..20 {
        let mut r = at("127.0.0.1");
        r["body"] = initialize(100 + i);
        attacks.push(r);
    }
    let got = client(&gw, true, &Value::Array(attacks));
    assert_eq!(got[0]["status"], 403, "{}", got[0]);
    assert_eq!(got[1]["status"], 404, "{}", got[1]);
    assert_eq!(got[2]["status"], 404, "{}", got[2]);
    for r in &got[..3] {
        assert!(r["body"].as_str().unwrap().contains("-32010"), "{r}");
    }
    assert!(got[3..].iter().all(|r| r["status"] == 200), "{got:?}");

    // The owner's session still works.
    let mine = client(
        &gw,
        false,
        &json!([with("127.0.0.1", &session, call(5, "mine"))]),
    );
    assert_eq!(mine[0]["status"], 200, "{}", mine[0]);
    assert!(
        mine[0]["body"].as_str().unwrap().contains("\"result\""),
        "{}",
        mine[0]
    );

    let seen = received(&log);
    let theirs: Vec<&Value> = seen
        .iter()
        .filter(|r| r["raw"].as_str().is_some_and(|b| b.contains("theirs")))
        .collect();
    assert!(
        theirs.is_empty(),
        "another principal's calls reached the server: {theirs:?}"
    );
    assert!(
        seen.iter().any(|r| r["session"] == session.as_str()
            && r["raw"].as_str().is_some_and(|b| b.contains("mine"))),
        "{seen:?}"
    );
    let refused = gw
        .audit_records()
        .into_iter()
        .filter(|r| {
            r["type"] == "mcp"
                && r["outcome"] == "refused"
                && r["name"].as_str().is_some_and(|n| n.starts_with("theirs"))
                && r["principal"]["uid"] == 65534
        })
        .count();
    assert_eq!(refused, 3, "{:#?}", gw.audit_records());
}

/// A legacy SSE agent: opens the stream, reads the endpoint, POSTs argv[2] (a tools/call)
/// to the endpoint with argv[3] appended, and prints the endpoint, the POST's status and
/// the response event the stream carried (or what it carried instead). With argv[4] set,
/// it only prints the endpoint and then holds the stream open for that many seconds.
const LEGACY: &str = r#"
import json, socket, sys, time
port, call, extra = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = socket.create_connection(("127.0.0.1", port), timeout=10)
s.sendall(b"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
buf = b""
while b"event: endpoint" not in buf or b"\n\n" not in buf[buf.index(b"event: endpoint"):]:
    buf += s.recv(65536)
ev = buf[buf.index(b"event: endpoint"):]
endpoint = ev.split(b"data: ", 1)[1].split(b"\n", 1)[0].decode().strip()
if len(sys.argv) > 4:
    print(json.dumps({"endpoint": endpoint}), flush=True)
    time.sleep(float(sys.argv[4]))
    sys.exit(0)
import http.client
c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
c.request("POST", endpoint + extra, body=call, headers={"Content-Type": "application/json"})
r = c.getresponse()
status, body = r.status, r.read().decode(errors="replace")
buf = buf[buf.index(b"event: endpoint"):]
buf = buf[buf.index(b"\n\n") + 2:]
end = time.monotonic() + 5
while b'"id":7' not in buf and time.monotonic() < end:
    try:
        chunk = s.recv(65536)
    except socket.timeout:
        break
    if not chunk:
        break
    buf += chunk
print(json.dumps({"endpoint": endpoint, "status": status, "body": body,
                  "stream": buf.decode(errors="replace")}))
"#;

#[test]
fn a_legacy_endpoint_is_matched_as_the_server_routes_it_and_owned() {
    let port = free_port();
    let gw = Gateway::start(
        "sessions-legacy",
        GatewayOptions {
            ports: vec![port],
            ..Default::default()
        },
    );
    let _server = everything(Transport::Sse, port);
    let echo = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"message":"paired"}}}"#;
    // The endpoint with a parameter the server ignores appended.
    let out = run_probe(gw.agent(
        PYTHON,
        &[
            "-c".into(),
            LEGACY.into(),
            port.to_string(),
            echo.into(),
            "&x=1".into(),
        ],
    ));
    assert_eq!(out["status"], 202, "{out}");
    assert!(
        out["stream"].as_str().unwrap().contains("Echo: paired"),
        "the response did not reach the agent: {out}"
    );
    let record = gw.wait_record("the paired call", |r| {
        r["type"] == "mcp" && r["name"] == "echo" && r["direction"] == "client_to_server"
    });
    assert_eq!(record["transport"], "sse", "{record}");
    assert_eq!(record["outcome"], "ok", "{record}");

    // Another principal posting to the first one's endpoint is refused.
    let mut owner = gw
        .agent(
            PYTHON,
            &[
                "-c".into(),
                LEGACY.into(),
                port.to_string(),
                String::new(),
                String::new(),
                "20".into(),
            ],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let endpoint = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(owner.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        serde_json::from_str::<Value>(&line).unwrap()["endpoint"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let steal = format!(
        r#"
import http.client, json
c = http.client.HTTPConnection("127.0.0.1", {port}, timeout=10)
c.request("POST", {endpoint:?}, body={echo:?}, headers={{"Content-Type": "application/json"}})
r = c.getresponse()
print(json.dumps({{"status": r.status, "body": r.read().decode()}}))
"#
    );
    let stolen = run_probe(gw.agent_as("65534", PYTHON, &["-c".into(), steal]));
    assert_eq!(stolen["status"], 403, "{stolen}");
    assert!(
        stolen["body"]
            .as_str()
            .unwrap()
            .contains("another principal"),
        "{stolen}"
    );
    let _ = owner.kill();
    let _ = owner.wait();
}
