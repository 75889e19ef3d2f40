//! TLS on the agent's connection: read the ClientHello, decide (terminate, pass through,
//! refuse), and when terminating, shake hands with the real server first — verified, with
//! the agent's server name and ALPN — then with the agent, showing a leaf minted from the
//! gateway's local CA for the same name and the protocol the server chose.

pub mod ca;
pub mod decide;
pub mod hello;
pub mod leaf;
pub mod upstream;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::server::ServerSessionMemoryCache;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use crate::config;
pub use ca::Ca;
use leaf::Leaves;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the gateway CA is half there: {present} exists but {missing} does not; restore it, or remove {present} to make a new CA (agents must then trust the new one)")]
    CaHalf { present: PathBuf, missing: PathBuf },
    #[error(
        "the gateway CA key {path} is readable by others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    CaKeyExposed { path: PathBuf, mode: u32 },
    #[error("the gateway CA file {path} is not usable: {reason}")]
    CaInvalid { path: PathBuf, reason: String },
    #[error("making a certificate: {0}")]
    Mint(rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(rustls::Error),
    #[error("tls.extra_roots: {path}: {reason}")]
    ExtraRoot { path: PathBuf, reason: String },
    /// Before the gateway answered the ClientHello (no certificate sent yet).
    #[error("the agent's TLS handshake failed at its ClientHello: {0}")]
    AgentHello(std::io::Error),
    /// After the gateway sent its ServerHello and certificate.
    #[error("the agent's TLS handshake failed: {0}")]
    AgentHandshake(std::io::Error),
    #[error("the agent's TLS handshake did not finish in time")]
    AgentTimeout,
}

/// Whether an agent's failed handshake is the agent refusing the gateway's certificate:
/// an alert of the certificate family, or a hang-up once the certificate was on its way
/// (only `AgentHandshake` is after that). Then says so with the likely cause, for the flow
/// record (`agent_tls_rejected`).
pub fn agent_rejected(e: &TlsError, ca_cert: &std::path::Path) -> Option<String> {
    use rustls::AlertDescription as A;
    let TlsError::AgentHandshake(io) = e else {
        return None;
    };
    let fix = format!(
        "most often its TLS client does not trust the gateway's CA: add {} to the trust store \
         that client reads (README: TLS)",
        ca_cert.display()
    );
    let alert = io
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match alert {
        Some(rustls::Error::AlertReceived(
            a @ (A::UnknownCA
            | A::BadCertificate
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::AccessDenied),
        )) => Some(format!(
            "the agent refused the gateway's certificate (its TLS client sent the alert {a:?}): {fix}"
        )),
        None if io.kind() == std::io::ErrorKind::UnexpectedEof => Some(format!(
            "the agent hung up during the TLS handshake, after the gateway sent its certificate, \
             without an alert: {fix}"
        )),
        _ => None,
    }
}

pub const H2: &[u8] = b"h2";
pub const HTTP11: &[u8] = b"http/1.1";

/// What the TLS stage keeps for the daemon's life.
pub struct Tls {
    leaves: Arc<Leaves>,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    pub handshake_timeout: Duration,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The roots upstream servers are verified against.
fn roots(cfg: &config::Tls) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    if cfg.system_roots {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "reading the host's trust store");
        }
        let (added, ignored) = store.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "host roots for upstream verification");
    }
    for path in &cfg.extra_roots {
        let bad = |reason: String| TlsError::ExtraRoot {
            path: path.clone(),
            reason,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no PEM certificate in the file".into()));
        }
        for c in certs {
            store.add(c).map_err(|e| bad(e.to_string()))?;
        }
    }
    Ok(store)
}

impl Tls {
    /// Loads (or on first start makes) the CA and builds both sides' configurations.
    pub fn load(cfg: &config::Tls) -> Result<Tls, TlsError> {
        let provider = provider();
        let ca = Ca::load_or_create(&cfg.ca_cert, &cfg.ca_key)?;
        let leaves = Arc::new(Leaves::new(
            ca,
            provider.clone(),
            cfg.leaf_cache,
            Duration::from_secs(cfg.leaf_validity_s),
        ));
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Rustls)?
            .with_no_client_auth()
            .with_cert_resolver(leaves.clone());
        // Resumption toward agents: stateless tickets (TLS 1.3) and a session cache (1.2),
        // shared by every per-connection clone of this configuration.
        server.session_storage = ServerSessionMemoryCache::new(cfg.leaf_cache.max(256) * 4);
        server.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(TlsError::Rustls)?;
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Rustls)?
            .with_root_certificates(roots(cfg)?)
            .with_no_client_auth();
        client.resumption = rustls::client::Resumption::in_memory_sessions(4096);
        Ok(Tls {
            leaves,
            server: Arc::new(server),
            client: Arc::new(client),
            handshake_timeout: Duration::from_millis(cfg.handshake_timeout_ms),
        })
    }

    pub fn ca_pem(&self) -> &str {
        self.leaves.ca_pem()
    }

    pub fn client_config(&self) -> &Arc<ClientConfig> {
        &self.client
    }

    /// Finishes the agent's handshake showing the leaf for its server name and offering
    /// only `alpn` (what the server chose), so both sides speak the same HTTP.
    pub async fn accept<IO>(
        &self,
        agent: IO,
        alpn: Option<&[u8]>,
        deadline: Instant,
    ) -> Result<TlsStream<IO>, TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let handshake = async {
            let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), agent)
                .await
                .map_err(TlsError::AgentHello)?;
            let mut config = (*self.server).clone();
            config.alpn_protocols = alpn.map(|p| vec![p.to_vec()]).unwrap_or_default();
            start
                .into_stream(Arc::new(config))
                .await
                .map_err(TlsError::AgentHandshake)
        };
        tokio::time::timeout_at(deadline, handshake)
            .await
            .map_err(|_| TlsError::AgentTimeout)?
    }
}

/// The ALPN protocols of the agent's list the gateway can carry, in the agent's order.
pub fn http_alpn(offered: &[Vec<u8>]) -> Vec<Vec<u8>> {
    offered
        .iter()
        .filter(|p| p.as_slice() == H2 || p.as_slice() == HTTP11)
        .cloned()
        .collect()
}

/// A fatal TLS alert record: the agent's TLS stack reports a clear reason instead of an
/// unexplained reset.
pub async fn send_alert<W: AsyncWrite + Unpin>(w: &mut W, description: u8) {
    let _ = w
        .write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, description])
        .await;
    let _ = w.flush().await;
}

/// Alert descriptions (RFC 8446 §6).
pub const ALERT_ACCESS_DENIED: u8 = 49;
pub const ALERT_UNRECOGNIZED_NAME: u8 = 112;

#[cfg(test)]
mod tests;
