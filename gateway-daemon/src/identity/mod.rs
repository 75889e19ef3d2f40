//! Who opened a connection: the kernel's record from connect(), completed from procfs.
//!
//! The kernel facts (pid, uid, gid, cgroup id, process start) are the credential. procfs adds
//! what the kernel record lacks (executable, command line, cgroup path, unit), and is only
//! believed when the process found under the pid started at the same instant as the one the
//! kernel saw: a pid reused since then yields no procfs facts at all.
//!
//! Reading them can be made to hang or take long by the agent (`bounded`): a connection's
//! identity is read off its thread, and a fact not read in time is missing, never guessed.
//!
//! The executable is the one the kernel saw at connect() (its file's device and inode):
//! a process that exec'd another program since is still named for the one that connected
//! (procfs's path is used only when it is that same file; else a path under which that
//! file was seen before), and what it runs now is recorded beside it.

pub mod bounded;
pub mod exe_hash;
pub mod subids;

use std::path::PathBuf;

use nix::unistd::{Gid, Group, Uid, User};
use procfs::process::Process;
use serde::Serialize;

use crate::intercept::record::{ExeFile, Unvouched};
use crate::intercept::Redirected;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("process {tgid} exited before it could be inspected")]
    Exited { tgid: u32 },
    #[error("pid {tgid} now belongs to another process (started at tick {found}, the connecting one at tick {expected})")]
    PidReused {
        tgid: u32,
        expected: u64,
        found: u64,
    },
    #[error("reading /proc/{tgid}/{what}: {message}")]
    Procfs {
        tgid: u32,
        what: &'static str,
        message: String,
    },
    #[error("process {tgid}: {why}")]
    Unread { tgid: u32, why: bounded::Unread },
}

#[derive(Debug, Clone, Serialize)]
pub struct Identity {
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub user: Option<String>,
    pub gid: u32,
    pub group: Option<String>,
    /// A label the process can set for itself, never a credential.
    pub comm: String,
    pub cgroup_id: u64,
    /// Process start, clock ticks since boot (as /proc/PID/stat field 22).
    pub start_time: u64,
    /// The executable at connect(): the path procfs shows when it is the file the kernel
    /// saw, else a path that file was seen under before (None: not known).
    pub exe: Option<PathBuf>,
    /// The file the kernel saw at connect().
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe_file: Option<ExeFile>,
    /// Why `exe_file` says nothing of what the process runs, when it does not (set or
    /// changed by the process since its exec, on a user's own mount, or nothing can tell:
    /// `Unvouched`). It is then named for no program and matches no `exe` or `exe_sha256`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe_unvouched: Option<Unvouched>,
    /// `exe_file`'s change time when the kernel saw it: a hash of other bytes is none.
    #[serde(skip)]
    pub exe_ctime: Option<(i64, u32)>,
    /// What procfs shows the process running now, when it is not `exe_file`: it exec'd
    /// another program after connecting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe_now: Option<PathBuf>,
    pub cmdline: Option<Vec<String>>,
    pub cgroup: Option<String>,
    pub unit: Option<String>,
    /// Why the procfs facts are missing, when they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub procfs_error: Option<String>,
    /// The SHA-256 of `exe_file`, when a principal asks for it (`exe_sha256`) and it could
    /// be read; None is unknown, never a match.
    #[serde(skip)]
    pub exe_sha256: Option<String>,
}

/// Identities resolved before, by all the kernel attests at connect(): the same process
/// (thread group and start time) running the same file (which an exec changes) in the same
/// cgroup as the same user and group. Within `RESOLVED_FOR` a new connection of the same
/// process costs no procfs or user database read; what only the process itself can change
/// (its command line) is at most that old in a record, and nothing decides on it.
const RESOLVED_FOR: std::time::Duration = std::time::Duration::from_secs(10);
const RESOLVED_MAX: usize = 4096;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Attested {
    tgid: u32,
    start_boottime_ns: u64,
    exe_file: ExeFile,
    exe_unvouched: Option<Unvouched>,
    cgroup_id: u64,
    uid: u32,
    gid: u32,
}

type Resolved = std::collections::HashMap<Attested, (std::time::Instant, Identity)>;
static RESOLVED: std::sync::LazyLock<std::sync::Mutex<Resolved>> =
    std::sync::LazyLock::new(Default::default);

impl Attested {
    /// Without the file the kernel saw, an exec would go unnoticed: never cached.
    fn of(r: &Redirected) -> Option<Self> {
        Some(Attested {
            tgid: r.tgid,
            start_boottime_ns: r.start_boottime_ns,
            exe_file: r.exe_file?,
            exe_unvouched: r.exe_unvouched,
            cgroup_id: r.cgroup_id,
            uid: r.uid,
            gid: r.gid,
        })
    }
}

fn resolved() -> std::sync::MutexGuard<'static, Resolved> {
    RESOLVED.lock().unwrap_or_else(|p| p.into_inner())
}

/// A recent resolution of what the kernel attests alike, with the hash when one is wanted.
fn cached(key: &Attested, r: &Redirected, hash: bool) -> Option<Identity> {
    let cache = resolved();
    let (at, id) = cache.get(key)?;
    if at.elapsed() >= RESOLVED_FOR || (hash && id.exe_sha256.is_none()) {
        return None;
    }
    let mut id = id.clone();
    // Per connection: the thread that connected and the name it set.
    id.pid = r.pid;
    id.comm = r.comm.clone();
    Some(id)
}

fn remember_resolved(key: Attested, id: &Identity) {
    if id.procfs_error.is_some() || id.exe_now.is_some() {
        return;
    }
    let mut cache = resolved();
    if cache.len() >= RESOLVED_MAX {
        cache.retain(|_, (at, _)| at.elapsed() < RESOLVED_FOR);
        if cache.len() >= RESOLVED_MAX {
            cache.clear();
        }
    }
    cache.insert(key, (std::time::Instant::now(), id.clone()));
}

impl Identity {
    /// The identity of the process that made the connection `r` records: from the cache
    /// when the kernel attests the same process as a recent resolution, else read anew
    /// here (on a thread a hang costs nothing else: `resolve_bounded` is for connections).
    /// `hash`: the executable's SHA-256 is wanted too.
    pub fn resolve(r: &Redirected, hash: bool) -> Self {
        let key = Attested::of(r);
        if let Some(id) = key.as_ref().and_then(|k| cached(k, r, hash)) {
            return id;
        }
        let id = Self::read(r, hash);
        if let Some(key) = key {
            remember_resolved(key, &id);
        }
        id
    }

    /// As `resolve`, for a connection: the read runs off this thread and is waited for at
    /// most `bounded::READ_FOR`. Not read in time, the identity has the kernel's facts
    /// only, and `procfs_error` says why.
    pub async fn resolve_bounded(r: &Redirected, hash: bool) -> Self {
        let key = Attested::of(r);
        if let Some(id) = key.as_ref().and_then(|k| cached(k, r, hash)) {
            return id;
        }
        // The facts, remembered by the reading thread itself: one that comes in after the
        // connection stopped waiting still serves the process's next connection.
        let read = {
            let r = r.clone();
            move || {
                let id = Self::read_facts(&r, hash);
                if let Some(key) = key {
                    remember_resolved(key, &id);
                }
                id
            }
        };
        let mut id = match bounded::read(r.uid, read).await {
            Ok(id) => id,
            Err(why) => {
                let why = IdentityError::Unread { tgid: r.tgid, why };
                tracing::warn!(tgid = r.tgid, uid = r.uid, error = %why, "identity not read");
                return Self::kernel_only(r, Some(why.to_string()));
            }
        };
        // The names of its user and group (a directory service may be slow or down) are
        // read on their own: they only label records, and their lack costs no fact.
        let (uid, gid) = (r.uid, r.gid);
        if let Ok((user, group)) = bounded::read(uid, move || names(uid, gid)).await {
            (id.user, id.group) = (user, group);
            if let Some(key) = key {
                remember_resolved(key, &id);
            }
        }
        id
    }

    /// The kernel's facts alone: nothing that touches a file the agent could hold up (the
    /// user database included, which may be remote).
    fn kernel_only(r: &Redirected, why: Option<String>) -> Self {
        let ticks = procfs::ticks_per_second().max(1);
        Identity {
            pid: r.pid,
            tgid: r.tgid,
            uid: r.uid,
            user: None,
            gid: r.gid,
            group: None,
            comm: r.comm.clone(),
            cgroup_id: r.cgroup_id,
            start_time: r.start_boottime_ns / (1_000_000_000 / ticks),
            exe: None,
            exe_file: r.exe_file,
            exe_unvouched: r.exe_unvouched,
            exe_ctime: r.exe_ctime,
            exe_now: None,
            cmdline: None,
            cgroup: None,
            unit: None,
            procfs_error: why,
            exe_sha256: None,
        }
    }

    /// Reads the identity from procfs and the user database (and the executable's hash,
    /// with `hash`).
    fn read(r: &Redirected, hash: bool) -> Self {
        let mut id = Self::read_facts(r, hash);
        (id.user, id.group) = names(r.uid, r.gid);
        id
    }

    /// As `read`, without the user database.
    fn read_facts(r: &Redirected, hash: bool) -> Self {
        let mut id = Self::kernel_only(r, None);
        if let Err(e) = id.fill_from_procfs(hash) {
            id.procfs_error = Some(e.to_string());
        }
        // Exited, or exec'd since: named for the file it connected with, when known.
        if id.exe.is_none() && r.exe_unvouched.is_none() {
            id.exe = r.exe_file.and_then(known_path);
        }
        id
    }

    /// `hash`: and the executable's SHA-256, read through the same handle.
    fn fill_from_procfs(&mut self, hash: bool) -> Result<(), IdentityError> {
        let tgid = self.tgid;
        let err = |what: &'static str| {
            move |e: procfs::ProcError| match e {
                procfs::ProcError::NotFound(_) => IdentityError::Exited { tgid },
                other => IdentityError::Procfs {
                    tgid,
                    what,
                    message: other.to_string(),
                },
            }
        };
        // The handle holds /proc/TGID open: once the start time matches, every later read
        // through it is about this very process, or fails if it has gone.
        let proc = Process::new(tgid as i32).map_err(err("stat"))?;
        let check = |proc: &Process| -> Result<(), IdentityError> {
            let found = proc.stat().map_err(err("stat"))?.starttime;
            if found != self.start_time {
                return Err(IdentityError::PidReused {
                    tgid,
                    expected: self.start_time,
                    found,
                });
            }
            Ok(())
        };
        check(&proc)?;
        let exe = proc.exe().map_err(err("exe"))?;
        // Read as bytes: an argument or a cgroup name that is not UTF-8 (an agent chooses
        // both) failed the whole read, and every procfs fact went missing with it.
        let cmdline = cmdline_lossy(&proc_file(&proc, "cmdline").map_err(err("cmdline"))?);
        let cgroup = cgroup2_lossy(&proc_file(&proc, "cgroup").map_err(err("cgroup"))?);
        check(&proc)?;
        self.unit = cgroup.as_deref().and_then(unit_of);
        let now = ExeFile::of_path(std::path::Path::new(&format!("/proc/{tgid}/exe")));
        // The link was read before the file was looked at: an exec in between pairs one
        // program's path with another's file. A path is taken as a file's name only when
        // that file is at that path now.
        let names = |path: &std::path::Path, file: ExeFile| ExeFile::of_path(path) == Some(file);
        match (self.exe_file, now) {
            // A file the process chose names nothing, whatever path shows it.
            _ if self.exe_unvouched.is_some() => {}
            // Without a kernel identity (an older program), procfs is all there is.
            (None, _) => self.exe = Some(exe),
            (Some(at_connect), Some(now)) if at_connect == now => {
                // The link is the path in the process's own mount namespace, which an
                // agent can make for itself (a user namespace, a bind mount over
                // /opt/claude/bin): it names the program only if the daemon finds the very
                // file there too. Else a path the file was confirmed under, or none.
                if names(&exe, at_connect) {
                    remember(at_connect, &exe);
                    self.exe = Some(exe);
                } else {
                    self.exe = known_path(at_connect);
                }
            }
            (Some(_), Some(now)) => {
                // It exec'd: what it runs now, read again if the exec came between.
                self.exe_now = if names(&exe, now) {
                    Some(exe)
                } else {
                    proc.exe().ok().filter(|again| names(again, now))
                };
            }
            (Some(_), None) => self.exe_now = Some(exe),
        }
        self.cmdline = Some(cmdline);
        self.cgroup = cgroup;
        if hash && self.exe_now.is_none() && self.exe_unvouched.is_none() {
            match exe_hash::of(&proc, self.exe_file, self.exe_ctime) {
                // Hashed through the handle; the process still the one checked after.
                Ok(h) if check(&proc).is_ok() => self.exe_sha256 = Some(h),
                Ok(_) => tracing::info!(tgid, "exited while its executable was hashed"),
                Err(e) => tracing::info!(tgid, error = %e, "executable not hashed"),
            }
        }
        Ok(())
    }
}

/// The names of a user and a group, from the user database.
fn names(uid: u32, gid: u32) -> (Option<String>, Option<String>) {
    let user = User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name);
    let group = Group::from_gid(Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name);
    (user, group)
}

/// A file of the process `proc` holds open, read through that handle (so about that very
/// process); a process gone while it is read is `NotFound`, as procfs's own reads say.
fn proc_file(proc: &Process, name: &str) -> Result<Vec<u8>, procfs::ProcError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    proc.open_relative(name)?
        .read_to_end(&mut bytes)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) | Some(libc::ENOENT) => procfs::ProcError::NotFound(None),
            _ => procfs::ProcError::Io(e, None),
        })?;
    Ok(bytes)
}

/// `/proc/PID/cmdline`'s arguments (each ends in a NUL), bytes that are not UTF-8 as
/// U+FFFD. Empty arguments are kept, but not the run of NULs a process that rewrote its
/// command line (`setproctitle`) leaves at the end.
fn cmdline_lossy(raw: &[u8]) -> Vec<String> {
    let end = raw.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    let raw = &raw[..end];
    if raw.is_empty() {
        return Vec::new();
    }
    raw.split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The cgroup v2 path in `/proc/PID/cgroup` (the `0::PATH` line), bytes that are not UTF-8
/// as U+FFFD.
fn cgroup2_lossy(raw: &[u8]) -> Option<String> {
    raw.split(|b| *b == b'\n')
        .find_map(|line| line.strip_prefix(b"0::"))
        .map(|path| String::from_utf8_lossy(path).into_owned())
}

/// Paths executables were confirmed under (by device and inode), to name the file a process
/// connected with after it exec'd another or exited. Bounded: forgotten all at once when
/// full, which only costs names, never a decision.
static KNOWN: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<ExeFile, PathBuf>>> =
    std::sync::LazyLock::new(Default::default);
const KNOWN_MAX: usize = 4096;

fn remember(file: ExeFile, path: &std::path::Path) {
    let mut known = KNOWN.lock().unwrap_or_else(|p| p.into_inner());
    if known.len() >= KNOWN_MAX && !known.contains_key(&file) {
        known.clear();
    }
    known.insert(file, path.to_owned());
}

/// A path `file` was seen under, if it still is that file.
fn known_path(file: ExeFile) -> Option<PathBuf> {
    let path = KNOWN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&file)
        .cloned()?;
    (ExeFile::of_path(&path) == Some(file)).then_some(path)
}

/// The system manager's unit a cgroup path belongs to: its outermost `.service` or
/// `.scope`. Below one, the cgroups are no longer the system manager's to name: a user's
/// own manager (`user@1000.service/app.slice/claude.service`, which `systemd-run --user
/// --unit=claude` makes) or a service with `Delegate=` names them, and so the agent could.
/// systemd puts units only under slices (or at the root): a path that is not slices down to
/// its unit is no tree of systemd's (LXC's, a runtime's on cgroupfs, one delegated by
/// hand), and has no unit.
pub fn unit_of(cgroup: &str) -> Option<String> {
    cgroup
        .split('/')
        .filter(|part| !part.is_empty())
        .find(|part| !part.ends_with(".slice"))
        .filter(|part| part.ends_with(".service") || part.ends_with(".scope"))
        .map(str::to_string)
}

/// A kernel record for this test process, its start shifted by `ticks_off`.
#[cfg(test)]
pub(crate) fn own_record(ticks_off: u64) -> Redirected {
    let stat = Process::myself().unwrap().stat().unwrap();
    let ticks = procfs::ticks_per_second();
    Redirected {
        orig_dst: "127.0.0.1:1".parse().unwrap(),
        pid: std::process::id(),
        tgid: std::process::id(),
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        cgroup_id: 0,
        start_boottime_ns: (stat.starttime + ticks_off) * (1_000_000_000 / ticks),
        comm: "x".into(),
        exe_file: ExeFile::of_path(&std::env::current_exe().unwrap()),
        exe_unvouched: None,
        exe_ctime: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_and_cgroups_that_are_not_utf8_keep_the_rest() {
        assert_eq!(
            cmdline_lossy(b"agent\0--key=\xff\0\0last\0"),
            ["agent", "--key=\u{fffd}", "", "last"]
        );
        assert_eq!(cmdline_lossy(b"title\0\0\0\0"), ["title"]);
        assert_eq!(cmdline_lossy(b""), Vec::<String>::new());
        assert_eq!(cmdline_lossy(b"\0\0"), Vec::<String>::new());
        assert_eq!(
            cgroup2_lossy(b"1:name=systemd:/x\n0::/agents/a\xffb\n"),
            Some("/agents/a\u{fffd}b".to_string())
        );
        assert_eq!(cgroup2_lossy(b"0::/\n"), Some("/".to_string()));
        assert_eq!(cgroup2_lossy(b"1:cpu:/x\n"), None);
    }

    #[test]
    fn unit_is_the_system_managers_never_one_named_below_it() {
        assert_eq!(
            unit_of("/mcp-agents.slice/claude.service").as_deref(),
            Some("claude.service")
        );
        assert_eq!(
            unit_of("/user.slice/user-1000.slice/session-3.scope").as_deref(),
            Some("session-3.scope")
        );
        // A user's own manager names what is below it: `systemd-run --user --unit=claude`.
        assert_eq!(
            unit_of("/user.slice/user-1000.slice/user@1000.service/app.slice/claude.service")
                .as_deref(),
            Some("user@1000.service")
        );
        // As does a service that was delegated its subtree.
        assert_eq!(
            unit_of("/system.slice/runner.service/claude.service").as_deref(),
            Some("runner.service")
        );
        // Trees systemd did not make name no unit, however their parts end.
        assert_eq!(unit_of("/lxc.payload.c1/system.slice/claude.service"), None);
        assert_eq!(unit_of("/agents/alice/claude.service"), None);
        assert_eq!(unit_of("/mcp-agents.slice"), None);
        assert_eq!(unit_of("/"), None);
    }

    #[test]
    fn own_process_resolves_with_procfs_facts() {
        let id = Identity::resolve(&own_record(0), false);
        assert_eq!(id.procfs_error, None);
        assert_eq!(id.exe.unwrap(), std::env::current_exe().unwrap());
        assert_eq!(id.cmdline.unwrap(), std::env::args().collect::<Vec<_>>());
    }

    #[test]
    fn a_process_running_another_file_than_it_connected_with_is_not_named_for_it() {
        let mut r = own_record(0);
        r.exe_file = ExeFile::of_path(std::path::Path::new("/bin/sh"));
        let id = Identity::resolve(&r, false);
        assert_eq!(id.exe_now.unwrap(), std::env::current_exe().unwrap());
        assert_ne!(id.exe, Some(std::env::current_exe().unwrap()));
    }

    #[test]
    fn a_cached_identity_is_only_reused_for_what_the_kernel_attests_alike() {
        let first = Identity::resolve(&own_record(0), false);
        let mut again = own_record(0);
        again.comm = "renamed".into();
        again.pid += 1;
        let cached = Identity::resolve(&again, false);
        assert_eq!((cached.comm.as_str(), cached.pid), ("renamed", again.pid));
        assert_eq!((cached.exe, cached.cmdline), (first.exe, first.cmdline));
        // Another file at connect (an exec) is never answered from the cache.
        let mut exec = own_record(0);
        exec.exe_file = ExeFile::of_path(std::path::Path::new("/bin/sh"));
        assert!(Identity::resolve(&exec, false).exe_now.is_some());
        // Nor another start (pid reuse).
        assert!(Identity::resolve(&own_record(7), false)
            .procfs_error
            .is_some());
    }

    #[test]
    fn a_different_start_time_is_pid_reuse() {
        let id = Identity::resolve(&own_record(5), false);
        // No fact of the process now under that pid (the path may still name the file the
        // kernel saw at connect, when another test confirmed it before).
        assert_eq!((id.cmdline, id.cgroup, id.exe_now), (None, None, None));
        assert!(matches!(
            Identity::read(&own_record(5), false).procfs_error.as_deref(),
            Some(e) if e.contains("another process")
        ));
    }
}
