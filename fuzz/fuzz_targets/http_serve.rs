//! Arbitrary bytes as an agent's HTTP/1 connection into the gateway's HTTP/MCP stage
//! (`http::serve`, what `route::serve_http` runs for a mediated connection), over an
//! in-memory pipe, with an in-memory MCP server upstream that answers plausibly (JSON, SSE,
//! legacy HTTP+SSE) or, as a hostile server, with fuzzer-chosen bytes; the server echoes
//! the `Authorization` header it received (the credential the gateway injects).
//!
//! Input: byte 0 picks how the server answers, byte 1 the size of the frames its bodies are
//! sent in; for a hostile server two more bytes give the length of its body, which follows;
//! the rest is what the agent sends.
//!
//! Asserts (threat model property 8, and 4): the connection ends in bounded time once the
//! agent stops sending, the gateway's tasks for it end too (nothing leaks across
//! connections), what the agent receives is HTTP/1 responses, and the injected secret never
//! reaches the agent (unless the agent sent it itself). Any panic in the gateway, in one of
//! its tasks or in the audit writer aborts the process (libFuzzer's panic hook).
#![no_main]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gateway_daemon::http::{serve, Protocol};
use gateway_fuzz::{fake_server, harness, runtime, Upstream, SECRET, TOOLS_ADDR};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long the agent side waits with no new output before it stops sending.
const QUIET: Duration = Duration::from_millis(3);
/// How long the gateway may take to finish after the agent closed (a hang otherwise).
const DEADLINE: Duration = Duration::from_secs(20);

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn one_connection(mode: Upstream, chunk: usize, agent: &[u8]) -> Vec<u8> {
    let h = harness();
    let ctx = h.ctx(TOOLS_ADDR.parse().unwrap());
    let (agent_end, gateway_end) = tokio::io::duplex(64 * 1024);
    let (upstream_end, server_end) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(fake_server(server_end, mode, chunk));
    let gateway = tokio::spawn(serve(gateway_end, upstream_end, Protocol::Http1, ctx));

    let (mut rd, mut wr) = tokio::io::split(agent_end);
    let received = Arc::new(AtomicUsize::new(0));
    let seen = received.clone();
    let reader = async move {
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    seen.store(out.len(), Ordering::Relaxed);
                }
            }
        }
        out
    };
    let writer = async move {
        if wr.write_all(agent).await.is_ok() {
            // Let the gateway answer what it was sent before the agent closes its side
            // (with the request's response pending, hyper would drop it at once).
            let mut last = usize::MAX;
            for _ in 0..200 {
                let now = received.load(Ordering::Relaxed);
                if now == last {
                    break;
                }
                last = now;
                tokio::time::sleep(QUIET).await;
            }
        }
        let _ = wr.shutdown().await;
    };
    let (out, ()) = tokio::time::timeout(DEADLINE, async { tokio::join!(reader, writer) })
        .await
        .unwrap_or_else(|_| panic!("the agent's connection did not end within {DEADLINE:?}"));
    match tokio::time::timeout(DEADLINE, gateway).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
        Err(_) => panic!("http::serve did not return within {DEADLINE:?} of the agent closing"),
    }
    match tokio::time::timeout(DEADLINE, server).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
        Err(_) => panic!("the upstream connection was not closed within {DEADLINE:?}"),
    }
    out
}

/// Waits until only `baseline` tasks are alive (the gateway's per-connection tasks, such
/// as its upstream connection and SSE pumps, end with the connection).
async fn no_leaked_tasks(baseline: usize) {
    let metrics = tokio::runtime::Handle::current().metrics();
    for _ in 0..2000 {
        if metrics.num_alive_tasks() <= baseline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!(
        "{} tasks still alive after the connection ended (baseline {baseline})",
        metrics.num_alive_tasks()
    );
}

fuzz_target!(|data: &[u8]| {
    let [pick, chunk, rest @ ..] = data else {
        return;
    };
    let chunk = usize::from(*chunk % 16);
    let (mode, agent) = match pick % 6 {
        0 => (Upstream::Json, rest),
        1 => (Upstream::Sse, rest),
        2 => (Upstream::Legacy, rest),
        n => {
            let [a, b, rest @ ..] = rest else { return };
            let len = usize::from(u16::from_le_bytes([*a, *b])).min(rest.len());
            let (body, agent) = rest.split_at(len);
            (
                Upstream::Raw {
                    body: body.to_vec(),
                    content_type: n - 3 + (pick >> 4),
                },
                agent,
            )
        }
    };
    harness();
    let rt = runtime();
    let out = rt.block_on(async {
        let baseline = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        let out = one_connection(mode, chunk, agent).await;
        no_leaked_tasks(baseline).await;
        out
    });
    if !out.is_empty() {
        assert!(
            out.starts_with(b"HTTP/1."),
            "the agent received something that is not an HTTP/1 response: {:?}",
            String::from_utf8_lossy(&out[..out.len().min(200)])
        );
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        if let Err(e) = resp.parse(&out) {
            panic!(
                "the first response head does not parse ({e}): {:?}",
                String::from_utf8_lossy(&out[..out.len().min(400)])
            );
        }
    }
    if !contains(agent, SECRET.as_bytes()) {
        assert!(
            !contains(&out, SECRET.as_bytes()),
            "the injected credential reached the agent: {:?}",
            String::from_utf8_lossy(&out)
        );
    }
});
