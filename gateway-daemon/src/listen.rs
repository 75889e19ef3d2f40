//! The daemon's front door: accepts redirected connections, gives each the id its records
//! will carry, pairs it with its kernel record and identity, and hands it to `route`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
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

#[derive(Serialize)]
struct RefusedRecord {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    connection: ConnId,
    client: SocketAddr,
    listener: SocketAddr,
    reason: &'static str,
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

impl Server {
    /// Accepts on both listeners until `stop` resolves, then gives open flows `grace` to end.
    ///
    /// One task accepts on every listener and hands each connection straight to its worker:
    /// run it as a task of the multi-threaded runtime (not under `block_on`), so that the
    /// thread whose reactor saw the connection is the one that accepts it. A new
    /// connection then wakes one thread besides its worker.
    pub async fn serve(
        &self,
        listeners: Vec<TcpListener>,
        stop: impl std::future::Future<Output = ()>,
        grace: Duration,
    ) {
        let mut flows = JoinSet::new();
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
                    Ok((stream, peer)) => self.accepted(stream, peer, &mut flows).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        resting[i] = Some(now + Duration::from_millis(50));
                    }
                },
                _ = tokio::time::sleep_until(rested.unwrap_or(now)), if rested.is_some() => {}
                Some(_) = flows.join_next(), if !flows.is_empty() => {}
                _ = overdue.tick() => self.report_overdue(false).await,
            }
        }
        // Closed: the kernel refuses (sk_lookup finds no listener) rather than queueing.
        drop(listeners);
        self.report_overdue(true).await;
        if !flows.is_empty() {
            tracing::info!(open = flows.len(), "waiting for open flows to end");
            let drain = async { while flows.join_next().await.is_some() {} };
            if tokio::time::timeout(grace, drain).await.is_err() {
                tracing::warn!(
                    open = flows.len(),
                    "closing flows still open after the grace period"
                );
                flows.shutdown().await;
            }
        }
    }

    /// Audits refusals no record has counted yet (see `Admission::overdue`).
    async fn report_overdue(&self, all: bool) {
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

    async fn accepted(&self, stream: TcpStream, peer: SocketAddr, flows: &mut JoinSet<()>) {
        // Responses leave in several small writes (headers, SSE events); with Nagle the
        // last one waits for the agent's delayed ACK, ~40 ms a call.
        let _ = stream.set_nodelay(true);
        let local = match stream.local_addr() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "accepted socket without a local address");
                return;
            }
        };
        let conn = link::next_id();
        let Some(record) = self.interceptor.take(peer, local) else {
            // Someone dialed the listener directly: there is no kernel record to say who.
            tracing::warn!(client = %peer, listener = %local, "connection without an interception record closed");
            self.daemon
                .audit
                .record(&RefusedRecord {
                    kind: "refused",
                    time: timestamp(SystemTime::now()),
                    connection: conn,
                    client: peer,
                    listener: local,
                    reason: "no interception record: not a redirected agent connection",
                })
                .await;
            return;
        };
        let redirected = Redirected::from_record(&record);
        let permit = match self.admission.admit(redirected.uid) {
            Ok(p) => p,
            Err((why, report)) => {
                // Reset, as a refused connect would be: the agent sees a failure at once.
                let _ = stream.set_zero_linger();
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
        // The connection moves to its worker's own reactor: its readiness then wakes that
        // thread and no other.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(client = %peer, error = %e, "accepted socket could not be handed to a worker");
                return;
            }
        };
        self.workers.spawn(
            flows,
            async move {
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
