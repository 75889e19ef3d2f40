//! The daemon's admin socket: how `mcp-gateway pins|approvals|status` reach the running
//! daemon. JSON lines over a Unix stream socket, one response line per request, in order:
//!
//! ```text
//! → {"op": "pins.list", "args": {}}
//! ← {"ok": true, "result": ...}      or      {"ok": false, "error": "..."}
//! ```
//!
//! Who may ask is decided by the kernel's peer credentials (root, or a member of
//! `admin.group` by primary or supplementary group), never by anything the client says; the
//! socket's file mode is only a second fence.

mod client;
mod listener;
pub mod ops;
mod peer;
mod protocol;
mod server;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use serde_json::Value;

pub use client::call;
pub use listener::AdminListener;
pub use server::serve;

/// A request line longer than this is refused and its connection closed: the daemon never
/// buffers an unbounded line for a client.
pub const MAX_LINE: usize = 1024 * 1024;
/// A client that sends no complete request for this long is disconnected.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`call`] waits for the daemon's answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Who is asking, as the kernel saw it when the client connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

/// What a [`Handler`] returns: the `result` of an `ok` response, or the `error` message
/// shown to the administrator.
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Result<Value, String>> + Send + 'a>>;

/// Answers the authorized requests of the admin socket. Runs only for callers that passed
/// the peer-credential check.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, caller: &Caller, op: &str, args: Value) -> HandlerFuture<'_>;
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no mcp-gateway daemon is listening on {} (is the service running? see admin.socket in the config)", path.display())]
    NotRunning { path: PathBuf },
    #[error("permission denied on {}: run as root or as a member of the admin group (admin.group in the config)", path.display())]
    PermissionDenied { path: PathBuf },
    #[error("another mcp-gateway is using {}: stop it, or set admin.socket to another path", path.display())]
    AnotherDaemon { path: PathBuf },
    #[error("{} exists and is not a socket: remove it, or set admin.socket to another path", path.display())]
    NotASocket { path: PathBuf },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the daemon on {} did not answer within {} s", path.display(), timeout.as_secs_f64())]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("the request is {bytes} bytes, over the admin socket's limit of {MAX_LINE} bytes")]
    TooLarge { bytes: usize },
    #[error("the daemon on {} answered something unexpected: {reason}", path.display())]
    Protocol { path: PathBuf, reason: String },
    /// The daemon answered `ok: false`; its message, verbatim.
    #[error("{0}")]
    Refused(String),
}
