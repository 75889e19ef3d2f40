//! The processes of a bench run: the upstream MCP server, the daemon under test (its config
//! generated per scenario), and the load client, run directly or as a mediated agent.

use std::io::{BufRead, BufReader, Lines, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::json::{self, Json};

/// What a run needs from the build and the host.
pub struct Env {
    pub gateway: PathBuf,
    pub client: PathBuf,
    /// target/bench/run-PID: every scenario's files; removed at the end.
    pub work: PathBuf,
    /// The upstream's PKI (from `mcp-bench-client pki`).
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The agent cgroup of mediated clients, relative to the cgroup2 mount.
    pub cgroup: String,
    pub run_id: String,
    /// The process in the middle (relay or daemon) runs under valgrind's callgrind, its
    /// instrumentation off until the client turns it on (`--instructions`).
    pub callgrind: bool,
    /// `listener.workers` for every daemon, when not its default (`--workers`).
    pub workers: Option<usize>,
    /// The worker count the daemons said they started (their log), for the JSON: the
    /// default differs between versions and machines.
    pub workers_seen: std::cell::Cell<Option<u32>>,
}

impl Env {
    /// `bins`: the binaries' directory, when not target/release.
    pub fn new(target: &Path, bins: Option<&Path>) -> Result<Env> {
        let release = bins.map_or_else(|| target.join("release"), Path::to_path_buf);
        let (gateway, client) = (
            release.join("mcp-gateway"),
            release.join("mcp-bench-client"),
        );
        for bin in [&gateway, &client] {
            if !bin.exists() {
                bail!(
                    "{} is missing: build it with `cargo build --release -p gateway-daemon -p \
                     gateway-tests --bins`",
                    bin.display()
                );
            }
        }
        let run_id = format!("bench-{}", std::process::id());
        let work = target.join("bench").join(&run_id);
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let pki = work.join("pki");
        let out = Command::new(&client)
            .args(["pki", "--dir"])
            .arg(&pki)
            .output()
            .context("running mcp-bench-client pki")?;
        if !out.status.success() {
            bail!(
                "mcp-bench-client pki failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Env {
            gateway,
            client,
            ca: pki.join("ca.pem"),
            cert: pki.join("server.pem"),
            key: pki.join("server.key"),
            cgroup: format!("mcp-gateway-bench/{run_id}"),
            work,
            run_id,
            callgrind: false,
            workers: None,
            workers_seen: std::cell::Cell::new(None),
        })
    }

    /// `program`, or with `callgrind` valgrind running it, counting into `dir/callgrind.out`
    /// once the client turns the instrumentation on.
    fn middle(&self, program: &Path, dir: &Path) -> Command {
        if !self.callgrind {
            return Command::new(program);
        }
        let mut c = Command::new("valgrind");
        // The cache simulation tells why a call's time is not in proportion to its
        // instructions: what misses the first-level caches. It slows the process in the
        // middle some four times more, so each wake-up finds more calls waiting: the L4
        // relay, whose few instructions a call are mostly per wake-up, counts a third
        // fewer with it; the HTTP relay and the gateway within 1 %.
        c.args(["--tool=callgrind", "--instr-atstart=no", "--cache-sim=yes"])
            .arg(format!(
                "--callgrind-out-file={}",
                dir.join(CALLGRIND_OUT).display()
            ))
            .arg(program);
        c
    }

    /// Removes the run's agent cgroup, and its files unless `keep`.
    pub fn cleanup(&self, keep: bool) {
        if keep {
            eprintln!("bench: kept {}", self.work.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.work);
        }
        if let Ok(mount) = cgroup2_mount() {
            let _ = std::fs::remove_dir(mount.join(&self.cgroup));
            let _ = std::fs::remove_dir(mount.join("mcp-gateway-bench"));
        }
    }
}

/// A child killed when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listens on right now.
/// A loopback port free on both families, below the kernel's ephemeral range: the daemon
/// refuses listener ports the kernel could hand out by autobind, and a server's port taken
/// from that range could meanwhile become some connection's source port.
pub fn free_port() -> Result<u16> {
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(997);
    for _ in 0..COUNT {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (FIRST + start.wrapping_add(n) % COUNT) as u16;
        let v6_free = match std::net::TcpListener::bind(("::1", port)) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::AddrNotAvailable,
        };
        if v6_free && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free loopback port in {FIRST}..{}", FIRST + COUNT)
}

/// `mcp-bench-client serve` on 127.0.0.1:`port` (HTTPS with the run's certificate if `tls`).
pub fn upstream(env: &Env, dir: &Path, port: u16, tls: bool) -> Result<Proc> {
    let mut cmd = Command::new(&env.client);
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")]);
    if tls {
        cmd.arg("--tls-cert")
            .arg(&env.cert)
            .arg("--tls-key")
            .arg(&env.key);
    }
    listening(
        cmd,
        &dir.join("upstream.stderr"),
        port,
        "the upstream (mcp-bench-client serve)",
    )
}

/// `mcp-bench-client relay` from 127.0.0.1:`port` to the upstream at 127.0.0.1:`to`; with
/// `http`, the HTTP/1.1 reverse proxy instead of the byte copy.
pub fn relay(env: &Env, dir: &Path, port: u16, to: u16, http: bool) -> Result<Proc> {
    let mut cmd = env.middle(&env.client, dir);
    cmd.args(["relay", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--to", &format!("127.0.0.1:{to}")])
        .args(http.then_some("--http"));
    listening(
        cmd,
        &dir.join("relay.stderr"),
        port,
        "the relay (mcp-bench-client relay)",
    )
}

/// Starts `cmd` (its stderr to `log`) and waits until it accepts on 127.0.0.1:`port`.
fn listening(mut cmd: Command, log: &Path, port: u16, what: &str) -> Result<Proc> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let mut p = Proc { child };
    // Under valgrind a start takes seconds.
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = p.child.try_wait()? {
            bail!(
                "{what} exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on port {port} within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(p)
}

/// How the daemon under test is configured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GatewayConfig {
    /// The least the gateway does for an MCP call: intercept, identity, parse, the audit
    /// ledger without fsync; policy in audit mode, no redaction, no pins.
    Plain,
    /// Policy enforced (principal by cgroup and executable, a deny rule and an allow rule
    /// with an argument schema), redaction both ways, pins (tofu), the ledger with this sync.
    Full(&'static str),
    /// As `Plain`, and every record also sent to journald (`journald = "auto"`, the
    /// default, on a host where systemd runs), here to a stand-in that only receives.
    Journald,
}

pub struct Daemon {
    pub proc: Proc,
    pub dir: PathBuf,
    pub instance: String,
    /// The stand-in for journald, while the daemon sends to it.
    journal: Option<JournalSink>,
}

/// Where journald takes entries; the daemon sends there when the socket exists.
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// A stand-in for journald: receives the daemon's entries at journald's socket and drops
/// them, on a thread of xtask's (not counted as the daemon's CPU). Its socket is removed
/// when it is dropped, if it is still the one it bound.
struct JournalSink {
    /// The socket file it bound (device, inode).
    bound: (u64, u64),
    made_dir: bool,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl JournalSink {
    fn bind() -> Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let path = Path::new(JOURNAL_SOCKET);
        if path.exists() {
            // A socket nothing listens on is one an interrupted bench left: taken back.
            match UnixDatagram::unbound()?.connect(path) {
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    std::fs::remove_file(path)
                        .with_context(|| format!("removing the stale socket {JOURNAL_SOCKET}"))?;
                }
                Ok(()) => bail!(
                    "a journald listens at {JOURNAL_SOCKET} here: this scenario stands in for \
                     one and needs the path free (leave it out with --only)"
                ),
                Err(e) => bail!("{JOURNAL_SOCKET} is there and cannot be told apart: {e}"),
            }
        }
        let dir = path.parent().expect("the socket has a directory");
        let made_dir = !dir.exists();
        std::fs::create_dir_all(dir)?;
        let socket = UnixDatagram::bind(path).context("binding the journald stand-in")?;
        let meta = std::fs::metadata(path)?;
        // From here on a failure removes what was bound (the sink's Drop).
        let mut sink = JournalSink {
            bound: (meta.dev(), meta.ino()),
            made_dir,
            stop: Default::default(),
            received: Default::default(),
            thread: None,
        };
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        // As journald does: a deep queue, so the daemon's sends do not wait on this thread.
        let size: libc::c_int = 8 << 20;
        // SAFETY: a valid socket, and an option value of the size given.
        let set = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if set != 0 {
            bail!(
                "sizing the journald stand-in's queue (SO_RCVBUFFORCE needs root or \
                 CAP_NET_ADMIN): {}",
                std::io::Error::last_os_error()
            );
        }
        let (stop, received) = (sink.stop.clone(), sink.received.clone());
        sink.thread = Some(std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 17];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if socket.recv(&mut buf).is_ok() {
                    received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
        Ok(sink)
    }

    /// Entries received so far.
    fn received(&self) -> u64 {
        self.received.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for JournalSink {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let path = Path::new(JOURNAL_SOCKET);
        if std::fs::metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == self.bound) {
            let _ = std::fs::remove_file(path);
        }
        if self.made_dir {
            let dir = path.parent().expect("a directory");
            let _ = std::fs::remove_dir(dir);
            let _ = dir.parent().map(std::fs::remove_dir);
        }
    }
}

impl Daemon {
    pub fn start(
        env: &Env,
        dir: &Path,
        key: &str,
        upstream_port: u16,
        tls: bool,
        stdio: bool,
        config: GatewayConfig,
    ) -> Result<Daemon> {
        let instance = format!("{}-{key}", env.run_id);
        let (l4, l6) = (free_port()?, free_port()?);
        let d = |name: &str| dir.join(name).display().to_string();
        let server = if stdio {
            "[[server]]\nname = \"bench\"\ncommand = [\"*/mcp-bench-client\", \"stdio-serve\"]\n"
                .to_string()
        } else if tls {
            format!("[[server]]\nname = \"bench\"\nhost = \"localhost\"\nport = {upstream_port}\n")
        } else {
            format!("[[server]]\nname = \"bench\"\naddress = \"127.0.0.1:{upstream_port}\"\n")
        };
        let tls_extra = if tls {
            format!("extra_roots = [{:?}]\n", env.ca.display().to_string())
        } else {
            String::new()
        };
        let plain = || {
            (
                "none",
                "off",
                "off",
                "[policy]\nmode = \"audit\"\n".to_string(),
            )
        };
        let (sync, redact, pins, policy) = match config {
            GatewayConfig::Plain | GatewayConfig::Journald => plain(),
            GatewayConfig::Full(sync) => (
                sync,
                "redact",
                "tofu",
                format!(
                    "[policy]\nmode = \"enforce\"\n\
                     [[principal]]\nname = \"bench\"\ncgroup = [\"/{cgroup}\"]\n\
                     exe = [\"*/mcp-bench-client\"]\n\
                     [[rule]]\nprincipal = \"*\"\nserver = \"*\"\ntools = [\"delete_*\", \
                     \"drop_*\"]\naction = \"deny\"\n\
                     [[rule]]\nprincipal = \"bench\"\nserver = \"bench\"\ntools = [\"echo\"]\n\
                     action = \"allow\"\narguments = {{ type = \"object\", required = \
                     [\"text\"], properties = {{ text = {{ type = \"string\", maxLength = \
                     65536 }} }} }}\n",
                    cgroup = env.cgroup
                ),
            ),
        };
        let text = format!(
            "[listener]\nipv4 = \"127.0.0.1:{l4}\"\nipv6 = \"[::1]:{l6}\"\n{workers}\
             [agents]\ncgroups = [{cgroup:?}]\n\
             [scope]\nall_tcp = false\nports = [{upstream_port}]\n\
             [intercept]\ninstance = {instance:?}\n\
             [tls]\nca_cert = {ca_cert:?}\nca_key = {ca_key:?}\n{tls_extra}\
             [admin]\nsocket = {admin:?}\n[stdio]\nsocket = {stdio_socket:?}\n\
             [pins]\npath = {pins_path:?}\nmode = \"{pins}\"\n\
             [audit]\npath = {audit:?}\nkey = {audit_key:?}\nsync = \"{sync}\"\n\
             journald = \"{journald}\"\n\
             [redact]\nmode_responses = \"{redact}\"\nmode_requests = \"{redact}\"\n\
             {server}{policy}",
            cgroup = env.cgroup,
            workers = env
                .workers
                .map_or_else(String::new, |w| format!("workers = {w}\n")),
            ca_cert = d("ca.pem"),
            ca_key = d("ca.key"),
            admin = d("admin.sock"),
            stdio_socket = d("stdio.sock"),
            pins_path = d("pins.json"),
            audit = d("audit.jsonl"),
            audit_key = d("audit.key"),
            journald = if config == GatewayConfig::Journald {
                "auto"
            } else {
                "off"
            },
        );
        let config_path = dir.join("gateway.toml");
        std::fs::write(&config_path, text)?;

        // Bound before the daemon starts: "auto" looks for the socket at its start.
        let journal = (config == GatewayConfig::Journald)
            .then(JournalSink::bind)
            .transpose()?;
        let notify = dir.join("notify.sock");
        let _ = std::fs::remove_file(&notify);
        let sock = UnixDatagram::bind(&notify).context("binding the notify socket")?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let log = dir.join("daemon.stderr");
        let child = env
            .middle(&env.gateway, dir)
            .args(["run", "--config"])
            .arg(&config_path)
            .env("NOTIFY_SOCKET", &notify)
            // The service's default level, whatever the caller's environment says.
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting mcp-gateway run")?;
        let mut proc = Proc { child };
        // Under valgrind a start takes tens of seconds.
        let ready_within = Duration::from_secs(if env.callgrind { 300 } else { 30 });
        let deadline = Instant::now() + ready_within;
        let mut buf = [0u8; 512];
        loop {
            if let Ok(n) = sock.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
                    break;
                }
            }
            if let Some(status) = proc.child.try_wait()? {
                bail!(
                    "mcp-gateway exited before it was ready ({status}):\n{}",
                    tail(&log)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "mcp-gateway not ready after {} s:\n{}",
                    ready_within.as_secs(),
                    tail(&log)
                );
            }
        }
        Ok(Daemon {
            proc,
            dir: dir.to_path_buf(),
            instance,
            journal,
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn log(&self) -> String {
        tail(&self.dir.join("daemon.stderr"))
    }

    /// The worker count its log says it started (it starts them after READY, so ask once
    /// it has served).
    pub fn workers(&self) -> Option<u32> {
        workers_started(&std::fs::read_to_string(self.dir.join("daemon.stderr")).ok()?)
    }

    /// SIGTERM and wait (its programs stay attached), then remove its pins (detaching them).
    /// A daemon that was to send its records to journald and sent none fails its column.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()?;
        if let Some(sink) = &self.journal {
            if sink.received() == 0 {
                bail!("the journald stand-in received no entry: the daemon sent nothing to it");
            }
        }
        Ok(())
    }

    fn shutdown(&mut self) -> Result<()> {
        if self.proc.child.try_wait()?.is_some() {
            return Ok(());
        }
        // SAFETY: kill with the pid of a child we have not reaped.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        let result = loop {
            if let Some(status) = self.proc.child.try_wait()? {
                break if status.success() {
                    Ok(())
                } else {
                    Err(anyhow::anyhow!(
                        "mcp-gateway exited with {status}:\n{}",
                        self.log()
                    ))
                };
            }
            if Instant::now() > deadline {
                let _ = self.proc.child.kill();
                let _ = self.proc.child.wait();
                break Err(anyhow::anyhow!("mcp-gateway ignored SIGTERM for 60 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = std::fs::remove_dir_all(Path::new("/sys/fs/bpf/mcp-gateway").join(&self.instance));
        result
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// The last lines of a log file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, field: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// How the load client reaches the upstream: directly, or as an agent of the daemon.
pub struct Client<'a> {
    pub env: &'a Env,
    pub mediated: bool,
    /// The daemon's config, for `exec --config` (its stdio servers are then mediated).
    pub config: Option<PathBuf>,
    pub args: Vec<String>,
}

impl Client<'_> {
    fn command(&self, args: &[String]) -> Command {
        let mut cmd = if self.mediated {
            let mut c = Command::new(&self.env.gateway);
            c.arg("exec");
            if let Some(config) = &self.config {
                c.arg("--config").arg(config);
            }
            c.args(["--cgroup", &self.env.cgroup, "--"])
                .arg(&self.env.client);
            c
        } else {
            Command::new(&self.env.client)
        };
        cmd.args(&self.args).args(args);
        cmd
    }

    /// `load`: calls on `connections` kept-alive sessions for `seconds` after `warmup`
    /// untimed calls each; its JSON line.
    pub fn load(
        &self,
        connections: usize,
        seconds: f64,
        warmup: usize,
        extra: &[&str],
    ) -> Result<Json> {
        let (c, s, w) = (
            connections.to_string(),
            seconds.to_string(),
            warmup.to_string(),
        );
        let mut args = vec!["load", "--connections", &c, "--seconds", &s, "--warmup", &w];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// Runs one client command to its end; its JSON line.
    pub fn run(&self, args: &[&str]) -> Result<Json> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let out = self
            .command(&args)
            .stdin(Stdio::null())
            .output()
            .context("running mcp-bench-client")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "mcp-bench-client {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v = json::parse(stdout.trim())
            .with_context(|| format!("mcp-bench-client printed {stdout:?}"))?;
        if v.get("errors").num().unwrap_or(0.0) > 0.0 {
            bail!(
                "mcp-bench-client {}: {} errors, the first: {}",
                args.join(" "),
                v.get("errors").num().unwrap_or(0.0),
                v.get("first_error").str().unwrap_or("?")
            );
        }
        Ok(v)
    }

    /// Starts a client command that talks line by line (`sessions`).
    pub fn spawn(&self, args: &[&str]) -> Result<Interactive> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut child = self
            .command(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting mcp-bench-client")?;
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        Ok(Interactive {
            proc: Proc { child },
            stdin,
            lines,
        })
    }
}

pub struct Interactive {
    proc: Proc,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<std::process::ChildStdout>>,
}

impl Interactive {
    pub fn next(&mut self) -> Result<Json> {
        match self.lines.next() {
            Some(line) => json::parse(line?.trim()),
            None => {
                let _ = self.proc.child.wait();
                let mut err = String::new();
                if let Some(mut e) = self.proc.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                bail!("mcp-bench-client ended early: {err}")
            }
        }
    }

    /// Tells it to let go, and waits for it to end.
    pub fn finish(mut self) -> Result<()> {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"\n");
        }
        self.next()?;
        let status = self.proc.child.wait()?;
        if !status.success() {
            bail!("mcp-bench-client exited with {status}");
        }
        Ok(())
    }
}

pub fn cgroup2_mount() -> Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            if post.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            Some(PathBuf::from(pre.split_whitespace().nth(4)?))
        })
        .context("no cgroup2 mount in /proc/self/mountinfo")
}

/// Where a middle process under callgrind counts, in its scenario's directory.
const CALLGRIND_OUT: &str = "callgrind.out";

/// What callgrind counted of one event: in all, and in SHA-256's portable code.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Count {
    pub total: f64,
    pub sha: f64,
}

impl Count {
    /// The count without SHA-256's portable code.
    pub fn own(self) -> f64 {
        self.total - self.sha
    }
}

/// What callgrind counted in one dump: instructions, and misses of the simulated
/// first-level instruction and data caches (reads and writes), with those caches' sizes
/// in bytes as valgrind took them from this CPU.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    pub instructions: Count,
    pub i1_misses: Count,
    pub d1_misses: Count,
    pub i1_bytes: f64,
    pub d1_bytes: f64,
}

/// The events `callgrind_counts` asks `callgrind_annotate` for, in its columns' order.
const EVENTS: &str = "Ir,I1mr,D1mr,D1mw";

/// What callgrind counted in the middle process `pid` of the scenario in `dir` since its
/// last dump, which this is the `part`th of (from 1). Valgrind's CPU has no SHA
/// extensions, so hashing takes the portable path there, many times the instructions
/// (and code) it takes on this machine's CPU: that part is counted apart, to be left out
/// where columns are compared.
pub fn callgrind_counts(pid: u32, dir: &Path, part: u32) -> Result<Counts> {
    let out = Command::new("callgrind_control")
        .args(["-d", &pid.to_string()])
        .output()
        .context("running callgrind_control (from valgrind)")?;
    if !out.status.success() {
        bail!(
            "callgrind_control -d {pid} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Each dump is a part of its own, numbered from 1, counted from the one before.
    let file = dir.join(format!("{CALLGRIND_OUT}.{part}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !file.exists() {
        if Instant::now() > deadline {
            bail!("callgrind wrote no {} within 30 s", file.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = Command::new("callgrind_annotate")
        .arg("--threshold=100")
        .arg(format!("--show={EVENTS}"))
        .arg(&file)
        .output()
        .context("running callgrind_annotate (from valgrind)")?;
    if !out.status.success() {
        bail!(
            "callgrind_annotate {} failed: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut counts = parse_annotated(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("reading callgrind_annotate {}", file.display()))?;
    let head =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    (counts.i1_bytes, counts.d1_bytes) = cache_sizes(&head)
        .with_context(|| format!("no simulated cache sizes in {}", file.display()))?;
    Ok(counts)
}

/// The sizes of the simulated first-level caches, from a callgrind output file's
/// `desc: I1 cache: 32768 B, 64 B, 8-way associative` lines.
fn cache_sizes(file: &str) -> Option<(f64, f64)> {
    let size = |name: &str| {
        file.lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse::<f64>()
            .ok()
    };
    Some((size("desc: I1 cache:")?, size("desc: D1 cache:")?))
}

/// The numbers of one line of `callgrind_annotate --show=EVENTS`, before its
/// `file:function`: `1,234 (12.3%)` per event, `.` for none, the percentage split in two
/// where it is padded (`( 7.1%)`).
fn line_counts(line: &str) -> Option<[f64; 4]> {
    let mut counts = Vec::with_capacity(4);
    for token in line.split_whitespace() {
        if token.contains(':') || token == "PROGRAM" {
            break;
        }
        if token == "." {
            counts.push(0.0);
        } else if let Ok(n) = token.replace(',', "").parse::<f64>() {
            counts.push(n);
        }
    }
    counts.try_into().ok()
}

/// The program's totals and SHA-256's share from `callgrind_annotate --show=EVENTS`.
fn parse_annotated(text: &str) -> Result<Counts> {
    let total = text
        .lines()
        .find(|l| l.contains("PROGRAM TOTALS"))
        .and_then(line_counts)
        .context("no PROGRAM TOTALS with four counts")?;
    let mut sha = [0.0; 4];
    // Every function of sha2's SHA-256 by its own count: with LTO the portable
    // compression is inlined into `compress256`, without it it is `soft::...`. A line
    // not read would leave its share in every "without SHA-256" count: an error.
    for line in text.lines().filter(|l| l.contains("sha2::sha256::")) {
        let counts = line_counts(line).with_context(|| format!("not four counts: {line}"))?;
        for (s, c) in sha.iter_mut().zip(counts) {
            *s += c;
        }
    }
    let count = |i: usize| Count {
        total: total[i],
        sha: sha[i],
    };
    Ok(Counts {
        instructions: count(0),
        i1_misses: count(1),
        d1_misses: Count {
            total: total[2] + total[3],
            sha: sha[2] + sha[3],
        },
        ..Counts::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as `callgrind_annotate --show=Ir,I1mr,D1mr,D1mw` printed them for the daemon
    /// (2026-12-05): padded percentages, `.` for none, a `file:function` without `???`.
    const ANNOTATED: &str = "\
Events shown:     Ir I1mr D1mr D1mw
Ir                   I1mr               D1mr             D1mw             
139,121,813 (100.0%) 3,624,743 (100.0%) 741,068 (100.0%) 760,699 (100.0%)  PROGRAM TOTALS
Ir                  I1mr             D1mr            D1mw              file:function
67,328,567 (48.40%) 256,036 ( 7.06%)     18 ( 0.00%)     756 ( 0.10%)  ???:sha2::sha256::compress256 [/x/mcp-gateway]
    54,760 ( 0.04%)   4,363 ( 0.12%)  1,552 ( 0.21%)       .           ???:gateway_daemon::http::serve::{{closure}} [/x/mcp-gateway]
     9,350 ( 0.01%)       .               .                .           ./nptl/../nptl/descr.h:__pthread_enable_asynccancel
     1,000 ( 0.00%)      10 ( 0.00%)      .                2 ( 0.00%)  ???:sha2::sha256::x86::compress [/x/mcp-gateway]
       500 ( 0.00%)       0               .                .           ???:<sha2::sha256::Sha256VarCore as digest::core_api::UpdateCore>::update_blocks [/x/mcp-gateway]
";

    #[test]
    fn annotated_counts_read_every_event_and_sha256_apart() {
        let c = parse_annotated(ANNOTATED).unwrap();
        assert_eq!(
            c.instructions,
            Count {
                total: 139_121_813.0,
                sha: 67_330_067.0
            }
        );
        assert_eq!(
            c.i1_misses,
            Count {
                total: 3_624_743.0,
                sha: 256_046.0
            }
        );
        assert_eq!(
            c.d1_misses,
            Count {
                total: 741_068.0 + 760_699.0,
                sha: 18.0 + 756.0 + 2.0
            }
        );
        assert_eq!(c.i1_misses.own(), 3_624_743.0 - 256_046.0);
    }

    #[test]
    fn annotated_output_without_four_totals_is_an_error() {
        assert!(parse_annotated("139,121,813 (100.0%)  PROGRAM TOTALS\n").is_err());
        assert!(parse_annotated("Ir\n").is_err());
    }

    #[test]
    fn a_sha256_line_not_read_is_an_error_not_a_smaller_share() {
        let text = format!("{ANNOTATED}  1,000 (0.00%)  ???:sha2::sha256::soft::compress\n");
        assert!(parse_annotated(&text).is_err());
    }

    #[test]
    fn cache_sizes_come_from_the_output_files_description() {
        let head = "desc: I1 cache: 32768 B, 64 B, 8-way associative\n\
                    desc: D1 cache: 49152 B, 64 B, 12-way associative\n\
                    desc: LL cache: 268435456 B, 64 B, direct-mapped\n";
        assert_eq!(cache_sizes(head), Some((32768.0, 49152.0)));
        assert_eq!(cache_sizes("desc: I1 cache: 32768 B\n"), None);
    }
}

/// The worker count a daemon's log says it started (`connection workers started
/// workers=N`, at info).
fn workers_started(log: &str) -> Option<u32> {
    log.lines()
        .find(|l| l.contains("connection workers started"))?
        .split_once("workers=")?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod workers_tests {
    #[test]
    fn the_worker_count_is_read_from_the_daemons_log() {
        let log =
            "2026-12-06T03:41:44.44Z  INFO mcp_gateway: connection workers started workers=2\n";
        assert_eq!(super::workers_started(log), Some(2));
        assert_eq!(super::workers_started("INFO mcp_gateway: ready\n"), None);
    }
}
