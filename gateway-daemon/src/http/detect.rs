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
    /// The start of an HTTP request line or a preface that did not complete within
    /// `PREFIX_WAIT`: it could still become HTTP, so it is never passed through unread.
    Stalled,
    /// Neither side sent a byte within the first-byte timeout: the connection only held
    /// the daemon's descriptors.
    Idle,
}

/// Bytes peeked to find the end of an HTTP/1 request line with an unlisted method.
pub const PEEK: usize = 4096;

/// Bytes peeked first (see `detect`).
const SMALL_PEEK: usize = 128;

/// Classifies a prefix; `None` while it could still become HTTP.
///
/// HTTP/1 is recognised as servers parse it (RFC 9112, httparse): empty lines before the
/// request line are skipped, and any method token counts (`PROPFIND`, `QUERY`, `post`)
/// when the line ends in an HTTP version; the common methods are known from their first
/// bytes. A request line longer than what is peeked is taken for HTTP (the HTTP stage
/// then parses it, or answers 400): never passed through unread.
pub fn classify(prefix: &[u8]) -> Option<Detected> {
    // Only what is peeked decides, however much the caller has.
    let prefix = &prefix[..prefix.len().min(PEEK)];
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
    if prefix.len() == 1 && prefix[0] == 0x16 {
        return None;
    }
    let line = {
        let skip = prefix
            .iter()
            .position(|b| *b != b'\r' && *b != b'\n')
            .unwrap_or(prefix.len());
        &prefix[skip..]
    };
    if line.is_empty() {
        return None;
    }
    let mut open = false;
    for m in METHODS {
        let n = line.len().min(m.len());
        if line[..n] == m[..n] {
            if n == m.len() {
                return Some(Detected::Http1);
            }
            open = true;
        }
    }
    let token = line.iter().take_while(|b| is_tchar(**b)).count();
    match line.get(token) {
        // `token SP`: a request line if it ends in an HTTP version.
        Some(b' ') if token > 0 => match line.iter().position(|b| *b == b'\n') {
            Some(end) => {
                let l = line[..end].strip_suffix(b"\r").unwrap_or(&line[..end]);
                let http = l.ends_with(b" HTTP/1.1") || l.ends_with(b" HTTP/1.0");
                Some(if http {
                    Detected::Http1
                } else {
                    Detected::Other
                })
            }
            None if prefix.len() >= PEEK => Some(Detected::Http1),
            None => None,
        },
        // Still inside the first token (or the start of a known method).
        None => None,
        _ if open => None,
        _ => Some(Detected::Other),
    }
}

/// RFC 9110 `tchar`: what a method token is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What an agent's first bytes are, after its server spoke first: they are never HTTP or TLS
/// on a connection the gateway passes through unread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterServer {
    /// HTTP or TLS after all: the server's bytes went to the agent unread, so this
    /// connection can no longer be mediated; it is refused.
    Mediable(Detected),
    /// Something else (an SMTP or SSH client answering the banner): passed through.
    Other,
    /// The agent closed, or sent nothing before its server closed.
    Silent,
}

/// For a server that spoke first (a banner): relays the server's bytes to the agent until
/// the agent's own first bytes show what it speaks, without passing those on. A server
/// that speaks first cannot carry an agent's HTTP/2 (or HTTP/1, or TLS) around the MCP
/// stage: an agent that answers with one is told apart here. Returns what the agent sent
/// and the bytes relayed to it.
pub async fn after_server_first(
    agent: &mut TcpStream,
    upstream: &mut TcpStream,
) -> (AfterServer, u64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut ar, mut aw) = agent.split();
    let (mut ur, _uw) = upstream.split();
    let mut relayed = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    let mut first = vec![0u8; PEEK];
    let mut server_open = true;
    let mut partial_since = None;
    loop {
        tokio::select! {
            biased;
            r = ar.peek(&mut first) => match r {
                Ok(0) | Err(_) => return (AfterServer::Silent, relayed),
                Ok(n) => match classify(&first[..n]) {
                    Some(d @ (Detected::Http1 | Detected::Http2 | Detected::Tls)) => {
                        return (AfterServer::Mediable(d), relayed)
                    }
                    Some(_) => return (AfterServer::Other, relayed),
                    // A partial prefix: wait for more without busy-looping on peek; one
                    // that never completes could still become HTTP.
                    None => {
                        let since = *partial_since.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() >= PREFIX_WAIT {
                            return (AfterServer::Mediable(Detected::Stalled), relayed);
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await
                    }
                },
            },
            r = ur.read(&mut buf), if server_open => match r {
                Ok(0) | Err(_) => server_open = false,
                Ok(n) => {
                    if aw.write_all(&buf[..n]).await.is_err() {
                        return (AfterServer::Silent, relayed);
                    }
                    relayed += n as u64;
                }
            },
        }
    }
}

/// Waits for the agent's first bytes (or the server's, when `upstream` is given) and
/// classifies them. Without an upstream, an agent silent for `PREFIX_WAIT` is `Other`;
/// with one, a connection on which neither side sent a byte within `idle` is `Idle`.
pub async fn detect(agent: &TcpStream, upstream: Option<&TcpStream>, idle: Duration) -> Detected {
    // Nearly every connection is decided by its first few bytes (a method, a TLS record
    // header, the HTTP/2 preface): those are peeked into a small buffer, and the whole
    // `PEEK` is allocated only when they filled it undecided. A longer prefix never
    // decides otherwise than the shorter one it starts with (`classify` on a prefix is
    // `None` or final), so this decides as one large peek would.
    let mut small = [0u8; SMALL_PEEK];
    let mut large: Vec<u8> = Vec::new();
    let deadline = tokio::time::Instant::now() + PREFIX_WAIT;
    let idle_deadline = tokio::time::Instant::now() + idle;
    let mut spoke = false;
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
            r = agent.peek(if large.is_empty() { &mut small[..] } else { &mut large[..] }) => match r {
                Ok(0) | Err(_) => return Detected::NotClientFirst,
                Ok(n) => {
                    spoke = true;
                    let seen = if large.is_empty() { &small[..n] } else { &large[..n] };
                    if let Some(d) = classify(seen) {
                        return d;
                    }
                    if large.is_empty() && n == SMALL_PEEK {
                        large = vec![0u8; PEEK];
                        continue;
                    }
                    // A partial prefix: wait for more without busy-looping on peek.
                    if tokio::time::Instant::now() >= deadline {
                        return Detected::Stalled;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            },
            _ = &mut server_spoke => return Detected::NotClientFirst,
            _ = tokio::time::sleep_until(deadline), if upstream.is_none() => return Detected::Other,
            _ = tokio::time::sleep_until(idle_deadline), if upstream.is_some() && !spoke => {
                return Detected::Idle
            }
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
        // Still a token: it may yet be a method.
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(classify(b"GETX"), None);
        assert_eq!(classify(b"GETX\r\n"), Some(Detected::Other));
        assert_eq!(classify(b"hello"), None, "a token that may yet be a method");
        assert_eq!(classify(b"hello\x00"), Some(Detected::Other));
    }

    #[test]
    fn http1_as_servers_parse_it() {
        // Empty lines before the request line are skipped (RFC 9112 2.2).
        assert_eq!(
            classify(b"\r\nPOST /mcp HTTP/1.1\r\n"),
            Some(Detected::Http1)
        );
        assert_eq!(classify(b"\r\n\r\n"), None);
        // Any method token, when the line ends in an HTTP version.
        assert_eq!(classify(b"PROPFIND / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"post /mcp HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"QUERY /mcp HTTP/1.0\n"), Some(Detected::Http1));
        assert_eq!(classify(b"QUERY /mcp HTT"), None);
        // Other protocols that start with a word and a space stay other.
        assert_eq!(classify(b"EHLO mail.example\r\n"), Some(Detected::Other));
        assert_eq!(classify(b"SSH-2.0-OpenSSH_9.2\r\n"), Some(Detected::Other));
        // A request line longer than what is peeked is taken for HTTP.
        let mut long = b"REPORT /".to_vec();
        long.resize(PEEK, b'a');
        assert_eq!(classify(&long), Some(Detected::Http1));
    }

    /// What `detect` makes of `sent`, written at once on a real loopback connection.
    async fn detected(sent: Vec<u8>) -> Detected {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut agent = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (ours, _) = listener.accept().await.unwrap();
        agent.write_all(&sent).await.unwrap();
        detect(&ours, None, Duration::from_secs(5)).await
    }

    /// Lines that outgrow the first, small peek are decided on the whole `PEEK`, as one
    /// large peek decided them.
    #[tokio::test]
    async fn long_first_lines_decide_past_the_small_peek() {
        let line = |method: &str, path_len: usize, tail: &str| {
            let mut l = format!("{method} /").into_bytes();
            l.resize(l.len() + path_len, b'a');
            l.extend_from_slice(tail.as_bytes());
            l
        };
        let http = line("PROPFIND", 3 * SMALL_PEEK, " HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(detected(http).await, Detected::Http1);
        let other = line("NOTHTTP", 3 * SMALL_PEEK, " SMTP\r\n");
        assert_eq!(detected(other).await, Detected::Other);
        let endless = line("REPORT", 2 * PEEK, "");
        assert_eq!(detected(endless).await, Detected::Http1);
        assert_eq!(
            detected(b"POST /mcp HTTP/1.1\r\n".to_vec()).await,
            Detected::Http1
        );
        let mut exactly = line("SEARCH", SMALL_PEEK - 8, "");
        exactly.truncate(SMALL_PEEK);
        exactly.extend_from_slice(b" HTTP/1.1\r\n");
        assert_eq!(detected(exactly).await, Detected::Http1);
    }
}
