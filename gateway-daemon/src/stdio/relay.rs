//! One mediated stdio server: newline-delimited JSON-RPC between the agent's pipes and the
//! server's, through the MCP stage. Each line is one message (or batch), read whole under
//! the HTTP stage's size limits, decided like a POST (policy, approval, pins, limits,
//! secrets in arguments), recorded write-ahead, and forwarded byte for byte unless a stage
//! changed it; the server's lines are paired with their requests, narrowed, pinned and
//! redacted like a JSON response. stderr is the server's own and is not touched.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::json;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use super::{Stage, Tree};
use crate::http::budget::Reservation;
use crate::identity::Identity;
use crate::intercept::record::ExeFile;
use crate::intercept::Redirected;
use crate::mcp::exchange::{self, Admitted};
use crate::mcp::jsonrpc::{self, Id, Kind, Message, Parsed};
use crate::mcp::observe::{mark_unpaired_dropped, Observer};
use crate::mcp::pairing::Pending;
use crate::mcp::record::{Direction, Principal};
use crate::mcp::refusal::Refusal;
use crate::mcp::reply::{error_json, GATEWAY_REFUSED};
use crate::mcp::session::Session;
use crate::mcp::{ConnCtx, MAX_DEPTH};
use crate::policy::limits::InFlight;
use crate::policy::Decision;

/// Lines queued toward either side before the relay waits for it to read.
const QUEUE: usize = 64;

/// A live relay, as the stage knows it (launch chains are recorded with it).
pub struct Relay {
    pub id: u64,
    /// The id every record of this relay carries, as a TCP connection's do.
    conn: crate::audit::link::ConnId,
    server: Arc<str>,
    tree: u64,
    audit: crate::audit::AuditSink,
    redactor: Arc<crate::policy::PolicyHandle>,
    chained: Mutex<super::Paced>,
}

impl Relay {
    /// A process running inside this relay exec'd another program (a launch chain).
    pub fn chained(&self, pid: u32, path: &Path, argv: &[String], _stage: &Stage) {
        tracing::debug!(relay = self.id, pid, path = %path.display(), "exec inside a mediated server");
        let Some(suppressed) = lock(&self.chained).admit() else {
            return;
        };
        self.audit.record_now(&json!({
            "type": "stdio_exec",
            "time": crate::audit::timestamp(std::time::SystemTime::now()),
            "connection": &*self.conn,
            "tree": self.tree,
            "relay": self.id,
            "server": &*self.server,
            "pid": pid,
            "path": path.display().to_string(),
            "argv": shown_argv(&self.redactor, argv),
            "outcome": "chained",
            "suppressed": suppressed,
        }));
    }
}

/// Arguments as the audit shows them: secrets on a command line are redacted like any.
fn shown_argv(policy: &crate::policy::PolicyHandle, argv: &[String]) -> serde_json::Value {
    let mut v = json!(argv);
    policy.current().redactor.redact_json(&mut v);
    v
}

/// The identity of the process waiting in its exec, as a connection's would be: the
/// kernel's facts read from procfs while it cannot run (the caller then checks the
/// notification is still valid, so a reused pid is not believed).
/// `hash`: the executable's SHA-256 is wanted too (a principal selects by it).
pub fn identity_of(
    pid: u32,
    hash: bool,
    notes: Option<&crate::intercept::exec_notes::ExecNotes>,
) -> Identity {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(u32::MAX)
    };
    // The process's start is its leader's: the exec may come from another thread, whose
    // own start is later.
    let tgid = field("Tgid:");
    let stat = std::fs::read_to_string(format!("/proc/{tgid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    // Field 22 (start time) is the 20th after the command.
    let start_ticks: u64 = after
        .split_whitespace()
        .nth(19)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let ticks = procfs::ticks_per_second().max(1);
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim_end()
        .to_string();
    // One look at the file: another thread may change the process's executable meanwhile,
    // and every later read (the name, the hash) is held to what this one saw.
    let exe = std::fs::metadata(format!("/proc/{pid}/exe")).ok();
    let exe_file = exe.as_ref().map(|m| ExeFile {
        dev: m.dev(),
        ino: m.ino(),
    });
    let exe_ctime = exe.as_ref().map(|m| (m.ctime(), m.ctime_nsec() as u32));
    let cgroup_id = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        })
        .and_then(|p| {
            let mount = crate::intercept::cgroup::cgroup2_mount().ok()?;
            std::fs::metadata(mount.join(p.trim_start_matches('/')))
                .ok()
                .map(|m| m.ino())
        })
        .unwrap_or(0);
    let r = Redirected {
        orig_dst: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        pid,
        tgid,
        uid: field("Uid:"),
        gid: field("Gid:"),
        cgroup_id,
        start_boottime_ns: start_ticks * (1_000_000_000 / ticks),
        comm,
        exe_file,
        exe_unvouched: None,
        exe_ctime,
    };
    // A program the process set itself since its exec (prctl PR_SET_MM), or changed since,
    // names nothing; without the kernel's notes, or what to look them up by, nothing
    // vouches for it.
    let exe_unvouched = match (notes, exe_file, exe_ctime) {
        (Some(n), Some(file), Some(ctime)) if tgid != u32::MAX && start_ticks != 0 => {
            n.unvouched(tgid, start_ticks, file, ctime)
        }
        _ => Some(crate::intercept::record::Unvouched::Unknown),
    };
    let r = Redirected { exe_unvouched, ..r };
    // On the launcher's own thread (its exec waits for this, and nothing else does).
    Identity::resolve(&r, hash)
}

/// A line on its way to one side, and its share of the memory budget (the queues hold up
/// to `QUEUE` lines of up to the size limits each: they count with what is inspected).
struct Queued {
    line: Bytes,
    _held: Option<Reservation>,
}

/// What both directions of one relay share.
struct Shared {
    relay: Arc<Relay>,
    ctx: Arc<ConnCtx>,
    session: Arc<Session>,
    /// Rate-limit slots of calls in flight, released with their answers.
    inflight: Mutex<HashMap<Id, Vec<InFlight>>>,
    to_agent: mpsc::Sender<Option<Queued>>,
    to_server: mpsc::Sender<Option<Queued>>,
}

impl Shared {
    fn observer(&self) -> Observer {
        let policy = self.ctx.daemon.policy.current();
        Observer {
            principal: self.ctx.principal_under(&policy),
            view: Some(crate::mcp::observe::ListView {
                policy,
                catalog: self.ctx.daemon.catalog.clone(),
                pins: self.ctx.daemon.pins.clone(),
                tasks: self.ctx.daemon.tasks.clone(),
                approvals: self.ctx.daemon.approvals.clone(),
                issued: self.ctx.daemon.issued.clone(),
            }),
            via: self.ctx.via.clone(),
            server: self.relay.server.clone(),
            audit: self.ctx.daemon.audit.clone(),
            session: Some(self.session.clone()),
            transport: crate::mcp::session::Transport::Stdio,
            protocol_version: self.session.state().protocol_version.clone(),
            back: Some(self.back()),
            approved: None,
            credentials: None,
        }
    }

    /// The server's stdin, for the gateway's own lines.
    fn back(&self) -> crate::mcp::to_server::Back {
        let to_server = self.to_server.clone();
        crate::mcp::to_server::Back::Stdio(Arc::new(move |mut line: Vec<u8>| {
            line.push(b'\n');
            to_server
                .try_send(Some(Queued {
                    line: Bytes::from(line),
                    _held: None,
                }))
                .is_ok()
        }))
    }

    async fn send_agent(&self, line: Vec<u8>) {
        self.send_agent_held(line, None).await
    }

    /// A line to the agent, with the memory it holds charged until it is written.
    async fn send_agent_held(&self, mut line: Vec<u8>, held: Option<Reservation>) {
        line.push(b'\n');
        let _ = self
            .to_agent
            .send(Some(Queued {
                line: Bytes::from(line),
                _held: held,
            }))
            .await;
    }

    /// Errors for each request of `messages` (one with a null id when none has an id).
    async fn answer_errors(&self, messages: &[Message<'_>], code: i32, why: &str) {
        let ids: Vec<&Id> = messages
            .iter()
            .filter(|m| m.kind == Kind::Request)
            .filter_map(|m| m.id.as_ref())
            .collect();
        if ids.is_empty() && messages.iter().any(|m| m.kind == Kind::Request) {
            self.send_agent(error_json(None, code, why)).await;
        }
        for id in ids {
            self.send_agent(error_json(Some(id), code, why)).await;
        }
    }
}

/// Starts relaying for a server just swapped in (on the daemon's runtime).
#[allow(clippy::too_many_arguments)]
pub fn start(
    stage: Arc<Stage>,
    tree: &Tree,
    server: Arc<str>,
    identity: Identity,
    swapped: super::swap::Swapped,
    slot: super::Slot,
    pid: u32,
    path: &Path,
    argv: &[String],
) {
    let daemon = stage.daemon.clone();
    // The relay is this server's one connection: its records carry one id.
    let conn = crate::audit::link::next_id();
    let relay = Arc::new(Relay {
        id: stage.next_id(),
        conn: conn.clone(),
        server: server.clone(),
        tree: tree.id,
        audit: daemon.audit.clone(),
        redactor: daemon.policy.clone(),
        chained: Mutex::new(super::Paced::default()),
    });
    stage.register(swapped.marks, &relay);
    let principal = Arc::new(Principal::of(&identity));
    let session = Arc::new(Session::stdio(
        format!("stdio-{}", relay.id),
        principal.session_owner(),
        daemon.config.http.max_pending,
    ));
    tracing::info!(relay = relay.id, server = %server, pid, uid = identity.uid,
        exe = ?identity.exe, connection = %conn, "stdio server mediated");
    daemon.audit.record_now(&json!({
        "type": "stdio_exec",
        "time": crate::audit::timestamp(std::time::SystemTime::now()),
        "connection": &*conn,
        "tree": tree.id,
        "relay": relay.id,
        "server": &*server,
        "pid": pid,
        "path": path.display().to_string(),
        "argv": shown_argv(&daemon.policy, argv),
        "principal": &*principal,
        "agent_stdio": swapped.carrier,
        "outcome": "mediated",
    }));
    let ctx = Arc::new(ConnCtx {
        daemon: daemon.clone(),
        identity: Arc::new(identity),
        owner: principal.session_owner(),
        principal,
        // A stdio server has no address: sessions and credentials, keyed by it, are not
        // used on this path.
        upstream_addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        tls_sni: None,
        via: crate::audit::link::Via::plain(conn),
        named: Mutex::new(None),
        credentials_logged: Default::default(),
    });
    let (to_agent, agent_rx) = mpsc::channel(QUEUE);
    let (to_server, server_rx) = mpsc::channel(QUEUE);
    let shared = Arc::new(Shared {
        relay,
        ctx,
        session,
        inflight: Mutex::new(HashMap::new()),
        to_agent,
        to_server,
    });
    let super::swap::Swapped {
        agent_in,
        agent_out,
        server_in,
        server_out,
        ..
    } = swapped;
    let rt = stage.runtime.clone();
    let span = tracing::info_span!("stdio", relay = shared.relay.id, id = %shared.relay.conn, server = %server);
    rt.spawn(tracing::Instrument::instrument(
        async move {
            let (agent_in, agent_out, server_in, server_out) = match (
                reader(agent_in),
                writer(agent_out),
                writer(server_in),
                reader(server_out),
            ) {
                (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
                _ => {
                    tracing::error!("the relay's pipes cannot be registered with the runtime");
                    return;
                }
            };
            let agent_writer = tokio::spawn(write_lines(agent_out, agent_rx));
            let server_writer = tokio::spawn(write_lines(server_in, server_rx));
            let up = tokio::spawn(from_agent(shared.clone(), BufReader::new(agent_in)));
            from_server(shared.clone(), BufReader::new(server_out)).await;
            // The server's stdout closed: the agent's read end closes with it (after what
            // is queued), so the client sees its server end.
            let _ = shared.to_agent.send(None).await;
            let _ = agent_writer.await;
            let _ = up.await;
            let _ = server_writer.await;
            let obs = shared.observer();
            let waiting = shared
                .session
                .state()
                .client_pending
                .drain_expired(|_| true);
            obs.write_now(obs.unanswered(
                Direction::ClientToServer,
                waiting,
                "no_response",
                "the server's stdout closed before it answered",
            ));
            shared.ctx.daemon.audit.record_now(&json!({
                "type": "stdio_end",
                "time": crate::audit::timestamp(std::time::SystemTime::now()),
                "connection": &*shared.ctx.via.connection,
                "relay": shared.relay.id,
                "server": &*shared.relay.server,
            }));
            drop(slot);
            tracing::info!("stdio server relay ended");
        },
        span,
    ));
}

fn nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor this process owns.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0
        || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn reader(fd: OwnedFd) -> std::io::Result<pipe::Receiver> {
    nonblocking(&fd)?;
    // A pipe or a Unix socket: both read and write as a byte stream.
    pipe::Receiver::from_owned_fd_unchecked(fd)
}

fn writer(fd: OwnedFd) -> std::io::Result<pipe::Sender> {
    nonblocking(&fd)?;
    pipe::Sender::from_owned_fd_unchecked(fd)
}

/// Writes queued lines until told to close (None) or every sender is gone.
async fn write_lines(mut w: pipe::Sender, mut rx: mpsc::Receiver<Option<Queued>>) {
    while let Some(Some(q)) = rx.recv().await {
        if w.write_all(&q.line).await.is_err() {
            break;
        }
    }
    // Dropping the writer closes this end: the reader sees the end of its input.
}

enum Line {
    Read(Vec<u8>),
    TooLong(usize),
    /// The daemon's memory for messages under inspection is spent (http.max_buffered_*):
    /// the line was skipped.
    OverBudget(String),
    End,
}

/// One line (without its newline), at most `max` bytes; a longer one is skipped to its end.
/// What it holds is charged to `held` (the memory budget every inspected message shares).
async fn next_line<R: AsyncBufRead + Unpin>(r: &mut R, max: usize, held: &mut Reservation) -> Line {
    let mut line = Vec::new();
    let mut skipped = 0usize;
    let mut over: Option<String> = None;
    loop {
        let buf = match r.fill_buf().await {
            Ok(b) => b,
            Err(_) => return Line::End,
        };
        if buf.is_empty() {
            return if let Some(why) = over {
                Line::OverBudget(why)
            } else if skipped > 0 {
                Line::TooLong(skipped)
            } else if line.is_empty() {
                Line::End
            } else {
                Line::Read(line)
            };
        }
        let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if over.is_none() && skipped == 0 && line.len() + chunk.len() <= max {
            if let Err(e) = held.set(line.len() + chunk.len()) {
                over = Some(e.to_string());
            }
        }
        if over.is_some() || skipped > 0 || line.len() + chunk.len() > max {
            skipped += line.len() + chunk.len();
            line = Vec::new();
        } else {
            line.extend_from_slice(chunk);
        }
        let used = done.unwrap_or(buf.len());
        r.consume(used);
        if done.is_some() {
            return if let Some(why) = over {
                Line::OverBudget(why)
            } else if skipped > 0 {
                Line::TooLong(skipped)
            } else {
                Line::Read(line)
            };
        }
    }
}

/// The agent's side: each line decided and forwarded, or refused with JSON-RPC errors.
async fn from_agent<R: AsyncBufRead + Unpin>(shared: Arc<Shared>, mut input: R) {
    let max = shared.ctx.daemon.config.http.max_request_bytes;
    let uid = shared.ctx.principal.uid;
    loop {
        let mut held = shared.ctx.daemon.budget.reserve(uid);
        let line = match next_line(&mut input, max, &mut held).await {
            Line::End => break,
            Line::OverBudget(why) => {
                let r = Refusal::over_budget(why);
                let obs = shared.observer();
                exchange::write_refusal(&obs, &[], &r, &r.why(), &[]);
                shared.send_agent(error_json(None, r.code, r.why())).await;
                continue;
            }
            Line::TooLong(n) => {
                let r = Refusal::too_large(format!(
                    "a message of {n} bytes is more than http.max_request_bytes ({max})"
                ));
                let obs = shared.observer();
                exchange::write_refusal(&obs, &[], &r, &r.why(), &[]);
                shared.send_agent(error_json(None, r.code, r.why())).await;
                continue;
            }
            Line::Read(l) => l,
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line = Bytes::from(line);
        // A call held for a person must not hold up the agent's other messages (its
        // cancellations, pings): it waits on a task of its own.
        let waits = {
            let obs = shared.observer();
            let policy = shared.ctx.daemon.policy.current();
            match jsonrpc::parse(&line, MAX_DEPTH) {
                Ok(p) => {
                    let ms = match &p {
                        Parsed::Single(m) => std::slice::from_ref(m),
                        Parsed::Batch(ms) => ms.as_slice(),
                    };
                    ms.iter().any(|m| {
                        exchange::decide(&policy, &obs, &shared.ctx, m)
                            .is_some_and(|d| d.action == crate::config::Action::Ask)
                    })
                }
                Err(_) => false,
            }
        };
        if waits {
            tokio::spawn(agent_line(shared.clone(), line, held));
        } else {
            agent_line(shared.clone(), line, held).await;
        }
    }
    // The agent closed its end: the server's stdin closes too (after what is queued).
    let _ = shared.to_server.send(None).await;
}

async fn agent_line(shared: Arc<Shared>, line: Bytes, mut held: Reservation) {
    let obs = shared.observer();
    let parsed = match jsonrpc::parse_agent(&line, MAX_DEPTH) {
        Ok(p) => p,
        Err(e) => {
            let r = match e {
                jsonrpc::JsonRpcError::NotJson(_)
                | jsonrpc::JsonRpcError::TooDeep(_)
                | jsonrpc::JsonRpcError::Unreadable(_) => Refusal::not_json(e.to_string()),
                _ => Refusal::invalid(e.to_string()),
            };
            exchange::write_refusal(&obs, &[], &r, &r.why(), &[]);
            shared.send_agent(error_json(None, r.code, r.why())).await;
            return;
        }
    };
    let (messages, batch) = match parsed {
        Parsed::Single(m) => (vec![m], false),
        Parsed::Batch(ms) => (ms, true),
    };
    let refuse = |r: Refusal, messages: &[Message<'_>], decisions: &[Option<Decision>]| {
        let why = r.why().into_owned();
        exchange::write_refusal(&obs, messages, &r, &why, decisions);
        (r.code, why)
    };
    let max_pending = shared.ctx.daemon.config.http.max_pending;
    if batch && messages.len() > max_pending {
        let (code, why) = refuse(
            Refusal::invalid(format!(
                "a batch of {} messages is more than http.max_pending ({max_pending})",
                messages.len()
            )),
            &[],
            &[],
        );
        shared.send_agent(error_json(None, code, why)).await;
        return;
    }
    // An answer is unreadable only with a key given twice (`jsonrpc::parse_agent`).
    if let Some((m, e)) = messages
        .iter()
        .find_map(|m| m.params_error().map(|e| (m, e)))
    {
        let method = m.method.as_deref().unwrap_or("an answer");
        let (code, why) = refuse(
            Refusal::ambiguous(format!(
                "{method}: the gateway cannot read this call unambiguously: {e}"
            )),
            &messages,
            &[],
        );
        shared.answer_errors(&messages, code, &why).await;
        return;
    }
    if let Some(v) = messages.iter().find_map(|m| {
        (m.method.as_deref() == Some("initialize"))
            .then(|| protocol_version_of(m))
            .flatten()
    }) {
        shared
            .session
            .state()
            .protocol_version
            .get_or_insert(v.into());
    }
    let policy = shared.ctx.daemon.policy.current();
    let mut decisions: Vec<Option<Decision>> = messages
        .iter()
        .map(|m| exchange::decide(&policy, &obs, &shared.ctx, m))
        .collect();
    let admitted = exchange::admit(
        &shared.ctx,
        &obs,
        &policy,
        &messages,
        &mut decisions,
        &line,
        None,
    )
    .await;
    let Admitted { guard, inflight } = match admitted {
        Ok(a) => a,
        Err(r) => {
            let (code, why) = refuse(r, &messages, &decisions);
            shared.answer_errors(&messages, code, &why).await;
            return;
        }
    };
    let mut unused = Pending::new(1);
    let mut records = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        match obs.from_client(m, &mut unused) {
            Ok(r) => records.extend(r),
            Err(e) => {
                forget(&shared, &messages[..i]);
                let (code, why) = refuse(Refusal::too_many_pending(e.to_string()), &messages, &[]);
                shared.answer_errors(&messages, code, &why).await;
                return;
            }
        }
    }
    guard.mark(&mut records);
    obs.write_now(records);
    // Write-ahead and durable before the server sees the call: the server's answer comes
    // back on a stream this exchange does not hold.
    let written = exchange::write_ahead(&obs, &messages, &decisions, &guard);
    if let Err(e) = match written {
        Ok(w) => exchange::all_durable(w).await,
        Err(e) => Err(e),
    } {
        unrecorded(&shared, &messages, &e).await;
        return;
    }
    let redacted: u64 = guard.counts.iter().map(|(_, c)| c.total()).sum();
    if redacted > 0 {
        crate::metrics::global().redactions(redacted);
    }
    if !inflight.is_empty() {
        // A batch's slots are released when its first call is answered: calls in one
        // line are one exchange.
        if let Some(id) = messages
            .iter()
            .find(|m| m.kind == Kind::Request)
            .and_then(|m| m.id.clone())
        {
            lock(&shared.inflight).insert(id, inflight);
        }
    }
    let mut out = match guard.body {
        Some(b) => b,
        None => line.to_vec(),
    };
    drop(messages);
    drop(line);
    out.push(b'\n');
    // Charged until written (over the budget by what redaction added: within a line).
    let _ = held.set(out.len());
    let _ = shared
        .to_server
        .send(Some(Queued {
            line: Bytes::from(out),
            _held: Some(held),
        }))
        .await;
}

fn protocol_version_of(m: &Message<'_>) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct P {
        #[serde(rename = "protocolVersion")]
        v: Option<String>,
    }
    serde_json::from_str::<P>(m.params?.get()).ok()?.v
}

async fn unrecorded(shared: &Shared, messages: &[Message<'_>], e: &crate::audit::AuditError) {
    tracing::error!(error = %e, "call refused: the audit ledger cannot record it");
    forget(shared, messages);
    shared
        .answer_errors(
            messages,
            GATEWAY_REFUSED,
            &format!(
                "the gateway cannot record this call in its audit ledger, so it is not \
                 forwarded: {e}"
            ),
        )
        .await;
}

/// Takes the requests of `messages` off the list of those awaiting answers.
fn forget(shared: &Shared, messages: &[Message<'_>]) {
    let mut st = shared.session.state();
    for m in messages {
        if let (Kind::Request, Some(id)) = (m.kind, &m.id) {
            st.client_pending.take(id);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The server's side: each line paired, recorded, narrowed and redacted, then passed on;
/// what the gateway cannot read, or answers nothing asked, does not reach the agent.
async fn from_server<R: AsyncBufRead + Unpin>(shared: Arc<Shared>, mut input: R) {
    let max = shared.ctx.daemon.config.http.max_response_bytes;
    let uid = shared.ctx.principal.uid;
    loop {
        let mut held = shared.ctx.daemon.budget.reserve(uid);
        let line = match next_line(&mut input, max, &mut held).await {
            Line::End => return,
            Line::OverBudget(why) => {
                let obs = shared.observer();
                obs.write_now(vec![obs.malformed(&format!(
                    "a server message was dropped: the gateway's memory for messages under \
                     inspection is spent ({why})"
                ))]);
                continue;
            }
            Line::TooLong(n) => {
                let obs = shared.observer();
                obs.write_now(vec![obs.malformed(&format!(
                    "a server message of {n} bytes is more than http.max_response_bytes \
                     ({max}): dropped"
                ))]);
                continue;
            }
            Line::Read(l) => l,
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let mut obs = shared.observer();
        // A request an `ask` rule holds waits here for a person, and the lines behind it
        // with it.
        if let Some(held) = crate::mcp::server_ask::held(&obs, &line) {
            match std::future::poll_fn(|cx| held.poll(cx)).await {
                Ok(()) => obs.approved = Some(held.id.clone()),
                Err(refusal) => {
                    let r = obs.refuse_server_request_with(
                        Some(&held.id),
                        &held.method,
                        held.decision,
                        &refusal,
                    );
                    obs.write_now(vec![r]);
                    continue;
                }
            }
        }
        let parsed = match jsonrpc::parse(&line, MAX_DEPTH) {
            Ok(p) => p,
            Err(e) => {
                obs.write_now(vec![obs.malformed(&format!(
                    "the server wrote a line that is not JSON-RPC the gateway can read ({e}): \
                     dropped"
                ))]);
                continue;
            }
        };
        let messages = match &parsed {
            Parsed::Single(m) => std::slice::from_ref(m),
            Parsed::Batch(ms) => ms.as_slice(),
        };
        let mut inspect = Vec::new();
        let mut records: Vec<_> = messages
            .iter()
            .flat_map(|m| obs.from_server(m, None, &mut inspect))
            .collect();
        if mark_unpaired_dropped(&mut records, "server message") {
            obs.write_now(records);
            continue;
        }
        // Server requests the policy refused never reach the agent.
        let kept = match crate::mcp::observe::without_refused(&line, &records) {
            None => None,
            Some(Some(kept)) => Some(kept),
            Some(None) => {
                obs.write_now(records);
                continue;
            }
        };
        let rewritten = obs
            .rewrite(kept.as_deref().unwrap_or(&line), &inspect, &mut records)
            .or(kept);
        obs.write_now(records);
        {
            let mut inflight = lock(&shared.inflight);
            for m in messages
                .iter()
                .filter(|m| matches!(m.kind, Kind::Response | Kind::Error))
            {
                if let Some(id) = &m.id {
                    inflight.remove(id);
                }
            }
        }
        drop(parsed);
        let out = rewritten.unwrap_or(line);
        let _ = held.set(out.len());
        shared.send_agent_held(out, Some(held)).await;
    }
}
