//! Credential injection with real agents: a server that demands a bearer token is used by
//! unmodified agents that have none (the official Python SDK client) or the wrong one (the
//! SDK with its own token, a raw HTTP agent); the server sees the gateway's token, and the
//! token is nowhere an agent can read — not in what the server echoes (JSON, SSE split
//! mid-token, response headers), nor in the audit, nor in the daemon's log. A server
//! matched only by its Host header over plain HTTP never gets the token.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gateway_tests::fake::received;
use gateway_tests::peers::venv_python;
use gateway_tests::{free_port, Gateway, GatewayOptions, PYTHON};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const FAKE_SERVER: &str = include_str!("../fixtures/fake_mcp_server.py");
const SDK_CLIENT: &str = include_str!("../fixtures/policy_client.py");

/// The official SDK with a token of its own (an agent configured for the server directly).
const SDK_WITH_TOKEN: &str = r#"
import asyncio, json, sys
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

async def main(url):
    headers = {"Authorization": "Bearer agent-token", "X-Api-Key": "agent-key"}
    out = {}
    async with create_mcp_http_client(headers=headers) as http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                out["tools"] = sorted(t.name for t in (await session.list_tools()).tools)
                r = await session.call_tool("echo_auth", {})
                out["text"] = " ".join(getattr(b, "text", "") for b in r.content)
                out["structured"] = r.structured_content
    print(json.dumps(out), flush=True)

asyncio.run(main(sys.argv[1]))
"#;

/// A raw HTTP agent: makes the requests it is given on one connection, with its own
/// headers, and prints everything it read back (status, headers, body).
const RAW_HTTP: &str = r#"
import http.client, json, sys
port, common, todo = int(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
session, out = None, []
for r in todo:
    h = dict(common)
    h.update(r.get("headers", {}))
    if session:
        h["Mcp-Session-Id"] = session
    body = None
    if r.get("body") is not None:
        body = json.dumps(r["body"]).encode()
        h["Content-Type"] = "application/json"
        h["Accept"] = "application/json, text/event-stream"
    c.request(r["method"], r["path"], body=body, headers=h)
    resp = c.getresponse()
    data = resp.read().decode("utf-8", "replace")
    session = resp.getheader("Mcp-Session-Id") or session
    out.append({"status": resp.status, "headers": dict(resp.getheaders()), "body": data})
print(json.dumps(out), flush=True)
"#;

/// The fake MCP server in its token-demanding mode.
struct AuthServer(Child);

impl Drop for AuthServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_auth_server(port: u16, log: &Path, token: &str) -> AuthServer {
    let child = Command::new(PYTHON)
        .args(["-c", FAKE_SERVER, &port.to_string()])
        .arg(log)
        .env("FAKE_MCP_REQUIRE_TOKEN", token)
        .stdout(Stdio::null())
        .spawn()
        .expect("starting the fake MCP server");
    let server = AuthServer(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "fake MCP server did not start on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

/// A fresh random token, and the root-only file holding it (with the trailing newline
/// `echo` would write).
fn token_file(dir: &Path) -> (String, PathBuf) {
    let mut raw = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut raw)
        .unwrap();
    let token = format!("gwtok-{}", hex::encode(raw));
    let path = dir.join("upstream-token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (token, path)
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Runs an agent; returns its stdout (asserting success) and everything it printed.
fn run_agent(mut cmd: Command) -> (Value, String) {
    let out = cmd.output().expect("starting the agent");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "agent failed ({}): stdout={stdout} stderr={stderr}",
        out.status
    );
    let v = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("agent printed {stdout:?}, not one JSON value: {e}"));
    (v, format!("{stdout}\n{stderr}"))
}

fn assert_hidden(token: &str, what: &str, text: &str) {
    assert!(
        !text.contains(token),
        "the injected token is visible in {what}"
    );
    // Not even a recognisable piece of it.
    assert!(
        !text.contains(&token[6..30]),
        "part of the injected token is visible in {what}"
    );
}

fn credential_config(port: u16, file: &Path) -> String {
    format!(
        r#"
[[server]]
name = "authed"
address = "127.0.0.1:{port}"
# The gateway's own scrubbing must hide echoes, without help from the detectors.
redact_responses = "off"
[[server.credential]]
header = "Authorization"
file = "{}"
format = "Bearer {{}}"
[[server.credential]]
header = "X-Api-Key"
"#,
        file.display()
    )
}

fn rpc(id: u64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

#[test]
fn agents_without_the_secret_use_the_servers_credential_and_never_see_it() {
    let secrets = tempfile::tempdir().unwrap();
    let (token, file) = token_file(secrets.path());
    let port = free_port();
    let gw = Gateway::start(
        "credentials",
        GatewayOptions {
            ports: vec![port],
            extra: credential_config(port, &file),
            ..Default::default()
        },
    );
    let log = gw.dir.path().join("server.log");
    let _server = start_auth_server(port, &log, &token);
    let url = format!("http://127.0.0.1:{port}/mcp");
    let mut seen_by_agents = String::new();

    // 1. The official SDK client, with no token at all.
    let mut sdk = Command::new(venv_python());
    sdk.args(["-c", SDK_CLIENT, &url])
        .arg(json!([{"name": "echo_auth"}, {"name": "echo_auth_sse"}]).to_string());
    let (out, printed) = run_agent(gw.wrap(sdk));
    seen_by_agents.push_str(&printed);
    assert_eq!(out["failed"], Value::Null, "{out}");
    assert_eq!(out["tools"], json!(["echo_auth", "echo_auth_sse"]), "{out}");
    for i in 0..2 {
        let call = &out["calls"][i];
        assert_eq!(call["ok"], true, "{out}");
        let text = call["text"].as_str().unwrap();
        assert!(
            text.starts_with("Authorization: Bearer [REDACTED:injected-credential"),
            "the echo is masked: {text}"
        );
    }

    // 2. The SDK with its own (wrong) token and an API key of its own.
    let mut sdk = Command::new(venv_python());
    sdk.args(["-c", SDK_WITH_TOKEN, &url]);
    let (out, printed) = run_agent(gw.wrap(sdk));
    seen_by_agents.push_str(&printed);
    assert!(
        out["text"]
            .as_str()
            .unwrap()
            .starts_with("Authorization: Bearer [REDACTED:injected-credential"),
        "{out}"
    );
    assert!(
        out["structured"]["authorization"]
            .as_str()
            .unwrap()
            .starts_with("Bearer [REDACTED:injected-credential"),
        "{out}"
    );

    // 3. A raw HTTP agent with the wrong token: JSON, SSE split mid-token, headers, and a
    //    request that is not MCP (its Authorization is removed, none is added).
    let common = json!({"Authorization": "Bearer agent-token", "X-Api-Key": "agent-key"});
    let init = rpc(
        1,
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "raw", "version": "1"}}),
    );
    let todo = json!([
        {"method": "POST", "path": "/mcp", "body": init},
        {"method": "POST", "path": "/mcp",
         "body": {"jsonrpc": "2.0", "method": "notifications/initialized"}},
        {"method": "POST", "path": "/mcp",
         "body": rpc(2, "tools/call", json!({"name": "echo_auth", "arguments": {}}))},
        {"method": "POST", "path": "/mcp",
         "body": rpc(3, "tools/call", json!({"name": "echo_auth_sse", "arguments": {}}))},
        {"method": "GET", "path": "/debug/headers"},
    ]);
    let (out, printed) = run_agent(gw.agent(
        PYTHON,
        &[
            "-c".into(),
            RAW_HTTP.into(),
            port.to_string(),
            common.to_string(),
            todo.to_string(),
        ],
    ));
    seen_by_agents.push_str(&printed);
    for (i, status) in [(0, 200), (1, 202), (2, 200), (3, 200)] {
        assert_eq!(out[i]["status"], status, "request {i}: {}", out[i]);
    }
    let echo: Value = serde_json::from_str(out[2]["body"].as_str().unwrap()).unwrap();
    let text = echo["result"]["content"][0]["text"].as_str().unwrap();
    assert!(
        text.starts_with("Authorization: Bearer [REDACTED:injected-credential"),
        "{text}"
    );
    let header = out[2]["headers"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-echo-authorization"))
        .and_then(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("the echo header: {}", out[2]));
    assert!(
        header.starts_with("Bearer [REDACTED:injected-credential"),
        "{header}"
    );
    let sse = out[3]["body"].as_str().unwrap();
    assert!(
        sse.contains("Authorization: Bearer [REDACTED:injected-credential"),
        "{sse}"
    );
    // Not MCP: the credential (not marked non_mcp) is not sent, and the agent's is gone.
    assert_eq!(out[4]["status"], 401, "{}", out[4]);

    // The server saw the gateway's token on every MCP request, never the agent's headers.
    let entries = received(&log);
    let mcp: Vec<&Value> = entries
        .iter()
        .filter(|e| e.get("method").is_some())
        .collect();
    assert!(mcp.len() >= 10, "{entries:#?}");
    for e in &mcp {
        assert_eq!(e["auth"], "ok", "{e}");
        assert_eq!(e["auth_sha256"], sha256_hex(&token), "{e}");
        assert_eq!(
            e["x_api_key"], false,
            "the agent's X-Api-Key was removed: {e}"
        );
    }
    assert!(
        mcp.iter().any(|e| e["name"] == "echo_auth_sse"),
        "{entries:#?}"
    );
    let get = entries
        .iter()
        .find(|e| e["get"] == "/debug/headers")
        .unwrap_or_else(|| panic!("{entries:#?}"));
    assert_eq!(get["auth"], "missing", "{get}");
    assert_eq!(get["x_api_key"], false, "{get}");

    // The calls were audited like any other.
    gw.wait_record("for the echo_auth_sse call", |r| {
        r["type"] == "mcp" && r["name"] == "echo_auth_sse" && r["outcome"] == "ok"
    });

    assert_hidden(&token, "what the agents read", &seen_by_agents);
    let audit = std::fs::read_to_string(&gw.audit).unwrap();
    assert!(audit.contains("echo_auth"), "the audit has the calls");
    assert_hidden(&token, "the audit", &audit);
    let daemon_log = gw.log();
    assert!(
        daemon_log.contains("credentials applied"),
        "the daemon logs what it did (header names only):\n{daemon_log}"
    );
    assert_hidden(&token, "the daemon's log", &daemon_log);
    assert_hidden(
        &token,
        "the server's log",
        &std::fs::read_to_string(&log).unwrap(),
    );
}

#[test]
fn credentials_never_go_to_a_destination_matched_by_host_alone() {
    let secrets = tempfile::tempdir().unwrap();
    let (token, file) = token_file(secrets.path());
    let port = free_port();
    // Matched by the Host header only, over plain HTTP: whatever address the agent dialed
    // would get the token, so the gateway refuses.
    let gw = Gateway::start(
        "credentials-host",
        GatewayOptions {
            ports: vec![port],
            extra: format!(
                r#"
[[server]]
name = "by-host"
host = "api.invalid"
port = {port}
[[server.credential]]
header = "Authorization"
file = "{}"
format = "Bearer {{}}"
"#,
                file.display()
            ),
            ..Default::default()
        },
    );
    let log = gw.dir.path().join("server.log");
    let _server = start_auth_server(port, &log, &token);
    let todo = json!([
        {"method": "POST", "path": "/mcp", "headers": {"Host": "api.invalid"},
         "body": rpc(1, "tools/call", json!({"name": "echo_auth", "arguments": {}}))},
    ]);
    let (out, printed) = run_agent(gw.agent(
        PYTHON,
        &[
            "-c".into(),
            RAW_HTTP.into(),
            port.to_string(),
            "{}".into(),
            todo.to_string(),
        ],
    ));
    assert_eq!(out[0]["status"], 421, "{out}");
    let body = out[0]["body"].as_str().unwrap();
    assert!(
        body.contains("by-host") && body.contains("plain HTTP"),
        "{body}"
    );
    assert!(
        received(&log).is_empty(),
        "the request never reached the server"
    );
    assert_hidden(&token, "what the agent read", &printed);
    assert_hidden(&token, "the daemon's log", &gw.log());
}
