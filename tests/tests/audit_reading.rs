//! The ledger as an administrator reads it after an ordinary day: every record of a
//! connection carries its id (and how TLS carried it), `audit show --connection` follows one
//! in order, an SDK client's ordinary exit is no error, a client that does not trust the
//! gateway's CA is said to be that, and injected credentials are named (never shown).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use gateway_tests::config::{Credential, Server, TestConfig};
use gateway_tests::peers::{
    everything, python_client_cmd, rmcp_server, rmcp_server_tls, run_json, Transport,
};
use gateway_tests::tls::{host_store_only, host_trust, TestPki};
use gateway_tests::{free_port, gateway_bin, Gateway, GatewayOptions};
use serde_json::Value;

const TLS_AGENT: &str = include_str!("../fixtures/tls_agent.py");

/// A gateway terminating TLS for `secure` (the rmcp server on `tls_port`), which gets an
/// `X-Api-Key` credential; `plain_port` is in scope too, unconfigured.
fn gateway(name: &str, tls_port: u16, plain_port: u16, pki: &TestPki) -> Gateway {
    let key = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    let key = key.keep().unwrap();
    std::fs::write(&key, "sk-test-api-key-0123456789\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    Gateway::start(
        name,
        GatewayOptions {
            ports: vec![tls_port, plain_port],
            config: TestConfig {
                servers: vec![Server {
                    credentials: vec![Credential {
                        header: "X-Api-Key".into(),
                        file: Some(key.display().to_string()),
                    }],
                    ..Server::tls("secure", "localhost", tls_port)
                }],
                ..Default::default()
            },
            tls: format!("extra_roots = [{:?}]\n", pki.ca_pem().display().to_string()),
            ..Default::default()
        },
    )
}

fn flows(gw: &Gateway) -> Vec<Value> {
    gw.audit_records()
        .into_iter()
        .filter(|r| r["type"] == "flow")
        .collect()
}

/// Waits until every connection that carried an MCP record has its flow record (written
/// when the connection ends); returns the records.
fn settled(gw: &Gateway) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let records = gw.audit_records();
        let flows: BTreeSet<&str> = records
            .iter()
            .filter(|r| r["type"] == "flow")
            .filter_map(|r| r["connection"].as_str())
            .collect();
        let open: Vec<&str> = records
            .iter()
            .filter(|r| r["type"] == "mcp" || r["type"] == "mcp_call")
            .filter_map(|r| r["connection"].as_str())
            .filter(|c| !flows.contains(c))
            .collect();
        if open.is_empty() {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "connections without a flow record: {open:?}\n{records:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_connections_records_share_its_id_and_audit_show_follows_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let (cert, key) = pki.issue("server", &["localhost", "127.0.0.1"]);
    let (tls_port, plain_port) = (free_port(), free_port());
    let secure = rmcp_server_tls(tls_port, &cert, &key);
    let plain = rmcp_server(plain_port);
    let gw = gateway("audit-links", tls_port, plain_port, &pki);

    // Ordinary SDK sessions, each ended the way the SDK ends one. Several, because how the
    // last bytes cross (the agent's close and the gateway's close_notify) varies by run.
    for _ in 0..4 {
        let cmd = python_client_cmd(&secure.url, Transport::Streamable);
        run_json(gw.wrap(host_trust(cmd, &[gw.ca_pem().as_path()])));
    }
    for _ in 0..2 {
        run_json(gw.wrap(python_client_cmd(&plain.url, Transport::Streamable)));
    }
    let records = settled(&gw);

    // An ordinary exit is no failure.
    let flows: Vec<&Value> = records.iter().filter(|r| r["type"] == "flow").collect();
    assert!(flows.len() >= 6, "{flows:#?}");
    for f in &flows {
        assert_ne!(
            f["outcome"], "error",
            "an ordinary exit recorded as an error: {f}"
        );
        assert!(f.get("error").is_none(), "{f}");
        let id = f["connection"].as_str().expect("every flow has its id");
        assert!(id.split_once('-').is_some(), "{id}");
    }
    let by_id: BTreeMap<&str, &Value> = flows
        .iter()
        .map(|f| (f["connection"].as_str().unwrap(), *f))
        .collect();
    assert_eq!(by_id.len(), flows.len(), "flow ids are unique: {flows:#?}");

    // Each exchange names its connection, and carries the TLS facts its flow has.
    let exchanges: Vec<&Value> = records
        .iter()
        .filter(|r| r["type"] == "mcp" || r["type"] == "mcp_call")
        .collect();
    for r in &exchanges {
        let flow = by_id[r["connection"].as_str().unwrap()];
        if r["server"] == "secure" {
            let tls = &r["tls"];
            assert_eq!(tls["mode"], "terminated", "{r}");
            assert_eq!(tls["sni"], "localhost", "{r}");
            assert_eq!(tls["alpn"], "http/1.1", "{r}");
            assert_eq!(flow["tls"]["sni"], tls["sni"], "{flow}");
            assert_eq!(flow["tls"]["alpn"], tls["alpn"], "{flow}");
        } else {
            assert!(r.get("tls").is_none(), "{r}");
            assert!(flow.get("tls").is_none(), "{flow}");
        }
    }

    // The credential the gateway set is named on each call to its server, never shown.
    let call = records
        .iter()
        .find(|r| r["type"] == "mcp_call" && r["server"] == "secure" && r["method"] == "tools/call")
        .expect("a tools/call to the TLS server");
    assert_eq!(
        call["credentials"],
        serde_json::json!(["x-api-key"]),
        "{call}"
    );
    let ledger = std::fs::read_to_string(&gw.audit).unwrap();
    assert!(
        !ledger.contains("sk-test-api-key"),
        "a credential in the ledger"
    );
    assert!(
        records.iter().all(|r| r["server"] != "secure"
            || r["type"] != "mcp_call"
            || r["credentials"] == serde_json::json!(["x-api-key"])),
        "every call to the server got its credential"
    );
    let log = gw.log();
    assert!(
        log.lines()
            .any(|l| l.contains("INFO") && l.contains("credentials applied")),
        "injection is visible at the default log level:\n{log}"
    );

    // `audit show --connection` (config from the environment, no --config) prints that
    // connection's records, in ledger order, ending with its flow.
    let id = call["connection"].as_str().unwrap();
    let out = Command::new(gateway_bin())
        .args(["audit", "show", "--connection", id])
        .env("MCP_GATEWAY_CONFIG", &gw.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = shown.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = records
        .iter()
        .filter(|r| r["connection"] == id || r["answered_on"] == id)
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, expected, "{shown:#?}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let kinds: Vec<&str> = shown.iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert!(
        kinds.contains(&"mcp_call") && kinds.contains(&"mcp"),
        "{kinds:?}"
    );
    assert_eq!(kinds.last(), Some(&"flow"), "{kinds:?}");
}

#[test]
fn an_agent_that_does_not_trust_the_gateway_ca_is_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let (cert, key) = pki.issue("server", &["localhost", "127.0.0.1"]);
    let (tls_port, plain_port) = (free_port(), free_port());
    let secure = rmcp_server_tls(tls_port, &cert, &key);
    let gw = gateway("audit-untrusted", tls_port, plain_port, &pki);
    let ca = gw.ca_pem().display().to_string();

    // The Python SDK, trusting only the host's store (which lacks the gateway's CA).
    let out = gw
        .wrap(host_store_only(python_client_cmd(
            &secure.url,
            Transport::Streamable,
        )))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the client trusted the gateway's leaf"
    );
    // Python's ssl module, the same way.
    let port = tls_port.to_string();
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(TLS_AGENT)
        .args(["handshake", "127.0.0.1", &port, "--sni", "localhost"]);
    let seen = run_json(gw.wrap(host_store_only(cmd)));
    assert_eq!(seen["ok"], false, "{seen}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let rejected = loop {
        let r: Vec<Value> = flows(&gw)
            .into_iter()
            .filter(|f| f["tls"]["mode"] == "terminated")
            .collect();
        if r.len() >= 2 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(rejected.len() >= 2, "{rejected:#?}");
    for f in &rejected {
        assert_eq!(f["outcome"], "agent_tls_rejected", "{f}");
        let why = f["error"].as_str().unwrap();
        assert!(
            why.contains("does not trust the gateway's CA") && why.contains(&ca),
            "{why}"
        );
        // The flow says what was agreed, null or not, whatever the outcome.
        assert!(f["tls"].as_object().unwrap().contains_key("alpn"), "{f}");
    }
}

#[test]
fn a_legacy_answer_names_the_stream_it_came_on() {
    let port = free_port();
    let server = everything(Transport::Sse, port);
    let gw = Gateway::start(
        "audit-legacy",
        GatewayOptions {
            ports: vec![port],
            ..Default::default()
        },
    );
    run_json(gw.wrap(python_client_cmd(&server.url, Transport::Sse)));
    let records = settled(&gw);

    // The call came on a POST; its answer on the session's GET stream, another connection.
    let call = records
        .iter()
        .find(|r| r["type"] == "mcp" && r["method"] == "tools/call")
        .unwrap_or_else(|| panic!("no call: {records:#?}"));
    let (posted, streamed) = (&call["connection"], &call["answered_on"]);
    assert!(posted.is_string() && streamed.is_string(), "{call}");
    assert_ne!(posted, streamed, "{call}");
    let write_ahead = records
        .iter()
        .find(|r| r["type"] == "mcp_call" && r["id"] == call["id"] && r["method"] == "tools/call")
        .unwrap();
    assert_eq!(&write_ahead["connection"], posted, "{write_ahead}");
    for id in [posted, streamed] {
        let out = gw.cli(&["audit", "show", "--connection", id.as_str().unwrap()]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.lines()
                .any(|l| serde_json::from_str::<Value>(l).unwrap()["seq"] == call["seq"]),
            "{id}: {text}"
        );
    }
    for f in records.iter().filter(|r| r["type"] == "flow") {
        assert_ne!(f["outcome"], "error", "{f}");
    }
}

/// A server that answers each connection with `answer` and closes it.
fn one_answer_server(answer: &'static [u8]) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(answer);
        }
    });
    port
}

#[test]
fn a_server_that_cuts_its_answer_short_is_a_failure_not_a_close() {
    let short = one_answer_server(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part");
    let whole = one_answer_server(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nwhole",
    );
    let gw = Gateway::start(
        "audit-cut-short",
        GatewayOptions {
            ports: vec![short, whole],
            ..Default::default()
        },
    );
    for port in [short, whole] {
        let mut curl = Command::new("curl");
        curl.args([
            "-s",
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{port}/file"),
        ]);
        let _ = gw.wrap(curl).status().unwrap();
    }
    let flow_to = |port: u16| {
        gw.wait_record(&format!("the flow to {port}"), |r| {
            r["type"] == "flow" && r["orig_dst"] == format!("127.0.0.1:{port}")
        })
    };
    // The server's truncated body is not the agent hanging up.
    let cut = flow_to(short);
    assert_eq!(cut["outcome"], "error", "{cut}");
    assert!(cut["error"].is_string(), "{cut}");
    let fine = flow_to(whole);
    assert_eq!(fine["outcome"], "closed", "{fine}");
    assert!(fine.get("error").is_none(), "{fine}");
}
