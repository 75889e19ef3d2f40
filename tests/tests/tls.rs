//! TLS termination with real peers: MCP servers reached over HTTPS are terminated with a
//! leaf from the gateway's CA (trusted host-wide, the way an administrator would), verified
//! upstream against the server's real CA, and audited as MCP; other TLS passes through with
//! the real server's certificate; bad handshakes and bad upstreams are refused cleanly.

use std::path::Path;
use std::process::Command;

use gateway_tests::peers::{
    python_client_cmd, rmcp_client_cmd, rmcp_server_tls, run_json, Profile, Transport,
};
use gateway_tests::tls::{der_sha256, host_store_only, host_trust, TestPki};
use gateway_tests::{fake, free_port, Gateway, GatewayOptions};
use serde_json::Value;

const TLS_AGENT: &str = include_str!("../fixtures/tls_agent.py");

fn gateway(name: &str, ports: Vec<u16>, servers: &str, tls: &str) -> Gateway {
    Gateway::start(
        name,
        GatewayOptions {
            ports,
            extra: servers.into(),
            tls: tls.into(),
            ..Default::default()
        },
    )
}

/// `tls_agent.py MODE 127.0.0.1 PORT --sni localhost --cafile CA`, as an agent of `gw`.
fn to_localhost(gw: &Gateway, mode: &str, port: u16, ca: &Path) -> Value {
    let (port, ca) = (port.to_string(), ca.display().to_string());
    tls_agent(
        gw,
        &[
            mode,
            "127.0.0.1",
            &port,
            "--sni",
            "localhost",
            "--cafile",
            &ca,
        ],
    )
}

/// `tests/fixtures/tls_agent.py` with `args`, as an agent of `gw`.
fn tls_agent(gw: &Gateway, args: &[&str]) -> Value {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(TLS_AGENT).args(args);
    run_json(gw.wrap(cmd))
}

fn extra_roots(ca: &Path) -> String {
    format!("extra_roots = [{:?}]\n", ca.display().to_string())
}

fn flow_with(gw: &Gateway, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    gw.wait_record(what, |r| r["type"] == "flow" && pred(r))
}

#[test]
fn sdk_clients_reach_an_https_mcp_server_through_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let (cert, key) = pki.issue("server", &["localhost", "127.0.0.1"]);
    let port = free_port();
    let server = rmcp_server_tls(port, &cert, &key);
    let gw = gateway(
        "tls-sdk",
        vec![port],
        &format!("[[server]]\nname = \"secure\"\nhost = \"localhost\"\nport = {port}\n"),
        &extra_roots(&pki.ca_pem()),
    );

    // Direct, each client trusts the server's CA; as an agent, only the gateway's: that
    // the mediated run succeeds at all shows the agent was shown the gateway's leaf.
    for (client, cmd) in [
        (
            "python-mcp",
            python_client_cmd(&server.url, Transport::Streamable),
        ),
        ("rmcp", rmcp_client_cmd(&server.url, Profile::Rmcp)),
    ] {
        let direct = run_json(host_trust(clone(&cmd), &[pki.ca_pem().as_path()]));
        let mediated = run_json(gw.wrap(host_trust(clone(&cmd), &[gw.ca_pem().as_path()])));
        assert_eq!(
            mediated, direct,
            "{client}: results differ through the gateway"
        );
    }

    // Flow records are written as connections end: wait for both clients' to be there.
    for alpn in ["h2", "http/1.1"] {
        flow_with(&gw, alpn, |r| r["tls"]["alpn"] == alpn);
    }
    let records = gw.mcp_records();
    let calls: Vec<&Value> = records
        .iter()
        .filter(|r| r["method"] == "tools/call" && r["name"] == "echo")
        .collect();
    assert_eq!(calls.len(), 2, "one echo call per client: {records:#?}");
    for c in &calls {
        assert_eq!(c["outcome"], "ok", "{c}");
        assert_eq!(c["server"], "secure", "{c}");
    }
    for method in ["initialize", "tools/list"] {
        assert!(
            records
                .iter()
                .any(|r| r["method"] == method && r["outcome"] == "ok"),
            "no {method} in {records:#?}"
        );
    }
    let flows: Vec<Value> = gw
        .audit_records()
        .into_iter()
        .filter(|r| r["type"] == "flow" && r["tls"]["mode"] == "terminated")
        .collect();
    assert!(!flows.is_empty(), "terminated flows are audited");
    for f in &flows {
        assert_eq!(f["tls"]["sni"], "localhost", "{f}");
    }
    // The rmcp client (reqwest) offers h2 and the server picks it; the Python SDK speaks
    // HTTP/1.1. The agent is offered what the server chose.
    let alpns: std::collections::BTreeSet<String> = flows
        .iter()
        .filter_map(|f| f["tls"]["alpn"].as_str().map(str::to_owned))
        .collect();
    assert!(
        alpns.contains("h2") && alpns.contains("http/1.1"),
        "{alpns:?}"
    );
}

fn clone(cmd: &Command) -> Command {
    let mut c = Command::new(cmd.get_program());
    c.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}

#[test]
fn tls_to_other_hosts_passes_through_with_the_real_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let (cert, key) = pki.issue("web", &["localhost"]);
    let port = free_port();
    let _server = rmcp_server_tls(port, &cert, &key);
    let gw = gateway("tls-pass", vec![port], "", "");
    let seen = to_localhost(&gw, "resume", port, &pki.ca_pem());
    assert_eq!(seen["first"]["ok"], true, "{seen}");
    assert_eq!(
        seen["first"]["cert_sha256"],
        der_sha256(&cert),
        "the agent sees the server's own certificate: {seen}"
    );
    assert_eq!(seen["first"]["issuer_cn"], "mcp-gateway tests CA", "{seen}");
    let flow = flow_with(&gw, "passthrough", |r| r["tls"]["mode"] == "passthrough");
    assert_eq!(flow["tls"]["sni"], "localhost", "{flow}");
    assert!(flow["bytes_to_agent"].as_u64().unwrap() > 0, "{flow}");
    assert!(
        gw.mcp_records().is_empty(),
        "nothing of a passed-through flow is read as MCP"
    );
}

#[test]
fn an_agent_session_resumes_and_shows_the_gateway_leaf() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let (cert, key) = pki.issue("server", &["localhost"]);
    let port = free_port();
    let _server = rmcp_server_tls(port, &cert, &key);
    let gw = gateway(
        "tls-resume",
        vec![port],
        &format!("[[server]]\nname = \"secure\"\nhost = \"localhost\"\nport = {port}\n"),
        &extra_roots(&pki.ca_pem()),
    );
    let seen = to_localhost(&gw, "resume", port, &gw.ca_pem());
    assert_eq!(seen["first"]["ok"], true, "{seen}");
    let issuer = seen["first"]["issuer_cn"].as_str().unwrap_or_default();
    assert!(issuer.starts_with("mcp-gateway local CA"), "{seen}");
    assert_ne!(seen["first"]["cert_sha256"], der_sha256(&cert));
    assert_eq!(
        seen["reused"], true,
        "the second connection resumes: {seen}"
    );
}

#[test]
fn upstreams_with_bad_certificates_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let (self_cert, self_key) =
        gateway_tests::tls::self_signed(dir.path(), "selfsigned", &["localhost"]);
    let (wrong_cert, wrong_key) = pki.issue("wrong-name", &["elsewhere.example"]);
    let (p1, p2) = (free_port(), free_port());
    let _s1 = rmcp_server_tls(p1, &self_cert, &self_key);
    let _s2 = rmcp_server_tls(p2, &wrong_cert, &wrong_key);
    let gw = gateway(
        "tls-badup",
        vec![p1, p2],
        &format!(
            "[[server]]\nname = \"self-signed\"\nhost = \"localhost\"\nport = {p1}\n\
             [[server]]\nname = \"wrong-name\"\nhost = \"localhost\"\nport = {p2}\n"
        ),
        &extra_roots(&pki.ca_pem()),
    );
    for (port, what) in [(p1, "self-signed"), (p2, "wrong name")] {
        let seen = to_localhost(&gw, "get", port, &gw.ca_pem());
        assert_eq!(
            seen["ok"], true,
            "{what}: the agent's own handshake completes: {seen}"
        );
        assert_eq!(seen["status"], 502, "{what}: {seen}");
        let body = seen["body"].as_str().unwrap();
        assert!(
            body.contains("certificate for localhost was refused"),
            "{what}: the agent is told why: {body}"
        );
    }
    // A flow's record is written when its connection ends, which may follow the agent's
    // exit by a moment on a busy machine.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let refused = gw
            .audit_records()
            .into_iter()
            .filter(|r| r["type"] == "flow" && r["outcome"] == "refused_upstream_certificate")
            .count();
        if refused == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{refused} refused flows: {:#?}",
            gw.audit_records()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // An unmodified SDK client fails too, rather than talking to an unverified server.
    let url = format!("https://localhost:{p1}/mcp");
    let out = gw
        .wrap(host_trust(
            host_store_only(python_client_cmd(&url, Transport::Streamable)),
            &[gw.ca_pem().as_path()],
        ))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the SDK client must fail against a refused upstream"
    );
}

#[test]
fn bad_handshakes_are_refused_cleanly_and_the_daemon_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let (cert, key) = pki.issue("server", &["localhost", "127.0.0.1"]);
    let (tls_port, plain_port) = (free_port(), free_port());
    let _server = rmcp_server_tls(tls_port, &cert, &key);
    let log = dir.path().join("fake.log");
    let _plain = fake::start(plain_port, &log);
    let gw = gateway(
        "tls-bad",
        vec![tls_port, plain_port],
        &format!(
            "[[server]]\nname = \"by-address\"\naddress = \"127.0.0.1:{tls_port}\"\n\
             [[server]]\nname = \"plain\"\nhost = \"localhost\"\nport = {plain_port}\n"
        ),
        &extra_roots(&pki.ca_pem()),
    );
    let ca = gw.ca_pem().display().to_string();
    let tls_s = tls_port.to_string();

    // A handshake record whose body is garbage: the agent gets an alert, then EOF.
    let seen = tls_agent(
        &gw,
        &["raw", "127.0.0.1", &tls_s, "16030100080100000467617262"],
    );
    let got = seen["received_hex"].as_str().unwrap();
    assert!(got.starts_with("15"), "an alert record, got {seen}");
    flow_with(&gw, "malformed", |r| {
        r["outcome"] == "refused_tls_malformed"
    });

    // No server name: the gateway cannot show a certificate for it.
    let seen = tls_agent(&gw, &["handshake", "127.0.0.1", &tls_s, "--cafile", &ca]);
    assert_eq!(seen["ok"], false, "{seen}");
    assert_eq!(seen["reason"], "TLSV1_UNRECOGNIZED_NAME", "{seen}");
    flow_with(&gw, "no SNI", |r| r["outcome"] == "refused_tls_no_sni");

    // TLS to a server that speaks plain HTTP: the agent hears why, in HTTP.
    let seen = to_localhost(&gw, "get", plain_port, &gw.ca_pem());
    assert_eq!(seen["status"], 502, "{seen}");
    assert!(
        seen["body"].as_str().unwrap().contains("does it speak TLS"),
        "{seen}"
    );
    flow_with(&gw, "plain port", |r| r["outcome"] == "upstream_tls_failed");
    assert!(
        fake::received(&log).is_empty(),
        "the plain server never saw a request"
    );

    // After all that, a good agent is served.
    let seen = to_localhost(&gw, "get", tls_port, &gw.ca_pem());
    assert_eq!(seen["ok"], true, "{seen}");
    assert_ne!(seen["status"], 502, "{seen}");
}
