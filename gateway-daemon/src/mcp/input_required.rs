//! Multi-round-trip requests (2026-07-28): a server that needs something of the client
//! before it can answer returns `resultType: "input_required"` with `inputRequests`
//! (sampling, elicitation, roots, each under a key) and an opaque `requestState`; the client
//! retries the request with `inputResponses` and the state. Each input request is what a
//! server request is in older versions, and is decided by the same `server_to_client`
//! rules: one denied, and the agent gets the call's error instead of the result (the server
//! is stateless here: it has nothing waiting to answer). The state goes back to the server
//! exactly as it came: it is never redacted, and its SHA-256 in the ledger ties the retry's
//! records to the result that asked.

use std::sync::LazyLock;

use memchr::memmem;
use serde::Serialize;
use serde_json::Value;

use crate::audit::chain::sha256_hex;
use crate::policy::filter::View;
use crate::policy::Decision;

pub const RESULT_TYPE: &str = "input_required";
const STATE: &str = "requestState";

/// One input request of a result, as the ledger shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Asked {
    pub key: String,
    pub method: String,
    pub decision: Decision,
}

/// What a result asking for input comes to.
pub enum Verdict {
    /// Passed on; what it asked.
    Pass(Vec<Asked>),
    /// Refused: the decision that refused it, and why.
    Refused(Decision, String, Vec<Asked>),
}

/// Whether `result` asks for input.
pub fn asks(method: &str, result: &Value) -> bool {
    result.get("resultType").and_then(Value::as_str) == Some(RESULT_TYPE)
        // A task waiting for input (tasks/get) carries its requests the same way.
        || (method == "tasks/get"
            && result.get("status").and_then(Value::as_str) == Some(RESULT_TYPE))
}

/// Decides each input request of `result` for the principal looking.
pub fn decide(result: &Value, view: &View) -> Verdict {
    let mut asked = Vec::new();
    let requests = result
        .get("inputRequests")
        .and_then(Value::as_object)
        .into_iter()
        .flatten();
    let mut refused = None;
    for (key, req) in requests {
        let method = req["method"].as_str().unwrap_or("").to_string();
        let d = view
            .policy
            .decide_server_request(view.principal, view.server, &method);
        if !d.allows() && refused.is_none() {
            let why = format!(
                "the server asked for {method} (input request {key:?}), which the gateway \
                 refuses: {}",
                d.reason.clone().unwrap_or_else(|| d.rule.to_string())
            );
            refused = Some((d.clone(), why));
        }
        asked.push(Asked {
            key: key.clone(),
            method,
            decision: d,
        });
    }
    match refused {
        Some((d, why)) => Verdict::Refused(d, why, asked),
        None => Verdict::Pass(asked),
    }
}

/// Takes the request state out of `value` (a result, or a retry's params) so that nothing
/// rewrites it; `restore` puts it back as it was.
pub fn take_state(value: &mut Value) -> Option<Value> {
    value.as_object_mut()?.remove(STATE)
}

pub fn restore(value: &mut Value, state: Option<Value>) {
    if let (Some(obj), Some(s)) = (value.as_object_mut(), state) {
        obj.insert(STATE.to_string(), s);
    }
}

/// The SHA-256 of a request state (a string as its UTF-8 text, else its JSON), which the
/// ledger holds on both the result that asked and the retry that answered.
pub fn state_digest(state: &Value) -> String {
    match state {
        Value::String(s) => sha256_hex(s.as_bytes()),
        other => sha256_hex(other.to_string().as_bytes()),
    }
}

/// Request states servers gave each user, by digest: a retry must return one of them. The
/// state is the one field of a request the gateway passes unread; bound to what the server
/// issued, it cannot carry anything else out.
#[derive(Default)]
pub struct Issued {
    map: std::sync::Mutex<
        std::collections::HashMap<(String, u32), std::collections::VecDeque<String>>,
    >,
}

/// States remembered per user and server (a retry returns one of the last few).
const ISSUED_PER_USER: usize = 256;

impl Issued {
    pub fn insert(&self, server: &str, uid: u32, digest: String) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let states = map.entry((server.to_string(), uid)).or_default();
        if states.len() >= ISSUED_PER_USER {
            states.pop_front();
        }
        states.push_back(digest);
    }

    pub fn contains(&self, server: &str, uid: u32, digest: &str) -> bool {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(server.to_string(), uid))
            .is_some_and(|s| s.iter().any(|d| d == digest))
    }
}

/// The request state digest of a request's raw params, when it carries one (a retry).
pub fn retry_state(params: &str) -> Option<String> {
    // (A key may be spelled with escapes: anything with one is parsed to know.) Searchers
    // built once: `str::contains` builds one per call, and every call's params pass here.
    static KEY: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(STATE));
    static ESCAPE: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new("\\u"));
    if KEY.find(params.as_bytes()).is_none() && ESCAPE.find(params.as_bytes()).is_none() {
        return None;
    }
    let v: Value = serde_json::from_str(params).ok()?;
    v.get(STATE).map(state_digest)
}
