//! Shared helpers of the privileged integration tests: a real daemon per test (its own
//! instance, cgroup, listener and audit file), agents started inside its cgroup or as an
//! agent user, and echo servers to talk to.
//!
//! Nothing here is mocked: the daemon is the built `mcp-gateway` binary, the agents are
//! unmodified Python processes, redirection is the real eBPF programs.

pub mod config;
mod echo;
pub mod fake;
pub mod frozen;
mod gateway;
pub mod peers;
pub mod raw;
pub mod tls;

pub use echo::{start_hangup, EchoServer};
pub use gateway::{cgroup2_mount, Gateway, GatewayOptions};

use std::path::PathBuf;
use std::process::Command;

/// The agent program every test runs. It is passed with `-c` so that any uid can run it.
pub const PROBE: &str = include_str!("probe.py");

/// An agent that connects again and again for `seconds` (argv: port, seconds), printing each
/// attempt's local port and result as one JSON list. Its sockets are bound to 127.0.0.3, an
/// address the gateway's own upstream sockets never use, so one that reached the server
/// directly is told apart by its address (ports alone are not enough: the gateway's upstream
/// sockets take ephemeral ports from the same range, and on a loaded machine a few of them
/// equalled an agent's earlier port).
pub const CONNECTING_AGENT: &str = r#"
import json, socket, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
attempts, end = [], time.monotonic() + seconds
while time.monotonic() < end:
    s = socket.socket()
    s.settimeout(3)
    try:
        s.bind(("127.0.0.3", 0))
        s.connect(("127.0.0.1", port))
        s.sendall(b"x\n")
        ok = s.recv(1) == b"x"
        attempts.append({"local": s.getsockname()[1], "result": "echoed" if ok else "closed"})
    except OSError as e:
        attempts.append({"result": type(e).__name__})
    finally:
        s.close()
    time.sleep(0.005)
print(json.dumps(attempts))
"#;

/// Debian's interpreter: readable by every uid, unlike a per-user pyenv.
pub const PYTHON: &str = "/usr/bin/python3";

/// Fails loudly, never skips, when the privileged suite cannot run here.
pub fn require_privileges() {
    let euid = nix::unistd::geteuid();
    assert!(
        euid.is_root(),
        "the privileged integration tests need root (they load eBPF, attach to cgroups and \
         create users' cgroups); run them with `sudo cargo xtask test`. Running as uid {euid}."
    );
    assert!(
        std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
        "the kernel has no BTF (/sys/kernel/btf/vmlinux missing): mcp-gateway needs a kernel \
         built with CONFIG_DEBUG_INFO_BTF=y"
    );
    assert!(
        std::path::Path::new(PYTHON).exists(),
        "{PYTHON} is missing: install it with `apt-get install -y python3` (cargo xtask test does)"
    );
}

/// The daemon binary: `$MCP_GATEWAY_BIN` (set by `cargo xtask test`), else the workspace's
/// debug build.
pub fn gateway_bin() -> PathBuf {
    let path = std::env::var_os("MCP_GATEWAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/mcp-gateway")
        });
    assert!(
        path.exists(),
        "{} does not exist: build the daemon first (`cargo build -p gateway-daemon`), or run \
         the suite with `cargo xtask test`, which does",
        path.display()
    );
    path
}

/// Runs the probe and parses its JSON line; panics with its stderr when it fails.
pub fn run_probe(mut cmd: Command) -> serde_json::Value {
    let out = cmd.output().expect("starting the agent probe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "agent probe failed ({}): stdout={stdout} stderr={}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("probe output {stdout:?}: {e}"))
}

/// Probe arguments: host, port, mode, payload size, family.
pub fn probe_args(host: &str, port: u16, mode: &str, size: usize) -> Vec<String> {
    vec![
        "-c".into(),
        PROBE.into(),
        host.into(),
        port.to_string(),
        mode.into(),
        size.to_string(),
    ]
}

/// A loopback port nobody uses right now, for a server a test starts.
///
/// Taken below the kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768 and up by
/// default): a port the kernel hands out with `bind(0)` is free only until some outgoing
/// connection (the gateway's, an agent's) takes it as its source port, and then the
/// server's own bind fails ("port already in use", seen on a loaded CI run). Ports go
/// round from a point set by the process id, so test binaries and threads do not collide.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(997) % COUNT,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..COUNT {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % COUNT) as u16;
        // Free on both loopback families: some peers listen on every address.
        let v6_free = match std::net::TcpListener::bind(("::1", port)) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::AddrNotAvailable,
        };
        if v6_free && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + COUNT)
}

/// Waits (up to 10 s) until something accepts connections on 127.0.0.1:`port`.
pub fn wait_listening(port: u16, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
