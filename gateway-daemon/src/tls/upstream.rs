//! The gateway's own TLS connection to the server the agent asked for: verified against
//! the host's roots plus configured ones and the agent's original server name. A server
//! that fails verification is never used, whatever the agent would have accepted.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("the server's certificate for {sni} was refused: {source}")]
    Certificate { sni: String, source: rustls::Error },
    #[error("TLS handshake with the server for {sni} failed: {source} (does it speak TLS on this port?)")]
    Handshake { sni: String, source: std::io::Error },
    #[error("TLS handshake with the server for {sni} did not finish in time")]
    Timeout { sni: String },
    #[error("{sni:?} is not a valid server name: {reason}")]
    Name { sni: String, reason: String },
}

impl UpstreamTlsError {
    pub fn outcome(&self) -> &'static str {
        match self {
            UpstreamTlsError::Certificate { .. } => "refused_upstream_certificate",
            _ => "upstream_tls_failed",
        }
    }
}

/// Connects over `tcp` offering `alpn` (the agent's own list, so the server picks what it
/// would have picked for the agent).
pub async fn connect(
    base: &Arc<ClientConfig>,
    tcp: TcpStream,
    sni: &str,
    alpn: Vec<Vec<u8>>,
    deadline: Instant,
) -> Result<TlsStream<TcpStream>, UpstreamTlsError> {
    let name = ServerName::try_from(sni.to_owned()).map_err(|e| UpstreamTlsError::Name {
        sni: sni.to_owned(),
        reason: e.to_string(),
    })?;
    // A clone shares the verifier and the session cache, so resumption spans connections.
    let mut config = (**base).clone();
    config.alpn_protocols = alpn;
    let connect = TlsConnector::from(Arc::new(config)).connect(name, tcp);
    match tokio::time::timeout_at(deadline, connect).await {
        Err(_) => Err(UpstreamTlsError::Timeout {
            sni: sni.to_owned(),
        }),
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(
            match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                Some(r @ rustls::Error::InvalidCertificate(_)) => UpstreamTlsError::Certificate {
                    sni: sni.to_owned(),
                    source: r.clone(),
                },
                _ => UpstreamTlsError::Handshake {
                    sni: sni.to_owned(),
                    source: e,
                },
            },
        ),
    }
}
