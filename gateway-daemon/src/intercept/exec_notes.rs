//! The kernel's note of what each process's last exec loaded (`gw_exec_files`, written by
//! `gw_exec_seen`), read from user space for a process the daemon looks at outside a
//! connect (stdio mediation reads the exec'ing agent's identity while its exec waits).
//! `connect4` reads the same note itself, into the record's `exe_flags`.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::record::ExeFile;

#[derive(Debug, thiserror::Error)]
pub enum NotesError {
    #[error("opening the pinned map {path}: {message}")]
    Open { path: String, message: String },
    #[error("pidfd_open({pid}): {source}")]
    Pidfd { pid: u32, source: std::io::Error },
    #[error("reading the exec note of {pid}: {source}")]
    Lookup { pid: u32, source: std::io::Error },
}

/// The pinned task storage map.
pub struct ExecNotes {
    map: aya::maps::MapData,
}

/// `struct gw_exec_file` (gateway.h).
#[repr(C)]
#[derive(Default)]
struct Note {
    ino: u64,
    dev: u32,
    _pad: u32,
}

/// The part of `union bpf_attr` that BPF_MAP_LOOKUP_ELEM reads.
#[repr(C)]
struct LookupAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;

impl ExecNotes {
    /// The map the instance's programs write, pinned under `maps_dir`.
    pub fn open(maps_dir: &Path) -> Result<Self, NotesError> {
        let path = maps_dir.join(gateway_ebpf::MAP_EXEC_FILES);
        aya::maps::MapData::from_pin(&path)
            .map(|map| ExecNotes { map })
            .map_err(|e| NotesError::Open {
                path: path.display().to_string(),
                message: e.to_string(),
            })
    }

    /// The file the last exec of process `pid` loaded; None when no exec of it was seen
    /// (it predates the programs).
    pub fn loaded(&self, pid: u32) -> Result<Option<ExeFile>, NotesError> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            let source = std::io::Error::last_os_error();
            return Err(NotesError::Pidfd { pid, source });
        }
        // SAFETY: a descriptor pidfd_open just returned, owned by nothing else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let key: i32 = pidfd.as_raw_fd();
        let mut note = Note::default();
        let attr = LookupAttr {
            map_fd: self.map.fd().as_fd().as_raw_fd() as u32,
            _pad: 0,
            key: &key as *const i32 as u64,
            value: &mut note as *mut Note as u64,
            flags: 0,
        };
        // SAFETY: `attr` points at a key and a value of the map's sizes, both alive for
        // the call; the kernel reads `attr` and writes `note` only.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_ELEM,
                &attr as *const LookupAttr,
                std::mem::size_of::<LookupAttr>() as u32,
            )
        };
        if rc == 0 {
            return Ok(ExeFile::from_kernel(note.dev, note.ino));
        }
        match std::io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            source => Err(NotesError::Lookup { pid, source }),
        }
    }
}
