//! The gateway's own messages to a server: the error that answers a server request the
//! policy refused (the agent never saw it), and the listing the gateway takes itself when a
//! server says its definitions changed.
//!
//! Over HTTP they go on a connection of the gateway's own: the agent's may be busy carrying
//! the very stream the server's message came on (HTTP/1.1 cannot send another request on
//! it until that ends). They carry what the agent's request carried that makes them the
//! session's (host, session id, protocol version, cookies, the credentials the gateway
//! injects), so the server takes them as the agent's. Over stdio they are lines written to
//! the server between the agent's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::daemon::Daemon;
use crate::http::body::{full, GwBody};

/// How long one of the gateway's own exchanges with a server may take, whole.
pub const WITHIN: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ToServerError {
    #[error("connecting to the server: {0}")]
    Dial(String),
    #[error("TLS to the server: {0}")]
    Tls(String),
    #[error("HTTP to the server: {0}")]
    Http(#[from] hyper::Error),
    #[error("the server answered HTTP {0}")]
    Status(u16),
    #[error("the server's answer is over {0} bytes")]
    TooLarge(usize),
    #[error("the server did not answer within {}s", WITHIN.as_secs())]
    Timeout,
    #[error("the server's answer holds no response to the gateway's request")]
    NoAnswer,
    #[error("the server's stdin is closed or not being read")]
    StdinClosed,
}

/// The gateway's own answers to servers in flight at once: all servers, and one server.
const MAX_OWN_POSTS: usize = 64;
const MAX_OWN_POSTS_PER_SERVER: usize = 16;

static OWN_POSTS: std::sync::Mutex<Option<std::collections::HashMap<SocketAddr, usize>>> =
    std::sync::Mutex::new(None);

/// One of the gateway's own answers in flight to a server, counted until dropped.
struct Slot(SocketAddr);

impl Slot {
    fn take(addr: SocketAddr) -> Option<Slot> {
        let mut g = OWN_POSTS.lock().unwrap_or_else(|p| p.into_inner());
        let map = g.get_or_insert_with(Default::default);
        let total: usize = map.values().sum();
        let mine = map.get(&addr).copied().unwrap_or(0);
        if total >= MAX_OWN_POSTS || mine >= MAX_OWN_POSTS_PER_SERVER {
            return None;
        }
        map.insert(addr, mine + 1);
        Some(Slot(addr))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = OWN_POSTS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(map) = g.as_mut() {
            if let Some(n) = map.get_mut(&self.0) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&self.0);
                }
            }
        }
    }
}

/// Where the gateway's own messages to one server go.
#[derive(Clone)]
pub enum Back {
    Http(Arc<HttpBack>),
    /// Writes one line (a JSON-RPC message, no newline) to the server's stdin; false when
    /// it could not be queued.
    Stdio(Arc<dyn Fn(Vec<u8>) -> bool + Send + Sync>),
}

impl Back {
    /// Sends `message` (a response or notification: nothing to wait for) and logs a
    /// failure; the caller's audit record says what was meant.
    pub fn tell(&self, message: Vec<u8>) {
        match self {
            Back::Http(h) => {
                // A server that floods the gateway with requests it refuses gets some of
                // its errors, not a connection per request, and not others' share.
                let Some(slot) = Slot::take(h.addr) else {
                    tracing::warn!(
                        "the gateway's answer to the server was not sent: too many in flight"
                    );
                    return;
                };
                let h = h.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    if let Err(e) = h.post(message).await {
                        tracing::warn!(error = %e, "the gateway's answer to the server was not delivered");
                    }
                });
            }
            Back::Stdio(send) => {
                if !send(message) {
                    tracing::warn!(
                        "the gateway's answer to the server was not delivered: {}",
                        ToServerError::StdinClosed
                    );
                }
            }
        }
    }
}

/// The agent's request, as the gateway repeats it for its own.
pub struct HttpBack {
    daemon: Arc<Daemon>,
    addr: SocketAddr,
    sni: Option<Arc<str>>,
    uri: Uri,
    /// Kept as a list: made for every POST and used by few, a map's hashing is paid only
    /// when a request is sent.
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// Headers of the agent's request that are about its own message or its own connection.
fn own_header(name: &str) -> bool {
    matches!(
        name,
        "content-length"
            | "content-type"
            | "accept"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "upgrade"
            | "expect"
            | "last-event-id"
            | "mcp-method"
            | "mcp-name"
            | "proxy-connection"
            // What would change how the answer comes (compressed, partial, conditional,
            // preferred): the gateway must be able to read it.
            | "accept-encoding"
            | "range"
            | "if-range"
            | "if-match"
            | "if-none-match"
            | "if-modified-since"
            | "if-unmodified-since"
            | "prefer"
    ) || name.starts_with("mcp-param-")
}

impl HttpBack {
    /// From the agent's request (after the gateway's credentials went on), to `path` (the
    /// request's own when None).
    pub fn of(
        ctx: &super::ConnCtx,
        uri: &Uri,
        headers: &HeaderMap,
        path: Option<&str>,
    ) -> HttpBack {
        let mut kept: Vec<(HeaderName, HeaderValue)> = headers
            .iter()
            .filter(|(name, _)| !own_header(name.as_str()))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        // HTTP/2 carries the host in the URI only.
        if !headers.contains_key(header::HOST) {
            if let Some(a) = uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                kept.push((header::HOST, a));
            }
        }
        let uri = match path {
            Some(p) => p.parse().unwrap_or_else(|_| Uri::from_static("/")),
            None => uri
                .path_and_query()
                .cloned()
                .map_or_else(|| Uri::from_static("/"), Uri::from),
        };
        HttpBack {
            daemon: ctx.daemon.clone(),
            addr: ctx.upstream_addr,
            sni: ctx.tls_sni.clone(),
            uri,
            headers: kept,
        }
    }

    /// The same, to another path (a legacy session's endpoint).
    pub fn at(&self, path: &str) -> HttpBack {
        HttpBack {
            daemon: self.daemon.clone(),
            addr: self.addr,
            sni: self.sni.clone(),
            uri: path.parse().unwrap_or_else(|_| self.uri.clone()),
            headers: self.headers.clone(),
        }
    }

    /// POSTs `body` on a new connection; the response's head, its body unread.
    pub async fn post(&self, body: Vec<u8>) -> Result<Response<Incoming>, ToServerError> {
        self.post_with(body, &[]).await
    }

    /// The same, with `extra` headers.
    pub async fn post_with(
        &self,
        body: Vec<u8>,
        extra: &[(&str, &str)],
    ) -> Result<Response<Incoming>, ToServerError> {
        tokio::time::timeout(WITHIN, self.post_inner(body, extra))
            .await
            .map_err(|_| ToServerError::Timeout)?
    }

    async fn post_inner(
        &self,
        body: Vec<u8>,
        extra: &[(&str, &str)],
    ) -> Result<Response<Incoming>, ToServerError> {
        let tcp = crate::passthrough::connect(self.addr, self.daemon.config.intercept.mark)
            .await
            .map_err(|e| ToServerError::Dial(e.to_string()))?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .body(full(Bytes::from(body)))
            .expect("a request of valid parts");
        let h = req.headers_mut();
        h.reserve(self.headers.len() + 4);
        for (name, value) in &self.headers {
            h.append(name.clone(), value.clone());
        }
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        for (name, value) in extra {
            if let (Ok(n), Ok(v)) = (
                header::HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                h.insert(n, v);
            }
        }
        match &self.sni {
            None => send(TokioIo::new(tcp), req).await,
            Some(sni) => {
                let t = &self.daemon.tls;
                let tls = crate::tls::upstream::connect(
                    t.client_config(),
                    tcp,
                    sni,
                    vec![crate::tls::HTTP11.to_vec()],
                    Instant::now() + t.handshake_timeout,
                )
                .await
                .map_err(|e| ToServerError::Tls(e.to_string()))?;
                send(TokioIo::new(tls), req).await
            }
        }
    }
}

async fn send<I>(io: I, req: Request<GwBody>) -> Result<Response<Incoming>, ToServerError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = send.send_request(req).await?;
    let status = resp.status();
    if !status.is_success() {
        return Err(ToServerError::Status(status.as_u16()));
    }
    Ok(resp)
}

/// Reads a response body whole, up to `max` bytes.
pub async fn body_of(resp: Response<Incoming>, max: usize) -> Result<Bytes, ToServerError> {
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if out.len() + data.len() > max {
                return Err(ToServerError::TooLarge(max));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(out))
}
