//! What the gateway decides from an agent's first bytes and from a request's head:
//! `http::detect::classify` on arbitrary prefixes, and `mcp::recognise::{host_of,
//! classify}` on arbitrary HTTP/1 request heads (parsed as hyper would, with httparse).
//!
//! Asserts, for `detect::classify`: a decision, once made on a prefix, stays the same for
//! every longer prefix; and each answer is justified by the bytes (TLS record header, the
//! h2 preface, after any empty lines a common HTTP method and a space, or a method token, a
//! space and a line that ends in an HTTP/1 version).
//!
//! For `recognise`: `host_of` is a part of the request's authority or `Host` header; the
//! kind follows the documented rules (methods in any case; a POST is MCP when it targets a configured server,
//! carries an MCP header, accepts both JSON and SSE, or names a legacy session's endpoint;
//! a GET is watched when it accepts SSE, confirmed when the request itself is MCP; a DELETE
//! with a session id ends a session; nothing else is MCP); the target is the configured
//! server that matches (by address, or by the TLS-verified host and port, under its path
//! prefix) and its label that server's name, else the address dialed: never the `Host`
//! header, and a plain-HTTP `Host` naming a server configured by host alone is refused.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use gateway_daemon::http::detect::{classify as detect, Detected, PEEK};
use gateway_daemon::mcp::recognise::{self, McpKind};
use gateway_daemon::mcp::ConnCtx;
use gateway_fuzz::{harness, OTHER_ADDR, TOOLS_ADDR};
use http::{Method, Request};
use libfuzzer_sys::fuzz_target;

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
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn check_detect(bytes: &[u8]) {
    let mut decided: Option<(usize, Detected)> = None;
    for n in 0..=bytes.len().min(64) {
        let d = detect(&bytes[..n]);
        match (decided, d) {
            (Some((at, first)), d) => {
                assert_eq!(
                    d,
                    Some(first),
                    "decided {first:?} at {at} bytes, then {d:?} at {n}"
                )
            }
            (None, Some(d)) => decided = Some((n, d)),
            (None, None) => assert!(n < PEEK, "still undecided after {n} bytes"),
        }
        if let Some(d) = d {
            let p = &bytes[..n];
            match d {
                Detected::Tls => assert!(p.starts_with(&[0x16, 0x03])),
                Detected::Http2 => assert!(p.starts_with(H2_PREFACE)),
                Detected::Http1 => assert!(http1_justified(p), "{p:?} taken for HTTP/1"),
                Detected::Other => assert!(!p.is_empty()),
                Detected::NotClientFirst | Detected::Stalled | Detected::Idle => {
                    panic!("classify never says {d:?}")
                }
            }
        }
    }
    if bytes.is_empty() {
        assert_eq!(detect(bytes), None);
    }
}

/// After any empty lines: a common method and a space, or a method token, a space and a
/// line that ends in an HTTP/1 version (or runs past what is peeked).
fn http1_justified(p: &[u8]) -> bool {
    let start = p
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(p.len());
    let line = &p[start..];
    if METHODS.iter().any(|m| line.starts_with(m)) {
        return true;
    }
    let token = line
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
        .count();
    if token == 0 || line.get(token) != Some(&b' ') {
        return false;
    }
    match line.iter().position(|b| *b == b'\n') {
        Some(end) => {
            let l = line[..end].strip_suffix(b"\r").unwrap_or(&line[..end]);
            l.ends_with(b" HTTP/1.1") || l.ends_with(b" HTTP/1.0")
        }
        None => p.len() >= PEEK,
    }
}

/// A request head as hyper would see it, when httparse accepts it and http can carry it.
fn request(bytes: &[u8]) -> Option<Request<()>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(bytes).ok()?;
    let mut b = Request::builder()
        .method(Method::from_bytes(req.method?.as_bytes()).ok()?)
        .uri(req.path?);
    for h in req.headers.iter() {
        b = b.header(h.name, h.value);
    }
    b.body(()).ok()
}

fn ctxs() -> &'static [Arc<ConnCtx>; 2] {
    static C: OnceLock<[Arc<ConnCtx>; 2]> = OnceLock::new();
    C.get_or_init(|| {
        let h = harness();
        [
            h.ctx(TOOLS_ADDR.parse().unwrap()),
            h.ctx(OTHER_ADDR.parse().unwrap()),
        ]
    })
}

fn header_values<'a>(req: &'a Request<()>, name: &str) -> Vec<&'a str> {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

fn accepts(req: &Request<()>, mime: &str) -> bool {
    header_values(req, "accept").iter().any(|v| {
        v.split(',')
            .any(|p| p.trim().to_ascii_lowercase().starts_with(mime))
    })
}

fn check_recognise(req: &Request<()>, ctx: &ConnCtx) {
    let up: SocketAddr = ctx.upstream_addr;
    let host = recognise::host_of(req);
    if let Some(h) = host {
        let authority = req.uri().authority().map(|a| a.as_str());
        let sources: Vec<&str> = match authority {
            Some(a) => vec![a],
            None => header_values(req, "host").into_iter().take(1).collect(),
        };
        assert!(
            sources.iter().any(|s| s.contains(h)),
            "host {h:?} is in none of {sources:?}"
        );
    }
    let path = req.uri().path();
    let host_only = |h: &str| {
        ctx.daemon.config.servers.iter().any(|s| {
            s.address.is_none()
                && s.host
                    .as_deref()
                    .is_some_and(|sh| sh.eq_ignore_ascii_case(h))
                && s.port.is_none_or(|p| p == up.port())
                && s.path.as_deref().is_none_or(|p| path.starts_with(p))
        })
    };
    // The server by the documented rule: the address dialed, or the host the gateway
    // verified over TLS; never the Host header.
    let verified = ctx.tls_sni.as_deref();
    let expected = ctx.daemon.config.servers.iter().find(|s| {
        let by_addr = s.address == Some(up);
        let by_host = verified.is_some_and(|v| {
            s.host.as_deref().is_some_and(|h| h.eq_ignore_ascii_case(v))
                && s.port.is_none_or(|p| p == up.port())
        });
        (by_addr || by_host) && s.path.as_deref().is_none_or(|p| path.starts_with(p))
    });
    let (kind, target) = match recognise::classify(req, ctx) {
        Ok(c) => c,
        Err(_) => {
            assert!(expected.is_none() && verified.is_none());
            assert!(
                host.is_some_and(host_only),
                "refused without a host-only server named"
            );
            return;
        }
    };
    let again = recognise::classify(req, ctx).expect("the same answer twice");
    assert_eq!(again.1.label, target.label);
    assert_eq!(target.configured, expected.is_some());
    match (expected, verified) {
        (Some(s), _) => assert_eq!(&*target.label, s.name.as_str()),
        (None, Some(v)) => assert_eq!(&*target.label, format!("{v}:{}", up.port())),
        (None, None) => assert_eq!(&*target.label, up.to_string()),
    }

    let mcp_header = ["mcp-protocol-version", "mcp-session-id", "mcp-method"]
        .iter()
        .any(|n| req.headers().contains_key(*n));
    let known = target.configured || mcp_header;
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or(path);
    // Matched by the session parameter as servers route it (Err: named twice).
    let legacy = ctx
        .daemon
        .sessions
        .legacy(&ctx.server_key(), pq)
        .map(|s| s.is_some());
    let method = req.method().as_str().to_ascii_uppercase();
    match kind {
        McpKind::Post { legacy: l } => {
            assert_eq!(method, "POST");
            assert_eq!(
                l.as_ref().map(Option::is_some).ok(),
                legacy.as_ref().ok().copied()
            );
            if matches!(l, Ok(None)) {
                assert!(
                    known
                        || (accepts(req, "application/json") && accepts(req, "text/event-stream")),
                    "a POST taken for MCP without a reason"
                );
            }
        }
        McpKind::Get { confirmed } => {
            assert_eq!(method, "GET");
            assert!(accepts(req, "text/event-stream"));
            assert_eq!(confirmed, known);
        }
        McpKind::Delete => {
            assert_eq!(method, "DELETE");
            assert!(req.headers().contains_key("mcp-session-id"));
        }
        McpKind::NotMcp => match method.as_str() {
            "POST" => {
                assert!(matches!(legacy, Ok(false)) && !known);
                assert!(!(accepts(req, "application/json") && accepts(req, "text/event-stream")));
            }
            "GET" => assert!(!accepts(req, "text/event-stream")),
            "DELETE" => assert!(!req.headers().contains_key("mcp-session-id")),
            _ => {}
        },
    }
}

fuzz_target!(|data: &[u8]| {
    check_detect(data);
    let Some((&which, head)) = data.split_first() else {
        return;
    };
    if let Some(req) = request(head) {
        check_recognise(&req, &ctxs()[usize::from(which & 1)]);
    }
});
