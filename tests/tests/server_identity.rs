//! The server a call is decided for is the destination the kernel recorded for the agent's
//! connection (or the host name the gateway verified over TLS), never the request's `Host`:
//! the agent writes that header. A rule denying a tool on `127.0.0.1:PORT` holds whatever
//! the agent puts in `Host`, and a server configured by host name only is not reached over
//! plain HTTP by naming it.

use gateway_tests::fake::{received, start as start_fake};
use gateway_tests::{free_port, run_probe, Gateway, GatewayOptions, PYTHON};
use serde_json::{json, Value};

/// One HTTP/1.1 POST on a raw socket, every byte of it the test's: argv = port, Host
/// header, JSON-RPC body. Prints the status and the body.
const RAW_POST: &str = r#"
import json, socket, sys
port, host, body = int(sys.argv[1]), sys.argv[2], sys.argv[3].encode()
s = socket.create_connection(("127.0.0.1", port), timeout=20)
s.sendall(b"POST /mcp HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
          b"Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
          b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
head, _, rest = data.partition(b"\r\n\r\n")
print(json.dumps({"status": int(head.split()[1]), "body": rest.decode(errors="replace")}))
"#;

fn post(gw: &Gateway, port: u16, host: &str, body: &Value) -> Value {
    run_probe(gw.agent(
        PYTHON,
        &[
            "-c".into(),
            RAW_POST.into(),
            port.to_string(),
            host.into(),
            body.to_string(),
        ],
    ))
}

fn call(id: u64, tool: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": tool, "arguments": {}}})
}

#[test]
fn a_host_header_does_not_rename_the_server_a_rule_denies() {
    let port = free_port();
    let gw = Gateway::start(
        "server-by-host",
        GatewayOptions {
            ports: vec![port],
            extra: format!(
                r#"
[policy]
mode = "enforce"

[[principal]]
name = "agent"
users = [0]

[[rule]]
principal = "agent"
server = "127.0.0.1:{port}"
tools = ["echo"]
action = "deny"

[[rule]]
principal = "agent"
action = "allow"
"#
            ),
            ..Default::default()
        },
    );
    let log = gw.dir.path().join("server.log");
    let _server = start_fake(port, &log);
    let hosts = [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        format!("whatever.invalid:{port}"),
        "localhost".to_string(),
    ];
    for (i, host) in hosts.iter().enumerate() {
        let out = post(&gw, port, host, &call(i as u64 + 1, "echo"));
        let body: Value = serde_json::from_str(out["body"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("Host {host}: {e}: {out}"));
        assert_eq!(body["error"]["code"], -32012, "Host {host}: {out}");
    }
    // Another tool on the same server is allowed, whatever the Host: the rule is the server's.
    let out = post(&gw, port, "whatever.invalid", &call(9, "other"));
    assert_eq!(out["status"], 200, "{out}");
    let methods: Vec<Value> = received(&log)
        .iter()
        .map(|r| {
            let raw: Value = serde_json::from_str(r["raw"].as_str().unwrap()).unwrap();
            raw["params"]["name"].clone()
        })
        .collect();
    assert!(
        !methods.contains(&json!("echo")),
        "a denied call reached the server: {methods:?}"
    );
    assert!(methods.contains(&json!("other")), "{methods:?}");
    // The audit names the server by the address the kernel recorded.
    let refused: Vec<Value> = gw
        .audit_records()
        .into_iter()
        .filter(|r| r["type"] == "mcp" && r["name"] == "echo" && r["outcome"] == "refused")
        .collect();
    assert_eq!(refused.len(), hosts.len(), "{:#?}", gw.audit_records());
    for r in &refused {
        assert_eq!(r["server"], format!("127.0.0.1:{port}"), "{r}");
        assert_eq!(r["decision"]["action"], "deny", "{r}");
    }
}

#[test]
fn a_server_configured_by_host_only_is_not_reached_over_plain_http_by_naming_it() {
    let port = free_port();
    let gw = Gateway::start(
        "server-host-only",
        GatewayOptions {
            ports: vec![port],
            extra: format!("[[server]]\nname = \"named\"\nhost = \"mcp.invalid\"\nport = {port}\n"),
            ..Default::default()
        },
    );
    let log = gw.dir.path().join("server.log");
    let _server = start_fake(port, &log);
    let out = post(&gw, port, &format!("MCP.invalid:{port}"), &call(1, "echo"));
    assert_eq!(out["status"], 421, "{out}");
    let body = out["body"].as_str().unwrap();
    assert!(
        body.contains("\"named\"") && body.contains("plain HTTP"),
        "{body}"
    );
    assert!(received(&log).is_empty(), "the request reached the server");
    // Without the name, the request is for the address the kernel recorded.
    let out = post(&gw, port, &format!("127.0.0.1:{port}"), &call(2, "echo"));
    assert_eq!(out["status"], 200, "{out}");
    let r = gw.wait_record("the call's record", |r| {
        r["type"] == "mcp_call" && r["name"] == "echo"
    });
    assert_eq!(r["server"], format!("127.0.0.1:{port}"), "{r}");
}
