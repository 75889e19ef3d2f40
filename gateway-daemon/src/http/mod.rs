//! HTTP on both sides of a mediated connection. The agent's connection is served with
//! hyper in the protocol the agent chose (HTTP/1.1 or h2c); each agent connection gets its
//! own upstream connection in the same protocol, so keep-alive and connection lifetimes
//! mirror what the agent asked for. Every request goes through `mcp::dispatch`.

pub mod body;
pub mod budget;
pub mod counting;
pub mod detect;
pub mod upstream;

pub use upstream::{UpBody, Upstream};

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::client::conn::{http1 as client1, http2 as client2};
use hyper::server::conn::{http1 as server1, http2 as server2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;
use tracing::Instrument;

use crate::mcp::{self, ConnCtx};
use body::{boxed, GwBody};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("HTTP handshake with the upstream server failed: {0}")]
    UpstreamHandshake(hyper::Error),
    #[error("serving the agent's HTTP connection: {0}")]
    Serve(hyper::Error),
}

/// How a served connection ended, for its flow record: `error` is said only of a failure.
#[derive(Debug)]
pub struct Ended {
    pub outcome: &'static str,
    pub error: Option<String>,
    /// Who hung up, when the ending was ordinary but not a plain close.
    pub detail: Option<String>,
}

impl Ended {
    pub fn closed() -> Self {
        Ended {
            outcome: "closed",
            error: None,
            detail: None,
        }
    }

    fn ordinary(outcome: &'static str, detail: String) -> Self {
        Ended {
            outcome,
            error: None,
            detail: Some(detail),
        }
    }
}

/// The I/O error of the agent's own socket that ended the connection, if one did: only
/// the direct cause of a hyper error. A deeper one belongs to something else — a response
/// body the server cut short, whose error hyper passes on — and is no agent's doing.
fn agent_io(e: &hyper::Error) -> Option<&std::io::Error> {
    if e.is_user() {
        return None;
    }
    std::error::Error::source(e)?.downcast_ref::<std::io::Error>()
}

impl HttpError {
    /// How the connection ended. An agent that hangs up — between requests, with a reset,
    /// or before the gateway's own close (TLS `close_notify`) reached it — closed it; one
    /// that hangs up mid-message is `agent_closed`; idling past the header timeout is
    /// `idle_timeout`. Only what is none of these is a failure.
    pub fn ended(&self) -> Ended {
        let HttpError::Serve(e) = self else {
            return Ended {
                outcome: "error",
                error: Some(self.to_string()),
                detail: None,
            };
        };
        if e.is_incomplete_message() || e.is_canceled() {
            return Ended::ordinary(
                "agent_closed",
                format!("the agent hung up mid-message: {e}"),
            );
        }
        if e.is_timeout() {
            return Ended::ordinary(
                "idle_timeout",
                format!("no request headers within {}s", HEADER_TIMEOUT.as_secs()),
            );
        }
        if e.is_shutdown() {
            return Ended::ordinary(
                "closed",
                "the agent had gone when the gateway closed its side".into(),
            );
        }
        match agent_io(e) {
            Some(io) if crate::passthrough::peer_closed(io) => {
                Ended::ordinary("closed", format!("the agent: {io}"))
            }
            _ => Ended {
                outcome: "error",
                error: Some(self.to_string()),
                detail: None,
            },
        }
    }
}

/// Time an agent gets to send a request's headers (slow clients cannot hold a task forever).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// Serves one agent connection until either side closes it.
pub async fn serve<A, U>(
    agent: A,
    upstream: U,
    protocol: Protocol,
    ctx: Arc<ConnCtx>,
) -> Result<(), HttpError>
where
    A: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The HTTP/1 upstream connection is driven by this task, beside the agent's: a request
    // and its response cross no other task (or thread) between the two sockets. HTTP/2
    // multiplexes streams that hyper serves on tasks of their own, so its connection gets
    // one too. Driven only inside the connection's task, the HTTP/1 one is in the
    // connection's span already: entering it again would cost every poll.
    let (upstream, driver): (Upstream, Option<upstream::Driver>) = match protocol {
        Protocol::Http1 => {
            let (send, conn) = client1::handshake(TokioIo::new(upstream))
                .await
                .map_err(HttpError::UpstreamHandshake)?;
            let driver = upstream::Driver::new(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "upstream HTTP/1 connection ended");
                }
            });
            let send = Arc::new(Mutex::new(send));
            (Upstream::H1(send, driver.clone()), Some(driver))
        }
        Protocol::Http2 => {
            let (send, conn) = client2::handshake(TokioExecutor::new(), TokioIo::new(upstream))
                .await
                .map_err(HttpError::UpstreamHandshake)?;
            tokio::spawn(
                async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                    }
                }
                .in_current_span(),
            );
            (Upstream::H2(send), None)
        }
    };
    let span = tracing::Span::current();
    let svc = service_fn(move |req: Request<Incoming>| {
        let ctx = ctx.clone();
        let upstream = upstream.clone();
        // The MCP fields are filled in by the MCP stage once it has read the body. At debug
        // level: a span per request is measurable on the hot path, and the connection's
        // span already names who and where.
        let span = tracing::debug_span!(
            parent: &span,
            "http",
            method = %req.method(),
            path = %req.uri().path(),
            server = tracing::field::Empty,
            session = tracing::field::Empty,
            rpc = tracing::field::Empty,
            id = tracing::field::Empty,
        );
        async move { Ok::<_, Infallible>(mcp::dispatch(req, &ctx, &upstream).await) }
            .instrument(span)
    });
    let io = TokioIo::new(agent);
    let serving = async move {
        match protocol {
            Protocol::Http1 => {
                server1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(io, svc)
                    .with_upgrades()
                    .await
            }
            Protocol::Http2 => {
                server2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .serve_connection(io, svc)
                    .await
            }
        }
    };
    // Boxed so that dropping it below drops the service, and the request senders in it.
    let mut serving = Box::pin(serving);
    let result = std::future::poll_fn(|cx| {
        if let Some(d) = &driver {
            d.drive(cx);
        }
        serving.as_mut().poll(cx)
    })
    .await;
    // The agent's side is done and its request senders with it: the upstream connection
    // closes as soon as it is driven once more (an upgrade has handed its socket on by now).
    drop(serving);
    if let Some(d) = driver.and_then(|d| d.take()) {
        let _ = tokio::time::timeout(UPSTREAM_CLOSE, d).await;
    }
    result.map_err(HttpError::Serve)
}

/// How long an upstream connection whose agent has gone may take to close.
const UPSTREAM_CLOSE: Duration = Duration::from_millis(200);

/// Forwards a request the gateway does not interpret, streaming both bodies; an HTTP/1
/// upgrade (WebSocket) becomes a byte pipe once the server agrees.
pub async fn forward<B>(mut req: Request<B>, upstream: &Upstream) -> Response<GwBody>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: Into<body::BoxError>,
{
    let wants_upgrade = req.headers().contains_key(http::header::UPGRADE);
    let agent_upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut req));
    let req = req.map(boxed);
    match upstream.send(req).await {
        Ok(mut resp) => {
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                if let Some(agent_upgrade) = agent_upgrade {
                    let server_upgrade = hyper::upgrade::on(&mut resp);
                    tokio::spawn(
                        async move {
                            match tokio::try_join!(agent_upgrade, server_upgrade) {
                                Ok((a, s)) => {
                                    let _ = tokio::io::copy_bidirectional(
                                        &mut TokioIo::new(a),
                                        &mut TokioIo::new(s),
                                    )
                                    .await;
                                }
                                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                            }
                        }
                        .in_current_span(),
                    );
                }
            }
            resp.map(boxed)
        }
        Err(e) => {
            tracing::warn!(error = %e, "upstream request failed");
            mcp::reply::http_error(
                StatusCode::BAD_GATEWAY,
                &format!("the upstream server failed: {e}"),
            )
        }
    }
}

/// How long an agent may keep a connection the gateway only answers with an error.
const REFUSAL_LINGER: Duration = Duration::from_secs(30);

/// Answers every request on the agent's connection with 502 and `message`, for a
/// connection whose upstream the gateway refused; HTTP/1 closes after the first answer.
pub async fn refuse<A>(agent: A, protocol: Protocol, message: &str)
where
    A: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let message: Arc<str> = message.into();
    let svc = service_fn(move |_req: Request<Incoming>| {
        let mut resp = mcp::reply::http_error(StatusCode::BAD_GATEWAY, &message);
        if protocol == Protocol::Http1 {
            resp.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        async move { Ok::<_, Infallible>(resp) }
    });
    let io = TokioIo::new(agent);
    let serve = async {
        match protocol {
            Protocol::Http1 => {
                server1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(io, svc)
                    .await
            }
            Protocol::Http2 => {
                server2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .serve_connection(io, svc)
                    .await
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, serve).await;
}
