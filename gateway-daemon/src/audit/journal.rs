//! Each ledger record also goes to journald (when configured and present), as structured
//! fields, so host-level log shipping collects the audit without reading the file. A
//! thread of its own sends them: turning a line into fields and the send itself stay off
//! every call's path and out of the chain's lock.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use libsystemd::logging::{journal_send, Priority};

use super::journal_entry::Entry;

/// Where journald takes entries in its native protocol.
pub const SOCKET: &str = "/run/systemd/journal/socket";

static FAILED: AtomicBool = AtomicBool::new(false);

/// Lines waiting for the journal thread, at most.
const QUEUE: usize = 8192;

/// How long the journal thread lets lines gather after it has sent what was queued. Woken
/// for every line, it cost each call two futex wakes on the calls' own threads and two
/// context switches on the cores the calls share; journald hears of a record this much
/// later at most.
const GATHER: Duration = Duration::from_millis(5);

/// How long one entry may wait for journald to take it before it is given up.
const SEND_WITHIN: Duration = Duration::from_secs(1);

/// The journal thread, fed sealed lines.
pub struct Forwarder {
    queue: Arc<Queue>,
    thread: Option<std::thread::JoinHandle<()>>,
    dropped: AtomicU64,
}

/// The lines between the ledger and the journal thread.
#[derive(Default)]
struct Queue {
    state: Mutex<Waiting>,
    wake: Condvar,
}

#[derive(Default)]
struct Waiting {
    lines: Vec<Vec<u8>>,
    /// The journal thread waits for a line (and must be woken for one).
    idle: bool,
    closed: bool,
}

impl Queue {
    fn state(&self) -> MutexGuard<'_, Waiting> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lines queued since the last take, waiting for one when there are none; None once
    /// the queue is closed and empty.
    fn take(&self) -> Option<Vec<Vec<u8>>> {
        let mut st = self.state();
        while st.lines.is_empty() {
            if st.closed {
                return None;
            }
            st.idle = true;
            st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        Some(std::mem::take(&mut st.lines))
    }
}

impl Forwarder {
    pub fn start() -> std::io::Result<Self> {
        let queue = Arc::new(Queue::default());
        let lines = queue.clone();
        let thread = std::thread::Builder::new()
            .name("audit-journal".into())
            .spawn(move || {
                let mut journal = Journal::default();
                while let Some(batch) = lines.take() {
                    for line in &batch {
                        journal.send(line);
                    }
                    if !lines.state().closed {
                        std::thread::sleep(GATHER);
                    }
                }
            })?;
        Ok(Forwarder {
            queue,
            thread: Some(thread),
            dropped: AtomicU64::new(0),
        })
    }

    /// Queues a sealed line. journald behind by a whole queue loses lines rather than
    /// slowing calls down: the file, which has every one, is the record of truth.
    pub fn forward(&self, line: &[u8]) {
        // Copied before the lock is taken: the journal thread waits on it to take a batch.
        let line = line.to_vec();
        let mut st = self.queue.state();
        if st.closed {
            return;
        }
        if st.lines.len() >= QUEUE {
            drop(st);
            if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!("journald is behind: audit records are not all sent to it (the ledger file has them all)");
            }
            return;
        }
        st.lines.push(line);
        if std::mem::take(&mut st.idle) {
            self.queue.wake.notify_one();
        }
    }

    /// Sends what is queued and stops the thread.
    pub fn finish(&mut self) {
        self.queue.state().closed = true;
        self.queue.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(dropped, "audit records not sent to journald");
        }
    }
}

impl Drop for Forwarder {
    /// A forwarder dropped unfinished still lets its thread end, once it has sent what is
    /// queued (not waited for).
    fn drop(&mut self) {
        self.queue.state().closed = true;
        self.queue.wake.notify_one();
    }
}

/// The journal thread's connection to journald and the buffer its entries are made in.
#[derive(Default)]
struct Journal {
    /// Connected once, not named at every send: a send to a path looks the path up anew.
    socket: Option<UnixDatagram>,
    entry: Vec<u8>,
}

impl Journal {
    /// Sends one sealed record line. The file stays the record of truth: a journald failure
    /// is logged once and otherwise ignored.
    fn send(&mut self, line: &[u8]) {
        let Some(entry) = Entry::of(line) else {
            return;
        };
        self.entry.clear();
        entry.encode(&mut self.entry);
        let sent = match self.send_entry() {
            // Too large for a datagram: libsystemd passes it in a sealed memfd.
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                journal_send(Priority::Info, entry.message(), entry.fields().into_iter())
                    .map_err(|e| e.to_string())
            }
            r => r.map_err(|e| e.to_string()),
        };
        if let Err(e) = sent {
            if !FAILED.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "sending audit records to journald failed (further failures are not logged)");
            }
        }
    }

    /// Sends the entry on the connected socket, connecting (again, once) when there is
    /// none or journald has gone away since (it restarted: its socket is a new one).
    fn send_entry(&mut self) -> std::io::Result<()> {
        match connected(&mut self.socket)?.send(&self.entry) {
            Err(e) if gone(&e) => {
                self.socket = None;
                connected(&mut self.socket)?.send(&self.entry).map(drop)
            }
            sent => sent.map(drop),
        }
    }
}

/// The socket connected to journald, connected now when there is none.
fn connected(socket: &mut Option<UnixDatagram>) -> std::io::Result<&UnixDatagram> {
    let s = match socket.take() {
        Some(s) => s,
        None => {
            let s = UnixDatagram::unbound()?;
            s.connect(SOCKET)?;
            // A journald that takes nothing (stopped, wedged) costs an entry, not the
            // thread: the daemon's stop waits for this thread.
            s.set_write_timeout(Some(SEND_WITHIN))?;
            s
        }
    };
    Ok(socket.insert(s))
}

/// Whether a send failed because the socket it was connected to is no more.
fn gone(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNREFUSED | libc::ENOTCONN | libc::ENOENT | libc::EPIPE)
    )
}
