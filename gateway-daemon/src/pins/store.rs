//! The pin store on disk: one JSON document, rewritten whole through a temporary file and
//! a rename, so a crash leaves the old store or the new one and pins survive restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::poison::Finding;
use super::{Kind, PinsError};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct StoreFile {
    pub version: u32,
    #[serde(default)]
    pub servers: BTreeMap<String, ServerPins>,
}

/// What is pinned for one server. Keys are `kind/name` (e.g. `tool/echo`).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ServerPins {
    /// When the gateway first saw a listing of this server.
    pub first_seen: String,
    #[serde(default)]
    pub approved: BTreeMap<String, Pin>,
    /// Definitions waiting for an administrator: new, changed, or poisoned.
    #[serde(default)]
    pub pending: BTreeMap<String, Pending>,
    /// The kinds this server has listed (tools, prompts, templates), each first seen on
    /// its own. Stores written before this was kept infer it from what they pin.
    #[serde(default)]
    pub kinds_seen: BTreeSet<Kind>,
}

impl ServerPins {
    /// Whether no listing of `kind` was seen yet.
    pub fn first_sight_of(&self, kind: Kind) -> bool {
        !self.kinds_seen.contains(&kind)
            && !self.approved.values().any(|p| p.kind == kind)
            && !self.pending.values().any(|p| p.kind == kind)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pin {
    pub kind: Kind,
    pub name: String,
    pub sha256: String,
    pub definition: Value,
    pub pinned_at: String,
    /// `tofu` (first sight), or the administrator's uid that approved it.
    pub by: String,
    /// Set while the server no longer lists it (recorded once, not on every listing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_since: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    pub kind: Kind,
    pub name: String,
    pub sha256: String,
    pub definition: Value,
    /// `new` (first sight under `approve`), `added` (after the server was pinned),
    /// `changed` (differs from the approved definition).
    pub change: String,
    pub seen_at: String,
    #[serde(default)]
    pub findings: Vec<Finding>,
    /// An administrator looked and said no: it stays hidden and refused.
    #[serde(default)]
    pub rejected: bool,
}

pub const VERSION: u32 = 1;

pub fn key(kind: Kind, name: &str) -> String {
    format!("{}/{name}", kind.label())
}

pub fn load(path: &Path) -> Result<StoreFile, PinsError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let store: StoreFile =
                serde_json::from_slice(&bytes).map_err(|e| PinsError::Corrupt {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?;
            if store.version != VERSION {
                return Err(PinsError::Corrupt {
                    path: path.to_owned(),
                    reason: format!("version {} (this daemon reads {VERSION})", store.version),
                });
            }
            Ok(store)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StoreFile {
            version: VERSION,
            servers: BTreeMap::new(),
        }),
        Err(source) => Err(PinsError::Io {
            what: "reading",
            path: path.to_owned(),
            source,
        }),
    }
}

pub fn save(path: &Path, store: &StoreFile) -> Result<(), PinsError> {
    let io = |what: &'static str, p: &Path| {
        let path = p.to_owned();
        move |source| PinsError::Io { what, path, source }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let bytes = serde_json::to_vec_pretty(store).expect("the store serialises");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("creating", &tmp))?;
    f.write_all(&bytes).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("renaming into", path))?;
    Ok(())
}
