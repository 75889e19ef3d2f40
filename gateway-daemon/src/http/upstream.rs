//! The upstream half of a mediated connection: one HTTP connection to the original
//! destination, and the bodies of its responses.
//!
//! An HTTP/1 upstream connection is driven by the agent connection's own task (see
//! `serve`). hyper hands a response body over from that connection one chunk at a time:
//! the next chunk is decoded only after the body's reader has taken the last one. The
//! reader is hyper's server half of the same task, and it flushes to the agent whenever
//! its body has nothing ready. An event stream whose whole response had already arrived
//! in one read then left as one write per event (three for a `tools/call` answer), each
//! a segment the agent's socket wakes for. `UpBody` drives the connection itself when its
//! chunk is not there yet, so what has arrived passes in one write, and what has not
//! still passes the moment it does.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1 as client1, http2 as client2};
use tokio::sync::Mutex;

use super::body::GwBody;

/// The future that drives an upstream HTTP/1 connection, shared by the connection's task
/// and the bodies of the responses it reads.
#[derive(Clone)]
pub struct Driver(Arc<DriverShared>);

struct DriverShared {
    future: std::sync::Mutex<Option<DriverFuture>>,
    /// The agent connection's task. Only it drives the connection: a body read on another
    /// task (a call held for approval is answered from one) would take the connection's
    /// wake-ups away from it.
    owner: Option<tokio::task::Id>,
}

type DriverFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Driver {
    /// Owned by the task this is called on.
    pub fn new(f: impl Future<Output = ()> + Send + 'static) -> Self {
        Driver(Arc::new(DriverShared {
            future: std::sync::Mutex::new(Some(Box::pin(f))),
            owner: tokio::task::try_id(),
        }))
    }

    /// Polls the connection once, unless it has ended, or this is not its own task. The
    /// lock is never contended (one task), and a poll from inside its own poll is skipped.
    pub fn drive(&self, cx: &mut Context<'_>) {
        if tokio::task::try_id() != self.0.owner {
            return;
        }
        let mut slot = match self.0.future.try_lock() {
            Ok(slot) => slot,
            // A poll of it panicked: it is never polled again, and dropping it closes the
            // connection, so a request on it fails rather than waits.
            Err(std::sync::TryLockError::Poisoned(p)) => {
                *p.into_inner() = None;
                return;
            }
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        if let Some(f) = slot.as_mut() {
            if f.as_mut().poll(cx).is_ready() {
                *slot = None;
            }
        }
    }

    /// The connection's future, if it has not ended, for its closing.
    pub fn take(&self) -> Option<DriverFuture> {
        self.0
            .future
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// How much a body passes on by driving the connection before it lets the worker's other
/// connections have a turn. MCP answers are far smaller and leave in one write.
const DRIVEN_PER_TURN: usize = 256 * 1024;

/// A response body from the upstream server.
pub struct UpBody {
    inner: Incoming,
    /// HTTP/1's connection, driven here when the next chunk is not there yet.
    driver: Option<Driver>,
    /// Bytes passed on by driving since this body last returned `Pending`.
    driven: usize,
}

impl UpBody {
    fn new(inner: Incoming, driver: Option<Driver>) -> Self {
        UpBody {
            inner,
            driver,
            driven: 0,
        }
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        let Some(driver) = &this.driver else {
            return Poll::Pending;
        };
        if this.driven >= DRIVEN_PER_TURN {
            // A fast server's long answer: flush what there is, and go on at the next turn.
            this.driven = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        // Decodes at most the next chunk, if its bytes have been read.
        driver.drive(cx);
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.driven += frame.data_ref().map_or(0, |d| d.len());
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                this.driven = 0;
                Poll::Pending
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The upstream half: one HTTP connection to the original destination.
#[derive(Clone)]
pub enum Upstream {
    H1(Arc<Mutex<client1::SendRequest<GwBody>>>, Driver),
    H2(client2::SendRequest<GwBody>),
}

impl Upstream {
    pub async fn send(&self, req: Request<GwBody>) -> Result<Response<UpBody>, hyper::Error> {
        match self {
            Upstream::H1(s, driver) => {
                let mut s = s.lock().await;
                s.ready().await?;
                let resp = s.send_request(req).await?;
                let driver = Some(driver.clone());
                Ok(resp.map(|inner| UpBody::new(inner, driver)))
            }
            Upstream::H2(s) => {
                let mut s = s.clone();
                s.ready().await?;
                let resp = s.send_request(req).await?;
                Ok(resp.map(|inner| UpBody::new(inner, None)))
            }
        }
    }
}
