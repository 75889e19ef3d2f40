//! What an exec asks for, read from the waiting process's memory: the path and argv.
//!
//! Read while the process is stopped in the notification; the caller checks afterwards that
//! the notification is still valid (`SECCOMP_IOCTL_NOTIF_ID_VALID`), so the memory read was
//! that process's and not a successor's under a reused pid.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::StdioError;

/// Longest path read (PATH_MAX).
const MAX_PATH: usize = 4096;
/// Most arguments read (past them an exec that starts no server is refused).
const MAX_ARGS: usize = 1 << 20;
/// Most bytes of arguments read in all (Linux takes a quarter of the stack limit, 2 MiB by
/// default).
const MAX_ARG_BYTES: usize = 4 << 20;

pub struct Memory {
    file: File,
    pid: u32,
}

impl Memory {
    pub fn open(pid: u32) -> Result<Self, StdioError> {
        let file = File::open(format!("/proc/{pid}/mem")).map_err(|source| StdioError::Read {
            pid,
            what: "mem",
            source,
        })?;
        Ok(Self { file, pid })
    }

    fn err(&self, what: &'static str, source: std::io::Error) -> StdioError {
        StdioError::Read {
            pid: self.pid,
            what,
            source,
        }
    }

    /// A NUL-terminated string at `addr`, at most `max` bytes (longer: an error).
    pub fn string(&self, addr: u64, max: usize) -> Result<Vec<u8>, StdioError> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 512];
        let mut at = addr;
        while out.len() < max {
            // A string may end just before an unmapped page: read up to the page's end only.
            let to_page_end = 4096 - (at % 4096) as usize;
            let want = chunk.len().min(to_page_end);
            let n = self
                .file
                .read_at(&mut chunk[..want], at)
                .map_err(|e| self.err("a string", e))?;
            if n == 0 {
                return Err(self.err("a string", std::io::ErrorKind::UnexpectedEof.into()));
            }
            if let Some(end) = chunk[..n].iter().position(|b| *b == 0) {
                out.extend_from_slice(&chunk[..end]);
                return Ok(out);
            }
            out.extend_from_slice(&chunk[..n]);
            at += n as u64;
        }
        Err(self.err(
            "a string",
            std::io::Error::other(format!("longer than {max} bytes")),
        ))
    }

    /// Up to `n` pointers at `addr`, fewer where the mapping ends.
    fn pointers(&self, addr: u64, n: usize) -> Result<Vec<u64>, StdioError> {
        let mut b = vec![0u8; 8 * n];
        // Within the page: the array may end just before an unmapped one.
        let to_page_end = (4096 - (addr % 4096) as usize).max(8);
        let want = b.len().min(to_page_end) / 8 * 8;
        let got = self
            .file
            .read_at(&mut b[..want], addr)
            .map_err(|e| self.err("argv", e))?;
        if got < 8 {
            return Err(self.err("argv", std::io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(b[..got / 8 * 8]
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
            .collect())
    }

    pub fn path(&self, addr: u64) -> Result<Vec<u8>, StdioError> {
        self.string(addr, MAX_PATH)
    }

    /// The argument vector at `addr` (a NULL `argv` is an empty one, as Linux takes it);
    /// `truncated` when it had more than what is read.
    pub fn argv(&self, addr: u64) -> Result<(Vec<Vec<u8>>, bool), StdioError> {
        let mut args = Vec::new();
        if addr == 0 {
            return Ok((args, false));
        }
        let mut total = 0;
        let mut at = addr;
        while args.len() < MAX_ARGS {
            for p in self.pointers(at, 512)? {
                at += 8;
                if p == 0 {
                    return Ok((args, false));
                }
                let left = MAX_ARG_BYTES.saturating_sub(total);
                if left == 0 || args.len() >= MAX_ARGS {
                    return Ok((args, true));
                }
                let arg = match self.string(p, left) {
                    Ok(a) => a,
                    Err(_) if total > 0 => return Ok((args, true)),
                    Err(e) => return Err(e),
                };
                total += arg.len() + 1;
                args.push(arg);
            }
        }
        Ok((args, true))
    }
}
