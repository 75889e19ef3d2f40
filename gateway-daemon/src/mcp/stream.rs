//! An SSE response read event by event as it passes: each complete event is observed and
//! forwarded at once, never held until the stream ends. If the server's stream breaks, the
//! agent still gets a JSON-RPC error for every request that was waiting on it.
//!
//! The observing happens inside the body the agent's connection polls (`Observed`), on
//! that connection's task: no task and no channel per stream, and the server's stream is
//! read only as fast as the agent takes it. An agent that hangs up drops the body, which
//! ends the observation (`Drop`) and the server's stream with it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use super::jsonrpc::Id;
use super::jsonrpc::{self, Parsed};
use super::observe::Observer;
use super::pairing::Pending;
use super::record::{Direction, ExchangeRecord, PendingRequest};
use super::reply::{error_event, UPSTREAM_FAILED};
use super::session::{endpoint_path, ServerKey, Sessions, Transport};
use super::sniff::{self, Sniffed};
use super::sse::{encode, SseEvent, SseItem, SseParser};
use super::withholding::{keep_for_resume, Withholding};
use crate::http::body::{boxed, BoxError, GwBody};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// The response to a POST: its requests' responses come here.
    Post,
    /// A GET stream (or any event stream in answer to plain HTTP). `confirmed` when the
    /// request itself was recognisably MCP; otherwise events that could not be messages pass
    /// as they are until one could, from which on the stream is MCP.
    Get { confirmed: bool },
}

pub struct StreamJob {
    pub observer: Observer,
    pub local: Pending<PendingRequest>,
    pub kind: StreamKind,
    pub sessions: Arc<Sessions>,
    /// The server the stream comes from, as sessions are keyed.
    pub server: ServerKey,
    pub max_event_bytes: usize,
    pub max_depth: usize,
    /// Rate-limit slots of the calls this stream answers, released when it ends.
    pub inflight: Vec<crate::policy::limits::InFlight>,
    /// The memory the parser holds for an event not yet complete.
    pub held: crate::http::budget::Reservation,
    /// Set when the answer this stream carries was withheld from the agent
    /// (`until_durable`); None for a stream no call's record waits on.
    pub withholding: Option<Withholding>,
}

/// Starts observing `body`; returns the body to give the agent.
pub fn observe<B>(body: B, job: StreamJob) -> GwBody
where
    B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: std::fmt::Display + Send,
{
    let parser = SseParser::new(job.max_event_bytes);
    let confirmed = !matches!(job.kind, StreamKind::Get { confirmed: false });
    boxed(Observed {
        body,
        job: Some(job),
        parser,
        gate: None,
        confirmed,
        out: Out {
            answers: None,
            ends_in_cr: false,
            frames: VecDeque::new(),
        },
        span: tracing::Span::current(),
    })
}

/// The server's stream as the agent reads it, observed on the way.
struct Observed<B> {
    body: B,
    /// Taken when the stream has ended and its end was recorded.
    job: Option<StreamJob>,
    parser: SseParser,
    /// A server request held for a person, and what came after it: nothing of the stream
    /// reaches the agent until it is decided.
    gate: Option<Gate>,
    /// Whether the stream is known to carry MCP (see `deliver`).
    confirmed: bool,
    out: Out,
    /// The exchange's span: records and logs of the stream belong to it, whichever task
    /// polls the body.
    span: tracing::Span,
}

/// A held server request's event, and the items behind it.
struct Gate {
    held: super::server_ask::Held,
    event: SseItem,
    rest: Vec<SseItem>,
}

/// What the stream to the agent carries besides the server's events.
struct Out {
    /// The session's answers, once the stream is a legacy session's. The gateway's own
    /// answers (its refusals) go between the server's events, never inside one.
    answers: Option<mpsc::Receiver<Bytes>>,
    /// Whether the last byte queued was a CR (an event ended by a lone CR).
    ends_in_cr: bool,
    /// Frames ready for the agent, in order.
    frames: VecDeque<Frame<Bytes>>,
}

impl Out {
    fn push(&mut self, bytes: Bytes) {
        if let Some(&last) = bytes.last() {
            self.ends_in_cr = last == b'\r';
        }
        self.frames.push_back(Frame::data(bytes));
    }

    /// The next answer queued for the agent, if one is ready.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Option<Bytes> {
        match self.answers.as_mut()?.poll_recv(cx) {
            Poll::Ready(Some(answer)) => Some(answer),
            // The session is gone: no answer comes any more.
            Poll::Ready(None) => {
                self.answers = None;
                None
            }
            Poll::Pending => None,
        }
    }
}

impl<B> Body for Observed<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Observed {
            body,
            job,
            parser,
            gate,
            confirmed,
            out,
            span,
        } = self.get_mut();
        let _entered = span.enter();
        loop {
            if let Some(frame) = out.frames.pop_front() {
                return Poll::Ready(Some(Ok(frame)));
            }
            let Some(open) = job.as_mut() else {
                return Poll::Ready(None);
            };
            if let Some(g) = gate.as_mut() {
                let decided = match g.held.poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(d) => d,
                };
                let Gate { held, event, rest } = gate.take().expect("a gate was set");
                match decided {
                    Ok(()) => {
                        open.observer.approved = Some(held.id.clone());
                        *gate = deliver(open, vec![event], confirmed, out);
                        open.observer.approved = None;
                    }
                    Err(refusal) => {
                        let r = open.observer.refuse_server_request_with(
                            Some(&held.id),
                            &held.method,
                            held.decision,
                            &refusal,
                        );
                        open.observer.write_now(vec![r]);
                    }
                }
                if gate.is_none() {
                    *gate = deliver(open, rest, confirmed, out);
                }
                continue;
            }
            if let Some(answer) = out.poll_answer(cx) {
                // After an event ended by a lone CR, a client splitting lines on LF would
                // read the answer's first line as part of that one: end it first (a blank
                // line is nothing to every client).
                if out.ends_in_cr {
                    out.push(Bytes::from_static(b"\n"));
                }
                out.push(answer);
                continue;
            }
            let frame = match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    let tail: Vec<SseItem> = parser.finish().into_iter().collect();
                    *gate = deliver(open, tail, confirmed, out);
                    if gate.is_none() {
                        end(job, out, End::Finished);
                    }
                    continue;
                }
                Poll::Ready(Some(Err(e))) => {
                    end(
                        job,
                        out,
                        End::Failed(format!("the server's stream broke: {e}")),
                    );
                    continue;
                }
                Poll::Ready(Some(Ok(f))) => f,
            };
            let data = match frame.into_data() {
                Ok(d) => d,
                Err(frame) => {
                    out.frames.push_back(frame);
                    continue;
                }
            };
            // A stream the gateway cannot frame is ended, never passed on raw: past a
            // framing error a client (which may decode more leniently) could still read
            // messages.
            let mut items = match parser.feed(&data) {
                Ok(items) => items,
                Err(e) => {
                    end(
                        job,
                        out,
                        End::Failed(format!("the server sent an invalid SSE stream: {e}")),
                    );
                    continue;
                }
            };
            if let Err(e) = open.held.set(parser.buffered()) {
                end(
                    job,
                    out,
                    End::Failed(format!("the server's event could not be read: {e}")),
                );
                continue;
            }
            // An event ended by a lone CR waits for the next byte inside the parser; release
            // it now so a CR-only server's events are not delayed (a following LF is
            // forwarded with the next item, so the bytes stay the same).
            items.extend(parser.take_held());
            *gate = deliver(open, items, confirmed, out);
        }
    }

    fn is_end_stream(&self) -> bool {
        self.job.is_none() && self.out.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Records how the stream ended (once) and queues what the agent still gets.
fn end(job: &mut Option<StreamJob>, out: &mut Out, how: End) {
    if let Some(job) = job.take() {
        finish(job, out, how);
    }
}

impl<B> Drop for Observed<B> {
    /// The agent hung up (or its connection ended) before the stream did.
    fn drop(&mut self) {
        let _entered = self.span.enter();
        end(&mut self.job, &mut self.out, End::AgentGone);
    }
}

/// Observes parsed items and queues them for the agent, in order; stops at a server
/// request held for a person (the gate it returns holds the rest).
fn deliver(
    job: &mut StreamJob,
    items: Vec<SseItem>,
    confirmed: &mut bool,
    out: &mut Out,
) -> Option<Gate> {
    let mut items = items.into_iter();
    while let Some(item) = items.next() {
        if let SseItem::Event(ev) = &item {
            if *confirmed {
                if let Some(held) = super::server_ask::held(&job.observer, ev.data.as_bytes()) {
                    return Some(Gate {
                        held,
                        event: item,
                        rest: items.collect(),
                    });
                }
            }
        }
        let bytes = match item {
            SseItem::Event(ev) => {
                // Until a stream shows MCP, each event is judged alone: one any client could
                // read as a JSON-RPC message (the endpoint of a legacy session) is checked,
                // and the stream is MCP from then on; the rest passes as the server sent it.
                if !*confirmed {
                    *confirmed = ev.event.as_deref() == Some("endpoint")
                        || sniff::classify(ev.data.as_bytes()) == Sniffed::JsonRpc;
                }
                if !*confirmed {
                    ev.raw
                } else {
                    let mut inspect = Vec::new();
                    let mut records =
                        match on_event(job, ev.event.as_deref(), &ev.data, &mut inspect) {
                            Ok(records) => records,
                            Err(dropped) => {
                                job.observer.write_now(dropped);
                                continue;
                            }
                        };
                    // Server requests the policy refused never reach the agent.
                    let kept = super::observe::without_refused(ev.data.as_bytes(), &records);
                    let data: &[u8] = match &kept {
                        None => ev.data.as_bytes(),
                        Some(None) => {
                            job.observer.write_now(records);
                            continue;
                        }
                        Some(Some(d)) => d,
                    };
                    let changed = job
                        .observer
                        .rewrite(data, &inspect, &mut records)
                        .or_else(|| kept.clone().flatten());
                    job.observer.write_now(records);
                    // A changed message goes out re-encoded; everything else as the server
                    // sent it.
                    match changed {
                        Some(data) => encode(&SseEvent {
                            data: String::from_utf8(data).expect("serde_json writes UTF-8"),
                            ..ev
                        }),
                        None => ev.raw,
                    }
                }
            }
            SseItem::Other { raw, .. } | SseItem::Incomplete(raw) => raw,
        };
        // The stream became a legacy session's (its endpoint event): its answers can come
        // from the moment the agent learns the endpoint, so attach before sending it.
        if out.answers.is_none() && job.observer.transport == Transport::LegacySse {
            if let (StreamKind::Get { .. }, Some(s)) = (job.kind, &job.observer.session) {
                out.answers = Some(s.attach_stream());
            }
        }
        out.push(bytes.into());
    }
    None
}

enum End {
    Finished,
    Failed(String),
    AgentGone,
}

/// The records of one server event; Err (its records) when the event must not reach the
/// agent: what the gateway cannot read as JSON-RPC, or a response to no request it saw,
/// would otherwise reach the agent as if checked (unredacted, unpinned).
fn on_event(
    job: &mut StreamJob,
    event: Option<&str>,
    data: &str,
    inspect: &mut Vec<(Id, String)>,
) -> Result<Vec<ExchangeRecord>, Vec<ExchangeRecord>> {
    if event == Some("endpoint") && matches!(job.kind, StreamKind::Get { .. }) {
        let endpoint = endpoint_path(data);
        let owner = job.observer.principal.session_owner();
        match job.sessions.open_legacy(&job.server, &endpoint, &owner) {
            Ok(s) => {
                tracing::debug!(endpoint, session = %s.id, "legacy SSE session opened");
                // The gateway's own answers go where the agent's do: the endpoint.
                if let Some(super::to_server::Back::Http(h)) = &job.observer.back {
                    job.observer.back =
                        Some(super::to_server::Back::Http(Arc::new(h.at(&endpoint))));
                }
                job.observer.session = Some(s);
                job.observer.transport = Transport::LegacySse;
            }
            Err(e) => tracing::warn!(error = %e, "legacy endpoint not registered"),
        }
        return Ok(vec![]);
    }
    if data.is_empty() {
        return Ok(vec![]);
    }
    let mut records = match jsonrpc::parse(data.as_bytes(), job.max_depth) {
        Ok(Parsed::Single(m)) => job.observer.from_server(&m, Some(&mut job.local), inspect),
        Ok(Parsed::Batch(ms)) => ms
            .iter()
            .flat_map(|m| job.observer.from_server(m, Some(&mut job.local), inspect))
            .collect(),
        Err(e) => {
            // Its values would reach the agent unredacted and unfiltered.
            tracing::warn!(error = %e, "server event dropped");
            let record = job
                .observer
                .malformed(&format!("server event dropped: {e}"));
            return Err(vec![record]);
        }
    };
    if super::observe::mark_unpaired_dropped(&mut records, "server event") {
        tracing::warn!("server event with a response to no known request dropped");
        return Err(records);
    }
    Ok(records)
}

fn finish(mut job: StreamJob, out: &mut Out, end: End) {
    let waiting: Vec<_> = job.local.drain_expired(|_| true);
    if job.withholding.as_ref().is_some_and(Withholding::withheld) {
        // The ledger already says each request of the call was withheld.
        return;
    }
    let records = match &end {
        End::Failed(why) => {
            tracing::warn!(error = %why, "server stream failed");
            for (id, _) in &waiting {
                out.push(error_event(id, UPSTREAM_FAILED, why));
            }
            // Recorded even when nothing waited: what the stream would have carried on is
            // what the agent did not get.
            let mut records = vec![job.observer.malformed(why)];
            records.extend(job.observer.unanswered(
                Direction::ClientToServer,
                waiting,
                "upstream_error",
                why,
            ));
            records
        }
        End::Finished | End::AgentGone => {
            let detail = match end {
                End::AgentGone => "the agent closed the stream",
                _ => "the stream ended without a response",
            };
            match (&job.observer.session, job.observer.transport) {
                // The agent may resume the stream (Last-Event-ID) and get the response
                // there; not before the call's records are durable (`withholding`).
                (Some(s), Transport::StreamableHttp) => {
                    let lost = match &job.withholding {
                        Some(w) => w.keep(s, waiting, detail),
                        None => keep_for_resume(s, waiting),
                    };
                    job.observer
                        .unanswered(Direction::ClientToServer, lost, "no_response", detail)
                }
                _ => job.observer.unanswered(
                    Direction::ClientToServer,
                    waiting,
                    "no_response",
                    detail,
                ),
            }
        }
    };
    job.observer.write_now(records);
    // A legacy session lives as long as its SSE stream.
    if let (StreamKind::Get { .. }, Some(s), Transport::LegacySse) =
        (job.kind, &job.observer.session, job.observer.transport)
    {
        job.sessions
            .remove(&job.server, &s.key, Transport::LegacySse);
        let pending = s.state().client_pending.drain_expired(|_| true);
        let recs = job.observer.unanswered(
            Direction::ClientToServer,
            pending,
            "no_response",
            "the legacy SSE stream ended",
        );
        job.observer.write_now(recs);
    }
}
