//! The daemon's TOML configuration: parsed with unknown keys refused, then validated with
//! errors that name the key, so `mcp-gateway check-config` and `run` agree on what is valid.

mod admin;
mod credential;
pub mod defaults;
mod policy;
mod tls;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use admin::{Admin, Approvals, Metrics, OnChange, PinMode, Pins, PoisonAction, Stdio};
pub use credential::{read_secret_file, Credential, CredentialError, Secret};
pub use policy::{Action, PolicyMode, PolicySection, PrincipalConfig, RuleConfig, RuleDirection};
pub use tls::{Passthrough, Tls};
pub use validate::Resolved;

/// What to do when the config is not there: say where commands look for it.
fn missing_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::NotFound {
        " (commands read --config FILE, else $MCP_GATEWAY_CONFIG, else \
         /etc/mcp-gateway/mcp-gateway.toml; the example is systemd/mcp-gateway.toml)"
    } else {
        ""
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}{}", missing_hint(source))]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config {path}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listener: Listener,
    #[serde(default)]
    pub agents: Agents,
    #[serde(default)]
    pub scope: Scope,
    #[serde(default)]
    pub intercept: Intercept,
    #[serde(default)]
    pub audit: Audit,
    #[serde(default)]
    pub http: Http,
    #[serde(default)]
    pub tls: Tls,
    #[serde(default)]
    pub admin: Admin,
    #[serde(default)]
    pub stdio: Stdio,
    #[serde(default)]
    pub pins: Pins,
    #[serde(default)]
    pub approvals: Approvals,
    #[serde(default)]
    pub metrics: Metrics,
    /// Known MCP servers: requests to them are MCP whatever their headers say.
    #[serde(default, rename = "server")]
    pub servers: Vec<Server>,
    #[serde(default)]
    pub policy: PolicySection,
    #[serde(default, rename = "principal")]
    pub principals: Vec<PrincipalConfig>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleConfig>,
    /// Secrets and personal data redacted from what servers return, and guarded in what
    /// agents send.
    #[serde(default)]
    pub redact: crate::redact::RedactConfig,
}

/// An MCP server agents use. It is matched by the destination the agent dialed
/// (`address`), or by the host name the gateway verified over TLS (`host`, optional port),
/// and optionally a path prefix. Over plain HTTP a `host` is never trusted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub name: String,
    /// Destination address:port as dialed, e.g. "127.0.0.1:3001" or "[::1]:8080".
    #[serde(default)]
    pub address: Option<SocketAddr>,
    /// Host name, without port: matched against the SNI of TLS the gateway terminates.
    #[serde(default)]
    pub host: Option<String>,
    /// Destination port, with `host`.
    #[serde(default)]
    pub port: Option<u16>,
    /// A server agents start as a child process and speak to over stdio: globs over the
    /// executable (the first) and its arguments (each further one matches a later argument,
    /// in order), e.g. `["*/npx", "*server-everything*"]`. Mediated for agents started by
    /// `mcp-gateway exec` (see `stdio`).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Path prefix of the MCP endpoint(s), e.g. "/mcp"; every path when absent.
    #[serde(default)]
    pub path: Option<String>,
    /// Overrides `redact.mode_requests` for this server.
    #[serde(default)]
    pub redact_requests: Option<crate::redact::RequestMode>,
    /// Overrides `pins.mode` for this server.
    #[serde(default)]
    pub pins: Option<PinMode>,
    /// Overrides `redact.mode_responses` for this server.
    #[serde(default)]
    pub redact_responses: Option<crate::redact::ResponseMode>,
    /// Headers the gateway sets toward this server from secrets agents never hold, and
    /// agent headers it removes (`[[server.credential]]`, see `mcp::inject`).
    #[serde(default, rename = "credential")]
    pub credentials: Vec<Credential>,
}

/// Limits and choices of the HTTP stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Largest MCP request body accepted from an agent.
    pub max_request_bytes: usize,
    /// Largest JSON (non-streamed) MCP response body accepted from a server.
    pub max_response_bytes: usize,
    /// Largest single SSE event.
    pub max_event_bytes: usize,
    /// Refuse agent HTTP requests that are not MCP (and non-HTTP connections) instead of
    /// passing them through.
    pub mcp_only: bool,
    /// Requests awaiting a response per session and direction.
    pub max_pending: usize,
    /// MCP sessions tracked at once (past it, the longest idle session of the user holding
    /// the most is forgotten).
    pub max_sessions: usize,
    /// MCP sessions one user (uid) holds at once (past it, its own longest idle one is
    /// forgotten): no user can push another's sessions out.
    pub max_sessions_per_user: usize,
    /// Bytes of bodies held for inspection at once, by all exchanges together (requests
    /// and JSON responses read whole, SSE events read to their end).
    pub max_buffered_bytes: usize,
    /// The same, per user (uid): past it that user's exchanges get an error, others' not.
    pub max_buffered_bytes_per_user: usize,
}

/// Where redirected connections arrive. Both families are needed: an AF_INET6 agent socket
/// dialing a native IPv6 address can only be redirected to an IPv6 listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listener {
    pub ipv4: SocketAddr,
    pub ipv6: SocketAddr,
    /// Connections one user (uid) holds at once; more are refused (and audited). Also
    /// bounded to half of what the daemon's open-files limit allows.
    pub max_connections_per_user: usize,
    /// Seconds a connection may stay open with neither side having sent a byte.
    pub first_byte_timeout_s: u64,
    /// New connections one user may open a second, on average (bursts of five seconds'
    /// worth); faster ones are refused and audited once per interval.
    pub connections_per_second_per_user: u32,
    /// Threads that serve agent connections, each keeping its connections for their whole
    /// life; 0 is one per two cores the daemon may run on, rounded up.
    pub workers: usize,
}

/// Which processes are agents: members of these cgroups (or their descendants), or running
/// as these users.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agents {
    /// Paths relative to the cgroup2 mount, e.g. `mcp-agents.slice`.
    #[serde(default)]
    pub cgroups: Vec<String>,
    /// User ids or user names.
    #[serde(default)]
    pub users: Vec<UserRef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum UserRef {
    Id(u32),
    Name(String),
}

/// Which destinations of agent connections are mediated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scope {
    /// Every TCP destination port of agents is mediated (the default): an MCP server on a
    /// dev port is a server too. `false` mediates only `ports`.
    pub all_tcp: bool,
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Intercept {
    /// Name of this daemon's pin directory under bpffs; two daemons need two names.
    pub instance: String,
    /// Where bpffs is (mounted there when it is not yet).
    pub bpffs: PathBuf,
    /// cgroup (relative to the cgroup2 mount) the programs attach to; `/` sees every
    /// process, which selecting agents by user needs.
    pub attach_cgroup: String,
    /// SO_MARK put on the daemon's upstream sockets; the programs never redirect them.
    pub mark: u32,
    /// Capacity of the connection table between established and accept.
    pub max_connections: u32,
    /// Capacity of each selector map (agent cgroups, agent users, ports).
    pub selector_capacity: u32,
    /// Processes whose exec is noted at once (what their exec loaded, against which a
    /// program a process set itself is told). Past it, processes without a note are named
    /// for no program.
    pub max_processes: u32,
    /// On a clean stop, detach the programs (agents then connect directly). With `false`,
    /// the default, they stay attached and agent connections are refused until the daemon
    /// is back: a `systemctl restart` or an upgrade never opens a window. `mcp-gateway
    /// detach` detaches on purpose.
    pub detach_on_stop: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Audit {
    pub path: PathBuf,
    /// When records reach the disk: `always` (fdatasync before a call is forwarded; calls
    /// that arrive together share one sync), `batch` (at most one sync per
    /// `batch_interval_ms`, calls wait for it), `none` (the OS decides; a crash may lose
    /// the last records).
    pub sync: SyncPolicy,
    pub batch_interval_ms: u64,
    /// Rotate the current file past this size...
    pub max_file_bytes: u64,
    /// ...or this age in seconds (0: no age limit).
    pub max_file_age_s: u64,
    /// Rotated files kept; older ones are deleted (0: keep all).
    pub retain_files: usize,
    /// Seconds between signed checkpoints (also written at rotation and clean stop).
    pub checkpoint_interval_s: u64,
    /// The ed25519 signing key, created 0600 on first start.
    pub key: PathBuf,
    /// Also send each record to journald: `auto` (when its socket exists), `on`, `off`.
    pub journald: Journald,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    #[default]
    Always,
    Batch,
    None,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Journald {
    #[default]
    Auto,
    On,
    Off,
}

impl Default for Listener {
    fn default() -> Self {
        Self {
            ipv4: defaults::LISTENER_IPV4,
            ipv6: defaults::LISTENER_IPV6,
            max_connections_per_user: defaults::MAX_CONNECTIONS_PER_USER,
            first_byte_timeout_s: defaults::FIRST_BYTE_TIMEOUT_S,
            connections_per_second_per_user: defaults::CONNECTIONS_PER_SECOND_PER_USER,
            workers: defaults::WORKERS,
        }
    }
}
impl Default for Scope {
    fn default() -> Self {
        Self {
            all_tcp: defaults::ALL_TCP,
            ports: defaults::PORTS.to_vec(),
        }
    }
}
impl Default for Intercept {
    fn default() -> Self {
        Self {
            instance: defaults::INSTANCE.into(),
            bpffs: defaults::BPFFS.into(),
            attach_cgroup: defaults::ATTACH_CGROUP.into(),
            mark: defaults::MARK,
            max_connections: defaults::MAX_CONNECTIONS,
            selector_capacity: defaults::SELECTOR_CAPACITY,
            max_processes: defaults::MAX_PROCESSES,
            detach_on_stop: defaults::DETACH_ON_STOP,
        }
    }
}
impl Default for Http {
    fn default() -> Self {
        Self {
            max_request_bytes: defaults::MAX_REQUEST_BYTES,
            max_response_bytes: defaults::MAX_RESPONSE_BYTES,
            max_event_bytes: defaults::MAX_EVENT_BYTES,
            mcp_only: defaults::MCP_ONLY,
            max_pending: defaults::MAX_PENDING,
            max_sessions: defaults::MAX_SESSIONS,
            max_sessions_per_user: defaults::MAX_SESSIONS_PER_USER,
            max_buffered_bytes: defaults::MAX_BUFFERED_BYTES,
            max_buffered_bytes_per_user: defaults::MAX_BUFFERED_BYTES_PER_USER,
        }
    }
}
impl Default for Audit {
    fn default() -> Self {
        Self {
            path: defaults::AUDIT_PATH.into(),
            sync: SyncPolicy::default(),
            batch_interval_ms: defaults::BATCH_INTERVAL_MS,
            max_file_bytes: defaults::MAX_FILE_BYTES,
            max_file_age_s: defaults::MAX_FILE_AGE_S,
            retain_files: defaults::RETAIN_FILES,
            checkpoint_interval_s: defaults::CHECKPOINT_INTERVAL_S,
            key: defaults::AUDIT_KEY.into(),
            journald: Journald::default(),
        }
    }
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Resolved, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Resolved, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        validate::validate(config).map_err(|(key, message)| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        })
    }
}

#[cfg(test)]
mod tests;
