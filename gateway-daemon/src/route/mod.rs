//! The path of an accepted, identified connection: dial the original destination, look
//! at the first bytes, and hand the flow to the stage that serves it — the MCP-aware HTTP
//! proxy, or a byte pipe — then write its flow record.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::audit::link::{ConnId, TlsFacts, Via};
use crate::audit::timestamp;
use crate::daemon::Daemon;
use crate::http::counting::Counting;
use crate::http::detect::{after_server_first, detect, AfterServer, Detected};
use crate::http::{self as gwhttp, Protocol};
use crate::identity::Identity;
use crate::intercept::Redirected;
use crate::mcp::{ConnCtx, Principal};
use crate::passthrough::{self, Transfer};

pub mod addr_text;
mod flow_json;
mod tls_flow;

/// What a flow's audit record says. `flow_json` writes it; the derive is what its test
/// compares with (a field added here goes there too).
#[derive(Serialize)]
struct FlowRecord<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    /// The id every record of this connection carries.
    connection: &'a str,
    start: String,
    duration_ms: f64,
    identity: &'a Identity,
    orig_dst: SocketAddr,
    upstream: SocketAddr,
    client: SocketAddr,
    /// What the connection carried: http1, http2, tls, tcp.
    protocol: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<TlsFlow>,
    bytes_to_upstream: u64,
    bytes_to_agent: u64,
    outcome: &'static str,
    /// What went wrong, when the outcome is a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// How an ordinary ending came about, when there is more to say (who hung up first).
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

/// What the flow record says about TLS.
#[derive(Serialize, Default, Debug, Clone)]
pub struct TlsFlow {
    /// `terminated`, `passthrough` or `refused`.
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// ALPN protocols the agent offered, and the one agreed with it (null: none was, or
    /// the connection was not terminated).
    pub alpn_offered: Vec<String>,
    pub alpn: Option<String>,
}

impl TlsFlow {
    /// What the exchanges of a terminated connection carry of it.
    pub fn facts(&self) -> TlsFacts {
        TlsFacts {
            mode: self.mode,
            sni: self.sni.clone(),
            alpn: self.alpn.clone(),
        }
    }
}

/// Serves one redirected connection to its end and audits it.
pub async fn flow(
    agent: TcpStream,
    client: SocketAddr,
    r: Redirected,
    conn: ConnId,
    daemon: Arc<Daemon>,
) {
    let started = SystemTime::now();
    let t0 = std::time::Instant::now();
    let _open = crate::metrics::global().open_connection();
    let hash = daemon.policy.current().wants_exe_hash();
    // Shared with the connection's MCP stage as it is, not copied again.
    let identity = Arc::new(Identity::resolve_bounded(&r, hash).await);
    let upstream = r.upstream_addr();
    tracing::debug!(exe = ?identity.exe, "flow start");
    let carried = carry(agent, &identity, upstream, &conn, &daemon).await;
    let Carried {
        transfer,
        protocol,
        outcome,
        tls,
    } = carried;
    crate::metrics::global().flow(protocol, outcome);
    tracing::debug!(
        up = transfer.to_upstream,
        down = transfer.to_agent,
        outcome,
        "flow end"
    );
    // Command lines carry tokens (`--api-key=…`): they go to the audit redacted, by the
    // policy in force when the record is written. Only the flow record shows them, so the
    // redaction waits for it: a connection's first request is not held up by it.
    let shown = redacted_cmdline(&identity, &daemon.policy.current().redactor);
    let identity: &Identity = shown.as_ref().unwrap_or(&identity);
    let record = FlowRecord {
        kind: "flow",
        time: timestamp(SystemTime::now()),
        connection: &conn,
        start: timestamp(started),
        duration_ms: t0.elapsed().as_secs_f64() * 1e3,
        identity,
        orig_dst: r.orig_dst,
        upstream,
        client,
        protocol,
        tls,
        bytes_to_upstream: transfer.to_upstream,
        bytes_to_agent: transfer.to_agent,
        outcome,
        error: transfer.error,
        detail: transfer.detail,
    };
    daemon.audit.record_json_now(|out| record.write_json(out));
}

/// The identity with its command line redacted, when the redaction changes any argument.
fn redacted_cmdline(id: &Identity, redactor: &crate::redact::Redactor) -> Option<Identity> {
    let args = id.cmdline.as_ref()?;
    let mut clean: Option<Vec<String>> = None;
    for (i, arg) in args.iter().enumerate() {
        if let Some((redacted, _)) = redactor.redact_str(arg) {
            clean.get_or_insert_with(|| args.clone())[i] = redacted;
        }
    }
    let cmdline = clean?;
    Some(Identity {
        cmdline: Some(cmdline),
        ..id.clone()
    })
}

/// How a flow went, for its record.
pub struct Carried {
    pub transfer: Transfer,
    pub protocol: &'static str,
    pub outcome: &'static str,
    pub tls: Option<TlsFlow>,
}

impl Carried {
    fn new(transfer: Transfer, protocol: &'static str, outcome: &'static str) -> Self {
        Carried {
            transfer,
            protocol,
            outcome,
            tls: None,
        }
    }
}

/// An abortive close shows the agent a reset, as a refused or failed direct connect would.
pub fn reset(
    agent: TcpStream,
    protocol: &'static str,
    outcome: &'static str,
    error: Option<String>,
) -> Carried {
    let _ = agent.set_zero_linger();
    drop(agent);
    let t = Transfer {
        error,
        ..Default::default()
    };
    Carried::new(t, protocol, outcome)
}

/// As `reset`, for an ending that is no failure (the flow says how in `detail`, and has
/// no `error`: only a failure carries one).
pub fn reset_ordinary(
    agent: TcpStream,
    protocol: &'static str,
    outcome: &'static str,
    detail: String,
) -> Carried {
    let mut c = reset(agent, protocol, outcome, None);
    c.transfer.detail = Some(detail);
    c
}

pub async fn dial(upstream: SocketAddr, daemon: &Arc<Daemon>) -> Result<TcpStream, String> {
    passthrough::connect(upstream, daemon.config.intercept.mark)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "upstream unreachable; resetting the agent connection");
            e.to_string()
        })
}

fn label(d: Detected) -> &'static str {
    match d {
        Detected::Http1 => "http1",
        Detected::Http2 => "http2",
        Detected::Tls => "tls",
        Detected::Other | Detected::NotClientFirst | Detected::Stalled | Detected::Idle => "tcp",
    }
}

async fn carry(
    agent: TcpStream,
    identity: &Arc<Identity>,
    upstream: SocketAddr,
    conn: &ConnId,
    daemon: &Arc<Daemon>,
) -> Carried {
    // With MCP only, nothing but HTTP and TLS is dialed: a refused flow never reaches its
    // destination. Otherwise the destination is dialed first, so a protocol whose server
    // speaks first is recognised by that rather than by waiting on the agent.
    let idle = std::time::Duration::from_secs(daemon.config.listener.first_byte_timeout_s);
    let (detected, up) = if daemon.config.http.mcp_only {
        let d = detect(&agent, None, idle).await;
        if !matches!(d, Detected::Http1 | Detected::Http2 | Detected::Tls) {
            tracing::info!(
                protocol = label(d),
                "non-HTTP connection refused (http.mcp_only)"
            );
            return reset(agent, label(d), "refused_not_mcp", None);
        }
        (d, None)
    } else {
        match dial(upstream, daemon).await {
            Ok(up) => (detect(&agent, Some(&up), idle).await, Some(up)),
            Err(e) => return reset(agent, "tcp", "upstream_connect_failed", Some(e)),
        }
    };
    let protocol = match detected {
        Detected::Stalled => {
            tracing::info!("agent's first bytes began HTTP and stalled: refused");
            return reset(
                agent,
                "tcp",
                "refused_undecided",
                Some(
                    "the agent's first bytes began an HTTP request line or preface and did not \
                     complete in time: never passed through unread"
                        .into(),
                ),
            );
        }
        Detected::Idle => {
            tracing::info!("neither side sent a byte in time: closed");
            return reset_ordinary(
                agent,
                "tcp",
                "idle_no_first_byte",
                format!(
                    "neither the agent nor its server sent a byte within {}s \
                     (listener.first_byte_timeout_s)",
                    idle.as_secs()
                ),
            );
        }
        Detected::Http1 => Protocol::Http1,
        Detected::Http2 => Protocol::Http2,
        // Boxed: the TLS path's state is some 14 KiB (handshakes, both TLS sessions) and
        // every connection's future would otherwise be that large, copied when spawned.
        Detected::Tls => {
            return Box::pin(tls_flow::carry(agent, up, identity, upstream, conn, daemon)).await
        }
        Detected::NotClientFirst => {
            let mut up = up.expect("only HTTP and TLS are detected before dialing");
            let mut agent = agent;
            let (first, relayed) = after_server_first(&mut agent, &mut up).await;
            if let AfterServer::Mediable(d) = first {
                tracing::info!(
                    protocol = label(d),
                    "agent spoke HTTP or TLS after its server spoke first: refused"
                );
                let mut c = reset(
                    agent,
                    label(d),
                    "refused_server_first",
                    Some(format!(
                        "the server spoke first, then the agent sent {}: a connection whose \
                         server's bytes already reached the agent unread cannot be mediated",
                        label(d)
                    )),
                );
                c.transfer.to_agent = relayed;
                return c;
            }
            let mut t = passthrough::relay(agent, up).await;
            t.to_agent += relayed;
            let outcome = t.outcome();
            return Carried::new(t, "tcp", outcome);
        }
        other => {
            let up = up.expect("only HTTP and TLS are detected before dialing");
            let t = passthrough::relay(agent, up).await;
            let outcome = t.outcome();
            return Carried::new(t, label(other), outcome);
        }
    };
    let up = match up {
        Some(up) => up,
        None => match dial(upstream, daemon).await {
            Ok(up) => up,
            Err(e) => return reset(agent, label(detected), "upstream_connect_failed", Some(e)),
        },
    };
    let (agent, agent_bytes) = Counting::new(agent);
    let via = Via::plain(conn.clone());
    let ended = serve_http(agent, up, protocol, identity, upstream, None, via, daemon).await;
    let t = Transfer {
        to_upstream: agent_bytes.read.load(Ordering::Relaxed),
        to_agent: agent_bytes.written.load(Ordering::Relaxed),
        error: ended.error,
        detail: ended.detail,
    };
    Carried::new(t, label(detected), ended.outcome)
}

/// The MCP-aware HTTP proxy between the agent and its server, over whatever streams carry
/// them (plain TCP, or TLS on both sides).
#[allow(clippy::too_many_arguments)]
pub async fn serve_http<A, U>(
    agent: A,
    up: U,
    protocol: Protocol,
    identity: &Arc<Identity>,
    upstream: SocketAddr,
    tls_sni: Option<Arc<str>>,
    via: Arc<Via>,
    daemon: &Arc<Daemon>,
) -> gwhttp::Ended
where
    A: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let principal = Principal::of(identity);
    let ctx = Arc::new(ConnCtx {
        daemon: daemon.clone(),
        identity: identity.clone(),
        owner: principal.session_owner(),
        principal: Arc::new(principal),
        upstream_addr: upstream,
        tls_sni,
        via,
        named: Default::default(),
        credentials_logged: Default::default(),
    });
    match gwhttp::serve(agent, up, protocol, ctx).await {
        Ok(()) => gwhttp::Ended::closed(),
        Err(e) => e.ended(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redact::{RedactConfig, Redactor};

    #[test]
    fn a_command_line_is_recorded_with_its_secrets_redacted_and_its_other_arguments_as_they_are() {
        let redactor = Redactor::new(&RedactConfig::default()).unwrap();
        let key = "AKIAQX3TZLMB7NRWK2EH";
        let mut id = Identity::resolve(&crate::identity::own_record(0), false);
        id.cmdline = Some(vec![
            "agent".into(),
            format!("--aws-key={key}"),
            "--verbose".into(),
        ]);
        let shown = redacted_cmdline(&id, &redactor).expect("an argument holds a secret");
        let args = shown.cmdline.unwrap();
        assert_eq!((args[0].as_str(), args[2].as_str()), ("agent", "--verbose"));
        assert!(
            args[1].starts_with("--aws-key=") && !args[1].contains(key),
            "the key is redacted: {args:?}"
        );
        assert_eq!((shown.tgid, shown.exe), (id.tgid, id.exe.clone()));
        // Nothing to redact: the identity is recorded as it is, not copied.
        id.cmdline = Some(vec!["agent".into(), "--verbose".into()]);
        assert!(redacted_cmdline(&id, &redactor).is_none());
    }
}
