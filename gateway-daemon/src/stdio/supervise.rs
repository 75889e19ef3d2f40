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
    /// The exec goes on (mediated or not), if the kernel's check can be told what it runs.
    Continue(Runs),
    /// The exec fails with this errno.
    Refuse(i32),
}

/// What a continued exec runs, for the kernel's check (`check`).
enum Runs {
    /// Nothing to check: the process is gone.
    Unknown,
    /// A file that does not exist: should it run after all, it is not what was decided.
    Nothing,
    Program(super::check::Expected),
}

/// Serves the tree's notifications until every process of it has gone (the listener hangs
/// up) or the daemon stops.
pub fn run(listener: OwnedFd, tree: Tree, stage: Arc<Stage>) {
    let _span =
        tracing::info_span!("stdio_tree", tree = tree.id, launcher = tree.launcher).entered();
    let mut refusals = super::Paced::default();
    stage
        .trees
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    serve(&listener, &tree, &stage, &mut refusals);
    stage
        .trees
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    super::store::forget(&tree.stored_as);
}

fn serve(listener: &OwnedFd, tree: &Tree, stage: &Arc<Stage>, refusals: &mut super::Paced) {
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
        let answer = match decide(listener, &n, tree, stage).and_then(|a| checked(stage, &n, a)) {
            Ok(a) => a,
            Err(e) => {
                // What cannot be read or mediated does not run: fail closed.
                if let Some(suppressed) = refusals.admit() {
                    tracing::warn!(pid = n.pid, error = %e, "exec refused");
                    stage.daemon.audit.record_now(&json!({
                        "type": "stdio_exec",
                        "time": crate::audit::timestamp(std::time::SystemTime::now()),
                        "tree": tree.id,
                        "pid": n.pid,
                        "outcome": "refused",
                        "detail": e.to_string(),
                        "suppressed": suppressed,
                    }));
                }
                Answer::Refuse(libc::EPERM)
            }
        };
        let resp = match answer {
            Answer::Continue(_) => libc::seccomp_notif_resp {
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
    /// Absolute, as the process gave it (relative to its cwd or directory descriptor).
    path: PathBuf,
    /// The file, when it exists.
    target: Option<super::resolve::Target>,
    argv: Vec<String>,
    /// The arguments as read, byte for byte.
    raw_argv: Vec<Vec<u8>>,
    /// The path as the kernel names it to a script's interpreter.
    kernel_name: Vec<u8>,
    truncated: bool,
    cwd: Option<PathBuf>,
}

fn text(b: Vec<u8>) -> String {
    String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn os(b: Vec<u8>) -> PathBuf {
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(b))
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
    // Directories by the process's descriptors: the daemon opens them as the process's
    // (`/proc/PID/fd/N`), walking on by name when they have one.
    let dir_of = |fd: i32| -> PathBuf {
        let magic = PathBuf::from(format!("/proc/{pid}/fd/{fd}"));
        match std::fs::read_link(&magic) {
            Ok(p) if p.is_absolute() && !p.to_string_lossy().ends_with(" (deleted)") => p,
            _ => magic,
        }
    };
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
    // As fs/exec.c names the file: the path given, or by descriptor `/dev/fd/N[/path]`.
    let kernel_name = if dirfd == libc::AT_FDCWD || raw.first() == Some(&b'/') {
        raw.clone()
    } else if raw.is_empty() {
        format!("/dev/fd/{dirfd}").into_bytes()
    } else {
        let mut n = format!("/dev/fd/{dirfd}/").into_bytes();
        n.extend_from_slice(&raw);
        n
    };
    let path = if raw.is_empty() && flags & libc::AT_EMPTY_PATH != 0 {
        PathBuf::from(format!("/proc/{pid}/fd/{dirfd}"))
    } else if raw.first() == Some(&b'/') {
        os(raw)
    } else if dirfd == libc::AT_FDCWD {
        cwd.clone()
            .unwrap_or_else(|| PathBuf::from(format!("/proc/{pid}/cwd")))
            .join(os(raw))
    } else {
        dir_of(dirfd).join(os(raw))
    };
    let target = super::resolve::as_seen_by(pid, &path)
        .filter(|t| std::fs::metadata(&t.open).is_ok_and(|m| m.is_file()));
    Ok(Asked {
        path,
        target,
        raw_argv: argv.clone(),
        argv: argv.into_iter().map(text).collect(),
        kernel_name,
        truncated,
        cwd,
    })
}

/// What the kernel runs for `asked`: the file, then (for a script) its interpreter with the
/// script among its arguments, as `#!` lines say, up to the kernel's four levels.
fn candidates(pid: u32, asked: &Asked) -> Vec<(Vec<String>, Vec<String>)> {
    let Some(target) = &asked.target else {
        return Vec::new();
    };
    let given = asked.path.display().to_string();
    let mut out = vec![(
        vec![given.clone(), target.shown.clone()],
        asked.argv.clone(),
    )];
    let (mut file, mut script, mut argv) = (target.open.clone(), given, asked.argv.clone());
    for _ in 0..4 {
        let Some((interp, arg)) = super::resolve::shebang(&file) else {
            break;
        };
        let mut next = vec![interp.clone()];
        next.extend(arg);
        next.push(script);
        next.extend(argv.iter().skip(1).cloned());
        let Some(t) = super::resolve::as_seen_by(pid, Path::new(&interp)) else {
            break;
        };
        out.push((vec![interp.clone(), t.shown.clone()], next.clone()));
        (file, script, argv) = (t.open, interp, next);
    }
    out
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
        return Ok(Answer::Continue(Runs::Unknown));
    }
    let asked = asked?;
    // A file that does not exist does not run (a PATH search tries several): nothing to do.
    if asked.target.is_none() {
        return Ok(Answer::Continue(Runs::Nothing));
    }
    let runs = expected(n.pid, &asked);
    // Inside a relay already (a launch chain: npx, then node, then the server): its stdio
    // is the gateway's; the chain is recorded with the relay.
    if let Some(relay) = stage.relay_holding(n.pid) {
        relay.chained(n.pid, &asked.path, &asked.argv, stage);
        return Ok(Answer::Continue(runs));
    }
    // A program with no name (a memfd, a deleted file) cannot be told from a server.
    if let Some(t) = &asked.target {
        if !t.shown.starts_with('/')
            || t.shown.starts_with("/memfd:")
            || t.shown.ends_with(" (deleted)")
        {
            return Err(StdioError::NotMediable {
                why: format!(
                    "it runs {:?}, a file with no name in the file system: the gateway cannot \
                     tell which program it is",
                    t.shown
                ),
            });
        }
    }
    let matcher = stage.matcher();
    let mut server = None;
    for (paths, argv) in candidates(n.pid, &asked) {
        let argv_abs = super::resolve::absolute_args(n.pid, asked.cwd.as_deref(), &argv);
        if let Some(s) = matcher.server_of(&Exec {
            paths: &paths,
            argv: &argv,
            argv_abs: &argv_abs,
        }) {
            server = Some(s);
            break;
        }
    }
    let Some(server) = server else {
        // Arguments the daemon could not read whole could hide a server's: not run.
        if asked.truncated {
            return Err(StdioError::NotMediable {
                why: "its arguments are longer than the gateway reads to decide \
                      (1,048,576 of them or 4 MiB)"
                    .into(),
            });
        }
        tracing::debug!(pid = n.pid, path = %asked.path.display(), "exec of no configured server");
        return Ok(Answer::Continue(runs));
    };
    let server: Arc<str> = server.into();
    if asked.truncated {
        tracing::debug!(pid = n.pid, "arguments truncated for the record");
    }
    let hash = stage.daemon.policy.current().wants_exe_hash();
    let identity = super::relay::identity_of(n.pid, hash, stage.notes.as_ref());
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
    Ok(Answer::Continue(runs))
}

/// Tells the kernel's check what a continued exec runs; an exec it cannot be told about
/// does not go on.
fn checked(stage: &Stage, n: &libc::seccomp_notif, answer: Answer) -> Result<Answer, StdioError> {
    let (Some(check), Answer::Continue(runs)) = (&stage.check, &answer) else {
        return Ok(answer);
    };
    let what = match runs {
        Runs::Unknown => return Ok(answer),
        Runs::Nothing => None,
        Runs::Program(e) => Some(e),
    };
    let tgid = tgid_of(n.pid).ok_or_else(|| StdioError::NotMediable {
        why: format!("task {} has gone", n.pid),
    })?;
    check
        .expect(tgid, n.pid, what)
        .map_err(|why| StdioError::NotMediable {
            why: format!("the kernel's exec check cannot be told what it runs: {why}"),
        })?;
    Ok(answer)
}

fn tgid_of(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()
}

/// The file the kernel will load for `asked` and the arguments it will pass: for a script,
/// its interpreter, given the interpreter line's words, the script's name as the kernel
/// saw it, and the arguments after the first (up to the kernel's four levels).
fn expected(pid: u32, asked: &Asked) -> Runs {
    let Some(target) = &asked.target else {
        return Runs::Nothing;
    };
    let mut file = target.open.clone();
    let mut argv = asked.raw_argv.clone();
    // Linux gives a program started with no arguments one empty one.
    if argv.is_empty() {
        argv.push(Vec::new());
    }
    let mut name = asked.kernel_name.clone();
    for _ in 0..5 {
        let Some((interp, arg)) = super::resolve::shebang(&file) else {
            return Runs::Program(super::check::Expected { file, argv });
        };
        let mut next = vec![interp.clone().into_bytes()];
        next.extend(arg.map(String::into_bytes));
        next.push(name);
        next.extend(argv.into_iter().skip(1));
        let Some(t) = super::resolve::as_seen_by(pid, Path::new(&interp)) else {
            return Runs::Nothing;
        };
        (file, argv, name) = (t.open, next, interp.into_bytes());
    }
    // Deeper than the kernel goes: the exec fails (ELOOP).
    Runs::Nothing
}
