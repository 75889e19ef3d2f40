//! Listings the gateway takes itself when a server says a list changed
//! (`notifications/tools/list_changed` and the like): until one is done, calls to that
//! server wait, so a definition changed between two calls is held before the second, not
//! after the agent's next listing. A re-listing that fails leaves the kind unknown: its
//! calls are refused until a listing gets through.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::Kind;

/// How long a call waits for a re-listing in flight before it is decided without it.
pub const WAIT: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Relists {
    /// Re-listings in flight, all servers (calls skip the lock while it is 0).
    total: AtomicUsize,
    state: Mutex<State>,
    done: Notify,
    /// The gateway's own listing requests whose answers come on a stream it reads for the
    /// agent (legacy SSE, stdio), by request id.
    awaiting: Mutex<HashMap<(String, String), tokio::sync::oneshot::Sender<serde_json::Value>>>,
}

#[derive(Default)]
struct State {
    in_flight: HashMap<String, usize>,
    /// Kinds being re-listed, and whether another notification came meanwhile (one more
    /// listing then, however many came: a server cannot make the gateway list without end).
    listing: HashMap<(String, Kind), bool>,
    /// Kinds whose re-listing failed, for the user whose session it was made on, and why
    /// (another user's calls go on: one agent's failing session must not block others).
    unknown: HashMap<(String, Kind, u32), String>,
}

/// One re-listing in flight; ends when dropped.
pub struct Relisting {
    relists: Arc<super::Pins>,
    server: String,
}

impl Relists {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why calls of `kind` on `server` by user `uid` cannot be decided, when a re-listing
    /// made on that user's session failed.
    pub fn unknown(&self, server: &str, kind: Kind, uid: u32) -> Option<String> {
        let st = self.lock();
        if st.unknown.is_empty() {
            return None;
        }
        st.unknown.get(&(server.to_string(), kind, uid)).cloned()
    }

    pub(super) fn listed(&self, server: &str, kind: Kind) {
        let mut st = self.lock();
        if !st.unknown.is_empty() {
            st.unknown
                .retain(|(s, k, _), _| !(s == server && *k == kind));
        }
    }

    /// Whether a listing of `kind` should start now: false when one is under way (it
    /// lists once more when done).
    pub fn start(&self, server: &str, kind: Kind) -> bool {
        let mut st = self.lock();
        match st.listing.get_mut(&(server.to_string(), kind)) {
            Some(again) => {
                *again = true;
                false
            }
            None => {
                st.listing.insert((server.to_string(), kind), false);
                true
            }
        }
    }

    /// Ends a listing of `kind`; true when a notification came meanwhile and it must list
    /// again.
    pub fn again(&self, server: &str, kind: Kind) -> bool {
        let mut st = self.lock();
        let key = (server.to_string(), kind);
        match st.listing.get_mut(&key) {
            Some(again) if *again => {
                *again = false;
                true
            }
            _ => {
                st.listing.remove(&key);
                false
            }
        }
    }

    pub fn failed(&self, server: &str, kind: Kind, uid: u32, why: String) {
        self.lock()
            .unknown
            .insert((server.to_string(), kind, uid), why);
    }

    /// Waits (up to `WAIT`) until no re-listing of `server` is in flight.
    pub async fn settled(&self, server: &str) {
        if self.total.load(Ordering::Acquire) == 0 {
            return;
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let done = self.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.lock().in_flight.get(server).copied().unwrap_or(0) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                tracing::warn!(
                    server,
                    "a call went on before the server's re-listing ended"
                );
                return;
            }
        }
    }
}

impl Relists {
    /// Registers `id` (a request of the gateway's own to `server`) for its answer.
    pub fn expect(
        &self,
        server: &str,
        id: &str,
    ) -> tokio::sync::oneshot::Receiver<serde_json::Value> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.awaiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((server.to_string(), id.to_string()), tx);
        rx
    }

    pub fn forget(&self, server: &str, id: &str) {
        self.awaiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(server.to_string(), id.to_string()));
    }

    /// Takes `answer` when it answers one of the gateway's own requests to `server` (it
    /// then goes no further: the agent never asked it). Only that server's messages can.
    pub fn answered(
        &self,
        server: &str,
        id: &str,
        answer: impl FnOnce() -> serde_json::Value,
    ) -> bool {
        let waiting = self
            .awaiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(server.to_string(), id.to_string()));
        match waiting {
            Some(tx) => {
                let _ = tx.send(answer());
                true
            }
            None => false,
        }
    }
}

impl super::Pins {
    /// Marks a re-listing of `server` in flight until the returned guard drops.
    pub fn relisting(self: &Arc<Self>, server: &str) -> Relisting {
        *self
            .relists
            .lock()
            .in_flight
            .entry(server.to_string())
            .or_default() += 1;
        self.relists.total.fetch_add(1, Ordering::AcqRel);
        Relisting {
            relists: self.clone(),
            server: server.to_string(),
        }
    }
}

impl Drop for Relisting {
    fn drop(&mut self) {
        let r = &self.relists.relists;
        {
            let mut st = r.lock();
            if let Some(n) = st.in_flight.get_mut(&self.server) {
                *n -= 1;
                if *n == 0 {
                    st.in_flight.remove(&self.server);
                }
            }
        }
        r.total.fetch_sub(1, Ordering::AcqRel);
        r.done.notify_waiters();
    }
}
