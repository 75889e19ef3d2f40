//! The audit record of one JSON-RPC exchange (a request and its response, or a lone
//! notification), and the principal summary every record carries.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use crate::audit::link::{ConnId, Via};
use crate::identity::Identity;

/// Who is talking, as the audit shows it on every MCP record.
#[derive(Debug, Clone, Serialize)]
pub struct Principal {
    /// The `[[principal]]` this process is, per the policy in force (none: unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The `[[principal]]` that could not be told for this process (a fact it selects by
    /// was not read): why `name` is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undecided: Option<String>,
    pub tgid: u32,
    /// The process's start time (with `tgid`, what identifies it; not recorded here: the
    /// flow record carries it). What an approval given to a process named for no program
    /// is bound to.
    #[serde(skip)]
    pub start_time: u64,
    pub uid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// Why `exe` is none when the kernel reported a file (`Identity::exe_unvouched`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe_unvouched: Option<crate::intercept::record::Unvouched>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// These fields as JSON, made when a record first needs them: every record of the
    /// connection carries the same. Set the fields before anything records this value (a
    /// clone starts without it, so clone, then change).
    #[serde(skip)]
    pub json: JsonOnce,
}

/// JSON made once, on first use; a clone starts empty.
#[derive(Debug, Default)]
pub struct JsonOnce(OnceLock<Box<RawValue>>);

impl Clone for JsonOnce {
    fn clone(&self) -> Self {
        Self::default()
    }
}

/// A principal as records show it: its JSON, made once (`Principal.json`).
pub struct PrincipalJson<'a>(pub &'a Arc<Principal>);

impl Serialize for PrincipalJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        principal_json(self.0, s)
    }
}

/// A principal on a record: its JSON, made once (`Principal.json`).
fn principal_json<S: Serializer>(p: &Arc<Principal>, s: S) -> Result<S::Ok, S::Error> {
    match p.json.0.get() {
        Some(raw) => {
            // The fields changed after their JSON was made: `json` would record a stale one.
            debug_assert_eq!(
                raw.get(),
                serde_json::to_string(&**p).expect("a principal serialises"),
                "a principal's fields changed after it was recorded"
            );
            raw.serialize(s)
        }
        None => match serde_json::value::to_raw_value(&**p) {
            Ok(raw) => p.json.0.get_or_init(|| raw).serialize(s),
            Err(_) => p.serialize(s),
        },
    }
}

impl Principal {
    pub fn of(id: &Identity) -> Self {
        Self {
            name: None,
            undecided: None,
            tgid: id.tgid,
            start_time: id.start_time,
            uid: id.uid,
            user: id.user.clone(),
            exe: id.exe.as_ref().map(|p| p.display().to_string()),
            exe_unvouched: id.exe_unvouched,
            unit: id.unit.clone(),
            cgroup: id.cgroup.clone(),
            json: JsonOnce::default(),
        }
    }

    /// What must match for a session to be used by this principal: the same user running
    /// the same program (another process of the same agent may share a session).
    pub fn session_owner(&self) -> super::session::Owner {
        super::session::Owner {
            uid: self.uid,
            label: format!("{}:{}", self.uid, self.exe.as_deref().unwrap_or("?")),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// A request (or notification) of the agent, answered by the server.
    ClientToServer,
    /// A request (or notification) of the server (sampling, elicitation, roots, progress).
    ServerToClient,
}

/// A request waiting for its response.
#[derive(Debug, Clone)]
pub struct PendingRequest {
    pub method: String,
    /// The connection the request came on, and who sent it: its record names those.
    pub via: Arc<Via>,
    pub principal: Arc<Principal>,
    pub name: Option<String>,
    pub started: Instant,
}

/// Who asked what of whom: what every MCP record carries.
#[derive(Debug, Clone, Serialize)]
pub struct Subject {
    pub time: String,
    /// The connection the request (or notification) came on, and how it was carried.
    #[serde(flatten)]
    pub via: Arc<Via>,
    #[serde(serialize_with = "principal_json")]
    pub principal: Arc<Principal>,
    pub server: Arc<str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<Arc<str>>,
    pub transport: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<Arc<str>>,
    pub method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// One finished exchange: a request with its response, or a notification. `record_json`
/// writes its JSON by hand, as this derive does: a field added here goes there too (its
/// test compares the two).
#[derive(Debug, Clone, Serialize)]
pub struct ExchangeRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(flatten)]
    pub about: Subject,
    pub direction: Direction,
    /// ok, error, notification, refused, upstream_error, no_response, unpaired_response,
    /// unpaired_request, malformed.
    pub outcome: &'static str,
    /// The connection the answer came on, when not the request's (a legacy SSE session's
    /// stream, an agent answering a server's request on a POST of its own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered_on: Option<ConnId>,
    /// What kind of refusal, when the gateway refused it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<super::refusal::Kind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// SHA-256 of the response's `result` as the server sent it (never the result itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_sha256: Option<String>,
    /// The policy decision about this request, when the gateway refused it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<crate::policy::Decision>,
    /// What was redacted from the response, per detector (counts, never the values).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redactions: Option<crate::redact::Counts>,
    /// Listing items hidden from this principal by the policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden: Option<usize>,
    /// What manifest pinning saw in a listing: pinned, held, removed, poisoned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pins: Option<Vec<crate::pins::PinEvent>>,
    /// What a result asking for input (2026-07-28) asked, each decided by the rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_requests: Option<Vec<super::input_required::Asked>>,
    /// SHA-256 of the result's `requestState`: the retry's `mcp_call` carries the same.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_state_sha256: Option<String>,
    /// The task this call's result handed out: its `tasks/*` records name it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
}

/// Written, durably, before a request is forwarded: the ledger holds every call the
/// server saw, even if the daemon dies before the response. Written by hand as
/// `ExchangeRecord` is (`record_json`).
#[derive(Debug, Serialize)]
pub struct CallRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(flatten)]
    pub about: Subject,
    /// SHA-256 of the request's `params` as sent (never the arguments themselves).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params_sha256: Option<String>,
    /// The policy decision that let it through (in audit mode, possibly a deny that was
    /// only recorded).
    pub decision: crate::policy::Decision,
    /// Secrets found in the arguments and redacted before forwarding, per detector.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argument_redactions: Option<crate::redact::Counts>,
    /// A retry (2026-07-28): SHA-256 of the `requestState` it returns, as on the result
    /// that asked for input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_state_sha256: Option<String>,
    /// The request headers the gateway set to its own credentials (names, never values).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Arc<[Box<str>]>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(principal: Arc<Principal>) -> serde_json::Value {
        serde_json::to_value(Subject {
            time: "t".into(),
            via: Via::plain("run-1".into()),
            principal,
            server: "s".into(),
            session: None,
            transport: "streamable_http",
            protocol_version: None,
            method: "tools/call".into(),
            name: None,
            id: None,
        })
        .unwrap()
    }

    /// The principal's JSON is made once; a clone renamed under a new policy (as
    /// `principal_under` does) carries its new name, not the JSON of the one it came from.
    #[test]
    fn a_principal_is_recorded_as_it_is_after_a_clone_and_rename() {
        let first = Arc::new(Principal {
            name: None,
            undecided: None,
            tgid: 7,
            start_time: 0,
            uid: 1000,
            user: Some("agent".into()),
            exe: Some("/usr/bin/agent".into()),
            exe_unvouched: None,
            unit: None,
            cgroup: Some("/agents".into()),
            json: JsonOnce::default(),
        });
        let plain = serde_json::json!({"tgid": 7, "uid": 1000, "user": "agent",
            "exe": "/usr/bin/agent", "cgroup": "/agents"});
        assert_eq!(subject(first.clone())["principal"], plain);
        // Made now, and used again.
        assert!(first.json.0.get().is_some());
        assert_eq!(subject(first.clone())["principal"], plain);

        let mut renamed = (*first).clone();
        renamed.name = Some("coder".into());
        let mut named = plain.clone();
        named["name"] = "coder".into();
        assert_eq!(subject(Arc::new(renamed))["principal"], named);
    }
}
