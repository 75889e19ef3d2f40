//! Why the gateway refuses what an agent sent, as one type. Each kind carries the HTTP
//! status a server would answer it with, the JSON-RPC code the agent's client surfaces, the
//! metric it counts under and the kind the ledger records; `exchange` turns one into a
//! response in one place. Nothing decides on the text of a refusal.

use std::borrow::Cow;

use http::StatusCode;
use serde::Serialize;

use super::reply::{
    GATEWAY_DENIED, GATEWAY_EXFILTRATION, GATEWAY_LIMITED, GATEWAY_REFUSED, GATEWAY_UNPINNED,
    HEADER_MISMATCH, INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR, UNSUPPORTED_VERSION,
};
use super::session::SessionError;

/// The kind of a refusal, as metrics and the ledger name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Not JSON, not JSON-RPC, or not MCP the gateway can read unambiguously.
    Malformed,
    /// The body is larger than the gateway reads.
    TooLarge,
    /// Memory for bodies under inspection is spent (the agent's share, or everyone's).
    OverBudget,
    /// A session the agent may not use: another principal's, or one never opened.
    Session,
    /// A policy rule denies it.
    Policy,
    /// An administrator denied it.
    ApprovalDenied,
    /// It waited for an administrator's approval and none came.
    ApprovalTimeout,
    /// Too many calls already wait for approval.
    ApprovalsFull,
    /// The tool or prompt is not pinned (approved) on this server.
    Unpinned,
    /// The principal's rate or concurrency limit.
    RateLimit,
    /// Secrets or personal data in tool arguments, with `redact.mode_requests = "refuse"`.
    Exfiltration,
    /// More requests waiting for answers than `http.max_pending`.
    TooManyPending,
    /// A task id another principal's, or one the gateway never saw handed out.
    Task,
}

impl Kind {
    /// The label metrics count it under.
    pub fn metric(self) -> &'static str {
        match self {
            Kind::Malformed => "malformed",
            Kind::Policy => "policy",
            Kind::ApprovalDenied => "approval_denied",
            Kind::ApprovalTimeout => "approval_timeout",
            Kind::Unpinned => "unpinned",
            Kind::RateLimit => "rate_limit",
            Kind::Exfiltration => "exfiltration",
            Kind::TooLarge
            | Kind::OverBudget
            | Kind::Session
            | Kind::ApprovalsFull
            | Kind::TooManyPending
            | Kind::Task => "other",
        }
    }
}

/// A refusal: its kind, the HTTP status and JSON-RPC code it is answered with, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: Kind,
    pub status: StatusCode,
    pub code: i32,
    why: String,
}

/// The longest reason, in bytes: it may quote what the agent sent (a tool name), and it is
/// copied into every request's error and every message's record.
pub const MAX_WHY: usize = 1024;

impl Refusal {
    fn new(kind: Kind, status: StatusCode, code: i32, why: impl Into<String>) -> Self {
        Refusal {
            kind,
            status,
            code,
            why: why.into(),
        }
    }

    /// Not JSON (or nested too deep to read): JSON-RPC's parse error.
    pub fn not_json(why: impl Into<String>) -> Self {
        Self::new(Kind::Malformed, StatusCode::BAD_REQUEST, PARSE_ERROR, why)
    }

    /// JSON, but not a JSON-RPC request the gateway accepts.
    pub fn invalid(why: impl Into<String>) -> Self {
        Self::new(
            Kind::Malformed,
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            why,
        )
    }

    /// A request whose name, uri or `_meta` cannot be read unambiguously.
    pub fn ambiguous(why: impl Into<String>) -> Self {
        Self::new(
            Kind::Malformed,
            StatusCode::BAD_REQUEST,
            INVALID_PARAMS,
            why,
        )
    }

    /// Routing headers that say something else than the body.
    pub fn header_mismatch(why: impl Into<String>) -> Self {
        Self::new(
            Kind::Malformed,
            StatusCode::BAD_REQUEST,
            HEADER_MISMATCH,
            why,
        )
    }

    /// A task the agent may not use.
    pub fn task(e: &super::tasks::TaskError) -> Self {
        Self::new(
            Kind::Task,
            StatusCode::FORBIDDEN,
            GATEWAY_REFUSED,
            e.to_string(),
        )
    }

    /// A protocol version the gateway does not read.
    pub fn unsupported_version(why: impl Into<String>) -> Self {
        Self::new(
            Kind::Malformed,
            StatusCode::BAD_REQUEST,
            UNSUPPORTED_VERSION,
            why,
        )
    }

    pub fn too_large(why: impl Into<String>) -> Self {
        Self::new(
            Kind::TooLarge,
            StatusCode::PAYLOAD_TOO_LARGE,
            GATEWAY_REFUSED,
            why,
        )
    }

    pub fn over_budget(why: impl Into<String>) -> Self {
        Self::new(
            Kind::OverBudget,
            StatusCode::SERVICE_UNAVAILABLE,
            GATEWAY_LIMITED,
            why,
        )
    }

    /// A session refusal keeps the status a server would use: 404 for an unknown session
    /// is what makes clients start a new one.
    pub fn session(e: &SessionError) -> Self {
        let status = match e {
            SessionError::NotOwner { .. } => StatusCode::FORBIDDEN,
            SessionError::Unknown { .. } => StatusCode::NOT_FOUND,
            SessionError::Ambiguous { .. } => StatusCode::BAD_REQUEST,
        };
        Self::new(Kind::Session, status, GATEWAY_REFUSED, e.to_string())
    }

    pub fn policy(why: impl Into<String>) -> Self {
        Self::new(Kind::Policy, StatusCode::FORBIDDEN, GATEWAY_DENIED, why)
    }

    pub fn approval_denied(why: impl Into<String>) -> Self {
        Self::new(
            Kind::ApprovalDenied,
            StatusCode::FORBIDDEN,
            GATEWAY_DENIED,
            why,
        )
    }

    pub fn approval_timeout(why: impl Into<String>) -> Self {
        Self::new(
            Kind::ApprovalTimeout,
            StatusCode::FORBIDDEN,
            GATEWAY_DENIED,
            why,
        )
    }

    pub fn approvals_full(why: impl Into<String>) -> Self {
        Self::new(
            Kind::ApprovalsFull,
            StatusCode::FORBIDDEN,
            GATEWAY_REFUSED,
            why,
        )
    }

    pub fn unpinned(why: impl Into<String>) -> Self {
        Self::new(Kind::Unpinned, StatusCode::FORBIDDEN, GATEWAY_UNPINNED, why)
    }

    pub fn rate_limit(why: impl Into<String>) -> Self {
        Self::new(
            Kind::RateLimit,
            StatusCode::TOO_MANY_REQUESTS,
            GATEWAY_LIMITED,
            why,
        )
    }

    pub fn exfiltration(why: impl Into<String>) -> Self {
        Self::new(
            Kind::Exfiltration,
            StatusCode::FORBIDDEN,
            GATEWAY_EXFILTRATION,
            why,
        )
    }

    pub fn too_many_pending(why: impl Into<String>) -> Self {
        Self::new(
            Kind::TooManyPending,
            StatusCode::TOO_MANY_REQUESTS,
            GATEWAY_REFUSED,
            why,
        )
    }

    /// Whether the gateway read the request and decided against it: each request then gets
    /// its error the way the server's answer would have come. The rest are the transport's
    /// refusals, answered with their HTTP status as a server would.
    pub fn decided(&self) -> bool {
        !matches!(
            self.kind,
            Kind::Malformed | Kind::TooLarge | Kind::OverBudget | Kind::Session
        )
    }

    /// Why, bounded to `MAX_WHY` bytes.
    pub fn why(&self) -> Cow<'_, str> {
        let why = self.why.as_str();
        if why.len() <= MAX_WHY {
            return why.into();
        }
        let mut end = MAX_WHY;
        while !why.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}… ({} bytes)", &why[..end], why.len()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_status_code_and_metric() {
        let cases = [
            (Refusal::not_json("x"), 400, PARSE_ERROR, "malformed", false),
            (
                Refusal::invalid("x"),
                400,
                INVALID_REQUEST,
                "malformed",
                false,
            ),
            (
                Refusal::ambiguous("x"),
                400,
                INVALID_PARAMS,
                "malformed",
                false,
            ),
            (
                Refusal::header_mismatch("x"),
                400,
                HEADER_MISMATCH,
                "malformed",
                false,
            ),
            (
                Refusal::too_large("x"),
                413,
                GATEWAY_REFUSED,
                "other",
                false,
            ),
            (
                Refusal::over_budget("x"),
                503,
                GATEWAY_LIMITED,
                "other",
                false,
            ),
            (Refusal::policy("x"), 403, GATEWAY_DENIED, "policy", true),
            (
                Refusal::approval_denied("x"),
                403,
                GATEWAY_DENIED,
                "approval_denied",
                true,
            ),
            (
                Refusal::approval_timeout("x"),
                403,
                GATEWAY_DENIED,
                "approval_timeout",
                true,
            ),
            (
                Refusal::approvals_full("x"),
                403,
                GATEWAY_REFUSED,
                "other",
                true,
            ),
            (
                Refusal::unpinned("x"),
                403,
                GATEWAY_UNPINNED,
                "unpinned",
                true,
            ),
            (
                Refusal::rate_limit("x"),
                429,
                GATEWAY_LIMITED,
                "rate_limit",
                true,
            ),
            (
                Refusal::exfiltration("x"),
                403,
                GATEWAY_EXFILTRATION,
                "exfiltration",
                true,
            ),
            (
                Refusal::too_many_pending("x"),
                429,
                GATEWAY_REFUSED,
                "other",
                true,
            ),
        ];
        for (r, status, code, metric, decided) in cases {
            assert_eq!(
                (r.status.as_u16(), r.code, r.kind.metric(), r.decided()),
                (status, code, metric, decided),
                "{:?}",
                r.kind
            );
        }
    }

    #[test]
    fn a_long_reason_is_bounded_on_a_character_boundary() {
        let r = Refusal::policy("é".repeat(MAX_WHY));
        let why = r.why();
        assert!(why.len() < MAX_WHY + 32, "{}", why.len());
        assert!(why.ends_with(&format!("({} bytes)", 2 * MAX_WHY)));
    }
}
