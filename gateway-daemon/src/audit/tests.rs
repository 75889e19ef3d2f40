//! The ledger against tampering and crashes: each kind of damage is found by `verify` with
//! the right reason; a torn tail is cut off at the next start and the chain goes on.

use std::path::Path;

use ed25519_dalek::VerifyingKey;
use serde_json::{json, Value};

use super::verify::{verify, Reason, Report};
use super::{files, open, sign};
use crate::config::{Audit as AuditConfig, Journald, SyncPolicy};

fn config(dir: &Path) -> AuditConfig {
    AuditConfig {
        path: dir.join("audit.jsonl"),
        key: dir.join("audit.key"),
        journald: Journald::Off,
        sync: SyncPolicy::Always,
        ..Default::default()
    }
}

/// Writes `n` records (with a checkpoint every `every` records) and stops cleanly.
async fn write(cfg: &AuditConfig, n: usize) {
    let (sink, writer) = open(cfg).await.unwrap();
    for i in 0..n {
        sink.record_durable(&json!({"type": "mcp", "time": "t", "i": i, "outcome": "ok"}))
            .unwrap()
            .durable()
            .await
            .unwrap();
    }
    drop(sink);
    writer.finish().await;
}

/// `write` from a plain test, or from inside a hook a read calls (a runtime of its own, on a
/// thread of its own).
fn write_blocking(cfg: &AuditConfig, n: usize) {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(write(cfg, n))
        })
        .join()
        .unwrap()
    })
}

fn key(cfg: &AuditConfig) -> VerifyingKey {
    sign::load_or_create(&cfg.key).unwrap().verifying_key()
}

fn check(cfg: &AuditConfig) -> Report {
    verify(
        &files::ledger_files(&cfg.path),
        Some(&key(cfg)),
        Some(&files::head(&cfg.path)),
    )
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn put(p: &Path, lines: &[String]) {
    std::fs::write(
        p,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
}

fn reason(cfg: &AuditConfig) -> (Reason, Option<u64>, String) {
    let f = check(cfg).finding.expect("verify must find the damage");
    (f.reason, f.seq, f.detail)
}

async fn ledger() -> (tempfile::TempDir, AuditConfig) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    write(&cfg, 20).await;
    (dir, cfg)
}

#[tokio::test]
async fn an_untouched_ledger_verifies() {
    let (_d, cfg) = ledger().await;
    let r = check(&cfg);
    assert!(r.finding.is_none(), "{:?}", r.finding);
    // genesis, start, 20 records, final checkpoint
    assert_eq!(r.records, 23);
    assert_eq!(r.checkpoints, 1);
    assert!(r.head_checked);
}

#[tokio::test]
async fn an_edited_record_is_found() {
    let (_d, cfg) = ledger().await;
    let mut l = lines(&cfg.path);
    l[5] = l[5].replace("\"outcome\":\"ok\"", "\"outcome\":\"refused\"");
    put(&cfg.path, &l);
    let (r, seq, _) = reason(&cfg);
    assert_eq!(r, Reason::Edited);
    assert_eq!(seq, None, "the line itself no longer matches its hash");
}

#[tokio::test]
async fn an_edit_with_a_recomputed_hash_is_found_at_the_next_record() {
    let (_d, cfg) = ledger().await;
    let mut l = lines(&cfg.path);
    let mut v: serde_json::Map<String, Value> = serde_json::from_str(&l[5]).unwrap();
    v.remove("hash");
    v.insert("outcome".into(), "refused".into());
    let seq = v["seq"].as_u64().unwrap();
    let prev = v["prev"].as_str().unwrap().to_string();
    let (line, _) = super::chain::seal(seq, &prev, v);
    l[5] = String::from_utf8(line).unwrap().trim_end().to_string();
    put(&cfg.path, &l);
    let (r, at, detail) = reason(&cfg);
    assert_eq!(r, Reason::Edited);
    assert_eq!(at, Some(seq), "{detail}");
}

#[tokio::test]
async fn a_deleted_record_is_found() {
    let (_d, cfg) = ledger().await;
    let mut l = lines(&cfg.path);
    l.remove(7);
    put(&cfg.path, &l);
    let (r, seq, detail) = reason(&cfg);
    assert_eq!(r, Reason::Deleted, "{detail}");
    assert_eq!(seq, Some(9));
}

#[tokio::test]
async fn swapped_records_are_found() {
    let (_d, cfg) = ledger().await;
    let mut l = lines(&cfg.path);
    l.swap(10, 11);
    put(&cfg.path, &l);
    let (r, _, detail) = reason(&cfg);
    assert_eq!(r, Reason::Reordered, "{detail}");
}

#[tokio::test]
async fn records_cut_off_the_end_are_found() {
    let (_d, cfg) = ledger().await;
    let mut l = lines(&cfg.path);
    l.truncate(l.len() - 3);
    put(&cfg.path, &l);
    let (r, _, detail) = reason(&cfg);
    assert_eq!(r, Reason::Truncated, "{detail}");
    assert!(detail.contains("signed head"), "{detail}");
}

#[tokio::test]
async fn a_forged_checkpoint_signature_is_found() {
    let (_d, cfg) = ledger().await;
    let mut l = lines(&cfg.path);
    let i = l.iter().position(|x| x.contains("\"checkpoint\"")).unwrap();
    let mut v: Value = serde_json::from_str(&l[i]).unwrap();
    let sig = v["signature"].as_str().unwrap().to_string();
    let flipped = format!(
        "{}{}",
        if sig.starts_with('0') { "1" } else { "0" },
        &sig[1..]
    );
    v["signature"] = flipped.into();
    l[i] = v.to_string();
    put(&cfg.path, &l);
    assert_eq!(reason(&cfg).0, Reason::BadSignature);
    // Signed by another key: also refused.
    let other = tempfile::tempdir().unwrap();
    let (_o, ocfg) = (other.path(), config(other.path()));
    let r = verify(&files::ledger_files(&cfg.path), Some(&key(&ocfg)), None);
    assert_eq!(r.finding.unwrap().reason, Reason::BadSignature);
}

#[tokio::test]
async fn a_torn_tail_is_cut_off_at_restart_and_the_chain_continues() {
    let (_d, cfg) = ledger().await;
    let mut bytes = std::fs::read(&cfg.path).unwrap();
    bytes.extend_from_slice(b"{\"seq\":999,\"prev\":\"ab");
    std::fs::write(&cfg.path, &bytes).unwrap();
    assert_eq!(reason(&cfg).0, Reason::Torn);
    write(&cfg, 3).await;
    let r = check(&cfg);
    assert!(r.finding.is_none(), "{:?}", r.finding);
    let all = lines(&cfg.path);
    let recovery: Value = serde_json::from_str(
        all.iter()
            .find(|l| l.contains("\"recovery\""))
            .expect("a recovery record"),
    )
    .unwrap();
    assert_eq!(recovery["torn_bytes"], 21);
}

#[tokio::test]
async fn rotation_continues_the_chain_and_retention_keeps_it_verifiable() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_file_bytes = 4096;
    cfg.retain_files = 3;
    write(&cfg, 200).await;
    let rotated = files::rotated_files(&cfg.path);
    assert_eq!(rotated.len(), 3, "retention keeps three: {rotated:?}");
    let r = check(&cfg);
    assert!(r.finding.is_none(), "{:?}", r.finding);
    let start = r.first_seq.unwrap();
    assert!(start > 1, "the oldest files were removed");
    // Each deletion left a signed record of what went; the newest accounts for the start.
    assert!(!r.retention.is_empty());
    assert!(
        r.retention.iter().any(|p| p.last_seq + 1 == start),
        "{:?}",
        r.retention
    );
    for pair in r.retention.windows(2) {
        assert_eq!(pair[0].last_seq + 1, pair[1].first_seq, "{:?}", r.retention);
    }
    // Dropping a middle file breaks the chain.
    std::fs::remove_file(&rotated[1].1).unwrap();
    assert_eq!(reason(&cfg).0, Reason::Deleted);
}

#[tokio::test]
async fn history_deleted_by_someone_other_than_retention_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_file_bytes = 4096;
    write(&cfg, 120).await;
    let rotated = files::rotated_files(&cfg.path);
    assert!(rotated.len() >= 2, "{rotated:?}");
    assert!(check(&cfg).finding.is_none());
    // The oldest file removed by hand: the chain now starts late, with no record saying so.
    std::fs::remove_file(&rotated[0].1).unwrap();
    let (why, _, detail) = reason(&cfg);
    assert_eq!(why, Reason::Deleted);
    assert!(detail.contains("no retention record"), "{detail}");
}

#[tokio::test]
async fn ledger_files_are_not_readable_by_everyone() {
    use std::os::unix::fs::PermissionsExt;
    let (_d, cfg) = ledger().await;
    for f in [cfg.path.clone(), files::head(&cfg.path)] {
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "{}", f.display());
    }
}

#[tokio::test]
async fn concurrent_durable_records_share_syncs_and_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (sink, writer) = open(&cfg).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let sink = sink.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..50 {
                seqs.push(
                    sink.record_durable(&json!({"type": "x", "t": t, "i": i}))
                        .unwrap()
                        .durable()
                        .await
                        .unwrap(),
                );
            }
            seqs
        }));
    }
    let mut seqs: Vec<u64> = Vec::new();
    for t in tasks {
        seqs.extend(t.await.unwrap());
    }
    drop(sink);
    writer.finish().await;
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), 800, "every record got its own sequence number");
    assert!(check(&cfg).finding.is_none());
}

#[tokio::test]
async fn a_damaged_last_record_stops_the_start_with_the_reason() {
    let (_d, cfg) = ledger().await;
    let mut l = lines(&cfg.path);
    let last = l.len() - 1;
    l[last] = l[last].replace("checkpoint", "checkpoinX");
    put(&cfg.path, &l);
    let err = open(&cfg)
        .await
        .err()
        .expect("must not start on a damaged ledger");
    let msg = err.to_string();
    assert!(
        msg.contains("damaged") && msg.contains("audit verify"),
        "{msg}"
    );
}

/// `mcp-gateway audit verify` on a running daemon: a rotation between listing the files
/// and reading them showed the new current file right after the old rotated ones, and the
/// records of the file just rotated read as deleted (seen in CI: a daemon restarted over
/// a full file rotates at its first tick, while the verification ran).
#[test]
fn a_rotation_while_the_ledger_is_read_is_not_taken_for_deleted_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_file_bytes = 4096;
    let rotate = |n| write_blocking(&cfg, n);
    rotate(8);
    let before = files::rotated_files(&cfg.path).len();

    // Listed, then rotated, then read by name: the gap the old verification reported.
    let listed = files::ledger_files(&cfg.path);
    rotate(12);
    assert!(
        files::rotated_files(&cfg.path).len() > before,
        "no rotation"
    );
    let stale = verify(&listed, Some(&key(&cfg)), None);
    assert_eq!(
        stale.finding.map(|f| f.reason),
        Some(Reason::Deleted),
        "the race this test is about no longer shows"
    );

    // Read live, with rotations at the worst moment: the current file already open, and
    // rotated, and the file after it too.
    let before = files::rotated_files(&cfg.path).len();
    let snapshot = files::read_live_then(&cfg.path, || rotate(40));
    assert!(
        files::rotated_files(&cfg.path).len() >= before + 2,
        "not two rotations"
    );
    let r = super::verify::verify_read(&snapshot, Some(&key(&cfg)));
    assert!(r.finding.is_none(), "{:?}", r.finding);
    // The file rotated meanwhile was read once, through the handle opened before.
    let paths: Vec<_> = snapshot.files.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(paths.last(), Some(&cfg.path));
    assert_eq!(paths.len(), before + 1, "{paths:?}");
    // And what was written after is there for the next verification.
    assert!(check(&cfg).finding.is_none());
}

/// Retention deletes the oldest file as the daemon rotates, and names it in a record of the
/// new current file, which a read begun before does not hold: one read finds records
/// deleted, and `verify_live` reads again because the files changed.
#[test]
fn a_file_retired_while_the_ledger_is_read_is_read_again_not_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_file_bytes = 4096;
    cfg.retain_files = 1;
    let rotate = |n| write_blocking(&cfg, n);
    rotate(40);
    assert!(check(&cfg).finding.is_none());
    let once = files::read_live_then(&cfg.path, || rotate(12));
    let r = super::verify::verify_read(&once, Some(&key(&cfg)));
    assert_eq!(
        r.finding.map(|f| f.reason),
        Some(Reason::Deleted),
        "the race this test is about no longer shows"
    );
    let mut first = true;
    let (r, _) = super::verify::verify_live_then(
        &cfg.path,
        Some(&key(&cfg)),
        || {
            if std::mem::take(&mut first) {
                rotate(12)
            }
        },
        || {},
    );
    assert!(r.finding.is_none(), "{:?}", r.finding);
}

/// The current file made a second name of a rotated one (a hard link or a symlink) is not
/// taken for a rotation: both are read, and the records show twice, as they always did.
#[test]
fn a_current_file_aliasing_a_rotated_one_does_not_verify() {
    for symlink in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.max_file_bytes = 4096;
        write_blocking(&cfg, 40);
        let (_, last) = files::rotated_files(&cfg.path).pop().expect("rotated");
        std::fs::remove_file(&cfg.path).unwrap();
        std::fs::remove_file(files::head(&cfg.path)).unwrap();
        if symlink {
            std::os::unix::fs::symlink(&last, &cfg.path).unwrap();
        } else {
            std::fs::hard_link(&last, &cfg.path).unwrap();
        }
        let (r, _) = super::verify::verify_live(&cfg.path, Some(&key(&cfg)));
        assert!(r.finding.is_some(), "symlink {symlink}: verified");
    }
}

/// A ledger whose current file has its last record cut in two, as a reader sees it while
/// the daemon's `write` of that record is half done: (its config, the part still to come).
fn half_written(dir: &Path) -> (AuditConfig, Vec<u8>) {
    let mut cfg = config(dir);
    cfg.max_file_bytes = 4096;
    write_blocking(&cfg, 20);
    assert!(
        !files::rotated_files(&cfg.path).is_empty(),
        "no rotated file"
    );
    let bytes = std::fs::read(&cfg.path).unwrap();
    let last = bytes[..bytes.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .unwrap()
        + 1;
    let cut = last + (bytes.len() - last) / 2;
    std::fs::write(&cfg.path, &bytes[..cut]).unwrap();
    (cfg, bytes[cut..].to_vec())
}

/// `verify_live` of `cfg`'s ledger, with `change` made to its current file right after the
/// first read; and how many reads it made.
fn verify_changed_after_first_read(
    cfg: &AuditConfig,
    change: impl FnOnce(&Path),
) -> (Report, usize) {
    let mut change = Some(change);
    let mut reads = 0;
    let (r, _) = super::verify::verify_live_then(
        &cfg.path,
        Some(&key(cfg)),
        || {},
        || {
            reads += 1;
            if let Some(change) = change.take() {
                change(&cfg.path);
            }
        },
    );
    (r, reads)
}

/// A record being written as `verify` reads reads as an incomplete last line. The daemon
/// writes each record in one `write`, so the file has grown by the time the read is
/// checked: `verify_live` reads again instead of reporting a torn ledger of a live daemon.
#[test]
fn a_record_caught_half_written_is_read_again_not_reported_torn() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let (cfg, rest) = half_written(dir.path());
    let (r, reads) = verify_changed_after_first_read(&cfg, |path| {
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(&rest).unwrap();
    });
    assert!(r.finding.is_none(), "{:?}", r.finding);
    assert_eq!(
        reads, 2,
        "the first read did not see the half-written record"
    );
    let all: usize = files::ledger_files(&cfg.path)
        .iter()
        .map(|p| lines(p).len())
        .sum();
    assert_eq!(r.records as usize, all, "not every record read");
}

/// A line a crash left incomplete does not grow: still reported torn, after one read.
#[test]
fn a_line_a_crash_left_incomplete_is_still_reported_torn() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = half_written(dir.path());
    let (r, reads) = verify_changed_after_first_read(&cfg, |_| {});
    assert_eq!(r.finding.map(|f| f.reason), Some(Reason::Torn));
    assert_eq!(reads, 1, "read again although nothing changed");
}

/// A write the daemon cut back (it failed half done) leaves the file shorter than a read
/// begun before: read again, not reported torn.
#[test]
fn a_record_cut_back_after_a_failed_write_is_read_again_not_reported_torn() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = half_written(dir.path());
    let bytes = std::fs::read(&cfg.path).unwrap();
    let whole = bytes.iter().rposition(|&b| b == b'\n').unwrap() + 1;
    let (r, reads) = verify_changed_after_first_read(&cfg, |path| {
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.set_len(whole as u64).unwrap();
    });
    assert_eq!(reads, 2, "not read again");
    // The record cut back is gone, so the signed head names one past the end: what is
    // reported is that (as it would be of any record lost), not a torn line.
    assert_ne!(r.finding.map(|f| f.reason), Some(Reason::Torn));
}

/// A rotated file that ends inside a line is reported `truncated`, even when the current
/// file's last line is torn too.
#[test]
fn a_torn_current_file_does_not_hide_a_truncated_rotated_one() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = half_written(dir.path());
    let (_, rotated) = files::rotated_files(&cfg.path).pop().unwrap();
    // Bytes after its last record: the chain holds, and the file ends inside a line.
    let mut bytes = std::fs::read(&rotated).unwrap();
    bytes.extend_from_slice(b"{\"hash\":");
    std::fs::write(&rotated, bytes).unwrap();
    let r = check(&cfg);
    let f = r.finding.expect("verified");
    assert_eq!((f.reason, f.file), (Reason::Truncated, rotated));
}
