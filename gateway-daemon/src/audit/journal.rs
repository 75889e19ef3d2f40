//! Each ledger record also goes to journald (when configured and present), as structured
//! fields, so host-level log shipping collects the audit without reading the file. A
//! thread of its own sends them: turning a line into fields and the send itself stay off
//! every call's path and out of the chain's lock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};

use libsystemd::logging::{journal_send, Priority};
use serde_json::Value;

static FAILED: AtomicBool = AtomicBool::new(false);

/// Lines waiting for the journal thread, at most.
const QUEUE: usize = 8192;

/// The journal thread, fed sealed lines.
pub struct Forwarder {
    tx: Option<SyncSender<Vec<u8>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    dropped: AtomicU64,
}

impl Forwarder {
    pub fn start() -> std::io::Result<Self> {
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE);
        let thread = std::thread::Builder::new()
            .name("audit-journal".into())
            .spawn(move || {
                for line in rx {
                    send(&line);
                }
            })?;
        Ok(Forwarder {
            tx: Some(tx),
            thread: Some(thread),
            dropped: AtomicU64::new(0),
        })
    }

    /// Queues a sealed line. journald behind by a whole queue loses lines rather than
    /// slowing calls down: the file, which has every one, is the record of truth.
    pub fn forward(&self, line: &[u8]) {
        let Some(tx) = &self.tx else { return };
        if let Err(TrySendError::Full(_)) = tx.try_send(line.to_vec()) {
            if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!("journald is behind: audit records are not all sent to it (the ledger file has them all)");
            }
        }
    }

    /// Sends what is queued and stops the thread.
    pub fn finish(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(dropped, "audit records not sent to journald");
        }
    }
}

/// Sends one sealed record line. The file stays the record of truth: a journald failure is
/// logged once and otherwise ignored.
fn send(line: &[u8]) {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(line) else {
        return;
    };
    let get = |k: &str| map.get(k).and_then(Value::as_str).unwrap_or("");
    let message = format!(
        "mcp-gateway audit {} {} {} {}",
        get("type"),
        get("method"),
        get("name"),
        get("outcome")
    );
    let mut vars: Vec<(String, String)> = vec![
        ("SYSLOG_IDENTIFIER".into(), "mcp-gateway-audit".into()),
        (
            "MCP_AUDIT_RECORD".into(),
            String::from_utf8_lossy(line).trim_end().to_string(),
        ),
    ];
    for (k, v) in &map {
        let value = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => continue,
        };
        let key: String = k
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        vars.push((format!("MCP_{key}"), value));
    }
    if let Err(e) = journal_send(Priority::Info, &message, vars.into_iter()) {
        if !FAILED.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "sending audit records to journald failed (further failures are not logged)");
        }
    }
}
