//! One enrolled process tree: the daemon answers each exec notification of the tree,
//! on a thread of its own (an exec waits for the answer; nothing else may hold it up).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;

use super::matcher::Exec;
use super::memory::Memory;
use super::{Stage, StdioError, Tree};

/// The daemon's answer to one exec.
enum Answer {
    /// The exec goes on (mediated or not).
    Continue,
    /// The exec fails with this errno.
    Refuse(i32),
}

/// Serves the tree's notifications until every process of it has gone (the listener hangs
/// up) or the daemon stops.
pub fn run(listener: OwnedFd, tree: Tree, stage: Arc<Stage>) {
    let _span =
        tracing::info_span!("stdio_tree", tree = tree.id, launcher = tree.launcher).entered();
    loop {
        let mut fds = [nix::poll::PollFd::new(
            listener.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                tracing::error!(error = %e, "polling the exec listener failed; the tree's execs now fail");
                return;
            }
        }
        let revents = fds[0].revents().unwrap_or(nix::poll::PollFlags::empty());
        if !revents.contains(nix::poll::PollFlags::POLLIN) {
            if revents.intersects(nix::poll::PollFlags::POLLHUP | nix::poll::PollFlags::POLLERR) {
                tracing::info!("every process of the enrolled tree has exited");
                return;
            }
            continue;
        }
        // SAFETY: an all-zero seccomp_notif is what RECV requires.
        let mut n: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: RECV fills `n`.
        let rc = unsafe {
            libc::ioctl(
                listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_RECV as _,
                &mut n as *mut libc::seccomp_notif,
            )
        };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                // The process died before its notification was read.
                Some(libc::ENOENT | libc::EINTR) => continue,
                _ => {
                    tracing::error!(error = %e, "reading an exec notification failed; the tree's execs now fail");
                    return;
                }
            }
        }
        let answer = match decide(&listener, &n, &tree, &stage) {
            Ok(a) => a,
            Err(e) => {
                // What cannot be read or mediated does not run: fail closed.
                tracing::warn!(pid = n.pid, error = %e, "exec refused");
                stage.daemon.audit.record_now(&json!({
                    "type": "stdio_exec",
                    "time": crate::audit::timestamp(std::time::SystemTime::now()),
                    "tree": tree.id,
                    "pid": n.pid,
                    "outcome": "refused",
                    "detail": e.to_string(),
                }));
                Answer::Refuse(libc::EPERM)
            }
        };
        let resp = match answer {
            Answer::Continue => libc::seccomp_notif_resp {
                id: n.id,
                val: 0,
                error: 0,
                flags: libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
            },
            Answer::Refuse(errno) => libc::seccomp_notif_resp {
                id: n.id,
                val: 0,
                error: -errno,
                flags: 0,
            },
        };
        // SAFETY: SEND reads `resp`. ENOENT: the process has gone meanwhile.
        unsafe {
            libc::ioctl(
                listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_SEND as _,
                &resp as *const libc::seccomp_notif_resp,
            )
        };
    }
}

fn id_valid(listener: &OwnedFd, id: u64) -> bool {
    // SAFETY: ID_VALID reads the u64.
    unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_ID_VALID as _,
            &id as *const u64,
        ) == 0
    }
}

/// What an exec asks for, read from the waiting process.
struct Asked {
    /// Absolute, as the process sees the file system.
    path: PathBuf,
    /// With symbolic links followed, when the file exists.
    resolved: Option<PathBuf>,
    argv: Vec<String>,
    truncated: bool,
}

fn text(b: Vec<u8>) -> String {
    String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn read_asked(n: &libc::seccomp_notif) -> Result<Asked, StdioError> {
    let pid = n.pid;
    let a = n.data.args;
    let (dirfd, path_at, argv_at, flags) = if n.data.nr as i64 == libc::SYS_execve {
        (libc::AT_FDCWD, a[0], a[1], 0)
    } else {
        (a[0] as i32, a[1], a[2], a[4] as i32)
    };
    let mem = Memory::open(pid)?;
    let raw = mem.path(path_at)?;
    let (argv, truncated) = mem.argv(argv_at)?;
    let link = |what: String| {
        std::fs::read_link(format!("/proc/{pid}/{what}")).map_err(|source| StdioError::Read {
            pid,
            what: "cwd or fd",
            source,
        })
    };
    let path = if raw.is_empty() && flags & libc::AT_EMPTY_PATH != 0 {
        link(format!("fd/{dirfd}"))?
    } else if raw.first() == Some(&b'/') {
        PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(raw))
    } else {
        let base = if dirfd == libc::AT_FDCWD {
            link("cwd".into())?
        } else {
            link(format!("fd/{dirfd}"))?
        };
        base.join(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(raw))
    };
    // Through the process's own root (a chroot sees other files).
    let rooted =
        Path::new(&format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(&path));
    let resolved = std::fs::canonicalize(&rooted).ok().filter(|p| p.is_file());
    Ok(Asked {
        path,
        resolved,
        argv: argv.into_iter().map(text).collect(),
        truncated,
    })
}

fn decide(
    listener: &OwnedFd,
    n: &libc::seccomp_notif,
    tree: &Tree,
    stage: &Arc<Stage>,
) -> Result<Answer, StdioError> {
    let asked = read_asked(n);
    // Whatever was read belongs to this exec only if the process is still waiting in it.
    if !id_valid(listener, n.id) {
        return Ok(Answer::Continue);
    }
    let asked = asked?;
    // A file that does not exist does not run (a PATH search tries several): nothing to do.
    let Some(resolved) = &asked.resolved else {
        return Ok(Answer::Continue);
    };
    // Inside a relay already (a launch chain: npx, then node, then the server): its stdio
    // is the gateway's; the chain is recorded with the relay.
    if let Some(relay) = stage.relay_holding(n.pid) {
        relay.chained(n.pid, &asked.path, &asked.argv, stage);
        return Ok(Answer::Continue);
    }
    let path = asked.path.to_string_lossy();
    let resolved_text = resolved.to_string_lossy();
    let matcher = stage.matcher();
    let Some(server) = matcher.server_of(&Exec {
        paths: [&path, &resolved_text],
        argv: &asked.argv,
    }) else {
        tracing::debug!(pid = n.pid, path = %path, "exec of no configured server");
        return Ok(Answer::Continue);
    };
    let server: Arc<str> = server.into();
    if asked.truncated {
        tracing::debug!(pid = n.pid, "arguments truncated for the record");
    }
    let identity = super::relay::identity_of(n.pid);
    let slot = stage.slot(identity.uid)?;
    let swapped = super::swap::swap(listener, n.id, n.pid)?;
    // The process may have been killed since the swap: its exec never happens, and the
    // relay ends with the pipes.
    super::relay::start(
        stage.clone(),
        tree,
        server,
        identity,
        swapped,
        slot,
        n.pid,
        &asked.path,
        &asked.argv,
    );
    Ok(Answer::Continue)
}
