//! Byte pipe to the original destination, for connections no MCP stage handles: the
//! daemon dials the destination the agent asked for (its socket marked so the eBPF
//! programs leave it alone) and copies both ways, counting bytes.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to {addr}: no answer within {secs} s")]
    ConnectTimeout { addr: SocketAddr, secs: u64 },
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Dials `addr` with SO_MARK `mark`.
pub async fn connect(addr: SocketAddr, mark: u32) -> Result<TcpStream, PassthroughError> {
    let err = |source| PassthroughError::Connect { addr, source };
    let sock = crate::intercept::mark::socket(addr, mark).map_err(err)?;
    match tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(addr)).await {
        // As toward the agent: small writes must not wait on delayed ACKs.
        Ok(r) => r.map_err(err).inspect(|s| {
            let _ = s.set_nodelay(true);
        }),
        Err(_) => Err(PassthroughError::ConnectTimeout {
            addr,
            secs: CONNECT_TIMEOUT.as_secs(),
        }),
    }
}

/// Bytes moved each way; what went wrong (a failure), or how an ordinary ending came
/// about (a peer's reset is its way of closing, not a failure).
#[derive(Debug, Default)]
pub struct Transfer {
    pub to_upstream: u64,
    pub to_agent: u64,
    pub error: Option<String>,
    pub detail: Option<String>,
}

impl Transfer {
    /// The flow outcome a relay ends with: `error` only for a failure.
    pub fn outcome(&self) -> &'static str {
        if self.error.is_some() {
            "error"
        } else {
            "closed"
        }
    }
}

/// Whether an I/O error is a peer hanging up (reset, gone, closed mid-way) rather than a
/// failure: what ends a connection as `closed`.
pub fn peer_closed(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected | UnexpectedEof
    )
}

/// The side of a relay an error came from.
#[derive(Debug, Clone, Copy)]
enum Side {
    Agent,
    Server,
}

/// Copies both ways until both directions end; half-closes are passed on.
pub async fn relay(agent: TcpStream, upstream: TcpStream) -> Transfer {
    let (mut ar, mut aw) = agent.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let (up, down) = tokio::join!(
        pump(&mut ar, &mut uw, (Side::Agent, Side::Server)),
        pump(&mut ur, &mut aw, (Side::Server, Side::Agent))
    );
    let join = |a: String, b: String| format!("{a}; {b}");
    let (closes, failures): (Vec<_>, Vec<_>) = [up.1, down.1]
        .into_iter()
        .flatten()
        .partition(|(_, e)| peer_closed(e));
    let said = |(side, e): (Side, std::io::Error)| {
        let who = match side {
            Side::Agent => "the agent",
            Side::Server => "the server",
        };
        format!("{who}: {e}")
    };
    Transfer {
        to_upstream: up.0,
        to_agent: down.0,
        error: failures.into_iter().map(said).reduce(join),
        detail: closes.into_iter().map(said).reduce(join),
    }
}

/// Copies until EOF, then shuts the write side; counts even when it fails, and says
/// whose socket failed (`sides`: the one read, the one written).
async fn pump<R, W>(
    r: &mut R,
    w: &mut W,
    sides: (Side, Side),
) -> (u64, Option<(Side, std::io::Error)>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut n = 0u64;
    loop {
        match r.read(&mut buf).await {
            Ok(0) => {
                let _ = w.shutdown().await;
                return (n, None);
            }
            Ok(k) => {
                if let Err(e) = w.write_all(&buf[..k]).await {
                    return (n, Some((sides.1, e)));
                }
                n += k as u64;
            }
            Err(e) => {
                let _ = w.shutdown().await;
                return (n, Some((sides.0, e)));
            }
        }
    }
}
