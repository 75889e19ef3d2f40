//! The MCP stage: recognises MCP in HTTP exchanges (Streamable HTTP of every protocol
//! version, legacy HTTP+SSE), validates what the wire claims against the body, pairs
//! JSON-RPC messages across exchanges and connections, and audits every exchange. Messages
//! pass through byte for byte; the stages that change them build on this one.

pub mod ask;
#[cfg(test)]
mod decided_tests;
pub mod exchange;
pub mod guard;
pub mod headers;
pub mod inject;
pub mod input_required;
pub mod json_scan;
pub mod jsonrpc;
pub mod media;
pub mod observe;
pub mod pairing;
pub mod recognise;
pub mod record;
pub mod record_json;
pub mod refusal;
pub mod relist;
pub mod reply;
pub mod rewrite;
#[cfg(test)]
mod rewrite_tests;
pub mod server_ask;
pub mod session;
pub mod sniff;
pub mod sse;
pub mod stream;
pub mod tasks;
pub mod to_server;
pub mod until_durable;
pub mod withholding;

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::http::body::{boxed, BodyError, GwBody};
use crate::http::{forward, Upstream};
use recognise::McpKind;
pub use record::Principal;
pub use session::Sessions;

/// Deepest JSON nesting accepted in a message.
pub const MAX_DEPTH: usize = 64;

/// One agent connection: the daemon's shared state and what is the connection's own.
pub struct ConnCtx {
    pub daemon: Arc<crate::daemon::Daemon>,
    pub identity: Arc<crate::identity::Identity>,
    pub principal: Arc<Principal>,
    /// Who may use the sessions this connection opens (`Principal::session_owner`), made
    /// once: every request that names a session is checked against it.
    pub owner: session::Owner,
    /// Where the daemon dials: the agent's original destination (v4-mapped made IPv4).
    pub upstream_addr: SocketAddr,
    /// The server name the agent's TLS asked for, when the gateway terminated it.
    pub tls_sni: Option<Arc<str>>,
    /// The connection's id and how it was carried, as its records name it.
    pub via: Arc<crate::audit::link::Via>,
    /// Whether this connection's first credential injection has been logged (at info;
    /// the rest at debug).
    pub credentials_logged: std::sync::atomic::AtomicBool,
    /// The principal as records name it under the policy in force, by policy generation:
    /// decided once per connection and reload, not per request.
    pub named: std::sync::Mutex<Option<(u64, Arc<Principal>)>>,
}

impl ConnCtx {
    /// The principal, with the name of the policy principal this connection's process is
    /// under `policy`.
    pub fn principal_under(&self, policy: &crate::policy::Policy) -> Arc<Principal> {
        let mut named = self.named.lock().unwrap_or_else(|p| p.into_inner());
        match &*named {
            Some((generation, p)) if *generation == policy.generation => p.clone(),
            _ => {
                let mut p = (*self.principal).clone();
                match policy.place(&self.identity) {
                    Ok(placed) => p.name = placed.map(|p| p.name.clone()),
                    Err(undecided) => p.undecided = Some(undecided.name.clone()),
                }
                let p = Arc::new(p);
                *named = Some((policy.generation, p.clone()));
                p
            }
        }
    }

    /// The server this connection reaches, as sessions are keyed.
    pub fn server_key(&self) -> session::ServerKey {
        session::ServerKey {
            addr: self.upstream_addr,
            sni: self.tls_sni.clone(),
        }
    }
}

/// One HTTP exchange of an agent: MCP goes through the MCP handlers, the rest is forwarded
/// as it is (or refused when the config allows agents MCP only).
pub async fn dispatch(
    req: Request<Incoming>,
    ctx: &Arc<ConnCtx>,
    upstream: &Upstream,
) -> Response<GwBody> {
    if let Some(sni) = &ctx.tls_sni {
        if let Some(host) = recognise::host_of(&req) {
            if !host.eq_ignore_ascii_case(sni) {
                // The certificate the agent accepted was for `sni`; a request for another
                // host on it would reach a server the TLS decision never looked at.
                tracing::info!(%sni, host, "request for another host on a TLS connection refused");
                return reply::http_error(
                    StatusCode::MISDIRECTED_REQUEST,
                    &format!("this TLS connection is for {sni}, not {host}"),
                );
            }
        }
    }
    let (kind, target) = match recognise::classify(&req, ctx) {
        Ok(c) => c,
        Err(recognise::Unverifiable(why)) => {
            tracing::info!(reason = %why, "request for an unverifiable server refused");
            return reply::http_error(StatusCode::MISDIRECTED_REQUEST, &why);
        }
    };
    // Headers are the agent's to choose: a request they do not mark as MCP is MCP all the
    // same when its body is JSON-RPC (a server reads the body, whatever Accept says).
    // Held until the request is decided and forwarded (this exchange's share of memory).
    let mut held = ctx.daemon.budget.reserve(ctx.principal.uid);
    let (kind, mut req) = match kind {
        McpKind::NotMcp => {
            match sniff::request(req, ctx.daemon.config.http.max_request_bytes, &mut held).await {
                Ok((sniff::Sniffed::Plain, req)) => (McpKind::NotMcp, req),
                Ok((sniff::Sniffed::JsonRpc, req)) => {
                    tracing::debug!("a JSON-RPC body without MCP headers: decided as MCP");
                    (McpKind::Post { legacy: Ok(None) }, req)
                }
                Err(e) => {
                    let (status, why) = match e {
                        BodyError::TooLarge { .. } => (
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!(
                            "a request body that may be JSON-RPC {e} (http.max_request_bytes): \
                             the gateway cannot decide it"
                        ),
                        ),
                        BodyError::Read(_) => (StatusCode::BAD_REQUEST, e.to_string()),
                        BodyError::OverBudget(_) => {
                            (StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                        }
                    };
                    tracing::info!(reason = %why, "request refused before recognition");
                    let mut resp = reply::http_error(status, &why);
                    resp.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                    return resp;
                }
            }
        }
        kind => (kind, req.map(boxed)),
    };
    // The server's credentials go on now (the agent's own come off); its response is
    // scrubbed of them below, whichever path it takes.
    let injected = match inject::apply(&mut req, ctx, &target, !matches!(kind, McpKind::NotMcp)) {
        Ok(i) => i,
        Err(refused) => return refused.response(),
    };
    let resp = match kind {
        McpKind::NotMcp => {
            if ctx.daemon.config.http.mcp_only {
                tracing::info!(server = %target.label, "non-MCP request refused (http.mcp_only)");
                return reply::http_error(
                    StatusCode::FORBIDDEN,
                    "this agent may only make MCP requests (http.mcp_only)",
                );
            }
            // Whatever the request, an event stream in answer is watched: a server message
            // never reaches the agent unchecked because of how the agent asked.
            exchange::watch_plain(forward(req, upstream).await, ctx, &target)
        }
        McpKind::Post { legacy } if ctx.daemon.policy.current().has_ask() => {
            ask::post_that_may_wait(req, ctx.clone(), upstream.clone(), target, legacy).await
        }
        McpKind::Post { legacy } => exchange::post(req, ctx, upstream, &target, legacy, None).await,
        McpKind::Get { confirmed } => exchange::get(req, ctx, upstream, &target, confirmed).await,
        McpKind::Delete => exchange::delete(req, ctx, upstream, &target).await,
    };
    injected.scrub(resp)
}
