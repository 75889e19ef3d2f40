//! The audit ledger: an append-only, hash-chained JSON Lines file with signed checkpoints
//! (see `chain`, `ledger`, `verify`). Every stage submits records through an `AuditSink`;
//! a call's record is made durable before the call is forwarded (`record_durable`).

pub mod bound;
pub mod chain;
pub mod files;
pub mod journal;
pub mod ledger;
pub mod query;
pub mod sign;
pub mod verify;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::config::Audit as AuditConfig;
use ledger::{Msg, Writer};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit ledger {path}: {source} (check audit.path and that its directory is writable)")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit ledger {path} is damaged at its end ({reason}): run `mcp-gateway audit verify`, and move the file aside to start a new chain")]
    Damaged { path: PathBuf, reason: String },
    #[error(transparent)]
    Key(#[from] sign::KeyError),
    #[error("the audit ledger did not record it: {0}")]
    NotRecorded(String),
}

/// Handle to submit records; cheap to clone.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<Msg>,
}

pub struct AuditWriter {
    tx: mpsc::Sender<Msg>,
    thread: std::thread::JoinHandle<()>,
    ticker: tokio::task::JoinHandle<()>,
    pub public_key: String,
}

/// Opens (or starts) the ledger and its writer thread.
pub async fn open(cfg: &AuditConfig) -> Result<(AuditSink, AuditWriter), AuditError> {
    let cfg = cfg.clone();
    let writer = tokio::task::spawn_blocking(move || Writer::open(&cfg))
        .await
        .expect("the ledger opener does not panic")?;
    let public_key = writer.public_key_hex();
    let (tx, rx) = mpsc::channel(16 * 1024);
    let thread = std::thread::Builder::new()
        .name("audit-ledger".into())
        .spawn(move || writer.run(rx))
        .expect("spawning the audit thread");
    let tick_tx = tx.clone();
    let ticker = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            if tick_tx.send(Msg::Tick).await.is_err() {
                return;
            }
        }
    });
    Ok((
        AuditSink { tx: tx.clone() },
        AuditWriter {
            tx,
            thread,
            ticker,
            public_key,
        },
    ))
}

fn to_map<T: Serialize>(record: &T) -> Option<serde_json::Map<String, Value>> {
    match serde_json::to_value(record) {
        Ok(Value::Object(m)) => Some(m),
        Ok(_) => {
            tracing::error!("audit record is not a JSON object");
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "audit record not serialisable");
            None
        }
    }
}

impl AuditSink {
    /// Queues one record (written with the next batch; waits when the writer is behind
    /// rather than dropping it).
    pub async fn record<T: Serialize>(&self, record: &T) {
        let Some(map) = to_map(record) else { return };
        if self.tx.send(Msg::Record(map, None)).await.is_err() {
            tracing::error!("audit writer is gone; record lost");
        }
    }

    /// Writes one record and returns once it is on disk as `audit.sync` demands; the
    /// caller must not act (forward a call) before this returns Ok. Returns its sequence
    /// number.
    pub async fn record_durable<T: Serialize>(&self, record: &T) -> Result<u64, AuditError> {
        let map = to_map(record)
            .ok_or_else(|| AuditError::NotRecorded("the record could not be serialised".into()))?;
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Msg::Record(map, Some(done)))
            .await
            .map_err(|_| AuditError::NotRecorded("the audit writer has stopped".into()))?;
        wait.await
            .map_err(|_| AuditError::NotRecorded("the audit writer has stopped".into()))?
            .map_err(AuditError::NotRecorded)
    }
}

impl AuditWriter {
    /// Writes a final checkpoint, syncs, and stops the writer. Records submitted before
    /// this call are written first.
    pub async fn finish(self) {
        self.ticker.abort();
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Finish(done)).await.is_ok() {
            let _ = wait.await;
        }
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
    }
}

/// RFC 3339 time with microseconds, UTC.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}
