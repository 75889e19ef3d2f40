//! `GET /metrics` on `metrics.listen`: a small HTTP/1 server, one task per connection, so
//! one slow or idle client holds only its own task, and only until the header timeout.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::Instrument;

/// The `Content-Type` of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Time a client gets to send a request's headers, and to send the next one on a kept-alive
/// connection.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed as soon as they are accepted.
const MAX_CONNECTIONS: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot serve metrics on {addr} (metrics.listen in the config): {source}; choose a free loopback address:port, or remove metrics.listen")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds the metrics endpoint; call at startup so a taken address stops the daemon with
/// an error naming `metrics.listen`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Binds `addr` and serves [`super::global`] on it until the task is dropped.
pub async fn serve(addr: SocketAddr) -> Result<(), MetricsError> {
    serve_on(bind(addr).await?).await;
    Ok(())
}

/// Serves [`super::global`] on a bound listener until the task is dropped.
pub async fn serve_on(listener: TcpListener) {
    serve_metrics(listener, super::global(), HEADER_TIMEOUT).await
}

pub(super) async fn serve_metrics(
    listener: TcpListener,
    metrics: &'static super::Metrics,
    header_timeout: Duration,
) {
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(listen = %local, "metrics endpoint: GET /metrics");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: wait rather than spin; the next accept
                // may succeed.
                tracing::warn!(listen = %local, error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics: too many connections; closing this one");
            continue;
        };
        let span = tracing::debug_span!("metrics", %peer);
        tokio::spawn(
            async move {
                let svc =
                    service_fn(
                        move |req| async move { Ok::<_, Infallible>(answer(&req, metrics)) },
                    );
                let result = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
                if let Err(e) = result {
                    tracing::debug!(error = %e, "metrics connection ended");
                }
                drop(slot);
            }
            .instrument(span),
        );
    }
}

fn answer(req: &Request<Incoming>, metrics: &super::Metrics) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String, content_type: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(content_type),
        );
        r
    };
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "not found: the metrics are at /metrics\n".into(),
            "text/plain; charset=utf-8",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served at /metrics\n".into(),
            "text/plain; charset=utf-8",
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    reply(StatusCode::OK, metrics.encode(), CONTENT_TYPE)
}
