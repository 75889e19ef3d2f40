//! `[tls]`: the gateway's local CA, which agent TLS it terminates, and which upstream
//! certificates it trusts.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// The local CA's certificate (PEM), created on first start. Agents trust it host-wide.
    #[serde(default = "default_ca_cert")]
    pub ca_cert: PathBuf,
    /// The local CA's private key (PEM, 0600), created on first start with the certificate.
    #[serde(default = "default_ca_key")]
    pub ca_key: PathBuf,
    /// Terminate every agent TLS connection (not only those to configured servers), to find
    /// MCP servers nobody registered. Agents must trust the gateway CA for every host.
    #[serde(default)]
    pub discover: bool,
    /// TLS to anything else: `allow` passes the bytes through untouched, `refuse` resets it.
    #[serde(default)]
    pub passthrough: Passthrough,
    /// Verify upstream servers against the host's trust store (as well as `extra_roots`).
    #[serde(default = "default_true")]
    pub system_roots: bool,
    /// More CA certificates (PEM files) trusted for upstream servers.
    #[serde(default)]
    pub extra_roots: Vec<PathBuf>,
    /// Leaf certificates kept in memory, one per server name.
    #[serde(default = "default_leaf_cache")]
    pub leaf_cache: usize,
    /// Lifetime of a minted leaf certificate, in seconds.
    #[serde(default = "default_leaf_validity_s")]
    pub leaf_validity_s: u64,
    /// Time an agent gets to send its ClientHello, and either side to finish a handshake.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Passthrough {
    #[default]
    Allow,
    Refuse,
}

fn default_ca_cert() -> PathBuf {
    "/var/lib/mcp-gateway/ca.pem".into()
}
fn default_ca_key() -> PathBuf {
    "/var/lib/mcp-gateway/ca.key".into()
}
fn default_true() -> bool {
    true
}
fn default_leaf_cache() -> usize {
    1024
}
fn default_leaf_validity_s() -> u64 {
    86_400
}
fn default_handshake_timeout_ms() -> u64 {
    10_000
}

impl Default for Tls {
    fn default() -> Self {
        Self {
            ca_cert: default_ca_cert(),
            ca_key: default_ca_key(),
            discover: false,
            passthrough: Passthrough::Allow,
            system_roots: true,
            extra_roots: Vec::new(),
            leaf_cache: default_leaf_cache(),
            leaf_validity_s: default_leaf_validity_s(),
            handshake_timeout_ms: default_handshake_timeout_ms(),
        }
    }
}
