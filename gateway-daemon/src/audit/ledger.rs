//! The ledger file and the chain's position in it. A record is sealed and written by the
//! task that makes it, under one lock (`Chain::append`): one `write` and no hand-off to
//! another thread on a call's path. Making it durable is the syncer's (`syncer`), which
//! also writes checkpoints, the signed head and rotates. At most every second (and at
//! rotation and stop) the signed head (`<path>.head`) is rewritten to name the newest
//! record, so cutting records off the end is found by `audit verify` — except records of
//! the last second, which is what keeps the head out of every call's latency.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ed25519_dalek::SigningKey;
use serde_json::{json, Map, Value};

use super::chain::{self, seal_body, sha256_hex, GENESIS_PREV};
use super::{encode, files, journal, sign, timestamp, AuditError};
use crate::config::{Audit as AuditConfig, Journald};

/// Longest time the signed head may lag the ledger.
pub const HEAD_EVERY: Duration = Duration::from_secs(1);

/// Where the chain stands: the open file, the last record's number and hash.
pub struct Chain {
    pub cfg: AuditConfig,
    key: SigningKey,
    /// Shared with the syncer, which syncs it without holding the chain.
    pub file: Arc<File>,
    pub seq: u64,
    head: String,
    size: u64,
    opened: Instant,
    last_checkpoint: Instant,
    since_checkpoint: u64,
    /// Sequence number the head file names, and when it was written.
    head_seq: u64,
    pub head_written: Instant,
    journald: Option<journal::Forwarder>,
}

fn io_err(path: &Path, e: std::io::Error) -> AuditError {
    AuditError::Io {
        path: path.to_owned(),
        source: e,
    }
}

/// The chain position the ledger on disk ends at, mending a torn last line.
struct Resume {
    seq: u64,
    head: String,
    torn: Option<(usize, String)>,
}

fn resume(path: &Path) -> Result<Resume, AuditError> {
    let mut torn = None;
    let mut candidates: Vec<PathBuf> = files::rotated_files(path)
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    if path.exists() {
        let t = files::tail(path).map_err(|e| io_err(path, e))?;
        if !t.torn.is_empty() {
            // A crash cut the last line short: keep every complete record, note the rest.
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| io_err(path, e))?;
            f.set_len(t.complete_len).map_err(|e| io_err(path, e))?;
            f.sync_all().map_err(|e| io_err(path, e))?;
            torn = Some((t.torn.len(), sha256_hex(&t.torn)));
        }
        candidates.push(path.to_owned());
    }
    for file in candidates.iter().rev() {
        let t = files::tail(file).map_err(|e| io_err(file, e))?;
        if let Some(line) = t.last_line {
            let r = chain::open(&line).map_err(|e| AuditError::Damaged {
                path: file.clone(),
                reason: e.to_string(),
            })?;
            return Ok(Resume {
                seq: r.seq,
                head: r.hash,
                torn,
            });
        }
    }
    Ok(Resume {
        seq: 0,
        head: GENESIS_PREV.to_string(),
        torn,
    })
}

/// Ledger files are the daemon's and its administrators': what agents did, who they are.
const FILE_MODE: u32 = 0o640;

fn open_append(path: &Path) -> Result<(File, u64), AuditError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    // A file an earlier version made readable to all is narrowed too.
    f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
        .map_err(|e| io_err(path, e))?;
    let size = f.metadata().map_err(|e| io_err(path, e))?.len();
    Ok((f, size))
}

impl Chain {
    /// Opens (or starts) the ledger and writes the records of this start.
    pub fn open(cfg: &AuditConfig) -> Result<Self, AuditError> {
        let key = sign::load_or_create(&cfg.key)?;
        if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        }
        let r = resume(&cfg.path)?;
        let (file, size) = open_append(&cfg.path)?;
        let journald_on = match cfg.journald {
            Journald::On => true,
            Journald::Off => false,
            Journald::Auto => Path::new(journal::SOCKET).exists(),
        };
        let journald = journald_on
            .then(journal::Forwarder::start)
            .transpose()
            .map_err(|e| io_err(&cfg.path, e))?;
        let mut w = Chain {
            cfg: cfg.clone(),
            key,
            file: Arc::new(file),
            seq: r.seq,
            head: r.head,
            size,
            opened: Instant::now(),
            last_checkpoint: Instant::now(),
            since_checkpoint: 0,
            head_seq: 0,
            head_written: Instant::now(),
            journald,
        };
        let pubkey = hex::encode(w.key.verifying_key().to_bytes());
        let mut buf = Vec::new();
        if w.seq == 0 {
            w.append(
                &mut buf,
                obj(json!({"type": "genesis", "time": now(), "pubkey": pubkey})),
            );
        }
        if let Some((bytes, digest)) = r.torn {
            tracing::warn!(
                bytes,
                "audit ledger ended in a torn line (crash); continuing after it"
            );
            w.append(
                &mut buf,
                obj(json!({"type": "recovery", "time": now(), "torn_bytes": bytes, "torn_sha256": digest,
                    "detail": "the last line was incomplete after a crash; it was cut off and the chain continues from the last complete record"})),
            );
        }
        w.append(
            &mut buf,
            obj(
                json!({"type": "daemon_start", "time": now(), "pid": std::process::id(),
                "version": env!("CARGO_PKG_VERSION"), "pubkey": pubkey}),
            ),
        );
        w.write(&buf)
            .and_then(|_| w.file.sync_data())
            .and_then(|_| w.write_head())
            .map_err(|e| io_err(&cfg.path, e))?;
        Ok(w)
    }

    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }

    /// Seals one record the daemon makes itself into `buf`.
    fn append(&mut self, buf: &mut Vec<u8>, mut body: Map<String, Value>) -> u64 {
        let body = encode::bounded(&mut body);
        self.push(buf, &body)
    }

    fn push(&mut self, buf: &mut Vec<u8>, body: &[u8]) -> u64 {
        let seq = self.seq + 1;
        let (line, hash) = seal_body(seq, &self.head, body);
        buf.extend_from_slice(&line);
        self.advance(seq, hash, &line);
        seq
    }

    /// The chain now ends at `line`, record `seq` with hash `hash`.
    fn advance(&mut self, seq: u64, hash: String, line: &[u8]) {
        if let Some(j) = &self.journald {
            j.forward(line);
        }
        self.seq = seq;
        self.head = hash;
        self.since_checkpoint += 1;
    }

    /// Seals `body` (from `encode::body`) and writes it: on return it is in the file (the
    /// OS's page cache; `syncer` makes it durable). The chain (and journald) moves on only
    /// once the write succeeded; a failed one is cut back, so the next record still follows.
    pub fn append_now(&mut self, body: &[u8]) -> std::io::Result<u64> {
        let seq = self.seq + 1;
        let (line, hash) = seal_body(seq, &self.head, body);
        self.write(&line)?;
        self.advance(seq, hash, &line);
        Ok(seq)
    }

    /// Writes `buf` at the end of the file, all of it or (cut back) none.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = (&*self.file).write_all(buf) {
            let _ = self.file.set_len(self.size);
            return Err(e);
        }
        self.size += buf.len() as u64;
        Ok(())
    }

    /// Appends a signed checkpoint (written with the next `write`).
    pub fn checkpoint(&mut self, buf: &mut Vec<u8>) {
        let (seq, hash) = (self.seq, self.head.clone());
        let signature = sign::sign(&self.key, seq, &hash);
        self.append(
            buf,
            obj(
                json!({"type": "checkpoint", "time": now(), "head_seq": seq, "head_hash": hash,
                "signature": signature}),
            ),
        );
        self.last_checkpoint = Instant::now();
        self.since_checkpoint = 0;
    }

    /// Writes a checkpoint when one is due (`audit.checkpoint_interval_s` since the last,
    /// and records since), or whenever records came since the last with `always`.
    pub fn checkpoint_if_due(&mut self, always: bool) -> std::io::Result<()> {
        let interval = Duration::from_secs(self.cfg.checkpoint_interval_s);
        let due =
            self.since_checkpoint > 0 && (always || self.last_checkpoint.elapsed() >= interval);
        if !due {
            return Ok(());
        }
        let mut buf = Vec::new();
        self.checkpoint(&mut buf);
        self.write(&buf)
    }

    /// Sends the records queued for journald and stops its thread (at a stop).
    pub fn finish_journal(&mut self) {
        if let Some(mut j) = self.journald.take() {
            j.finish();
        }
    }

    /// The newest record's number and hash.
    pub fn position(&self) -> (u64, String) {
        (self.seq, self.head.clone())
    }

    /// Names the newest record in the signed head file.
    pub fn write_head(&mut self) -> std::io::Result<()> {
        let pos = self.position();
        self.write_head_at(pos)
    }

    /// Names record `seq` (whose hash is `hash`) in the signed head file; the caller has
    /// made it as durable as the sync policy asks.
    pub fn write_head_at(&mut self, (seq, hash): (u64, String)) -> std::io::Result<()> {
        if self.head_seq >= seq {
            return Ok(());
        }
        let head = files::head(&self.cfg.path);
        let tmp = head.with_extension("head.tmp");
        let body = json!({
            "seq": seq,
            "hash": hash,
            "time": now(),
            "signature": sign::sign(&self.key, seq, &hash),
        });
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(FILE_MODE)
                .open(&tmp)?;
            f.write_all(format!("{body}\n").as_bytes())?;
        }
        std::fs::rename(&tmp, &head)?;
        self.head_seq = seq;
        self.head_written = Instant::now();
        Ok(())
    }

    pub fn rotation_due(&self) -> bool {
        self.size >= self.cfg.max_file_bytes
            || (self.cfg.max_file_age_s > 0
                && self.opened.elapsed() >= Duration::from_secs(self.cfg.max_file_age_s))
    }

    /// Closes the current file with a checkpoint and starts the next one, the chain going on.
    pub fn rotate(&mut self) -> std::io::Result<()> {
        let mut buf = Vec::new();
        self.checkpoint(&mut buf);
        self.write(&buf)?;
        self.file.sync_data()?;
        let n = files::rotated_files(&self.cfg.path)
            .last()
            .map_or(1, |(n, _)| n + 1);
        let to = files::rotated(&self.cfg.path, n);
        std::fs::rename(&self.cfg.path, &to)?;
        let (file, size) = open_append(&self.cfg.path).map_err(std::io::Error::other)?;
        self.file = Arc::new(file);
        self.size = size;
        self.opened = Instant::now();
        let mut buf = Vec::new();
        let from = to.file_name().map(|f| f.to_string_lossy().into_owned());
        self.append(
            &mut buf,
            obj(json!({"type": "rotated", "time": now(), "previous_file": from})),
        );
        self.write(&buf)?;
        self.file.sync_data()?;
        if self.cfg.retain_files > 0 {
            let rotated = files::rotated_files(&self.cfg.path);
            let excess = rotated.len().saturating_sub(self.cfg.retain_files);
            for (_, old) in rotated.into_iter().take(excess) {
                self.retire(&old)?;
            }
        }
        Ok(())
    }

    /// Deletes a rotated file for retention, after a signed record naming what goes (its
    /// records' seq range and the hash the chain continues from) is on disk: `verify` then
    /// tells history removed by retention from history removed by anyone else.
    fn retire(&mut self, old: &Path) -> std::io::Result<()> {
        let span = files::span(old)?;
        let name = old.file_name().map(|f| f.to_string_lossy().into_owned());
        let mut buf = Vec::new();
        match span {
            Some(span) => {
                let signature = sign::sign(&self.key, span.last_seq, &span.last_hash);
                self.append(
                    &mut buf,
                    obj(
                        json!({"type": "retention", "time": now(), "deleted_file": name,
                        "first_seq": span.first_seq, "last_seq": span.last_seq,
                        "last_hash": span.last_hash, "signature": signature}),
                    ),
                );
            }
            None => {
                self.append(
                    &mut buf,
                    obj(
                        json!({"type": "retention", "time": now(), "deleted_file": name,
                        "detail": "the file held no record"}),
                    ),
                );
            }
        }
        self.write(&buf)?;
        self.file.sync_data()?;
        tracing::info!(file = %old.display(), "audit retention: removing");
        std::fs::remove_file(old)
    }
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("json! object literal"),
    }
}

fn now() -> String {
    timestamp(SystemTime::now())
}
