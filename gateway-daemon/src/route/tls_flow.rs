//! A flow that starts with a TLS ClientHello: passed through untouched, refused, or
//! terminated on both sides and served by the MCP-aware HTTP proxy.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{dial, reset, reset_ordinary, serve_http, Carried, TlsFlow};
use crate::audit::link::{ConnId, Via};
use crate::daemon::Daemon;
use crate::http::counting::Counting;
use crate::http::{self as gwhttp, Protocol};
use crate::identity::Identity;
use crate::passthrough::{self, Transfer};
use crate::tls::decide::{decide, Choice, NO_SNI};
use crate::tls::{self, hello, upstream as up_tls};

fn names(alpn: &[Vec<u8>]) -> Vec<String> {
    alpn.iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

fn with_tls(mut c: Carried, info: TlsFlow) -> Carried {
    c.tls = Some(info);
    c
}

pub async fn carry(
    mut agent: TcpStream,
    up: Option<TcpStream>,
    identity: &Arc<Identity>,
    upstream: SocketAddr,
    conn: &ConnId,
    daemon: &Arc<Daemon>,
) -> Carried {
    let t = &daemon.tls;
    let deadline = Instant::now() + t.handshake_timeout;
    let hello = match hello::peek(&mut agent, t.handshake_timeout).await {
        Ok(h) => h,
        Err(e) => {
            tracing::info!(error = %e, "TLS connection refused");
            let info = TlsFlow {
                mode: "refused",
                ..Default::default()
            };
            let c = if e.is_ordinary() {
                reset_ordinary(agent, "tls", e.outcome(), e.to_string())
            } else {
                reset(agent, "tls", e.outcome(), Some(e.to_string()))
            };
            return with_tls(c, info);
        }
    };
    let mut info = TlsFlow {
        mode: "refused",
        sni: hello.sni.clone(),
        alpn_offered: names(&hello.alpn),
        alpn: None,
    };
    match decide(hello.sni.as_deref(), upstream, &daemon.config) {
        Choice::Terminate => {}
        Choice::PassThrough => {
            info.mode = "passthrough";
            let up = match up {
                Some(up) => up,
                None => match dial(upstream, daemon).await {
                    Ok(up) => up,
                    Err(e) => {
                        let c = reset(agent, "tls", "upstream_connect_failed", Some(e));
                        return with_tls(c, info);
                    }
                },
            };
            let tr = passthrough::relay(agent, up).await;
            let outcome = tr.outcome();
            return with_tls(Carried::new(tr, "tls", outcome), info);
        }
        Choice::Refuse(reason) => {
            tracing::info!(sni = ?hello.sni, reason, "TLS connection refused");
            return with_tls(refuse(agent, reason).await, info);
        }
    }
    // `decide` terminates only connections that name their server.
    let Some(sni) = hello.sni.clone() else {
        return with_tls(refuse(agent, NO_SNI).await, info);
    };
    info.mode = "terminated";
    let up = match up {
        Some(up) => up,
        None => match dial(upstream, daemon).await {
            Ok(up) => up,
            Err(e) => {
                return with_tls(
                    reset(agent, "tls", "upstream_connect_failed", Some(e)),
                    info,
                )
            }
        },
    };
    let offered = tls::http_alpn(&hello.alpn);
    let server = up_tls::connect(t.client_config(), up, &sni, offered.clone(), deadline).await;
    // The agent is offered what the server chose; after a failed server handshake, what
    // the agent prefers, so it can read the gateway's explanation in its own protocol.
    let alpn: Option<Vec<u8>> = match &server {
        Ok(s) => s.get_ref().1.alpn_protocol().map(<[u8]>::to_vec),
        Err(_) => offered
            .iter()
            .find(|p| p.as_slice() == tls::HTTP11)
            .or(offered.first())
            .cloned(),
    };
    info.alpn = alpn
        .as_ref()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let protocol = if alpn.as_deref() == Some(tls::H2) {
        Protocol::Http2
    } else {
        Protocol::Http1
    };
    let (agent, agent_bytes) = Counting::new(agent);
    let agent = match t.accept(agent, alpn.as_deref(), deadline).await {
        Ok(a) => a,
        Err(e) => {
            let rejected = tls::agent_rejected(&e, &daemon.config.tls.ca_cert);
            let (outcome, error) = match rejected {
                Some(why) => ("agent_tls_rejected", why),
                None => ("agent_tls_failed", e.to_string()),
            };
            tracing::info!(error = %error, outcome, "agent TLS handshake failed");
            let tr = Transfer {
                to_upstream: agent_bytes.read.load(Ordering::Relaxed),
                to_agent: agent_bytes.written.load(Ordering::Relaxed),
                error: Some(error),
                detail: None,
            };
            return with_tls(Carried::new(tr, "tls", outcome), info);
        }
    };
    let ended = match server {
        Ok(server) => {
            let sni: Arc<str> = sni.into();
            let via = Arc::new(Via {
                connection: conn.clone(),
                tls: Some(info.facts()),
            });
            serve_http(
                agent,
                server,
                protocol,
                identity,
                upstream,
                Some(sni),
                via,
                daemon,
            )
            .await
        }
        Err(e) => {
            tracing::warn!(error = %e, "upstream TLS refused; answering the agent with 502");
            let msg = format!("refused the upstream server: {e}");
            gwhttp::refuse(agent, protocol, &msg).await;
            gwhttp::Ended {
                outcome: e.outcome(),
                error: Some(e.to_string()),
                detail: None,
            }
        }
    };
    let tr = Transfer {
        to_upstream: agent_bytes.read.load(Ordering::Relaxed),
        to_agent: agent_bytes.written.load(Ordering::Relaxed),
        error: ended.error,
        detail: ended.detail,
    };
    with_tls(Carried::new(tr, "tls", ended.outcome), info)
}

/// Consumes the ClientHello and answers with an alert that says why, then closes.
async fn refuse(mut agent: TcpStream, reason: &'static str) -> Carried {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (alert, outcome) = if reason == NO_SNI {
        (tls::ALERT_UNRECOGNIZED_NAME, "refused_tls_no_sni")
    } else {
        (tls::ALERT_ACCESS_DENIED, "refused_tls_not_mcp")
    };
    let mut buf = vec![0u8; 64 * 1024];
    let _ = agent.try_read(&mut buf);
    tls::send_alert(&mut agent, alert).await;
    let _ = agent.shutdown().await;
    // Closing with unread bytes would send a reset that can overtake the alert: wait a
    // moment for the agent to hang up first.
    let linger = std::time::Duration::from_millis(200);
    let _ = tokio::time::timeout(linger, agent.read(&mut buf)).await;
    let tr = Transfer {
        error: Some(reason.to_string()),
        ..Default::default()
    };
    Carried::new(tr, "tls", outcome)
}
