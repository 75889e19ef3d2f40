//! bpffs: mounted when missing, so pinned links and maps can outlive the daemon (fail closed).

use std::path::Path;

use nix::mount::{mount, MsFlags};

use super::InterceptError;

pub fn ensure_mounted(path: &Path) -> Result<(), InterceptError> {
    let mounted = procfs::process::Process::myself()
        .and_then(|p| p.mountinfo())
        .map_err(|e| InterceptError::Procfs {
            what: "/proc/self/mountinfo".into(),
            message: e.to_string(),
        })?
        .into_iter()
        .any(|m| m.fs_type == "bpf" && m.mount_point == path);
    if mounted {
        return Ok(());
    }
    std::fs::create_dir_all(path).map_err(|e| InterceptError::Bpffs {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    mount(
        Some("bpf"),
        path,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| InterceptError::Bpffs {
        path: path.to_owned(),
        message: format!("mount -t bpf failed: {e}"),
    })?;
    tracing::info!(path = %path.display(), "mounted bpffs");
    Ok(())
}
