//! The audit trail: one JSON object per line, appended by a single writer task so records
//! from concurrent connections never interleave. (The hash chain, write-ahead sync and
//! signatures of the full ledger build on this writer.)

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit file {path}: {source} (check audit.path and that its directory is writable)")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Handle to submit records; cheap to clone.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<Vec<u8>>,
}

pub struct AuditWriter {
    task: JoinHandle<()>,
}

/// Opens (creating) the audit file and starts its writer.
pub async fn open(path: &Path) -> Result<(AuditSink, AuditWriter), AuditError> {
    let open_err = |source| AuditError::Open {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir).await.map_err(open_err)?;
    }
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(open_err)?;
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4096);
    let shown = path.display().to_string();
    let task = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            let mut batch = line;
            // Whatever queued meanwhile goes out in the same write.
            while let Ok(more) = rx.try_recv() {
                batch.extend_from_slice(&more);
            }
            if let Err(e) = async {
                file.write_all(&batch).await?;
                file.flush().await
            }
            .await
            {
                tracing::error!(path = %shown, error = %e, "audit write failed");
            }
        }
    });
    Ok((AuditSink { tx }, AuditWriter { task }))
}

impl AuditSink {
    /// Queues one record; waits when the writer is behind rather than dropping it.
    pub async fn record<T: Serialize>(&self, record: &T) {
        let mut line = match serde_json::to_vec(record) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "audit record not serialisable");
                return;
            }
        };
        line.push(b'\n');
        if self.tx.send(line).await.is_err() {
            tracing::error!("audit writer is gone; record lost");
        }
    }
}

impl AuditWriter {
    /// Waits until every record queued by now-dropped sinks is written.
    pub async fn finish(self) {
        let _ = self.task.await;
    }
}

/// RFC 3339 time with microseconds, UTC.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}
