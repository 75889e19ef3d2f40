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
fn default_group() -> String {
    "mcp-gateway".into()
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
