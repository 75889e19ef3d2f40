//! Human approval of single calls: a request a rule answers with `ask` is held — the
//! agent's HTTP exchange stays open — until an administrator approves or denies it through
//! the admin socket, or until the timeout denies it. An approval is bound to the exact call
//! (principal, process, server, tool, SHA-256 of the arguments, policy generation); an
//! administrator may widen it on purpose to the session or to a time window.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::audit::timestamp;
use crate::config;

/// What is held. Serialised (into the ledger's `approval` records) it names the call by
/// the digest of its parameters, never the arguments: those — redacted — live in memory
/// only, for `approvals list`, as long as the call is held.
#[derive(Debug, Clone, Serialize)]
pub struct Call {
    /// The connection the call came on (its `mcp_call` and `mcp` records carry the same).
    pub connection: crate::audit::link::ConnId,
    /// The principal's name (or `unknown`).
    pub principal: String,
    pub uid: u32,
    pub tgid: u32,
    /// Start time of the process (with tgid, what identifies it).
    pub start_time: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    pub server: String,
    pub method: String,
    pub tool: String,
    /// SHA-256 of the request's `params` as the agent sent them.
    pub arguments_sha256: String,
    /// The arguments with secrets redacted, cut to a readable size: for the administrator
    /// deciding, not for the ledger.
    #[serde(skip)]
    pub arguments: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    pub policy_generation: u64,
    /// The rule that said `ask`.
    pub rule: String,
}

/// How an administrator answered.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub approved: bool,
    pub by_uid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `call` (this call only), `session`, or `for Ns`.
    pub scope: String,
}

/// The end of a hold.
#[derive(Debug, Clone)]
pub enum Outcome {
    Decided(Verdict),
    TimedOut(Duration),
    /// Too many calls are held already.
    Full(usize),
    /// An earlier approval covers this call.
    Granted(Verdict),
}

/// How far an approval reaches beyond the call it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Widen {
    Call,
    Session,
    For(Duration),
}

struct Held {
    call: Call,
    held_at: SystemTime,
    deadline: Instant,
    tx: Option<oneshot::Sender<Verdict>>,
}

/// A reusable approval: same principal, server, tool and policy generation, and the same
/// session (`--for-session`) or any session until `until` (`--for`).
struct Grant {
    principal: String,
    uid: u32,
    exe: Option<String>,
    /// For a process named for no program (its executable unvouched for): that process
    /// (tgid, start time). Its program cannot be told from any other unnamed one, a
    /// forger's included, so the grant goes no further than the process it was given to.
    process: Option<(u32, u64)>,
    server: String,
    tool: String,
    session: Option<String>,
    policy_generation: u64,
    until: Instant,
    verdict: Verdict,
}

impl Grant {
    fn covers(&self, c: &Call, now: Instant) -> bool {
        now < self.until
            && self.principal == c.principal
            && self.uid == c.uid
            && self.exe == c.exe
            && self.process.is_none_or(|p| p == (c.tgid, c.start_time))
            && self.server == c.server
            && self.tool == c.tool
            && self.policy_generation == c.policy_generation
            && (self.session.is_none() || self.session == c.session)
    }
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    held: BTreeMap<u64, Held>,
    grants: Vec<Grant>,
}

pub struct Approvals {
    cfg: config::Approvals,
    inner: Mutex<Inner>,
}

/// Removes a held call when its waiter goes away (the agent hung up, the task ended).
struct Release<'a> {
    approvals: &'a Approvals,
    id: u64,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.approvals.lock().held.remove(&self.id);
    }
}

impl Approvals {
    pub fn new(cfg: &config::Approvals) -> Self {
        Approvals {
            cfg: cfg.clone(),
            inner: Mutex::new(Inner {
                next_id: 1,
                ..Default::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.timeout_s)
    }

    pub fn progress_interval(&self) -> Duration {
        Duration::from_secs(self.cfg.progress_interval_s)
    }

    pub fn pending(&self) -> usize {
        self.lock().held.len()
    }

    /// Registers `call`; `Err` when an existing grant covers it or no room is left.
    /// Otherwise returns the id and a receiver of the administrator's verdict.
    pub fn hold(&self, call: Call) -> Result<(u64, oneshot::Receiver<Verdict>), Outcome> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.grants.retain(|g| g.until > now);
        if let Some(g) = inner.grants.iter().find(|g| g.covers(&call, now)) {
            return Err(Outcome::Granted(g.verdict.clone()));
        }
        if inner.held.len() >= self.cfg.max_held {
            return Err(Outcome::Full(self.cfg.max_held));
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let (tx, rx) = oneshot::channel();
        inner.held.insert(
            id,
            Held {
                call,
                held_at: SystemTime::now(),
                deadline: now + self.timeout(),
                tx: Some(tx),
            },
        );
        Ok((id, rx))
    }

    /// Waits for the verdict on `id` (from `hold`) until the timeout.
    pub async fn wait(&self, id: u64, rx: oneshot::Receiver<Verdict>) -> Outcome {
        let _release = Release {
            approvals: self,
            id,
        };
        match tokio::time::timeout(self.timeout(), rx).await {
            Ok(Ok(v)) => Outcome::Decided(v),
            // The sender is only dropped with its entry, which `_release` still holds.
            Ok(Err(_)) | Err(_) => Outcome::TimedOut(self.timeout()),
        }
    }

    /// What waits, oldest first.
    pub fn list(&self) -> Value {
        let now = Instant::now();
        let inner = self.lock();
        let held: Vec<Value> = inner
            .held
            .iter()
            .map(|(id, h)| {
                let mut call = json!(h.call);
                call["arguments"] = h.call.arguments.clone();
                json!({
                    "id": id,
                    "held_at": timestamp(h.held_at),
                    "expires_in_s": h.deadline.saturating_duration_since(now).as_secs(),
                    "call": call,
                })
            })
            .collect();
        json!({ "held": held, "grants": inner.grants.iter().filter(|g| g.until > now).count() })
    }

    /// Answers held call `id`. Returns the call it answered, for the audit.
    pub fn decide(
        &self,
        id: u64,
        approved: bool,
        by_uid: u32,
        reason: Option<String>,
        widen: Widen,
    ) -> Result<(Call, Verdict), String> {
        let mut inner = self.lock();
        let held = inner
            .held
            .get_mut(&id)
            .ok_or_else(|| format!("no call {id} is waiting (see `approvals list`); it may have been answered or timed out"))?;
        let scope = match widen {
            Widen::Call => "call".to_string(),
            Widen::Session => "session".to_string(),
            Widen::For(d) => format!("for {}s", d.as_secs()),
        };
        if !approved && widen != Widen::Call {
            return Err(
                "a denial applies to one call; --for-session and --for widen approvals only".into(),
            );
        }
        if let Widen::For(d) = widen {
            if d.as_secs() > self.cfg.max_grant_s {
                return Err(format!(
                    "--for {}s is longer than approvals.max_grant_s ({}s)",
                    d.as_secs(),
                    self.cfg.max_grant_s
                ));
            }
        }
        if widen == Widen::Session && held.call.session.is_none() {
            return Err(format!(
                "call {id} has no MCP session to widen the approval to"
            ));
        }
        if held.tx.is_none() {
            return Err(format!("call {id} was already answered"));
        }
        // Taken only once the answer is valid: a refused answer leaves the call waiting.
        let tx = held
            .tx
            .take()
            .ok_or_else(|| format!("call {id} was already answered"))?;
        let verdict = Verdict {
            approved,
            by_uid,
            reason,
            scope,
        };
        let call = held.call.clone();
        let until = match widen {
            Widen::Call => None,
            Widen::Session => Some(Instant::now() + Duration::from_secs(self.cfg.max_grant_s)),
            Widen::For(d) => Some(Instant::now() + d),
        };
        if let (true, Some(until)) = (approved, until) {
            inner.grants.push(Grant {
                principal: call.principal.clone(),
                uid: call.uid,
                exe: call.exe.clone(),
                process: call.exe.is_none().then_some((call.tgid, call.start_time)),
                server: call.server.clone(),
                tool: call.tool.clone(),
                session: (widen == Widen::Session)
                    .then(|| call.session.clone())
                    .flatten(),
                policy_generation: call.policy_generation,
                until,
                verdict: verdict.clone(),
            });
        }
        // The waiter may be gone this instant (the agent hung up); the answer is still
        // recorded by the caller.
        let _ = tx.send(verdict.clone());
        Ok((call, verdict))
    }
}

#[cfg(test)]
mod tests;
