//! A request the policy answers with `ask`: held for an administrator (see `approvals`),
//! with every step in the audit, then released or refused.

use std::time::SystemTime;

use serde_json::{json, Value};

use super::jsonrpc::Message;
use super::observe::Observer;
use super::reply::{GATEWAY_DENIED, GATEWAY_REFUSED};
use super::ConnCtx;
use crate::approvals::{Call, Outcome, Verdict};
use crate::audit::chain::sha256_hex;
use crate::audit::timestamp;
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
        rule: d.rule.clone(),
    }
}

async fn record(obs: &Observer, event: &str, id: Option<u64>, call: &Call, extra: Value) {
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
    obs.audit.record(&r).await;
}

/// Holds `m` until an administrator decides. `Ok` releases it; `Err` is the JSON-RPC code
/// and message the agent gets.
pub async fn ask(
    ctx: &ConnCtx,
    obs: &Observer,
    policy: &Policy,
    m: &Message<'_>,
    d: &Decision,
) -> Result<Verdict, (i32, String)> {
    let call = call_of(ctx, obs, policy, m, d);
    let (id, rx) = match ctx.approvals.hold(call.clone()) {
        Ok(held) => held,
        Err(Outcome::Granted(v)) => {
            record(obs, "granted", None, &call, json!({ "grant": v })).await;
            return Ok(v);
        }
        Err(Outcome::Full(n)) => {
            record(obs, "refused_full", None, &call, json!({})).await;
            return Err((
                GATEWAY_REFUSED,
                format!("{n} calls already wait for approval; try again later"),
            ));
        }
        Err(other) => unreachable!("hold returns only Granted or Full: {other:?}"),
    };
    tracing::warn!(id, tool = %call.tool, server = %call.server, principal = %call.principal,
        "call held for approval (mcp-gateway approvals list)");
    record(obs, "held", Some(id), &call, json!({})).await;
    match ctx.approvals.wait(id, rx).await {
        Outcome::Decided(v) if v.approved => Ok(v),
        Outcome::Decided(v) => Err((
            GATEWAY_DENIED,
            format!(
                "denied by an administrator (uid {}){}",
                v.by_uid,
                v.reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
        )),
        Outcome::TimedOut(t) => {
            record(obs, "timed_out", Some(id), &call, json!({})).await;
            Err((
                GATEWAY_DENIED,
                format!(
                    "this call needs an administrator's approval (rule {}), and none came within {} s",
                    d.rule,
                    t.as_secs()
                ),
            ))
        }
        Outcome::Full(_) | Outcome::Granted(_) => unreachable!("wait returns Decided or TimedOut"),
    }
}
