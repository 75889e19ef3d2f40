//! The 2026-07-28 revision's headers say what the body says, or the request goes no
//! further: `Mcp-Param-{Name}` headers mirrored from tool arguments (`x-mcp-header`), the
//! protocol version in `MCP-Protocol-Version` and in `_meta`, and only versions the gateway
//! reads. The official Python SDK's 2026-07-28 client passes; requests that lie are refused
//! with 400 and the code the revision names, never forwarded, and recorded.

use gateway_tests::config::{RedactMode, Server, TestConfig};
use gateway_tests::peers::{python_server, run_json, venv_python, Peer};
use gateway_tests::{free_port, Gateway, GatewayOptions};
use serde_json::{json, Value};

const SERVER: &str = include_str!("../fixtures/header_server.py");
const CLIENT: &str = include_str!("../fixtures/modern_client.py");

fn setup(name: &str) -> (Peer, Gateway, tempfile::TempDir) {
    setup_with(
        name,
        TestConfig::allowing("agent", Server::at("regions", 0)),
    )
}

/// As `setup`, the gateway configured by `config` (its server's port set here).
fn setup_with(name: &str, mut config: TestConfig) -> (Peer, Gateway, tempfile::TempDir) {
    gateway_tests::require_privileges();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("received.jsonl");
    let port_arg = port.to_string();
    let args = [port_arg.as_ref(), log.as_os_str()];
    let srv = python_server("header-server", SERVER, &args, port, "/mcp");
    let gw = Gateway::start(
        name,
        GatewayOptions {
            ports: vec![port],
            config: {
                config.servers[0] = Server::at("regions", port);
                config
            },
            ..Default::default()
        },
    );
    (srv, gw, dir)
}

fn modern_client(gw: &Gateway, srv: &Peer, region: &str) -> Value {
    let args = ["-c", CLIENT, &srv.url, region].map(String::from).to_vec();
    run_json(gw.agent(venv_python().to_str().unwrap(), &args))
}

fn raw(gw: &Gateway, srv: &Peer, headers: Value, body: &Value) -> (u16, Value) {
    gateway_tests::raw::post(gw, None, srv.port, &headers, body)
}

fn call(version: &str, region: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
        "name": "deploy", "arguments": {"region": region, "app": "shop"},
        "_meta": {"io.modelcontextprotocol/protocolVersion": version,
                  "io.modelcontextprotocol/clientCapabilities": {}}}})
}

fn modern_headers(extra: Value) -> Value {
    let mut h = json!({"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call",
                       "Mcp-Name": "deploy"});
    for (k, v) in extra.as_object().unwrap() {
        h[k] = v.clone();
    }
    h
}

#[test]
fn the_sdk_client_mirroring_arguments_into_headers_passes() {
    let (srv, gw, dir) = setup("modern-honest");
    // Not visible ASCII: the SDK sends it Base64-wrapped, the gateway decodes to compare.
    let out = modern_client(&gw, &srv, "eu-west ü");
    assert_eq!(out["tools"], json!(["deploy"]), "{out}");
    assert_eq!(out["call"]["text"], "deployed shop to eu-west ü", "{out}");
    let calls = runs(&dir);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["region"], "eu-west ü");
}

#[test]
fn headers_that_disagree_with_the_body_are_refused_before_the_server() {
    let (srv, gw, dir) = setup("modern-lying");
    // The gateway learns the tool's mirrored arguments from a listing, as a client does.
    let out = modern_client(&gw, &srv, "eu");
    assert_eq!(out["call"]["text"], "deployed shop to eu", "{out}");

    let cases: Vec<(&str, Value, Value, i64, &str)> = vec![
        (
            "a mirrored header that says another region",
            modern_headers(json!({"Mcp-Param-Region": "us"})),
            call("2026-07-28", "eu"),
            -32020,
            "Mcp-Param-Region does not match",
        ),
        (
            "a mirrored header left out",
            modern_headers(json!({})),
            call("2026-07-28", "eu"),
            -32020,
            "Mcp-Param-Region is missing",
        ),
        (
            "a mirrored header in an older version",
            json!({"MCP-Protocol-Version": "2025-11-25", "Mcp-Param-Region": "eu"}),
            json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                   "params": {"name": "deploy", "arguments": {"region": "eu", "app": "shop"}}}),
            -32020,
            "belongs to protocol version 2026-07-28",
        ),
        (
            "a version header that disagrees with _meta",
            modern_headers(json!({"Mcp-Param-Region": "eu"})),
            call("2025-11-25", "eu"),
            -32020,
            "MCP-Protocol-Version header says",
        ),
        (
            "a version the gateway does not know",
            modern_headers(json!({"MCP-Protocol-Version": "2099-01-01", "Mcp-Param-Region": "eu"})),
            call("2099-01-01", "eu"),
            -32022,
            "not one the gateway supports",
        ),
    ];
    for (what, headers, body, code, words) in cases {
        let (status, answer) = raw(&gw, &srv, headers, &body);
        assert_eq!(status, 400, "{what}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{what}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{what}: {message}");
        let record = gw.wait_record(&format!("of {what}"), |r| {
            r["type"] == "mcp"
                && r["outcome"] == "refused"
                && r["detail"].as_str().is_some_and(|d| d.contains(words))
        });
        assert_eq!(record["error_code"], code, "{what}: {record}");
        assert_eq!(record["method"], "tools/call", "{what}: {record}");
    }
    // Only the honest call reached the server.
    assert_eq!(runs(&dir).len(), 1, "{:?}", runs(&dir));
}

/// The calls the server ran, as it logged them (its log also holds the headers it got).
fn runs(dir: &tempfile::TempDir) -> Vec<Value> {
    gateway_tests::raw::lines(&dir.path().join("received.jsonl"))
        .into_iter()
        .filter(|l| l["tool"] == "deploy")
        .collect()
}

/// A call whose mirrored argument carries a secret, with arguments redacted on the way
/// out: the `Mcp-Param-*` header that mirrors it says what the redacted body says, so the
/// secret leaves the host neither in the body nor in the header.
#[test]
fn a_redacted_argument_is_redacted_in_the_header_that_mirrors_it_too() {
    let (srv, gw, dir) = setup_with(
        "modern-redacted",
        TestConfig::allowing("agent", Server::at("regions", 0))
            .redact(RedactMode::Redact, RedactMode::Off),
    );
    let out = modern_client(&gw, &srv, "eu");
    assert_eq!(out["call"]["text"], "deployed shop to eu", "{out}");
    for region in ["eu AKIAZ7QX3M2L5RT6PW4N", "eü AKIAZ7QX3M2L5RT6PW4N"] {
        let header = if region.is_ascii() {
            region.to_string()
        } else {
            use base64::Engine as _;
            format!(
                "=?base64?{}?=",
                base64::engine::general_purpose::STANDARD.encode(region)
            )
        };
        let (status, answer) = raw(
            &gw,
            &srv,
            modern_headers(json!({ "Mcp-Param-Region": header })),
            &call("2026-07-28", region),
        );
        assert_eq!(status, 200, "{region}: {answer}");
        assert!(answer.get("error").is_none(), "{region}: {answer}");
    }
    let received = gateway_tests::raw::lines(&dir.path().join("received.jsonl"));
    let text = serde_json::to_string(&received).unwrap();
    assert!(
        !text.contains("AKIA"),
        "the secret reached the server: {text}"
    );
    let regions: Vec<Value> = runs(&dir)
        .into_iter()
        .map(|l| l["region"].clone())
        .collect();
    assert_eq!(
        regions,
        [
            "eu",
            "eu [REDACTED:aws_access_key_id]",
            "eü [REDACTED:aws_access_key_id]"
        ],
        "{text}"
    );
}
