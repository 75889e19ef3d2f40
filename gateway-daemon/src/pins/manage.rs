//! What administrators do with pins through the admin socket: look, compare, approve,
//! reject, forget. Every change is saved before it is reported, and reported to the audit
//! by the caller with the administrator's uid.

use serde_json::{json, Value};

use super::store::{key, Pin};
use super::{now, Pins, PinsError};

fn admin(msg: String) -> PinsError {
    PinsError::Admin(msg)
}

impl Pins {
    /// Every server seen, with what is pinned and what waits.
    pub fn list(&self) -> Value {
        let state = self.lock();
        let servers: Vec<Value> = state
            .servers
            .iter()
            .map(|(name, p)| {
                let pending: Vec<Value> = p
                    .pending
                    .values()
                    .map(|d| {
                        json!({"kind": d.kind, "name": d.name, "change": d.change,
                               "findings": d.findings.len(), "rejected": d.rejected})
                    })
                    .collect();
                json!({
                    "server": name,
                    "mode": self.mode(name),
                    "first_seen": p.first_seen,
                    "approved": p.approved.len(),
                    "missing": p.approved.values().filter(|a| a.missing_since.is_some()).count(),
                    "pending": pending,
                })
            })
            .collect();
        json!({ "servers": servers })
    }

    /// Each waiting definition of `server` beside the approved one it would replace.
    pub fn diff(&self, server: &str) -> Result<Value, PinsError> {
        let state = self.lock();
        let p = state
            .servers
            .get(server)
            .ok_or_else(|| admin(format!("no pins for server {server:?} (see `pins list`)")))?;
        let items: Vec<Value> = p
            .pending
            .iter()
            .map(|(k, d)| {
                json!({
                    "kind": d.kind, "name": d.name, "change": d.change, "rejected": d.rejected,
                    "seen_at": d.seen_at, "findings": d.findings,
                    "approved": p.approved.get(k).map(|a| &a.definition),
                    "approved_sha256": p.approved.get(k).map(|a| &a.sha256),
                    "listed": d.definition, "listed_sha256": d.sha256,
                })
            })
            .collect();
        Ok(json!({ "server": server, "pending": items }))
    }

    /// Approves the waiting definitions of `server` (those named `name`, or all).
    pub fn approve(
        &self,
        server: &str,
        name: Option<&str>,
        by: &str,
    ) -> Result<Vec<String>, PinsError> {
        let mut state = self.lock();
        let p = state
            .servers
            .get_mut(server)
            .ok_or_else(|| admin(format!("no pins for server {server:?} (see `pins list`)")))?;
        let keys: Vec<String> = p
            .pending
            .iter()
            .filter(|(_, d)| name.is_none_or(|n| d.name == n))
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            return Err(admin(match name {
                Some(n) => format!("nothing named {n:?} waits for approval on server {server:?}"),
                None => format!("nothing waits for approval on server {server:?}"),
            }));
        }
        for k in &keys {
            let d = p.pending.remove(k).expect("key listed above");
            p.approved.insert(
                key(d.kind, &d.name),
                Pin {
                    kind: d.kind,
                    name: d.name,
                    sha256: d.sha256,
                    definition: d.definition,
                    pinned_at: now(),
                    by: by.to_string(),
                    missing_since: None,
                },
            );
        }
        let snapshot = state.clone();
        drop(state);
        super::store::save(&self.path, &snapshot)?;
        Ok(keys)
    }

    /// Marks waiting definitions rejected: they stay hidden and refused, and drop out of
    /// the review queue until the server lists something different.
    pub fn reject(&self, server: &str, name: Option<&str>) -> Result<Vec<String>, PinsError> {
        let mut state = self.lock();
        let p = state
            .servers
            .get_mut(server)
            .ok_or_else(|| admin(format!("no pins for server {server:?} (see `pins list`)")))?;
        let mut keys = Vec::new();
        for (k, d) in p.pending.iter_mut() {
            if name.is_none_or(|n| d.name == n) && !d.rejected {
                d.rejected = true;
                keys.push(k.clone());
            }
        }
        if keys.is_empty() {
            return Err(admin(format!(
                "nothing to reject on server {server:?}{}",
                name.map(|n| format!(" named {n:?}")).unwrap_or_default()
            )));
        }
        let snapshot = state.clone();
        drop(state);
        super::store::save(&self.path, &snapshot)?;
        Ok(keys)
    }

    /// Drops everything pinned for `server`: its next listing is a first sight again.
    pub fn forget(&self, server: &str) -> Result<usize, PinsError> {
        let mut state = self.lock();
        let p = state
            .servers
            .remove(server)
            .ok_or_else(|| admin(format!("no pins for server {server:?} (see `pins list`)")))?;
        let snapshot = state.clone();
        drop(state);
        super::store::save(&self.path, &snapshot)?;
        Ok(p.approved.len() + p.pending.len())
    }
}
