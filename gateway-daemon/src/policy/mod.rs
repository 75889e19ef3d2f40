//! The firewall's rule set: principals bound to kernel-attested identity, and rules per
//! principal × server × method × tool × arguments. Default deny: a process no principal
//! matches, and a call no rule allows, are refused (in `audit` mode, recorded instead).

pub mod filter;
pub mod limits;
pub mod principal;
pub mod rules;

use std::sync::{Arc, RwLock};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::{Action, Config, PolicyMode, RuleDirection};
use crate::identity::Identity;
use crate::redact::{RedactConfig, Redactor, RequestMode, ResponseMode};
use principal::{Match, Principal};
use rules::{Ask, Rule, Verdict};

/// A config key and what is wrong with it.
pub type Invalid = (String, String);

/// Methods every known principal may use on a server it has any allowing rule for: the
/// protocol's own plumbing (notifications too). A rule naming one explicitly still decides.
pub const LIFECYCLE: &[&str] = &[
    "initialize",
    "ping",
    "server/discover",
    "tools/list",
    "resources/list",
    "resources/templates/list",
    "prompts/list",
    "logging/setLevel",
    "completion/complete",
    "subscriptions/listen",
    // A task is its creator's alone (checked per request): the call that made it was
    // decided, and these only follow it.
    "tasks/get",
    "tasks/update",
    "tasks/cancel",
    "tasks/result",
];

pub struct Policy {
    pub mode: PolicyMode,
    principals: Vec<Principal>,
    rules: Vec<Rule>,
    /// Redaction reloads with the rules: one swap changes both.
    pub redactor: Arc<Redactor>,
    redact: RedactConfig,
    servers: Vec<crate::config::Server>,
    /// Which load of the rules this is (1 at start, +1 per reload): approvals are bound to
    /// it, so a changed policy never inherits an approval given under the old one.
    pub generation: u64,
}

/// The outcome of asking the policy about one request.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// allow, deny or ask.
    pub action: Action,
    /// The rule that decided, or the default that did.
    pub rule: Arc<str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// false in audit mode: a deny was recorded, not applied.
    pub enforced: bool,
}

impl Decision {
    pub fn allows(&self) -> bool {
        self.action == Action::Allow || !self.enforced
    }
}

impl Policy {
    pub fn compile(cfg: &Config) -> Result<Self, Invalid> {
        let principals = cfg
            .principals
            .iter()
            .enumerate()
            .map(|(i, p)| Principal::compile(i, p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut names = std::collections::HashSet::new();
        for (i, p) in principals.iter().enumerate() {
            if !names.insert(p.name.as_str()) {
                return Err((
                    format!("principal[{i}].name"),
                    format!("{:?} is defined twice", p.name),
                ));
            }
        }
        let rules = cfg
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| Rule::compile(i, r))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, r) in rules.iter().enumerate() {
            if r.principal != "*" && !names.contains(r.principal.as_str()) {
                return Err((
                    format!("rule[{i}].principal"),
                    format!("{:?} is not a [[principal]] name (or \"*\")", r.principal),
                ));
            }
        }
        let redactor = Redactor::new(&cfg.redact).map_err(|e| match e {
            crate::redact::RedactError::Config { key, message } => (key, message),
            other => ("redact".to_string(), other.to_string()),
        })?;
        Ok(Policy {
            mode: cfg.policy.mode,
            principals,
            rules,
            redactor: Arc::new(redactor),
            redact: cfg.redact.clone(),
            servers: cfg.servers.clone(),
            generation: 0,
        })
    }

    /// Whether decisions are enforced (not `audit` or `observe`).
    pub fn enforcing(&self) -> bool {
        self.mode == PolicyMode::Enforce
    }

    /// Whether the gateway only observes: nothing is changed or refused by policy, pins,
    /// redaction or limits.
    pub fn observing(&self) -> bool {
        self.mode == PolicyMode::Observe
    }

    /// The first principal `id` matches. None when none does, and when one before the
    /// first that does cannot be told (a fact it selects by is missing: the process exited
    /// or its files did not answer in time): a missing fact never moves a process past a
    /// principal to a later, broader one.
    pub fn principal_of(&self, id: &Identity) -> Option<&Principal> {
        self.place(id).ok().flatten()
    }

    /// As `principal_of`, and `Err` with the principal that could not be told.
    pub fn place(&self, id: &Identity) -> Result<Option<&Principal>, &Principal> {
        for p in &self.principals {
            match p.matches(id) {
                Match::Yes => return Ok(Some(p)),
                Match::No => {}
                Match::Unknown => {
                    tracing::info!(
                        principal = %p.name,
                        tgid = id.tgid,
                        missing = id.procfs_error.as_deref().unwrap_or("a fact it selects by"),
                        "principal undecided; the process is taken for none"
                    );
                    return Err(p);
                }
            }
        }
        Ok(None)
    }

    /// Whether a principal selects by the executable's hash (identities then carry it).
    pub fn wants_exe_hash(&self) -> bool {
        self.principals.iter().any(Principal::selects_by_hash)
    }

    fn decision(&self, action: Action, rule: Arc<str>, reason: Option<String>) -> Decision {
        Decision {
            action,
            rule,
            reason,
            enforced: self.mode == PolicyMode::Enforce,
        }
    }

    /// Decides a request of `principal` (None: unknown).
    pub fn decide(
        &self,
        principal: Option<&str>,
        server: &str,
        method: &str,
        name: Option<&str>,
        arguments: Option<&Value>,
        annotations: Option<&Map<String, Value>>,
    ) -> Decision {
        let Some(principal) = principal else {
            return self.decision(
                Action::Deny,
                "default: unknown principal".into(),
                Some("no [[principal]] matches this process".into()),
            );
        };
        let empty = Value::Object(Map::new());
        let ask = Ask {
            direction: RuleDirection::ClientToServer,
            principal,
            server,
            method,
            name,
            arguments: Some(arguments.unwrap_or(&empty)),
            annotations,
        };
        let mut near_miss = None;
        for r in &self.rules {
            match r.check(&ask) {
                Verdict::Match => return self.decision(r.action, r.label.clone(), None),
                Verdict::ArgumentsRejected(why) => {
                    near_miss.get_or_insert(format!("{} does not apply: {why}", r.label));
                }
                Verdict::NoMatch => {}
            }
        }
        let plumbing = LIFECYCLE.contains(&method) || method.starts_with("notifications/");
        if plumbing
            && self.rules.iter().any(|r| {
                r.direction == RuleDirection::ClientToServer
                    && r.action != Action::Deny
                    && r.covers(principal, server)
            })
        {
            return self.decision(Action::Allow, "default: protocol lifecycle".into(), None);
        }
        let what = name.map_or(String::new(), |n| format!(" {n}"));
        self.decision(
            Action::Deny,
            "default: deny".into(),
            Some(near_miss.unwrap_or_else(|| {
                format!("no rule allows {method}{what} for principal {principal} on {server}")
            })),
        )
    }

    /// Decides a request `server` sends to an agent of `principal` (sampling, elicitation,
    /// roots). Without a rule of that direction that matches, a server may ask what the
    /// protocol lets it ask of an agent that may use it; never of one no principal names.
    pub fn decide_server_request(
        &self,
        principal: Option<&str>,
        server: &str,
        method: &str,
    ) -> Decision {
        let Some(principal) = principal else {
            return self.decision(
                Action::Deny,
                "default: unknown principal".into(),
                Some("no [[principal]] matches the agent's process".into()),
            );
        };
        let ask = Ask {
            direction: RuleDirection::ServerToClient,
            principal,
            server,
            method,
            name: None,
            arguments: None,
            annotations: None,
        };
        if let Some(r) = self
            .rules
            .iter()
            .find(|r| matches!(r.check(&ask), Verdict::Match))
        {
            let reason = (r.action == Action::Deny).then(|| {
                format!(
                    "{method} from server {server} to principal {principal} is denied by {}",
                    r.label
                )
            });
            return self.decision(r.action, r.label.clone(), reason);
        }
        if self.rules.iter().any(|r| {
            r.direction == RuleDirection::ClientToServer
                && r.action != Action::Deny
                && r.covers(principal, server)
        }) {
            return self.decision(Action::Allow, "default: server request".into(), None);
        }
        self.decision(
            Action::Deny,
            "default: deny".into(),
            Some(format!(
                "principal {principal} may not use server {server}, so the server may not ask \
                 it for {method}"
            )),
        )
    }

    /// Whether any rule holds a server's requests for a person (so server messages are
    /// looked at for that).
    pub fn asks_server_requests(&self) -> bool {
        self.enforcing()
            && self
                .rules
                .iter()
                .any(|r| r.direction == RuleDirection::ServerToClient && r.action == Action::Ask)
    }

    /// Whether a listed item (tool, prompt, resource) is shown to `principal`: some rule
    /// would let it call the item with some arguments.
    pub fn visible(
        &self,
        principal: Option<&str>,
        server: &str,
        call_method: &str,
        name: &str,
        annotations: Option<&Map<String, Value>>,
    ) -> bool {
        let Some(principal) = principal else {
            return !self.enforcing();
        };
        let ask = Ask {
            direction: RuleDirection::ClientToServer,
            principal,
            server,
            method: call_method,
            name: Some(name),
            arguments: None,
            annotations,
        };
        let allowed = self
            .rules
            .iter()
            .find(|r| matches!(r.check(&ask), Verdict::Match))
            .is_some_and(|r| r.action != Action::Deny);
        allowed || !self.enforcing()
    }

    /// What to do with secrets in a call's arguments: the principal's override, else the
    /// server's, else `redact.mode_requests`.
    pub fn request_redaction(&self, principal: Option<&str>, server: &str) -> RequestMode {
        if self.observing() {
            return RequestMode::Off;
        }
        principal
            .and_then(|n| self.principal_limits(n))
            .and_then(|p| p.redact_requests)
            .or_else(|| {
                self.servers
                    .iter()
                    .find(|s| s.name == server)
                    .and_then(|s| s.redact_requests)
            })
            .unwrap_or(self.redact.mode_requests)
    }

    /// Whether responses from `server` are redacted.
    pub fn response_redaction(&self, server: &str) -> bool {
        !self.observing()
            && self
                .servers
                .iter()
                .find(|s| s.name == server)
                .and_then(|s| s.redact_responses)
                .unwrap_or(self.redact.mode_responses)
                == ResponseMode::Redact
    }

    /// Whether any rule can hold a call for a person (so exchanges must be able to outlive
    /// their HTTP request's first answer).
    pub fn has_ask(&self) -> bool {
        // (A server's request held for a person waits in its stream: see `server_ask`.)
        self.enforcing()
            && self
                .rules
                .iter()
                .any(|r| r.action == Action::Ask && r.direction == RuleDirection::ClientToServer)
    }

    /// Whether any rule constrains arguments: when none does, a call's arguments need not
    /// be parsed to decide it.
    pub fn uses_arguments(&self) -> bool {
        self.rules.iter().any(Rule::has_schema)
    }

    pub fn principal_limits(&self, name: &str) -> Option<&Principal> {
        self.principals.iter().find(|p| p.name == name)
    }
}

/// The policy in force; a reload swaps it whole, so every decision sees one consistent
/// rule set and open sessions keep going.
pub struct PolicyHandle(RwLock<Arc<Policy>>);

impl PolicyHandle {
    pub fn new(mut p: Policy) -> Self {
        p.generation = 1;
        Self(RwLock::new(Arc::new(p)))
    }

    pub fn current(&self) -> Arc<Policy> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn replace(&self, mut p: Policy) {
        let mut cur = self.0.write().unwrap_or_else(|p| p.into_inner());
        p.generation = cur.generation + 1;
        *cur = Arc::new(p);
    }
}

#[cfg(test)]
mod tests;
