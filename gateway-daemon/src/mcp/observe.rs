//! Pairs the JSON-RPC messages seen in either direction and turns each finished exchange
//! into an audit record. It only reads: messages are forwarded by the caller unchanged.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::jsonrpc::{Id, Kind, Message};
use super::pairing::{PairingError, Pending};
use super::record::{CallRecord, Direction, ExchangeRecord, PendingRequest, Principal, Subject};
use super::rewrite;
use super::session::{Session, Transport};
use crate::audit::chain::sha256_hex;
use crate::audit::{timestamp, AuditSink};
use crate::policy::filter::{self, Catalog};
use crate::policy::{Decision, Policy};
use crate::redact::Redactor;

/// The policy a listing is filtered by, for one exchange.
pub struct ListView {
    pub policy: Arc<Policy>,
    pub catalog: Arc<Catalog>,
    pub pins: Arc<crate::pins::Pins>,
    pub tasks: Arc<super::tasks::Tasks>,
    pub approvals: Arc<crate::approvals::Approvals>,
    pub issued: Arc<super::input_required::Issued>,
}

/// The outcome of a response that answers no request the gateway saw.
pub const UNPAIRED_RESPONSE: &str = "unpaired_response";

/// Whether a record is of a response that answers no request the gateway saw.
pub fn is_unpaired_response(r: &ExchangeRecord) -> bool {
    r.outcome == UNPAIRED_RESPONSE
}

/// Whether `records` hold a response to no request the gateway saw; if so each such record
/// says that the `what` (a server event, a server response) carrying it was dropped.
pub fn mark_unpaired_dropped(records: &mut [ExchangeRecord], what: &str) -> bool {
    let mut any = false;
    for r in records.iter_mut().filter(|r| is_unpaired_response(r)) {
        r.detail = Some(format!(
            "{what} dropped: it answers no request the gateway saw, so it was never checked"
        ));
        any = true;
    }
    any
}

/// A server message (or batch) without the server requests `records` say were refused:
/// None when none was; Some(None) when nothing of it is left to pass on.
pub fn without_refused(data: &[u8], records: &[ExchangeRecord]) -> Option<Option<Vec<u8>>> {
    // (id, whether it is a request): a server request and an answer may share an id.
    let refused: Vec<(&str, bool)> = records
        .iter()
        .filter(|r| is_refused_server_request(r))
        .filter_map(|r| Some((r.about.id.as_deref()?, r.outcome != OWN_ANSWER)))
        .collect();
    if !records.iter().any(is_refused_server_request) {
        return None;
    }
    let Ok(serde_json::Value::Array(items)) = serde_json::from_slice(data) else {
        return Some(None);
    };
    let kept: Vec<serde_json::Value> = items
        .into_iter()
        .filter(|m| {
            // Compared as JSON-RPC compares ids (`1.0` is `1`), as the records hold them.
            let Some(id) = rewrite::id_of(&m["id"]) else {
                return true;
            };
            !refused.contains(&(id.to_string().as_str(), m.get("method").is_some()))
        })
        .collect();
    if kept.is_empty() {
        return Some(None);
    }
    Some(Some(
        serde_json::to_vec(&kept).expect("a JSON value always serialises"),
    ))
}

pub struct Observer {
    pub principal: Arc<Principal>,
    /// The connection this observer reads, as records name it.
    pub via: Arc<crate::audit::link::Via>,
    pub view: Option<ListView>,
    pub server: Arc<str>,
    pub audit: AuditSink,
    pub session: Option<Arc<Session>>,
    pub transport: Transport,
    pub protocol_version: Option<Arc<str>>,
    /// Where the gateway's own messages to the server go (answers to server requests it
    /// refused, its own listings).
    pub back: Option<super::to_server::Back>,
    /// A server request an administrator approved: passed on when it comes through.
    pub approved: Option<Id>,
    /// The credential headers the gateway set on the request observed (`mcp_call` names
    /// them).
    pub credentials: Option<Arc<[Box<str>]>>,
}

/// Whether a server message answering `inspect` (request id, method) must be read as a
/// JSON value before the agent sees it. Listings are narrowed and pinned. Anything a task
/// method answers is read (a task's status may ask for input). A result that may say it is
/// something else (input_required or a task: `resultType`, `task`, or a key spelled with
/// an escape) is read to know. Content and errors are redacted, so read unless the redactor
/// can tell from the text alone that nothing in it would change. Anything else needs no
/// parse at all.
fn must_read(body: &[u8], inspect: &[(Id, String)], redactor: Option<&Redactor>) -> bool {
    let special = inspect
        .iter()
        .any(|(_, m)| filter::listing(m).is_some() || m.starts_with("tasks/"));
    if special || has_result_type(body) || has_task(body) || has_unicode_escape(body) {
        return true;
    }
    // Any answer's error is redacted, whatever the method: not only content's.
    redactor.is_some_and(|r| r.might_redact_json_text(body))
}

/// Whether `body` holds `"resultType"` (the searcher built once: building one costs more
/// than searching a small body).
fn has_result_type(body: &[u8]) -> bool {
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(RESULT_TYPE_KEY));
    FINDER.find(body).is_some()
}

/// Whether `body` holds `"task"`, the key of a task handed out in the 2025-11-25 shape.
fn has_task(body: &[u8]) -> bool {
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"task\""));
    FINDER.find(body).is_some()
}

/// Whether `body` holds a `\u` escape.
fn has_unicode_escape(body: &[u8]) -> bool {
    memchr::memchr_iter(b'\\', body).any(|i| body.get(i + 1) == Some(&b'u'))
}

/// What a 2026-07-28 result that is not the plain result carries (input_required, task):
/// such a result is read even when nothing else in it would be.
const RESULT_TYPE_KEY: &[u8] = b"\"resultType\"";

/// The outcome of the server's answer to a request of the gateway's own: taken by the
/// gateway, never passed on, and not recorded (the gateway's exchange has its record).
pub const OWN_ANSWER: &str = "own_answer";

/// Whether a record is of a server request the gateway refused, or of an answer to the
/// gateway's own request: the message must not reach the agent.
pub fn is_refused_server_request(r: &ExchangeRecord) -> bool {
    (r.direction == Direction::ServerToClient && r.outcome == "refused") || r.outcome == OWN_ANSWER
}

fn id_text(id: &Option<Id>) -> Option<String> {
    id.as_ref().map(|i| match i {
        // Without `fmt`: this is on every call.
        Id::Num(n) => itoa::Buffer::new().format(*n).to_owned(),
        other => other.to_string(),
    })
}

impl Observer {
    fn subject(&self, method: &str) -> Subject {
        Subject {
            time: timestamp(SystemTime::now()),
            via: self.via.clone(),
            principal: self.principal.clone(),
            server: self.server.clone(),
            session: self.session.as_ref().map(|s| s.id.clone()),
            transport: self.transport.label(),
            protocol_version: self.protocol_version.clone(),
            method: method.to_string(),
            name: None,
            id: None,
        }
    }

    fn record(&self, direction: Direction, method: &str) -> ExchangeRecord {
        ExchangeRecord {
            kind: "mcp",
            about: self.subject(method),
            direction,
            outcome: "ok",
            answered_on: None,
            refusal: None,
            error_code: None,
            detail: None,
            latency_ms: None,
            result_sha256: None,
            decision: None,
            redactions: None,
            hidden: None,
            pins: None,
            input_requests: None,
            request_state_sha256: None,
            task_id: None,
        }
    }

    fn pending(&self, m: &Message) -> PendingRequest {
        PendingRequest {
            via: self.via.clone(),
            principal: self.principal.clone(),
            method: m.method.as_deref().unwrap_or_default().to_string(),
            name: super::exchange::routing_name(m),
            started: Instant::now(),
        }
    }

    /// The record of a request's exchange: it names the connection the request came on
    /// and who sent it, and — when `answered` — this connection as where the answer came,
    /// when that is another.
    fn of_request(
        &self,
        direction: Direction,
        req: &PendingRequest,
        answered: bool,
    ) -> ExchangeRecord {
        let mut r = self.record(direction, &req.method);
        if req.via.connection != self.via.connection {
            r.answered_on = answered.then(|| self.via.connection.clone());
            r.about.via = req.via.clone();
            r.about.principal = req.principal.clone();
        }
        r
    }

    fn answered(
        &self,
        direction: Direction,
        id: &Option<Id>,
        req: PendingRequest,
        m: &Message,
    ) -> ExchangeRecord {
        let mut r = self.of_request(direction, &req, true);
        r.about.name = req.name;
        r.about.id = id_text(id);
        r.latency_ms = Some(req.started.elapsed().as_secs_f64() * 1e3);
        r.result_sha256 = m.result.map(|v| sha256_hex(v.get().as_bytes()));
        if m.kind == Kind::Error {
            r.outcome = "error";
            r.error_code = m.error_code;
        }
        r
    }

    fn unpaired(&self, direction: Direction, m: &Message) -> ExchangeRecord {
        let mut r = self.record(direction, "");
        r.about.id = id_text(&m.id);
        r.outcome = UNPAIRED_RESPONSE;
        r.error_code = m.error_code;
        r.detail = Some("no request with this id is awaiting a response".into());
        r
    }

    fn notification(&self, direction: Direction, m: &Message) -> ExchangeRecord {
        let mut r = self.record(direction, m.method.as_deref().unwrap_or_default());
        r.about.name = super::exchange::routing_name(m);
        r.outcome = "notification";
        r
    }

    /// A message from the agent. Its requests wait in `local` (this HTTP exchange), except
    /// on legacy SSE where responses come back on the session's stream.
    pub fn from_client(
        &self,
        m: &Message,
        local: &mut Pending<PendingRequest>,
    ) -> Result<Vec<ExchangeRecord>, PairingError> {
        let id = m.id.clone().unwrap_or(Id::Null);
        Ok(match m.kind {
            Kind::Request => {
                let p = self.pending(m);
                match (&self.session, self.transport) {
                    (Some(s), Transport::LegacySse | Transport::Stdio) => {
                        s.state().client_pending.insert(id, p)?
                    }
                    _ => local.insert(id, p)?,
                }
                vec![]
            }
            Kind::Notification => vec![self.notification(Direction::ClientToServer, m)],
            Kind::Response | Kind::Error => {
                let req = self
                    .session
                    .as_ref()
                    .and_then(|s| s.state().server_pending.take(&id));
                match req {
                    Some(req) => vec![self.answered(Direction::ServerToClient, &m.id, req, m)],
                    None => vec![self.unpaired(Direction::ServerToClient, m)],
                }
            }
        })
    }

    /// A message from the server, on a response body or an SSE stream. Responses the
    /// gateway may change (listings, content) are noted in `inspect` (id, method) for
    /// `rewrite`.
    pub fn from_server(
        &self,
        m: &Message,
        local: Option<&mut Pending<PendingRequest>>,
        inspect: &mut Vec<(Id, String)>,
    ) -> Vec<ExchangeRecord> {
        let id = m.id.clone().unwrap_or(Id::Null);
        match m.kind {
            Kind::Response | Kind::Error => {
                if let (Id::Str(own), Some(v)) = (&id, &self.view) {
                    if own.starts_with(super::relist::OWN_ID_PREFIX)
                        && v.pins
                            .relists
                            .answered(&self.server, own, || super::relist::as_value(m))
                    {
                        let mut r = self.record(Direction::ClientToServer, "");
                        r.about.id = Some(own.clone());
                        r.outcome = OWN_ANSWER;
                        return vec![r];
                    }
                }
                let req = local.and_then(|l| l.take(&id)).or_else(|| {
                    self.session
                        .as_ref()
                        .and_then(|s| s.state().client_pending.take(&id))
                });
                match req {
                    Some(req) => {
                        // Every response: any may ask for input (2026-07-28). Those that
                        // carry nothing to change are not parsed (see `rewrite`).
                        inspect.push((id.clone(), req.method.clone()));
                        vec![self.answered(Direction::ClientToServer, &m.id, req, m)]
                    }
                    None => vec![self.unpaired(Direction::ClientToServer, m)],
                }
            }
            Kind::Request => {
                if let Some(refused) = self.refuse_server_request(m) {
                    return vec![refused];
                }
                let p = self.pending(m);
                match &self.session {
                    Some(s) => match s.state().server_pending.insert(id, p) {
                        Ok(()) => vec![],
                        Err(e) => {
                            let mut r = self.notification(Direction::ServerToClient, m);
                            r.about.id = id_text(&m.id);
                            r.outcome = "unpaired_request";
                            r.detail = Some(e.to_string());
                            vec![r]
                        }
                    },
                    // Without a session the agent's answer cannot be tied back to it.
                    None => {
                        let mut r = self.notification(Direction::ServerToClient, m);
                        r.about.id = id_text(&m.id);
                        r.outcome = "unpaired_request";
                        vec![r]
                    }
                }
            }
            Kind::Notification => {
                if let Some(method) = m.method.as_deref() {
                    super::relist::on_notification(self, method);
                }
                vec![self.notification(Direction::ServerToClient, m)]
            }
        }
    }

    /// A record of the gateway's own exchange with the server, on this principal's behalf.
    pub(crate) fn own(&self, direction: Direction, method: &str) -> ExchangeRecord {
        self.record(direction, method)
    }

    /// Decides a request of the server to the agent: None lets it through; a record means
    /// it was refused, and the server has been answered with the error.
    fn refuse_server_request(&self, m: &Message) -> Option<ExchangeRecord> {
        let policy = &self.view.as_ref()?.policy;
        let method = m.method.as_deref()?;
        let mut d =
            policy.decide_server_request(self.principal.name.as_deref(), &self.server, method);
        super::exchange::say_undecided(&mut d, &self.principal, None);
        if d.allows() {
            if !d.enforced && d.action != crate::config::Action::Allow {
                tracing::info!(method, rule = %d.rule, "server request would be refused (policy not enforced)");
            }
            return None;
        }
        if d.action == crate::config::Action::Ask {
            if m.id.is_some() && self.approved == m.id {
                return None;
            }
            // Held requests come alone (see `server_ask`): one that reached here came in a
            // batch or a JSON body, where nothing can wait for a person.
            let why = format!(
                "{method} from server {} needs a person's approval ({}), which the gateway can \
                 give only to a request sent alone on an event stream or a line",
                self.server, d.rule
            );
            let refusal = super::refusal::Refusal::policy(why);
            return Some(self.refuse_server_request_with(m.id.as_ref(), method, d, &refusal));
        }
        let why = d.reason.clone().unwrap_or_else(|| {
            format!(
                "{method} from server {} is refused by {}",
                self.server, d.rule
            )
        });
        let refusal = super::refusal::Refusal::policy(why);
        Some(self.refuse_server_request_with(m.id.as_ref(), method, d, &refusal))
    }

    /// Refuses a server request: answers the server with the error (the agent never sees
    /// the request) and returns its record.
    pub fn refuse_server_request_with(
        &self,
        id: Option<&Id>,
        method: &str,
        d: Decision,
        refusal: &super::refusal::Refusal,
    ) -> ExchangeRecord {
        let why = refusal.why().into_owned();
        let mut r = self.record(Direction::ServerToClient, method);
        r.about.id = id.map(|i| i.to_string());
        r.outcome = "refused";
        r.refusal = Some(refusal.kind);
        r.error_code = Some(refusal.code as i64);
        r.decision = Some(d);
        match (&self.back, id) {
            (Some(back), Some(id)) => {
                back.tell(super::reply::error_json(
                    Some(id),
                    refusal.code,
                    refusal.why(),
                ));
                r.detail = Some(format!("{why}; the server was answered with the error, the agent never saw the request"));
            }
            _ => {
                r.detail = Some(format!("{why}; the agent never saw the request (the gateway has no way to answer the server)"));
            }
        }
        tracing::info!(method, "server request refused");
        r
    }

    /// Requests that will get no response (stream ended, upstream failed, refused).
    pub fn unanswered(
        &self,
        direction: Direction,
        items: Vec<(Id, PendingRequest)>,
        outcome: &'static str,
        detail: &str,
    ) -> Vec<ExchangeRecord> {
        items
            .into_iter()
            .map(|(id, req)| {
                let mut r = self.of_request(direction, &req, false);
                r.about.name = req.name;
                r.about.id = Some(id.to_string());
                r.outcome = outcome;
                r.detail = Some(detail.to_string());
                r.latency_ms = Some(req.started.elapsed().as_secs_f64() * 1e3);
                r
            })
            .collect()
    }

    /// A message the gateway refused before it reached the server.
    pub fn refused(
        &self,
        m: &Message,
        refusal: &super::refusal::Refusal,
        detail: &str,
        decision: Option<Decision>,
    ) -> ExchangeRecord {
        let mut r = self.record(
            Direction::ClientToServer,
            m.method.as_deref().unwrap_or_default(),
        );
        r.about.name = super::exchange::routing_name(m);
        r.about.id = id_text(&m.id);
        r.outcome = "refused";
        r.refusal = Some(refusal.kind);
        r.error_code = Some(refusal.code as i64);
        r.detail = Some(detail.to_string());
        r.decision = decision;
        r
    }

    /// Narrows listings and redacts content in a server message body for this principal
    /// (see `rewrite`), noting what changed in the exchange records of `records`.
    pub fn rewrite(
        &self,
        body: &[u8],
        inspect: &[(Id, String)],
        records: &mut [ExchangeRecord],
    ) -> Option<Vec<u8>> {
        if inspect.is_empty() {
            return None;
        }
        let v = self.view.as_ref()?;
        let redactor = v
            .policy
            .response_redaction(&self.server)
            .then_some(&*v.policy.redactor);
        if !must_read(body, inspect, redactor) {
            return None;
        }
        let mut out = rewrite::rewrite(
            body,
            inspect,
            &filter::View {
                policy: &v.policy,
                principal: self.principal.name.as_deref(),
                server: &self.server,
                catalog: &v.catalog,
            },
            &v.pins,
            redactor,
        )?;
        if !out.pin_events.is_empty() {
            for e in &out.pin_events {
                if e.event == "held" || e.event == "poison_warning" {
                    tracing::warn!(server = %self.server, kind = e.kind.label(), name = %e.name,
                        event = e.event, change = e.change.as_deref(), findings = e.findings.len(),
                        "definition held for review");
                }
            }
            if let Some(r) = records
                .iter_mut()
                .find(|r| r.about.method.ends_with("/list"))
            {
                r.pins = Some(std::mem::take(&mut out.pin_events));
            }
        }
        for (id, task) in out.tasks {
            let id = id.to_string();
            if let Some(r) = records
                .iter_mut()
                .find(|r| r.about.id.as_deref() == Some(&id))
            {
                let created_by = format!(
                    "{} {} ({id})",
                    r.about.method,
                    r.about.name.as_deref().unwrap_or("-")
                );
                v.tasks.created(
                    &self.server,
                    &task,
                    &self.principal.session_owner(),
                    created_by,
                );
                r.task_id = Some(task);
            }
        }
        for (id, inputs) in out.inputs {
            let id = id.to_string();
            if let Some(r) = records
                .iter_mut()
                .find(|r| r.about.id.as_deref() == Some(&id))
            {
                if let (Some(d), None) = (&inputs.state_sha256, &inputs.refused) {
                    v.issued.insert(&self.server, self.principal.uid, d.clone());
                }
                r.request_state_sha256 = inputs.state_sha256;
                if let Some((d, why)) = inputs.refused {
                    tracing::info!(rule = %d.rule, "a result asking for input refused");
                    r.outcome = "refused";
                    r.refusal = Some(super::refusal::Kind::Policy);
                    r.error_code = Some(super::reply::GATEWAY_DENIED as i64);
                    r.detail = Some(why);
                    r.decision = Some(d);
                }
                r.input_requests = Some(inputs.asked);
            }
        }
        for (id, counts) in out.redactions {
            let id = id.to_string();
            if let Some(r) = records
                .iter_mut()
                .find(|r| r.about.id.as_deref() == Some(&id))
            {
                r.redactions = Some(counts);
            }
        }
        if out.hidden > 0 {
            tracing::debug!(hidden = out.hidden, "listing narrowed by policy");
            if let Some(r) = records
                .iter_mut()
                .find(|r| r.about.method.ends_with("/list"))
            {
                r.hidden = Some(out.hidden);
            }
        }
        out.body
    }

    /// An observer that only records, about the same connection, principal, server and
    /// session as this one (its listing view and way back to the server left behind).
    pub fn recorder(&self) -> Observer {
        Observer {
            principal: self.principal.clone(),
            via: self.via.clone(),
            view: None,
            server: self.server.clone(),
            audit: self.audit.clone(),
            session: self.session.clone(),
            transport: self.transport,
            protocol_version: self.protocol_version.clone(),
            back: None,
            approved: None,
            credentials: self.credentials.clone(),
        }
    }

    /// A server message the gateway could not read.
    pub fn malformed(&self, detail: &str) -> ExchangeRecord {
        let mut r = self.record(Direction::ServerToClient, "");
        r.outcome = "malformed";
        r.detail = Some(detail.to_string());
        r
    }

    /// The write-ahead record of a request about to be forwarded: what was asked, by whom,
    /// with a digest of its arguments (never the arguments themselves).
    pub fn call(&self, m: &Message, decision: Decision) -> CallRecord {
        let mut about = self.subject(m.method.as_deref().unwrap_or_default());
        about.name = super::exchange::routing_name(m);
        about.id = id_text(&m.id);
        CallRecord {
            kind: "mcp_call",
            about,
            params_sha256: m.params.map(|p| sha256_hex(p.get().as_bytes())),
            decision,
            argument_redactions: None,
            request_state_sha256: m
                .params
                .and_then(|p| super::input_required::retry_state(p.get())),
            credentials: self.credentials.clone(),
        }
    }

    pub async fn write(&self, records: Vec<ExchangeRecord>) {
        self.write_now(records)
    }

    /// Counts and writes records now (the ledger is written from the caller's task).
    pub fn write_now(&self, records: Vec<ExchangeRecord>) {
        let metrics = crate::metrics::global();
        for r in records.into_iter().filter(|r| r.outcome != OWN_ANSWER) {
            metrics.mcp(&r.about.server, &r.about.method, r.outcome);
            if let Some(c) = &r.redactions {
                metrics.redactions(c.total());
            }
            tracing::debug!(
                server = %r.about.server,
                session = r.about.session.as_deref().unwrap_or("-"),
                method = %r.about.method,
                id = r.about.id.as_deref().unwrap_or("-"),
                outcome = r.outcome,
                latency_ms = r.latency_ms,
                "mcp exchange"
            );
            self.audit.record_json_now(|out| r.write_json(out));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redact::{RedactConfig, Redactor};

    #[test]
    fn an_error_with_a_secret_is_read_whatever_the_method() {
        let r = Redactor::new(&RedactConfig::default()).unwrap();
        let error =
            br#"{"jsonrpc":"2.0","id":5,"error":{"code":-1,"message":"AKIAZ7QX3M2L5RT6PW4N"}}"#;
        for method in ["ping", "initialize", "completion/complete", "tools/call"] {
            let inspect = [(Id::Num(5), method.to_string())];
            assert!(must_read(error, &inspect, Some(&r)), "{method}");
        }
        let plain = br#"{"jsonrpc":"2.0","id":5,"result":{}}"#;
        assert!(!must_read(plain, &[(Id::Num(5), "ping".into())], Some(&r)));
        // Listings and task answers are read whatever they hold.
        assert!(must_read(plain, &[(Id::Num(5), "tools/list".into())], None));
        assert!(must_read(plain, &[(Id::Num(5), "tasks/get".into())], None));
        assert!(must_read(
            br#"{"id":5,"result":{"task":{"taskId":"t"}}}"#,
            &[(Id::Num(5), "tools/call".into())],
            None
        ));
    }
}
