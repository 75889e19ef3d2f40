//! `mcp-gateway audit verify`: walks the chain through every file and reports the first
//! record that is not what was written — edited, deleted, reordered, truncated, or under a
//! signature that does not hold.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use serde_json::Value;

use super::chain::{self, ChainError, GENESIS_PREV};
use super::files::Snapshot;
use super::sign;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Edited,
    Deleted,
    Reordered,
    Truncated,
    BadSignature,
    /// The last line is incomplete (a crash the daemon has not yet recovered from, or a
    /// file being written right now).
    Torn,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Edited => "edited",
            Reason::Deleted => "deleted",
            Reason::Reordered => "reordered",
            Reason::Truncated => "truncated",
            Reason::BadSignature => "bad signature",
            Reason::Torn => "torn",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub file: PathBuf,
    /// 1-based line in `file` (0 when about the ledger as a whole).
    pub line: usize,
    pub seq: Option<u64>,
    pub reason: Reason,
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)?;
        if let Some(seq) = self.seq {
            write!(f, " (seq {seq})")?;
        }
        write!(f, ": {}: {}", self.reason, self.detail)
    }
}

/// A `retention` record: the daemon deleted a rotated file, naming what it held.
#[derive(Debug, Clone)]
pub struct RetentionPoint {
    /// The retention record's own seq.
    pub seq: u64,
    pub deleted_file: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub last_hash: String,
}

#[derive(Debug, Default)]
pub struct Report {
    pub records: u64,
    pub checkpoints: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub head_checked: bool,
    /// Every retention point the chain records, oldest first.
    pub retention: Vec<RetentionPoint>,
    pub finding: Option<Finding>,
}

fn retention_point(seq: u64, body: &serde_json::Map<String, Value>) -> Option<RetentionPoint> {
    (body.get("type")?.as_str()? == "retention").then_some(())?;
    Some(RetentionPoint {
        seq,
        deleted_file: body.get("deleted_file")?.as_str()?.to_string(),
        first_seq: body.get("first_seq")?.as_u64()?,
        last_seq: body.get("last_seq")?.as_u64()?,
        last_hash: body.get("last_hash")?.as_str()?.to_string(),
    })
}

struct Entry {
    file: usize,
    line: usize,
    sealed: Result<chain::Sealed, ChainError>,
    /// A checkpoint's (head_seq, head_hash, signature), read from the line itself so the
    /// signature is checked even when the record's hash no longer matches.
    checkpoint: Option<(u64, String, String)>,
}

fn checkpoint_fields(line: &[u8]) -> Option<(u64, String, String)> {
    // Cheap filter before a second parse: only checkpoint lines name the type.
    if !line.windows(12).any(|w| w == b"\"checkpoint\"") {
        return None;
    }
    let v: Value = serde_json::from_slice(line).ok()?;
    if v["type"] != "checkpoint" {
        return None;
    }
    Some((
        v["head_seq"].as_u64().unwrap_or(u64::MAX),
        v["head_hash"].as_str().unwrap_or_default().to_string(),
        v["signature"].as_str().unwrap_or_default().to_string(),
    ))
}

/// Verifies `files` in chain order. `key`: the ledger's public key, to check checkpoint
/// and head signatures; `head`: the signed head file, to find records cut off the end.
pub fn verify(files: &[PathBuf], key: Option<&VerifyingKey>, head: Option<&Path>) -> Report {
    let snapshot = Snapshot {
        files: files
            .iter()
            .map(|p| (p.clone(), std::fs::File::open(p)))
            .collect(),
        head: head
            .filter(|h| h.exists())
            .map(|h| (h.to_owned(), std::fs::read(h))),
    };
    verify_read(&snapshot, key)
}

/// Verifies the configured ledger while its daemon may write, rotate and retire files:
/// opened as one moment of it (`files::read_live`), and again, at most twice more, when a
/// finding came while its files changed (a file retired, or two rotations, during the
/// read), or when the last line read was incomplete and the file has grown since (a
/// record caught while it was being written). Damage is found every time; a race only
/// while the files change. Also returns how many files were read.
pub fn verify_live(path: &Path, key: Option<&VerifyingKey>) -> (Report, usize) {
    verify_live_then(path, key, || {}, || {})
}

/// `verify_live`, calling `between` where `files::read_live_then` does and `after_read`
/// once the files were read and verified, at every try.
pub(crate) fn verify_live_then(
    path: &Path,
    key: Option<&VerifyingKey>,
    mut between: impl FnMut(),
    mut after_read: impl FnMut(),
) -> (Report, usize) {
    let mut tries = 0;
    loop {
        tries += 1;
        let before = super::files::generation(path);
        let snapshot = super::files::read_live_then(path, &mut between);
        let report = verify_read(&snapshot, key);
        after_read();
        let again = report.finding.as_ref().is_some_and(|f| {
            super::files::generation(path) != before
                || (f.reason == Reason::Torn && changed_since_read(&snapshot))
        });
        if !again || tries == 3 {
            return (report, snapshot.files.len());
        }
    }
}

/// How long a torn last line is given to change before it is taken for a crash's: a
/// `write` the daemon was preempted in moves the file's end a page at a time.
const TORN_SETTLES: std::time::Duration = std::time::Duration::from_millis(50);

/// Whether the snapshot's last file (the one a torn line can end) no longer ends where
/// its read did, now or a moment later: the daemon's `write` of a record was caught half
/// done (the file grew), or failed and was cut back (it shrank), not a crash's line,
/// which no one touches until the daemon starts and cuts it off. A read again only reads
/// again: lasting damage shows again.
fn changed_since_read(snapshot: &Snapshot) -> bool {
    use std::io::Seek;
    let Some((_, Ok(file))) = snapshot.files.last() else {
        return false;
    };
    let mut file = file;
    let Ok(read) = file.stream_position() else {
        return false;
    };
    let moved = || file.metadata().is_ok_and(|m| m.len() != read);
    moved() || {
        std::thread::sleep(TORN_SETTLES);
        moved()
    }
}

/// Verifies a ledger opened at one moment (`files::read_live` opens one its daemon is
/// writing), one file in memory at a time.
pub fn verify_read(snapshot: &Snapshot, key: Option<&VerifyingKey>) -> Report {
    use std::io::Read;
    let files: Vec<PathBuf> = snapshot.files.iter().map(|(p, _)| p.clone()).collect();
    let mut report = Report::default();
    let mut entries = Vec::new();
    for (fi, (path, file)) in snapshot.files.iter().enumerate() {
        let read = file.as_ref().map_err(|e| e.to_string()).and_then(|mut f| {
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes)
                .map(|_| bytes)
                .map_err(|e| e.to_string())
        });
        let bytes = match read {
            Ok(b) => b,
            Err(e) => {
                report.finding = Some(Finding {
                    file: path.clone(),
                    line: 0,
                    seq: None,
                    reason: Reason::Deleted,
                    detail: format!("cannot read the file: {e}"),
                });
                return report;
            }
        };
        let ends_clean = bytes.is_empty() || bytes.ends_with(b"\n");
        let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        let n = lines.len() - 1; // after the final newline (or the torn tail)
        for (li, line) in lines[..n].iter().enumerate() {
            entries.push(Entry {
                file: fi,
                line: li + 1,
                sealed: chain::open(line),
                checkpoint: checkpoint_fields(line),
            });
        }
        // The first file that ends inside a record is the one reported: a torn current
        // file does not hide a truncated rotated one.
        if !ends_clean && report.finding.is_none() {
            let last_file = fi + 1 == files.len();
            report.finding = Some(Finding {
                file: path.clone(),
                line: n + 1,
                seq: None,
                reason: if last_file {
                    Reason::Torn
                } else {
                    Reason::Truncated
                },
                detail: if last_file {
                    "the last line is incomplete (a crash; the daemon cuts it off when it starts)"
                        .into()
                } else {
                    "the file ends inside a record".into()
                },
            });
        }
    }
    let torn = report.finding.take();
    let seqs: Vec<Option<u64>> = entries
        .iter()
        .map(|e| e.sealed.as_ref().ok().map(|s| s.seq))
        .collect();
    let mut hashes: HashMap<u64, String> = HashMap::new();
    let mut prev: Option<(u64, String)> = None;
    // Where the chain on disk starts: (entry, seq, the hash it continues from).
    let mut start: Option<(usize, u64, String)> = None;
    for (i, e) in entries.iter().enumerate() {
        let at = |reason, seq, detail: String| Finding {
            file: files[e.file].clone(),
            line: e.line,
            seq,
            reason,
            detail,
        };
        // Checkpoint signatures first: a forged or altered signature is reported as such.
        if let (Some(key), Some((seq, hash, sig))) = (key, &e.checkpoint) {
            if !sign::verify(key, *seq, hash, sig) {
                report.finding = Some(at(
                    Reason::BadSignature,
                    seqs[i],
                    format!("the checkpoint's signature over seq {seq} does not verify"),
                ));
                return report;
            }
        }
        let s = match &e.sealed {
            Ok(s) => s,
            Err(err) => {
                report.finding = Some(at(Reason::Edited, None, format!("the record {err}")));
                return report;
            }
        };
        if let Some((pseq, phash)) = &prev {
            let expected = pseq + 1;
            if s.seq <= *pseq {
                report.finding = Some(at(
                    Reason::Reordered,
                    Some(s.seq),
                    format!("seq {} comes after seq {pseq}", s.seq),
                ));
                return report;
            }
            if s.seq > expected {
                let later = seqs[i + 1..].contains(&Some(expected));
                report.finding = Some(if later {
                    at(
                        Reason::Reordered,
                        Some(s.seq),
                        format!("seq {} comes before seq {expected}", s.seq),
                    )
                } else {
                    at(
                        Reason::Deleted,
                        Some(s.seq),
                        format!(
                            "records {expected}..{} are missing before this one",
                            s.seq - 1
                        ),
                    )
                });
                return report;
            }
            if &s.prev != phash {
                report.finding = Some(at(
                    Reason::Edited,
                    Some(pseq.to_owned()),
                    format!(
                        "record {pseq} was changed: record {} points to another hash",
                        s.seq
                    ),
                ));
                return report;
            }
        } else if s.prev == GENESIS_PREV && s.seq != 1 {
            report.finding = Some(at(
                Reason::Deleted,
                Some(s.seq),
                format!(
                    "the chain starts at seq {} but claims to be the first record",
                    s.seq
                ),
            ));
            return report;
        }
        if s.body.get("type").and_then(Value::as_str) == Some("checkpoint") {
            report.checkpoints += 1;
            let head_seq = s.body.get("head_seq").and_then(Value::as_u64);
            let head_hash = s.body.get("head_hash").and_then(Value::as_str);
            if head_seq != Some(s.seq - 1) || head_hash != Some(s.prev.as_str()) {
                report.finding = Some(at(
                    Reason::BadSignature,
                    Some(s.seq),
                    "the checkpoint does not sign the record before it".into(),
                ));
                return report;
            }
        }
        if let Some(point) = retention_point(s.seq, &s.body) {
            let signature = s.body.get("signature").and_then(Value::as_str);
            if let Some(key) = key {
                if !signature
                    .is_some_and(|sig| sign::verify(key, point.last_seq, &point.last_hash, sig))
                {
                    report.finding = Some(at(
                        Reason::BadSignature,
                        Some(s.seq),
                        format!(
                            "the retention record's signature over seq {} does not verify",
                            point.last_seq
                        ),
                    ));
                    return report;
                }
            }
            report.retention.push(point);
        }
        if report.first_seq.is_none() {
            start = Some((i, s.seq, s.prev.clone()));
        }
        report.first_seq.get_or_insert(s.seq);
        report.last_seq = Some(s.seq);
        report.records += 1;
        hashes.insert(s.seq, s.hash.clone());
        prev = Some((s.seq, s.hash.clone()));
    }
    // A chain that does not start at its genesis lost its beginning: only to retention,
    // which says so in a record of its own, or to someone deleting files.
    if let Some((i, seq, from)) = start.filter(|(_, seq, _)| *seq > 1) {
        let accounted = report
            .retention
            .iter()
            .any(|r| r.last_seq + 1 == seq && r.last_hash == from);
        if !accounted {
            report.finding = Some(Finding {
                file: files[entries[i].file].clone(),
                line: entries[i].line,
                seq: Some(seq),
                reason: Reason::Deleted,
                detail: format!(
                    "the chain starts at seq {seq} and no retention record accounts for \
                     records 1..{}",
                    seq - 1
                ),
            });
            return report;
        }
    }
    if let Some(t) = torn {
        report.finding = Some(t);
        return report;
    }
    if let Some((head, head_bytes)) = &snapshot.head {
        report.head_checked = true;
        let whole = Finding {
            file: head.to_owned(),
            line: 0,
            seq: None,
            reason: Reason::Truncated,
            detail: String::new(),
        };
        let parsed: Option<(u64, String, String)> = head_bytes
            .as_ref()
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(b).ok())
            .and_then(|v| {
                Some((
                    v["seq"].as_u64()?,
                    v["hash"].as_str()?.to_string(),
                    v["signature"].as_str()?.to_string(),
                ))
            });
        let Some((hseq, hhash, hsig)) = parsed else {
            report.finding = Some(Finding {
                reason: Reason::Edited,
                detail: "the head file is not valid".into(),
                ..whole
            });
            return report;
        };
        if let Some(key) = key {
            if !sign::verify(key, hseq, &hhash, &hsig) {
                report.finding = Some(Finding {
                    reason: Reason::BadSignature,
                    seq: Some(hseq),
                    detail: "the head's signature does not verify".into(),
                    ..whole
                });
                return report;
            }
        }
        match (report.last_seq, hashes.get(&hseq)) {
            (Some(last), _) if last < hseq => {
                report.finding = Some(Finding {
                    seq: Some(hseq),
                    detail: format!(
                        "the signed head is at seq {hseq} but the ledger ends at seq {last}"
                    ),
                    ..whole
                });
            }
            (_, Some(h)) if *h != hhash => {
                report.finding = Some(Finding {
                    reason: Reason::Edited,
                    seq: Some(hseq),
                    detail: format!("record {hseq} differs from the one the signed head names"),
                    ..whole
                });
            }
            _ => {}
        }
    }
    report
}
