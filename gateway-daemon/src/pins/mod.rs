//! Manifest pins: what each server lists (tools, prompts, resource templates) is hashed in
//! a canonical form and pinned; a definition that appears or changes after pinning, or
//! that carries poisoning, is hidden from agents and refused when called until an
//! administrator approves it. The decision is per server, on every listing the gateway sees.

pub mod canonical;
pub mod manage;
pub mod poison;
pub mod relist;
pub mod store;
pub mod template;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::audit::timestamp;
use crate::config::{self, Config, OnChange, PinMode, PoisonAction};
use poison::Finding;
use store::{key, Pending, Pin, StoreFile};

#[derive(Debug, thiserror::Error)]
pub enum PinsError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the pin store {path} is unreadable: {reason}; move it aside to start over (every server is then seen for the first time)")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{0}")]
    Admin(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Tool,
    Prompt,
    ResourceTemplate,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Tool => "tool",
            Kind::Prompt => "prompt",
            Kind::ResourceTemplate => "resource_template",
        }
    }

    /// The kind a listing method lists, and the field that names an item.
    pub fn of_listing(method: &str) -> Option<(Kind, &'static str)> {
        Some(match method {
            "tools/list" => (Kind::Tool, "name"),
            "prompts/list" => (Kind::Prompt, "name"),
            "resources/templates/list" => (Kind::ResourceTemplate, "uriTemplate"),
            _ => return None,
        })
    }

    /// The kind a method uses by name.
    pub fn of_call(method: &str) -> Option<Kind> {
        match method {
            "tools/call" => Some(Kind::Tool),
            "prompts/get" => Some(Kind::Prompt),
            _ => None,
        }
    }
}

/// One thing the audit must hear about a listing.
#[derive(Debug, Clone, Serialize)]
pub struct PinEvent {
    /// `pinned` (first sight, tofu), `held` (new, added or changed: hidden until
    /// approved), `removed`, `returned`, `reverted` (back to the approved definition),
    /// `poison_warning` (findings, `pins.poison = "warn"`).
    pub event: &'static str,
    pub kind: Kind,
    pub name: String,
    pub sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_sha256: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
    /// Another server whose approved definition this one equals, name and all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_of: Option<String>,
}

/// What a listing review decided.
#[derive(Debug, Default)]
pub struct Review {
    /// Names (or uri templates) to hide from the agent.
    pub hide: HashSet<String>,
    pub events: Vec<PinEvent>,
    /// The whole server is held (`pins.on_change = "block_server"`).
    pub server_blocked: bool,
}

pub struct Pins {
    cfg: config::Pins,
    overrides: HashMap<String, PinMode>,
    path: PathBuf,
    state: Mutex<StoreFile>,
    /// Listings the gateway is taking itself after a server said its list changed.
    pub relists: relist::Relists,
}

impl std::fmt::Debug for Pins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pins").field("path", &self.path).finish()
    }
}

fn now() -> String {
    timestamp(SystemTime::now())
}

impl Pins {
    pub fn open(config: &Config) -> Result<Pins, PinsError> {
        let state = store::load(&config.pins.path)?;
        Ok(Pins {
            cfg: config.pins.clone(),
            overrides: config
                .servers
                .iter()
                .filter_map(|s| s.pins.map(|m| (s.name.clone(), m)))
                .collect(),
            path: config.pins.path.clone(),
            state: Mutex::new(state),
            relists: Default::default(),
        })
    }

    fn mode(&self, server: &str) -> PinMode {
        self.overrides.get(server).copied().unwrap_or(self.cfg.mode)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StoreFile> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self, state: &StoreFile) {
        // A failed write keeps the decision in memory (the listing is still filtered);
        // the next change tries again. Losing pins on disk must not open the server.
        if let Err(e) = store::save(&self.path, state) {
            tracing::error!(error = %e, "saving the pin store failed");
        }
    }

    /// Reviews one listing of `server`: pins, holds and hides, and says what the audit
    /// must record.
    pub fn review(&self, server: &str, kind: Kind, name_field: &str, items: &[Value]) -> Review {
        let mode = self.mode(server);
        let mut review = Review::default();
        // A whole listing was seen: what a failed re-listing left unknown is known again.
        self.relists.listed(server, kind);
        if mode == PinMode::Off {
            return review;
        }
        let mut state = self.lock();
        // Another instance of a server lists exactly what that server's approved tools are,
        // definition for definition: a copy, not a look-alike. One tool copied among others
        // (to catch calls meant for the original) is no copy.
        let copy_of = (kind == Kind::Tool)
            .then(|| copied_server(&state, server, name_field, items))
            .flatten();
        // The tools a name here could shadow: other servers' (not the one this copies).
        let others: Vec<(String, String)> = state
            .servers
            .iter()
            .filter(|(s, _)| s.as_str() != server && Some(*s) != copy_of.as_ref())
            .flat_map(|(s, p)| {
                p.approved
                    .values()
                    .filter(|pin| pin.kind == Kind::Tool)
                    .map(|pin| (s.clone(), pin.name.clone()))
            })
            .collect();
        let new_server = !state.servers.contains_key(server);
        let pins = state
            .servers
            .entry(server.to_string())
            .or_insert_with(|| store::ServerPins {
                first_seen: now(),
                ..Default::default()
            });
        // First sight is per kind: a server first listed through its tools has its prompts
        // and templates pinned when they are first listed, not held as added.
        let first_sight = pins.first_sight_of(kind);
        let mut changed = new_server || first_sight;
        pins.kinds_seen.insert(kind);
        let mut listed = HashSet::new();
        for item in items {
            let Some(name) = item[name_field].as_str() else {
                continue;
            };
            listed.insert(key(kind, name));
            let k = key(kind, name);
            let sha = canonical::digest(kind, item);
            let approved_sha = pins.approved.get(&k).map(|p| p.sha256.clone());
            if approved_sha.as_deref() == Some(sha.as_str()) {
                if pins.pending.remove(&k).is_some() {
                    changed = true;
                    review.events.push(event("reverted", kind, name, &sha));
                }
                if let Some(pin) = pins.approved.get_mut(&k) {
                    if pin.missing_since.take().is_some() {
                        changed = true;
                        review.events.push(event("returned", kind, name, &sha));
                    }
                }
                continue;
            }
            if let Some(p) = pins.pending.get(&k) {
                if p.sha256 == sha {
                    review.hide.insert(name.to_string());
                    continue;
                }
            }
            let mut findings = poison::inspect(item);
            if kind == Kind::Tool {
                findings.extend(poison::shadowing(
                    server,
                    name,
                    others.iter().map(|(s, t)| (s.as_str(), t.as_str())),
                ));
            }
            let blocking = !findings.is_empty() && self.cfg.poison == PoisonAction::Block;
            if !findings.is_empty() && !blocking {
                let mut e = event("poison_warning", kind, name, &sha);
                e.findings = findings.clone();
                review.events.push(e);
            }
            changed = true;
            if approved_sha.is_none() && first_sight && mode == PinMode::Tofu && !blocking {
                pins.approved.insert(
                    k,
                    Pin {
                        kind,
                        name: name.to_string(),
                        sha256: sha.clone(),
                        definition: canonical::pinned_part(kind, item),
                        pinned_at: now(),
                        by: "tofu".into(),
                        missing_since: None,
                    },
                );
                let mut e = event("pinned", kind, name, &sha);
                e.copy_of = copy_of.clone();
                review.events.push(e);
                continue;
            }
            let change = match (&approved_sha, first_sight) {
                (Some(_), _) => "changed",
                (None, true) => "new",
                (None, false) => "added",
            };
            let mut e = event("held", kind, name, &sha);
            e.change = Some(change.into());
            e.previous_sha256 = approved_sha;
            e.findings = if blocking {
                findings.clone()
            } else {
                Vec::new()
            };
            review.events.push(e);
            pins.pending.insert(
                k,
                Pending {
                    kind,
                    name: name.to_string(),
                    sha256: sha,
                    definition: canonical::pinned_part(kind, item),
                    change: change.into(),
                    seen_at: now(),
                    findings: if blocking { findings } else { Vec::new() },
                    rejected: false,
                },
            );
            review.hide.insert(name.to_string());
        }
        for pin in pins.approved.values_mut() {
            if pin.kind == kind
                && pin.missing_since.is_none()
                && !listed.contains(&key(kind, &pin.name))
            {
                pin.missing_since = Some(now());
                changed = true;
                review
                    .events
                    .push(event("removed", kind, &pin.name, &pin.sha256));
            }
        }
        if self.cfg.on_change == OnChange::BlockServer && !pins.pending.is_empty() {
            review.server_blocked = true;
            for item in items {
                if let Some(name) = item[name_field].as_str() {
                    review.hide.insert(name.to_string());
                }
            }
        }
        if changed {
            let snapshot = state.clone();
            drop(state);
            self.persist(&snapshot);
        }
        review
    }

    /// Whether an agent may use `name` of `server` now. The error says why, for the agent.
    pub fn check_call(&self, server: &str, kind: Kind, name: &str) -> Result<(), String> {
        if self.mode(server) == PinMode::Off {
            return Ok(());
        }
        let what = kind.label().replace('_', " ");
        let state = self.lock();
        let Some(pins) = state.servers.get(server) else {
            return Err(format!(
                "{what} {name:?} of server {server:?} was never listed to the gateway, so it is \
                 not pinned; list the server's {what}s first"
            ));
        };
        let k = key(kind, name);
        if let Some(p) = pins.pending.get(&k) {
            let why = if p.rejected {
                "was rejected by an administrator".to_string()
            } else {
                match p.change.as_str() {
                    "changed" => "changed since it was approved".to_string(),
                    _ => "is new and not approved".to_string(),
                }
            };
            return Err(format!(
                "{what} {name:?} of server {server:?} {why}; an administrator must review it \
                 (mcp-gateway pins diff {server})"
            ));
        }
        if self.cfg.on_change == OnChange::BlockServer && !pins.pending.is_empty() {
            return Err(format!(
                "server {server:?} is held: some of its definitions changed and await review \
                 (mcp-gateway pins diff {server})"
            ));
        }
        if pins.approved.contains_key(&k) {
            Ok(())
        } else {
            Err(format!(
                "{what} {name:?} was never listed by server {server:?}; it is not pinned"
            ))
        }
    }
}

impl Pins {
    /// Whether an agent may read `uri` of `server`: not while a resource template it falls
    /// under is held (changed, new, rejected), nor while the whole server is.
    pub fn check_resource(&self, server: &str, uri: &str) -> Result<(), String> {
        if self.mode(server) == PinMode::Off {
            return Ok(());
        }
        let state = self.lock();
        let Some(pins) = state.servers.get(server) else {
            return Ok(());
        };
        if self.cfg.on_change == OnChange::BlockServer && !pins.pending.is_empty() {
            return Err(format!(
                "server {server:?} is held: some of its definitions changed and await review \
                 (mcp-gateway pins diff {server})"
            ));
        }
        let normal = template::normalize(uri);
        match pins.pending.values().find(|p| {
            p.kind == Kind::ResourceTemplate
                && (template::matches(&p.name, uri) || template::matches(&p.name, &normal))
        }) {
            Some(p) => Err(format!(
                "{uri:?} falls under resource template {:?} of server {server:?}, which is \
                 held for review (mcp-gateway pins diff {server})",
                p.name
            )),
            None => Ok(()),
        }
    }
}

/// The other server whose approved tools are exactly those `items` define (same names,
/// same definitions, nothing more or less), if any.
fn copied_server(
    state: &StoreFile,
    server: &str,
    name_field: &str,
    items: &[Value],
) -> Option<String> {
    let listed: HashSet<(String, String)> = items
        .iter()
        .filter_map(|item| {
            let name = item[name_field].as_str()?;
            Some((name.to_string(), canonical::digest(Kind::Tool, item)))
        })
        .collect();
    if listed.is_empty() || listed.len() != items.len() {
        return None;
    }
    state
        .servers
        .iter()
        .filter(|(s, _)| s.as_str() != server)
        .find(|(_, p)| {
            let approved: HashSet<(String, String)> = p
                .approved
                .values()
                .filter(|pin| pin.kind == Kind::Tool && pin.missing_since.is_none())
                .map(|pin| (pin.name.clone(), pin.sha256.clone()))
                .collect();
            approved == listed
        })
        .map(|(s, _)| s.clone())
}

fn event(event: &'static str, kind: Kind, name: &str, sha: &str) -> PinEvent {
    PinEvent {
        event,
        kind,
        name: name.to_string(),
        sha256: sha.to_string(),
        change: None,
        previous_sha256: None,
        findings: Vec::new(),
        copy_of: None,
    }
}

#[cfg(test)]
mod tests;
