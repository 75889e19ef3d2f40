//! `mcp-bench-client`: the load client of `cargo xtask bench`. It speaks MCP Streamable HTTP
//! (protocol 2025-11-25, with sessions) over a raw hyper HTTP/1.1 connection, plain or TLS,
//! so that what is measured is the path to the server and not an SDK's client. Run it through
//! `mcp-gateway exec --cgroup …` and it is a mediated agent; run it as is and it goes direct.
//!
//! Every connection does what an MCP client does: `initialize`, `notifications/initialized`
//! (with the `Mcp-Session-Id` it was given and the negotiated `MCP-Protocol-Version`),
//! `tools/list`, then `tools/call` of the server's `echo` tool, each response read whole (a
//! JSON body or an SSE stream) and checked to carry the result.
//!
//! Commands (each prints one JSON object per line on stdout):
//!
//! - `load --connections C --seconds S --warmup N`: C kept-alive connections, one session
//!   each, calling in a loop for S seconds after N warm-up calls per connection (at most one
//!   second of them): calls, calls/s,
//!   latency percentiles, and the CPU seconds the `--watch` processes spent in the timed window
//!   (utime + stime from /proc/PID/stat).
//! - `connect --count N --max-seconds S`: N new connections one after the other (fewer if S
//!   seconds run out first), each timed from `connect()` to the end of the `initialize`
//!   response (then its session is deleted, untimed).
//! - `sessions --count N --connections C`: opens N sessions over C connections, prints
//!   `{"phase":"open",…}`, keeps them until a line (or EOF) on stdin, then ends them (DELETE)
//!   and prints `{"phase":"done"}`.
//! - `pki --dir DIR`: a test CA (`DIR/ca.pem`) and a server certificate for `localhost` and
//!   127.0.0.1 (`DIR/server.pem`, `DIR/server.key`).
//! - `serve --listen ADDR [--tls-cert PEM --tls-key PEM]`: the upstream of the bench, an rmcp
//!   Streamable HTTP server at `/mcp` with one tool, `echo {text}`. It is rmcp-test-server's
//!   echo with TCP_NODELAY on its sockets: rmcp writes an SSE response in several pieces, and
//!   with Nagle on each `tools/call` would wait ~40 ms for the client's delayed ACK, for direct
//!   and mediated clients alike, hiding what the gateway costs. It prints `listening on ADDR`
//!   on stderr when bound, and stops on SIGINT.
//! - `relay --listen ADDR --to ADDR`: a plain L4 relay (tokio `copy_bidirectional`,
//!   TCP_NODELAY both sides, every core): the floor of any userspace proxy, which the bench's
//!   `relay` column measures the gateway against. Prints `listening on ADDR` on stderr.
//!   With `--http` it is instead a minimal HTTP/1.1 reverse proxy (hyper on both sides, each
//!   request and response forwarded as it streams, nothing read or recorded): what
//!   terminating HTTP alone costs, the `http-relay` column.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use hyper::body::{Body, Bytes, Incoming};
use hyper::client::conn::http1;
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

const PROTOCOL_VERSION: &str = "2025-11-25";
const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";

#[derive(Parser)]
#[command(
    name = "mcp-bench-client",
    about = "MCP load client for `cargo xtask bench`"
)]
struct Cli {
    /// The server's address (what the agent dials).
    #[arg(long, global = true, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// The MCP endpoint's path.
    #[arg(long, global = true, default_value = "/mcp")]
    path: String,
    /// Speak TLS, with this server name (SNI, and the Host header).
    #[arg(long, global = true)]
    tls_name: Option<String>,
    /// A CA certificate (PEM) to trust for TLS; repeatable.
    #[arg(long, global = true)]
    ca: Vec<PathBuf>,
    /// A process whose CPU time (utime + stime) to report for the timed window; repeatable.
    #[arg(long, global = true)]
    watch: Vec<u32>,
    /// Length of the text each `echo` call sends (and gets back).
    #[arg(long, global = true, default_value_t = 128)]
    text_bytes: usize,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Calls `echo` in a loop on kept-alive connections.
    Load {
        #[arg(long, default_value_t = 1)]
        connections: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Untimed calls per connection first (for at most one second).
        #[arg(long, default_value_t = 100)]
        warmup: usize,
        /// A process running under valgrind's callgrind (started with
        /// `--instr-atstart=no`): its instrumentation is on for the timed window only, so
        /// its counts are of the timed calls and nothing else.
        #[arg(long)]
        callgrind: Option<u32>,
    },
    /// Times new connections: connect + initialize.
    Connect {
        #[arg(long, default_value_t = 200)]
        count: usize,
        /// Stop early when this much time has passed (at least one connection is made).
        #[arg(long, default_value_t = 10.0)]
        max_seconds: f64,
        /// As `load --callgrind`: counting is on from the first connect to the last close.
        #[arg(long)]
        callgrind: Option<u32>,
    },
    /// Opens many sessions and holds them until stdin says otherwise.
    Sessions {
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 8)]
        connections: usize,
    },
    /// Writes a test CA and a server certificate for localhost into a directory.
    Pki {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Relays TCP connections from `listen` to `to`, byte for byte.
    Relay {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        to: SocketAddr,
        /// Terminate HTTP/1.1 on both sides (hyper) instead of copying bytes.
        #[arg(long)]
        http: bool,
    },
    /// Serves MCP (an `echo` tool) over stdin/stdout: the bench's stdio server.
    StdioServe,
    /// Starts CMD as a stdio MCP server and calls `echo` on it in a loop; then times
    /// starting a program.
    StdioLoad {
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value_t = 100)]
        warmup: usize,
        /// How many times to start `/bin/true`, timed.
        #[arg(long, default_value_t = 200)]
        execs: usize,
        /// The server's command line, split at spaces (one argument, so that the client's
        /// own command line does not look like the server's to the gateway).
        #[arg(long)]
        server: String,
    },
    /// Serves MCP (an `echo` tool) at `/mcp`: the bench's upstream.
    Serve {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
}

#[path = "../bench/stdio.rs"]
mod stdio;

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Cmd::Pki { dir } = &cli.command {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let pki = gateway_tests::tls::TestPki::new(dir);
        let (cert, key) = pki.issue("server", &["localhost", "127.0.0.1"]);
        print_json(&json!({"ca": pki.ca_pem(), "cert": cert, "key": key}));
        return Ok(());
    }
    if let Cmd::Serve {
        listen,
        tls_cert,
        tls_key,
    } = &cli.command
    {
        // A server as servers are run: every core.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return rt.block_on(server::serve(
            *listen,
            tls_cert.as_deref().zip(tls_key.as_deref()),
        ));
    }
    match &cli.command {
        Cmd::StdioServe => return stdio::serve(),
        Cmd::StdioLoad {
            seconds,
            warmup,
            execs,
            server,
        } => {
            let cmd: Vec<String> = server.split_whitespace().map(str::to_string).collect();
            let v = stdio::load(
                &cmd,
                *seconds,
                *warmup,
                *execs,
                cli.text_bytes,
                &cli.watch,
                cpu_all,
                summary,
            )?;
            print_json(&v);
            return Ok(());
        }
        _ => {}
    }
    if let Cmd::Relay { listen, to, http } = &cli.command {
        // A proxy as proxies are run: every core.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return rt.block_on(relay(*listen, *to, *http));
    }
    // One thread: the client should cost the machine as little as it can, the same for every
    // scenario, and leave the cores to the server and the gateway.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    let target = Arc::new(Target::new(&cli)?);
    match cli.command {
        Cmd::Load {
            connections,
            seconds,
            warmup,
            callgrind,
        } => load(target, &cli.watch, connections, seconds, warmup, callgrind).await,
        Cmd::Connect {
            count,
            max_seconds,
            callgrind,
        } => connect_times(target, count, max_seconds, callgrind).await,
        Cmd::Sessions { count, connections } => sessions(target, count, connections).await,
        Cmd::Pki { .. }
        | Cmd::Serve { .. }
        | Cmd::Relay { .. }
        | Cmd::StdioServe
        | Cmd::StdioLoad { .. } => {
            unreachable!("handled before the runtime starts")
        }
    }
}

/// The plain L4 relay: each accepted connection is joined to a new one to `to`, byte for
/// byte, or (`http`) through [`http_relay`].
async fn relay(listen: SocketAddr, to: SocketAddr, http: bool) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    eprintln!("listening on {listen}");
    loop {
        let (mut agent, _) = listener.accept().await?;
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(to).await else {
                return;
            };
            let _ = agent.set_nodelay(true);
            let _ = server.set_nodelay(true);
            if http {
                http_relay(agent, server).await;
            } else {
                let _ = tokio::io::copy_bidirectional(&mut agent, &mut server).await;
            }
        });
    }
}

/// The least an HTTP-terminating proxy does: hyper parses each request from the agent,
/// writes it to the upstream connection, parses the response and writes it back, bodies
/// streamed frame by frame. No byte of a body is looked at and nothing is recorded, so the
/// difference between this and the gateway is the gateway's own work.
async fn http_relay(agent: TcpStream, server: TcpStream) {
    let Ok((send, conn)) = http1::handshake(TokioIo::new(server)).await else {
        return;
    };
    let send = Arc::new(tokio::sync::Mutex::new(send));
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let send = send.clone();
        // HTTP/1: one request at a time on the connection, so the lock is never contended.
        // The sender is ready again only once the upstream connection has seen the last
        // response through, which the task polls alongside: wait for that.
        async move {
            let mut send = send.lock().await;
            send.ready().await?;
            send.send_request(req).await
        }
    });
    let serve =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(agent), service);
    // Both connections driven by this one task, as the gateway drives them: no wake-up
    // crosses tasks on a call's path. The upstream's ends when the service, and with it the
    // sender, is dropped.
    let _ = tokio::join!(serve, conn);
}

fn print_json(v: &Value) {
    println!("{v}");
}

/// Where to connect and how.
struct Target {
    addr: SocketAddr,
    path: String,
    host: HeaderValue,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    text: String,
}

impl Target {
    fn new(cli: &Cli) -> Result<Target> {
        let tls = match &cli.tls_name {
            None => None,
            Some(name) => {
                let mut roots = RootCertStore::empty();
                for ca in &cli.ca {
                    for cert in CertificateDer::pem_file_iter(ca)
                        .with_context(|| format!("reading {}", ca.display()))?
                    {
                        roots
                            .add(
                                cert.with_context(|| format!("a certificate in {}", ca.display()))?,
                            )
                            .with_context(|| format!("adding {} to the roots", ca.display()))?;
                    }
                }
                if roots.is_empty() {
                    bail!("--tls-name needs at least one --ca to trust");
                }
                let mut config = ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                let server = ServerName::try_from(name.clone())
                    .with_context(|| format!("{name:?} is not a server name"))?;
                Some((TlsConnector::from(Arc::new(config)), server))
            }
        };
        let host = match &cli.tls_name {
            Some(name) => format!("{name}:{}", cli.addr.port()),
            None => cli.addr.to_string(),
        };
        // Prose, so that the redaction of a response has something to read and nothing to
        // replace (the response is then forwarded as the server sent it).
        const WORDS: &str = "the quick brown fox jumps over the lazy dog while the gateway \
                             reads every message it forwards ";
        let text: String = WORDS.chars().cycle().take(cli.text_bytes).collect();
        Ok(Target {
            addr: cli.addr,
            path: cli.path.clone(),
            host: HeaderValue::from_str(&host)?,
            tls,
            text,
        })
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// One HTTP/1.1 connection and the MCP session on it.
struct Conn {
    sender: http1::SendRequest<String>,
    session: Option<HeaderValue>,
    version: HeaderValue,
    next_id: u64,
}

struct Response {
    status: StatusCode,
    session: Option<HeaderValue>,
    sse: bool,
    body: Vec<u8>,
}

impl Conn {
    /// Opens the TCP (and TLS) connection. No request is sent yet.
    async fn open(t: &Target) -> Result<Conn> {
        let tcp = TcpStream::connect(t.addr)
            .await
            .with_context(|| format!("connecting to {}", t.addr))?;
        tcp.set_nodelay(true)?;
        let io: Box<dyn Io> = match &t.tls {
            None => Box::new(tcp),
            Some((connector, name)) => Box::new(
                connector
                    .connect(name.clone(), tcp)
                    .await
                    .context("TLS handshake")?,
            ),
        };
        let (sender, conn) = http1::handshake::<_, String>(TokioIo::new(io))
            .await
            .context("HTTP/1.1 handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            sender,
            session: None,
            version: HeaderValue::from_static(PROTOCOL_VERSION),
            next_id: 0,
        })
    }

    async fn send(&mut self, t: &Target, method: Method, body: String) -> Result<Response> {
        let mut req = Request::builder()
            .method(method)
            .uri(&t.path)
            .header(HOST, t.host.clone())
            .header(ACCEPT, "application/json, text/event-stream");
        if !body.is_empty() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        if let Some(sid) = &self.session {
            req = req
                .header(SESSION_HEADER, sid.clone())
                .header(VERSION_HEADER, self.version.clone());
        }
        let req = req.body(body)?;
        poll_fn(|cx| self.sender.poll_ready(cx))
            .await
            .context("the connection closed")?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .context("sending a request")?;
        let (parts, body) = resp.into_parts();
        let sse = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        Ok(Response {
            status: parts.status,
            session: parts.headers.get(SESSION_HEADER).cloned(),
            sse,
            body: read_body(body).await?,
        })
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// `initialize` (the session id and protocol version are taken from its response).
    async fn initialize(&mut self, t: &Target) -> Result<()> {
        let id = self.id();
        let msg = json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "mcp-bench-client", "version": env!("CARGO_PKG_VERSION")},
        }});
        let resp = self.send(t, Method::POST, msg.to_string()).await?;
        let result = rpc_result(&resp, id, "initialize")?;
        let version = result["protocolVersion"]
            .as_str()
            .context("initialize result without protocolVersion")?;
        self.version = HeaderValue::from_str(version)?;
        self.session = Some(
            resp.session
                .context("initialize response without an Mcp-Session-Id")?,
        );
        Ok(())
    }

    /// `notifications/initialized`, then `tools/list` (which must offer `echo`).
    async fn finish_handshake(&mut self, t: &Target) -> Result<()> {
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let resp = self.send(t, Method::POST, note.to_string()).await?;
        if resp.status != StatusCode::ACCEPTED {
            bail!(
                "notifications/initialized answered {}: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            );
        }
        let id = self.id();
        let list = json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"});
        let resp = self.send(t, Method::POST, list.to_string()).await?;
        let result = rpc_result(&resp, id, "tools/list")?;
        let tools = result["tools"].as_array().context("tools/list: no tools")?;
        if !tools.iter().any(|tool| tool["name"] == "echo") {
            bail!("the server lists no echo tool: {result}");
        }
        Ok(())
    }

    /// A new connection with a session, ready for calls.
    async fn ready(t: &Target) -> Result<Conn> {
        let mut c = Conn::open(t).await?;
        c.initialize(t).await?;
        c.finish_handshake(t).await?;
        Ok(c)
    }

    /// One `tools/call` of `echo`; checks the text came back.
    async fn call(&mut self, t: &Target) -> Result<()> {
        let id = self.id();
        // Built by hand: the client's own cost should stay small and constant.
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{}"}}}}}}"#,
            t.text
        );
        let resp = self.send(t, Method::POST, body).await?;
        if resp.status != StatusCode::OK
            || !contains(&resp.body, b"\"result\"")
            || !contains(&resp.body, t.text.as_bytes())
        {
            bail!(
                "tools/call {id} answered {}: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            );
        }
        Ok(())
    }

    /// Ends the session (DELETE), best effort.
    async fn delete(&mut self, t: &Target) {
        let _ = self.send(t, Method::DELETE, String::new()).await;
    }
}

async fn read_body(mut body: Incoming) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        if let Ok(data) = frame.context("reading a response body")?.into_data() {
            let data: Bytes = data;
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// The `result` of the JSON-RPC response with `id` in a JSON body or an SSE stream.
fn rpc_result(resp: &Response, id: u64, what: &str) -> Result<Value> {
    let text = String::from_utf8_lossy(&resp.body);
    if resp.status != StatusCode::OK {
        bail!("{what} answered {}: {text}", resp.status);
    }
    let messages: Vec<Value> = if resp.sse {
        text.split("\n\n")
            .filter_map(|event| {
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                serde_json::from_str(&data.join("\n")).ok()
            })
            .collect()
    } else {
        vec![serde_json::from_str(&text).with_context(|| format!("{what}: body {text:?}"))?]
    };
    let msg = messages
        .into_iter()
        .find(|m| m["id"] == id)
        .with_context(|| format!("{what}: no response with id {id} in {text:?}"))?;
    if msg.get("error").is_some() {
        bail!("{what} failed: {msg}");
    }
    Ok(msg["result"].clone())
}

/// CPU seconds (user + system) of a process so far.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (proc(5)).
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

fn cpu_all(pids: &[u32]) -> Result<Vec<f64>> {
    pids.iter().map(|&p| cpu_seconds(p)).collect()
}

/// Turns callgrind's instrumentation of `pid` on or off (`callgrind_control -i`).
fn instrument(pid: u32, on: bool) -> Result<()> {
    let out = std::process::Command::new("callgrind_control")
        .args(["-i", if on { "on" } else { "off" }, &pid.to_string()])
        .output()
        .context("running callgrind_control (from valgrind)")?;
    if !out.status.success() {
        bail!(
            "callgrind_control -i for pid {pid} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Percentiles (µs) of durations in ns.
fn summary(mut ns: Vec<u64>) -> Value {
    if ns.is_empty() {
        return json!({});
    }
    ns.sort_unstable();
    let at = |p: f64| {
        let i = ((p * ns.len() as f64).ceil() as usize).clamp(1, ns.len()) - 1;
        ns[i] as f64 / 1000.0
    };
    let mean = ns.iter().sum::<u64>() as f64 / ns.len() as f64 / 1000.0;
    json!({
        "n": ns.len(),
        "min_us": ns[0] as f64 / 1000.0,
        "p50_us": at(0.50),
        "p90_us": at(0.90),
        "p99_us": at(0.99),
        "max_us": *ns.last().unwrap() as f64 / 1000.0,
        "mean_us": mean,
    })
}

async fn load(
    t: Arc<Target>,
    watch: &[u32],
    connections: usize,
    seconds: f64,
    warmup: usize,
    callgrind: Option<u32>,
) -> Result<()> {
    let ready = Arc::new(Barrier::new(connections + 1));
    let go = Arc::new(Barrier::new(connections + 1));
    let deadline = Arc::new(std::sync::OnceLock::<tokio::time::Instant>::new());
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (t, ready, go, deadline) = (t.clone(), ready.clone(), go.clone(), deadline.clone());
        tasks.push(tokio::spawn(async move {
            let setup = async {
                let mut c = Conn::ready(&t).await?;
                let until = Instant::now() + Duration::from_secs(1);
                for _ in 0..warmup {
                    c.call(&t).await?;
                    if Instant::now() > until {
                        break;
                    }
                }
                anyhow::Ok(c)
            }
            .await;
            // Everyone reaches the barriers, even after a failure, so nobody waits forever.
            ready.wait().await;
            go.wait().await;
            let mut c = setup?;
            let end = *deadline.get().expect("set before go");
            let mut lat = Vec::with_capacity(64 * 1024);
            while tokio::time::Instant::now() < end {
                let t0 = Instant::now();
                c.call(&t).await?;
                lat.push(t0.elapsed().as_nanos() as u64);
            }
            anyhow::Ok((lat, c))
        }));
    }
    ready.wait().await;
    if let Some(pid) = callgrind {
        instrument(pid, true)?;
    }
    let cpu0 = cpu_all(watch)?;
    let start = Instant::now();
    deadline
        .set(tokio::time::Instant::now() + Duration::from_secs_f64(seconds))
        .expect("set once");
    go.wait().await;
    let mut all = Vec::new();
    let mut errors = Vec::new();
    let mut done = Vec::new();
    for task in tasks {
        match task.await {
            Ok(Ok((lat, c))) => {
                all.extend(lat);
                done.push(c);
            }
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(e) => errors.push(format!("a connection's task failed: {e}")),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu1 = cpu_all(watch);
    // Counting stops at the window's end whatever went wrong in it.
    if let Some(pid) = callgrind {
        instrument(pid, false)?;
    }
    let cpu1 = cpu1?;
    // Sessions end after the window: their DELETEs are not timed calls.
    for mut c in done {
        c.delete(&t).await;
    }
    let calls = all.len();
    let cpu: serde_json::Map<String, Value> = watch
        .iter()
        .zip(cpu0.iter().zip(&cpu1))
        .map(|(pid, (a, b))| (pid.to_string(), json!(b - a)))
        .collect();
    print_json(&json!({
        "connections": connections,
        "calls": calls,
        "seconds": elapsed,
        "calls_per_s": calls as f64 / elapsed,
        "latency": summary(all),
        "cpu_s": cpu,
        "errors": errors.len(),
        "first_error": errors.first(),
    }));
    Ok(())
}

async fn connect_times(
    t: Arc<Target>,
    count: usize,
    max_seconds: f64,
    callgrind: Option<u32>,
) -> Result<()> {
    let (mut total, mut opened_ns, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    if let Some(pid) = callgrind {
        instrument(pid, true)?;
    }
    let until = Instant::now() + Duration::from_secs_f64(max_seconds);
    for i in 0..count {
        if i > 0 && Instant::now() > until {
            break;
        }
        // Timed from connect() to the end of the initialize response; TCP (and TLS) alone
        // are reported too.
        let t0 = Instant::now();
        let result = async {
            let mut c = Conn::open(&t).await?;
            let opened = t0.elapsed();
            c.initialize(&t).await?;
            let done = t0.elapsed();
            c.delete(&t).await;
            anyhow::Ok((opened, done))
        }
        .await;
        match result {
            Ok((opened, done)) => {
                opened_ns.push(opened.as_nanos() as u64);
                total.push(done.as_nanos() as u64);
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if let Some(pid) = callgrind {
        // The middle process ends the last connection (its flow record) after the agent
        // has closed it: that is part of what a connection costs.
        tokio::time::sleep(Duration::from_millis(200)).await;
        instrument(pid, false)?;
    }
    print_json(&json!({
        "count": total.len(),
        "connect_initialize": summary(total),
        "connect": summary(opened_ns),
        "errors": errors.len(),
        "first_error": errors.first(),
    }));
    Ok(())
}

async fn sessions(t: Arc<Target>, count: usize, connections: usize) -> Result<()> {
    let connections = connections.clamp(1, count.max(1));
    let mut tasks = Vec::new();
    for k in 0..connections {
        let t = t.clone();
        let mine = (k..count).step_by(connections).count();
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(&t).await?;
            let mut sids = Vec::with_capacity(mine);
            for _ in 0..mine {
                c.session = None;
                c.initialize(&t).await?;
                let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
                let resp = c.send(&t, Method::POST, note.to_string()).await?;
                if resp.status != StatusCode::ACCEPTED {
                    bail!("notifications/initialized answered {}", resp.status);
                }
                sids.push(c.session.take().expect("initialize set it"));
            }
            anyhow::Ok((c, sids))
        }));
    }
    let t0 = Instant::now();
    let mut held = Vec::new();
    let mut errors = Vec::new();
    let mut open = 0;
    for task in tasks {
        match task.await? {
            Ok((c, sids)) => {
                open += sids.len();
                held.push((c, sids));
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    print_json(&json!({
        "phase": "open",
        "sessions": open,
        "seconds": t0.elapsed().as_secs_f64(),
        "errors": errors.len(),
        "first_error": errors.first(),
    }));
    // Hold every session (and its connection) until told to let go, then end each (DELETE).
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        let _ = tx.send(());
    });
    let _ = rx.await;
    let mut ends = Vec::new();
    for (mut c, sids) in held {
        let t = t.clone();
        ends.push(tokio::spawn(async move {
            for sid in sids {
                c.session = Some(sid);
                c.delete(&t).await;
            }
        }));
    }
    for end in ends {
        end.await?;
    }
    print_json(&json!({"phase": "done"}));
    Ok(())
}

/// The bench's upstream MCP server.
mod server {
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use anyhow::{Context, Result};
    use axum::serve::ListenerExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;
    use rmcp::handler::server::router::tool::ToolRouter;
    use rmcp::handler::server::wrapper::Parameters;
    use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    use rmcp::{schemars, tool, tool_handler, tool_router, ServerHandler};
    use tokio::net::TcpListener;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::ServerConfig as TlsConfig;
    use tokio_rustls::TlsAcceptor;

    #[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
    struct EchoArgs {
        /// Text to send back.
        text: String,
    }

    #[derive(Clone)]
    struct Bench {
        tool_router: ToolRouter<Self>,
    }

    #[tool_router]
    impl Bench {
        fn new() -> Self {
            Self {
                tool_router: Self::tool_router(),
            }
        }

        #[tool(description = "Returns the text it is given")]
        fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
            text
        }
    }

    #[tool_handler(router = self.tool_router)]
    impl ServerHandler for Bench {
        fn get_info(&self) -> ServerConfig {
            ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
                .with_server_info(Implementation::new(
                    "mcp-bench-server",
                    env!("CARGO_PKG_VERSION"),
                ))
        }
    }

    pub async fn serve(listen: SocketAddr, tls: Option<(&Path, &Path)>) -> Result<()> {
        let service: StreamableHttpService<Bench, LocalSessionManager> = StreamableHttpService::new(
            || Ok(Bench::new()),
            Default::default(),
            StreamableHttpServerConfig::default(),
        );
        let router = axum::Router::new().nest_service("/mcp", service);
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr()?;
        let Some((cert, key)) = tls else {
            eprintln!("mcp-bench-client serve: listening on {addr}");
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?;
            return Ok(());
        };
        let acceptor = acceptor(cert, key)?;
        eprintln!("mcp-bench-client serve: listening on {addr} (TLS)");
        let service = TowerToHyperService::new(router);
        let shutdown = tokio::signal::ctrl_c();
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        eprintln!("mcp-bench-client serve: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => return Ok(()),
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, service) = (acceptor.clone(), service.clone());
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        eprintln!("mcp-bench-client serve: TLS handshake with {peer}: {e}");
                        return;
                    }
                };
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    }

    fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("reading certificates from {}", cert.display()))?;
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("reading a private key from {}", key.display()))?;
        let mut config = TlsConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("the certificate and key do not make a TLS server identity")?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}
