//! A server's request that a `server_to_client` rule answers with `ask` (an elicitation
//! from a server a person should vet first): held for an administrator like a call, the
//! agent's stream waiting behind it, then passed on or answered to the server with the
//! refusal. Only a request that comes alone (one message, not a batch) can be held; one in
//! a batch or a JSON body is refused, never passed unasked.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{json, Value};

use super::ask::record;
use super::jsonrpc::{self, Id, Kind, Parsed};
use super::observe::Observer;
use super::refusal::Refusal;
use crate::approvals::{Approvals, Call, Outcome};
use crate::audit::chain::sha256_hex;
use crate::audit::AuditSink;
use crate::policy::Decision;

/// The wait for a person's verdict.
type Verdict = Pin<Box<dyn Future<Output = Result<(), Refusal>> + Send>>;

/// A server request held for a person.
pub struct Held {
    pub id: Id,
    pub method: String,
    pub decision: Decision,
    /// Resolves when the administrator (or the timeout) has decided. (In a mutex: the
    /// agent's body must be Sync, and only its own task polls it.)
    pub wait: std::sync::Mutex<Verdict>,
}

impl Held {
    pub fn poll(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Refusal>> {
        let mut w = self.wait.lock().unwrap_or_else(|p| p.into_inner());
        w.as_mut().poll(cx)
    }
}

/// Whether `data` (one server message) is a request an `ask` rule holds; if so, holds it.
pub fn held(obs: &Observer, data: &[u8]) -> Option<Held> {
    let v = obs.view.as_ref()?;
    if !v.policy.asks_server_requests() {
        return None;
    }
    let Ok(Parsed::Single(m)) = jsonrpc::parse(data, super::MAX_DEPTH) else {
        return None;
    };
    let (Kind::Request, Some(id), Some(method)) = (m.kind, m.id.clone(), m.method.as_deref())
    else {
        return None;
    };
    if obs.approved.as_ref() == Some(&id) {
        return None;
    }
    let d = v
        .policy
        .decide_server_request(obs.principal.name.as_deref(), &obs.server, method);
    if d.action != crate::config::Action::Ask || !d.enforced {
        return None;
    }
    let mut shown = m
        .params
        .and_then(|p| serde_json::from_str::<Value>(p.get()).ok())
        .unwrap_or(Value::Null);
    v.policy.redactor.redact_json(&mut shown);
    let p = &obs.principal;
    let call = Call {
        connection: obs.via.connection.clone(),
        principal: p.name.clone().unwrap_or_else(|| "unknown".into()),
        uid: p.uid,
        tgid: p.tgid,
        start_time: p.start_time,
        exe: p.exe.clone(),
        server: obs.server.to_string(),
        method: method.to_string(),
        // What a grant (`--for-session`, `--for`) covers: this kind of request only.
        tool: method.to_string(),
        arguments_sha256: sha256_hex(m.params.map(|p| p.get()).unwrap_or("").as_bytes()),
        arguments: shown,
        session: obs.session.as_ref().map(|s| s.id.to_string()),
        policy_generation: v.policy.generation,
        rule: d.rule.to_string(),
    };
    let wait = Box::pin(wait(
        v.approvals.clone(),
        obs.audit.clone(),
        call,
        d.rule.to_string(),
    ));
    Some(Held {
        id,
        method: method.to_string(),
        decision: d,
        wait: std::sync::Mutex::new(wait),
    })
}

async fn wait(
    approvals: Arc<Approvals>,
    audit: AuditSink,
    call: Call,
    rule: String,
) -> Result<(), Refusal> {
    let (id, rx) = match approvals.hold(call.clone()) {
        Ok(held) => held,
        Err(Outcome::Granted(_)) => {
            record(&audit, "granted", None, &call, json!({})).await;
            return Ok(());
        }
        Err(Outcome::Full(n)) => {
            record(&audit, "refused_full", None, &call, json!({})).await;
            return Err(Refusal::approvals_full(format!(
                "{n} requests already wait for approval"
            )));
        }
        Err(other) => unreachable!("hold returns only Granted or Full: {other:?}"),
    };
    tracing::warn!(id, method = %call.method, server = %call.server, principal = %call.principal,
        "server request held for approval (mcp-gateway approvals list)");
    record(&audit, "held", Some(id), &call, json!({})).await;
    match approvals.wait(id, rx).await {
        Outcome::Decided(v) if v.approved => Ok(()),
        Outcome::Decided(v) => Err(Refusal::approval_denied(format!(
            "{} from server {} was denied by an administrator (uid {}){}",
            call.method,
            call.server,
            v.by_uid,
            v.reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ))),
        Outcome::TimedOut(t) => {
            record(&audit, "timed_out", Some(id), &call, json!({})).await;
            Err(Refusal::approval_timeout(format!(
                "{} from server {} needs an administrator's approval (rule {rule}), and none \
                 came within {} s",
                call.method,
                call.server,
                t.as_secs()
            )))
        }
        Outcome::Full(_) | Outcome::Granted(_) => unreachable!("wait returns Decided or TimedOut"),
    }
}
