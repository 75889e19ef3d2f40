use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};

use rustls::client::danger::ServerCertVerifier;

use super::*;

fn config(dir: &std::path::Path) -> config::Tls {
    config::Tls {
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca.key"),
        ..Default::default()
    }
}

/// An agent that trusts exactly the gateway's CA.
fn agent_config(ca_pem: &str, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut c = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

/// Runs a handshake in memory; returns the client's view once both sides are done.
fn handshake(
    agent: Arc<ClientConfig>,
    sni: &str,
    tls: &Tls,
    alpn: Option<&[u8]>,
) -> ClientConnection {
    let mut server_cfg = (*tls.server).clone();
    server_cfg.alpn_protocols = alpn.map(|p| vec![p.to_vec()]).unwrap_or_default();
    let mut server = ServerConnection::new(Arc::new(server_cfg)).unwrap();
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let mut client = ClientConnection::new(agent, name).unwrap();
    for _ in 0..10 {
        let mut buf = Vec::new();
        client.write_tls(&mut buf).unwrap();
        server.read_tls(&mut buf.as_slice()).unwrap();
        server.process_new_packets().unwrap();
        let mut buf = Vec::new();
        server.write_tls(&mut buf).unwrap();
        client.read_tls(&mut buf.as_slice()).unwrap();
        client.process_new_packets().unwrap();
        if !client.is_handshaking() && !server.is_handshaking() && !server.wants_write() {
            break;
        }
    }
    assert!(!client.is_handshaking(), "the handshake completes");
    client
}

#[test]
fn the_ca_is_made_once_with_a_private_key_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let first = Tls::load(&cfg).unwrap();
    let mode = std::fs::metadata(&cfg.ca_key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the CA key is private");
    let again = Tls::load(&cfg).unwrap();
    assert_eq!(first.ca_pem(), again.ca_pem(), "a restart keeps the CA");

    std::fs::set_permissions(&cfg.ca_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = Tls::load(&cfg).unwrap_err().to_string();
    assert!(
        e.contains("readable by others") && e.contains("chmod 600"),
        "{e}"
    );

    std::fs::remove_file(&cfg.ca_key).unwrap();
    let e = Tls::load(&cfg).unwrap_err().to_string();
    assert!(e.contains("half there") && e.contains("ca.key"), "{e}");
}

#[test]
fn agents_trusting_the_ca_accept_minted_leaves_for_their_server_name_only() {
    let dir = tempfile::tempdir().unwrap();
    let tls = Tls::load(&config(dir.path())).unwrap();
    let agent = agent_config(tls.ca_pem(), &[H2, HTTP11]);
    let c = handshake(agent.clone(), "mcp.example.com", &tls, Some(H2));
    assert_eq!(
        c.alpn_protocol(),
        Some(H2),
        "the agent gets the server's protocol"
    );
    let chain = c.peer_certificates().unwrap();
    assert_eq!(chain.len(), 2, "leaf and CA");

    // The same name reuses the cached leaf; another name gets its own.
    let again = handshake(agent.clone(), "mcp.example.com", &tls, None);
    assert_eq!(again.peer_certificates().unwrap()[0], chain[0]);
    let other = handshake(agent, "tools.example.org", &tls, None);
    assert_ne!(other.peer_certificates().unwrap()[0], chain[0]);
}

#[test]
fn a_leaf_minted_for_one_name_is_refused_for_another() {
    let dir = tempfile::tempdir().unwrap();
    let tls = Tls::load(&config(dir.path())).unwrap();
    let leaf = tls.leaves.get("mcp.example.com").unwrap();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(tls.ca_pem().as_bytes()).unwrap())
        .unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    let now = rustls::pki_types::UnixTime::now();
    let ok = verifier.verify_server_cert(
        &leaf.cert[0],
        &leaf.cert[1..],
        &ServerName::try_from("mcp.example.com").unwrap(),
        &[],
        now,
    );
    assert!(ok.is_ok(), "{ok:?}");
    let wrong = verifier.verify_server_cert(
        &leaf.cert[0],
        &leaf.cert[1..],
        &ServerName::try_from("bank.example.com").unwrap(),
        &[],
        now,
    );
    assert!(wrong.is_err(), "a leaf is valid for its own name only");
}

#[test]
fn an_agent_that_comes_back_resumes_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let tls = Tls::load(&config(dir.path())).unwrap();
    let agent = agent_config(tls.ca_pem(), &[HTTP11]);
    let first = handshake(agent.clone(), "mcp.example.com", &tls, Some(HTTP11));
    assert_eq!(first.handshake_kind(), Some(rustls::HandshakeKind::Full));
    let second = handshake(agent, "mcp.example.com", &tls, Some(HTTP11));
    assert_eq!(
        second.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "the second connection resumes"
    );
}

#[test]
fn extra_roots_must_hold_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let cfg = config::Tls {
        extra_roots: vec![empty],
        ..config(dir.path())
    };
    let e = Tls::load(&cfg).unwrap_err().to_string();
    assert!(
        e.contains("tls.extra_roots") && e.contains("empty.pem"),
        "{e}"
    );
}

#[test]
fn only_http_protocols_are_offered_upstream() {
    let offered = vec![b"acme-tls/1".to_vec(), HTTP11.to_vec(), H2.to_vec()];
    assert_eq!(http_alpn(&offered), vec![HTTP11.to_vec(), H2.to_vec()]);
}

#[test]
fn the_gateway_resumes_its_own_sessions_with_servers() {
    let dir = tempfile::tempdir().unwrap();
    let made = Tls::load(&config(dir.path())).unwrap();
    // The gateway's own leaves stand in for a server; its CA is the extra root.
    let cfg = config::Tls {
        extra_roots: vec![dir.path().join("ca.pem")],
        system_roots: false,
        ..config(dir.path())
    };
    let tls = Tls::load(&cfg).unwrap();
    assert_eq!(tls.ca_pem(), made.ca_pem());
    // As `upstream::connect` does: a clone of the base configuration per connection.
    let per_conn = || Arc::new((*tls.client).clone());
    let first = handshake(per_conn(), "mcp.example.com", &tls, None);
    assert_eq!(first.handshake_kind(), Some(rustls::HandshakeKind::Full));
    let second = handshake(per_conn(), "mcp.example.com", &tls, None);
    assert_eq!(
        second.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "per-connection clones of the client configuration share one session cache"
    );
}
