//! What the running daemon answers on its admin socket: one operation per stage that an
//! administrator steers. Every change is written to the audit with the caller's uid.

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{json, Value};

use super::{Caller, Handler, HandlerFuture};
use crate::approvals::{Approvals, Widen};
use crate::audit::{timestamp, AuditSink};
use crate::pins::Pins;

/// What `status` reports that only the daemon's start knows.
pub struct Started {
    pub at: SystemTime,
    pub programs: Vec<String>,
    pub attach_cgroup: String,
    pub cgroups: Vec<String>,
    pub listeners: Vec<std::net::SocketAddr>,
    pub metrics_listen: Option<std::net::SocketAddr>,
}

pub struct Ops {
    pub started: Started,
    pub sessions: Arc<crate::mcp::Sessions>,
    pub pins: Arc<Pins>,
    pub approvals: Arc<Approvals>,
    pub audit: AuditSink,
}

fn arg<'a>(args: &'a Value, name: &str) -> Result<&'a str, String> {
    args.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing argument {name:?}"))
}

fn opt<'a>(args: &'a Value, name: &str) -> Option<&'a str> {
    args.get(name).and_then(Value::as_str)
}

impl Ops {
    async fn audit_change(&self, caller: &Caller, op: &str, server: &str, keys: &[String]) {
        self.audit
            .record(&json!({
                "type": "pins_admin",
                "time": timestamp(SystemTime::now()),
                "op": op,
                "server": server,
                "keys": keys,
                "by_uid": caller.uid,
                "by_pid": caller.pid,
            }))
            .await;
    }

    async fn run(&self, caller: &Caller, op: &str, args: Value) -> Result<Value, String> {
        let by = format!("uid {}", caller.uid);
        match op {
            "status" => {
                let pins = self.pins.list();
                let waiting = crate::status::pins_waiting(&pins)
                    .iter()
                    .map(|(_, n)| n.len())
                    .sum();
                let m = crate::metrics::global();
                m.set_pins_waiting(waiting);
                m.set_sessions(self.sessions.len());
                m.set_pending_approvals(self.approvals.pending());
                let s = &self.started;
                Ok(crate::status::report(crate::status::StatusParts {
                    started_at: s.at,
                    programs: s.programs.clone(),
                    attach_cgroup: s.attach_cgroup.clone(),
                    cgroups: s.cgroups.clone(),
                    listeners: s.listeners.clone(),
                    metrics_listen: s.metrics_listen,
                    sessions: self.sessions.per_owner(),
                    pins,
                    pending_approvals: self.approvals.pending() as u64,
                    stdio: crate::stdio::status(),
                }))
            }
            "pins.list" => Ok(self.pins.list()),
            "pins.diff" => self
                .pins
                .diff(arg(&args, "server")?)
                .map_err(|e| e.to_string()),
            "pins.approve" | "pins.reject" => {
                let server = arg(&args, "server")?;
                let name = opt(&args, "name");
                let keys = if op == "pins.approve" {
                    self.pins.approve(server, name, &by)
                } else {
                    self.pins.reject(server, name)
                }
                .map_err(|e| e.to_string())?;
                let verb = op.trim_start_matches("pins.");
                tracing::info!(server, ?keys, uid = caller.uid, "pins {verb}d");
                self.audit_change(caller, verb, server, &keys).await;
                Ok(json!({ "keys": keys }))
            }
            "pins.forget" => {
                let server = arg(&args, "server")?;
                let n = self.pins.forget(server).map_err(|e| e.to_string())?;
                tracing::info!(server, n, uid = caller.uid, "pins forgotten");
                self.audit_change(caller, "forget", server, &[]).await;
                Ok(json!({ "forgotten": n }))
            }
            "approvals.list" => Ok(self.approvals.list()),
            "approvals.approve" | "approvals.deny" => {
                let id = args
                    .get("id")
                    .and_then(Value::as_u64)
                    .ok_or("missing argument \"id\" (a number from `approvals list`)")?;
                let approved = op == "approvals.approve";
                let widen = match (
                    args.get("for_session").and_then(Value::as_bool),
                    args.get("for_s").and_then(Value::as_u64),
                ) {
                    (Some(true), Some(_)) => {
                        return Err("choose one of --for-session and --for".into())
                    }
                    (Some(true), None) => Widen::Session,
                    (_, Some(s)) => Widen::For(std::time::Duration::from_secs(s)),
                    _ => Widen::Call,
                };
                let reason = opt(&args, "reason").map(str::to_owned);
                let (call, verdict) = self
                    .approvals
                    .decide(id, approved, caller.uid, reason, widen)?;
                let event = if approved { "approved" } else { "denied" };
                tracing::info!(id, event, uid = caller.uid, tool = %call.tool, "approval decided");
                self.audit
                    .record(&json!({
                        "type": "approval",
                        "time": timestamp(SystemTime::now()),
                        "event": event,
                        "id": id,
                        "call": call,
                        "by_uid": caller.uid,
                        "by_pid": caller.pid,
                        "reason": verdict.reason,
                        "scope": verdict.scope,
                    }))
                    .await;
                Ok(json!({ "id": id, "event": event, "scope": verdict.scope, "tool": call.tool }))
            }
            other => Err(format!(
                "unknown operation {other:?} (this daemon answers pins.list, pins.diff, \
                 pins.approve, pins.reject, pins.forget, status, approvals.list, approvals.approve, \
                 approvals.deny)"
            )),
        }
    }
}

impl Handler for Ops {
    fn handle(&self, caller: &Caller, op: &str, args: Value) -> HandlerFuture<'_> {
        let caller = *caller;
        let op = op.to_string();
        Box::pin(async move { self.run(&caller, &op, args).await })
    }
}
