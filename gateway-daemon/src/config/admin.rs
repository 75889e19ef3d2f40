//! `[admin]` and `[pins]`: how administrators reach the running daemon, and how tool
//! manifests are pinned.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// The daemon's admin socket, used by `mcp-gateway pins|approvals|status`.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Members of this group (and root) may use the socket.
    #[serde(default = "default_group")]
    pub group: String,
}

/// `[stdio]`: MCP servers agents start as child processes (see `stdio`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stdio {
    /// Where `mcp-gateway exec` hands the daemon the exec listener of an agent's process
    /// tree (root only).
    #[serde(default = "default_stdio_socket")]
    pub socket: PathBuf,
    /// Mediated stdio servers one user may have running at once (each holds four of the
    /// daemon's descriptors); past it, starting another fails (EPERM).
    #[serde(default = "default_max_servers_per_user")]
    pub max_servers_per_user: usize,
}

pub const DEFAULT_MAX_SERVERS_PER_USER: usize = 64;

fn default_stdio_socket() -> PathBuf {
    PathBuf::from("/run/mcp-gateway/stdio.sock")
}

fn default_max_servers_per_user() -> usize {
    DEFAULT_MAX_SERVERS_PER_USER
}

impl Default for Stdio {
    fn default() -> Self {
        Self {
            socket: default_stdio_socket(),
            max_servers_per_user: default_max_servers_per_user(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pins {
    /// The pin store (JSON, rewritten atomically).
    #[serde(default = "default_pins_path")]
    pub path: PathBuf,
    /// What the first sight of a server does: `tofu` pins what it lists; `approve` shows
    /// nothing of it until an administrator approves; `off` does not pin at all.
    #[serde(default)]
    pub mode: PinMode,
    /// A definition that changed or appeared after pinning: `hide` hides and refuses that
    /// tool only; `block_server` hides and refuses the whole server until it is reviewed.
    #[serde(default)]
    pub on_change: OnChange,
    /// Poisoned descriptions or schemas (hidden characters, instructions to the model,
    /// shadowed names): `block` holds the definition for review, `warn` only audits.
    #[serde(default)]
    pub poison: PoisonAction,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PinMode {
    #[default]
    Tofu,
    Approve,
    Off,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnChange {
    #[default]
    Hide,
    BlockServer,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoisonAction {
    #[default]
    Block,
    Warn,
}

fn default_socket() -> PathBuf {
    "/run/mcp-gateway/admin.sock".into()
}
/// The admin group the package creates.
pub const DEFAULT_GROUP: &str = "mcp-gateway";

fn default_group() -> String {
    DEFAULT_GROUP.into()
}
fn default_pins_path() -> PathBuf {
    "/var/lib/mcp-gateway/pins.json".into()
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            socket: default_socket(),
            group: default_group(),
        }
    }
}

impl Default for Pins {
    fn default() -> Self {
        Self {
            path: default_pins_path(),
            mode: PinMode::Tofu,
            on_change: OnChange::Hide,
            poison: PoisonAction::Block,
        }
    }
}

/// `[approvals]`: calls a rule answers with `ask` wait for a person.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approvals {
    /// Seconds a held call waits for a decision; then it is denied.
    #[serde(default = "default_approval_timeout_s")]
    pub timeout_s: u64,
    /// Calls held at once; more are denied at once (a flood of asks must not pile up).
    #[serde(default = "default_max_held")]
    pub max_held: usize,
    /// Seconds between progress notifications to an agent whose call is held (when the
    /// call carries a progress token).
    #[serde(default = "default_progress_interval_s")]
    pub progress_interval_s: u64,
    /// Longest `--for` an administrator may grant, in seconds.
    #[serde(default = "default_max_grant_s")]
    pub max_grant_s: u64,
}

/// `[metrics]`: Prometheus text format on a loopback address.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// e.g. "127.0.0.1:9464"; no endpoint when absent.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
}

fn default_approval_timeout_s() -> u64 {
    120
}
fn default_max_held() -> usize {
    256
}
fn default_progress_interval_s() -> u64 {
    5
}
fn default_max_grant_s() -> u64 {
    86_400
}

impl Default for Approvals {
    fn default() -> Self {
        Self {
            timeout_s: default_approval_timeout_s(),
            max_held: default_max_held(),
            progress_interval_s: default_progress_interval_s(),
            max_grant_s: default_max_grant_s(),
        }
    }
}
