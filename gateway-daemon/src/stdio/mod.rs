//! The stdio stage: MCP servers an agent starts as child processes and speaks to over their
//! stdin and stdout, mediated without touching the agent's MCP configuration.
//!
//! The path, in order:
//! - `filter`: the launcher (`mcp-gateway exec`) installs a seccomp filter that sends every
//!   exec of the agent's tree to the daemon as a user notification;
//! - `enrol`: the launcher hands the filter's listener to the daemon, which checks who sent
//!   it, before the agent runs (no daemon: no agent);
//! - `supervise`: per exec, `memory` reads what is executed, `matcher` finds the configured
//!   server it starts (most execs start none and go on untouched);
//! - `swap`: for a server, the daemon takes the ends of the agent's pipes and gives the
//!   server new pipes to the daemon instead;
//! - `relay`: newline-delimited JSON-RPC through the MCP stage (principal, policy,
//!   approvals, pins, redaction, the write-ahead ledger), as over HTTP.
//!
//! Fail closed: an exec that cannot be read or mediated fails (EPERM); with the daemon
//! gone, the filter has no listener and every exec of the tree fails (ENOSYS).

mod check;
pub mod enrol;
pub mod filter;
mod matcher;
mod memory;
mod relay;
mod resolve;
mod store;
mod supervise;
mod swap;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::daemon::Daemon;

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("installing the exec filter ({step}): {source}")]
    Filter {
        step: &'static str,
        source: std::io::Error,
    },
    #[error(
        "this process already has a seccomp listener (it runs under another `mcp-gateway exec` \
         or a container runtime's supervisor): a second one cannot be installed"
    )]
    AlreadyFiltered,
    #[error("reading {what} of process {pid}: {source}")]
    Read {
        pid: u32,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("the server cannot be mediated: {why}")]
    NotMediable { why: String },
    #[error("swapping the server's stdio ({step}): {source}")]
    Swap {
        step: &'static str,
        source: std::io::Error,
    },
    #[error("the daemon's stdio socket {path}: {source}")]
    Socket {
        path: String,
        source: std::io::Error,
    },
    #[error("the daemon refused the enrolment: {0}")]
    Refused(String),
}

/// Records of one kind a tree or relay may write per second; past that they are counted, and
/// the count goes on the next record written (a loop of execs cannot flood the ledger).
const RECORDS_PER_SECOND: u32 = 20;

/// Bounds how fast one source writes records of one kind.
pub struct Paced {
    window: std::time::Instant,
    written: u32,
    suppressed: u64,
}

impl Default for Paced {
    fn default() -> Self {
        Self {
            window: std::time::Instant::now(),
            written: 0,
            suppressed: 0,
        }
    }
}

impl Paced {
    /// `Some(records suppressed since the last one written)` when this one may be written.
    pub fn admit(&mut self) -> Option<u64> {
        if self.window.elapsed() >= std::time::Duration::from_secs(1) {
            self.window = std::time::Instant::now();
            self.written = 0;
        }
        if self.written >= RECORDS_PER_SECOND {
            self.suppressed += 1;
            return None;
        }
        self.written += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// An enrolled process tree: what one launcher started.
pub struct Tree {
    pub id: u64,
    /// The launcher's pid when it enrolled.
    pub launcher: u32,
    pub cgroup: String,
    /// Its listener's name in the service manager's store.
    pub stored_as: String,
}

/// The stdio stage's shared state.
pub struct Stage {
    pub daemon: Arc<Daemon>,
    runtime: tokio::runtime::Handle,
    matcher: Arc<matcher::Matcher>,
    /// The kernel's check that an exec ran what the daemon decided on (None: the kernel
    /// refused it; the reason is in `check_error`).
    check: Option<check::ExecCheck>,
    pub check_error: Option<String>,
    /// The kernel's notes of what each exec loaded: an agent's program set or changed since
    /// names nothing (None: the instance's maps could not be opened; then nothing vouches
    /// for any agent's program, `Unvouched::Unknown`).
    notes: Option<crate::intercept::exec_notes::ExecNotes>,
    /// Live relays by the (device, inode) of the pipes their server holds as stdio.
    relays: Mutex<HashMap<(u64, u64), Weak<relay::Relay>>>,
    /// Live relays per uid: each holds four descriptors and two tasks of the daemon.
    live: Mutex<HashMap<u32, usize>>,
    /// Enrolled trees with a process left.
    trees: std::sync::atomic::AtomicUsize,
    next: AtomicU64,
}

/// The stage, for `status` (set once the daemon serves stdio).
static RUNNING: std::sync::OnceLock<std::sync::Weak<Stage>> = std::sync::OnceLock::new();

/// What `status` shows of stdio mediation (None: no stdio server is configured).
pub fn status() -> Option<serde_json::Value> {
    let stage = RUNNING.get()?.upgrade()?;
    let servers: usize = stage
        .live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .sum();
    let (checked, killed) = stage.check_counts().unwrap_or((0, 0));
    Some(serde_json::json!({
        "socket": stage.daemon.config.stdio.socket,
        "trees": stage.trees.load(Ordering::Relaxed),
        "servers": servers,
        "exec_check": match &stage.check_error {
            None => "attached (tp_btf/sched_process_exec)".to_string(),
            Some(e) => format!("unavailable: {e}"),
        },
        "execs_checked": checked,
        "execs_killed": killed,
    }))
}

/// One live relay of a user, given back when the relay ends.
pub struct Slot {
    stage: Arc<Stage>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut live = self.stage.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = live.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                live.remove(&self.uid);
            }
        }
    }
}

impl Stage {
    pub fn new(daemon: Arc<Daemon>, runtime: tokio::runtime::Handle) -> Arc<Self> {
        let matcher = Arc::new(matcher::Matcher::of(&daemon.config));
        let (check, check_error) = match check::ExecCheck::load() {
            Ok(c) => {
                tracing::info!("exec check attached (tp_btf/sched_process_exec): an exec that runs other than what the daemon decided on is killed");
                (Some(c), None)
            }
            Err(e) => {
                tracing::warn!(error = %e, "the exec check could not be attached: a process of an enrolled tree that changes an exec's path or arguments after the daemon read them (another thread, a swapped link) is not caught");
                (None, Some(e))
            }
        };
        let maps = crate::intercept::pin_dir(&daemon.config).join("maps");
        let notes = match crate::intercept::exec_notes::ExecNotes::open(&maps) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(error = %e, "the kernel's exec notes cannot be read: agents that start stdio servers are named for no program");
                None
            }
        };
        Arc::new(Self {
            daemon,
            runtime,
            matcher,
            check,
            check_error,
            notes,
            relays: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            trees: std::sync::atomic::AtomicUsize::new(0),
            next: AtomicU64::new(1),
        })
    }

    /// Makes this the stage `status` reports.
    pub fn publish(self: &Arc<Self>) {
        let _ = RUNNING.set(Arc::downgrade(self));
    }

    fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn matcher(&self) -> Arc<matcher::Matcher> {
        self.matcher.clone()
    }

    /// The relay whose pipes `pid` holds as its stdin or stdout, if any.
    fn relay_holding(&self, pid: u32) -> Option<Arc<relay::Relay>> {
        let marks = swap::stdio_marks(pid);
        let relays = self.relays.lock().unwrap_or_else(|p| p.into_inner());
        marks
            .iter()
            .flatten()
            .find_map(|m| relays.get(m).and_then(Weak::upgrade))
    }

    fn register(&self, marks: [(u64, u64); 2], relay: &Arc<relay::Relay>) {
        let mut relays = self.relays.lock().unwrap_or_else(|p| p.into_inner());
        relays.retain(|_, r| r.strong_count() > 0);
        for m in marks {
            relays.insert(m, Arc::downgrade(relay));
        }
    }

    /// A relay for `uid`, within `stdio.max_servers_per_user` live ones: one user's
    /// servers cannot spend the daemon's descriptors for everyone.
    fn slot(self: &Arc<Self>, uid: u32) -> Result<Slot, StdioError> {
        let max = self.daemon.config.stdio.max_servers_per_user;
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let n = live.entry(uid).or_default();
        if *n >= max {
            return Err(StdioError::NotMediable {
                why: format!(
                    "uid {uid} already has {n} mediated stdio servers running \
                     (stdio.max_servers_per_user)"
                ),
            });
        }
        *n += 1;
        Ok(Slot {
            stage: self.clone(),
            uid,
        })
    }

    /// Execs the kernel's check looked at and killed (None: no check).
    pub fn check_counts(&self) -> Option<(u64, u64)> {
        self.check.as_ref().map(check::ExecCheck::counts)
    }

    /// Whether any `[[server]]` is started over stdio (has a `command`).
    pub fn configured(config: &crate::config::Config) -> bool {
        config.servers.iter().any(|s| s.command.is_some())
    }
}
