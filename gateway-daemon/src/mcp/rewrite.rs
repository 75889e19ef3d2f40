//! The one place server messages are changed before the agent sees them: listings narrowed
//! to what the principal may use, and secrets redacted from tool results, resource contents
//! and prompts. A message nothing changes keeps its original bytes (the caller forwards
//! those when this returns None).

use serde_json::Value;

use super::jsonrpc::Id;
use crate::policy::filter::{filter_listing, listing, View};
use crate::redact::{Counts, Redactor};

/// Methods whose results carry content that is redacted.
pub fn carries_content(method: &str) -> bool {
    matches!(method, "tools/call" | "resources/read" | "prompts/get")
}

/// Whether the response to `method` is looked at before it is forwarded.
pub fn inspected(method: &str) -> bool {
    listing(method).is_some() || carries_content(method)
}

pub struct Rewritten {
    pub body: Vec<u8>,
    /// Redactions per response id.
    pub redactions: Vec<(Id, Counts)>,
    pub hidden: usize,
}

fn id_of(v: &Value) -> Option<Id> {
    match v {
        Value::Number(n) => n.as_i64().map(Id::Num),
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
    redactor: Option<&Redactor>,
) -> Option<Rewritten> {
    let mut doc: Value = serde_json::from_slice(body).ok()?;
    let mut out = Rewritten {
        body: Vec::new(),
        redactions: Vec::new(),
        hidden: 0,
    };
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
            let Some(result) = m.get_mut("result") else {
                continue;
            };
            out.hidden += filter_listing(method, result, view);
            if let (true, Some(r)) = (carries_content(method), redactor) {
                let counts = r.redact_json(result);
                if !counts.is_empty() {
                    out.redactions.push((id, counts));
                }
            }
        }
    }
    if out.hidden == 0 && out.redactions.is_empty() {
        return None;
    }
    out.body = serde_json::to_vec(&doc).expect("a JSON value always serialises");
    Some(out)
}
