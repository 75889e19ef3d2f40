//! Handing a tree's exec listener to the daemon: the launcher connects to the daemon's
//! stdio socket (root only) and sends the listener as SCM_RIGHTS; the daemon checks the
//! sender (root, in an agent cgroup, the descriptor a seccomp listener) and answers one
//! line, `ok` or the reason it refused, before the launcher lets the agent run.

use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use super::{Stage, StdioError, Tree};

/// How long either side waits for the other.
const WAIT: Duration = Duration::from_secs(10);

/// The launcher's side: hands `listener` over and waits for the daemon to hold it.
pub fn hand_over(socket: &Path, listener: &OwnedFd) -> Result<(), StdioError> {
    let err = |source: std::io::Error| StdioError::Socket {
        path: socket.display().to_string(),
        source,
    };
    let stream = UnixStream::connect(socket).map_err(err)?;
    stream.set_read_timeout(Some(WAIT)).map_err(err)?;
    stream.set_write_timeout(Some(WAIT)).map_err(err)?;
    let fds = [listener.as_raw_fd()];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(b"E")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| err(e.into()))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).map_err(err)?;
    match line.trim_end() {
        "ok" => Ok(()),
        "" => Err(StdioError::Refused(
            "the daemon closed the connection".into(),
        )),
        other => Err(StdioError::Refused(
            other.strip_prefix("error: ").unwrap_or(other).to_string(),
        )),
    }
}

/// Binds the daemon's stdio socket (root only: the launcher runs as root).
pub fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener, StdioError> {
    let err = |source: std::io::Error| StdioError::Socket {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(err)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Accepts enrolments until the daemon stops (one thread; each takes milliseconds).
pub fn serve(listener: std::os::unix::net::UnixListener, stage: Arc<Stage>) {
    std::thread::Builder::new()
        .name("stdio-enrol".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => {
                        let _ = s.set_read_timeout(Some(WAIT));
                        let _ = s.set_write_timeout(Some(WAIT));
                        let answer = enrol(&s, &stage);
                        let line = match &answer {
                            Ok(()) => "ok\n".to_string(),
                            Err(why) => {
                                tracing::warn!(reason = %why, "stdio enrolment refused");
                                format!("error: {why}\n")
                            }
                        };
                        let _ = (&s).write_all(line.as_bytes());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "stdio socket: accept failed");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })
        .expect("spawning the stdio enrolment thread");
}

fn enrol(s: &UnixStream, stage: &Arc<Stage>) -> Result<(), String> {
    let creds = nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("cannot read the sender's credentials: {e}"))?;
    if creds.uid() != 0 {
        return Err(format!(
            "only root may enrol a process tree (the sender is uid {})",
            creds.uid()
        ));
    }
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        s.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| format!("reading the enrolment: {e}"))?;
    let mut received: Vec<OwnedFd> = Vec::new();
    for c in msg
        .cmsgs()
        .map_err(|e| format!("reading the enrolment: {e}"))?
    {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: descriptors the kernel just installed for this process.
            received.extend(
                fds.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let [listener]: [OwnedFd; 1] = received
        .try_into()
        .map_err(|v: Vec<OwnedFd>| format!("expected one descriptor, got {}", v.len()))?;
    let kind = std::fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd()))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if kind != "anon_inode:seccomp notify" {
        return Err(format!("the descriptor is not a seccomp listener ({kind})"));
    }
    let pid = creds.pid() as u32;
    let cgroup = cgroup_of(pid).ok_or_else(|| format!("cannot read the cgroup of pid {pid}"))?;
    let agents = &stage.daemon.config.agents.cgroups;
    let enrolled = crate::exec::within(&cgroup, agents);
    if !agents.is_empty() && !enrolled {
        return Err(format!(
            "the launcher (pid {pid}) is in cgroup /{cgroup}, which is not an agent cgroup \
             (agents.cgroups)"
        ));
    }
    let tree = Tree {
        id: stage.next_id(),
        launcher: pid,
        cgroup,
        stored_as: format!("{}{pid}", super::store::PREFIX),
    };
    super::store::keep(&tree.stored_as, std::os::fd::AsFd::as_fd(&listener));
    tracing::info!(tree = tree.id, launcher = pid, cgroup = %tree.cgroup, "process tree enrolled for stdio mediation");
    supervise(stage, listener, tree, false)
}

/// Records the tree and starts the thread that answers its execs.
fn supervise(
    stage: &Arc<Stage>,
    listener: OwnedFd,
    tree: Tree,
    restored: bool,
) -> Result<(), String> {
    stage.daemon.audit.record_now(&serde_json::json!({
        "type": "stdio_tree",
        "time": crate::audit::timestamp(std::time::SystemTime::now()),
        "tree": tree.id,
        "launcher": tree.launcher,
        "cgroup": tree.cgroup,
        "restored": restored,
    }));
    let stage = stage.clone();
    std::thread::Builder::new()
        .name(format!("stdio-tree-{}", tree.id))
        .spawn(move || super::supervise::run(listener, tree, stage))
        .map(drop)
        .map_err(|e| format!("cannot start the tree's supervisor: {e}"))
}

/// Takes back the trees a previous daemon enrolled, from the service manager's store: their
/// execs waited for this daemon.
pub fn restore(stage: &Arc<Stage>) {
    for (listener, name) in super::store::kept() {
        let kind = std::fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd()))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if kind != "anon_inode:seccomp notify" {
            tracing::warn!(
                name,
                kind,
                "a stored descriptor is not an exec listener: dropped"
            );
            continue;
        }
        let launcher = name
            .strip_prefix(super::store::PREFIX)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let tree = Tree {
            id: stage.next_id(),
            launcher,
            cgroup: cgroup_of(launcher).unwrap_or_else(|| "(launcher gone)".into()),
            stored_as: name,
        };
        tracing::info!(
            tree = tree.id,
            launcher,
            "process tree taken back from the service manager's store"
        );
        if let Err(e) = supervise(stage, listener, tree, true) {
            tracing::error!(error = %e, "cannot take back a stored tree");
        }
    }
}

/// The cgroup2 path of `pid`, without its leading '/'.
fn cgroup_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_start_matches('/').to_string())
}
