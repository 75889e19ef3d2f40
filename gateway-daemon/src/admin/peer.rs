//! Who is on the other end of a connection, and whether they may administer the daemon.
//! Both answers come from the kernel's record of the peer at connect() time (SO_PEERCRED,
//! SO_PEERGROUPS), which a client cannot forge and which, unlike /proc/PID, cannot be
//! confused by the pid being reused.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::Gid;

use super::Caller;

pub(super) fn caller(socket: &impl AsFd) -> io::Result<Caller> {
    let creds = getsockopt(socket, PeerCredentials).map_err(io::Error::from)?;
    Ok(Caller {
        uid: creds.uid(),
        gid: creds.gid(),
        pid: creds.pid(),
    })
}

/// The peer's supplementary groups (SO_PEERGROUPS, Linux 4.13+).
fn groups(socket: &impl AsFd) -> io::Result<Vec<libc::gid_t>> {
    let fd = socket.as_fd().as_raw_fd();
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer is `len` bytes of writable gid_t storage that outlives the call.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(needed);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        // ERANGE: the kernel wrote the size it needs into `len`; ask again with that much.
        if err.raw_os_error() == Some(libc::ERANGE) && needed > groups.len() {
            groups.resize(needed, 0);
            continue;
        }
        return Err(err);
    }
}

/// Who may use the socket: root and the members of one group, resolved once at bind.
#[derive(Debug, Clone)]
pub(super) struct Admins {
    pub group: String,
    /// None when the group does not exist: then only root is allowed.
    pub gid: Option<Gid>,
}

impl Admins {
    /// Ok when `caller` may administer the daemon; otherwise the message to send back.
    pub fn authorize(&self, caller: &Caller, socket: &impl AsFd) -> Result<(), String> {
        if caller.uid == 0 {
            return Ok(());
        }
        if let Some(gid) = self.gid {
            if caller.gid == gid.as_raw() {
                return Ok(());
            }
            match groups(socket) {
                Ok(groups) if groups.contains(&gid.as_raw()) => return Ok(()),
                Ok(_) => {}
                // Refusing is the safe reading of groups the kernel would not tell.
                Err(e) => tracing::warn!(
                    uid = caller.uid,
                    pid = caller.pid,
                    error = %e,
                    "cannot read the admin client's supplementary groups (SO_PEERGROUPS)"
                ),
            }
        }
        Err(format!(
            "not allowed: uid {} is neither root nor in group {}",
            caller.uid, self.group
        ))
    }
}
