//! What ties a connection's records together: an id given at accept, carried by every
//! record the connection makes (its flow, its calls and exchanges, approvals, refusals) and
//! by its log span, with how it reached the gateway (TLS terminated, the name and protocol
//! agreed). `mcp-gateway audit show --connection ID` follows one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use serde::Serialize;

/// A connection's id: `RUN-N`, where RUN is drawn once per daemon start (so ids of two runs
/// in one ledger do not collide) and N counts the run's connections from 1.
pub type ConnId = Arc<str>;

fn run_tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let mut b = [0u8; 4];
        if getrandom::fill(&mut b).is_err() {
            // No randomness: the start time still tells runs apart.
            let ns = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos() ^ d.as_secs() as u32);
            b = ns.to_be_bytes();
        }
        hex::encode(b)
    })
}

/// The next connection's id (accepted TCP connections and mediated stdio servers alike).
pub fn next_id() -> ConnId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{}-{n}", run_tag()).into()
}

/// TLS as the connection's exchanges were carried: only a terminated connection has any
/// (the gateway reads no other).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TlsFacts {
    /// Always `terminated` on exchange records; the flow record has the other modes.
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// The protocol agreed with the agent by ALPN; null when none was.
    pub alpn: Option<String>,
}

/// The connection an exchange came on, as its records name it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Via {
    pub connection: ConnId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFacts>,
}

impl Via {
    pub fn plain(connection: ConnId) -> Arc<Via> {
        Arc::new(Via {
            connection,
            tls: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_share_the_run() {
        let (a, b) = (next_id(), next_id());
        assert_ne!(a, b);
        let run = |id: &str| id.split_once('-').map(|(r, _)| r.to_string());
        assert_eq!(run(&a), run(&b));
        assert_eq!(run(&a).unwrap().len(), 8);
    }
}
