//! The threads agent connections are served on: each runs a single-threaded runtime of its
//! own, and a connection stays on the one it was given for its whole life. A call then
//! crosses no thread: the agent's socket, the upstream's and every task of the connection
//! are polled by one thread, woken by that thread's own epoll, with no work stealing (which
//! moved a connection's task between threads on every call, each move a futex wake).
//! Connections are dealt out in turn by the acceptor thread (`listen`); the admin socket and
//! the timers stay on the daemon's main runtime.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
pub enum WorkersError {
    #[error("starting connection worker {index}: {source}")]
    Start {
        index: usize,
        source: std::io::Error,
    },
}

pub struct Workers {
    handles: Vec<Handle>,
    /// Taken at the stop.
    running: std::sync::Mutex<Running>,
    next: AtomicUsize,
}

#[derive(Default)]
struct Running {
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// How many workers `count` asks for: 0 is one per two cores the daemon may run on
/// (rounded up), see `default_for`.
pub fn resolve(count: usize) -> usize {
    if count > 0 {
        return count;
    }
    default_for(std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The default worker count on `cores` cores: half of them, rounded up. The daemon shares
/// the host with the agents and their servers, and every thread that sleeps and wakes on
/// its own costs a call context switches: on 2 cores one worker against two spent about a
/// fifth less daemon CPU a call at 16 connections and the server behind it a sixth less
/// (its requests come bunched), for a fifth more calls/s of the plain gateway; with full
/// policy or `sync = "always"` the calls/s did not clearly differ (docs/design.md 7.1).
pub fn default_for(cores: usize) -> usize {
    cores.div_ceil(2).max(1)
}

/// Keeps a timer due within a second on the worker, always. Tokio's timer wakes its own
/// reactor (an eventfd write, then one more `epoll_wait`) whenever a new timer is due
/// before every other, even from the reactor's own thread. With none pending, each new
/// one is, and hyper sets one for the header timeout of every request on a kept-alive
/// connection: two system calls a call. Behind this one, no timer a second or more away
/// wakes anything; the cost is one wake a second per worker.
async fn keep_a_timer() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// How long a stop waits for a worker's blocking threads (identity reads) to end.
const BLOCKING_AT_STOP: std::time::Duration = std::time::Duration::from_secs(1);

impl Workers {
    /// Starts `count` workers (see `resolve`).
    pub fn start(count: usize) -> Result<Self, WorkersError> {
        let count = resolve(count);
        let mut handles = Vec::with_capacity(count);
        let mut running = Running::default();
        for index in 0..count {
            let err = |source| WorkersError::Start { index, source };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(err)?;
            let (stop, stopped) = oneshot::channel::<()>();
            handles.push(rt.handle().clone());
            running.stops.push(stop);
            let thread = std::thread::Builder::new()
                .name(format!("conn-worker-{index}"))
                .spawn(move || {
                    // Tasks still open at the stop are dropped with the runtime.
                    rt.block_on(async {
                        tokio::select! {
                            _ = stopped => {}
                            _ = keep_a_timer() => {}
                        }
                    });
                    // Dropping a runtime waits for its blocking threads, and an identity
                    // read may hang on a file the agent serves for as long as it likes.
                    rt.shutdown_timeout(BLOCKING_AT_STOP);
                })
                .map_err(err)?;
            running.threads.push(thread);
        }
        Ok(Workers {
            handles,
            running: std::sync::Mutex::new(running),
            next: AtomicUsize::new(0),
        })
    }

    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// Runs `task` on the next worker in turn. Nothing waits on its end: a handle that
    /// did would be woken from the worker's thread as each connection closes, one more
    /// thread woken per connection (`listen` counts open flows instead). What is still
    /// running at the stop is dropped with its worker.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        // Tokio moves a task's future by value when it makes the task and again when it
        // ends it (a stage change copies the whole stage): boxed, those moves copy a
        // pointer, and the future is copied once, here. A connection's future was 15 KiB
        // until its TLS path was boxed (`route::carry`), a few KiB now.
        drop(self.handles[i].spawn(Box::pin(task)));
    }

    /// Stops every worker and waits for its thread. Every task still on one is dropped
    /// with its runtime, and what it held (the daemon's state) with it. Blocks: call it
    /// from a blocking context.
    pub fn stop(&self) {
        let running = std::mem::take(&mut *self.running.lock().unwrap_or_else(|p| p.into_inner()));
        drop(running.stops);
        for t in running.threads {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_a_worker_per_two_cores_rounded_up() {
        let counts: Vec<usize> = [1, 2, 3, 4, 16].into_iter().map(default_for).collect();
        assert_eq!(counts, [1, 1, 2, 2, 8]);
        assert_eq!(resolve(3), 3, "a count set is kept");
    }

    #[tokio::test]
    async fn a_task_stays_on_its_worker_thread_and_workers_take_turns() {
        let w = Workers::start(2).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..4 {
            let tx = tx.clone();
            w.spawn(async move {
                let mut names = Vec::new();
                for _ in 0..20 {
                    names.push(std::thread::current().name().unwrap().to_string());
                    tokio::task::yield_now().await;
                }
                let _ = tx.send(names);
            });
        }
        drop(tx);
        let mut threads = Vec::new();
        while let Some(names) = rx.recv().await {
            assert!(names.iter().all(|n| n == &names[0]), "{names:?}");
            threads.push(names[0].clone());
        }
        threads.sort();
        assert_eq!(
            threads,
            [
                "conn-worker-0",
                "conn-worker-0",
                "conn-worker-1",
                "conn-worker-1"
            ]
        );
        w.stop();
    }
}
