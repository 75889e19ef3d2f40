//! A forwarded call's answer, held from the agent until the call's `mcp_call` record is
//! durable. The sync starts when the record is written, before the call leaves; meanwhile
//! the gateway reads the server's answer, checks and records it, and has it ready. Only
//! handing it to the agent waits for the sync. So the `fdatasync` overlaps the server's
//! round trip and the gateway's own work on the answer, instead of coming before them.
//!
//! If the sync fails, the agent gets the gateway's refusal, never the answer. The ledger
//! then says so after the answer's records: each request is `no_response`, withheld.

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
use super::withholding::Withholding;
use crate::audit::{AuditError, Written};
use crate::http::body::{boxed, BoxError, GwBody, Replay};
use crate::http::budget::Reservation;

/// How much of a streamed answer is read ahead while the sync runs: reading stops once
/// this much is ready. What waits for the sync outside the body budget is this, the frame
/// that crossed it, and the rest of the server's chunk it came in (whose events are
/// observed together). A POST's event stream usually holds its response in a few hundred
/// bytes; past this, reading waits for the sync, as the agent would.
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
    withholding: Withholding,
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
            withholding: Withholding::default(),
        });
        UntilDurable { written, withheld }
    }

    /// What an event stream answering the call watches, when the answer may be withheld.
    pub fn withholding(&self) -> Option<Withholding> {
        self.withheld.as_ref().map(|w| w.withholding.clone())
    }

    /// `response` once every record is durable, its body read ahead meanwhile; or why not.
    /// `held` (the memory of an answer read whole) stays charged to the body budget until
    /// then.
    pub async fn release(
        self,
        response: Response<GwBody>,
        held: Option<Reservation>,
    ) -> Result<Response<GwBody>, NotDurable> {
        let Some(withheld) = self.withheld else {
            return Ok(response);
        };
        let durable = super::exchange::all_durable(self.written);
        let (parts, body) = response.into_parts();
        let abandoned = Abandoned(Some(&withheld));
        let read = read_ahead(body, durable, &withheld.withholding).await;
        abandoned.disarm();
        drop(held);
        let Withheld {
            recorder,
            asked,
            withholding,
        } = withheld;
        match read {
            Ok(body) => {
                withholding.release(&recorder);
                Ok(Response::from_parts(parts, body))
            }
            Err(error) => {
                let why = format!(
                    "the answer was withheld and the agent got the gateway's refusal: the \
                     audit ledger could not make the call's record durable ({error})"
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

/// Until disarmed, a release that is dropped (the agent left while the sync ran) lets the
/// call's kept requests go unanswered.
struct Abandoned<'a>(Option<&'a Withheld>);

impl Abandoned<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.0 {
            w.withholding.abandon(&w.recorder);
        }
    }
}

/// Waits for `durable`, reading `body` ahead meanwhile (a stream's events are observed as
/// they are read). A body already whole (a JSON answer the gateway read and checked, or one
/// of known length) is only waited for. If `durable` fails, the answer is withheld before the
/// body is dropped.
async fn read_ahead(
    mut body: GwBody,
    durable: impl Future<Output = Result<(), AuditError>>,
    withholding: &Withholding,
) -> Result<GwBody, AuditError> {
    if body.is_end_stream() || body.size_hint().exact().is_some() {
        return match durable.await {
            Ok(()) => Ok(body),
            Err(e) => {
                withholding.withhold();
                drop(body);
                Err(e)
            }
        };
    }
    let mut durable = std::pin::pin!(durable);
    let mut ahead = Vec::new();
    let (mut bytes, mut ended) = (0, None);
    loop {
        tokio::select! {
            biased;
            done = &mut durable => {
                if let Err(e) = done {
                    withholding.withhold();
                    drop(body);
                    return Err(e);
                }
                break;
            }
            frame = body.frame(), if ended.is_none() && bytes < READ_AHEAD_MAX => match frame {
                Some(Ok(frame)) => {
                    bytes += frame.data_ref().map_or(0, Bytes::len);
                    ahead.push(frame);
                }
                Some(Err(e)) => ended = Some(Ended(Some(e))),
                None => ended = Some(Ended(None)),
            },
        }
    }
    Ok(match ended {
        None if ahead.is_empty() => body,
        None => boxed(Replay::new(ahead, body)),
        Some(ended) => boxed(Replay::new(ahead, boxed(ended))),
    })
}

/// How a body read ahead to its end ended: the error it ended with, if any, goes out after
/// the frames read. Its size is never exact, so the answer is framed as the stream it was
/// (chunked), not by a length.
struct Ended(Option<BoxError>);

impl Body for Ended {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.take().map(Err))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::new()
    }
}
