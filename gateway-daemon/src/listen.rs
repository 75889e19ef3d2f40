//! The daemon's front door: accepts redirected connections, pairs each with its kernel
//! record and identity, and hands it to the stage that serves it (for now the byte pipe).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::audit::{timestamp, AuditSink};
use crate::config::Config;
use crate::http::counting::Counting;
use crate::http::detect::{detect, Detected};
use crate::http::{self as gwhttp, Protocol};
use crate::identity::Identity;
use crate::intercept::{Interceptor, Redirected};
use crate::mcp::{ConnCtx, Principal, Sessions};
use crate::passthrough;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr}: {source} (is another mcp-gateway, or something else, using it? see listener.* in the config)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError::Bind { addr, source })
}

/// What a flow's audit record says.
#[derive(Serialize)]
struct FlowRecord<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    start: String,
    duration_ms: f64,
    identity: &'a Identity,
    orig_dst: SocketAddr,
    upstream: SocketAddr,
    client: SocketAddr,
    /// What the connection carried: http1, http2, tls, tcp.
    protocol: &'static str,
    bytes_to_upstream: u64,
    bytes_to_agent: u64,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct RefusedRecord {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    client: SocketAddr,
    listener: SocketAddr,
    reason: &'static str,
}

pub struct Server {
    pub interceptor: Arc<Interceptor>,
    pub audit: AuditSink,
    pub config: Arc<Config>,
    pub sessions: Arc<Sessions>,
}

impl Server {
    /// Accepts on both listeners until `stop` resolves, then gives open flows `grace` to end.
    pub async fn serve(
        &self,
        listeners: Vec<TcpListener>,
        stop: impl std::future::Future<Output = ()>,
        grace: Duration,
    ) {
        let mut flows = JoinSet::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(TcpStream, SocketAddr)>(1024);
        let mut acceptors = JoinSet::new();
        for l in listeners {
            let tx = tx.clone();
            acceptors.spawn(async move {
                loop {
                    match l.accept().await {
                        Ok(c) => {
                            if tx.send(c).await.is_err() {
                                return;
                            }
                        }
                        // EMFILE and friends: back off instead of spinning; the listener stays.
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            });
        }
        drop(tx);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                Some((stream, peer)) = rx.recv() => self.accepted(stream, peer, &mut flows).await,
                Some(_) = flows.join_next(), if !flows.is_empty() => {}
            }
        }
        acceptors.abort_all();
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

    async fn accepted(&self, stream: TcpStream, peer: SocketAddr, flows: &mut JoinSet<()>) {
        let local = match stream.local_addr() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "accepted socket without a local address");
                return;
            }
        };
        let Some(record) = self.interceptor.take(peer, local) else {
            // Someone dialed the listener directly: there is no kernel record to say who.
            tracing::warn!(client = %peer, listener = %local, "connection without an interception record closed");
            self.audit
                .record(&RefusedRecord {
                    kind: "refused",
                    time: timestamp(SystemTime::now()),
                    client: peer,
                    listener: local,
                    reason: "no interception record: not a redirected agent connection",
                })
                .await;
            return;
        };
        let redirected = Redirected::from_record(&record);
        let span = tracing::info_span!(
            "conn",
            client = %peer,
            tgid = redirected.tgid,
            uid = redirected.uid,
            dst = %redirected.orig_dst,
        );
        let shared = Shared {
            audit: self.audit.clone(),
            config: self.config.clone(),
            sessions: self.sessions.clone(),
        };
        flows.spawn(flow(stream, peer, redirected, shared).instrument(span));
    }
}

/// What every flow task needs from the daemon.
struct Shared {
    audit: AuditSink,
    config: Arc<Config>,
    sessions: Arc<Sessions>,
}

async fn flow(agent: TcpStream, client: SocketAddr, r: Redirected, shared: Shared) {
    let started = SystemTime::now();
    let t0 = std::time::Instant::now();
    let identity = Identity::resolve(&r);
    let upstream = r.upstream_addr();
    tracing::debug!(exe = ?identity.exe, "flow start");
    let (transfer, protocol, outcome) =
        match passthrough::connect(upstream, shared.config.intercept.mark).await {
            Ok(up) => carry(agent, up, &identity, upstream, &shared).await,
            Err(e) => {
                tracing::warn!(error = %e, "upstream unreachable; resetting the agent connection");
                // An abortive close shows the agent a reset, as a direct connect would have.
                let _ = agent.set_zero_linger();
                drop(agent);
                let t = passthrough::Transfer {
                    error: Some(e.to_string()),
                    ..Default::default()
                };
                (t, "tcp", "upstream_connect_failed")
            }
        };
    tracing::debug!(
        up = transfer.to_upstream,
        down = transfer.to_agent,
        outcome,
        "flow end"
    );
    shared
        .audit
        .record(&FlowRecord {
            kind: "flow",
            time: timestamp(SystemTime::now()),
            start: timestamp(started),
            duration_ms: t0.elapsed().as_secs_f64() * 1e3,
            identity: &identity,
            orig_dst: r.orig_dst,
            upstream,
            client,
            protocol,
            bytes_to_upstream: transfer.to_upstream,
            bytes_to_agent: transfer.to_agent,
            outcome,
            error: transfer.error,
        })
        .await;
}

/// Carries a connected flow: HTTP through the MCP-aware proxy, anything else as bytes
/// (or refused when agents may speak MCP only).
async fn carry(
    agent: TcpStream,
    up: TcpStream,
    identity: &Identity,
    upstream: SocketAddr,
    shared: &Shared,
) -> (passthrough::Transfer, &'static str, &'static str) {
    let detected = detect(&agent, &up).await;
    let protocol = match detected {
        Detected::Http1 => Protocol::Http1,
        Detected::Http2 => Protocol::Http2,
        other => {
            let label = if other == Detected::Tls { "tls" } else { "tcp" };
            if shared.config.http.mcp_only {
                tracing::info!(
                    protocol = label,
                    "non-HTTP connection refused (http.mcp_only)"
                );
                let _ = agent.set_zero_linger();
                return (passthrough::Transfer::default(), label, "refused_not_mcp");
            }
            let t = passthrough::relay(agent, up).await;
            let outcome = if t.error.is_some() { "error" } else { "closed" };
            return (t, label, outcome);
        }
    };
    let ctx = Arc::new(ConnCtx {
        principal: Arc::new(Principal::of(identity)),
        upstream_addr: upstream,
        audit: shared.audit.clone(),
        sessions: shared.sessions.clone(),
        config: shared.config.clone(),
    });
    let (agent, agent_bytes) = Counting::new(agent);
    let result = gwhttp::serve(agent, up, protocol, ctx).await;
    let outcome = result.as_ref().map_or_else(|e| e.outcome(), |_| "closed");
    let t = passthrough::Transfer {
        to_upstream: agent_bytes.read.load(std::sync::atomic::Ordering::Relaxed),
        to_agent: agent_bytes
            .written
            .load(std::sync::atomic::Ordering::Relaxed),
        error: result.err().map(|e| e.to_string()),
    };
    let label = if protocol == Protocol::Http1 {
        "http1"
    } else {
        "http2"
    };
    (t, label, outcome)
}
