//! The audit ledger: an append-only, hash-chained JSON Lines file with signed checkpoints
//! (see `chain`, `ledger`, `verify`). Every stage writes records through an `AuditSink`,
//! from its own task. A call's record is written before the call is forwarded, and durable
//! (as `audit.sync` demands) before the agent sees its result: `record_durable` returns
//! once it is written, and `Written::durable` waits for the sync, which so overlaps the
//! upstream's round trip instead of preceding it.

pub mod bound;
pub mod chain;
pub mod encode;
pub mod files;
pub mod journal;
mod journal_entry;
pub mod ledger;
pub mod link;
pub mod query;
pub mod sign;
mod stamp;
pub mod syncer;
pub mod verify;

pub use stamp::timestamp;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::oneshot;

use crate::config::Audit as AuditConfig;
use encode::EncodeError;
use ledger::Chain;
use syncer::{Ledger, Synced};

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

/// Handle to write records; cheap to clone.
#[derive(Clone)]
pub struct AuditSink {
    ledger: Arc<Ledger>,
}

pub struct AuditWriter {
    ledger: Arc<Ledger>,
    thread: std::thread::JoinHandle<()>,
    pub public_key: String,
}

/// A record in the ledger file, not yet known durable.
#[must_use = "a written record is durable only once `durable` says so"]
pub struct Written {
    seq: u64,
    sync: Option<oneshot::Receiver<Synced>>,
}

impl Written {
    /// Whether the record still waits for a sync (`audit.sync` other than `none`).
    pub fn waits(&self) -> bool {
        self.sync.is_some()
    }

    /// Returns once the record is on disk as `audit.sync` demands (at once with `none`).
    pub async fn durable(self) -> Result<u64, AuditError> {
        let Some(sync) = self.sync else {
            return Ok(self.seq);
        };
        match sync.await {
            Ok(Ok(())) => Ok(self.seq),
            Ok(Err(why)) => Err(AuditError::NotRecorded(why.to_string())),
            Err(_) => Err(AuditError::NotRecorded(
                "the audit syncer has stopped".into(),
            )),
        }
    }
}

/// Opens (or starts) the ledger and its syncer thread.
pub async fn open(cfg: &AuditConfig) -> Result<(AuditSink, AuditWriter), AuditError> {
    let cfg = cfg.clone();
    let chain = tokio::task::spawn_blocking(move || Chain::open(&cfg))
        .await
        .expect("the ledger opener does not panic")?;
    let public_key = chain.public_key_hex();
    let ledger = Arc::new(Ledger::new(chain));
    let run = ledger.clone();
    let thread = std::thread::Builder::new()
        .name("audit-sync".into())
        .spawn(move || run.run())
        .expect("spawning the audit thread");
    Ok((
        AuditSink {
            ledger: ledger.clone(),
        },
        AuditWriter {
            ledger,
            thread,
            public_key,
        },
    ))
}

impl AuditSink {
    /// Writes one record now (durable with the next sync). A record that cannot be
    /// written is logged as lost.
    pub fn record_now<T: Serialize + ?Sized>(&self, record: &T) {
        self.now(encode::body(record))
    }

    /// As `record_now`, for async callers.
    pub async fn record<T: Serialize + ?Sized>(&self, record: &T) {
        self.record_now(record)
    }

    /// Writes one record; the caller may act on it (forward a call) once this returns Ok,
    /// and must not show anyone the call's outcome before `Written::durable` returns Ok.
    pub fn record_durable<T: Serialize + ?Sized>(&self, record: &T) -> Result<Written, AuditError> {
        self.durable(encode::body(record))
    }

    /// As `record_now`, for a record that writes its own JSON object (the hot path's).
    pub fn record_json_now(&self, write: impl FnOnce(&mut Vec<u8>)) {
        self.now(own_json(write))
    }

    /// As `record_durable`, for a record that writes its own JSON object.
    pub fn record_json_durable(
        &self,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Written, AuditError> {
        self.durable(own_json(write))
    }

    fn now(&self, body: Result<Vec<u8>, EncodeError>) {
        if let Err(e) = self.append(body) {
            tracing::error!(error = %e, "audit record lost");
        }
    }

    fn durable(&self, body: Result<Vec<u8>, EncodeError>) -> Result<Written, AuditError> {
        let seq = self.append(body)?;
        let sync = self.ledger.syncs().then(|| self.ledger.request_sync());
        Ok(Written { seq, sync })
    }

    fn append(&self, body: Result<Vec<u8>, EncodeError>) -> Result<u64, AuditError> {
        let body = body.map_err(|e| AuditError::NotRecorded(e.to_string()))?;
        let mut chain = self.ledger.chain();
        let seq = chain.append_now(&body).map_err(|e| {
            AuditError::NotRecorded(format!("writing {}: {e}", chain.cfg.path.display()))
        })?;
        let rotate = chain.rotation_due();
        drop(chain);
        if rotate {
            self.ledger.request_rotation();
        }
        Ok(seq)
    }
}

/// The body of a record that writes its own JSON object.
fn own_json(write: impl FnOnce(&mut Vec<u8>)) -> Result<Vec<u8>, EncodeError> {
    encode::body_with(|out| {
        write(out);
        Ok(())
    })
}

impl AuditWriter {
    /// Writes a final checkpoint, syncs, and stops the syncer. Records written before this
    /// call are in it.
    pub async fn finish(self) {
        self.ledger.request_stop();
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
    }
}
