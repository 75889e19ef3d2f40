//! What a mediated connection carries, from its first bytes, without consuming them.
//!
//! The upstream is already connected when this runs, so a server-first protocol (SSH, SMTP
//! banners) is recognised by the server speaking first instead of by a timeout.

use std::time::Duration;

use tokio::net::TcpStream;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
];
/// How long an agent may dribble an ambiguous prefix before it counts as "not HTTP".
const PREFIX_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    /// A TLS ClientHello (record type 22, version 3.x).
    Tls,
    /// Bytes that are none of the above.
    Other,
    /// The server spoke first, or the agent closed before sending anything.
    NotClientFirst,
}

/// Classifies a prefix; `None` while it could still become HTTP.
pub fn classify(prefix: &[u8]) -> Option<Detected> {
    if prefix.is_empty() {
        return None;
    }
    if prefix.len() >= 2 && prefix[0] == 0x16 && prefix[1] == 0x03 {
        return Some(Detected::Tls);
    }
    let n = prefix.len().min(H2_PREFACE.len());
    if prefix[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Detected::Http2);
    }
    let mut open = false;
    for m in METHODS {
        let n = prefix.len().min(m.len());
        if prefix[..n] == m[..n] {
            if n == m.len() {
                return Some(Detected::Http1);
            }
            open = true;
        }
    }
    if open || (prefix.len() == 1 && prefix[0] == 0x16) {
        None
    } else {
        Some(Detected::Other)
    }
}

/// Waits for the agent's first bytes (or the server's, when `upstream` is given) and
/// classifies them. Without an upstream, an agent silent for `PREFIX_WAIT` is `Other`.
pub async fn detect(agent: &TcpStream, upstream: Option<&TcpStream>) -> Detected {
    let mut buf = [0u8; 24];
    let deadline = tokio::time::Instant::now() + PREFIX_WAIT;
    let server_spoke = async {
        match upstream {
            Some(u) => {
                let _ = u.readable().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::pin!(server_spoke);
    loop {
        tokio::select! {
            biased;
            r = agent.peek(&mut buf) => match r {
                Ok(0) | Err(_) => return Detected::NotClientFirst,
                Ok(n) => {
                    if let Some(d) = classify(&buf[..n]) {
                        return d;
                    }
                    // A partial prefix: wait for more without busy-looping on peek.
                    if tokio::time::Instant::now() >= deadline {
                        return Detected::Other;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            },
            _ = &mut server_spoke => return Detected::NotClientFirst,
            _ = tokio::time::sleep_until(deadline), if upstream.is_none() => return Detected::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_classify() {
        assert_eq!(classify(b"POST /mcp HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"GET / HTTP/1.1"), Some(Detected::Http1));
        assert_eq!(classify(b"PO"), None);
        assert_eq!(classify(b"P"), None);
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(classify(&H2_PREFACE[..10]), None);
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Detected::Tls));
        assert_eq!(classify(b"\x16"), None);
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), Some(Detected::Other));
        assert_eq!(classify(b"GETX"), Some(Detected::Other));
        assert_eq!(classify(b"hello"), Some(Detected::Other));
    }
}
