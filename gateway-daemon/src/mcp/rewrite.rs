//! The one place server messages are changed before the agent sees them: listings narrowed
//! to what the principal may use, and secrets redacted from tool results, resource contents
//! and prompts. A message nothing changes keeps its original bytes (the caller forwards
//! those when this returns None).

use serde_json::Value;

use super::input_required::{self, Verdict};
use super::jsonrpc::Id;
use crate::pins::{Kind, PinEvent, Pins};
use crate::policy::filter::{filter_listing, listing, View};
use crate::redact::{Counts, Redactor};

/// Methods whose results carry content that is redacted.
pub fn carries_content(method: &str) -> bool {
    matches!(
        method,
        "tools/call"
            | "resources/read"
            | "prompts/get"
            | "tasks/get"
            | "tasks/update"
            | "tasks/result"
    )
}

pub struct Rewritten {
    /// The new body, when anything in it changed.
    pub body: Option<Vec<u8>>,
    /// Redactions per response id.
    pub redactions: Vec<(Id, Counts)>,
    pub hidden: usize,
    /// What pinning saw in listings (reported even when nothing was hidden).
    pub pin_events: Vec<PinEvent>,
    /// Results that asked for input (2026-07-28), per response id.
    pub inputs: Vec<(Id, Inputs)>,
    /// Task handles results gave out (2026-07-28 tasks extension), per response id.
    pub tasks: Vec<(Id, String)>,
}

/// What a result asking for input asked, and whether it was refused.
pub struct Inputs {
    pub asked: Vec<input_required::Asked>,
    pub state_sha256: Option<String>,
    /// The decision that refused it, and why.
    pub refused: Option<(crate::policy::Decision, String)>,
}

/// The id as JSON-RPC compares it: by value, so `2.0` answers request `2` (as pairing and
/// clients read it); a response that is not looked at would pass pins and redaction.
pub(crate) fn id_of(v: &Value) -> Option<Id> {
    match v {
        Value::Number(n) => super::jsonrpc::integer_value(&n.to_string()).map(Id::Num),
        Value::String(s) => Some(Id::Str(s.clone())),
        _ => None,
    }
}

/// Rewrites the responses in `body` (one message or a batch) that answer `inspect`
/// (request id, method).
pub fn rewrite(
    body: &[u8],
    inspect: &[(Id, String)],
    view: &View,
    pins: &Pins,
    redactor: Option<&Redactor>,
) -> Option<Rewritten> {
    let mut doc: Value = serde_json::from_slice(body).ok()?;
    let mut out = Rewritten {
        body: None,
        redactions: Vec::new(),
        hidden: 0,
        pin_events: Vec::new(),
        inputs: Vec::new(),
        tasks: Vec::new(),
    };
    let mut refused_any = false;
    {
        let messages: Vec<&mut Value> = match &mut doc {
            Value::Array(a) => a.iter_mut().collect(),
            v => vec![v],
        };
        for m in messages {
            let Some(id) = id_of(&m["id"]) else { continue };
            let Some((_, method)) = inspect.iter().find(|(i, _)| *i == id) else {
                continue;
            };
            // A server's error says what it likes in `message` and `data`: redacted like a
            // result before the agent (and its model) reads it.
            if let (Some(error), Some(r)) = (m.get_mut("error"), redactor) {
                let counts = r.redact_json(error);
                if !counts.is_empty() {
                    out.redactions.push((id, counts));
                }
                continue;
            }
            let Some(result) = m.get_mut("result") else {
                continue;
            };
            if let Some(task) = super::tasks::created(result) {
                out.tasks.push((id.clone(), task));
            }
            let asks = input_required::asks(method, result);
            // The state goes back to the server as it came: nothing rewrites it.
            let state = if asks {
                input_required::take_state(result)
            } else {
                None
            };
            let mut inputs = None;
            if asks {
                let state_sha256 = state.as_ref().map(input_required::state_digest);
                match input_required::decide(result, view) {
                    Verdict::Refused(d, why, asked) if d.enforced => {
                        *m = serde_json::json!({
                            "jsonrpc": "2.0",
                            "id": m["id"].take(),
                            "error": {"code": super::reply::GATEWAY_DENIED, "message": why},
                        });
                        refused_any = true;
                        let refused = Some((d, why));
                        out.inputs.push((
                            id,
                            Inputs {
                                asked,
                                state_sha256,
                                refused,
                            },
                        ));
                        continue;
                    }
                    Verdict::Refused(_, _, asked) | Verdict::Pass(asked) => {
                        inputs = Some(Inputs {
                            asked,
                            state_sha256,
                            refused: None,
                        });
                    }
                }
            }
            // Pins first: a held definition is hidden from everyone, whatever the policy
            // (an observing gateway reviews and audits, and hides nothing). Whatever else
            // a result says it is, a listing's items are reviewed.
            let hide = !view.policy.observing();
            out.hidden += review_pins(method, result, view.server, pins, hide, &mut out.pin_events);
            out.hidden += filter_listing(method, result, view);
            // What the server asks the agent's model or user is server content too.
            if let (true, Some(r)) = (carries_content(method) || asks, redactor) {
                let counts = r.redact_json(result);
                if !counts.is_empty() {
                    out.redactions.push((id.clone(), counts));
                }
            }
            input_required::restore(result, state);
            if let Some(inputs) = inputs {
                out.inputs.push((id, inputs));
            }
        }
    }
    if out.hidden > 0 || !out.redactions.is_empty() || refused_any {
        out.body = Some(serde_json::to_vec(&doc).expect("a JSON value always serialises"));
    }
    Some(out)
}

/// Hands a listing to the pins and removes what they hold; returns how many.
fn review_pins(
    method: &str,
    result: &mut Value,
    server: &str,
    pins: &Pins,
    hide: bool,
    events: &mut Vec<PinEvent>,
) -> usize {
    let (Some((kind, name_field)), Some((field, _, _))) =
        (Kind::of_listing(method), listing(method))
    else {
        return 0;
    };
    let Some(items) = result.get_mut(field).and_then(Value::as_array_mut) else {
        return 0;
    };
    let review = pins.review(server, kind, name_field, items);
    events.extend(review.events);
    if !hide || review.hide.is_empty() {
        return 0;
    }
    let before = items.len();
    items.retain(|i| {
        i[name_field]
            .as_str()
            .is_none_or(|n| !review.hide.contains(n))
    });
    before - items.len()
}
