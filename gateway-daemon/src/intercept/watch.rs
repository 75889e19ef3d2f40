//! Keeps `gw_cgroups` in step with cgroupfs: inotify on the agent cgroups' ancestors wakes
//! a re-resolution as soon as a child is created or removed, and a timer re-resolves anyway
//! (an event queue that overflowed, a watch that could not be added).
//!
//! Until a new cgroup is resolved the programs treat it as an agent's; resolving it quickly
//! is what keeps a new non-agent cgroup below a watched one from being mediated for long.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;

use super::Interceptor;

const EVERY: Duration = Duration::from_secs(1);

/// The inotify instance, as tokio's reactor needs it.
struct Watches(Inotify);

impl AsRawFd for Watches {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

fn open() -> std::io::Result<AsyncFd<Watches>> {
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    // SAFETY: `Watches` owns the descriptor and keeps it open, always the same one, for as
    // long as the AsyncFd lives.
    unsafe { AsyncFd::register(Watches(inotify)) }.map_err(std::io::Error::from)
}

/// Runs until the task is aborted.
pub async fn run(interceptor: Arc<Interceptor>) {
    let inotify = match open() {
        Ok(fd) => Some(fd),
        Err(e) => {
            tracing::error!(error = %e, "inotify unavailable: new agent cgroups are resolved once a second (mediated until then)");
            None
        }
    };
    let mut every = tokio::time::interval(EVERY);
    loop {
        resync(&interceptor, inotify.as_ref().map(|fd| &fd.get_ref().0));
        tokio::select! {
            _ = every.tick() => {}
            ready = wait(inotify.as_ref()) => {
                if let Err(e) = ready {
                    tracing::warn!(error = %e, "reading cgroup events failed");
                }
            }
        }
    }
}

/// Waits for cgroupfs events and drains them (their content does not matter: any change
/// below a watched directory is a reason to resolve again).
async fn wait(inotify: Option<&AsyncFd<Watches>>) -> std::io::Result<()> {
    let Some(fd) = inotify else {
        return std::future::pending().await;
    };
    let mut guard = fd.readable().await?;
    loop {
        match fd.get_ref().0.read_events() {
            Ok(events) if !events.is_empty() => continue,
            Ok(_) | Err(nix::errno::Errno::EAGAIN) => break,
            Err(e) => return Err(e.into()),
        }
    }
    guard.clear_ready();
    Ok(())
}

fn resync(interceptor: &Interceptor, inotify: Option<&Inotify>) {
    match interceptor.resync_agent_cgroups() {
        Ok(r) => {
            for (cgroup, id) in r.changed {
                tracing::warn!(cgroup, id, "agent cgroup (re)created; mediating its new id");
            }
            let Some(inotify) = inotify else { return };
            // Adding a watch that exists is a no-op; a directory recreated gets a new one.
            let flags = AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_ONLYDIR;
            for dir in r.watched {
                if let Err(e) = inotify.add_watch(&dir, flags) {
                    tracing::debug!(dir = %dir.display(), error = %e, "cannot watch cgroup directory");
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "re-resolving agent cgroups failed"),
    }
}
