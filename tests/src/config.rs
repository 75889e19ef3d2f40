//! A test daemon's config, typed: a test states what differs from the defaults (its
//! servers, principals, rules, policy mode), a misspelt key does not compile, and the
//! harness's own keys (ports, sockets, files in the test's directory) are merged in as
//! TOML tables rather than pasted as text.

use serde::Serialize;
use toml::{Table, Value};

/// What a test adds to the harness's config.
#[derive(Serialize, Default, Clone, Debug)]
pub struct TestConfig {
    #[serde(rename = "server", skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<Server>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    #[serde(rename = "principal", skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<Principal>,
    #[serde(rename = "rule", skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redact: Option<Redact>,
}

impl TestConfig {
    /// One server, one principal (`name`, running as root: the tests' agents do) and a rule
    /// allowing it every call to that server, enforced.
    pub fn allowing(principal: &str, server: Server) -> Self {
        TestConfig {
            rules: vec![Rule::allow(principal, &server.name)],
            servers: vec![server],
            policy: Some(Policy::enforce()),
            principals: vec![Principal::users(principal, &["root"])],
            ..Default::default()
        }
    }

    /// `rule` tried before the rules there are.
    pub fn first(mut self, rule: Rule) -> Self {
        self.rules.insert(0, rule);
        self
    }

    pub fn redact(mut self, requests: RedactMode, responses: RedactMode) -> Self {
        self.redact = Some(Redact {
            mode_requests: requests,
            mode_responses: responses,
        });
        self
    }

    /// The config as a TOML table.
    pub fn table(&self) -> Table {
        Table::try_from(self).expect("a test config always serialises")
    }
}

#[derive(Serialize, Default, Clone, Debug)]
pub struct Server {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(rename = "credential", skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<Credential>,
}

impl Server {
    /// A server the agent dials at 127.0.0.1:`port`.
    pub fn at(name: &str, port: u16) -> Self {
        Server {
            name: name.into(),
            address: Some(format!("127.0.0.1:{port}")),
            ..Default::default()
        }
    }

    /// The rmcp test server at 127.0.0.1:`port`, its endpoint `/mcp`.
    pub fn mcp_at(name: &str, port: u16) -> Self {
        Server {
            path: Some("/mcp".into()),
            ..Server::at(name, port)
        }
    }

    /// A server reached over TLS the gateway terminates for `host`:`port`.
    pub fn tls(name: &str, host: &str, port: u16) -> Self {
        Server {
            name: name.into(),
            host: Some(host.into()),
            port: Some(port),
            ..Default::default()
        }
    }
}

#[derive(Serialize, Default, Clone, Debug)]
pub struct Credential {
    pub header: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    Enforce,
    Audit,
    Observe,
}

#[derive(Serialize, Clone, Debug)]
pub struct Policy {
    pub mode: PolicyMode,
}

impl Policy {
    pub fn enforce() -> Self {
        Policy {
            mode: PolicyMode::Enforce,
        }
    }
}

#[derive(Serialize, Default, Clone, Debug)]
pub struct Principal {
    pub name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserRef>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exe: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exe_sha256: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cgroup: Vec<String>,
}

/// A user by name or uid, as the config takes it.
#[derive(Serialize, Clone, Debug)]
#[serde(untagged)]
pub enum UserRef {
    Name(String),
    Id(u32),
}

impl Principal {
    pub fn users(name: &str, users: &[&str]) -> Self {
        Principal {
            name: name.into(),
            users: users.iter().map(|u| UserRef::Name(u.to_string())).collect(),
            ..Default::default()
        }
    }

    pub fn uids(name: &str, uids: &[u32]) -> Self {
        Principal {
            name: name.into(),
            users: uids.iter().map(|u| UserRef::Id(*u)).collect(),
            ..Default::default()
        }
    }

    /// Programs at paths these globs match.
    pub fn exe(name: &str, globs: &[&str]) -> Self {
        Principal {
            name: name.into(),
            exe: globs.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Programs with this content.
    pub fn exe_sha256(name: &str, hash: &str) -> Self {
        Principal {
            name: name.into(),
            exe_sha256: vec![hash.into()],
            ..Default::default()
        }
    }
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
    Ask,
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    ClientToServer,
    ServerToClient,
}

#[derive(Serialize, Clone, Debug)]
pub struct Rule {
    pub principal: String,
    pub server: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
}

impl Rule {
    pub fn new(principal: &str, server: &str, action: Action) -> Self {
        Rule {
            principal: principal.into(),
            server: server.into(),
            methods: Vec::new(),
            tools: Vec::new(),
            action,
            direction: None,
        }
    }

    pub fn allow(principal: &str, server: &str) -> Self {
        Rule::new(principal, server, Action::Allow)
    }

    pub fn deny(principal: &str, server: &str) -> Self {
        Rule::new(principal, server, Action::Deny)
    }

    pub fn ask(principal: &str, server: &str) -> Self {
        Rule::new(principal, server, Action::Ask)
    }

    /// Only these tools (globs).
    pub fn tools(mut self, tools: &[&str]) -> Self {
        self.tools = tools.iter().map(|t| t.to_string()).collect();
        self
    }

    /// Only these methods.
    pub fn methods(mut self, methods: &[&str]) -> Self {
        self.methods = methods.iter().map(|m| m.to_string()).collect();
        self
    }

    /// Deciding what the server asks of the agent.
    pub fn server_to_client(mut self) -> Self {
        self.direction = Some(Direction::ServerToClient);
        self
    }
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RedactMode {
    Redact,
    Refuse,
    Off,
}

#[derive(Serialize, Clone, Debug)]
pub struct Redact {
    pub mode_requests: RedactMode,
    pub mode_responses: RedactMode,
}

/// Merges `from` into `into`: tables key by key (what `from` says wins), arrays of tables
/// (`[[rule]]`) appended in order.
pub fn merge(into: &mut Table, from: Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(Value::Table(a)), Value::Table(b)) => merge(a, b),
            (Some(Value::Array(a)), Value::Array(b)) if a.iter().chain(&b).all(Value::is_table) => {
                a.extend(b)
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// `text` (TOML a test wrote) as a table, or the test's mistake named.
pub fn parse(what: &str, text: &str) -> Table {
    text.parse::<Table>()
        .unwrap_or_else(|e| panic!("the test's {what} is not TOML: {e}\n{text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_overrides_keys_and_appends_rules() {
        let mut base = parse(
            "base",
            "[policy]\nmode = \"audit\"\n[pins]\nmode = \"off\"\npath = \"p\"\n",
        );
        let typed = TestConfig::allowing("agent", Server::at("s", 8080)).table();
        merge(&mut base, typed);
        merge(
            &mut base,
            parse(
                "extra",
                "[pins]\nmode = \"tofu\"\n[[rule]]\nprincipal = \"*\"\naction = \"deny\"\n",
            ),
        );
        assert_eq!(base["policy"]["mode"].as_str(), Some("enforce"));
        assert_eq!(base["pins"]["mode"].as_str(), Some("tofu"));
        assert_eq!(base["pins"]["path"].as_str(), Some("p"));
        let rules = base["rule"].as_array().unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0]["action"].as_str(), Some("allow"));
        assert_eq!(rules[1]["action"].as_str(), Some("deny"));
        assert_eq!(
            base["server"][0]["address"].as_str(),
            Some("127.0.0.1:8080")
        );
    }
}
