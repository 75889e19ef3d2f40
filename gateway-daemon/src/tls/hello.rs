//! The agent's ClientHello, read with `peek` so the bytes stay in the socket: a connection
//! the gateway passes through reaches the server exactly as the agent sent it.

use std::time::Duration;

use rustls::server::Acceptor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A ClientHello may span records, but never this much (rustls refuses larger ones too).
const MAX_HELLO: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct Hello {
    /// The server name (SNI) the agent asked for; clients send none for IP addresses.
    pub sni: Option<String>,
    /// Protocols offered by ALPN, in the agent's order.
    pub alpn: Vec<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    #[error("malformed TLS ClientHello: {0}")]
    Malformed(rustls::Error),
    #[error("no complete ClientHello within {0:?}")]
    Timeout(Duration),
    #[error("ClientHello larger than {MAX_HELLO} bytes")]
    TooLarge,
    #[error("the agent closed the connection before its ClientHello was complete")]
    Closed,
    #[error("reading the ClientHello: {0}")]
    Io(std::io::Error),
}

impl HelloError {
    pub fn outcome(&self) -> &'static str {
        match self {
            HelloError::Malformed(_) | HelloError::TooLarge => "refused_tls_malformed",
            HelloError::Timeout(_) => "refused_tls_timeout",
            HelloError::Closed | HelloError::Io(_) => "agent_closed",
        }
    }

    /// Whether it is the agent hanging up, not a refusal: an ending, no failure.
    pub fn is_ordinary(&self) -> bool {
        matches!(self, HelloError::Closed | HelloError::Io(_))
    }
}

/// Waits for a complete ClientHello and reads its server name and ALPN list. On a
/// malformed one, the agent is sent the alert rustls chose, so it fails at once with a
/// TLS error rather than waiting on a silent connection.
pub async fn peek(agent: &mut TcpStream, timeout: Duration) -> Result<Hello, HelloError> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; MAX_HELLO];
    let mut last = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, agent.peek(&mut buf)).await {
            Err(_) => return Err(HelloError::Timeout(timeout)),
            Ok(Err(e)) => return Err(HelloError::Io(e)),
            Ok(Ok(0)) => return Err(HelloError::Closed),
            Ok(Ok(n)) => n,
        };
        if n > last {
            last = n;
            match parse(&buf[..n]) {
                Parsed::Hello(h) => return Ok(h),
                Parsed::Incomplete if n == buf.len() => return Err(HelloError::TooLarge),
                Parsed::Incomplete => {}
                Parsed::Bad(e, alert) => {
                    // Consume what was peeked so closing sends a FIN after the alert, not
                    // a reset that could overtake it.
                    let mut sink = vec![0u8; n];
                    let _ = agent.read_exact(&mut sink).await;
                    let _ = agent.write_all(&alert).await;
                    let _ = agent.shutdown().await;
                    return Err(HelloError::Malformed(e));
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(HelloError::Timeout(timeout));
        }
        // `peek` is ready again at once while the bytes sit unread: wait a little for the
        // rest of a ClientHello split across segments instead of spinning.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

enum Parsed {
    Hello(Hello),
    Incomplete,
    Bad(rustls::Error, Vec<u8>),
}

fn parse(bytes: &[u8]) -> Parsed {
    let mut acceptor = Acceptor::default();
    let mut rd = bytes;
    while !rd.is_empty() {
        match acceptor.read_tls(&mut rd) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                return Parsed::Bad(
                    rustls::Error::General(format!("reading TLS records: {e}")),
                    Vec::new(),
                )
            }
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            let ch = accepted.client_hello();
            Parsed::Hello(Hello {
                sni: ch.server_name().map(str::to_owned),
                alpn: ch
                    .alpn()
                    .map(|it| it.map(<[u8]>::to_vec).collect())
                    .unwrap_or_default(),
            })
        }
        Ok(None) => Parsed::Incomplete,
        Err((e, mut alert)) => {
            let mut out = Vec::new();
            let _ = alert.write_all(&mut out);
            Parsed::Bad(e, out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello, as rustls' client writes it.
    fn client_hello(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let mut cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_sni_and_alpn_and_waits_for_the_rest() {
        let bytes = client_hello("mcp.example.com", &[b"h2", b"http/1.1"]);
        match parse(&bytes) {
            Parsed::Hello(h) => {
                assert_eq!(h.sni.as_deref(), Some("mcp.example.com"));
                assert_eq!(h.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
            }
            _ => panic!("a whole ClientHello parses"),
        }
        for cut in [1, 5, 6, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                matches!(parse(&bytes[..cut]), Parsed::Incomplete),
                "a ClientHello cut at {cut} bytes is incomplete, not malformed"
            );
        }
    }

    #[test]
    fn garbage_in_a_handshake_record_is_malformed_with_an_alert() {
        let bytes = b"\x16\x03\x01\x00\x08\x01\x00\x00\x04garb";
        match parse(bytes) {
            Parsed::Bad(_, alert) => assert_eq!(alert.first(), Some(&0x15), "an alert record"),
            _ => panic!("garbage is malformed"),
        }
    }
}
