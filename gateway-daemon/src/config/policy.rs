//! The rule set's TOML: `[policy]`, `[[principal]]` and `[[rule]]`. Compiled and checked by
//! `crate::policy` (bad globs and schemas are config errors that name the key).

use serde::Deserialize;

use super::UserRef;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    /// Decisions are enforced: anything no rule allows is denied.
    #[default]
    Enforce,
    /// Everything is allowed; what would have been denied is recorded as such.
    Audit,
    /// A pure observer, for rolling the gateway out: as `Audit`, and nothing else changes
    /// or refuses traffic either — no redaction (responses or arguments), no definition
    /// hidden or refused by pins (their events are still audited, and what a later enforce
    /// would hold waits in `pins list`), no rate limit, no call held for approval.
    Observe,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    #[serde(default)]
    pub mode: PolicyMode,
}

/// A named set of selectors over the kernel-attested identity. Every selector given must
/// match (a list matches when any entry does); the first principal that matches wins.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    pub name: String,
    #[serde(default)]
    pub users: Vec<UserRef>,
    #[serde(default)]
    pub groups: Vec<UserRef>,
    /// Executable path globs (the process's /proc/PID/exe).
    #[serde(default)]
    pub exe: Vec<String>,
    /// SHA-256 (hex) of the executable's content.
    #[serde(default)]
    pub exe_sha256: Vec<String>,
    /// cgroup path globs (as in /proc/PID/cgroup, e.g. "/mcp-agents.slice/*").
    #[serde(default)]
    pub cgroup: Vec<String>,
    /// systemd unit globs (derived from the cgroup path).
    #[serde(default)]
    pub unit: Vec<String>,
    /// comm globs. The process sets its own comm: a label, never enough alone.
    #[serde(default)]
    pub comm: Vec<String>,
    /// Calls allowed per `rate_window_s` (0: no limit).
    #[serde(default)]
    pub rate_calls: u32,
    #[serde(default = "default_rate_window")]
    pub rate_window_s: u64,
    /// Calls in flight at once (0: no limit).
    #[serde(default)]
    pub max_concurrent: u32,
    /// Overrides `redact.mode_requests` (and the server's) for this principal.
    #[serde(default)]
    pub redact_requests: Option<crate::redact::RequestMode>,
}

fn default_rate_window() -> u64 {
    super::defaults::RATE_WINDOW_S
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
    /// Hold the call for an administrator (`mcp-gateway approvals`); denied when nobody
    /// answers within `approvals.timeout_s`.
    Ask,
}

impl Action {
    /// As the config and the ledger spell it.
    pub fn name(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Ask => "ask",
        }
    }
}

/// One rule; rules are tried in order and the first that matches decides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Principal name, or "*" for every known principal.
    pub principal: String,
    /// Server name (or host:port) glob; "*" for all.
    #[serde(default = "star")]
    pub server: String,
    /// Methods this rule decides (e.g. tools/call, resources/read, prompts/get).
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Tool or prompt name / resource uri globs; every name when absent.
    #[serde(default)]
    pub tools: Vec<String>,
    pub action: Action,
    /// JSON Schema the call's arguments must satisfy for this rule to apply.
    #[serde(default)]
    pub arguments: Option<toml::Value>,
    /// Tool annotations the tool must have declared (e.g. { readOnlyHint = true }).
    #[serde(default)]
    pub annotations: Option<toml::Table>,
    /// Whose requests the rule decides: the agent's (default) or those a server sends the
    /// agent (sampling, elicitation, roots).
    #[serde(default)]
    pub direction: RuleDirection,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleDirection {
    /// Requests an agent sends its server (tools/call, resources/read, ...).
    #[default]
    ClientToServer,
    /// Requests a server sends the agent (sampling/createMessage, elicitation/create,
    /// roots/list).
    ServerToClient,
}

fn star() -> String {
    super::defaults::RULE_SERVER.into()
}

fn default_methods() -> Vec<String> {
    super::defaults::RULE_METHODS
        .iter()
        .map(|m| m.to_string())
        .collect()
}
