//! The exfiltration guard: what the agent sends out (its calls' arguments, its answers to
//! a server's requests, a retry's `inputResponses`) is scanned for secrets and personal
//! data before it leaves the host, and refused or redacted as `redact.mode_requests` (or
//! the principal's or server's override) says.

use std::ops::Range;

use super::jsonrpc::{Id, Kind, Message};
use super::observe::Observer;
use super::record::Direction;
use crate::policy::Policy;
use crate::redact::{Counts, RequestMode};

/// What the exfiltration guard made of a POST's tool arguments.
pub(crate) struct Guarded {
    /// The body to forward instead, when arguments were redacted.
    pub body: Option<Vec<u8>>,
    /// Redactions per request id.
    pub counts: Vec<(Id, Counts)>,
}

/// Scans the arguments of the POST's tools/call requests per the principal's and server's
/// `redact` mode: `refuse` answers Err naming what was found (never the values), `redact`
/// returns a body with the secrets replaced by markers.
pub(crate) fn guard_arguments(
    policy: &Policy,
    obs: &Observer,
    bytes: &[u8],
    messages: &[Message<'_>],
) -> Result<Guarded, String> {
    let none = Guarded {
        body: None,
        counts: Vec::new(),
    };
    let mode = policy.request_redaction(obs.principal.name.as_deref(), &obs.server);
    // What the agent sends out: its calls' arguments, its answers to the server's requests
    // (an elicitation's answer, a sampling result, its roots; errors too), and a retry's
    // `inputResponses`. Decided by kind and method, never by the raw text: a key spelled
    // with an escape is the same key once parsed.
    let outgoing = messages.iter().any(|m| {
        matches!(m.kind, Kind::Response | Kind::Error)
            || matches!(
                m.method.as_deref(),
                Some("tools/call" | "prompts/get" | "resources/read")
            )
            || m.method
                .as_deref()
                .is_some_and(super::tasks::is_task_method)
    });
    if mode == RequestMode::Off || !outgoing {
        return Ok(none);
    }
    if let Some(guarded) = guard_calls(policy, mode, bytes, messages)? {
        return Ok(guarded);
    }
    // `jsonrpc::parse` refused what a Value cannot hold; should that ever disagree, the
    // call is refused rather than forwarded unscanned.
    let mut doc = serde_json::from_slice::<serde_json::Value>(bytes)
        .map_err(|e| format!("the arguments could not be scanned for secrets: {e}"))?;
    let mut counts = Vec::new();
    {
        let items: Vec<&mut serde_json::Value> = match &mut doc {
            serde_json::Value::Array(a) => a.iter_mut().collect(),
            v => vec![v],
        };
        for v in items {
            if v.get("method").is_none() && (v.get("result").is_some() || v.get("error").is_some())
            {
                if let Some(found) = guard_answer(policy, mode, v) {
                    counts.push(found);
                }
                continue;
            }
            // A retry's answers to what the server asked (2026-07-28) leave like answers
            // to a server's requests.
            if let Some(answers) = v
                .get_mut("params")
                .and_then(|p| p.get_mut("inputResponses"))
            {
                let found = match mode {
                    RequestMode::Refuse => policy.redactor.scan_json(answers),
                    _ => policy.redactor.redact_json(answers),
                };
                if !found.is_empty() {
                    if mode == RequestMode::Refuse {
                        let what: Vec<String> =
                            found.iter().map(|(d, n)| format!("{d} ×{n}")).collect();
                        return Err(format!(
                            "the answers to what the server asked (inputResponses) carry \
                             secrets or personal data ({}); refused so they do not leave the \
                             host (redact.mode_requests = \"refuse\")",
                            what.join(", ")
                        ));
                    }
                    if let Some(id) = super::rewrite::id_of(&v["id"]) {
                        counts.push((id, found));
                    }
                }
            }
            if v["method"] != "tools/call" {
                continue;
            }
            let id = match &v["id"] {
                serde_json::Value::Number(n) => n.as_i64().map(Id::Num),
                serde_json::Value::String(s) => Some(Id::Str(s.clone())),
                _ => None,
            };
            let tool = v["params"]["name"].as_str().unwrap_or("?").to_string();
            let Some(args) = v.get_mut("params").and_then(|p| p.get_mut("arguments")) else {
                continue;
            };
            let found = match mode {
                RequestMode::Refuse => policy.redactor.scan_json(args),
                _ => policy.redactor.redact_json(args),
            };
            if found.is_empty() {
                continue;
            }
            if mode == RequestMode::Refuse {
                return Err(refused_call(&tool, &found));
            }
            if let Some(id) = id {
                counts.push((id, found));
            }
        }
    }
    if counts.is_empty() {
        return Ok(none);
    }
    Ok(Guarded {
        body: Some(serde_json::to_vec(&doc).expect("a JSON value always serialises")),
        counts,
    })
}

/// The common case, without parsing the body again: a POST of requests and notifications
/// without a retry's answers, where only tools/call arguments go out. Each is scanned as the
/// policy read it (`Message::arguments`, one parse for both), and one redacted is written
/// over its own bytes, the rest of the body kept as the agent sent it. None when this
/// cannot answer (an answer among the messages, `inputResponses`, arguments that do not
/// parse): the whole body is then read as a JSON value.
fn guard_calls(
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
        let Some(info) = m.info_if_read() else {
            return Ok(None);
        };
        if info.input_responses {
            return Ok(None);
        }
        if m.method.as_deref() != Some("tools/call") {
            continue;
        }
        let Some(raw) = info.arguments else {
            continue;
        };
        let (Some(args), Some(at)) = (m.arguments(), within(bytes, raw)) else {
            return Ok(None);
        };
        let found = match mode {
            RequestMode::Refuse => policy.redactor.scan_json(args),
            _ if !policy.redactor.might_redact(args) => Counts::default(),
            _ => {
                let mut copy = args.clone();
                let found = policy.redactor.redact_json(&mut copy);
                if !found.is_empty() {
                    let json = serde_json::to_vec(&copy).expect("a JSON value always serialises");
                    edits.push((at, json));
                }
                found
            }
        };
        if found.is_empty() {
            continue;
        }
        if mode == RequestMode::Refuse {
            let tool = m.target_name();
            return Err(refused_call(tool.as_deref().unwrap_or("?"), &found));
        }
        if let Some(id) = &m.id {
            counts.push((id.clone(), found));
        }
    }
    let body = (!edits.is_empty()).then(|| spliced(bytes, edits));
    Ok(Some(Guarded { body, counts }))
}

/// Why a call whose arguments carry what `found` names is refused.
fn refused_call(tool: &str, found: &Counts) -> String {
    let what: Vec<String> = found.iter().map(|(d, n)| format!("{d} ×{n}")).collect();
    format!(
        "the arguments of tools/call {tool} carry secrets or personal data ({}); \
         refused so they do not leave the host (redact.mode_requests = \"refuse\")",
        what.join(", ")
    )
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
