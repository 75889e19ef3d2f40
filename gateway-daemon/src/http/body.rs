//! Bodies: the one boxed type both directions use, bounded collection, and a channel-fed
//! body for streams the gateway re-emits as it reads them.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use tokio::sync::mpsc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type GwBody = BoxBody<Bytes, BoxError>;

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("reading body: {0}")]
    Read(String),
    #[error(transparent)]
    OverBudget(#[from] super::budget::OverBudget),
}

pub fn full(bytes: impl Into<Bytes>) -> GwBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> GwBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Any hyper-compatible body as a `GwBody`.
pub fn boxed<B>(b: B) -> GwBody
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed()
}

/// Reads a whole body, failing as soon as it passes `limit`, or as soon as `held` (what
/// the exchange holds, shared with every other) cannot grow (memory stays bounded).
pub async fn collect_limited<B>(
    body: &mut B,
    limit: usize,
    held: &mut super::budget::Reservation,
) -> Result<Bytes, BodyError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    collect_after(Vec::new(), body, limit, held).await
}

/// As `collect_limited`, the body's first bytes already read into `buf`. What is charged
/// to `held` is the memory allocated, not only the bytes in it: the buffer grows by half
/// at a time (bounded by `limit`), and each growth is charged before it is made.
pub async fn collect_after<B>(
    mut buf: Vec<u8>,
    body: &mut B,
    limit: usize,
    held: &mut super::budget::Reservation,
) -> Result<Bytes, BodyError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    if body.size_hint().lower() > (limit - buf.len().min(limit)) as u64 {
        return Err(BodyError::TooLarge { limit });
    }
    held.set(buf.capacity())?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            let needed = buf.len() + data.len();
            if needed > limit {
                return Err(BodyError::TooLarge { limit });
            }
            if needed > buf.capacity() {
                let grown = (buf.capacity() + buf.capacity() / 2).clamp(needed, limit);
                held.set(grown)?;
                buf.reserve_exact(grown - buf.len());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

/// A body whose frames come from a task (which sees the agent leave when sends fail).
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
}

impl ChannelBody {
    pub fn new(capacity: usize) -> (mpsc::Sender<Result<Frame<Bytes>, BoxError>>, Self) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, Self { rx })
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx)
    }
}

/// Reads and discards the rest of a refused body, so the agent's kept-alive connection
/// can carry its next request. Gives up (false: the connection must close) past `max`
/// bytes or `within`.
pub async fn discard<B>(body: &mut B, max: u64, within: std::time::Duration) -> bool
where
    B: Body<Data = Bytes> + Unpin,
{
    let drain = async {
        let mut seen = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Ok(d) = f.into_data() {
                        seen += d.len() as u64;
                        if seen > max {
                            return false;
                        }
                    }
                }
                Err(_) => return false,
            }
        }
        true
    };
    tokio::time::timeout(within, drain).await.unwrap_or(false)
}

/// A body whose first frames were read already (to look at them): they go out again
/// first, then the rest as it comes.
pub struct Replay<B> {
    head: std::collections::VecDeque<Frame<Bytes>>,
    rest: B,
}

impl<B> Replay<B> {
    pub fn new(head: impl IntoIterator<Item = Frame<Bytes>>, rest: B) -> Self {
        Self {
            head: head.into_iter().collect(),
            rest,
        }
    }
}

impl<B> Body for Replay<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Some(f) = self.head.pop_front() {
            return Poll::Ready(Some(Ok(f)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let held: u64 = self
            .head
            .iter()
            .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
            .sum();
        let rest = self.rest.size_hint();
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(rest.lower() + held);
        if let Some(u) = rest.upper() {
            hint.set_upper(u + held);
        }
        hint
    }
}
