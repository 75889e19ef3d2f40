//! The HTTP paths around MCP: an h2c agent is served in HTTP/2 on both sides, plain HTTP
//! that is not MCP passes through unchanged, and `http.mcp_only` refuses everything but MCP.

use std::process::Command;

use gateway_tests::peers::rmcp_server;
use gateway_tests::{free_port, EchoServer, Gateway, GatewayOptions, PYTHON};

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}"#;

fn curl(gw: &Gateway, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20"]).args(args);
    let out = gw.wrap(cmd).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn initialize_args(url: &str, h2: bool) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "-X".into(),
        "POST".into(),
        "-H".into(),
        "Content-Type: application/json".into(),
        "-H".into(),
        "Accept: application/json, text/event-stream".into(),
        "--data".into(),
        INITIALIZE.into(),
        url.into(),
    ];
    if h2 {
        a.insert(0, "--http2-prior-knowledge".into());
    }
    a
}

#[test]
fn h2c_agent_is_served_in_http2_on_both_sides() {
    let port = free_port();
    let server = rmcp_server(port);
    let gw = Gateway::start(
        "h2c",
        GatewayOptions {
            ports: vec![port],
            ..Default::default()
        },
    );
    let args = initialize_args(&server.url, true);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out) = curl(&gw, &args);
    assert!(ok, "{out}");
    assert!(out.contains("\"serverInfo\""), "{out}");
    let rec = gw.wait_record("initialize", |r| {
        r["type"] == "mcp" && r["method"] == "initialize"
    });
    assert_eq!(rec["outcome"], "ok", "{rec}");
    let flow = gw.wait_record("the h2 flow", |r| r["type"] == "flow");
    assert_eq!(flow["protocol"], "http2", "{flow}");
}

#[test]
fn plain_http_that_is_not_mcp_passes_through_unchanged() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let page: String = (0..5000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    std::fs::write(dir.path().join("page.txt"), &page).unwrap();
    let mut server = Command::new(PYTHON)
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let gw = Gateway::start(
        "plainhttp",
        GatewayOptions {
            ports: vec![port],
            ..Default::default()
        },
    );
    let url = format!("http://127.0.0.1:{port}/page.txt");
    let (ok, out) = curl(&gw, &[&url]);
    assert!(ok, "{out}");
    assert_eq!(out, page);
    let flow = gw.wait_record("the flow", |r| r["type"] == "flow");
    assert_eq!(flow["protocol"], "http1");
    assert!(gw.mcp_records().is_empty(), "{:#?}", gw.mcp_records());
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn mcp_only_refuses_everything_but_mcp() {
    let mcp_port = free_port();
    let server = rmcp_server(mcp_port);
    let echo = EchoServer::start("127.0.0.1:0");
    let gw = Gateway::start(
        "mcponly",
        GatewayOptions {
            ports: vec![mcp_port, echo.addr.port()],
            extra: "[http]\nmcp_only = true\n".into(),
            ..Default::default()
        },
    );
    // Not MCP: a plain GET of the MCP server's host gets a clear 403.
    let (_, out) = curl(
        &gw,
        &["-i", &format!("http://127.0.0.1:{mcp_port}/robots.txt")],
    );
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(out.contains("http.mcp_only"), "{out}");
    // MCP still works.
    let args = initialize_args(&server.url, false);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out) = curl(&gw, &args);
    assert!(ok && out.contains("\"serverInfo\""), "{out}");
    // Raw TCP is refused: the agent's connection is reset, the server never sees it.
    let out = gw
        .wrap({
            let mut c = Command::new(PYTHON);
            c.args(gateway_tests::probe_args(
                "127.0.0.1",
                echo.addr.port(),
                "plain",
                100,
            ));
            c
        })
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The reset surfaces on whichever socket call comes next: send, shutdown or recv.
    assert!(
        [
            "ConnectionResetError",
            "BrokenPipeError",
            "Transport endpoint is not connected"
        ]
        .iter()
        .any(|e| stderr.contains(e)),
        "{stderr}"
    );
    assert!(echo.peers().is_empty(), "{:?}", echo.peers());
    let flow = gw.wait_record("the refused flow", |r| r["outcome"] == "refused_not_mcp");
    assert_eq!(flow["protocol"], "tcp");
}

/// An upstream that honours Content-Length on any method: it reads the body a GET announces
/// (for 3 s at most) and says what it got.
const STRICT_UPSTREAM: &str = r#"
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(4)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.settimeout(3)
    data = b""
    while b"\r\n\r\n" not in data:
        data += c.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    try:
        while len(body) < length:
            body += c.recv(4096)
        answer = b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n"
    except socket.timeout:
        answer = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n"
    c.sendall(answer); c.close()
"#;

#[test]
fn a_get_with_a_body_is_forwarded_without_it_or_its_framing() {
    use std::io::BufRead;
    let port = free_port();
    /// Killed however the test ends: an orphan would hold the test's output pipe open.
    struct Upstream(std::process::Child);
    impl Drop for Upstream {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut upstream = Upstream(
        Command::new(PYTHON)
            .args(["-c", STRICT_UPSTREAM, &port.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut ready = String::new();
    std::io::BufReader::new(upstream.0.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let gw = Gateway::start(
        "getbody",
        GatewayOptions {
            ports: vec![port],
            extra: format!(
                "[[server]]\nname = \"strict\"\naddress = \"127.0.0.1:{port}\"\npath = \"/mcp\"\n"
            ),
            ..Default::default()
        },
    );
    let started = std::time::Instant::now();
    let (_, out) = curl(
        &gw,
        &[
            "-i",
            "-X",
            "GET",
            "-H",
            "Accept: text/event-stream",
            "--data-binary",
            "hello",
            &format!("http://127.0.0.1:{port}/mcp"),
        ],
    );
    // The server answered the GET itself, at once: it was not left waiting for five
    // bytes the gateway had dropped.
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// Over h2 as over HTTP/1.1: a call naming its tool twice is refused (-32602), not decided
/// as a call without a name (which a rule denying that tool would not match).
#[test]
fn h2c_call_with_a_duplicated_name_is_refused() {
    let port = free_port();
    let server = rmcp_server(port);
    let gw = Gateway::start(
        "h2c-dup",
        GatewayOptions {
            ports: vec![port],
            extra: "[policy]\nmode = \"enforce\"\n\
                    [[principal]]\nname = \"agent\"\nusers = [0]\n\
                    [[rule]]\nprincipal = \"agent\"\ntools = [\"echo\"]\naction = \"deny\"\n\
                    [[rule]]\nprincipal = \"agent\"\naction = \"allow\"\n"
                .into(),
            ..Default::default()
        },
    );
    let body = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","name":"echo","arguments":{"text":"ran"}}}"#;
    let (ok, out) = curl(
        &gw,
        &[
            "--http2-prior-knowledge",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-H",
            "Accept: application/json, text/event-stream",
            "-H",
            "MCP-Protocol-Version: 2025-06-18",
            "--data",
            body,
            &server.url,
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("-32602"), "{out}");
    assert!(!out.contains("ran"), "the call ran: {out}");
    let rec = gw.wait_record("the refusal", |r| {
        r["type"] == "mcp" && r["method"] == "tools/call" && r["outcome"] == "refused"
    });
    assert!(
        rec["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("unambiguously")
            || rec.to_string().contains("unambiguously"),
        "{rec}"
    );
}
