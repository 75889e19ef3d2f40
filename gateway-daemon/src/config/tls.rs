//! `[tls]`: the gateway's local CA, which agent TLS it terminates, and which upstream
//! certificates it trusts.

use std::path::PathBuf;

use serde::Deserialize;

use super::defaults;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// The local CA's certificate (PEM), created on first start. Agents trust it host-wide.
    pub ca_cert: PathBuf,
    /// The local CA's private key (PEM, 0600), created on first start with the certificate.
    pub ca_key: PathBuf,
    /// Terminate every agent TLS connection (not only those to configured servers), to find
    /// MCP servers nobody registered. Agents must trust the gateway CA for every host.
    pub discover: bool,
    /// TLS to anything else: `allow` passes the bytes through untouched, `refuse` resets it.
    pub passthrough: Passthrough,
    /// Verify upstream servers against the host's trust store (as well as `extra_roots`).
    pub system_roots: bool,
    /// More CA certificates (PEM files) trusted for upstream servers.
    pub extra_roots: Vec<PathBuf>,
    /// Leaf certificates kept in memory, one per server name.
    pub leaf_cache: usize,
    /// Lifetime of a minted leaf certificate, in seconds.
    pub leaf_validity_s: u64,
    /// Time an agent gets to send its ClientHello, and either side to finish a handshake.
    pub handshake_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Passthrough {
    #[default]
    Allow,
    Refuse,
}

impl Default for Tls {
    fn default() -> Self {
        Self {
            ca_cert: defaults::CA_CERT.into(),
            ca_key: defaults::CA_KEY.into(),
            discover: defaults::DISCOVER,
            passthrough: Passthrough::default(),
            system_roots: defaults::SYSTEM_ROOTS,
            extra_roots: Vec::new(),
            leaf_cache: defaults::LEAF_CACHE,
            leaf_validity_s: defaults::LEAF_VALIDITY_S,
            handshake_timeout_ms: defaults::HANDSHAKE_TIMEOUT_MS,
        }
    }
}
