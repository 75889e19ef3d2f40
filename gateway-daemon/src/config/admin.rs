//! `[admin]` and `[pins]`: how administrators reach the running daemon, and how tool
//! manifests are pinned.

use std::path::PathBuf;

use serde::Deserialize;

use super::defaults;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// The daemon's admin socket, used by `mcp-gateway pins|approvals|status`.
    pub socket: PathBuf,
    /// Members of this group (and root) may use the socket.
    pub group: String,
}

/// `[stdio]`: MCP servers agents start as child processes (see `stdio`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Stdio {
    /// Where `mcp-gateway exec` hands the daemon the exec listener of an agent's process
    /// tree (root only).
    pub socket: PathBuf,
    /// Mediated stdio servers one user may have running at once (each holds four of the
    /// daemon's descriptors); past it, starting another fails (EPERM).
    pub max_servers_per_user: usize,
}

impl Default for Stdio {
    fn default() -> Self {
        Self {
            socket: defaults::STDIO_SOCKET.into(),
            max_servers_per_user: defaults::MAX_SERVERS_PER_USER,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pins {
    /// The pin store (JSON, rewritten atomically).
    pub path: PathBuf,
    /// What the first sight of a server does: `tofu` pins what it lists; `approve` shows
    /// nothing of it until an administrator approves; `off` does not pin at all.
    pub mode: PinMode,
    /// A definition that changed or appeared after pinning: `hide` hides and refuses that
    /// tool only; `block_server` hides and refuses the whole server until it is reviewed.
    pub on_change: OnChange,
    /// Poisoned descriptions or schemas (hidden characters, instructions to the model,
    /// shadowed names): `block` holds the definition for review, `warn` only audits.
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

impl Default for Admin {
    fn default() -> Self {
        Self {
            socket: defaults::ADMIN_SOCKET.into(),
            group: defaults::ADMIN_GROUP.into(),
        }
    }
}

impl Default for Pins {
    fn default() -> Self {
        Self {
            path: defaults::PINS_PATH.into(),
            mode: PinMode::default(),
            on_change: OnChange::default(),
            poison: PoisonAction::default(),
        }
    }
}

/// `[approvals]`: calls a rule answers with `ask` wait for a person.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Approvals {
    /// Seconds a held call waits for a decision; then it is denied.
    pub timeout_s: u64,
    /// Calls held at once; more are denied at once (a flood of asks must not pile up).
    pub max_held: usize,
    /// Seconds between progress notifications to an agent whose call is held (when the
    /// call carries a progress token).
    pub progress_interval_s: u64,
    /// Longest `--for` an administrator may grant, in seconds.
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

impl Default for Approvals {
    fn default() -> Self {
        Self {
            timeout_s: defaults::APPROVAL_TIMEOUT_S,
            max_held: defaults::MAX_HELD,
            progress_interval_s: defaults::PROGRESS_INTERVAL_S,
            max_grant_s: defaults::MAX_GRANT_S,
        }
    }
}
