//! What the gateway decides from an agent's first bytes and from a request's head:
//! `http::detect::classify` on arbitrary prefixes, and `mcp::recognise::{host_of,
//! classify}` on arbitrary HTTP/1 request heads (parsed as hyper would, with httparse).
//!
//! Asserts, for `detect::classify`: a decision, once made on a prefix, stays the same for
//! every longer prefix; it is made within the 24 bytes the daemon peeks (else an agent
//! could hold a connection undecided); and each answer is justified by the bytes (TLS
//! record header, the h2 preface, an HTTP method and a space).
//!
//! For `recognise`: `host_of` is a part of the request's authority or `Host` header; the
//! kind follows the documented rules (a POST is MCP when it targets a configured server,
//! carries an MCP header, accepts both JSON and SSE, or names a legacy session's endpoint;
//! a GET is watched when it accepts SSE, confirmed when the request itself is MCP; a DELETE
//! with a session id ends a session; nothing else is MCP); the target is the configured
//! server that matches (by address, or by host and port, under its path prefix) and its
//! label that server's name, else host:port.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use gateway_daemon::http::detect::{classify as detect, Detected};
use gateway_daemon::mcp::recognise::{self, McpKind};
use gateway_daemon::mcp::ConnCtx;
use gateway_fuzz::{harness, OTHER_ADDR, TOOLS_ADDR};
use http::{Method, Request};
use libfuzzer_sys::fuzz_target;

const PEEK: usize = 24;
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
                Detected::Http1 => assert!(METHODS.iter().any(|m| p.starts_with(m))),
                Detected::Other => assert!(!p.is_empty()),
                Detected::NotClientFirst => panic!("classify never says NotClientFirst"),
            }
        }
    }
    if bytes.is_empty() {
        assert_eq!(detect(bytes), None);
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
    header_values(req, "accept")
        .iter()
        .any(|v| v.split(',').any(|p| p.trim().starts_with(mime)))
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
    let (kind, target) = recognise::classify(req, ctx);
    let again = recognise::classify(req, ctx);
    assert_eq!(again.1.label, target.label);

    // The configured server that should match, by the documented rule.
    let path = req.uri().path();
    let expected = ctx.config.servers.iter().find(|s| {
        let by_addr = s.address == Some(up);
        let by_host =
            s.host.is_some() && s.host.as_deref() == host && s.port.is_none_or(|p| p == up.port());
        (by_addr || by_host) && s.path.as_deref().is_none_or(|p| path.starts_with(p))
    });
    assert_eq!(target.configured, expected.is_some());
    match (expected, host) {
        (Some(s), _) => assert_eq!(&*target.label, s.name.as_str()),
        (None, Some(h)) => assert_eq!(&*target.label, format!("{h}:{}", up.port())),
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
    let legacy = ctx.sessions.legacy(up, pq);
    match kind {
        McpKind::Post { legacy: l } => {
            assert_eq!(req.method(), Method::POST);
            assert_eq!(l.is_some(), legacy.is_some());
            if l.is_none() {
                assert!(
                    known
                        || (accepts(req, "application/json") && accepts(req, "text/event-stream")),
                    "a POST taken for MCP without a reason"
                );
            }
        }
        McpKind::Get { confirmed } => {
            assert_eq!(req.method(), Method::GET);
            assert!(accepts(req, "text/event-stream"));
            assert_eq!(confirmed, known);
        }
        McpKind::Delete => {
            assert_eq!(req.method(), Method::DELETE);
            assert!(req.headers().contains_key("mcp-session-id"));
        }
        McpKind::NotMcp => match *req.method() {
            Method::POST => {
                assert!(legacy.is_none() && !known);
                assert!(!(accepts(req, "application/json") && accepts(req, "text/event-stream")));
            }
            Method::GET => assert!(!accepts(req, "text/event-stream")),
            Method::DELETE => assert!(!req.headers().contains_key("mcp-session-id")),
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
