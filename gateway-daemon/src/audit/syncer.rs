//! The syncer: one thread that makes written records durable and keeps the ledger's
//! housekeeping off every call's path. A task that needs its record durable registers
//! after writing it; the syncer takes every registration waiting, runs one `fdatasync`
//! for all of them (group commit: calls that arrive while a sync runs share the next one)
//! and answers each. Once a second it writes a due checkpoint, the signed head, and
//! rotates the file when it is due.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::ledger::{Chain, HEAD_EVERY};
use crate::config::SyncPolicy;

/// How often the syncer looks at checkpoints, the head and rotation.
const TICK: Duration = Duration::from_secs(1);

/// The answer to a waiter: its record is durable, or why not.
pub type Synced = Result<(), Arc<str>>;

#[derive(Default)]
struct Queue {
    waiters: Vec<oneshot::Sender<Synced>>,
    rotate: bool,
    stop: bool,
}

/// The chain and the syncer's queue, shared by every sink.
pub struct Ledger {
    chain: Mutex<Chain>,
    queue: Mutex<Queue>,
    wake: Condvar,
    policy: SyncPolicy,
    batch_interval: Duration,
}

impl Ledger {
    pub fn new(chain: Chain) -> Self {
        let (policy, batch) = (chain.cfg.sync, chain.cfg.batch_interval_ms);
        Ledger {
            chain: Mutex::new(chain),
            queue: Mutex::default(),
            wake: Condvar::new(),
            policy,
            batch_interval: Duration::from_millis(batch),
        }
    }

    /// The chain, locked. A panic elsewhere while it was held leaves it as it was after
    /// the last whole write, which is a state the chain can go on from.
    pub fn chain(&self) -> MutexGuard<'_, Chain> {
        self.chain.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether records wait for a sync before they count as durable.
    pub fn syncs(&self) -> bool {
        self.policy != SyncPolicy::None
    }

    /// Asks for the records written so far to be made durable; the answer comes on the
    /// receiver. Call only after the record was written.
    pub fn request_sync(&self) -> oneshot::Receiver<Synced> {
        let (tx, rx) = oneshot::channel();
        self.queue().waiters.push(tx);
        self.wake.notify_one();
        rx
    }

    /// Asks for a rotation (the file reached its size).
    pub fn request_rotation(&self) {
        let mut q = self.queue();
        if !q.rotate {
            q.rotate = true;
            self.wake.notify_one();
        }
    }

    /// Asks the syncer to write a last checkpoint and head, sync and stop.
    pub fn request_stop(&self) {
        self.queue().stop = true;
        self.wake.notify_one();
    }

    /// The syncer thread's loop; returns after a stop was requested and done.
    pub fn run(&self) {
        let mut last_tick = Instant::now();
        let mut last_sync = Instant::now() - self.batch_interval;
        loop {
            let (waiters, rotate, stop) = self.next(&mut last_sync, last_tick);
            if !waiters.is_empty() {
                let file = self.chain().file.clone();
                let result = file.sync_data().map_err(|e| {
                    let why = format!("syncing {}: {e}", self.chain().cfg.path.display());
                    tracing::error!("audit sync failed: {why}");
                    Arc::<str>::from(why)
                });
                last_sync = Instant::now();
                for w in waiters {
                    let _ = w.send(result.clone());
                }
            }
            if stop || rotate || last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                self.housekeeping(stop);
            }
            if stop {
                return;
            }
        }
    }

    /// Waits for work: waiters to sync (with `batch`, no sooner than its interval after the
    /// last sync), a rotation, a stop, or the next tick.
    fn next(
        &self,
        last_sync: &mut Instant,
        last_tick: Instant,
    ) -> (Vec<oneshot::Sender<Synced>>, bool, bool) {
        let mut q = self.queue();
        loop {
            if q.stop || q.rotate {
                break;
            }
            let tick_in = TICK.saturating_sub(last_tick.elapsed());
            if !q.waiters.is_empty() {
                let batch_in = match self.policy {
                    SyncPolicy::Batch => self.batch_interval.saturating_sub(last_sync.elapsed()),
                    _ => Duration::ZERO,
                };
                if batch_in.is_zero() {
                    break;
                }
                q = self.wait(q, batch_in.min(tick_in));
                continue;
            }
            if tick_in.is_zero() {
                break;
            }
            q = self.wait(q, tick_in);
        }
        let rotate = std::mem::take(&mut q.rotate);
        (std::mem::take(&mut q.waiters), rotate, q.stop)
    }

    fn wait<'a>(&self, q: MutexGuard<'a, Queue>, at_most: Duration) -> MutexGuard<'a, Queue> {
        match self.wake.wait_timeout(q, at_most) {
            Ok((q, _)) => q,
            Err(p) => p.into_inner().0,
        }
    }

    /// A due checkpoint, rotation, and the signed head (naming only records as durable as
    /// the policy makes them); at a stop, a last checkpoint, a full sync and the head.
    fn housekeeping(&self, stop: bool) {
        let mut chain = self.chain();
        if let Err(e) = chain.checkpoint_if_due(stop) {
            tracing::error!(error = %e, "writing an audit checkpoint failed");
        }
        if chain.rotation_due() {
            if let Err(e) = chain.rotate() {
                tracing::error!(error = %e, "audit rotation failed");
            }
        }
        let head_due = stop || chain.head_written.elapsed() >= HEAD_EVERY;
        if !head_due {
            return;
        }
        if stop {
            chain.finish_journal();
        }
        let (file, at) = (chain.file.clone(), chain.position());
        drop(chain);
        let synced = if stop {
            file.sync_all()
        } else if self.syncs() {
            file.sync_data()
        } else {
            Ok(())
        };
        let written = synced.and_then(|()| self.chain().write_head_at(at));
        if let Err(e) = written {
            tracing::error!(error = %e, "writing the signed audit head failed");
        }
    }
}
