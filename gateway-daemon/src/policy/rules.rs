//! Rules: the first rule whose principal, server, method, name, annotations and argument
//! schema all match decides.

use globset::GlobSet;
use jsonschema::Validator;
use serde_json::{Map, Value};

use super::principal::globs;
use super::Invalid;
use crate::config::{Action, RuleConfig, RuleDirection};

/// Requests a server sends its client: what `direction = "server_to_client"` rules decide.
pub const SERVER_REQUESTS: &[&str] = &[
    "sampling/createMessage",
    "elicitation/create",
    "roots/list",
    "ping",
];

pub struct Rule {
    pub label: std::sync::Arc<str>,
    pub principal: String,
    server: globset::GlobMatcher,
    methods: Vec<String>,
    tools: Option<GlobSet>,
    pub action: Action,
    arguments: Option<Validator>,
    annotations: Option<Map<String, Value>>,
    pub direction: RuleDirection,
}

/// What a rule is asked about.
pub struct Ask<'a> {
    pub direction: RuleDirection,
    pub principal: &'a str,
    pub server: &'a str,
    pub method: &'a str,
    pub name: Option<&'a str>,
    /// The call's arguments; `None` when deciding visibility in a listing (any arguments).
    pub arguments: Option<&'a Value>,
    pub annotations: Option<&'a Map<String, Value>>,
}

pub enum Verdict {
    Match,
    NoMatch,
    /// Everything matched but the arguments: why, for the denial message.
    ArgumentsRejected(String),
}

fn to_json(v: &toml::Value) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

impl Rule {
    pub fn compile(i: usize, c: &RuleConfig) -> Result<Self, Invalid> {
        let key = |k: &str| format!("rule[{i}].{k}");
        let server = globset::Glob::new(&c.server)
            .map_err(|e| {
                (
                    key("server"),
                    format!("{:?} is not a valid glob: {e}", c.server),
                )
            })?
            .compile_matcher();
        if c.methods.is_empty() {
            return Err((
                key("methods"),
                "must name at least one method (or \"*\")".into(),
            ));
        }
        let arguments = match &c.arguments {
            None => None,
            Some(schema) => Some(
                jsonschema::validator_for(&to_json(schema))
                    .map_err(|e| (key("arguments"), format!("not a valid JSON Schema: {e}")))?,
            ),
        };
        check_direction(i, c)?;
        let annotations = c.annotations.as_ref().map(|t| {
            t.iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect::<Map<String, Value>>()
        });
        let action = format!("{:?}", c.action).to_lowercase();
        let action = match c.direction {
            RuleDirection::ClientToServer => action,
            RuleDirection::ServerToClient => format!("{action} server_to_client"),
        };
        let what = if c.direction == RuleDirection::ServerToClient {
            String::new()
        } else if c.tools.is_empty() {
            "* ".to_string()
        } else {
            format!("{} ", c.tools.join(","))
        };
        Ok(Rule {
            label: format!(
                "rule[{i}] {action} {} {} {what}on {}",
                c.principal,
                c.methods.join(","),
                c.server
            )
            .into(),
            principal: c.principal.clone(),
            server,
            methods: c.methods.clone(),
            tools: globs(&key("tools"), &c.tools)?,
            action: c.action,
            arguments,
            annotations,
            direction: c.direction,
        })
    }

    /// Whether this rule constrains arguments (so deciding needs them parsed).
    pub fn has_schema(&self) -> bool {
        self.arguments.is_some()
    }

    /// Whether this rule speaks about this principal on this server (whatever the method).
    pub fn covers(&self, principal: &str, server: &str) -> bool {
        (self.principal == "*" || self.principal == principal) && self.server.is_match(server)
    }

    pub fn check(&self, a: &Ask) -> Verdict {
        if self.direction != a.direction
            || !self.covers(a.principal, a.server)
            || !self.methods.iter().any(|m| m == "*" || m == a.method)
        {
            return Verdict::NoMatch;
        }
        if let Some(t) = &self.tools {
            if !a.name.is_some_and(|n| t.is_match(n)) {
                return Verdict::NoMatch;
            }
        }
        if let Some(want) = &self.annotations {
            let Some(have) = a.annotations else {
                return Verdict::NoMatch;
            };
            if want.iter().any(|(k, v)| have.get(k) != Some(v)) {
                return Verdict::NoMatch;
            }
        }
        if let (Some(schema), Some(args)) = (&self.arguments, a.arguments) {
            if let Some(err) = schema.iter_errors(args).next() {
                let at = err.instance_path().to_string();
                let at = if at.is_empty() {
                    "arguments".to_string()
                } else {
                    format!("arguments{at}")
                };
                // The argument and the constraint, never the value: the ledger holds
                // digests of arguments only (and the value may be a secret).
                return Verdict::ArgumentsRejected(format!(
                    "{at} does not satisfy the rule's schema ({} at {})",
                    err.kind().keyword(),
                    err.schema_path()
                ));
            }
        }
        Verdict::Match
    }
}

/// A rule's methods must be of its direction: a rule that could never match is a mistake
/// the admin hears about at load, not a denial that silently never happens.
fn check_direction(i: usize, c: &RuleConfig) -> Result<(), Invalid> {
    let key = |k: &str| format!("rule[{i}].{k}");
    match c.direction {
        RuleDirection::ClientToServer => {
            if let Some(m) = c
                .methods
                .iter()
                .find(|m| SERVER_REQUESTS.contains(&m.as_str()) && m.as_str() != "ping")
            {
                return Err((
                    key("methods"),
                    format!(
                        "{m} is a request servers send to agents: decide it in a rule with \
                         direction = \"server_to_client\""
                    ),
                ));
            }
        }
        RuleDirection::ServerToClient => {
            if let Some(m) = c
                .methods
                .iter()
                .find(|m| m.as_str() != "*" && !SERVER_REQUESTS.contains(&m.as_str()))
            {
                return Err((
                    key("methods"),
                    format!(
                        "{m} is not a request a server sends; direction = \"server_to_client\" \
                         rules decide {} (or \"*\")",
                        SERVER_REQUESTS.join(", ")
                    ),
                ));
            }
            for (field, set) in [
                ("tools", !c.tools.is_empty()),
                ("arguments", c.arguments.is_some()),
                ("annotations", c.annotations.is_some()),
            ] {
                if set {
                    return Err((
                        key(field),
                        "applies to the agent's calls only; a direction = \"server_to_client\" \
                         rule is decided on its principal, server and methods"
                            .into(),
                    ));
                }
            }
        }
    }
    Ok(())
}
