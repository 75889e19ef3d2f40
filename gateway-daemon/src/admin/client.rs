//! The CLI's side: one blocking request and its answer. The CLI has no async runtime, so
//! this is plain std I/O under a deadline.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::protocol::{parse_response, request_line};
use super::{AdminError, CALL_TIMEOUT, MAX_LINE};

/// Responses may carry whole pin stores, so they get far more room than requests; the
/// bound only stops a runaway daemon from eating the CLI's memory.
const MAX_RESPONSE: usize = 64 * MAX_LINE;

/// Sends one request to the daemon on `socket` and returns its `result`; an `ok: false`
/// answer is [`AdminError::Refused`] with the daemon's message.
pub fn call(socket: &Path, op: &str, args: Value) -> Result<Value, AdminError> {
    call_with_timeout(socket, op, args, CALL_TIMEOUT)
}

pub(super) fn call_with_timeout(
    socket: &Path,
    op: &str,
    args: Value,
    timeout: Duration,
) -> Result<Value, AdminError> {
    let deadline = Instant::now() + timeout;
    let request = request_line(op, args);
    if request.len() - 1 > MAX_LINE {
        return Err(AdminError::TooLarge {
            bytes: request.len() - 1,
        });
    }
    let mut stream = UnixStream::connect(socket).map_err(|e| connect_error(socket, e))?;
    let io_error = |what, source| AdminError::Io {
        what,
        path: socket.to_owned(),
        source,
    };
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| io_error("setting a timeout on", e))?;
    // A daemon that refuses the caller answers and hangs up before reading the request, so
    // a failed write is only reported when no answer can be read either.
    let written = stream.write_all(&request);
    if let Err(e) = &written {
        if is_timeout(e) {
            return Err(timed_out(socket, timeout));
        }
    }
    let line = match read_line(&mut stream, socket, deadline, timeout) {
        Ok(line) => line,
        Err(read_error) => {
            return Err(match written {
                Err(e) => io_error("sending the request to", e),
                Ok(()) => read_error,
            })
        }
    };
    match parse_response(&line) {
        Ok(Ok(result)) => Ok(result),
        Ok(Err(message)) => Err(AdminError::Refused(message)),
        Err(reason) => Err(AdminError::Protocol {
            path: socket.to_owned(),
            reason,
        }),
    }
}

fn connect_error(socket: &Path, e: io::Error) -> AdminError {
    let path = socket.to_owned();
    match e.kind() {
        // ConnectionRefused: a socket file left behind by a daemon that is gone.
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            AdminError::NotRunning { path }
        }
        io::ErrorKind::PermissionDenied => AdminError::PermissionDenied { path },
        _ => AdminError::Io {
            what: "connecting to the admin socket",
            path,
            source: e,
        },
    }
}

/// The first line the daemon sends, without its newline; the deadline covers the whole
/// wait, not each read.
fn read_line(
    stream: &mut UnixStream,
    socket: &Path,
    deadline: Instant,
    timeout: Duration,
) -> Result<Vec<u8>, AdminError> {
    let mut line = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| timed_out(socket, timeout))?;
        stream
            .set_read_timeout(Some(left))
            .map_err(|source| AdminError::Io {
                what: "setting a timeout on",
                path: socket.to_owned(),
                source,
            })?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => return Err(timed_out(socket, timeout)),
            Err(source) => {
                return Err(AdminError::Io {
                    what: "reading the answer from",
                    path: socket.to_owned(),
                    source,
                })
            }
        };
        if n == 0 {
            if line.is_empty() {
                return Err(AdminError::Protocol {
                    path: socket.to_owned(),
                    reason: "the connection closed without an answer (see the daemon's log)".into(),
                });
            }
            return Ok(line);
        }
        if let Some(end) = chunk[..n].iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&chunk[..end]);
            return Ok(line);
        }
        line.extend_from_slice(&chunk[..n]);
        if line.len() > MAX_RESPONSE {
            return Err(AdminError::Protocol {
                path: socket.to_owned(),
                reason: format!("an answer longer than {MAX_RESPONSE} bytes"),
            });
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn timed_out(socket: &Path, timeout: Duration) -> AdminError {
    AdminError::Timeout {
        path: socket.to_owned(),
        timeout,
    }
}
