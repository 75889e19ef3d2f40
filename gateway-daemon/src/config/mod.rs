//! The daemon's TOML configuration: parsed with unknown keys refused, then validated with
//! errors that name the key, so `mcp-gateway check-config` and `run` agree on what is valid.

mod admin;
mod credential;
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
#[serde(deny_unknown_fields)]
pub struct Http {
    /// Largest MCP request body accepted from an agent.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Largest JSON (non-streamed) MCP response body accepted from a server.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// Largest single SSE event.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// Refuse agent HTTP requests that are not MCP (and non-HTTP connections) instead of
    /// passing them through.
    #[serde(default)]
    pub mcp_only: bool,
    /// Requests awaiting a response per session and direction.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// MCP sessions tracked at once (past it, the longest idle session of the user holding
    /// the most is forgotten).
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// MCP sessions one user (uid) holds at once (past it, its own longest idle one is
    /// forgotten): no user can push another's sessions out.
    #[serde(default = "default_max_sessions_per_user")]
    pub max_sessions_per_user: usize,
    /// Bytes of bodies held for inspection at once, by all exchanges together (requests
    /// and JSON responses read whole, SSE events read to their end).
    #[serde(default = "default_max_buffered_bytes")]
    pub max_buffered_bytes: usize,
    /// The same, per user (uid): past it that user's exchanges get an error, others' not.
    #[serde(default = "default_max_buffered_bytes_per_user")]
    pub max_buffered_bytes_per_user: usize,
}

/// Where redirected connections arrive. Both families are needed: an AF_INET6 agent socket
/// dialing a native IPv6 address can only be redirected to an IPv6 listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    #[serde(default = "default_listen4")]
    pub ipv4: SocketAddr,
    #[serde(default = "default_listen6")]
    pub ipv6: SocketAddr,
    /// Connections one user (uid) holds at once; more are refused (and audited). Also
    /// bounded to half of what the daemon's open-files limit allows.
    #[serde(default = "default_max_connections_per_user")]
    pub max_connections_per_user: usize,
    /// Seconds a connection may stay open with neither side having sent a byte.
    #[serde(default = "default_first_byte_timeout_s")]
    pub first_byte_timeout_s: u64,
    /// New connections one user may open a second, on average (bursts of five seconds'
    /// worth); faster ones are refused and audited once per interval.
    #[serde(default = "default_connections_per_second_per_user")]
    pub connections_per_second_per_user: u32,
    /// Threads that serve agent connections, each keeping its connections for their whole
    /// life; 0 is one per core the daemon may run on.
    #[serde(default)]
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
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// Every TCP destination port of agents is mediated (the default): an MCP server on a
    /// dev port is a server too. `false` mediates only `ports`.
    #[serde(default = "default_all_tcp")]
    pub all_tcp: bool,
    #[serde(default = "default_ports")]
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intercept {
    /// Name of this daemon's pin directory under bpffs; two daemons need two names.
    #[serde(default = "default_instance")]
    pub instance: String,
    /// Where bpffs is (mounted there when it is not yet).
    #[serde(default = "default_bpffs")]
    pub bpffs: PathBuf,
    /// cgroup (relative to the cgroup2 mount) the programs attach to; `/` sees every
    /// process, which selecting agents by user needs.
    #[serde(default = "default_attach_cgroup")]
    pub attach_cgroup: String,
    /// SO_MARK put on the daemon's upstream sockets; the programs never redirect them.
    #[serde(default = "default_mark")]
    pub mark: u32,
    /// Capacity of the connection table between established and accept.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Capacity of each selector map (agent cgroups, agent users, ports).
    #[serde(default = "default_selector_capacity")]
    pub selector_capacity: u32,
    /// On a clean stop, detach the programs (agents then connect directly). With `false`,
    /// the default, they stay attached and agent connections are refused until the daemon
    /// is back: a `systemctl restart` or an upgrade never opens a window. `mcp-gateway
    /// detach` detaches on purpose.
    #[serde(default)]
    pub detach_on_stop: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    #[serde(default = "default_audit_path")]
    pub path: PathBuf,
    /// When records reach the disk: `always` (fdatasync before a call is forwarded; calls
    /// that arrive together share one sync), `batch` (at most one sync per
    /// `batch_interval_ms`, calls wait for it), `none` (the OS decides; a crash may lose
    /// the last records).
    #[serde(default)]
    pub sync: SyncPolicy,
    #[serde(default = "default_batch_interval_ms")]
    pub batch_interval_ms: u64,
    /// Rotate the current file past this size...
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// ...or this age in seconds (0: no age limit).
    #[serde(default = "default_max_file_age_s")]
    pub max_file_age_s: u64,
    /// Rotated files kept; older ones are deleted (0: keep all).
    #[serde(default = "default_retain_files")]
    pub retain_files: usize,
    /// Seconds between signed checkpoints (also written at rotation and clean stop).
    #[serde(default = "default_checkpoint_interval_s")]
    pub checkpoint_interval_s: u64,
    /// The ed25519 signing key, created 0600 on first start.
    #[serde(default = "default_audit_key")]
    pub key: PathBuf,
    /// Also send each record to journald: `auto` (when its socket exists), `on`, `off`.
    #[serde(default)]
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

fn default_listen4() -> SocketAddr {
    "127.0.0.1:15001".parse().expect("literal")
}
fn default_listen6() -> SocketAddr {
    "[::1]:15001".parse().expect("literal")
}
fn default_max_connections_per_user() -> usize {
    4096
}
fn default_first_byte_timeout_s() -> u64 {
    60
}
fn default_connections_per_second_per_user() -> u32 {
    500
}
fn default_ports() -> Vec<u16> {
    vec![80, 443, 8080]
}
fn default_all_tcp() -> bool {
    true
}
fn default_instance() -> String {
    "default".into()
}
fn default_bpffs() -> PathBuf {
    "/sys/fs/bpf".into()
}
fn default_attach_cgroup() -> String {
    "/".into()
}
fn default_mark() -> u32 {
    0x4d43_5047 // "MCPG"
}
fn default_max_connections() -> u32 {
    65536
}
fn default_selector_capacity() -> u32 {
    1024
}
fn default_max_request_bytes() -> usize {
    4 << 20
}
fn default_max_response_bytes() -> usize {
    32 << 20
}
fn default_max_event_bytes() -> usize {
    8 << 20
}
fn default_max_pending() -> usize {
    1024
}
fn default_max_sessions() -> usize {
    10_000
}
fn default_max_sessions_per_user() -> usize {
    1_000
}
fn default_max_buffered_bytes() -> usize {
    1 << 30
}
fn default_max_buffered_bytes_per_user() -> usize {
    256 << 20
}
fn default_batch_interval_ms() -> u64 {
    10
}
fn default_max_file_bytes() -> u64 {
    64 << 20
}
fn default_max_file_age_s() -> u64 {
    86_400
}
fn default_retain_files() -> usize {
    30
}
fn default_checkpoint_interval_s() -> u64 {
    60
}
fn default_audit_key() -> PathBuf {
    "/var/lib/mcp-gateway/audit-signing.key".into()
}
fn default_audit_path() -> PathBuf {
    "/var/log/mcp-gateway/audit.jsonl".into()
}

impl Default for Listener {
    fn default() -> Self {
        Self {
            ipv4: default_listen4(),
            ipv6: default_listen6(),
            max_connections_per_user: default_max_connections_per_user(),
            first_byte_timeout_s: default_first_byte_timeout_s(),
            connections_per_second_per_user: default_connections_per_second_per_user(),
            workers: 0,
        }
    }
}
impl Default for Scope {
    fn default() -> Self {
        Self {
            all_tcp: default_all_tcp(),
            ports: default_ports(),
        }
    }
}
impl Default for Intercept {
    fn default() -> Self {
        Self {
            instance: default_instance(),
            bpffs: default_bpffs(),
            attach_cgroup: default_attach_cgroup(),
            mark: default_mark(),
            max_connections: default_max_connections(),
            selector_capacity: default_selector_capacity(),
            detach_on_stop: false,
        }
    }
}
impl Default for Http {
    fn default() -> Self {
        Self {
            max_request_bytes: default_max_request_bytes(),
            max_response_bytes: default_max_response_bytes(),
            max_event_bytes: default_max_event_bytes(),
            mcp_only: false,
            max_pending: default_max_pending(),
            max_sessions: default_max_sessions(),
            max_sessions_per_user: default_max_sessions_per_user(),
            max_buffered_bytes: default_max_buffered_bytes(),
            max_buffered_bytes_per_user: default_max_buffered_bytes_per_user(),
        }
    }
}
impl Default for Audit {
    fn default() -> Self {
        Self {
            path: default_audit_path(),
            sync: SyncPolicy::Always,
            batch_interval_ms: default_batch_interval_ms(),
            max_file_bytes: default_max_file_bytes(),
            max_file_age_s: default_max_file_age_s(),
            retain_files: default_retain_files(),
            checkpoint_interval_s: default_checkpoint_interval_s(),
            key: default_audit_key(),
            journald: Journald::Auto,
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
