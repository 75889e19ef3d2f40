//! Serving the admin socket: one task per connection, so a slow, hostile or crashing client
//! only ever costs its own connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::time::timeout;
use tracing::Instrument;

use super::peer::{self, Admins};
use super::protocol::{parse_request, response_line};
use super::{AdminListener, Caller, Handler, IDLE_TIMEOUT, MAX_LINE};

#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub max_line: usize,
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_line: MAX_LINE,
            idle: IDLE_TIMEOUT,
        }
    }
}

/// Accepts admin connections until the returned future is dropped; dropping it (with the
/// listener) removes the socket file. Must run inside a tokio runtime.
pub async fn serve(listener: AdminListener, handler: Arc<dyn Handler>) {
    serve_with(listener, handler, Limits::default()).await
}

pub(super) async fn serve_with(listener: AdminListener, handler: Arc<dyn Handler>, limits: Limits) {
    let AdminListener {
        listener,
        admins,
        file: _file,
    } = listener;
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the admin socket with the runtime");
            return;
        }
    };
    let admins = Arc::new(admins);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let handler = handler.clone();
                let admins = admins.clone();
                tokio::spawn(connection(stream, handler, admins, limits));
            }
            // EMFILE and friends: back off instead of spinning; the listener stays.
            Err(e) => {
                tracing::warn!(error = %e, "admin socket: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(
    mut stream: UnixStream,
    handler: Arc<dyn Handler>,
    admins: Arc<Admins>,
    limits: Limits,
) {
    let caller = match peer::caller(&stream) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "admin socket: cannot read the client's credentials");
            return;
        }
    };
    let span = tracing::info_span!("admin", uid = caller.uid, pid = caller.pid);
    async move {
        if let Err(refusal) = admins.authorize(&caller, &stream) {
            tracing::warn!(
                uid = caller.uid,
                gid = caller.gid,
                pid = caller.pid,
                group = %admins.group,
                "admin socket: refused a client that is neither root nor in the admin group"
            );
            let _ = send(&mut stream, Err(refusal), limits).await;
            let _ = stream.shutdown().await;
            return;
        }
        requests(stream, caller, handler, limits).await;
    }
    .instrument(span)
    .await
}

async fn requests(
    mut stream: UnixStream,
    caller: Caller,
    handler: Arc<dyn Handler>,
    limits: Limits,
) {
    let (read, mut write) = stream.split();
    let mut reader = BufReader::new(read);
    loop {
        let line = match next_line(&mut reader, limits).await {
            Line::Request(line) => line,
            Line::Eof => return,
            Line::TooLong => {
                tracing::warn!(
                    limit = limits.max_line,
                    "admin socket: request line too long"
                );
                let message = format!(
                    "request line longer than {} bytes; closing the connection",
                    limits.max_line
                );
                let _ = send(&mut write, Err(message), limits).await;
                let _ = write.shutdown().await;
                return;
            }
            Line::Idle => {
                tracing::debug!("admin socket: idle client disconnected");
                let message = format!(
                    "no request for {} s; closing the connection",
                    limits.idle.as_secs_f64()
                );
                let _ = send(&mut write, Err(message), limits).await;
                let _ = write.shutdown().await;
                return;
            }
            Line::Failed(e) => {
                tracing::debug!(error = %e, "admin socket: read failed");
                return;
            }
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let outcome = match parse_request(&line) {
            Ok(request) => run(&handler, caller, request.op, request.args).await,
            Err(message) => Err(message),
        };
        if send(&mut write, outcome, limits).await.is_err() {
            return;
        }
    }
}

/// Runs the handler in a task of its own: a panic becomes an error response instead of a
/// silent hang-up, and a client that disconnects mid-request does not cancel an operation
/// (say, a rewrite of the pin store) halfway through.
async fn run(
    handler: &Arc<dyn Handler>,
    caller: Caller,
    op: String,
    args: serde_json::Value,
) -> Result<serde_json::Value, String> {
    tracing::debug!(op = %op, "admin request");
    let handler = handler.clone();
    let task_op = op.clone();
    match tokio::spawn(async move { handler.handle(&caller, &task_op, args).await }).await {
        Ok(outcome) => outcome,
        Err(e) => {
            tracing::error!(op = %op, error = %e, "admin handler failed");
            Err(format!(
                "internal error while handling {op:?}; see the daemon's log"
            ))
        }
    }
}

enum Line {
    Request(Vec<u8>),
    Eof,
    TooLong,
    Idle,
    Failed(std::io::Error),
}

async fn next_line<R>(reader: &mut R, limits: Limits) -> Line
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    let mut line = Vec::new();
    // One byte over the limit leaves room for the newline of a line exactly at the limit.
    let mut bounded = reader.take(limits.max_line as u64 + 1);
    match timeout(limits.idle, bounded.read_until(b'\n', &mut line)).await {
        Err(_) => Line::Idle,
        Ok(Err(e)) => Line::Failed(e),
        Ok(Ok(0)) => Line::Eof,
        Ok(Ok(_)) => {
            if line.last() == Some(&b'\n') {
                line.pop();
                Line::Request(line)
            } else if line.len() > limits.max_line {
                Line::TooLong
            } else {
                // The client shut down its side after a last line without a newline.
                Line::Request(line)
            }
        }
    }
}

/// A client that stops reading cannot hold the task forever: the write is bounded too.
async fn send<W>(
    write: &mut W,
    outcome: Result<serde_json::Value, String>,
    limits: Limits,
) -> std::io::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    let line = response_line(outcome);
    match timeout(limits.idle, write.write_all(&line)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}
