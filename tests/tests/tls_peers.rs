//! The TLS fixtures without the gateway: unmodified MCP clients reach `rmcp-test-server` over
//! HTTPS when — and only when — the test CA is in the host's trust store, added with
//! `host_trust` the way an administrator would, and the real store is left as it was.
//!
//! `cargo test -p gateway-tests --test tls_peers` (root: `host_trust` uses a mount namespace)

use std::path::Path;
use std::process::Command;

use gateway_tests::peers::{
    python_client_cmd, rmcp_client_cmd, rmcp_server, rmcp_server_tls, run_json, Peer, Profile,
    Transport,
};
use gateway_tests::tls::{der_sha256, host_store_only, host_trust, self_signed, TestPki};
use gateway_tests::{free_port, require_privileges};
use tempfile::TempDir;

const BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Both SDK clients for `url`, trusting the host's store only.
fn clients(url: &str) -> [(&'static str, Command); 2] {
    [
        (
            "python",
            host_store_only(python_client_cmd(url, Transport::Streamable)),
        ),
        ("rmcp", host_store_only(rmcp_client_cmd(url, Profile::Rmcp))),
    ]
}

/// A test CA, and the TLS server with a certificate from it for `localhost`.
struct TlsServer {
    server: Peer,
    pki: TestPki,
    _dir: TempDir,
}

fn tls_server() -> TlsServer {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::new(dir.path());
    let (cert, key) = pki.issue("localhost", &["localhost", "127.0.0.1"]);
    TlsServer {
        server: rmcp_server_tls(free_port(), &cert, &key),
        pki,
        _dir: dir,
    }
}

/// What a host-wide change would show: the bundle, and the entries of both store folders.
fn host_store() -> (Vec<u8>, Vec<String>, Vec<String>) {
    let entries = |dir: &str| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("listing {dir}: {e}"))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    (
        std::fs::read(BUNDLE).unwrap_or_else(|e| panic!("reading {BUNDLE}: {e}")),
        entries("/etc/ssl/certs"),
        entries("/usr/local/share/ca-certificates"),
    )
}

/// How each client's failure names a certificate it did not verify.
fn verify_failure(client: &str) -> &'static str {
    match client {
        // OpenSSL, through httpx2.
        "python" => "[SSL: CERTIFICATE_VERIFY_FAILED]",
        // rustls-platform-verifier, through reqwest (rmcp-test-client prints every cause).
        "rmcp" => "invalid peer certificate",
        other => panic!("no failure text known for {other}"),
    }
}

fn assert_refused(name: &str, mut cmd: Command, why: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{name} ({why}): {stderr}");
    assert!(out.stdout.is_empty(), "{name} ({why}) printed a result");
    assert!(
        stderr.contains(verify_failure(name)),
        "{name} ({why}) does not fail on the certificate: {stderr}"
    );
}

#[test]
fn clients_trust_the_test_ca_added_to_the_host_store() {
    require_privileges();
    let before = host_store();
    let plain = rmcp_server(free_port());
    let tls = tls_server();
    assert!(
        tls.server.url.starts_with("https://localhost:"),
        "{}",
        tls.server.url
    );
    for ((name, plain_cmd), (_, tls_cmd)) in clients(&plain.url)
        .into_iter()
        .zip(clients(&tls.server.url))
    {
        let expected = run_json(plain_cmd);
        let got = run_json(host_trust(tls_cmd, &[&tls.pki.ca_pem()]));
        assert_eq!(got["server_name"], "rmcp-test-server", "{name}: {got:#}");
        assert_eq!(got, expected, "{name}: HTTPS and plain HTTP runs differ");
    }
    assert!(
        host_store() == before,
        "host_trust changed the real trust store ({BUNDLE}, /etc/ssl/certs or \
         /usr/local/share/ca-certificates)"
    );
}

#[test]
fn clients_refuse_a_ca_missing_from_the_host_store() {
    require_privileges();
    let tls = tls_server();
    for (name, cmd) in clients(&tls.server.url) {
        assert_refused(name, cmd, "CA not in the host store");
    }
    // The failed handshakes cost the server nothing.
    for (name, cmd) in clients(&tls.server.url) {
        let v = run_json(host_trust(cmd, &[&tls.pki.ca_pem()]));
        assert_eq!(v["server_name"], "rmcp-test-server", "{name}: {v:#}");
    }
    let log = tls.server.log();
    assert!(log.contains("TLS handshake with"), "server log: {log}");
}

#[test]
fn clients_refuse_a_certificate_from_outside_the_trusted_ca() {
    require_privileges();
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::new(dir.path());
    let (cert, key) = self_signed(dir.path(), "self-signed", &["localhost", "127.0.0.1"]);
    let server = rmcp_server_tls(free_port(), &cert, &key);
    for (name, cmd) in clients(&server.url) {
        assert_refused(
            name,
            host_trust(cmd, &[&pki.ca_pem()]),
            "self-signed server certificate",
        );
    }
}

#[test]
fn host_trust_changes_the_store_only_inside_its_namespace() {
    require_privileges();
    let before = host_store();
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::new(dir.path());
    let ca = std::fs::read_to_string(pki.ca_pem()).unwrap();
    let mut cat = Command::new("cat");
    cat.arg(BUNDLE);
    let out = host_trust(cat, &[&pki.ca_pem()]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inside = String::from_utf8(out.stdout).unwrap();
    assert!(
        inside.contains(ca.trim()),
        "the CA is not in the private bundle"
    );
    assert!(host_store() == before, "the real trust store changed");
    assert!(!String::from_utf8_lossy(&before.0).contains(ca.trim()));

    // A setup failure is loud, and the command does not run.
    let mut echo = Command::new("echo");
    echo.arg("ran");
    let out = host_trust(echo, &[Path::new("/nonexistent/ca.pem")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(out.stdout.is_empty(), "the command ran");
    assert!(
        stderr.contains("host_trust: copying the CA /nonexistent/ca.pem"),
        "{stderr}"
    );
    assert!(host_store() == before, "the real trust store changed");
}

#[test]
fn the_tls_server_negotiates_h2_and_http1_by_alpn() {
    require_privileges();
    let tls = tls_server();
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let mut curl = host_store_only(Command::new("curl"));
        curl.args(["-sS", "-o", "/dev/null", "-w", "%{http_version}", flag])
            .arg(&tls.server.url);
        let out = host_trust(curl, &[&tls.pki.ca_pem()]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "curl {flag}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout, version, "curl {flag}");
    }
}

#[test]
fn der_sha256_is_the_openssl_fingerprint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::new(dir.path());
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(pki.ca_pem())
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let fingerprint = line.trim().rsplit('=').next().unwrap().replace(':', "");
    assert_eq!(der_sha256(&pki.ca_pem()), fingerprint.to_lowercase());
}
