//! The SHA-256 of the program a process runs, for principals chosen by `exe_sha256`.
//!
//! Read through /proc/PID/exe (the very file the process runs, even if its path was
//! replaced since) and remembered by what the kernel says of the file. The file is the
//! agent's to choose: it may be huge or on a filesystem the agent serves, so this is only
//! ever done where a hang costs no other connection (`Identity::resolve_bounded`).

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::sync::{LazyLock, Mutex};

use crate::intercept::record::ExeFile;

/// Programs larger than this are not hashed: reading one would hold a thread for seconds.
pub const MAX_BYTES: u64 = 1 << 30;

/// Hashes remembered at most; forgotten all at once when full (a new read, no wrong name).
const REMEMBERED: usize = 4096;

/// FUSE's `f_type`: a filesystem whose server (perhaps the agent) says what every read returns.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
/// tmpfs (and memfd) and hugetlbfs: memory whose shared writable mappings change a file's
/// bytes without moving its change time, so the time vouches for nothing there.
const TMPFS_MAGIC: i64 = 0x0102_1994;
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("reading /proc/{tgid}/exe: {source}")]
    Read { tgid: u32, source: std::io::Error },
    #[error(
        "its program is on a FUSE filesystem, whose server may show the gateway other bytes \
         than it ran"
    )]
    Fuse,
    #[error("the program it runs now is not the one it connected with (it exec'd since)")]
    Execd,
    #[error("its program is {size} bytes, more than the {MAX_BYTES} the gateway hashes")]
    TooLarge { size: u64 },
    #[error("its program's file changed since the kernel saw it run (its change time moved)")]
    Changed,
    #[error(
        "its program is on tmpfs or hugetlbfs, whose bytes can change without its change time"
    )]
    Memory,
}

/// What a file's bytes are remembered by. The change time, not the modification time: a
/// file's owner can set its modification time back after changing it (utimensat), but
/// every write and every such setting moves the change time on, and only the kernel sets it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    dev: u64,
    ino: u64,
    size: u64,
    ctime: (i64, i64),
}

static HASHES: LazyLock<Mutex<HashMap<Key, String>>> = LazyLock::new(Default::default);

/// The hex SHA-256 of what the process `proc` holds open runs, which must be
/// `connected_with` when known, with the change time `ctime_then` the kernel saw.
pub fn of(
    proc: &procfs::process::Process,
    connected_with: Option<ExeFile>,
    ctime_then: Option<(i64, u32)>,
) -> Result<String, HashError> {
    let tgid = proc.pid as u32;
    let read = |source| HashError::Read { tgid, source };
    let from_procfs = |e: procfs::ProcError| read(std::io::Error::other(e.to_string()));
    let mut f = proc.open_relative("exe").map_err(from_procfs)?;
    let m = f.metadata().map_err(read)?;
    if connected_with.is_some_and(|e| (e.dev, e.ino) != (m.dev(), m.ino())) {
        return Err(HashError::Execd);
    }
    // Its inode, size and times are the server's to say as well: nothing keys it.
    let fs = nix::sys::statfs::fstatfs(&f).map_err(|e| read(e.into()))?;
    match fs.filesystem_type().0 as i64 {
        FUSE_SUPER_MAGIC => return Err(HashError::Fuse),
        TMPFS_MAGIC | HUGETLBFS_MAGIC => return Err(HashError::Memory),
        _ => {}
    }
    // Bytes written since are not the ones it ran, however the file was let go of to write
    // them (the kernel checked at connect that they were the exec's).
    if ctime_then.is_some_and(|c| c != (m.ctime(), m.ctime_nsec() as u32)) {
        return Err(HashError::Changed);
    }
    if m.size() > MAX_BYTES {
        return Err(HashError::TooLarge { size: m.size() });
    }
    let key = Key {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        ctime: (m.ctime(), m.ctime_nsec()),
    };
    let lock = || HASHES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = lock().get(&key) {
        return Ok(h.clone());
    }
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let mut buf = vec![0u8; 1 << 16];
    // Bounded by the size seen, should the file grow while it is read.
    let mut left = m.size();
    while left > 0 {
        let n = f.read(&mut buf).map_err(read)?;
        if n == 0 {
            break;
        }
        let n = n.min(left as usize);
        sha2::Digest::update(&mut hasher, &buf[..n]);
        left -= n as u64;
    }
    // Bytes written while it was read (its owner can tell when the daemon opens it) make a
    // hash of two files: the file must still be as it was before the first read.
    let after = f.metadata().map_err(read)?;
    let state = |m: &std::fs::Metadata| {
        (
            m.dev(),
            m.ino(),
            m.size(),
            m.ctime(),
            m.ctime_nsec(),
            m.mtime(),
            m.mtime_nsec(),
        )
    };
    if state(&after) != state(&m) {
        return Err(HashError::Changed);
    }
    let h = hex::encode(sha2::Digest::finalize(hasher));
    let mut cache = lock();
    if cache.len() >= REMEMBERED {
        cache.clear();
    }
    cache.insert(key, h.clone());
    Ok(h)
}
