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
    let child = spawn_server(
        SERVER,
        port,
        [greeting, reply],
        log,
        "the server-first server",
    );
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

/// A request with exactly these header lines (Python escapes) and body; it asks the
/// gateway to close after answering, so the probe reads one answer.
fn raw_request(method: &str, headers: &[&str], body: &str) -> String {
    let mut lines = format!("{method} /mcp HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n");
    for h in headers {
        lines.push_str(h);
        lines.push_str("\\r\\n");
    }
    format!(
        "{lines}Content-Length: {}\\r\\n\\r\\n{body}",
        escaped_len(body)
    )
}

/// How many bytes Python's escape_decode makes of `s` (`\xNN`, `\r`, `\n` are one each).
fn escaped_len(s: &str) -> usize {
    let (mut n, mut rest) = (0, s);
    while let Some(c) = rest.chars().next() {
        rest = match (c, rest.as_bytes().get(1)) {
            ('\\', Some(b'x')) => &rest[4..],
            ('\\', Some(_)) => &rest[2..],
            _ => &rest[c.len_utf8()..],
        };
        n += 1;
    }
    n
}

#[test]
fn a_json_rpc_body_is_mcp_whatever_the_headers_say() {
    let port = free_port();
    let gw = Gateway::start(
        "recognise-body",
        GatewayOptions {
            ports: vec![port],
            extra: deny_delete_all(),
            ..Default::default()
        },
    );
    let log = gw.dir.path().join("server.log");
    let _server = start_fake(port, &log);
    let padded = format!(" \\r\\n\\t{DELETE_ALL}");
    let bom = format!("\\xef\\xbb\\xbf{DELETE_ALL}");
    let attacks = [
        // Accept as clients and servers spell it too: no comma, wildcards, another case.
        (
            raw_request(
                "POST",
                &["Accept: application/json text/event-stream"],
                DELETE_ALL,
            ),
            "-32012",
        ),
        (raw_request("POST", &["Accept: */*"], DELETE_ALL), "-32012"),
        (
            raw_request("POST", &["Accept: application/*, text/*"], DELETE_ALL),
            "-32012",
        ),
        (
            raw_request(
                "POST",
                &[
                    "Accept: APPLICATION/JSON, TEXT/EVENT-STREAM",
                    "Content-Type: text/plain",
                ],
                DELETE_ALL,
            ),
            "-32012",
        ),
        // No header says anything; the body is JSON-RPC behind whitespace.
        (raw_request("POST", &[], &padded), "-32012"),
        // Behind a byte order mark, which some JSON readers skip: the gateway's does not,
        // so it refuses the call as unreadable rather than pass it on.
        (raw_request("POST", &[], &bom), "-32700"),
    ];
    for (raw, code) in &attacks {
        let out = run_probe(gw.agent(
            PYTHON,
            &["-c".into(), RAW.into(), port.to_string(), raw.clone()],
        ));
        let got = out["got"].as_str().unwrap();
        assert!(
            got.contains(code),
            "{raw:?} was not refused with {code}: {got}"
        );
    }
    // Plain JSON that no peer would take for JSON-RPC still passes as plain HTTP.
    let plain = raw_request("POST", &["Accept: */*"], r#"{"hello":"world"}"#);
    let out = run_probe(gw.agent(PYTHON, &["-c".into(), RAW.into(), port.to_string(), plain]));
    assert!(
        out["got"].as_str().unwrap().starts_with("HTTP/1.1 202"),
        "{out}"
    );
    let seen = received(&log);
    assert!(
        seen.iter()
            .any(|r| r["raw"].as_str().is_some_and(|b| b.contains("hello"))),
        "the plain request did not reach the server: {seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|r| r["raw"].as_str().is_some_and(|b| b.contains("delete_all"))),
        "a denied call reached the server: {seen:?}"
    );
    let denied = gw
        .audit_records()
        .into_iter()
        .filter(|r| r["type"] == "mcp" && r["name"] == "delete_all" && r["outcome"] == "refused")
        .count();
    assert_eq!(denied, attacks.len() - 1, "{:#?}", gw.audit_records());
}

/// An HTTP server on `port` that answers every request with `head` and then `body` (Python
/// escapes) and closes, logging each request it read to `log`.
fn answering_server(port: u16, head: &str, body: &str, log: &std::path::Path) -> Child {
    const SERVER: &str = r#"
import codecs, socket, sys, threading
port, head, body, log = int(sys.argv[1]), codecs.escape_decode(sys.argv[2])[0], codecs.escape_decode(sys.argv[3])[0], sys.argv[4]
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(16)
def serve(c):
    req = b""
    while b"\r\n\r\n" not in req:
        data = c.recv(65536)
        if not data:
            c.close()
            return
        req += data
    with open(log, "ab") as f:
        f.write(req)
    c.sendall(head)
    c.sendall(body)
    c.close()
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;
    spawn_server(SERVER, port, [head, body], log, "the answering server")
}

/// Runs a Python test server (`script PORT ARG ARG LOG`) and waits until it listens.
fn spawn_server(
    script: &str,
    port: u16,
    args: [&str; 2],
    log: &std::path::Path,
    what: &str,
) -> Child {
    let child = Command::new(PYTHON)
        .args(["-c", script, &port.to_string()])
        .args(args)
        .arg(log)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    gateway_tests::wait_listening(port, what);
    child
}

const GH_TOKEN: &str = "ghp_R8x2Lq0Zt5Vb9Nc3Md7Kf1Hj6Gs4Pw2Ye8Ua0";

#[test]
fn an_event_stream_is_watched_however_it_was_asked_for_and_whatever_comes_first() {
    // A stream a client reads as MCP messages: first something that is not JSON-RPC (an
    // event of plain text, or bytes that are not UTF-8, which lenient decoders replace),
    // then a response carrying a token that answers no request the gateway saw.
    let secret = format!(
        r#"data: {{"jsonrpc":"2.0","id":7,"result":{{"content":[{{"type":"text","text":"token {GH_TOKEN}"}}]}}}}\n\n"#
    );
    let head =
        "HTTP/1.1 200 OK\\r\\nContent-Type: Text/Event-Stream\\r\\nConnection: close\\r\\n\\r\\n";
    let cases = [
        (
            "a plain event first",
            format!("data: hello\\n\\n{secret}"),
            "hello",
            "server event dropped",
        ),
        (
            "bytes that are not UTF-8 first",
            format!("data: \\xff\\n\\n{secret}"),
            "",
            "invalid SSE stream",
        ),
    ];
    for (what, body, shown, why) in cases {
        let port = free_port();
        let gw = Gateway::start(
            "recognise-stream",
            GatewayOptions {
                ports: vec![port],
                ..Default::default()
            },
        );
        let log = gw.dir.path().join("server.log");
        let mut server = answering_server(port, head, &body, &log);
        // A GET that asks for anything: not marked as MCP by its headers.
        let get =
            "GET /events HTTP/1.1\\r\\nHost: x\\r\\nAccept: */*\\r\\nConnection: close\\r\\n\\r\\n";
        let out = run_probe(gw.agent(
            PYTHON,
            &["-c".into(), RAW.into(), port.to_string(), get.into()],
        ));
        let got = out["got"].as_str().unwrap();
        assert!(
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .starts_with("GET /events"),
            "{what}: the request did not reach the server"
        );
        assert!(got.contains(shown), "{what}: {got}");
        assert!(
            !got.contains(GH_TOKEN),
            "{what}: the token reached the agent unchecked: {got}"
        );
        let recorded = gw
            .audit_records()
            .into_iter()
            .any(|r| r["type"] == "mcp" && r["detail"].as_str().is_some_and(|d| d.contains(why)));
        assert!(
            recorded,
            "{what}: no record says {why:?}: {:#?}",
            gw.audit_records()
        );
        let _ = server.kill();
        let _ = server.wait();
    }
}
