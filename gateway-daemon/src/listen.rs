//! The daemon's front door: accepts redirected connections, gives each the id its records
//! will carry, pairs it with its kernel record and identity, and hands it to `route`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tracing::Instrument;

use crate::audit::link::{self, ConnId};
use crate::audit::timestamp;
use crate::daemon::Daemon;
use crate::intercept::Redirected;
use crate::route::{self, addr_text::Shown};

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr}: {source} (is another mcp-gateway, or something else, using it? see listener.* in the config)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds a listener whose socket carries the daemon's mark: the programs refuse agents a
/// bind of the listener's port, and the daemon's own process may be in a cgroup they take
/// for an agent's until it is resolved (created again by systemd on a restart, below a
/// watched one). The mark, which needs CAP_NET_ADMIN, is what tells the daemon's socket.
pub async fn bind(addr: SocketAddr, mark: u32) -> Result<TcpListener, ListenError> {
    let err = |source| ListenError::Bind { addr, source };
    let sock = crate::intercept::mark::socket(addr, mark).map_err(err)?;
    // As std and tokio's own bind do: a restarted daemon rebinds despite TIME_WAIT.
    sock.set_reuseaddr(true).map_err(err)?;
    sock.bind(addr).map_err(err)?;
    sock.listen(1024).map_err(err)
}

/// Connections without a kernel record (someone dialed the listener directly), refused:
/// one record per interval, with how many it covers.
#[derive(Serialize)]
struct RefusedRecord {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    /// The refused connection's id and addresses (absent on a record that counts the rest
    /// of an interval's refusals).
    #[serde(skip_serializing_if = "Option::is_none")]
    connection: Option<ConnId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    listener: Option<SocketAddr>,
    reason: &'static str,
    refused: u64,
}

const STRAY: &str = "no interception record: not a redirected agent connection";

/// Connections without a kernel record. Any local user may dial the listener, and each was
/// a ledger record and a log line: as fast as it could connect, it wrote the ledger (and
/// could fill its disk, after which every call is refused for want of a record). Now the
/// first `RECORDED_PER_INTERVAL` of every `REPORT_EVERY` are recorded with their addresses
/// (`refused: 1`), and the rest counted into one record without addresses at the next
/// report (every `REPORT_EVERY`, and at a stop): every one counted once.
#[derive(Default)]
struct Strays {
    /// When the current interval began; none yet: at the next stray.
    window: Option<std::time::Instant>,
    /// Recorded one by one in the current interval.
    recorded: u32,
    /// Refused and not yet in any record.
    count: u64,
}

/// Enough for a person or a test poking at the listener to see each connection.
const RECORDED_PER_INTERVAL: u32 = 32;

impl Strays {
    /// Counts one; true: record it now, with its addresses, for itself alone.
    fn one(&mut self, now: std::time::Instant) -> bool {
        if self
            .window
            .is_none_or(|at| now.duration_since(at) >= crate::admit::REPORT_EVERY)
        {
            self.window = Some(now);
            self.recorded = 0;
        }
        if self.recorded < RECORDED_PER_INTERVAL {
            self.recorded += 1;
            return true;
        }
        self.count += 1;
        false
    }

    /// The refusals no record has counted yet.
    fn overdue(&mut self) -> Option<u64> {
        (self.count > 0).then(|| std::mem::take(&mut self.count))
    }
}

/// A connection refused for a connection limit: one record per user per interval, with
/// how many it covers.
#[derive(Serialize)]
struct LimitedRecord {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    /// The refused connection's id, peer and process (absent on a record that counts the
    /// rest of an interval's refusals, which had several).
    #[serde(skip_serializing_if = "Option::is_none")]
    connection: Option<ConnId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<SocketAddr>,
    uid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    tgid: Option<u32>,
    reason: String,
    refused: u64,
}

/// The front door: the shared state, and what only accepting needs.
#[derive(Clone)]
pub struct Server {
    pub daemon: Arc<Daemon>,
    /// Connection limits per user.
    pub admission: Arc<crate::admit::Admission>,
    /// The kernel's records of redirected connections.
    pub interceptor: Arc<crate::intercept::Interceptor>,
    /// The threads connections are served on.
    pub workers: Arc<crate::workers::Workers>,
}

/// A listener the acceptor takes connections from without registering them with its own
/// reactor: tokio's `accept` would add each to the acceptor's epoll and the hand-off to a
/// worker take it out again, two system calls a connection for nothing.
struct Door {
    fd: AsyncFd<std::net::TcpListener>,
    /// The address it is bound to: the local address of everything it accepts, unless
    /// it is a wildcard.
    addr: SocketAddr,
}

impl Door {
    fn new(listener: std::net::TcpListener) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        // SAFETY: the listener owns its descriptor, and the `Door` owns the listener and
        // never closes or replaces it: it stays the same open socket while registered.
        let fd = unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Door { fd, addr })
    }

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<Accepted>> {
        loop {
            let mut ready = std::task::ready!(self.fd.poll_read_ready(cx))?;
            // `try_io` forgets the readiness when accept would block, so the next poll
            // waits for the reactor again.
            if let Ok(r) = ready.try_io(|l| accept(l.get_ref())) {
                return Poll::Ready(r);
            }
        }
    }

    /// The local address of a connection it accepted: only a wildcard listener needs the
    /// system call to know it (sk_lookup steers to it exactly its own address).
    fn local_of(&self, stream: &std::net::TcpStream) -> std::io::Result<SocketAddr> {
        if self.addr.ip().is_unspecified() {
            stream.local_addr()
        } else {
            Ok(self.addr)
        }
    }
}

/// An accepted connection, non-blocking and close-on-exec from `accept4` itself.
type Accepted = (std::net::TcpStream, SocketAddr);

fn accept(l: &std::net::TcpListener) -> std::io::Result<Accepted> {
    let (sock, peer) =
        socket2::SockRef::from(l).accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)?;
    let peer = peer
        .as_socket()
        .ok_or_else(|| std::io::Error::other("accepted a peer without an IP address"))?;
    Ok((sock.into(), peer))
}

/// The flows being served, counted as they end without waking the acceptor: only a
/// draining stop waits for the count to reach zero.
#[derive(Default)]
struct OpenFlows {
    open: AtomicUsize,
    draining: AtomicBool,
    idle: Notify,
}

/// Held by a flow's task: its end (or its task dropped at the stop) counts it out.
struct FlowOpen(Arc<OpenFlows>);

impl OpenFlows {
    fn enter(self: &Arc<Self>) -> FlowOpen {
        self.open.fetch_add(1, Ordering::SeqCst);
        FlowOpen(self.clone())
    }

    async fn drained(&self) {
        self.draining.store(true, Ordering::SeqCst);
        // A flow that ends between the load and the wait leaves a permit: no wake is lost.
        while self.open.load(Ordering::SeqCst) > 0 {
            self.idle.notified().await;
        }
    }
}

impl Drop for FlowOpen {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::SeqCst) == 1 && self.0.draining.load(Ordering::SeqCst)
        {
            self.0.idle.notify_one();
        }
    }
}

impl Server {
    /// Accepts on both listeners until `stop` resolves, then gives open flows `grace` to
    /// end; on a thread of its own (`acceptor`), whose single-threaded runtime nothing else
    /// uses. Each connection goes straight to its worker.
    ///
    /// Not a task of the daemon's multi-threaded runtime: there, tokio woke a second,
    /// idle thread of that runtime at every accept, and a handle on each connection's task
    /// woke the runtime again as each one ended. A new connection now wakes this thread
    /// and its worker, and its end wakes no one. A connection's work is never done here, so
    /// no connection's traffic can keep others waiting to be accepted.
    pub fn serve_on_own_thread(
        self,
        listeners: Vec<TcpListener>,
        stop: tokio::sync::oneshot::Receiver<()>,
        grace: Duration,
    ) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
        let listeners = listeners
            .into_iter()
            .map(|l| l.into_std())
            .collect::<std::io::Result<Vec<_>>>()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (done, finished) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("acceptor".into())
            .spawn(move || {
                rt.block_on(async move {
                    let doors = match listeners.into_iter().map(Door::new).collect() {
                        Ok(d) => d,
                        Err(e) => {
                            tracing::error!(error = %e, "the listeners could not be watched");
                            return;
                        }
                    };
                    self.serve(doors, async { drop(stop.await) }, grace).await;
                    // What it shares (the interceptor) must be let go of before the daemon
                    // is told: it takes the interceptor back to detach it.
                    drop(self);
                    let _ = done.send(());
                });
            })?;
        Ok(finished)
    }

    async fn serve(
        &self,
        listeners: Vec<Door>,
        stop: impl std::future::Future<Output = ()>,
        grace: Duration,
    ) {
        let flows = Arc::new(OpenFlows::default());
        let mut strays = Strays::default();
        tokio::pin!(stop);
        let mut overdue = tokio::time::interval(crate::admit::REPORT_EVERY);
        // Which listener is asked first, in turn: one busy family cannot starve the other.
        let mut first = 0;
        // Until when a listener whose accept failed (EMFILE and friends) is left alone:
        // backing off instead of spinning, without pausing the other or this loop.
        let mut resting: Vec<Option<tokio::time::Instant>> = vec![None; listeners.len()];
        loop {
            let now = tokio::time::Instant::now();
            for r in resting.iter_mut() {
                if r.is_some_and(|until| until <= now) {
                    *r = None;
                }
            }
            let rested = resting.iter().flatten().min().copied();
            let accept = std::future::poll_fn(|cx| {
                first = (first + 1) % listeners.len().max(1);
                let order = (0..listeners.len())
                    .cycle()
                    .skip(first)
                    .take(listeners.len());
                for i in order {
                    if resting[i].is_some() {
                        continue;
                    }
                    if let Poll::Ready(r) = listeners[i].poll_accept(cx) {
                        return Poll::Ready((i, r));
                    }
                }
                Poll::Pending
            });
            tokio::select! {
                _ = &mut stop => break,
                (i, accepted) = accept => match accepted {
                    Ok((stream, peer)) => {
                        let local = listeners[i].local_of(&stream);
                        self.accepted(stream, peer, local, &flows, &mut strays).await
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        resting[i] = Some(now + Duration::from_millis(50));
                    }
                },
                _ = tokio::time::sleep_until(rested.unwrap_or(now)), if rested.is_some() => {}
                _ = overdue.tick() => self.report_overdue(&mut strays, false).await,
            }
        }
        // Closed: the kernel refuses (sk_lookup finds no listener) rather than queueing.
        drop(listeners);
        self.report_overdue(&mut strays, true).await;
        let open = flows.open.load(Ordering::SeqCst);
        if open > 0 {
            tracing::info!(open, "waiting for open flows to end");
            if tokio::time::timeout(grace, flows.drained()).await.is_err() {
                // They go with their workers, which the caller stops next.
                tracing::warn!(
                    open = flows.open.load(Ordering::SeqCst),
                    "closing flows still open after the grace period"
                );
            }
        }
    }

    /// Audits refusals no record has counted yet (see `Admission::overdue`, `Strays`).
    async fn report_overdue(&self, strays: &mut Strays, all: bool) {
        if let Some(refused) = strays.overdue() {
            tracing::warn!(refused, "connections without an interception record closed");
            self.daemon
                .audit
                .record(&RefusedRecord {
                    kind: "refused",
                    time: timestamp(SystemTime::now()),
                    connection: None,
                    client: None,
                    listener: None,
                    reason: STRAY,
                    refused,
                })
                .await;
        }
        for o in self.admission.overdue(all) {
            tracing::warn!(uid = o.uid, refused = o.refused, reason = %o.reason, "connections refused");
            self.daemon
                .audit
                .record(&LimitedRecord {
                    kind: "connection_limited",
                    time: timestamp(SystemTime::now()),
                    connection: None,
                    client: None,
                    uid: o.uid,
                    tgid: None,
                    reason: o.reason.to_string(),
                    refused: o.refused,
                })
                .await;
        }
    }

    async fn accepted(
        &self,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        local: std::io::Result<SocketAddr>,
        flows: &Arc<OpenFlows>,
        strays: &mut Strays,
    ) {
        let local = match local {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "accepted socket without a local address");
                return;
            }
        };
        let Some(record) = self.interceptor.take(peer, local) else {
            // Someone dialed the listener directly: there is no kernel record to say who.
            // Nothing more is spent on it than the count, unless it is recorded.
            if !strays.one(std::time::Instant::now()) {
                return;
            }
            let conn = link::next_id();
            tracing::warn!(client = %peer, listener = %local, "connection without an interception record closed");
            self.daemon
                .audit
                .record(&RefusedRecord {
                    kind: "refused",
                    time: timestamp(SystemTime::now()),
                    connection: Some(conn),
                    client: Some(peer),
                    listener: Some(local),
                    reason: STRAY,
                    refused: 1,
                })
                .await;
            return;
        };
        // Responses leave in several small writes (headers, SSE events); with Nagle the
        // last one waits for the agent's delayed ACK, ~40 ms a call.
        let _ = stream.set_nodelay(true);
        let conn = link::next_id();
        let redirected = Redirected::from_record(&record);
        let permit = match self.admission.admit(redirected.uid) {
            Ok(p) => p,
            Err((why, report)) => {
                // Reset, as a refused connect would be: the agent sees a failure at once.
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                drop(stream);
                if let Some(refused) = report {
                    tracing::warn!(uid = redirected.uid, refused, reason = %why, "connections refused");
                    self.daemon
                        .audit
                        .record(&LimitedRecord {
                            kind: "connection_limited",
                            time: timestamp(SystemTime::now()),
                            connection: Some(conn),
                            client: Some(peer),
                            uid: redirected.uid,
                            tgid: Some(redirected.tgid),
                            reason: why.to_string(),
                            refused,
                        })
                        .await;
                }
                return;
            }
        };
        let span = tracing::info_span!(
            "conn",
            id = %conn,
            client = %Shown(peer),
            tgid = redirected.tgid,
            uid = redirected.uid,
            dst = %Shown(redirected.orig_dst),
        );
        let daemon = self.daemon.clone();
        let open = flows.enter();
        // The connection joins its worker's own reactor there: its readiness then wakes
        // that thread and no other.
        self.workers.spawn(
            async move {
                let _open = open;
                let _permit = permit;
                let stream = match TcpStream::from_std(stream) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "a worker could not take the connection");
                        return;
                    }
                };
                route::flow(stream, peer, redirected, conn, daemon).await
            }
            .instrument(span),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admit::REPORT_EVERY;

    #[test]
    fn strays_past_the_first_of_an_interval_are_counted_and_every_one_once() {
        let t0 = std::time::Instant::now();
        let mut s = Strays::default();
        assert_eq!(s.overdue(), None, "nothing to count");
        for i in 0..RECORDED_PER_INTERVAL {
            assert!(
                s.one(t0 + Duration::from_millis(i.into())),
                "recorded one by one"
            );
        }
        for _ in 0..100 {
            assert!(!s.one(t0 + Duration::from_secs(1)));
        }
        assert_eq!(s.overdue(), Some(100));
        assert_eq!(s.overdue(), None, "counted once");
        assert!(!s.one(t0 + Duration::from_secs(2)));
        assert!(s.one(t0 + REPORT_EVERY), "a new interval");
        assert_eq!(s.overdue(), Some(1), "the one before it");
    }
}
