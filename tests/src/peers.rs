//! Real MCP peers for the tests: official, unmodified MCP servers and clients, started on
//! loopback ports.
//!
//! - servers: @modelcontextprotocol/server-everything (Node.js, Streamable HTTP at `/mcp` or
//!   the legacy HTTP+SSE transport at `/sse` + `/message`) and `rmcp-test-server` (this
//!   crate's binary on the Rust SDK, Streamable HTTP at `/mcp`);
//! - clients: `tests/peers/mcp_client.py` (the Python SDK, in the venv) and `rmcp-test-client`
//!   (this crate's binary on the Rust SDK). Both print one JSON object of normalised results
//!   (same shape, see [`run_json`]) that a direct run and a run through the gateway can be
//!   compared on.
//!
//! Node and Python packages are installed by `cargo xtask peers` (also run by
//! `cargo xtask test`) into `target/peers`, world-readable, so that agent users can run them.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The echo text both clients send.
pub const ECHO_TEXT: &str = "hello through the gateway";
/// The steps of the progress-reporting tool call both clients make (one notification each).
pub const PROGRESS_STEPS: u64 = 4;

/// How long a server gets to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// An MCP HTTP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Streamable HTTP (one endpoint, `/mcp`).
    Streamable,
    /// The legacy HTTP+SSE transport (`GET /sse`, then `POST /message?sessionId=…`).
    Sse,
}

impl Transport {
    /// The name the Python client takes.
    pub fn arg(self) -> &'static str {
        match self {
            Transport::Streamable => "streamable",
            Transport::Sse => "sse",
        }
    }

    /// The path a client connects to first.
    pub fn path(self) -> &'static str {
        match self {
            Transport::Streamable => "/mcp",
            Transport::Sse => "/sse",
        }
    }
}

/// Which server's tool, resource and prompt names a client uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Chosen by the client from the tool list.
    Auto,
    /// `rmcp-test-server`: echo, slow_count, test://hello, greet.
    Rmcp,
    /// server-everything: echo, trigger-long-running-operation,
    /// demo://resource/static/document/architecture.md, args-prompt.
    Everything,
}

impl Profile {
    pub fn arg(self) -> &'static str {
        match self {
            Profile::Auto => "auto",
            Profile::Rmcp => "rmcp",
            Profile::Everything => "everything",
        }
    }
}

/// The workspace's `target/peers` (what `cargo xtask peers` installs); panics when missing.
pub fn peers_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/peers");
    let dir = dir.canonicalize().unwrap_or(dir);
    for stamp in [".stamp-node", ".stamp-venv"] {
        assert!(
            dir.join(stamp).exists(),
            "the MCP test peers are not installed in {} (no {stamp}): run `cargo xtask peers` \
             (`cargo xtask test` does it too)",
            dir.display()
        );
    }
    dir
}

/// server-everything's entry point (`dist/index.js`).
pub fn everything_script() -> PathBuf {
    node_module("@modelcontextprotocol/server-everything/dist/index.js")
}

/// A file of an installed Node package; panics when missing.
fn node_module(path: &str) -> PathBuf {
    let path = peers_dir().join("node/node_modules").join(path);
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask peers`",
        path.display()
    );
    path
}

/// The venv's interpreter (a link to Debian's /usr/bin/python3, usable by any uid).
pub fn venv_python() -> PathBuf {
    let path = peers_dir().join("venv/bin/python");
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask peers`",
        path.display()
    );
    path
}

/// The Python SDK client script.
pub fn python_client_script() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/mcp_client.py");
    path.canonicalize().unwrap_or(path)
}

/// The absolute path of `node` (found in `PATH`).
pub fn node_bin() -> PathBuf {
    find_in_path("node").unwrap_or_else(|| {
        panic!("`node` is not in PATH: install Node.js >= 20 (`cargo xtask deps` as root does)")
    })
}

/// A binary of this crate (`rmcp-test-server`, `rmcp-test-client`): cargo builds them next to
/// the test binaries' `deps/` folder for every integration test.
pub fn crate_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join(name))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{name} not found (looked at {candidates:?}): build it with `cargo build -p \
                 gateway-tests --bins` (`cargo test -p gateway-tests` does)"
            )
        })
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain(["/usr/local/bin".into(), "/usr/bin".into()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .map(|p| p.canonicalize().unwrap_or(p))
}

/// A running server peer; killed when dropped.
pub struct Peer {
    pub name: String,
    pub port: u16,
    /// The URL a client starts from: `http://127.0.0.1:PORT/mcp` (or `/sse`);
    /// `https://localhost:PORT/mcp` from [`rmcp_server_tls`].
    pub url: String,
    log: tempfile::NamedTempFile,
    child: Option<Child>,
}

impl Peer {
    /// Starts `cmd` (its stdout and stderr go to a log) and waits until `port` accepts
    /// connections on 127.0.0.1.
    pub fn spawn(name: &str, mut cmd: Command, port: u16, path: &str) -> Peer {
        let log = tempfile::Builder::new()
            .prefix(&format!("mcp-peer-{name}-"))
            .suffix(".log")
            .tempfile()
            .expect("peer log file");
        let out: File = log.reopen().expect("peer log");
        let err = out.try_clone().expect("peer log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({cmd:?}): {e}"));
        let mut peer = Peer {
            name: name.into(),
            port,
            url: format!("http://127.0.0.1:{port}{path}"),
            log,
            child: Some(child),
        };
        peer.wait_ready();
        peer
    }

    fn wait_ready(&mut self) {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!(
                    "{} exited before it accepted connections on {addr} ({status}):\n{}",
                    self.name,
                    self.log()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} does not accept connections on {addr} after {START_TIMEOUT:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the server printed so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A server written against the Python SDK, run as `python -c SCRIPT ARGS…` in the peers'
/// venv, serving at `path` on 127.0.0.1:`port`.
pub fn python_server(
    name: &str,
    script: &str,
    args: &[&std::ffi::OsStr],
    port: u16,
    path: &str,
) -> Peer {
    let mut cmd = Command::new(venv_python());
    cmd.arg("-c").arg(script).args(args);
    Peer::spawn(name, cmd, port, path)
}

/// The bank server of `tests/fixtures/rug_server.py` (the official Python SDK) on `port`:
/// `v1` serves two honest tools; `v2` pulls the rug (a poisoned description, a new
/// `withdraw_funds`).
pub fn rug_server(port: u16, variant: &str) -> Peer {
    const RUG: &str = include_str!("../fixtures/rug_server.py");
    let mut cmd = Command::new(venv_python());
    cmd.arg("-c").arg(RUG).arg(port.to_string()).arg(variant);
    Peer::spawn(&format!("rug-server-{variant}"), cmd, port, "/mcp")
}

/// Starts @modelcontextprotocol/server-everything with `transport` on `port`.
///
/// It takes the transport as its first argument (`streamableHttp` or `sse`) and the port in
/// `$PORT`; it listens on every address (Express' default), and serves Streamable HTTP at
/// `/mcp`, or SSE at `GET /sse` with messages posted to `/message?sessionId=…`.
pub fn everything(transport: Transport, port: u16) -> Peer {
    let mut cmd = Command::new(node_bin());
    cmd.arg(everything_script())
        .arg(match transport {
            Transport::Streamable => "streamableHttp",
            Transport::Sse => "sse",
        })
        .env("PORT", port.to_string());
    Peer::spawn(
        &format!("server-everything-{}", transport.arg()),
        cmd,
        port,
        transport.path(),
    )
}

/// Starts `rmcp-test-server` on 127.0.0.1:`port` (Streamable HTTP at `/mcp`).
pub fn rmcp_server(port: u16) -> Peer {
    let mut cmd = Command::new(crate_bin("rmcp-test-server"));
    cmd.arg("--listen").arg(format!("127.0.0.1:{port}"));
    Peer::spawn("rmcp-test-server", cmd, port, "/mcp")
}

/// Starts `rmcp-test-server` over HTTPS on 127.0.0.1:`port` with `cert` and `key` (PEM). Its
/// `url` names `localhost` (`https://localhost:PORT/mcp`), the name a test certificate is issued
/// for; a client resolves it to 127.0.0.1 from /etc/hosts.
pub fn rmcp_server_tls(port: u16, cert: &Path, key: &Path) -> Peer {
    let mut cmd = Command::new(crate_bin("rmcp-test-server"));
    cmd.arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key);
    let mut peer = Peer::spawn("rmcp-test-server-tls", cmd, port, "/mcp");
    peer.url = format!("https://localhost:{port}/mcp");
    peer
}

/// The Python SDK client for `url` (`…/mcp` for Streamable HTTP, `…/sse` for SSE).
pub fn python_client_cmd(url: &str, transport: Transport) -> Command {
    let mut cmd = Command::new(venv_python());
    cmd.arg(python_client_script())
        .arg(url)
        .arg(transport.arg());
    cmd
}

/// The rmcp client for `url` (Streamable HTTP). Add `--lifecycle discover|auto` or
/// `--protocol-version V` to the returned command for the other protocol eras.
pub fn rmcp_client_cmd(url: &str, profile: Profile) -> Command {
    let mut cmd = Command::new(crate_bin("rmcp-test-client"));
    cmd.arg(url).args(["--profile", profile.arg()]);
    cmd
}

/// Runs a client and parses the one JSON object it prints; panics with its stderr when it
/// fails. The object (both clients):
///
/// ```json
/// {"client": "python-mcp" | "rmcp", "profile": "everything" | "rmcp",
///  "protocol_version": "2025-11-25", "server_name": "…", "tools": ["…" sorted],
///  "echo": {"sent": "…", "text": "…", "content": [content blocks]},
///  "progress": {"tool": "…", "steps": 4, "count": 4, "final": 4.0, "total": 4.0,
///               "values": [1.0, 2.0, 3.0, 4.0], "result": [content blocks]},
///  "resource": {"uri": "…", "contents": [{"uri", "mime_type", "text", "blob"}]},
///  "prompts": ["…" sorted],
///  "prompt": {"name": "…", "arguments": {…}, "messages": [{"role", "content"}]}}
/// ```
pub fn run_json(mut cmd: Command) -> Value {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): stdout={stdout} stderr={}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{cmd:?} printed {stdout:?}, not one JSON object: {e}"))
}

/// A client's result without the `client` key, to compare two different clients.
pub fn without_client(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("client");
    }
    v
}

/// The SDK a refusal client is built on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sdk {
    /// The official Python SDK (`tests/peers/refusal_client.py`).
    Python,
    /// The official TypeScript SDK (`tests/peers/refusal_client.cjs`).
    TypeScript,
}

/// A client that makes `cases` (see `tests/peers/refusal_client.py`) as an agent on `sdk`
/// would, over `transport` (`streamable`, `sse`, or `modern` for the 2026-07-28 revision,
/// Python only), and prints what its library surfaced for each call.
pub fn refusal_client_cmd(sdk: Sdk, url: &str, transport: &str, cases: &Value) -> Command {
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers");
    let mut cmd = match sdk {
        Sdk::Python => {
            let mut c = Command::new(venv_python());
            c.arg(peers.join("refusal_client.py"));
            c
        }
        Sdk::TypeScript => {
            let mut c = Command::new(node_bin());
            c.env("NODE_PATH", peers_dir().join("node/node_modules"))
                .arg(peers.join("refusal_client.cjs"));
            c
        }
    };
    cmd.arg(url).arg(transport).arg(cases.to_string());
    cmd
}

/// The MCP conformance suite's runner (`@modelcontextprotocol/conformance`).
pub fn conformance_script() -> PathBuf {
    node_module("@modelcontextprotocol/conformance/dist/index.js")
}
