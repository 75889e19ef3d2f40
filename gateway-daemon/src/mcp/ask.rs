//! A request the policy answers with `ask`: held for an administrator (see `approvals`),
//! with every step in the audit, then released or refused.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::jsonrpc::{Id, Message};
use super::observe::Observer;
use super::recognise::Target;
use super::refusal::Refusal;
use super::session::{Session, SessionError};
use super::ConnCtx;
use crate::approvals::{Call, Outcome, Verdict};
use crate::audit::chain::sha256_hex;
use crate::audit::timestamp;
use crate::http::body::{BoxError, ChannelBody, GwBody};
use crate::http::Upstream;
use crate::policy::{Decision, Policy};

/// Arguments longer than this are summarised for the administrator, not shown whole.
const SHOWN_ARGUMENTS: usize = 4096;

fn shown_arguments(policy: &Policy, m: &Message<'_>) -> Value {
    let mut args = m
        .params
        .and_then(|p| serde_json::from_str::<Value>(p.get()).ok())
        .and_then(|mut v| v.get_mut("arguments").map(Value::take))
        .unwrap_or(Value::Null);
    policy.redactor.redact_json(&mut args);
    let text = args.to_string();
    if text.len() > SHOWN_ARGUMENTS {
        json!(format!(
            "<{} bytes of arguments; SHA-256 identifies them>",
            text.len()
        ))
    } else {
        args
    }
}

fn call_of(ctx: &ConnCtx, obs: &Observer, policy: &Policy, m: &Message<'_>, d: &Decision) -> Call {
    let id = &ctx.identity;
    Call {
        connection: obs.via.connection.clone(),
        principal: obs
            .principal
            .name
            .clone()
            .unwrap_or_else(|| "unknown".into()),
        uid: id.uid,
        tgid: id.tgid,
        start_time: id.start_time,
        exe: id.exe.as_ref().map(|e| e.display().to_string()),
        server: obs.server.to_string(),
        method: m.method.as_deref().unwrap_or_default().to_string(),
        tool: m.target_name().map(|n| n.into_owned()).unwrap_or_default(),
        arguments_sha256: sha256_hex(m.params.map(|p| p.get()).unwrap_or("").as_bytes()),
        arguments: shown_arguments(policy, m),
        session: obs.session.as_ref().map(|s| s.id.to_string()),
        policy_generation: policy.generation,
        rule: d.rule.to_string(),
    }
}

/// An approval step in the ledger.
pub(crate) async fn record(
    audit: &crate::audit::AuditSink,
    event: &str,
    id: Option<u64>,
    call: &Call,
    extra: Value,
) {
    let mut r = json!({
        "type": "approval",
        "time": timestamp(SystemTime::now()),
        "event": event,
        "call": call,
    });
    if let Some(id) = id {
        r["id"] = json!(id);
    }
    if let (Some(o), Value::Object(e)) = (r.as_object_mut(), extra) {
        o.extend(e);
    }
    audit.record(&r).await;
}

type Events = mpsc::Sender<Result<Frame<Bytes>, BoxError>>;

/// Lets an exchange answer its agent before it is finished: a held call whose request
/// carries a progress token turns its response into an SSE stream at once, so progress
/// notifications can tell the agent it is waiting for a person.
pub struct Early {
    accepts_sse: bool,
    respond: Mutex<Option<oneshot::Sender<Response<GwBody>>>>,
    events: Mutex<Option<Events>>,
}

impl Early {
    /// Answers the agent now with an SSE stream; returns where its events go.
    fn start_sse(&self) -> Option<Events> {
        if !self.accepts_sse {
            return None;
        }
        let respond = self.respond.lock().ok()?.take()?;
        let (tx, body) = ChannelBody::new(16);
        let resp = Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(crate::http::body::boxed(body))
            .expect("static response parts are valid");
        respond.send(resp).ok()?;
        *self.events.lock().ok()? = Some(tx.clone());
        Some(tx)
    }
}

fn event(message: &Value) -> Result<Frame<Bytes>, BoxError> {
    Ok(Frame::data(Bytes::from(format!(
        "event: message\ndata: {message}\n\n"
    ))))
}

/// A POST under a policy that may hold calls: it runs in its own task, so that once it
/// has answered the agent early (an SSE stream of progress) it can go on to the end. Until
/// then, the agent hanging up cancels it, as for any other request.
pub async fn post_that_may_wait(
    req: Request<GwBody>,
    ctx: Arc<ConnCtx>,
    upstream: Upstream,
    target: Target,
    legacy: Result<Option<Arc<Session>>, SessionError>,
) -> Response<GwBody> {
    let accepts_sse = super::media::accepts_sse(req.headers());
    let (respond, early_rx) = oneshot::channel();
    let early = Arc::new(Early {
        accepts_sse,
        respond: Mutex::new(Some(respond)),
        events: Mutex::new(None),
    });
    let task_early = early.clone();
    let task = tokio::spawn(async move {
        let resp =
            super::exchange::post(req, &ctx, &upstream, &target, legacy, Some(&task_early)).await;
        let events = task_early.events.lock().ok().and_then(|mut e| e.take());
        match events {
            // Already answered early: the final answer continues that stream.
            Some(tx) => {
                finish_stream(resp, tx).await;
                None
            }
            None => Some(resp),
        }
    });
    drop(early);
    // Aborts the task if this request is dropped before it answered (the agent left).
    let mut guard = AbortOnDrop(Some(task));
    let task = guard.0.as_mut().expect("just set");
    tokio::select! {
        early = early_rx => match early {
            Ok(resp) => {
                // Answered early: the task carries on alone, to the end of the exchange.
                guard.0.take();
                resp
            }
            // The task ended (and dropped the sender) without answering early.
            Err(_) => finished(&mut guard).await,
        },
        done = task => {
            guard.0.take();
            match done {
                Ok(Some(resp)) => resp,
                _ => internal_error(),
            }
        }
    }
}

async fn finished(guard: &mut AbortOnDrop) -> Response<GwBody> {
    match guard.0.take().expect("the task is there until taken").await {
        Ok(Some(resp)) => resp,
        _ => internal_error(),
    }
}

fn internal_error() -> Response<GwBody> {
    super::reply::http_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the gateway failed while handling this request; see its log",
    )
}

struct AbortOnDrop(Option<tokio::task::JoinHandle<Option<Response<GwBody>>>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
        }
    }
}

/// Continues an early SSE answer with the exchange's final response: its SSE events as
/// they come, or its JSON body as one event.
async fn finish_stream(resp: Response<GwBody>, tx: Events) {
    let is_sse = super::media::of(resp.headers()) == super::media::Media::Sse;
    let mut body = resp.into_body();
    if is_sse {
        while let Some(frame) = body.frame().await {
            if tx.send(frame).await.is_err() {
                return;
            }
        }
        return;
    }
    match body.collect().await {
        Ok(c) => {
            let bytes = c.to_bytes();
            let msg: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                json!({"jsonrpc": "2.0", "id": null, "error": {"code": super::reply::UPSTREAM_FAILED,
                    "message": String::from_utf8_lossy(&bytes)}})
            });
            let _ = tx.send(event(&msg)).await;
        }
        Err(e) => tracing::warn!(error = %e, "reading the final answer of a held call failed"),
    }
}

/// Holds `m` until an administrator decides. `Ok` releases it; `Err` is the JSON-RPC code
/// and message the agent gets.
pub async fn ask(
    ctx: &ConnCtx,
    obs: &Observer,
    policy: &Policy,
    m: &Message<'_>,
    d: &Decision,
    early: Option<&Early>,
) -> Result<Verdict, super::refusal::Refusal> {
    let call = call_of(ctx, obs, policy, m, d);
    let (id, rx) = match ctx.daemon.approvals.hold(call.clone()) {
        Ok(held) => held,
        Err(Outcome::Granted(v)) => {
            record(&obs.audit, "granted", None, &call, json!({ "grant": v })).await;
            return Ok(v);
        }
        Err(Outcome::Full(n)) => {
            record(&obs.audit, "refused_full", None, &call, json!({})).await;
            return Err(Refusal::approvals_full(format!(
                "{n} calls already wait for approval; try again later"
            )));
        }
        Err(other) => unreachable!("hold returns only Granted or Full: {other:?}"),
    };
    tracing::warn!(id, tool = %call.tool, server = %call.server, principal = %call.principal,
        "call held for approval (mcp-gateway approvals list)");
    record(&obs.audit, "held", Some(id), &call, json!({})).await;
    let outcome = match (m.progress_token(), early) {
        (Some(token), Some(early)) => match early.start_sse() {
            Some(events) => wait_with_progress(ctx, id, rx, &token, events).await,
            None => ctx.daemon.approvals.wait(id, rx).await,
        },
        _ => ctx.daemon.approvals.wait(id, rx).await,
    };
    match outcome {
        Outcome::Decided(v) if v.approved => Ok(v),
        Outcome::Decided(v) => Err(Refusal::approval_denied(format!(
            "denied by an administrator (uid {}){}",
            v.by_uid,
            v.reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ))),
        Outcome::TimedOut(t) => {
            record(&obs.audit, "timed_out", Some(id), &call, json!({})).await;
            Err(Refusal::approval_timeout(format!(
                "this call needs an administrator's approval (rule {}), and none came within {} s",
                d.rule,
                t.as_secs()
            )))
        }
        Outcome::Full(_) | Outcome::Granted(_) => unreachable!("wait returns Decided or TimedOut"),
    }
}

/// Waits for the verdict while telling the agent, every `approvals.progress_interval_s`,
/// that its call waits for a person. An agent that goes away withdraws the call.
async fn wait_with_progress(
    ctx: &ConnCtx,
    id: u64,
    rx: oneshot::Receiver<Verdict>,
    token: &Id,
    events: Events,
) -> Outcome {
    let wait = ctx.daemon.approvals.wait(id, rx);
    tokio::pin!(wait);
    let mut every = tokio::time::interval(ctx.daemon.approvals.progress_interval());
    let mut progress = 0u64;
    loop {
        tokio::select! {
            outcome = &mut wait => return outcome,
            _ = every.tick() => {
                progress += 1;
                let note = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                    "params": {"progressToken": token, "progress": progress,
                        "message": format!("waiting for an administrator's approval (mcp-gateway approvals approve {id})")}});
                if events.send(event(&note)).await.is_err() {
                    // Dropping `wait` takes the call off the list.
                    return Outcome::TimedOut(std::time::Duration::ZERO);
                }
            }
        }
    }
}
