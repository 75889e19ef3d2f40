//! The cgroup2 hierarchy: where it is mounted (it is `/sys/fs/cgroup/unified` on hybrid hosts),
//! cgroup ids (the inode of the cgroup directory, as `bpf_get_current_cgroup_id` reports) and
//! moving a process into a cgroup.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::InterceptError;

/// Finds the cgroup2 mount point in /proc/self/mountinfo.
pub fn cgroup2_mount() -> Result<PathBuf, InterceptError> {
    let infos = procfs::process::Process::myself()
        .and_then(|p| p.mountinfo())
        .map_err(|e| InterceptError::Procfs {
            what: "/proc/self/mountinfo".into(),
            message: e.to_string(),
        })?;
    infos
        .into_iter()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
        .ok_or(InterceptError::NoCgroup2)
}

/// Absolute path of `rel` (relative to the cgroup2 mount; a leading `/` is allowed).
pub fn path_of(mount: &Path, rel: &str) -> PathBuf {
    mount.join(rel.trim_start_matches('/'))
}

/// Creates the cgroup when missing and returns its id.
pub fn ensure(mount: &Path, rel: &str) -> Result<u64, InterceptError> {
    let path = path_of(mount, rel);
    std::fs::create_dir_all(&path).map_err(|source| InterceptError::Cgroup {
        path: path.clone(),
        source,
    })?;
    id_of(&path)
}

pub fn id_of(path: &Path) -> Result<u64, InterceptError> {
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|source| InterceptError::Cgroup {
            path: path.to_owned(),
            source,
        })
}

/// Moves process `pid` into the cgroup at `path`.
pub fn join(path: &Path, pid: u32) -> Result<(), InterceptError> {
    let procs = path.join("cgroup.procs");
    std::fs::write(&procs, pid.to_string()).map_err(|source| InterceptError::Cgroup {
        path: procs,
        source,
    })
}
