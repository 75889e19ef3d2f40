//! What could be MCP is decided, never passed through unread: HTTP/1 is recognised as
//! servers parse it (empty lines before the request line, any method token, a method in
//! lower case), and a server that speaks first cannot carry an agent's HTTP past the MCP
//! stage. Every request here is written byte by byte on a raw socket.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gateway_tests::fake::{received, start as start_fake};
use gateway_tests::{free_port, run_probe, Gateway, GatewayOptions, PYTHON};
use serde_json::Value;

/// Sends argv[2] (raw bytes, Python escapes) to 127.0.0.1:argv[1], half-closes nothing,
/// reads until the peer closes or 5 s pass; prints what came back.
const RAW: &str = r#"
import codecs, json, socket, sys, time
port, data = int(sys.argv[1]), codecs.escape_decode(sys.argv[2])[0]
s = socket.create_connection(("127.0.0.1", port), timeout=5)
s.sendall(data)
got = b""
end = time.monotonic() + 5
try:
    while time.monotonic() < end:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
except OSError as e:
    got += ("<%s>" % type(e).__name__).encode()
print(json.dumps({"got": got.decode(errors="replace")}))
"#;

fn deny_delete_all() -> String {
    "[policy]\nmode = \"enforce\"\n\
     [[principal]]\nname = \"agent\"\nusers = [0]\n\
     [[rule]]\nprincipal = \"agent\"\ntools = [\"delete_all\"]\naction = \"deny\"\n\
     [[rule]]\nprincipal = \"agent\"\naction = \"allow\"\n"
        .into()
}

fn request(method: &str, body: &str) -> String {
    format!(
        "{method} /mcp HTTP/1.1\\r\\nHost: x\\r\\nContent-Type: application/json\\r\\n\
         Accept: application/json, text/event-stream\\r\\nContent-Length: {}\\r\\n\\r\\n{body}",
        body.len()
    )
}

const DELETE_ALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_all","arguments":{}}}"#;

#[test]
fn http1_in_every_form_a_server_accepts_is_decided() {
    let port = free_port();
    let gw = Gateway::start(
        "recognise-h1",
        GatewayOptions {
            ports: vec![port],
            extra: deny_delete_all(),
            ..Default::default()
        },
    );
    let log = gw.dir.path().join("server.log");
    let _server = start_fake(port, &log);
    let attacks = [
        // An empty line before the request line: servers skip it (RFC 9112 2.2).
        format!("\\r\\n{}", request("POST", DELETE_ALL)),
        // A method in lower case, which lenient servers take for POST.
        request("post", DELETE_ALL),
        // A method outside the common list first, then the call pipelined behind it.
        format!(
            "PROPFIND /mcp HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 0\\r\\n\\r\\n{}",
            request("POST", DELETE_ALL)
        ),
    ];
    for raw in &attacks {
        let out = run_probe(gw.agent(
            PYTHON,
            &["-c".into(), RAW.into(), port.to_string(), raw.clone()],
        ));
        let got = out["got"].as_str().unwrap();
        assert!(got.contains("-32012"), "{raw:?} was not decided: {got}");
    }
    let executed: Vec<Value> = received(&log)
        .into_iter()
        .filter(|r| r["raw"].as_str().is_some_and(|b| b.contains("delete_all")))
        .collect();
    assert!(
        executed.is_empty(),
        "a denied call reached the server: {executed:?}"
    );
}

/// A raw TCP server on `port` that speaks first (`greeting`, Python escapes), then answers
/// each line it receives with `reply` and logs every byte it got to `log`.
fn server_first(port: u16, greeting: &str, reply: &str, log: &std::path::Path) -> Child {
    const SERVER: &str = r#"
import codecs, socket, sys, threading
port, greeting, reply, log = int(sys.argv[1]), codecs.escape_decode(sys.argv[2])[0], codecs.escape_decode(sys.argv[3])[0], sys.argv[4]
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(16)
def serve(c):
    c.sendall(greeting)
    while True:
        try:
            data = c.recv(65536)
        except OSError:
            break
        if not data:
            break
        with open(log, "ab") as f:
            f.write(data)
        if reply:
            c.sendall(reply)
    c.close()
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;
    let child = Command::new(PYTHON)
        .args(["-c", SERVER, &port.to_string(), greeting, reply])
        .arg(log)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    gateway_tests::wait_listening(port, "the server-first server");
    // The probe connection above was served too: start the log afresh.
    std::thread::sleep(Duration::from_millis(100));
    let _ = std::fs::remove_file(log);
    child
}

/// An agent that reads what the server says first, then (after 300 ms) sends argv[2].
const WAIT_THEN_SEND: &str = r#"
import codecs, json, socket, sys, time
port, data = int(sys.argv[1]), codecs.escape_decode(sys.argv[2])[0]
s = socket.create_connection(("127.0.0.1", port), timeout=5)
time.sleep(0.3)
first = s.recv(65536)
s.sendall(data)
got = b""
try:
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
        if len(got) >= 8:
            break
except OSError as e:
    got += ("<%s>" % type(e).__name__).encode()
print(json.dumps({"first": first.hex(), "then": got.decode(errors="replace")}))
"#;

#[test]
fn a_server_that_speaks_first_carries_no_http_past_the_mcp_stage() {
    let port = free_port();
    let gw = Gateway::start(
        "server-first",
        GatewayOptions {
            ports: vec![port],
            ..Default::default()
        },
    );
    let log = gw.dir.path().join("server.log");
    // An h2c server that sends its SETTINGS before the agent's preface.
    let settings = "\\x00\\x00\\x00\\x04\\x00\\x00\\x00\\x00\\x00";
    let mut server = server_first(port, settings, "", &log);
    let preface =
        "PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n\\x00\\x00\\x00\\x04\\x00\\x00\\x00\\x00\\x00";
    let out = run_probe(gw.agent(
        PYTHON,
        &[
            "-c".into(),
            WAIT_THEN_SEND.into(),
            port.to_string(),
            preface.into(),
        ],
    ));
    assert_eq!(
        out["first"], "000000040000000000",
        "the server's bytes reached the agent: {out}"
    );
    assert!(
        std::fs::read(&log).unwrap_or_default().is_empty(),
        "the agent's HTTP/2 reached the server unmediated: {out}"
    );
    let flow = gw.wait_record("the refused flow", |r| r["type"] == "flow");
    assert_eq!(flow["outcome"], "refused_server_first", "{flow}");
    let _ = server.kill();
    let _ = server.wait();

    // A server-first protocol that is not HTTP (an SMTP-like banner) passes as before.
    let port2 = free_port();
    let gw2 = Gateway::start(
        "server-first-smtp",
        GatewayOptions {
            ports: vec![port2],
            ..Default::default()
        },
    );
    let log2 = gw2.dir.path().join("server.log");
    let mut smtp = server_first(port2, "220 mail ready\\r\\n", "250 ok\\r\\n", &log2);
    let out = run_probe(gw2.agent(
        PYTHON,
        &[
            "-c".into(),
            WAIT_THEN_SEND.into(),
            port2.to_string(),
            "EHLO agent\\r\\n".into(),
        ],
    ));
    assert_eq!(out["then"], "250 ok\r\n", "{out}");
    assert_eq!(std::fs::read(&log2).unwrap(), b"EHLO agent\r\n");
    let _ = smtp.kill();
    let _ = smtp.wait();
}
