//! An SSE response read event by event as it passes: each complete event is observed and
//! forwarded at once, never held until the stream ends. If the server's stream breaks, the
//! agent still gets a JSON-RPC error for every request that was waiting on it.

use std::sync::Arc;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::sync::mpsc::{self, Sender};
use tracing::Instrument;

use super::jsonrpc::Id;
use super::jsonrpc::{self, Parsed};
use super::observe::Observer;
use super::pairing::Pending;
use super::record::{Direction, ExchangeRecord, PendingRequest};
use super::reply::{error_event, UPSTREAM_FAILED};
use super::session::{endpoint_path, ServerKey, Sessions, Transport};
use super::sniff::{self, Sniffed};
use super::sse::{encode, SseEvent, SseItem, SseParser};
use crate::http::body::{boxed, BoxError, ChannelBody, GwBody};

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
}

type Tx = Sender<Result<Frame<Bytes>, BoxError>>;

/// Starts observing `body`; returns the body to give the agent.
pub fn observe<B>(body: B, job: StreamJob) -> GwBody
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display + Send,
{
    let (tx, chan) = ChannelBody::new(16);
    tokio::spawn(run(body, job, tx).in_current_span());
    boxed(chan)
}

/// The next answer queued for the agent; never ready while there is no queue.
async fn next_answer(answers: &mut Option<mpsc::Receiver<Bytes>>) -> Option<Bytes> {
    match answers {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn send(tx: &Tx, bytes: Bytes) -> bool {
    tx.send(Ok(Frame::data(bytes))).await.is_ok()
}

async fn run<B>(mut body: B, mut job: StreamJob, tx: Tx)
where
    B: http_body::Body<Data = Bytes> + Send + Unpin,
    B::Error: std::fmt::Display + Send,
{
    let mut parser = SseParser::new(job.max_event_bytes);
    let mut confirmed = !matches!(job.kind, StreamKind::Get { confirmed: false });
    // The gateway's own answers on a legacy session (its refusals): sent between the
    // server's events, never inside one.
    let mut out = Out {
        answers: None,
        ends_in_cr: false,
    };
    let end = loop {
        // An agent that hangs up ends the stream at once, even if the server is silent:
        // nothing keeps the upstream stream (or this task's audit handle) alive.
        let next = tokio::select! {
            f = body.frame() => f,
            Some(answer) = next_answer(&mut out.answers) => {
                // After an event ended by a lone CR, a client splitting lines on LF would
                // read the answer's first line as part of that one: end it first (a blank
                // line is nothing to every client).
                if out.ends_in_cr && !send(&tx, Bytes::from_static(b"\n")).await {
                    break End::AgentGone;
                }
                out.ends_in_cr = false;
                if !send(&tx, answer).await {
                    break End::AgentGone;
                }
                continue;
            }
            _ = tx.closed() => break End::AgentGone,
        };
        let frame = match next {
            None => break End::Finished,
            Some(Err(e)) => break End::Failed(format!("the server's stream broke: {e}")),
            Some(Ok(f)) => f,
        };
        let data = match frame.into_data() {
            Ok(d) => d,
            Err(frame) => {
                if tx.send(Ok(frame)).await.is_err() {
                    break End::AgentGone;
                }
                continue;
            }
        };
        // A stream the gateway cannot frame is ended, never passed on raw: past a framing
        // error a client (which may decode more leniently) could still read messages.
        let mut items = match parser.feed(&data) {
            Ok(items) => items,
            Err(e) => break End::Failed(format!("the server sent an invalid SSE stream: {e}")),
        };
        if let Err(e) = job.held.set(parser.buffered()) {
            break End::Failed(format!("the server's event could not be read: {e}"));
        }
        // An event ended by a lone CR waits for the next byte inside the parser; release it
        // now so a CR-only server's events are not delayed (a following LF is forwarded
        // with the next item, so the bytes stay the same).
        items.extend(parser.take_held());
        if !deliver(&mut job, items, &tx, &mut confirmed, &mut out).await {
            break End::AgentGone;
        }
    };
    if matches!(end, End::Finished) {
        let tail: Vec<SseItem> = parser.finish().into_iter().collect();
        deliver(&mut job, tail, &tx, &mut confirmed, &mut out).await;
    }
    finish(job, tx, end).await;
}

/// What the stream to the agent carries besides the server's events.
struct Out {
    /// The session's answers, once the stream is a legacy session's.
    answers: Option<mpsc::Receiver<Bytes>>,
    /// Whether the last byte sent was a CR (an event ended by a lone CR).
    ends_in_cr: bool,
}

/// Observes and forwards parsed items in order; false when the agent has gone.
async fn deliver(
    job: &mut StreamJob,
    items: Vec<SseItem>,
    tx: &Tx,
    confirmed: &mut bool,
    out: &mut Out,
) -> bool {
    for item in items {
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
                                job.observer.write(dropped).await;
                                continue;
                            }
                        };
                    let changed = job
                        .observer
                        .rewrite(ev.data.as_bytes(), &inspect, &mut records);
                    job.observer.write(records).await;
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
        if let Some(&last) = bytes.last() {
            out.ends_in_cr = last == b'\r';
        }
        if !send(tx, bytes.into()).await {
            return false;
        }
    }
    true
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

async fn finish(mut job: StreamJob, tx: Tx, end: End) {
    let waiting: Vec<_> = job.local.drain_expired(|_| true);
    let records = match &end {
        End::Failed(why) => {
            tracing::warn!(error = %why, "server stream failed");
            for (id, _) in &waiting {
                let _ = send(&tx, error_event(id, UPSTREAM_FAILED, why)).await;
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
                // The agent may resume the stream (Last-Event-ID) and get the response there.
                (Some(s), Transport::StreamableHttp) => {
                    let mut st = s.state();
                    let mut lost = Vec::new();
                    for (id, req) in waiting {
                        if let Err(e) = st.client_pending.insert(id.clone(), req.clone()) {
                            tracing::debug!(error = %e, "pending request not kept");
                            lost.push((id, req));
                        }
                    }
                    drop(st);
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
    job.observer.write(records).await;
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
        job.observer.write(recs).await;
    }
}
