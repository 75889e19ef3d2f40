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

use super::jsonrpc::{Id, Kind, Message};
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
pub(crate) fn guard_arguments(
    policy: &Policy,
    obs: &Observer,
    bytes: &[u8],
    messages: &[Message<'_>],
) -> Result<Guarded, String> {
    let mode = policy.request_redaction(obs.principal.name.as_deref(), &obs.server);
    if mode == RequestMode::Off {
        return Ok(Guarded {
            body: None,
            counts: Vec::new(),
        });
    }
    if let Some(guarded) = guard_requests(policy, mode, bytes, messages)? {
        return Ok(guarded);
    }
    // `jsonrpc::parse` refused what a Value cannot hold; should that ever disagree, the
    // call is refused rather than forwarded unscanned.
    let mut doc = serde_json::from_slice::<Value>(bytes)
        .map_err(|e| format!("what the agent sends could not be scanned for secrets: {e}"))?;
    let mut counts = Vec::new();
    {
        let items: Vec<&mut Value> = match &mut doc {
            Value::Array(a) => a.iter_mut().collect(),
            v => vec![v],
        };
        for v in items {
            let Some(method) = v.get("method").and_then(Value::as_str).map(str::to_owned) else {
                if v.get("result").is_some() || v.get("error").is_some() {
                    counts.extend(guard_answer(policy, mode, v));
                }
                continue;
            };
            let id = super::rewrite::id_of(&v["id"]);
            let Some(params) = v.get_mut("params") else {
                continue;
            };
            let (found, _) = guard_params(policy, mode, &method, params)?;
            if let (false, Some(id)) = (found.is_empty(), id) {
                counts.push((id, found));
            }
        }
    }
    if counts.is_empty() {
        return Ok(Guarded { body: None, counts });
    }
    Ok(Guarded {
        body: Some(serde_json::to_vec(&doc).expect("a JSON value always serialises")),
        counts,
    })
}

/// The common case, without parsing the body again: a POST of requests and notifications.
/// Params in whose text no trigger matches (and that hold no escape) carry nothing to find:
/// nothing more is read. Others are read as a JSON value and guarded; what was redacted is
/// written over its own bytes, the rest of the body kept as the agent sent it. None when
/// this cannot answer (an answer among the messages, a member whose place in the body is
/// not known): the whole body is then read as a JSON value.
fn guard_requests(
    policy: &Policy,
    mode: RequestMode,
    bytes: &[u8],
    messages: &[Message<'_>],
) -> Result<Option<Guarded>, String> {
    let mut counts = Vec::new();
    let mut edits: Vec<(Range<usize>, Vec<u8>)> = Vec::new();
    for m in messages {
        if !matches!(m.kind, Kind::Request | Kind::Notification) {
            return Ok(None);
        }
        let (Some(method), Some(params)) = (m.method.as_deref(), m.params) else {
            continue;
        };
        if !policy
            .redactor
            .might_redact_json_text(params.get().as_bytes())
        {
            continue;
        }
        let mut value: Value = serde_json::from_str(params.get())
            .map_err(|e| format!("the parameters of {method} could not be scanned: {e}"))?;
        let (found, rewritten) = guard_params(policy, mode, method, &mut value)?;
        let info = m.info_if_read();
        for key in rewritten {
            let raw = match key {
                ARGUMENTS => info.and_then(|i| i.arguments),
                _ => info.and_then(|i| i.input_responses),
            };
            let Some(at) = raw.and_then(|raw| within(bytes, raw)) else {
                return Ok(None);
            };
            let json = serde_json::to_vec(&value[key]).expect("a JSON value always serialises");
            edits.push((at, json));
        }
        if let (false, Some(id)) = (found.is_empty(), &m.id) {
            counts.push((id.clone(), found));
        }
    }
    let body = (!edits.is_empty()).then(|| spliced(bytes, edits));
    Ok(Some(Guarded { body, counts }))
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
/// learns the agent's answer was withheld and the data never leaves.
fn guard_answer(
    policy: &Policy,
    mode: RequestMode,
    v: &mut serde_json::Value,
) -> Option<(Id, Counts)> {
    // Compared as pairing compares ids (`1.0` is `1`); scanned whatever the id.
    let id = super::rewrite::id_of(&v["id"]);
    let part = if v.get("result").is_some() {
        "result"
    } else {
        "error"
    };
    let found = {
        let answer = v.get_mut(part)?;
        match mode {
            RequestMode::Refuse => policy.redactor.scan_json(answer),
            _ => policy.redactor.redact_json(answer),
        }
    };
    if found.is_empty() {
        return None;
    }
    if mode == RequestMode::Refuse {
        let what: Vec<String> = found.iter().map(|(d, n)| format!("{d} ×{n}")).collect();
        let why = format!(
            "the agent's answer carried secrets or personal data ({}); withheld by the \
             gateway (redact.mode_requests = \"refuse\")",
            what.join(", ")
        );
        *v = serde_json::json!({
            "jsonrpc": "2.0",
            "id": v["id"].take(),
            "error": { "code": super::reply::GATEWAY_EXFILTRATION, "message": why },
        });
    }
    Some((id?, found))
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
