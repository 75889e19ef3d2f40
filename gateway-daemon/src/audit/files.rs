//! Where a ledger lives on disk: the current file, its rotated predecessors
//! (`<path>.000001`, `<path>.000002`, ...; the chain runs through them in that order) and
//! the signed head (`<path>.head`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n:06}"));
    PathBuf::from(s)
}

pub fn head(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".head");
    PathBuf::from(s)
}

/// Rotated files, oldest first, as (number, path).
pub fn rotated_files(path: &Path) -> Vec<(u32, PathBuf)> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return vec![];
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut out: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let n = file.strip_prefix(&prefix)?;
            (n.len() == 6)
                .then(|| n.parse().ok())
                .flatten()
                .map(|n| (n, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// A ledger opened at one moment, for `verify`: each file in chain order, open (a handle
/// outlives a rename or a deletion, and is read one file at a time), and the signed head's
/// bytes. What was found but could not be opened is the error.
pub struct Snapshot {
    pub files: Vec<(PathBuf, std::io::Result<File>)>,
    pub head: Option<(PathBuf, std::io::Result<Vec<u8>>)>,
}

/// Opens the ledger at `path` while its daemon may be writing and rotating it. Listed by
/// name and then read by name, a rotation in between (the current file renamed to the next
/// number, a new one begun) showed `verify` the files before it and the new current file:
/// the renamed one's records looked deleted. So the head is read first (it names nothing
/// newer than the files then hold), the current file is opened before the rotated ones
/// are listed, and every file is opened before any is read. A rotated file that is the
/// file opened as current (the same inode, one link, `path` no symlink: it was rotated
/// meanwhile) ends the list: it is read through that handle, and later ones are newer than
/// this moment. A file made later, and what retention deletes meanwhile, can still make a
/// finding: `verify_live` looks again when the files changed.
pub fn read_live(path: &Path) -> Snapshot {
    read_live_then(path, || {})
}

/// `read_live`, calling `between` after the current file is opened and before the rotated
/// ones are listed (where a test rotates).
pub(crate) fn read_live_then(path: &Path, between: impl FnOnce()) -> Snapshot {
    use std::os::unix::fs::MetadataExt;
    let head_path = head(path);
    let head = head_path
        .exists()
        .then(|| (head_path.clone(), std::fs::read(&head_path)));
    let current = match File::open(path) {
        Ok(f) => {
            let id = f.metadata().map(|m| (m.dev(), m.ino())).ok();
            Some((f, id))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Snapshot {
                files: vec![(path.to_owned(), Err(e))],
                head,
            }
        }
    };
    between();
    let current_id = current.as_ref().and_then(|(_, id)| *id);
    // Only a rename moves the current file among the rotated ones. A symlink or a second
    // link that makes one file both is someone's doing: both are read, as they were
    // before, and the chain shows the records twice.
    let aliased = || std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    let mut files = Vec::new();
    for (_, p) in rotated_files(path) {
        let f = File::open(&p);
        let rotated_meanwhile = match (&f, current_id) {
            (Ok(f), Some(id)) => f
                .metadata()
                .is_ok_and(|m| (m.dev(), m.ino()) == id && m.nlink() == 1 && !aliased()),
            _ => false,
        };
        if rotated_meanwhile {
            break;
        }
        files.push((p, f));
    }
    if let Some((f, _)) = current {
        files.push((path.to_owned(), Ok(f)));
    }
    Snapshot { files, head }
}

/// What the ledger's files are (name, device, inode), to tell whether they changed.
pub fn generation(path: &Path) -> Vec<(PathBuf, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    ledger_files(path)
        .into_iter()
        .filter_map(|p| {
            let m = std::fs::metadata(&p).ok()?;
            Some((p, m.dev(), m.ino()))
        })
        .collect()
}

/// Every file of the ledger in chain order.
pub fn ledger_files(path: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = rotated_files(path).into_iter().map(|(_, p)| p).collect();
    if path.exists() {
        files.push(path.to_owned());
    }
    files
}

/// The records a ledger file holds: its first and last seq, and the last one's hash.
pub struct Span {
    pub first_seq: u64,
    pub last_seq: u64,
    pub last_hash: String,
}

/// The span of a ledger file, None when it holds no complete record.
pub fn span(path: &Path) -> std::io::Result<Option<Span>> {
    use std::io::BufRead;
    let bad = |e: super::chain::ChainError| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    };
    let mut first = Vec::new();
    std::io::BufReader::new(File::open(path)?).read_until(b'\n', &mut first)?;
    if !first.ends_with(b"\n") {
        return Ok(None);
    }
    first.pop();
    let first = super::chain::open(&first).map_err(bad)?;
    let Some(last) = tail(path)?.last_line else {
        return Ok(None);
    };
    let last = super::chain::open(&last).map_err(bad)?;
    Ok(Some(Span {
        first_seq: first.seq,
        last_seq: last.seq,
        last_hash: last.hash,
    }))
}

/// The end of a file: its last complete line (without newline) and the bytes after the
/// last newline (a torn line a crash left), without reading the whole file.
pub struct Tail {
    pub last_line: Option<Vec<u8>>,
    /// Offset where the torn bytes start (= the length to keep).
    pub complete_len: u64,
    pub torn: Vec<u8>,
}

pub fn tail(path: &Path) -> std::io::Result<Tail> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    // Read backwards in growing windows until two newlines (or the start) are in view.
    let mut window = 64 * 1024u64;
    loop {
        let start = len.saturating_sub(window);
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::with_capacity((len - start) as usize);
        f.by_ref().take(len - start).read_to_end(&mut buf)?;
        let last_nl = buf.iter().rposition(|&b| b == b'\n');
        let torn_from = last_nl.map_or(0, |i| i + 1);
        let torn = buf[torn_from..].to_vec();
        let complete_len = start + torn_from as u64;
        let body = &buf[..torn_from];
        let line_start = body[..body.len().saturating_sub(1)]
            .iter()
            .rposition(|&b| b == b'\n')
            .map(|i| i + 1);
        match (last_nl, line_start) {
            (Some(nl), Some(ls)) => {
                return Ok(Tail {
                    last_line: Some(buf[ls..nl].to_vec()),
                    complete_len,
                    torn,
                })
            }
            (Some(nl), None) if start == 0 => {
                return Ok(Tail {
                    last_line: Some(buf[..nl].to_vec()),
                    complete_len,
                    torn,
                })
            }
            (None, _) if start == 0 => {
                return Ok(Tail {
                    last_line: None,
                    complete_len: 0,
                    torn,
                })
            }
            _ => window *= 4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_finds_last_line_and_torn_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        std::fs::write(&p, b"one\ntwo\nthr").unwrap();
        let t = tail(&p).unwrap();
        assert_eq!(t.last_line.as_deref(), Some(&b"two"[..]));
        assert_eq!(t.torn, b"thr");
        assert_eq!(t.complete_len, 8);
        std::fs::write(&p, b"only\n").unwrap();
        let t = tail(&p).unwrap();
        assert_eq!(t.last_line.as_deref(), Some(&b"only"[..]));
        assert!(t.torn.is_empty());
        std::fs::write(&p, b"").unwrap();
        assert!(tail(&p).unwrap().last_line.is_none());
        let long: Vec<u8> = std::iter::repeat_n(b'x', 200_000)
            .chain(*b"\nlast\n")
            .collect();
        std::fs::write(&p, &long).unwrap();
        assert_eq!(tail(&p).unwrap().last_line.as_deref(), Some(&b"last"[..]));
    }

    #[test]
    fn rotated_files_sort_and_names() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        for n in [2, 10, 1] {
            std::fs::write(rotated(&p, n), b"").unwrap();
        }
        std::fs::write(head(&p), b"").unwrap();
        std::fs::write(&p, b"").unwrap();
        let files = ledger_files(&p);
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "audit.jsonl.000001",
                "audit.jsonl.000002",
                "audit.jsonl.000010",
                "audit.jsonl"
            ]
        );
    }
}
