//! Putting the daemon between an agent and the server it is starting: the exec'ing
//! process's stdin and stdout (the ends the agent's pipes or socketpairs give the server)
//! are taken by the daemon, and new pipes to the daemon are installed in their place, in
//! the waiting process, before its exec goes on.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

use super::StdioError;

const KCMP_FILES: libc::c_int = 2;

/// The daemon's ends of a mediated server's stdio.
pub struct Swapped {
    /// What the agent writes to the server (the server's old stdin).
    pub agent_in: OwnedFd,
    /// Where the server's answers go to the agent (the server's old stdout).
    pub agent_out: OwnedFd,
    /// The server's new stdin.
    pub server_in: OwnedFd,
    /// The server's new stdout.
    pub server_out: OwnedFd,
    /// The server-side ends of the new pipes, by (device, inode): a process holding them
    /// as its stdio runs inside this relay (a launch chain's next program).
    pub marks: [(u64, u64); 2],
    /// What the agent gave the server: "pipe" or "unix_socket" (Node's socketpairs).
    pub carrier: &'static str,
}

fn os(step: &'static str) -> impl FnOnce(std::io::Error) -> StdioError {
    move |source| StdioError::Swap { step, source }
}

fn last(step: &'static str) -> StdioError {
    StdioError::Swap {
        step,
        source: std::io::Error::last_os_error(),
    }
}

/// Whether descriptor `fd` of `pid` can carry a stdio transport: a pipe, or a Unix socket
/// (Node gives its children socketpairs); a terminal, file or TCP socket cannot be mediated.
fn carrier(pid: u32, fd: RawFd) -> Result<(), StdioError> {
    let meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).map_err(os("stat stdio"))?;
    let kind = meta.mode() & libc::S_IFMT;
    if kind == libc::S_IFIFO || kind == libc::S_IFSOCK {
        return Ok(());
    }
    Err(StdioError::NotMediable {
        why: format!(
            "its fd {fd} is not a pipe or a Unix socket (an MCP client gives its server pipes)"
        ),
    })
}

fn is_unix_socket(fd: &OwnedFd) -> bool {
    let mut domain: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `domain` is a c_int the kernel fills; `len` says so.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut domain as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && domain == libc::AF_UNIX
}

fn is_socket(fd: &OwnedFd) -> bool {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat fills `st`.
    unsafe {
        libc::fstat(fd.as_raw_fd(), &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
    }
}

/// The parent pid of `pid` (field 4 of /proc/PID/stat, after the command's parentheses).
fn parent_of(pid: u32) -> Result<u32, StdioError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(os("read stat"))?;
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| StdioError::Swap {
            step: "parse stat",
            source: std::io::Error::other("no parent pid"),
        })
}

/// A task of `pid`'s cgroup (other than `pid`) with the same descriptor table.
fn sharing_files(pid: u32) -> Result<Option<u32>, StdioError> {
    let cgroup =
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(os("read cgroup"))?;
    let Some(path) = cgroup.lines().find_map(|l| l.strip_prefix("0::")) else {
        return Ok(None);
    };
    let mount = crate::intercept::cgroup::cgroup2_mount().map_err(|e| StdioError::Swap {
        step: "find the cgroup2 mount",
        source: std::io::Error::other(e.to_string()),
    })?;
    let threads = std::fs::read_to_string(
        mount
            .join(path.trim_start_matches('/'))
            .join("cgroup.threads"),
    )
    .map_err(os("list the cgroup's tasks"))?;
    for tid in threads.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
        if tid == pid {
            continue;
        }
        // SAFETY: kcmp with integer arguments.
        let same = unsafe {
            libc::syscall(
                libc::SYS_kcmp,
                pid as libc::pid_t,
                tid as libc::pid_t,
                KCMP_FILES,
                0,
                0,
            )
        };
        if same == 0 {
            return Ok(Some(tid));
        }
    }
    Ok(None)
}

fn pidfd_of(pid: u32) -> Result<OwnedFd, StdioError> {
    // SAFETY: pidfd_open with integer arguments.
    let mut fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if fd < 0 {
        // A thread other than the leader: a thread pidfd (Linux 6.9+).
        // SAFETY: as above.
        fd = unsafe {
            libc::syscall(
                libc::SYS_pidfd_open,
                pid as libc::c_int,
                libc::PIDFD_THREAD as libc::c_int,
            )
        };
    }
    if fd < 0 {
        return Err(last("pidfd_open"));
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn take(pidfd: &OwnedFd, target: RawFd) -> Result<OwnedFd, StdioError> {
    // SAFETY: pidfd_getfd with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
    if fd < 0 {
        return Err(last("pidfd_getfd"));
    }
    // SAFETY: a new descriptor (close-on-exec) that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn pipe() -> Result<(OwnedFd, OwnedFd), StdioError> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(last("pipe2"));
    }
    // SAFETY: two new descriptors nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn mark(fd: &OwnedFd) -> Result<(u64, u64), StdioError> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat fills `st`.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(last("fstat"));
    }
    Ok((st.st_dev, st.st_ino))
}

/// Installs `fd` as descriptor `target` of the process waiting in notification `id`
/// (replacing what was there), inheritable across its exec.
fn install(listener: &OwnedFd, id: u64, fd: &OwnedFd, target: RawFd) -> Result<(), StdioError> {
    let addfd = libc::seccomp_notif_addfd {
        id,
        flags: libc::SECCOMP_ADDFD_FLAG_SETFD as u32,
        srcfd: fd.as_raw_fd() as u32,
        newfd: target as u32,
        newfd_flags: 0,
    };
    // SAFETY: SECCOMP_IOCTL_NOTIF_ADDFD reads `addfd`.
    let rc = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_ADDFD as _,
            &addfd as *const libc::seccomp_notif_addfd,
        )
    };
    if rc < 0 {
        return Err(last("SECCOMP_IOCTL_NOTIF_ADDFD"));
    }
    Ok(())
}

/// Checks that the exec'ing process can be mediated, then swaps its stdin and stdout.
pub fn swap(listener: &OwnedFd, id: u64, pid: u32) -> Result<Swapped, StdioError> {
    carrier(pid, 0)?;
    carrier(pid, 1)?;
    // A process sharing its descriptor table with its parent (clone with CLONE_FILES) or
    // with threads: new descriptors 0 and 1 would be theirs too.
    let parent = parent_of(pid)?;
    // SAFETY: kcmp with integer arguments.
    let shared = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid as libc::pid_t,
            parent as libc::pid_t,
            KCMP_FILES,
            0,
            0,
        )
    };
    if shared == 0 {
        return Err(StdioError::NotMediable {
            why: format!("it shares its descriptor table with its parent {parent}"),
        });
    }
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(os("list threads"))?
        .count();
    if threads > 1 {
        return Err(StdioError::NotMediable {
            why: format!("it has {threads} threads sharing its descriptors"),
        });
    }
    // Nor with any other task of its cgroup (a sibling made with CLONE_FILES would hold
    // the server's new pipes): an agent's tasks cannot leave the agent cgroup.
    if let Some(other) = sharing_files(pid)? {
        return Err(StdioError::NotMediable {
            why: format!("it shares its descriptor table with task {other}"),
        });
    }
    let pidfd = pidfd_of(pid)?;
    let agent_in = take(&pidfd, 0)?;
    let agent_out = take(&pidfd, 1)?;
    for fd in [&agent_in, &agent_out] {
        if is_socket(fd) && !is_unix_socket(fd) {
            return Err(StdioError::NotMediable {
                why: "its stdio is a network socket, not a pipe or a Unix socket".into(),
            });
        }
    }
    let (stdin_r, stdin_w) = pipe()?;
    let (stdout_r, stdout_w) = pipe()?;
    let marks = [mark(&stdin_r)?, mark(&stdout_w)?];
    install(listener, id, &stdin_r, 0)?;
    install(listener, id, &stdout_w, 1)?;
    let carrier = if is_socket(&agent_in) {
        "unix_socket"
    } else {
        "pipe"
    };
    Ok(Swapped {
        agent_in,
        agent_out,
        server_in: stdin_w,
        server_out: stdout_r,
        marks,
        carrier,
    })
}

/// The (device, inode) of descriptors 0 and 1 of `pid`, for finding which relay (if any)
/// a process runs in.
pub fn stdio_marks(pid: u32) -> [Option<(u64, u64)>; 2] {
    [0, 1].map(|fd| {
        std::fs::metadata(format!("/proc/{pid}/fd/{fd}"))
            .ok()
            .map(|m| (m.dev(), m.ino()))
    })
}
