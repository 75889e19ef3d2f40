//! `mcp-gateway exec`: run a command inside an agent cgroup, for ad-hoc use and tests.
//!
//! The caller is usually root at a terminal; the command is an agent, which must get none
//! of what the caller holds. It runs as a child in a new session (so it has no controlling
//! terminal: `TIOCSTI` cannot push input into the caller's shell, nor can job control reach
//! it), with every inherited descriptor above 2 closed (the caller's open files stay the
//! caller's), and with `--user` the environment such a user gets from `runuser`. Where the
//! caller's stdin, stdout or stderr is a terminal, the command gets a terminal of its own
//! (a pty) in its place, which `exec` relays: the agent can still be used interactively, and
//! never holds the caller's terminal.

use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{bail, Context};
use nix::sys::signal::{self, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use crate::intercept::cgroup;

/// Signals `exec` passes on to the command (it is in another session: the terminal's
/// Ctrl-C reaches `exec`, not it).
const FORWARDED: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// Runs `argv` in the agent cgroup `cgroup_rel`, as `user`. With `stdio` (the daemon's stdio
/// socket), every program the command and its descendants start is shown to the daemon
/// first, so it can mediate the MCP servers among them (see `stdio`).
pub fn exec(
    cgroup_rel: &str,
    user: Option<&str>,
    argv: &[OsString],
    stdio: Option<&Path>,
) -> anyhow::Result<()> {
    if argv.is_empty() {
        bail!("no command given: mcp-gateway exec [--cgroup NAME] [--user USER] -- CMD [ARGS...]");
    }
    // Everything that can fail cleanly is resolved before the fork.
    let user = user.map(resolve_user).transpose()?;
    let mount = cgroup::cgroup2_mount()?;
    cgroup::ensure(&mount, cgroup_rel)?;
    let cgroup_path = cgroup::path_of(&mount, cgroup_rel);
    let args: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .context("an argument contains a NUL byte")?;
    let ttys: Vec<i32> = (0..3).filter(|fd| is_tty(*fd)).collect();
    let pty = if ttys.is_empty() {
        None
    } else {
        Some(nix::pty::openpty(window_size().as_ref(), None).context("opening a pty")?)
    };
    // SAFETY: `exec` runs before any runtime or thread is started, so the child of this
    // single-threaded process may allocate and take locks until it execs or exits.
    match unsafe { nix::unistd::fork() }.context("fork")? {
        ForkResult::Child => {
            let err = child(
                &cgroup_path,
                stdio,
                user.as_ref(),
                &args,
                pty.as_ref().map(|p| &p.slave),
                &ttys,
            );
            // Nothing to print to: stderr may be the pty. The exit code says it.
            let _ = nix::unistd::write(std::io::stderr(), err.as_bytes());
            // SAFETY: _exit is async-signal-safe and ends the child without unwinding.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => {
            let code = match pty {
                Some(p) => {
                    drop(p.slave);
                    relay(child, p.master, &ttys)?
                }
                None => wait_forwarding(child)?,
            };
            std::process::exit(code)
        }
    }
}

/// The child: new session, the cgroup, the user, the terminal, the descriptors, then the
/// command. Returns only with the reason it could not run the command.
fn child(
    cgroup_path: &Path,
    stdio: Option<&Path>,
    user: Option<&nix::unistd::User>,
    args: &[CString],
    slave: Option<&OwnedFd>,
    ttys: &[i32],
) -> String {
    if let Err(e) = nix::unistd::setsid() {
        return format!("mcp-gateway exec: setsid: {e}\n");
    }
    if let Some(slave) = slave {
        // SAFETY: TIOCSCTTY on a pty slave this process owns, in its own new session.
        if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
            return "mcp-gateway exec: cannot make the pty the controlling terminal\n".into();
        }
        for fd in ttys {
            // SAFETY: dup2 onto 0..2, which this process owns.
            if unsafe { libc::dup2(slave.as_raw_fd(), *fd) } < 0 {
                return "mcp-gateway exec: cannot attach the pty\n".into();
            }
        }
    }
    if let Err(e) = cgroup::join(cgroup_path, std::process::id()) {
        return format!("mcp-gateway exec: joining {}: {e}\n", cgroup_path.display());
    }
    // While still root (the daemon takes enrolments from root only), and before anything
    // of the agent's runs: no daemon to take the listener, no agent.
    if let Some(socket) = stdio {
        let enrolled = crate::stdio::filter::install()
            .and_then(|listener| crate::stdio::enrol::hand_over(socket, &listener));
        if let Err(e) = enrolled {
            return format!(
                "mcp-gateway exec: the daemon must mediate this agent's stdio MCP servers, and \
                 could not: {e} (is `mcp-gateway run` running with this config?)\n"
            );
        }
    }
    if let Some(u) = user {
        if let Err(e) = become_user(u) {
            return format!("mcp-gateway exec: {e}\n");
        }
    }
    // Killed with `exec` (set after the user changed: a credential change clears it), and
    // `exec` may already be gone.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // SAFETY: close_range on descriptors this process owns; nothing above 2 is used after.
    if unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) } != 0 {
        return "mcp-gateway exec: cannot close inherited descriptors\n".into();
    }
    for s in FORWARDED {
        // SAFETY: restoring the default disposition.
        let _ = unsafe { signal::signal(s, SigHandler::SigDfl) };
    }
    let err = nix::unistd::execvp(&args[0], args).unwrap_err();
    format!(
        "mcp-gateway exec: cannot run {}: {err}\n",
        args[0].to_string_lossy()
    )
}

/// This process's cgroup2 path, relative to the mount (no leading '/').
pub fn current_cgroup() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_matches('/').to_string())
}

/// Whether cgroup `c` is one of `agents` or below one.
pub fn within(c: &str, agents: &[String]) -> bool {
    agents.iter().any(|a| {
        let a = a.trim_matches('/');
        !a.is_empty() && (c == a || c.starts_with(&format!("{a}/")))
    })
}

/// Groups, gid, uid, and the environment `runuser -u USER` gives: HOME, SHELL, USER and
/// LOGNAME of the user (the caller's would point the agent at root's files).
fn become_user(u: &nix::unistd::User) -> anyhow::Result<()> {
    let name = CString::new(u.name.clone()).context("user name contains a NUL byte")?;
    nix::unistd::initgroups(&name, u.gid).context("initgroups")?;
    nix::unistd::setgid(u.gid).context("setgid")?;
    nix::unistd::setuid(u.uid).context("setuid")?;
    std::env::set_var("HOME", &u.dir);
    std::env::set_var("SHELL", &u.shell);
    std::env::set_var("USER", &u.name);
    std::env::set_var("LOGNAME", &u.name);
    Ok(())
}

fn is_tty(fd: i32) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

fn window_size() -> Option<nix::pty::Winsize> {
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    for fd in 0..3 {
        // SAFETY: TIOCGWINSZ fills `ws`.
        if is_tty(fd) && unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 {
            return Some(nix::pty::Winsize {
                ws_row: ws.ws_row,
                ws_col: ws.ws_col,
                ws_xpixel: ws.ws_xpixel,
                ws_ypixel: ws.ws_ypixel,
            });
        }
    }
    None
}

static CHILD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(std::sync::atomic::Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

fn install_forwarding(child: Pid) {
    CHILD.store(child.as_raw(), std::sync::atomic::Ordering::Relaxed);
    for s in FORWARDED {
        // SAFETY: the handler only calls kill.
        let _ = unsafe { signal::signal(s, SigHandler::Handler(forward)) };
    }
}

/// The command's exit code as a shell reports it.
fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

fn wait_forwarding(child: Pid) -> anyhow::Result<i32> {
    install_forwarding(child);
    loop {
        match waitpid(child, None) {
            Ok(s) => {
                if let Some(code) = exit_code(s) {
                    return Ok(code);
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => bail!("waiting for the command: {e}"),
        }
    }
}

/// Puts a terminal in raw mode for the relay's lifetime (the command's own pty does the
/// line editing), restoring it on drop.
struct Raw<'a> {
    fd: BorrowedFd<'a>,
    saved: nix::sys::termios::Termios,
}

impl<'a> Raw<'a> {
    fn enter(fd: BorrowedFd<'a>) -> Option<Self> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let saved = tcgetattr(fd).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(fd, SetArg::TCSANOW, &raw).ok()?;
        Some(Self { fd, saved })
    }
}

impl Drop for Raw<'_> {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let _ = tcsetattr(self.fd, SetArg::TCSANOW, &self.saved);
    }
}

/// Relays between the caller's terminal and the command's pty until the command exits.
fn relay(child: Pid, master: OwnedFd, ttys: &[i32]) -> anyhow::Result<i32> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    install_forwarding(child);
    let stdin = std::io::stdin();
    let input = ttys.contains(&0).then(|| stdin.as_fd());
    let _raw = input.and_then(Raw::enter);
    // What the command writes to its terminal goes to the caller's (stdout first).
    let out = ttys.iter().copied().find(|fd| *fd > 0);
    let mut buf = [0u8; 16 * 1024];
    let mut input_open = input.is_some();
    loop {
        let mut fds = vec![PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        if let (true, Some(i)) = (input_open, input) {
            fds.push(PollFd::new(i, PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => bail!("relaying the terminal: {e}"),
        }
        let master_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
        let input_ready = fds
            .get(1)
            .and_then(|f| f.revents())
            .is_some_and(|r| !r.is_empty());
        drop(fds);
        if master_ready {
            match nix::unistd::read(&master, &mut buf) {
                Ok(0) | Err(nix::errno::Errno::EIO) => {}
                Ok(n) => {
                    if let Some(fd) = out {
                        // SAFETY: 1 or 2, open for the whole process.
                        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
                        let _ = write_all(fd, &buf[..n]);
                    }
                    continue;
                }
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
                Err(_) => {}
            }
        }
        if input_ready {
            if let Some(i) = input {
                match nix::unistd::read(i, &mut buf) {
                    Ok(0) | Err(_) => input_open = false,
                    Ok(n) => {
                        let _ = write_all(master.as_fd(), &buf[..n]);
                    }
                }
            }
        }
        match nix::sys::wait::waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::EINTR) => {}
            Ok(s) => {
                if let Some(code) = exit_code(s) {
                    // What the command wrote last is still in the pty.
                    while let Ok(n @ 1..) = nix::unistd::read(&master, &mut buf) {
                        if let Some(fd) = out {
                            // SAFETY: as above.
                            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
                            let _ = write_all(fd, &buf[..n]);
                        }
                    }
                    return Ok(code);
                }
            }
            Err(e) => bail!("waiting for the command: {e}"),
        }
    }
}

fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> nix::Result<()> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A user by name or uid (a uid without a passwd entry runs with gid = uid).
fn resolve_user(spec: &str) -> anyhow::Result<nix::unistd::User> {
    use nix::unistd::{Gid, Uid, User};
    if let Ok(uid) = spec.parse::<u32>() {
        return Ok(User::from_uid(Uid::from_raw(uid))?.unwrap_or_else(|| User {
            name: spec.to_string(),
            passwd: CString::default(),
            uid: Uid::from_raw(uid),
            gid: Gid::from_raw(uid),
            gecos: CString::default(),
            dir: "/".into(),
            shell: "/bin/sh".into(),
        }));
    }
    User::from_name(spec)?.with_context(|| format!("no such user {spec:?}"))
}
