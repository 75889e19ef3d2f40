//! Is this HTTP request MCP, and for which server? Decided by what the wire carries (MCP
//! headers, the Accept pair of Streamable HTTP, a legacy session's endpoint) and by the
//! configured servers.

use std::sync::Arc;

use http::{header, HeaderMap, HeaderName, Method, Request};

use super::session::{Session, SessionError};
use super::ConnCtx;

pub enum McpKind {
    /// A POST of JSON-RPC; `legacy` when it targets a legacy SSE session's endpoint (Err
    /// when it names one ambiguously).
    Post {
        legacy: Result<Option<Arc<Session>>, SessionError>,
    },
    /// A GET that may open an SSE stream; `confirmed` when the request itself is MCP.
    Get {
        confirmed: bool,
    },
    Delete,
    NotMcp,
}

#[derive(Clone)]
pub struct Target {
    /// The configured server's name, else host:port.
    pub label: Arc<str>,
    pub configured: bool,
}

// Header names as `HeaderName`s: looking one up by `&str` parses and lower-cases the
// name again on every request.
pub const H_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
pub const H_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
pub const H_METHOD: HeaderName = HeaderName::from_static("mcp-method");
pub const H_NAME: HeaderName = HeaderName::from_static("mcp-name");
pub const H_LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

pub fn header_str<'a>(h: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Whether `Accept` lists `mime` (lower case), in any case. Wildcards do not count: a
/// request that only says `*/*` is judged by its body instead (see `sniff`).
fn accepts(h: &HeaderMap, mime: &str) -> bool {
    h.get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',').any(|p| {
                let p = p.trim().as_bytes();
                p.len() >= mime.len() && p[..mime.len()].eq_ignore_ascii_case(mime.as_bytes())
            })
        })
}

/// The request's host without port: `Host` for HTTP/1.1, `:authority` for h2.
pub fn host_of<B>(req: &Request<B>) -> Option<&str> {
    let raw = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| header_str(req.headers(), &header::HOST))?;
    let host = match raw.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => raw,
    };
    Some(host.trim_start_matches('[').trim_end_matches(']'))
}

/// A request the gateway cannot tie to a server it can vouch for: over plain HTTP, a
/// `Host` naming a server configured by host only (any address could claim that name).
#[derive(Debug)]
pub struct Unverifiable(pub String);

/// Which server a request is for, and whether it is MCP. The server is the destination the
/// kernel recorded for the connection, or the host name the gateway verified over TLS (the
/// SNI, which the upstream certificate was checked against and `Host` must equal) — never
/// the request's `Host`, which the agent writes.
pub fn classify<B>(req: &Request<B>, ctx: &ConnCtx) -> Result<(McpKind, Target), Unverifiable> {
    let path = req.uri().path();
    let up = ctx.upstream_addr;
    let verified_host = ctx.tls_sni.as_deref();
    let host_matches = |s: &crate::config::Server, host: &str| {
        s.host
            .as_deref()
            .is_some_and(|h| h.eq_ignore_ascii_case(host))
            && s.port.is_none_or(|p| p == up.port())
    };
    let path_matches =
        |s: &crate::config::Server| s.path.as_deref().is_none_or(|p| path.starts_with(p));
    let configured = ctx.daemon.config.servers.iter().find(|s| {
        let by_addr = s.address.is_some_and(|a| a == up);
        let by_host = verified_host.is_some_and(|h| host_matches(s, h));
        (by_addr || by_host) && path_matches(s)
    });
    if configured.is_none() && verified_host.is_none() {
        if let Some(claimed) = host_of(req) {
            if let Some(s) = ctx
                .daemon
                .config
                .servers
                .iter()
                .find(|s| s.address.is_none() && host_matches(s, claimed) && path_matches(s))
            {
                return Err(Unverifiable(format!(
                    "this request names server {:?} ({claimed}) over plain HTTP to {up}: the \
                     gateway cannot verify that this address is that server. Configure its \
                     `address`, or reach it over TLS",
                    s.name
                )));
            }
        }
    }
    let label: Arc<str> = match (configured, verified_host) {
        (Some(s), _) => s.name.as_str().into(),
        (None, Some(h)) => format!("{h}:{}", up.port()).into(),
        (None, None) => up.to_string().into(),
    };
    let target = Target {
        label,
        configured: configured.is_some(),
    };
    let h = req.headers();
    let mcp_headers = [H_PROTOCOL_VERSION, H_SESSION_ID, H_METHOD]
        .iter()
        .any(|n| h.contains_key(n));
    let streamable_accept = accepts(h, "application/json") && accepts(h, "text/event-stream");
    let known = target.configured || mcp_headers;
    // Methods as lenient servers read them: `post` is a POST to some.
    let method = if req
        .method()
        .as_str()
        .bytes()
        .any(|b| b.is_ascii_lowercase())
    {
        Method::from_bytes(req.method().as_str().to_ascii_uppercase().as_bytes())
            .unwrap_or_else(|_| req.method().clone())
    } else {
        req.method().clone()
    };
    let kind = match method {
        Method::POST => {
            let pq = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or(path);
            match ctx.daemon.sessions.legacy(&ctx.server_key(), pq) {
                Ok(None) if !(known || streamable_accept) => McpKind::NotMcp,
                legacy => McpKind::Post { legacy },
            }
        }
        // Legacy SSE streams carry no MCP header: any event stream is watched until it
        // proves to be MCP or not.
        Method::GET if accepts(h, "text/event-stream") => McpKind::Get { confirmed: known },
        Method::DELETE if h.contains_key(&H_SESSION_ID) => McpKind::Delete,
        _ => McpKind::NotMcp,
    };
    Ok((kind, target))
}

/// Whether JSON-RPC batches are allowed: only in 2025-03-26, which is also what a server
/// assumes when the version header is absent.
pub fn batches_allowed(version: Option<&str>) -> bool {
    matches!(version, None | Some("2025-03-26"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn host_comes_from_authority_or_host_header_without_port() {
        assert_eq!(
            host_of(&req("GET", "/", &[("host", "mcp.example.com:8080")])),
            Some("mcp.example.com")
        );
        assert_eq!(
            host_of(&req("GET", "http://a.example/x", &[])),
            Some("a.example")
        );
        assert_eq!(
            host_of(&req("GET", "/", &[("host", "[::1]:3001")])),
            Some("::1")
        );
        assert_eq!(host_of(&req("GET", "/", &[])), None);
    }

    #[test]
    fn accept_lists_are_split() {
        let r = req(
            "POST",
            "/mcp",
            &[("accept", "application/json, text/event-stream;q=0.9")],
        );
        assert!(accepts(r.headers(), "application/json"));
        assert!(accepts(r.headers(), "text/event-stream"));
        assert!(!accepts(r.headers(), "text/html"));
        let r = req("GET", "/", &[("accept", "Text/Event-Stream")]);
        assert!(accepts(r.headers(), "text/event-stream"));
    }

    #[test]
    fn batches_only_in_2025_03_26() {
        assert!(batches_allowed(None));
        assert!(batches_allowed(Some("2025-03-26")));
        assert!(!batches_allowed(Some("2025-06-18")));
        assert!(!batches_allowed(Some("2025-11-25")));
        assert!(!batches_allowed(Some("2026-07-28")));
    }
}
