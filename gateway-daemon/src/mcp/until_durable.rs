//! A forwarded call's answer, held from the agent until the call's `mcp_call` record is
//! durable. The sync starts when the record is written, before the call leaves; meanwhile
//! the gateway reads the server's answer, checks and records it, and has it ready. Only
//! handing it to the agent waits for the sync. So the `fdatasync` overlaps the server's
//! round trip and the gateway's own work on the answer, instead of coming before them.
//!
//! If the sync fails, the agent gets the gateway's refusal, never the answer. The ledger
//! then says so after the answer's records: each request is `no_response`, withheld.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use super::jsonrpc::Id;
use super::observe::Observer;
use super::pairing::Pending;
use super::record::{Direction, PendingRequest};
use crate::audit::{AuditError, Written};
use crate::http::body::{boxed, BoxError, GwBody};

/// The most of a streamed answer read ahead while the sync runs. A POST's event stream
/// usually holds its response in a few hundred bytes; past this, reading waits for the
/// sync, as the agent would. It is not charged to the body budget: it is this small, per
/// connection, and held only for a sync.
const READ_AHEAD_MAX: usize = 16 * 1024;

/// The records of a call, and what to record if they do not become durable.
pub struct UntilDurable {
    written: Vec<Written>,
    /// Only when a record waits for a sync.
    withheld: Option<Withheld>,
}

/// What the ledger needs to say that an answer was withheld: who asked what.
struct Withheld {
    recorder: Observer,
    asked: Vec<(Id, PendingRequest)>,
}

/// The records did not become durable: the answer was withheld from the agent.
pub struct NotDurable {
    pub error: AuditError,
    /// The requests of the call, which get the gateway's error instead.
    pub ids: Vec<Id>,
}

impl UntilDurable {
    /// `written`: the call's records; `local`: its requests, before any answer is paired.
    pub fn new(written: Vec<Written>, obs: &Observer, local: &Pending<PendingRequest>) -> Self {
        let withheld = written.iter().any(Written::waits).then(|| Withheld {
            recorder: obs.recorder(),
            asked: local.snapshot(),
        });
        UntilDurable { written, withheld }
    }

    /// `response` once every record is durable, its body read ahead meanwhile; or why not.
    pub async fn release(self, response: Response<GwBody>) -> Result<Response<GwBody>, NotDurable> {
        let Some(withheld) = self.withheld else {
            return Ok(response);
        };
        let durable = super::exchange::all_durable(self.written);
        let (parts, body) = response.into_parts();
        match read_ahead(body, durable).await {
            Ok(body) => Ok(Response::from_parts(parts, body)),
            Err(error) => {
                let Withheld { recorder, asked } = withheld;
                let why = format!(
                    "the server's answer was withheld: the audit ledger could not make the \
                     call's record durable ({error})"
                );
                let ids = asked.iter().map(|(id, _)| id.clone()).collect();
                recorder.write_now(recorder.unanswered(
                    Direction::ClientToServer,
                    asked,
                    "no_response",
                    &why,
                ));
                Err(NotDurable { error, ids })
            }
        }
    }
}

/// Waits for `durable`, reading `body` ahead meanwhile (a stream's events are observed as
/// they are read). A body already whole (a JSON answer the gateway read and checked, or one
/// of known length) is only waited for.
async fn read_ahead(
    mut body: GwBody,
    durable: impl Future<Output = Result<(), AuditError>>,
) -> Result<GwBody, AuditError> {
    if body.is_end_stream() || body.size_hint().exact().is_some() {
        durable.await?;
        return Ok(body);
    }
    let mut durable = std::pin::pin!(durable);
    let mut ahead = VecDeque::new();
    let (mut bytes, mut ended) = (0, false);
    loop {
        tokio::select! {
            biased;
            done = &mut durable => {
                done?;
                break;
            }
            frame = body.frame(), if !ended && bytes < READ_AHEAD_MAX => match frame {
                Some(Ok(frame)) => {
                    bytes += frame.data_ref().map_or(0, Bytes::len);
                    ahead.push_back(Ok(frame));
                }
                Some(Err(e)) => {
                    ahead.push_back(Err(e));
                    ended = true;
                }
                None => ended = true,
            },
        }
    }
    if ahead.is_empty() && !ended {
        return Ok(body);
    }
    Ok(boxed(ReadAhead {
        bytes,
        ahead,
        rest: (!ended).then_some(body),
    }))
}

/// A body whose first frames were read ahead.
struct ReadAhead {
    /// Data bytes in `ahead`.
    bytes: usize,
    ahead: VecDeque<Result<Frame<Bytes>, BoxError>>,
    /// What was not read yet; None once the body ended (or failed) while read ahead.
    rest: Option<GwBody>,
}

impl Body for ReadAhead {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(frame) = self.ahead.pop_front() {
            if let Ok(f) = &frame {
                self.bytes -= f.data_ref().map_or(0, Bytes::len);
            }
            return Poll::Ready(Some(frame));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ahead.is_empty() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    /// Never exact: the stream is framed as the body read ahead would have been (chunked).
    fn size_hint(&self) -> SizeHint {
        let mut hint = SizeHint::new();
        let rest = self.rest.as_ref().map_or(0, |r| r.size_hint().lower());
        hint.set_lower(self.bytes as u64 + rest);
        hint
    }
}
