//! The MCP handlers for one HTTP exchange: a POST of JSON-RPC, a GET that opens a stream,
//! a DELETE that ends a session.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, Request, Response, StatusCode};
use http_body_util::BodyExt;

use super::jsonrpc::{self, Id, Kind, Message, Parsed};
use super::media::{self, Media};
use super::observe::{ListView, Observer};
use super::pairing::Pending;
use super::recognise::{
    batches_allowed, header_str, Target, H_METHOD, H_NAME, H_PROTOCOL_VERSION, H_SESSION_ID,
};
use super::record::{Direction, ExchangeRecord, PendingRequest};
use super::refusal::Refusal;
use super::reply::{
    accepted, error_event, error_response, http_error, rpc_errors, Form, GATEWAY_REFUSED,
    UPSTREAM_FAILED,
};
use super::session::{Session, SessionError, Transport};
use super::stream::{self, StreamJob, StreamKind};
use super::to_server::{Back, HttpBack};
use super::until_durable::{NotDurable, UntilDurable};
use super::withholding::Withholding;
use super::{ConnCtx, MAX_DEPTH};
use crate::http::body::{boxed, collect_limited, discard, empty, full, BodyError, GwBody};
use crate::http::budget::Reservation;
use crate::http::{UpBody, Upstream};
use crate::policy::limits::InFlight;
use crate::policy::{Decision, Policy};

/// How long the rest of a refused request body may take to skip.
const DISCARD_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

fn content_type(h: &HeaderMap) -> &str {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn observer(
    ctx: &ConnCtx,
    target: &Target,
    session: Option<Arc<Session>>,
    version: Option<String>,
) -> Observer {
    let transport = session
        .as_ref()
        .map_or(Transport::StreamableHttp, |s| s.transport);
    // The principal under the policy in force: a reload may have renamed or removed it.
    let policy = ctx.daemon.policy.current();
    Observer {
        principal: ctx.principal_under(&policy),
        view: Some(ListView {
            policy,
            catalog: ctx.daemon.catalog.clone(),
            pins: ctx.daemon.pins.clone(),
            tasks: ctx.daemon.tasks.clone(),
            approvals: ctx.daemon.approvals.clone(),
            issued: ctx.daemon.issued.clone(),
        }),
        via: ctx.via.clone(),
        server: target.label.clone(),
        audit: ctx.daemon.audit.clone(),
        session,
        transport,
        protocol_version: version.map(Arc::from),
        back: None,
        approved: None,
        credentials: None,
    }
}

/// The Streamable HTTP session a request names: refused when someone else owns it, or
/// when the gateway never saw this server open it.
fn session_of(ctx: &ConnCtx, h: &HeaderMap) -> Result<Option<Arc<Session>>, SessionError> {
    match header_str(h, &H_SESSION_ID) {
        None => Ok(None),
        Some(id) => ctx
            .daemon
            .sessions
            .streamable(&ctx.server_key(), id, &ctx.owner)
            .map(Some),
    }
}

/// The ids of a POST's requests, or one null id when it has none.
fn request_ids(messages: &[Message<'_>]) -> Vec<Option<Id>> {
    let mut ids: Vec<Option<Id>> = messages
        .iter()
        .filter(|m| m.kind == Kind::Request)
        .map(|m| m.id.clone())
        .collect();
    if ids.is_empty() {
        ids.push(None);
    }
    ids
}

/// Refuses a whole POST (a batch is all or nothing): counts and records the refusal, and
/// answers it. A transport refusal gets its HTTP status, as a server would answer. A
/// decided one (policy, approval, pins, limits, secrets) reaches each request as its
/// JSON-RPC error the way the server's own answer would have come: in a 200 response
/// (JSON or an event, as the agent accepts) or, on a legacy session, on the agent's event
/// stream. Its status answers a POST with no request to answer (notifications only), and
/// a legacy POST whose stream cannot carry the answer.
fn refuse(
    obs: &Observer,
    messages: &[Message<'_>],
    form: Form,
    refusal: &Refusal,
    decisions: &[Option<Decision>],
) -> Response<GwBody> {
    let why = refusal.why();
    write_refusal(obs, messages, refusal, &why, decisions);
    let (status, code) = (refusal.status, refusal.code);
    if !refusal.decided() {
        return error_response(status, &request_ids(messages), code, &why);
    }
    let ids: Vec<Id> = messages
        .iter()
        .filter(|m| m.kind == Kind::Request)
        .filter_map(|m| m.id.clone())
        .collect();
    if ids.is_empty() {
        return error_response(status, &[None], code, &why);
    }
    if let (Transport::LegacySse, Some(s)) = (obs.transport, &obs.session) {
        let events = ids.iter().map(|id| error_event(id, code, &why)).collect();
        if s.answer(events) {
            return accepted();
        }
        tracing::debug!("the legacy stream cannot carry the refusal: answered on the POST");
        let ids: Vec<Option<Id>> = ids.into_iter().map(Some).collect();
        return error_response(status, &ids, code, &why);
    }
    rpc_errors(form, &ids, code, &why)
}

/// Counts and records a refusal.
pub(crate) fn write_refusal(
    obs: &Observer,
    messages: &[Message<'_>],
    refusal: &Refusal,
    why: &str,
    decisions: &[Option<Decision>],
) {
    tracing::info!(reason = why, kind = ?refusal.kind, "MCP request refused");
    crate::metrics::global().denied(refusal.kind.metric());
    let mut records: Vec<ExchangeRecord> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| obs.refused(m, refusal, why, decisions.get(i).cloned().flatten()))
        .collect();
    if messages.is_empty() {
        let mut r = obs.malformed(why);
        r.direction = Direction::ClientToServer;
        r.outcome = "refused";
        r.refusal = Some(refusal.kind);
        r.error_code = Some(refusal.code as i64);
        records.push(r);
    }
    obs.write_now(records);
}

/// Methods that do something for the agent (as opposed to protocol plumbing); the rate
/// limits count these.
fn is_call(m: &Message<'_>) -> bool {
    matches!(
        m.method.as_deref(),
        Some("tools/call" | "resources/read" | "prompts/get")
    )
}

/// The policy's decision about one message of the agent (None for its responses).
pub(crate) fn decide(
    policy: &Policy,
    obs: &Observer,
    ctx: &ConnCtx,
    m: &Message<'_>,
) -> Option<Decision> {
    let method = m.method.as_deref()?;
    let name = routing_name_ref(m);
    // Parsed only when some rule looks at arguments: this is on every call's path.
    let arguments = policy.uses_arguments().then(|| m.arguments()).flatten();
    let annotations = match (method, &name) {
        ("tools/call", Some(n)) => ctx.daemon.catalog.annotations(&obs.server, n),
        _ => None,
    };
    let mut d = policy.decide(
        obs.principal.name.as_deref(),
        &obs.server,
        method,
        name.as_deref(),
        arguments,
        annotations.as_ref(),
    );
    say_undecided(&mut d, &obs.principal, ctx.identity.procfs_error.as_deref());
    Some(d)
}

/// When the process is no principal's because one could not be told, the decision says so
/// (the reader of the record would look for none that matches), with `why` when known.
pub(crate) fn say_undecided(d: &mut Decision, p: &super::Principal, why: Option<&str>) {
    if let Some(undecided) = &p.undecided {
        d.reason = Some(format!(
            "[[principal]] {undecided:?} cannot be told for this process: {}",
            why.unwrap_or(
                "a fact it selects by is not known (its program's path does not name that \
                 file where the gateway looks, or its hash was not taken: see the flow \
                 record and the log)"
            )
        ));
    }
}

/// A routing header's value: `None` when absent, `Err` when unreadable. Values outside
/// visible ASCII travel Base64-wrapped as `=?base64?...?=` (SEP-2243).
fn routing_header(h: &HeaderMap, name: &HeaderName) -> Option<Result<String, String>> {
    let raw = h.get(name)?;
    let Ok(text) = raw.to_str() else {
        return Some(Err(format!("the {name} header is not visible ASCII")));
    };
    Some(
        super::headers::decode(text)
            .ok_or_else(|| format!("the {name} header has invalid Base64 content")),
    )
}

/// What `Mcp-Name` must say for a message: the tool/prompt name, resource uri or task id.
/// Also the name policy and pins decide a call by.
pub(super) fn routing_name(m: &Message<'_>) -> Option<String> {
    routing_name_ref(m).map(std::borrow::Cow::into_owned)
}

/// As `routing_name`, borrowed from the message when it can be (a decision only reads it).
fn routing_name_ref<'a>(m: &Message<'a>) -> Option<std::borrow::Cow<'a, str>> {
    if let Some(n) = m.target_name() {
        return Some(n);
    }
    if !m
        .method
        .as_deref()
        .is_some_and(super::tasks::is_task_method)
    {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct P {
        #[serde(rename = "taskId")]
        task_id: Option<String>,
    }
    serde_json::from_str::<P>(m.params?.get())
        .ok()?
        .task_id
        .map(std::borrow::Cow::Owned)
}

/// Checks the 2026-07-28 routing headers against the body they travel with, so no later
/// stage (nor the server) can be steered by a header that lies.
fn header_mismatch(h: &HeaderMap, messages: &[Message<'_>]) -> Option<String> {
    let calls = || messages.iter().filter(|m| m.method.is_some());
    if let Some(hm) = routing_header(h, &H_METHOD) {
        let hm = match hm {
            Ok(v) => v,
            Err(e) => return Some(e),
        };
        for m in calls() {
            let method = m.method.as_deref().unwrap_or("");
            if method != hm {
                return Some(format!(
                    "the Mcp-Method header says {hm:?} but the body's method is {method:?}"
                ));
            }
        }
    }
    if let Some(hn) = routing_header(h, &H_NAME) {
        let hn = match hn {
            Ok(v) => v,
            Err(e) => return Some(e),
        };
        for m in calls() {
            let name = routing_name(m);
            if name.as_deref() != Some(hn.as_str()) {
                return Some(format!(
                    "the Mcp-Name header says {hn:?} but the body names {}",
                    name.map_or("nothing".to_string(), |n| format!("{n:?}"))
                ));
            }
        }
    }
    None
}

/// A POST of JSON-RPC: read, checked step by step (each step refuses with a typed
/// `Refusal`), recorded, forwarded, and its answer observed.
pub async fn post(
    req: Request<GwBody>,
    ctx: &ConnCtx,
    upstream: &Upstream,
    target: &Target,
    legacy: Result<Option<Arc<Session>>, SessionError>,
    early: Option<&super::ask::Early>,
) -> Response<GwBody> {
    let (mut parts, mut body) = req.into_parts();
    let version = header_str(&parts.headers, &H_PROTOCOL_VERSION).map(str::to_string);
    let form = Form::of(&parts.headers);
    let session = match legacy {
        Ok(Some(s)) => s.check_owner(&ctx.owner).map(|()| Some(s)),
        Ok(None) => session_of(ctx, &parts.headers),
        Err(e) => Err(e),
    };
    let mut obs = observer(ctx, target, session.clone().unwrap_or(None), version);
    obs.credentials = parts
        .extensions
        .get::<super::inject::Injected>()
        .filter(|i| !i.names.is_empty())
        .map(|i| i.names.clone());
    let limits = &ctx.daemon.config.http;

    let mut held = ctx.daemon.budget.reserve(ctx.principal.uid);
    let bytes = match collect_limited(&mut body, limits.max_request_bytes, &mut held).await {
        Ok(b) => b,
        Err(e) => return refuse_unread(&obs, form, e, &mut body, limits.max_request_bytes).await,
    };
    let (messages, batch) = match parse_post(&bytes, limits.max_pending) {
        Ok(m) => m,
        Err(r) => return refuse(&obs, &[], form, &r, &[]),
    };
    name_span(&obs, &messages);
    if obs.protocol_version.is_none() {
        obs.protocol_version = messages
            .iter()
            .find_map(|m| m.meta_protocol_version().map(|v| Arc::from(&*v)))
            .or_else(|| {
                obs.session
                    .as_ref()
                    .and_then(|s| s.state().protocol_version.clone())
            });
    }
    let checked = session
        .map_err(|e| Refusal::session(&e))
        .and_then(|_| readable(&obs, &parts.headers, &messages, batch));
    if let Err(r) = checked {
        return refuse(&obs, &messages, form, &r, &[]);
    }
    // Policy: every message that names a method is decided before anything is registered
    // or sent; one refusal refuses the whole POST (a batch is all or nothing).
    let policy = ctx.daemon.policy.current();
    let mut decisions: Vec<Option<Decision>> = messages
        .iter()
        .map(|m| decide(&policy, &obs, ctx, m))
        .collect();
    let admitted = match admit(ctx, &obs, &policy, &messages, &mut decisions, &bytes, early).await {
        Ok(a) => a,
        Err(r) => return refuse(&obs, &messages, form, &r, &decisions),
    };
    let Admitted { guard, inflight } = admitted;
    if let Some(redacted) = &guard.body {
        if let Err(r) = mirror_redaction(&obs, &policy, &mut parts.headers, redacted) {
            return refuse(&obs, &messages, form, &r, &decisions);
        }
    }

    let mut local = Pending::new(limits.max_pending);
    let mut records = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        match obs.from_client(m, &mut local) {
            Ok(r) => records.extend(r),
            Err(e) => {
                // Undo what this POST registered (its requests before this one, on a legacy
                // session: elsewhere they went to `local`) before refusing it whole; a
                // request of an earlier POST under the same id keeps waiting for its answer.
                if let (Some(s), Transport::LegacySse) = (&obs.session, obs.transport) {
                    let mut st = s.state();
                    for m in &messages[..i] {
                        if let (Kind::Request, Some(id)) = (m.kind, &m.id) {
                            st.client_pending.take(id);
                        }
                    }
                }
                return refuse(
                    &obs,
                    &messages,
                    form,
                    &Refusal::too_many_pending(e.to_string()),
                    &[],
                );
            }
        }
    }
    if let (Some(s), Some(v)) = (&obs.session, &obs.protocol_version) {
        s.state().protocol_version.get_or_insert_with(|| v.clone());
    }
    guard.mark(&mut records);
    obs.write(records).await;
    // Write-ahead: no request reaches the server before its record is written, and no
    // agent sees a result before that record is durable (the sync runs meanwhile).
    let mut written = match write_ahead(&obs, &messages, &decisions, &guard) {
        Ok(w) => w,
        Err(e) => return unrecorded(local.ids(), &e, "so it is not forwarded"),
    };
    // A legacy session's answers come on its GET stream, which this POST does not hold:
    // durable before the call leaves.
    if obs.transport == Transport::LegacySse {
        if let Err(e) = all_durable(std::mem::take(&mut written)).await {
            return unrecorded(local.ids(), &e, "so it is not forwarded");
        }
    }

    // Argument redactions count with the response ones (`status`, metrics), once the
    // call is on its way.
    let redacted: u64 = guard.counts.iter().map(|(_, c)| c.total()).sum();
    if redacted > 0 {
        crate::metrics::global().redactions(redacted);
    }
    // A server request on the answer's stream that the policy refuses is answered by the
    // gateway, as this request would have been sent.
    obs.back = Some(Back::Http(Arc::new(HttpBack::of(
        ctx,
        &parts.uri,
        &parts.headers,
        None,
    ))));
    let body = match guard.body {
        Some(redacted) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            Bytes::from(redacted)
        }
        None => bytes.clone(),
    };
    drop(messages);
    // The answer is read, checked and recorded while the call's record is made durable;
    // the agent gets nothing of it before (`until_durable`).
    let until = UntilDurable::new(written, &obs, &local);
    let version = parts.version;
    let resp = match upstream.send(Request::from_parts(parts, full(body))).await {
        Ok(r) => r,
        Err(e) => {
            let why = format!("the upstream server failed: {e}");
            let waiting = local.drain_expired(|_| true);
            let ids: Vec<Option<Id>> = waiting.iter().map(|(id, _)| Some(id.clone())).collect();
            obs.write(obs.unanswered(Direction::ClientToServer, waiting, "upstream_error", &why))
                .await;
            if ids.is_empty() {
                return http_error(StatusCode::BAD_GATEWAY, &why);
            }
            return error_response(StatusCode::BAD_GATEWAY, &ids, UPSTREAM_FAILED, &why);
        }
    };
    let withholding = until.withholding();
    let (response, held) = answer(resp, ctx, obs, local, inflight, withholding).await;
    match until.release(response, held).await {
        Ok(r) => r,
        Err(NotDurable { error, ids }) => {
            let mut refused = unrecorded(
                ids,
                &error,
                "so its result is not passed on (the server ran it)",
            );
            // The server's connection may have been left in the middle of an answer: the
            // agent's goes too, so its next request finds a fresh one (HTTP/1; HTTP/2 has
            // no such header).
            if version < http::Version::HTTP_2 {
                refused
                    .headers_mut()
                    .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
            }
            refused
        }
    }
}

/// The server's answer to a forwarded POST, observed on its way to the agent: JSON read
/// and checked whole (with the memory it holds), an event stream event by event as it is
/// read.
async fn answer(
    resp: Response<UpBody>,
    ctx: &ConnCtx,
    mut obs: Observer,
    mut local: Pending<PendingRequest>,
    inflight: Vec<InFlight>,
    withholding: Option<Withholding>,
) -> (Response<GwBody>, Option<Reservation>) {
    let limits = &ctx.daemon.config.http;
    if obs.session.is_none() {
        if let Some(id) = header_str(resp.headers(), &H_SESSION_ID) {
            match ctx
                .daemon
                .sessions
                .open_streamable(&ctx.server_key(), id, &ctx.owner)
            {
                Ok(s) => {
                    tracing::debug!(session = id, "session opened");
                    if let Some(v) = &obs.protocol_version {
                        s.state().protocol_version = Some(v.clone());
                    }
                    obs.session = Some(s);
                }
                Err(e) => tracing::warn!(error = %e, "session not tracked"),
            }
        }
    }
    let (mut parts, body) = resp.into_parts();
    let media = media::of(&parts.headers);
    if media == Media::Sse {
        // Events may be redacted or dropped on the way: a length the server framed the
        // stream with would no longer hold (the agent would wait for bytes never sent).
        parts.headers.remove(header::CONTENT_LENGTH);
        let body = stream::observe(
            body,
            StreamJob {
                observer: obs,
                local,
                kind: StreamKind::Post,
                sessions: ctx.daemon.sessions.clone(),
                server: ctx.server_key(),
                max_event_bytes: limits.max_event_bytes,
                max_depth: MAX_DEPTH,
                inflight,
                held: ctx.daemon.budget.reserve(ctx.principal.uid),
                withholding,
            },
        );
        return (Response::from_parts(parts, body), None);
    }
    if media == Media::Json {
        let mut held = ctx.daemon.budget.reserve(ctx.principal.uid);
        let limit = limits.max_response_bytes;
        let response = json_response(parts, body, obs, local, limit, &mut held).await;
        return (response, Some(held));
    }
    // A body some client would read as MCP that the gateway cannot tell how to read, or a
    // success carrying a body no client should read while requests wait for answers: not
    // passed on unread (a server could hand a tool list or a secret past pins and redaction
    // under a content type a client reads and the gateway did not).
    let waiting_requests = !local.is_empty();
    let unread_success = parts.status.is_success()
        && parts.status != StatusCode::ACCEPTED
        && !http_body::Body::is_end_stream(&body)
        && waiting_requests;
    if media == Media::Ambiguous || unread_success {
        let why = format!(
            "the server answered HTTP {} with Content-Type {:?}, which the gateway cannot read \
             as one JSON body or one event stream",
            parts.status.as_u16(),
            content_type(&parts.headers)
        );
        let waiting = local.drain_expired(|_| true);
        let ids: Vec<Option<Id>> = waiting.iter().map(|(id, _)| Some(id.clone())).collect();
        obs.write(obs.unanswered(Direction::ClientToServer, waiting, "upstream_error", &why))
            .await;
        let refused = error_response(
            StatusCode::BAD_GATEWAY,
            &ids_or_null(ids),
            UPSTREAM_FAILED,
            &why,
        );
        return (refused, None);
    }
    // 202 for notifications and responses, legacy acknowledgements, or a non-MCP answer
    // (401, 404 pages): whatever requests this POST carried get no response here.
    let waiting = local.drain_expired(|_| true);
    if !waiting.is_empty() {
        let why = format!("HTTP {} without a JSON-RPC response", parts.status.as_u16());
        obs.write(obs.unanswered(Direction::ClientToServer, waiting, "no_response", &why))
            .await;
    }
    (Response::from_parts(parts, boxed(body)), None)
}

/// Refuses a POST whose body was not read whole: too large (the rest skipped when that is
/// cheap, so the connection stays usable), over the memory budget, or broken off.
async fn refuse_unread(
    obs: &Observer,
    form: Form,
    e: BodyError,
    body: &mut GwBody,
    max: usize,
) -> Response<GwBody> {
    let (refusal, close) = match e {
        BodyError::OverBudget(e) => (Refusal::over_budget(e.to_string()), true),
        e @ BodyError::TooLarge { .. } => {
            let why = format!("request {e} (http.max_request_bytes)");
            let skip_max = (4 * max as u64).max(16 << 20);
            let skipped = discard(body, skip_max, DISCARD_WITHIN).await;
            (Refusal::too_large(why), !skipped)
        }
        e => (Refusal::invalid(e.to_string()), false),
    };
    let mut resp = refuse(obs, &[], form, &refusal, &[]);
    if close {
        resp.headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    resp
}

/// The POST's messages, and whether they came as a batch.
fn parse_post(bytes: &[u8], max_pending: usize) -> Result<(Vec<Message<'_>>, bool), Refusal> {
    let parsed = jsonrpc::parse_agent(bytes, MAX_DEPTH).map_err(|e| match e {
        jsonrpc::JsonRpcError::NotJson(_)
        | jsonrpc::JsonRpcError::TooDeep(_)
        | jsonrpc::JsonRpcError::Unreadable(_) => Refusal::not_json(e.to_string()),
        _ => Refusal::invalid(e.to_string()),
    })?;
    let (messages, batch) = match parsed {
        Parsed::Single(m) => (vec![m], false),
        Parsed::Batch(ms) => (ms, true),
    };
    // Each message costs a record (and a refusal an error): a batch of many thousand tiny
    // messages is refused before anything is made of them.
    if messages.len() > max_pending {
        return Err(Refusal::invalid(format!(
            "a batch of {} messages is more than http.max_pending ({max_pending})",
            messages.len(),
        )));
    }
    Ok((messages, batch))
}

/// Names the exchange's span (at debug level) after what it carries.
fn name_span(obs: &Observer, messages: &[Message<'_>]) {
    // The request's span (`http::serve`) is at debug level. When it is off, the current
    // span is the connection's, which has none of these fields: finding it would cost
    // every call.
    if !tracing::enabled!(target: "gateway_daemon::http", tracing::Level::DEBUG) {
        return;
    }
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    span.record("server", &*obs.server);
    if let Some(s) = &obs.session {
        span.record("session", &*s.id);
    }
    if let Some(m) = messages.first() {
        if let Some(method) = m.method.as_deref() {
            span.record("rpc", method);
        }
        if let Some(id) = &m.id {
            span.record("id", tracing::field::display(id));
        }
    }
}

/// What every later stage reads the POST by: a batch only where the protocol version has
/// them, every name, uri and `_meta` readable unambiguously (never decided as a call
/// without a name), and routing headers that say what the body says.
fn readable(
    obs: &Observer,
    headers: &HeaderMap,
    messages: &[Message<'_>],
    batch: bool,
) -> Result<(), Refusal> {
    if batch && !batches_allowed(obs.protocol_version.as_deref()) {
        return Err(Refusal::invalid(format!(
            "JSON-RPC batches are not part of MCP protocol version {} (only 2025-03-26 has them)",
            obs.protocol_version.as_deref().unwrap_or("?")
        )));
    }
    // An answer is unreadable only with a key given twice (`jsonrpc::parse_agent`).
    if let Some((m, e)) = messages
        .iter()
        .find_map(|m| m.params_error().map(|e| (m, e)))
    {
        let method = m.method.as_deref().unwrap_or("an answer");
        return Err(Refusal::ambiguous(format!(
            "{method}: the gateway cannot read this call unambiguously: {e}"
        )));
    }
    if let Some(why) = header_mismatch(headers, messages) {
        return Err(Refusal::header_mismatch(why));
    }
    let refusal = |e: super::headers::HeaderError| match e {
        super::headers::HeaderError::Unsupported(_) => Refusal::unsupported_version(e.to_string()),
        super::headers::HeaderError::Mismatch(_) => Refusal::header_mismatch(e.to_string()),
    };
    let version = super::headers::version(headers, messages).map_err(refusal)?;
    let catalog = obs.view.as_ref().map(|v| &v.catalog);
    super::headers::params(headers, version.as_deref(), messages, |tool| {
        catalog.and_then(|c| c.mirrored(&obs.server, tool))
    })
    .map_err(refusal)
}

/// Arguments were redacted: the headers that mirror them are redacted alike, and must then
/// agree with the redacted body as they agreed with the one sent, or the call goes no
/// further (a secret is never forwarded in a header).
fn mirror_redaction(
    obs: &Observer,
    policy: &Policy,
    headers: &mut HeaderMap,
    redacted: &[u8],
) -> Result<(), Refusal> {
    let exfiltration = |e: super::headers::HeaderError| {
        Refusal::exfiltration(format!(
            "the arguments were redacted, and the headers that mirror them could not be: {e}"
        ))
    };
    super::headers::redact_params(headers, &policy.redactor).map_err(exfiltration)?;
    let parsed = jsonrpc::parse(redacted, MAX_DEPTH)
        .map_err(|e| exfiltration(super::headers::HeaderError::Mismatch(e.to_string())))?;
    let messages = parsed.messages();
    let version = super::headers::version(headers, messages).map_err(exfiltration)?;
    let catalog = obs.view.as_ref().map(|v| &v.catalog);
    super::headers::params(headers, version.as_deref(), messages, |tool| {
        catalog.and_then(|c| c.mirrored(&obs.server, tool))
    })
    .map_err(exfiltration)
}

/// What a POST the gateway admitted carries on with.
pub(crate) struct Admitted {
    /// Its tool arguments, as scanned for secrets.
    pub guard: super::guard::Guarded,
    /// Its calls' rate-limit slots, released when their answers end.
    pub inflight: Vec<crate::policy::limits::InFlight>,
}

/// The decisions past policy, in order: a denial; a person's approval (one after another,
/// a batch waits for every answer); pins; the principal's limits; secrets in arguments.
pub(crate) async fn admit(
    ctx: &ConnCtx,
    obs: &Observer,
    policy: &Policy,
    messages: &[Message<'_>],
    decisions: &mut [Option<Decision>],
    bytes: &[u8],
    early: Option<&super::ask::Early>,
) -> Result<Admitted, Refusal> {
    if let Some(denied) = decisions
        .iter()
        .flatten()
        .find(|d| !d.allows() && d.action != crate::config::Action::Ask)
    {
        return Err(Refusal::policy(format!(
            "denied by policy ({}){}",
            denied.rule,
            denied
                .reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        )));
    }
    for (i, m) in messages.iter().enumerate() {
        let Some(d) = decisions[i].clone().filter(|d| !d.allows()) else {
            continue;
        };
        let v = super::ask::ask(ctx, obs, policy, m, &d, early).await?;
        if let Some(d) = decisions[i].as_mut() {
            d.reason = Some(format!("approved by uid {} ({})", v.by_uid, v.scope));
        }
    }
    // The gateway's own requests to the server have ids of this form; an agent's answer
    // under one could pass for the server's answer to the gateway.
    if let Some(Id::Str(id)) = messages
        .iter()
        .filter_map(|m| m.id.as_ref())
        .find(|id| matches!(id, Id::Str(s) if s.starts_with(super::relist::OWN_ID_PREFIX)))
    {
        return Err(Refusal::invalid(format!(
            "the id {id:?} is reserved for the gateway's own requests"
        )));
    }
    // A retry returns the state the server issued to this user, nothing else.
    for m in messages.iter().filter(|m| m.kind == Kind::Request) {
        let Some(digest) = m
            .params
            .and_then(|p| super::input_required::retry_state(p.get()))
        else {
            continue;
        };
        if !ctx
            .daemon
            .issued
            .contains(&obs.server, obs.principal.uid, &digest)
        {
            return Err(Refusal::invalid(
                "the requestState of this retry is not one the server issued to this agent \
                 through the gateway; start the call again"
                    .to_string(),
            ));
        }
    }
    // A task is the handle to a call's result: its creator's alone, at its server.
    if messages
        .iter()
        .any(|m| m.method.as_deref() == Some(super::tasks::LIST))
    {
        return Err(Refusal::policy(
            "tasks/list would show other principals' tasks, and the gateway cannot narrow it: \
             poll the tasks your calls created with tasks/get"
                .to_string(),
        ));
    }
    for m in messages.iter().filter(|m| m.kind == Kind::Request) {
        if !m
            .method
            .as_deref()
            .is_some_and(super::tasks::is_task_method)
        {
            continue;
        }
        let Some(task) = routing_name(m) else {
            return Err(Refusal::invalid(format!(
                "{} without a taskId",
                m.method.as_deref().unwrap_or("")
            )));
        };
        ctx.daemon
            .tasks
            .check(&obs.server, &task, &obs.principal.session_owner())
            .map_err(|e| Refusal::task(&e))?;
    }
    if !policy.observing() {
        // A server that said its list changed is being re-listed: its answer decides.
        if messages.iter().any(is_call) {
            ctx.daemon.pins.relists.settled(&obs.server).await;
        }
        // A tool or prompt whose definition is not approved is not callable, even when the
        // agent never asked for the listing that would have hidden it.
        for m in messages.iter().filter(|m| m.kind == Kind::Request) {
            let (Some(method), Some(name)) = (m.method.as_deref(), m.target_name()) else {
                continue;
            };
            let kind = match method {
                "resources/read" => Some(crate::pins::Kind::ResourceTemplate),
                m => crate::pins::Kind::of_call(m),
            };
            if let Some(why) = kind.and_then(|k| {
                ctx.daemon
                    .pins
                    .relists
                    .unknown(&obs.server, k, obs.principal.uid)
            }) {
                return Err(Refusal::unpinned(format!(
                    "server {:?} said its definitions changed and the gateway could not list \
                     them ({why}); list them again",
                    obs.server
                )));
            }
            if method == "resources/read" {
                if let Err(why) = ctx.daemon.pins.check_resource(&obs.server, &name) {
                    tracing::info!(server = %obs.server, uri = %name, "read under a held template refused");
                    return Err(Refusal::unpinned(why));
                }
                continue;
            }
            let Some(kind) = crate::pins::Kind::of_call(method) else {
                continue;
            };
            if let Err(why) = ctx.daemon.pins.check_call(&obs.server, kind, &name) {
                tracing::info!(server = %obs.server, name = %name, "call to an unapproved definition refused");
                return Err(Refusal::unpinned(why));
            }
        }
    }
    let mut inflight = Vec::new();
    if let Some(p) = obs
        .principal
        .name
        .as_deref()
        .and_then(|n| policy.principal_limits(n))
        .filter(|_| !policy.observing())
    {
        let window = std::time::Duration::from_secs(p.rate_window_s);
        let calls = messages
            .iter()
            .filter(|m| m.kind == Kind::Request && is_call(m));
        for _ in calls {
            let slot = ctx
                .daemon
                .limiter
                .admit(&p.name, p.rate_calls, window, p.max_concurrent)
                .map_err(Refusal::rate_limit)?;
            inflight.push(slot);
        }
    }
    // Secrets in tool arguments are refused or redacted before anything leaves the host.
    let guard = super::guard::guard_arguments(policy, obs, bytes, messages)
        .map_err(Refusal::exfiltration)?;
    Ok(Admitted { guard, inflight })
}

/// The write-ahead `mcp_call` record of each request decided, with its argument redactions;
/// the first that cannot be written stops the exchange.
pub(crate) fn write_ahead(
    obs: &Observer,
    messages: &[Message<'_>],
    decisions: &[Option<Decision>],
    guard: &super::guard::Guarded,
) -> Result<Vec<crate::audit::Written>, crate::audit::AuditError> {
    let mut written = Vec::new();
    for (m, d) in messages.iter().zip(decisions) {
        let (Kind::Request, Some(d)) = (m.kind, d) else {
            continue;
        };
        let mut call = obs.call(m, d.clone());
        call.argument_redactions =
            m.id.as_ref()
                .and_then(|id| guard.counts.iter().find(|(i, _)| i == id))
                .map(|(_, c)| c.clone());
        written.push(obs.audit.record_json_durable(|out| call.write_json(out))?);
    }
    Ok(written)
}

/// Every record in `written` durable, or the first reason one is not.
pub(crate) async fn all_durable(
    written: Vec<crate::audit::Written>,
) -> Result<(), crate::audit::AuditError> {
    for w in written {
        w.durable().await?;
    }
    Ok(())
}

/// The ledger could not record a call: fail closed, with an error for each waiting request.
fn unrecorded(ids: Vec<Id>, e: &crate::audit::AuditError, consequence: &str) -> Response<GwBody> {
    tracing::error!(error = %e, "call refused: the audit ledger cannot record it");
    let ids: Vec<Option<Id>> = ids.into_iter().map(Some).collect();
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &ids_or_null(ids),
        GATEWAY_REFUSED,
        &format!("the gateway cannot record this call in its audit ledger, {consequence}: {e}"),
    )
}

async fn json_response(
    parts: http::response::Parts,
    body: UpBody,
    obs: Observer,
    mut local: Pending<super::record::PendingRequest>,
    limit: usize,
    held: &mut Reservation,
) -> Response<GwBody> {
    let fail = |why: String, local: &mut Pending<_>| {
        let waiting = local.drain_expired(|_| true);
        let ids: Vec<Option<Id>> = waiting.iter().map(|(id, _)| Some(id.clone())).collect();
        (waiting, ids, why)
    };
    let mut body = body;
    let bytes: Bytes = match collect_limited(&mut body, limit, held).await {
        Ok(b) => b,
        Err(e) => {
            let (waiting, ids, why) = fail(
                match e {
                    BodyError::TooLarge { .. } => format!(
                        "the server's response could not be read: {e} (http.max_response_bytes)"
                    ),
                    e => format!("the server's response could not be read: {e}"),
                },
                &mut local,
            );
            obs.write(obs.unanswered(Direction::ClientToServer, waiting, "upstream_error", &why))
                .await;
            return error_response(
                StatusCode::BAD_GATEWAY,
                &ids_or_null(ids),
                UPSTREAM_FAILED,
                &why,
            );
        }
    };
    let asked = local.ids();
    let mut inspect = Vec::new();
    let mut records = match jsonrpc::parse(&bytes, MAX_DEPTH) {
        Ok(Parsed::Single(m)) => obs.from_server(&m, Some(&mut local), &mut inspect),
        Ok(Parsed::Batch(ms)) => ms
            .iter()
            .flat_map(|m| obs.from_server(m, Some(&mut local), &mut inspect))
            .collect(),
        Err(e) if !local.is_empty() || matches!(e, jsonrpc::JsonRpcError::Unreadable(_)) => {
            let (waiting, ids, why) = fail(
                format!("the server's response is not JSON-RPC: {e}"),
                &mut local,
            );
            obs.write(obs.unanswered(Direction::ClientToServer, waiting, "upstream_error", &why))
                .await;
            return error_response(StatusCode::BAD_GATEWAY, &ids, UPSTREAM_FAILED, &why);
        }
        // An empty body answering only notifications or responses is an acknowledgement
        // (some servers label their 202 as JSON); nothing to record.
        Err(_) if local.is_empty() && bytes.iter().all(u8::is_ascii_whitespace) => Vec::new(),
        // JSON-looking bytes the gateway cannot read: a lenient client might still take
        // messages (a server request) from them, unchecked.
        Err(e) if super::sniff::classify(&bytes) == super::sniff::Sniffed::JsonRpc => {
            let why = format!(
                "the server's answer was dropped: it is not JSON-RPC the gateway can read ({e})"
            );
            obs.write(vec![obs.malformed(&why)]).await;
            return http_error(StatusCode::BAD_GATEWAY, &why);
        }
        // An error page for a POST without requests: nothing waits on it; pass it on.
        Err(e) => vec![obs.malformed(&e.to_string())],
    };
    // A response to no request of this POST was never checked against one (pins,
    // redaction by method): the whole answer is dropped, and every request it carried
    // gets an error instead.
    if super::observe::mark_unpaired_dropped(&mut records, "server response") {
        obs.write(records).await;
        let why = "the server's answer was dropped: it carried a response to no request \
                   of this POST";
        let (waiting, _, _) = fail(why.to_string(), &mut local);
        obs.write(obs.unanswered(Direction::ClientToServer, waiting, "upstream_error", why))
            .await;
        let ids = asked.into_iter().map(Some).collect();
        return error_response(
            StatusCode::BAD_GATEWAY,
            &ids_or_null(ids),
            UPSTREAM_FAILED,
            why,
        );
    }
    // A server request (which a JSON answer should not carry) the policy refused is taken
    // out; what else the body carries goes on.
    let bytes = match super::observe::without_refused(&bytes, &records) {
        None => bytes,
        Some(Some(kept)) => Bytes::from(kept),
        Some(None) => Bytes::new(),
    };
    let rewritten = obs.rewrite(&bytes, &inspect, &mut records);
    obs.write(records).await;
    let waiting = local.drain_expired(|_| true);
    if !waiting.is_empty() {
        obs.write(obs.unanswered(
            Direction::ClientToServer,
            waiting,
            "no_response",
            "the server's JSON response did not answer this request",
        ))
        .await;
    }
    let mut parts = parts;
    let bytes = match rewritten {
        Some(changed) => {
            // The body changed length: let hyper frame it anew.
            parts.headers.remove(header::CONTENT_LENGTH);
            Bytes::from(changed)
        }
        None => bytes,
    };
    Response::from_parts(parts, full(bytes))
}

fn ids_or_null(ids: Vec<Option<Id>>) -> Vec<Option<Id>> {
    if ids.is_empty() {
        vec![None]
    } else {
        ids
    }
}

pub async fn get(
    req: Request<GwBody>,
    ctx: &ConnCtx,
    upstream: &Upstream,
    target: &Target,
    confirmed: bool,
) -> Response<GwBody> {
    let version = header_str(req.headers(), &H_PROTOCOL_VERSION).map(str::to_string);
    let session = match session_of(ctx, req.headers()) {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(reason = %e, "GET stream refused");
            let r = Refusal::session(&e);
            return error_response(r.status, &[None], r.code, &r.why());
        }
    };
    if let Some(last) = header_str(req.headers(), &super::recognise::H_LAST_EVENT_ID) {
        tracing::debug!(last_event_id = last, "stream resumption");
    }
    let mut obs = observer(ctx, target, session, version);
    let (mut parts, body) = req.into_parts();
    drop(body);
    obs.back = Some(Back::Http(Arc::new(HttpBack::of(
        ctx,
        &parts.uri,
        &parts.headers,
        None,
    ))));
    // A GET's body means nothing to MCP and is not forwarded: neither is the framing that
    // announced it, or the server would wait for bytes that never come.
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::TRANSFER_ENCODING);
    let resp = match upstream.send(Request::from_parts(parts, empty())).await {
        Ok(r) => r,
        Err(e) => {
            return http_error(
                StatusCode::BAD_GATEWAY,
                &format!("the upstream server failed: {e}"),
            );
        }
    };
    watch(resp, ctx, obs, confirmed)
}

/// The answer to a request forwarded as plain HTTP: an event stream in it is watched like
/// a GET's, the rest passes as it is.
pub fn watch_plain(resp: Response<GwBody>, ctx: &ConnCtx, target: &Target) -> Response<GwBody> {
    if !matches!(media::of(resp.headers()), Media::Sse | Media::Ambiguous) {
        return resp;
    }
    let obs = observer(ctx, target, None, None);
    watch(resp, ctx, obs, false)
}

/// Watches a response that clients would read as an event stream (in any case, the type
/// anywhere in the header); the rest passes as it is.
fn watch<B>(resp: Response<B>, ctx: &ConnCtx, obs: Observer, confirmed: bool) -> Response<GwBody>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<crate::http::body::BoxError> + std::fmt::Display + Send,
{
    let (mut parts, body) = resp.into_parts();
    if !matches!(media::of(&parts.headers), Media::Sse | Media::Ambiguous) {
        return Response::from_parts(parts, boxed(body));
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = stream::observe(
        body,
        StreamJob {
            observer: obs,
            local: Pending::new(1),
            kind: StreamKind::Get { confirmed },
            sessions: ctx.daemon.sessions.clone(),
            server: ctx.server_key(),
            max_event_bytes: ctx.daemon.config.http.max_event_bytes,
            max_depth: MAX_DEPTH,
            inflight: Vec::new(),
            held: ctx.daemon.budget.reserve(ctx.principal.uid),
            withholding: None,
        },
    );
    Response::from_parts(parts, body)
}

pub async fn delete(
    req: Request<GwBody>,
    ctx: &ConnCtx,
    upstream: &Upstream,
    target: &Target,
) -> Response<GwBody> {
    let session = match session_of(ctx, req.headers()) {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(reason = %e, "DELETE refused");
            let r = Refusal::session(&e);
            return error_response(r.status, &[None], r.code, &r.why());
        }
    };
    let resp = match upstream.send(req).await {
        Ok(r) => r,
        Err(e) => {
            return http_error(
                StatusCode::BAD_GATEWAY,
                &format!("the upstream server failed: {e}"),
            );
        }
    };
    if let (true, Some(s)) = (resp.status().is_success(), session) {
        ctx.daemon
            .sessions
            .remove(&ctx.server_key(), &s.key, Transport::StreamableHttp);
        let waiting = s.state().client_pending.drain_expired(|_| true);
        let obs = observer(ctx, target, Some(s), None);
        obs.write(obs.unanswered(
            Direction::ClientToServer,
            waiting,
            "no_response",
            "the session was deleted",
        ))
        .await;
        tracing::debug!("session deleted");
    }
    let (parts, body) = resp.into_parts();
    let body = body.map_err(Into::into).boxed();
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn check(body: &str, pairs: &[(&str, &str)]) -> Option<String> {
        let parsed = jsonrpc::parse(body.as_bytes(), MAX_DEPTH).unwrap();
        let messages = match parsed {
            Parsed::Single(m) => vec![m],
            Parsed::Batch(ms) => ms,
        };
        header_mismatch(&headers(pairs), &messages)
    }

    const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","arguments":{}}}"#;

    #[test]
    fn matching_routing_headers_pass() {
        assert_eq!(check(CALL, &[]), None);
        assert_eq!(
            check(
                CALL,
                &[("mcp-method", "tools/call"), ("mcp-name", "get_weather")]
            ),
            None
        );
        let read =
            r#"{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"file:///a"}}"#;
        assert_eq!(
            check(
                read,
                &[("mcp-method", "resources/read"), ("mcp-name", "file:///a")]
            ),
            None
        );
        let task = r#"{"jsonrpc":"2.0","id":3,"method":"tasks/get","params":{"taskId":"t-9"}}"#;
        assert_eq!(check(task, &[("mcp-name", "t-9")]), None);
    }

    #[test]
    fn lying_routing_headers_are_named() {
        let e = check(CALL, &[("mcp-method", "tools/list")]).unwrap();
        assert!(
            e.contains("\"tools/list\"") && e.contains("\"tools/call\""),
            "{e}"
        );
        let e = check(CALL, &[("mcp-name", "safe_tool")]).unwrap();
        assert!(
            e.contains("\"safe_tool\"") && e.contains("\"get_weather\""),
            "{e}"
        );
        let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        let e = check(list, &[("mcp-name", "x")]).unwrap();
        assert!(e.contains("names nothing"), "{e}");
        // A batch must agree with the header in every message.
        let batch = format!(
            "[{CALL},{}]",
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#
        );
        assert!(check(&batch, &[("mcp-method", "tools/call")]).is_some());
    }

    #[test]
    fn base64_wrapped_names_are_decoded() {
        let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"météo"}}"#;
        use base64::Engine as _;
        let wrapped = format!(
            "=?base64?{}?=",
            base64::engine::general_purpose::STANDARD.encode("météo")
        );
        assert_eq!(check(call, &[("mcp-name", &wrapped)]), None);
        let other = format!(
            "=?base64?{}?=",
            base64::engine::general_purpose::STANDARD.encode("meteo")
        );
        assert!(check(call, &[("mcp-name", &other)]).is_some());
        assert!(check(call, &[("mcp-name", "=?base64?!!!?=")])
            .unwrap()
            .contains("invalid Base64"));
    }

    #[test]
    fn unreadable_routing_header_is_refused() {
        let mut h = HeaderMap::new();
        h.insert(
            "mcp-method",
            http::HeaderValue::from_bytes(b"tools/\xffcall").unwrap(),
        );
        let parsed = jsonrpc::parse(CALL.as_bytes(), MAX_DEPTH).unwrap();
        let Parsed::Single(m) = parsed else {
            unreachable!()
        };
        assert!(header_mismatch(&h, &[m])
            .unwrap()
            .contains("not visible ASCII"));
    }
}
