//! The daemon's mark: the only thing that exempts a socket from the programs. Setting
//! SO_MARK needs CAP_NET_ADMIN (or CAP_NET_RAW), which agents lack; a pid, a port or a
//! cgroup an agent can fork into, bind or be placed in are never used for that.

use std::net::SocketAddr;

use tokio::net::TcpSocket;

/// A TCP socket of `addr`'s family carrying SO_MARK `mark`, for the daemon's listeners and
/// its upstream connections.
pub fn socket(addr: SocketAddr, mark: u32) -> std::io::Result<TcpSocket> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }?;
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::Mark, &mark).map_err(|e| {
        std::io::Error::new(
            std::io::Error::from(e).kind(),
            format!("setting SO_MARK {mark:#x}: {e}"),
        )
    })?;
    Ok(sock)
}
