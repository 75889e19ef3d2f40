//! Enrolled trees across daemon restarts: each tree's exec listener is handed to systemd's
//! file descriptor store (`FDSTORE=1`, the unit's `FileDescriptorStoreMax=`), and a daemon
//! started again takes the stored ones back (`LISTEN_FDS`). While no daemon holds a
//! listener, systemd does: a tree's execs wait for the next daemon instead of failing.
//! Without a service manager (no `NOTIFY_SOCKET`) nothing is stored, and a restarted
//! daemon knows no tree: their execs fail (ENOSYS), never pass unseen.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};

/// Names of stored listeners: this prefix, then the launcher's pid.
pub const PREFIX: &str = "stdio-tree-";

fn send(state: &str, fds: &[RawFd]) -> std::io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => UnixAddr::new_abstract(name),
        None => UnixAddr::new(bytes),
    }
    .map_err(std::io::Error::from)?;
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    // Never waits: a service manager that does not read is no reason to hold an exec.
    sendmsg(
        sock.as_raw_fd(),
        &[IoSlice::new(state.as_bytes())],
        cmsgs,
        MsgFlags::MSG_DONTWAIT,
        Some(&addr),
    )
    .map_err(std::io::Error::from)?;
    Ok(())
}

/// Stores a tree's listener under `name` (no service manager: nothing to do).
pub fn keep(name: &str, listener: BorrowedFd<'_>) {
    if let Err(e) = send(
        &format!("FDSTORE=1\nFDNAME={name}\n"),
        &[listener.as_raw_fd()],
    ) {
        tracing::warn!(error = %e, name, "the service manager did not take the tree's exec listener: a daemon restart will lose the tree");
    }
}

/// Takes a tree that has ended out of the store.
pub fn forget(name: &str) {
    let _ = send(&format!("FDSTOREREMOVE=1\nFDNAME={name}\n"), &[]);
}

/// The trees' listeners the service manager gave this start, by name.
pub fn kept() -> Vec<(OwnedFd, String)> {
    let Ok(fds) = sd_notify::listen_fds_with_names(true) else {
        return Vec::new();
    };
    fds.filter(|(_, name)| name.starts_with(PREFIX))
        // SAFETY: descriptors the service manager passed to this process, each once.
        .map(|(fd, name)| (unsafe { OwnedFd::from_raw_fd(fd) }, name))
        .collect()
}
