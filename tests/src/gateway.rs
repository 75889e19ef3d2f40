//! One real `mcp-gateway run` per test, isolated from every other test: its own pin
//! instance, agent cgroup, listener ports and audit file.

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::config::{merge, parse, TestConfig};
use crate::{free_port, gateway_bin, require_privileges};

/// What a test wants of its daemon.
#[derive(Clone, Debug, Default)]
pub struct GatewayOptions {
    /// Destination ports in scope.
    pub ports: Vec<u16>,
    /// Agent uids (besides the test's own agent cgroup).
    pub users: Vec<u32>,
    /// Whether the test's agent cgroup is an agent cgroup (true unless selecting by uid only).
    pub no_cgroup: bool,
    /// What the test's config says, typed (servers, principals, rules, policy mode).
    pub config: TestConfig,
    /// More TOML merged into the config (e.g. `[http]` limits), over the typed part: its
    /// keys override, its `[[rule]]`s come after the typed rules (first match wins), and
    /// the policy is in audit mode unless it or `config` sets `[policy] mode`.
    pub extra: String,
    /// More keys of the `[audit]` table (e.g. `sync = "batch"`).
    pub audit: String,
    /// More keys of the `[tls]` table (the CA always lives in the test's directory).
    pub tls: String,
    /// Keys of the `[pins]` table; pins are off unless the test sets `mode`.
    pub pins: String,
    /// Raw keys of the `[scope]` table (e.g. the example config's), replacing the
    /// `ports = [...]` line made from `ports`.
    pub scope: Option<String>,
    /// More keys of the `[intercept]` table (e.g. `detach_on_stop = false`).
    pub intercept: String,
    /// More keys of the `[listener]` table (e.g. `max_connections_per_user = 100`).
    pub listener: String,
    /// The daemon's `RUST_LOG`; `debug` unless set.
    pub log: Option<String>,
}

pub struct Gateway {
    pub name: String,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub audit: PathBuf,
    /// Agent cgroup, relative to the cgroup2 mount.
    pub cgroup: String,
    pub instance: String,
    pub listen4: u16,
    pub listen6: u16,
    /// `RUST_LOG` for every launch.
    log: String,
    child: Option<Child>,
    /// The notify socket, kept as systemd keeps it: what the daemon stores (FDSTORE=1)
    /// arrives here.
    notify: Option<UnixDatagram>,
}

impl Gateway {
    /// Starts a daemon and waits until it reports READY=1 (programs attached).
    pub fn start(name: &str, opts: GatewayOptions) -> Self {
        require_privileges();
        static STALE: std::sync::Once = std::sync::Once::new();
        STALE.call_once(remove_stale_pins);
        let dir = tempfile::Builder::new()
            .prefix(&format!("mcp-gw-{name}-"))
            .tempdir()
            .expect("temp dir");
        let unique = format!("{name}-{}", std::process::id());
        let cgroup = format!("mcp-gateway-tests/{unique}");
        let instance = format!("t-{unique}");
        let (listen4, listen6) = (free_port(), free_port());
        let audit = dir.path().join("audit.jsonl");
        let config = dir.path().join("gateway.toml");
        std::fs::write(
            &config,
            Self::config_text(&opts, dir.path(), &cgroup, &instance, (listen4, listen6)),
        )
        .unwrap();
        let mut gw = Gateway {
            name: name.into(),
            dir,
            config,
            audit,
            cgroup,
            instance,
            listen4,
            listen6,
            log: opts.log.clone().unwrap_or_else(|| "debug".into()),
            child: None,
            notify: None,
        };
        gw.launch();
        gw
    }

    /// The daemon's config: the harness's keys (this test's ports, sockets and files), the
    /// defaults tests share (pins off, policy in audit mode, no journald), then what the
    /// test gave — typed (`opts.config`) and as TOML — each overriding what came before.
    fn config_text(
        opts: &GatewayOptions,
        dir: &Path,
        cgroup: &str,
        instance: &str,
        (listen4, listen6): (u16, u16),
    ) -> String {
        let file = |name: &str| toml::Value::String(dir.join(name).display().to_string());
        let mut t = toml::Table::new();
        let mut section = |name: &str, pairs: Vec<(&str, toml::Value)>| {
            let table: toml::Table = pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            t.insert(name.to_string(), toml::Value::Table(table));
        };
        let list = |items: Vec<toml::Value>| toml::Value::Array(items);
        section(
            "listener",
            vec![
                ("ipv4", format!("127.0.0.1:{listen4}").into()),
                ("ipv6", format!("[::1]:{listen6}").into()),
            ],
        );
        let cgroups = if opts.no_cgroup {
            vec![]
        } else {
            vec![cgroup.into()]
        };
        let users = opts
            .users
            .iter()
            .map(|u| toml::Value::Integer(*u as i64))
            .collect();
        section(
            "agents",
            vec![("cgroups", list(cgroups)), ("users", list(users))],
        );
        // Tests name the ports they mediate (the daemon's default is every port).
        let ports = opts
            .ports
            .iter()
            .map(|p| toml::Value::Integer(*p as i64))
            .collect();
        section(
            "scope",
            vec![("ports", list(ports)), ("all_tcp", false.into())],
        );
        section("intercept", vec![("instance", instance.into())]);
        section(
            "tls",
            vec![("ca_cert", file("ca.pem")), ("ca_key", file("ca.key"))],
        );
        section("admin", vec![("socket", file("admin.sock"))]);
        section("stdio", vec![("socket", file("stdio.sock"))]);
        // Tests about other stages call tools without pinning them first, see every
        // decision pass (recorded), and stay out of the host's journal.
        section(
            "pins",
            vec![("path", file("pins.json")), ("mode", "off".into())],
        );
        section(
            "audit",
            vec![
                ("path", file("audit.jsonl")),
                ("key", file("audit.key")),
                ("journald", "off".into()),
            ],
        );
        section("policy", vec![("mode", "audit".into())]);
        if let Some(scope) = &opts.scope {
            // The test's own [scope] replaces the harness's.
            t.remove("scope");
            merge(&mut t, parse("scope", &format!("[scope]\n{scope}")));
        }
        for (name, keys) in [
            ("listener", &opts.listener),
            ("intercept", &opts.intercept),
            ("tls", &opts.tls),
            ("pins", &opts.pins),
            ("audit", &opts.audit),
        ] {
            merge(&mut t, parse(name, &format!("[{name}]\n{keys}")));
        }
        merge(&mut t, opts.config.table());
        merge(&mut t, parse("extra", &opts.extra));
        toml::to_string(&t).expect("a config table always serialises")
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("daemon.stderr")
    }

    /// The daemon's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.stderr_path()).unwrap_or_default()
    }

    /// Starts the daemon process and waits for READY=1 on a notify socket, as systemd would.
    pub fn launch(&mut self) {
        self.launch_in(None)
    }

    /// As `launch`, with the daemon started inside `cgroup` (relative to the cgroup2 mount,
    /// created when missing), as systemd starts a service in its own cgroup.
    pub fn launch_in(&mut self, cgroup: Option<&str>) {
        self.launch_with(cgroup, Vec::new())
    }

    /// What the daemon handed to the service manager's file descriptor store so far, as
    /// systemd keeps it (FDSTORE=1 adds under FDNAME, FDSTOREREMOVE=1 drops).
    pub fn fd_store(&self) -> Vec<(std::os::fd::OwnedFd, String)> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        use std::os::fd::{AsRawFd, FromRawFd};
        let sock = self.notify.as_ref().expect("the daemon was launched");
        let mut store: Vec<(std::os::fd::OwnedFd, String)> = Vec::new();
        loop {
            let mut buf = [0u8; 4096];
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let mut space = nix::cmsg_space!([std::os::fd::RawFd; 16]);
            let msg = match recvmsg::<()>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => m,
                Err(_) => break,
            };
            let mut fds = Vec::new();
            for c in msg.cmsgs().unwrap() {
                if let ControlMessageOwned::ScmRights(r) = c {
                    // SAFETY: descriptors just received, owned here.
                    fds.extend(
                        r.into_iter()
                            .map(|fd| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            let n = msg.bytes;
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let name = text
                .lines()
                .find_map(|l| l.strip_prefix("FDNAME="))
                .unwrap_or("stored")
                .to_string();
            if text.lines().any(|l| l == "FDSTORE=1") {
                store.extend(fds.into_iter().map(|fd| (fd, name.clone())));
            } else if text.lines().any(|l| l == "FDSTOREREMOVE=1") {
                store.retain(|(_, n)| *n != name);
            }
        }
        store
    }

    /// As `launch_in`, handing the daemon `stored` descriptors as systemd hands a restarted
    /// service its file descriptor store (LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID).
    pub fn launch_with(
        &mut self,
        cgroup: Option<&str>,
        stored: Vec<(std::os::fd::OwnedFd, String)>,
    ) {
        let notify = self.dir.path().join("notify.sock");
        let _ = std::fs::remove_file(&notify);
        let sock = UnixDatagram::bind(&notify).expect("notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.stderr_path())
            .unwrap();
        let mut cmd = Command::new(gateway_bin());
        if let Some(cgroup) = cgroup {
            cmd.args(["exec", "--cgroup", cgroup, "--"])
                .arg(gateway_bin());
        }
        if !stored.is_empty() {
            // LISTEN_PID must be the daemon's own pid: a shell that execs it knows it.
            cmd = Command::new("/bin/sh");
            cmd.args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""])
                .arg(gateway_bin());
            let names: Vec<&str> = stored.iter().map(|(_, n)| n.as_str()).collect();
            cmd.env("LISTEN_FDS", stored.len().to_string())
                .env("LISTEN_FDNAMES", names.join(":"));
            let raw: Vec<i32> = stored
                .iter()
                .map(|(fd, _)| std::os::fd::AsRawFd::as_raw_fd(fd))
                .collect();
            // SAFETY: only dup2 (async-signal-safe) between fork and exec: first above
            // every target, then into 3, 4, ...
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    let high = 1000;
                    for (i, fd) in raw.iter().enumerate() {
                        if libc::dup2(*fd, high + i as i32) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    for i in 0..raw.len() as i32 {
                        if libc::dup2(high + i, 3 + i) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        libc::close(high + i);
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .args(["run", "--config"])
            .arg(&self.config)
            .env("NOTIFY_SOCKET", &notify)
            .env("RUST_LOG", &self.log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawning mcp-gateway");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 512];
        loop {
            if let Ok(n) = sock.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
                    self.notify = Some(sock);
                    drop(stored);
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!(
                    "mcp-gateway exited before it was ready ({status}):\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "mcp-gateway not ready after 30 s:\n{}",
                self.log()
            );
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no chance to detach, as in a crash.
    /// SIGKILL, as a crash; with no service manager left to hold what the daemon stored
    /// (take `fd_store` first to start it again with the store, as systemd does).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        self.notify = None;
    }

    /// SIGTERM and wait: the clean stop. Returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        // A stopped unit's file descriptor store is released.
        self.notify = None;
        let mut c = self.child.take()?;
        let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("mcp-gateway ignored SIGTERM for 15 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `mcp-gateway exec` into this test's agent cgroup.
    pub fn agent(&self, program: &str, args: &[String]) -> Command {
        let mut cmd = Command::new(gateway_bin());
        cmd.args(["exec", "--cgroup", &self.cgroup, "--", program]);
        cmd.args(args);
        cmd
    }

    /// The same command, run inside this test's agent cgroup (environment kept).
    pub fn wrap(&self, cmd: Command) -> Command {
        let mut wrapped = Command::new(gateway_bin());
        wrapped.args(["exec", "--cgroup", &self.cgroup, "--"]);
        wrapped.arg(cmd.get_program()).args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            wrapped.current_dir(dir);
        }
        wrapped
    }

    /// As `wrap`, with the command running as `user` (name or uid) inside the cgroup.
    /// As `agent`, running as `user` (a name or uid): `exec --user`.
    pub fn agent_as(&self, user: &str, program: &str, args: &[String]) -> Command {
        let mut cmd = Command::new(gateway_bin());
        cmd.args([
            "exec",
            "--cgroup",
            &self.cgroup,
            "--user",
            user,
            "--",
            program,
        ]);
        cmd.args(args);
        cmd
    }

    /// `mcp-gateway exec --config` this daemon's config, as `user`: the agent's stdio servers
    /// are mediated (the config names them).
    pub fn agent_stdio(&self, user: &str, program: &str, args: &[String]) -> Command {
        let mut cmd = Command::new(gateway_bin());
        cmd.arg("exec").arg("--config").arg(&self.config).args([
            "--cgroup",
            &self.cgroup,
            "--user",
            user,
            "--",
            program,
        ]);
        cmd.args(args);
        cmd.current_dir("/");
        cmd
    }

    pub fn wrap_as(&self, cmd: Command, user: &str) -> Command {
        let wrapped = self.wrap(cmd);
        let args: Vec<std::ffi::OsString> = wrapped.get_args().map(|a| a.to_owned()).collect();
        let mut with_user = Command::new(wrapped.get_program());
        with_user
            .args(&args[..3])
            .args(["--user", user])
            .args(&args[3..]);
        for (k, v) in wrapped.get_envs() {
            if let Some(v) = v {
                with_user.env(k, v);
            }
        }
        if let Some(dir) = wrapped.get_current_dir() {
            with_user.current_dir(dir);
        } else {
            with_user.current_dir("/");
        }
        with_user
    }

    /// SIGHUP: the daemon reloads its config file (`self.config`).
    pub fn reload(&self) {
        let pid = self.pid().expect("the daemon is running");
        kill(Pid::from_raw(pid as i32), Signal::SIGHUP).unwrap();
    }

    /// The audit's MCP exchange records so far.
    pub fn mcp_records(&self) -> Vec<Value> {
        self.audit_records()
            .into_iter()
            .filter(|r| r["type"] == "mcp")
            .collect()
    }

    /// Every audit record so far.
    pub fn audit_records(&self) -> Vec<Value> {
        let mut bytes = Vec::new();
        if let Ok(mut f) = std::fs::File::open(&self.audit) {
            f.read_to_end(&mut bytes).unwrap();
        }
        // A line the daemon is writing may be read half-written: only whole lines count.
        let end = bytes.iter().rposition(|&b| b == b'\n').unwrap_or(0);
        std::str::from_utf8(&bytes[..end])
            .expect("the ledger is UTF-8")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
            .collect()
    }

    /// Waits (up to 10 s) for a record that `pred` accepts.
    pub fn wait_record(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = self.audit_records().into_iter().find(|r| pred(r)) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no audit record {what} in {}:\n{:#?}\ndaemon log:\n{}",
                self.audit.display(),
                self.audit_records(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The flow records of the connections processes `pids` made, one each, once all are
    /// recorded (up to 15 s).
    pub fn flows_of_pids(&self, pids: &[u64]) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let flows: Vec<Value> = self
                .audit_records()
                .into_iter()
                .filter(|r| {
                    r["type"] == "flow"
                        && r["identity"]["tgid"]
                            .as_u64()
                            .is_some_and(|t| pids.contains(&t))
                })
                .collect();
            if flows.len() == pids.len() {
                return flows;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {} flows recorded: {flows:?}",
                flows.len(),
                pids.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The flow record of the connection the agent made from `local` (its own address).
    pub fn flow_from(&self, local: &Value) -> Value {
        let port = local[1].as_u64().expect("probe reports its local port");
        self.wait_record(&format!("for the flow from port {port}"), |r| {
            r["type"] == "flow"
                && r["client"]
                    .as_str()
                    .and_then(|c| c.rsplit(':').next())
                    .and_then(|p| p.parse::<u64>().ok())
                    == Some(port)
        })
    }

    /// `mcp-gateway ARGS… --config <this daemon's config>`, e.g. `pins list`.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(gateway_bin())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("running mcp-gateway")
    }

    /// The gateway's CA certificate (made at its first start).
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn pin_dir(&self) -> PathBuf {
        Path::new("/sys/fs/bpf/mcp-gateway").join(&self.instance)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- mcp-gateway log of {} ----\n{}\n---- audit ----\n{}",
                self.name,
                self.log(),
                std::fs::read_to_string(&self.audit).unwrap_or_default()
            );
        }
        // After a SIGKILL test the pins are still there: removing them detaches the links.
        let _ = std::fs::remove_dir_all(self.pin_dir());
        if let Ok(mount) = cgroup2_mount() {
            let _ = std::fs::remove_dir(mount.join(&self.cgroup));
        }
    }
}

/// Removes the pins a test process that no longer runs left behind (killed before its
/// `Gateway`s were dropped: a `| head` on the test's output does it). Pinned, their
/// programs stay attached, and their sk_lookup drops every connection to what was their
/// listener's port (fail closed, as for a daemon that is down): a later test whose server
/// draws that port would find it never accepting.
fn remove_stale_pins() {
    let Ok(dirs) = std::fs::read_dir("/sys/fs/bpf/mcp-gateway") else {
        return;
    };
    for dir in dirs.flatten() {
        let name = dir.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("t-")
            .and_then(|rest| rest.rsplit('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(dir.path());
            }
        }
    }
}

pub fn cgroup2_mount() -> std::io::Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            if post.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            Some(PathBuf::from(pre.split_whitespace().nth(4)?))
        })
        .ok_or_else(|| std::io::Error::other("no cgroup2 mount"))
}
