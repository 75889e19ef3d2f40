//! The exfiltration guard: what the agent sends out is scanned for secrets and personal
//! data before it leaves the host, and refused or redacted as `redact.mode_requests` (or
//! the principal's or server's override) says. That is every parameter of every request
//! and notification (a tool's or prompt's arguments, a URI, a name, `_meta`, a
//! cancellation's reason), its answers to a server's requests, and a retry's
//! `inputResponses`. `redact` rewrites what can be rewritten without changing what the
//! message addresses: arguments, answers, `inputResponses`. Anything found elsewhere (a
//! URI, a tool name) is refused in either mode: the policy decided on that value, and a
//! marker in it would address something else.

use std::ops::Range;

use serde_json::Value;

use super::jsonrpc::{Id, Message};
use super::observe::Observer;
use super::record::Direction;
use crate::policy::Policy;
use crate::redact::{Counts, RequestMode};

/// What the exfiltration guard made of what a POST sends out.
pub(crate) struct Guarded {
    /// The body to forward instead, when something was redacted.
    pub body: Option<Vec<u8>>,
    /// Redactions per request id.
    pub counts: Vec<(Id, Counts)>,
}

/// Scans what the POST's messages send out per the principal's and server's `redact`
/// mode: `refuse` answers Err naming what was found (never the values), `redact` returns a
/// body with the secrets replaced by markers (or Err for one it cannot replace).
///
/// A body in whose text no trigger matches, and that holds no escape, carries nothing to
/// find: nothing more is read (the common case). Any other is read as a JSON value, every
/// member of every message. What was redacted in a request is written over its own bytes,
/// the rest of the body kept as the agent sent it; a rewritten answer re-serialises the
/// body.
pub(crate) fn guard_arguments(
    policy: &Policy,
    obs: &Observer,
    bytes: &[u8],
    messages: &[Message<'_>],
) -> Result<Guarded, String> {
    let mut guarded = Guarded {
        body: None,
        counts: Vec::new(),
    };
    let mode = policy.request_redaction(obs.principal.name.as_deref(), &obs.server);
    if mode == RequestMode::Off || !policy.redactor.might_redact_json_text(bytes) {
        return Ok(guarded);
    }
    // `jsonrpc::parse` refused what a Value cannot hold; should that ever disagree, the
    // message is refused rather than forwarded unscanned.
    let mut doc = serde_json::from_slice::<Value>(bytes)
        .map_err(|e| format!("what the agent sends could not be scanned for secrets: {e}"))?;
    let items: Vec<&mut Value> = match &mut doc {
        Value::Array(a) => a.iter_mut().collect(),
        v => vec![v],
    };
    // Each item is the message `jsonrpc::parse` read at the same place: its raw members
    // say where a rewritten one lies in the body.
    let mut placed = items.len() == messages.len();
    let mut edits: Vec<(Range<usize>, Vec<u8>)> = Vec::new();
    let mut changed = false;
    for (i, v) in items.into_iter().enumerate() {
        guard_envelope(policy, mode, v)?;
        let id = super::rewrite::id_of(&v["id"]);
        let Some(method) = v.get("method").and_then(Value::as_str).map(str::to_owned) else {
            if v.get("result").is_some() || v.get("error").is_some() {
                if let Some(found) = guard_answer(policy, mode, v) {
                    changed = true;
                    placed = false;
                    guarded.counts.extend(id.map(|id| (id, found)));
                }
            }
            continue;
        };
        let Some(params) = v.get_mut("params") else {
            continue;
        };
        let (found, rewritten) = guard_params(policy, mode, &method, params)?;
        for key in rewritten {
            changed = true;
            let info = messages
                .get(i)
                .filter(|_| placed)
                .and_then(|m| m.info_if_read());
            let raw = match key {
                ARGUMENTS => info.and_then(|i| i.arguments),
                _ => info.and_then(|i| i.input_responses),
            };
            match raw.and_then(|raw| within(bytes, raw)) {
                Some(at) => edits.push((
                    at,
                    serde_json::to_vec(&params[key]).expect("a JSON value always serialises"),
                )),
                None => placed = false,
            }
        }
        if let (false, Some(id)) = (found.is_empty(), id) {
            guarded.counts.push((id, found));
        }
    }
    if changed {
        guarded.body = Some(if placed {
            spliced(bytes, edits)
        } else {
            serde_json::to_vec(&doc).expect("a JSON value always serialises")
        });
    }
    Ok(guarded)
}

/// Everything of a message but what `guard_params` and `guard_answer` look at: its id, its
/// method and any member JSON-RPC does not name, which a server receives as sent. Nothing
/// there can be rewritten without changing what the message is: a find is refused.
fn guard_envelope(policy: &Policy, mode: RequestMode, v: &Value) -> Result<(), String> {
    let Value::Object(map) = v else {
        return Ok(());
    };
    let method = map.get("method").and_then(Value::as_str);
    let label = method.unwrap_or("an answer");
    for (key, member) in map {
        // What `guard_params` (a request's params) or `guard_answer` (an answer's result
        // or error) reads; an answer's `params`, say, is read here.
        let elsewhere = match method {
            Some(_) => key == "params",
            None => key == "result" || key == "error",
        };
        if elsewhere {
            continue;
        }
        let mut found = policy.redactor.scan_str(key);
        found.merge(&policy.redactor.scan_json(member));
        refused_if_any(&found, label, &format!("{key:?} member"), mode, false)?;
    }
    Ok(())
}

const ARGUMENTS: &str = "arguments";
const INPUT_RESPONSES: &str = "inputResponses";

/// Guards one request's or notification's `params`: the arguments of a tool or prompt and
/// a retry's `inputResponses` are redacted (`redact`) or refused (`refuse`); a find in any
/// other parameter, or in a parameter's name, is refused in either mode. Returns what was
/// redacted, and in which of those two members.
fn guard_params(
    policy: &Policy,
    mode: RequestMode,
    method: &str,
    params: &mut Value,
) -> Result<(Counts, Vec<&'static str>), String> {
    let r = &policy.redactor;
    let label = match params.get("name").and_then(Value::as_str) {
        Some(name) if matches!(method, "tools/call" | "prompts/get") => {
            format!("{method} {name}")
        }
        _ => method.to_string(),
    };
    let Value::Object(map) = params else {
        // Positional params: nothing in them can be rewritten in place.
        return refused_if_any(&r.scan_json(params), &label, "parameters", mode, false)
            .map(|()| (Counts::default(), Vec::new()));
    };
    let mut redacted = Counts::default();
    let mut rewritten = Vec::new();
    for (key, v) in map.iter_mut() {
        let member = match key.as_str() {
            INPUT_RESPONSES => Some(INPUT_RESPONSES),
            ARGUMENTS if matches!(method, "tools/call" | "prompts/get") => Some(ARGUMENTS),
            _ => None,
        };
        refused_if_any(&r.scan_str(key), &label, "parameter names", mode, false)?;
        match member {
            Some(member) if mode == RequestMode::Redact => {
                // Keys stay as they are in `redact`: one that holds a secret is refused.
                refused_if_any(&r.scan_keys(v), &label, "keys", mode, false)?;
                let found = r.redact_json(v);
                if !found.is_empty() {
                    redacted.merge(&found);
                    rewritten.push(member);
                }
            }
            Some(INPUT_RESPONSES) => refused_if_any(
                &r.scan_json(v),
                &label,
                "answers to what the server asked (inputResponses)",
                mode,
                true,
            )?,
            Some(_) => refused_if_any(&r.scan_json(v), &label, "arguments", mode, true)?,
            None => refused_if_any(
                &r.scan_json(v),
                &label,
                &format!("{key:?} parameter"),
                mode,
                false,
            )?,
        }
    }
    Ok((redacted, rewritten))
}

/// Err naming the detectors that found something (never the values), when any did.
/// `rewritable`: whether `redact` would have rewritten it, so only `refuse` refused it.
fn refused_if_any(
    found: &Counts,
    label: &str,
    what: &str,
    mode: RequestMode,
    rewritable: bool,
) -> Result<(), String> {
    if found.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = found.iter().map(|(d, n)| format!("{d} ×{n}")).collect();
    let why = if mode == RequestMode::Refuse || rewritable {
        "redact.mode_requests = \"refuse\""
    } else {
        "only a tool's or prompt's arguments and a retry's answers are redacted; a secret \
         anywhere else is refused"
    };
    Err(format!(
        "the {what} of {label} carry secrets or personal data ({}); refused so they do not \
         leave the host ({why})",
        list.join(", ")
    ))
}

/// Where `part`, borrowed from `whole`, lies in it.
fn within(whole: &[u8], part: &str) -> Option<Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= whole.len()).then_some(start..end)
}

/// `bytes` with each range replaced.
fn spliced(bytes: &[u8], mut edits: Vec<(Range<usize>, Vec<u8>)>) -> Vec<u8> {
    edits.sort_by_key(|(r, _)| r.start);
    let mut out = Vec::with_capacity(bytes.len() + 64 * edits.len());
    let mut at = 0;
    for (range, with) in edits {
        out.extend_from_slice(&bytes[at..range.start]);
        out.extend_from_slice(&with);
        at = range.end;
    }
    out.extend_from_slice(&bytes[at..]);
    out
}

/// The agent's answer to a server request, scanned like a call's arguments: `redact`
/// replaces what was found; `refuse` replaces the answer with an error, so the server
/// learns the agent's answer was withheld and the data never leaves. Some when it changed.
fn guard_answer(policy: &Policy, mode: RequestMode, v: &mut Value) -> Option<Counts> {
    // Scanned whatever the id: one no request has is still sent.
    let part = if v.get("result").is_some() {
        "result"
    } else {
        "error"
    };
    let r = &policy.redactor;
    let answer = v.get_mut(part)?;
    // Keys stay as they are in `redact`: an answer with a secret in one is withheld.
    let withhold = mode == RequestMode::Refuse || !r.scan_keys(answer).is_empty();
    let found = if withhold {
        r.scan_json(answer)
    } else {
        r.redact_json(answer)
    };
    if found.is_empty() {
        return None;
    }
    if withhold {
        let what: Vec<String> = found.iter().map(|(d, n)| format!("{d} ×{n}")).collect();
        let why = format!(
            "the agent's answer carried secrets or personal data ({}); withheld by the \
             gateway (redact.mode_requests = \"{}\")",
            what.join(", "),
            if mode == RequestMode::Refuse {
                "refuse"
            } else {
                "redact"
            }
        );
        *v = serde_json::json!({
            "jsonrpc": "2.0",
            "id": v["id"].take(),
            "error": { "code": super::reply::GATEWAY_EXFILTRATION, "message": why },
        });
    }
    Some(found)
}

impl Guarded {
    /// Notes what was taken out of the agent's answers on their records.
    pub(crate) fn mark(&self, records: &mut [super::record::ExchangeRecord]) {
        for r in records
            .iter_mut()
            .filter(|r| r.direction == Direction::ServerToClient)
        {
            if let Some((_, c)) = self
                .counts
                .iter()
                .find(|(id, _)| r.about.id.as_deref() == Some(&id.to_string()))
            {
                r.redactions = Some(c.clone());
            }
        }
    }
}
