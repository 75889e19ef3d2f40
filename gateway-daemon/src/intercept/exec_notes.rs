//! The kernel's note of what each process's last exec loaded (`gw_exec_files`, kept by
//! `gw_exec_seen`, `gw_fork_seen` and `gw_exit_seen`), read from user space for a process
//! the daemon looks at outside a connect: stdio mediation reads the identity of the agent
//! that starts a server while its exec waits. `connect4` reads the same note itself, into
//! the record's `exe_flags`.

use std::path::Path;

use aya::maps::{Array, HashMap, Map, MapData};
use gateway_ebpf::GwExecFile;

use super::record::{ExeFile, Unvouched};

#[derive(Debug, thiserror::Error)]
pub enum NotesError {
    #[error("opening the pinned map {path}: {message}")]
    Open { path: String, message: String },
}

/// The pinned maps of the instance's programs.
pub struct ExecNotes {
    files: HashMap<MapData, u32, GwExecFile>,
    lost: Array<MapData, u64>,
}

impl ExecNotes {
    /// The maps the instance's programs write, pinned under `maps_dir`.
    pub fn open(maps_dir: &Path) -> Result<Self, NotesError> {
        let failed = |name: &str, message: String| NotesError::Open {
            path: maps_dir.join(name).display().to_string(),
            message,
        };
        let data = |name: &str| {
            MapData::from_pin(maps_dir.join(name)).map_err(|e| failed(name, e.to_string()))
        };
        let (files, lost) = (gateway_ebpf::MAP_EXEC_FILES, gateway_ebpf::MAP_EXEC_LOST);
        Ok(ExecNotes {
            files: HashMap::try_from(Map::HashMap(data(files)?))
                .map_err(|e| failed(files, e.to_string()))?,
            lost: Array::try_from(Map::Array(data(lost)?))
                .map_err(|e| failed(lost, e.to_string()))?,
        })
    }

    /// Why what process `tgid` runs (`exe` with change time `ctime`, taken from one look
    /// at `/proc/PID/exe`) names no program: not what its last exec loaded, no longer the
    /// bytes it had then, on a filesystem a user mounted, or nothing can tell. `start_ticks`
    /// is the process's start (its leader's, clock ticks since boot, as procfs gives it).
    /// None: it is the program, or no exec of the process was ever seen (believed, as
    /// before).
    pub fn unvouched(
        &self,
        tgid: u32,
        start_ticks: u64,
        exe: ExeFile,
        ctime: (i64, u32),
    ) -> Option<Unvouched> {
        let ns_per_tick = 1_000_000_000 / procfs::ticks_per_second().max(1);
        let note = match self.files.get(&tgid, 0) {
            Ok(note) => note,
            Err(aya::maps::MapError::KeyNotFound) => {
                // Any count it cannot read counts as a loss: nothing then vouches.
                let lost = self.lost.get(&0, 0).map_or(true, |n| n > 0);
                return lost.then_some(Unvouched::Unknown);
            }
            Err(_) => return Some(Unvouched::Unknown),
        };
        // A live process's note is its own: another start means the start read is wrong.
        if note.start_boottime / ns_per_tick != start_ticks {
            return Some(Unvouched::Unknown);
        }
        if ExeFile::from_kernel(note.dev, note.ino) != Some(exe) {
            Some(Unvouched::Replaced)
        } else if ctime != (note.ctime_sec, note.ctime_nsec) {
            Some(Unvouched::Changed)
        } else if note.flags & gateway_ebpf::EXE_USER_MOUNT != 0 {
            Some(Unvouched::UserMount)
        } else {
            None
        }
    }
}
