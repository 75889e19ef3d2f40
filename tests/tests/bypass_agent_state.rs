//! Red-team attacks on the state the interception depends on: the socket's option memory,
//! the daemon's pid, its listener port, the agent cgroup's id, the configured scope and the
//! transports the programs look at. Each test is one attack an agent can make with nothing
//! but its own privileges (or, where a step needs root, root that is dropped before the
//! attack's connect), and each asserts the same thing: the agent's connection is mediated
//! by the daemon or refused, never made directly.
//!
//! How a direct connection is told apart: every attacking socket is bound to 127.0.0.3, an
//! address the gateway's own upstream sockets never use, and the echo server (on 127.0.0.1)
//! remembers its peers. A peer from 127.0.0.3 is the agent's own socket: a bypass. A
//! mediated connection arrives from the daemon's socket (127.0.0.1) and leaves a `flow`
//! audit record naming the agent's port. Refused is the agent's connect failing: ECONNREFUSED
//! while the daemon is down, EPERM from the programs.
//!
//! Agents run as uid 65534 in the test's agent cgroup; the agent programs are Python
//! strings (a shared prelude plus a body) printing one JSON line.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gateway_tests::{
    cgroup2_mount, free_port, EchoServer, Gateway, GatewayOptions, CONNECTING_AGENT, PYTHON,
};
use serde_json::{json, Value};

/// The unprivileged agent user (nobody).
const AGENT_USER: &str = "65534";
/// The source address of every attacking socket; the gateway never uses it.
const AGENT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const IPPROTO_UDPLITE: i32 = 136;
const IPPROTO_MPTCP: u32 = 262;

/// Shared by every agent program: connect from a chosen source address, send a line,
/// read them back, and report what happened.
const PRELUDE: &str = r#"
import errno, json, os, socket, struct, sys, time

def err_name(e):
    return errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__

def talk(s, dst, port, out):
    try:
        s.connect((dst, port))
        out["peer"] = list(s.getpeername()[:2])
        s.sendall(b"ping\n")
        got = b""
        while len(got) < 5:
            chunk = s.recv(5 - len(got))
            if not chunk:
                break
            got += chunk
        out["result"] = "echoed" if got == b"ping\n" else "closed after %r" % got
    except OSError as e:
        out["result"] = type(e).__name__
        out["errno"] = err_name(e)
    return out

def connect_from(family, src, dst, port, proto=0, timeout=5):
    try:
        s = socket.socket(family, socket.SOCK_STREAM, proto)
    except OSError as e:
        return {"result": "no socket", "errno": err_name(e), "error": str(e)}
    s.settimeout(timeout)
    out = {}
    try:
        s.bind((src, 0))
        out["local"] = list(s.getsockname()[:2])
        talk(s, dst, port, out)
    except OSError as e:
        out["result"] = "bind " + type(e).__name__
        out["errno"] = err_name(e)
    finally:
        s.close()
    return out

def drop_privileges():
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
"#;

/// One connection: argv = family (4|6), source address, destination, port, protocol.
const ONE_CONNECT: &str = r#"
family = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
print(json.dumps(connect_from(family, sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))))
"#;

/// Fills a socket's option memory with TCP-MD5 keys (each for another peer, none for the
/// echo server), then connects; then a fresh ordinary socket connects. argv = port.
const MD5_AGENT: &str = r#"
port = int(sys.argv[1])
TCP_MD5SIG = 14

def md5sig(family, addr):
    # struct tcp_md5sig: struct sockaddr_storage tcpm_addr (128 bytes); u8 tcpm_flags;
    # u8 tcpm_prefixlen; u16 tcpm_keylen; int tcpm_ifindex; u8 tcpm_key[80]: 216 bytes.
    if family == socket.AF_INET:
        sa = struct.pack("=H", family) + struct.pack("!H", 0) + socket.inet_aton(addr)
    else:
        sa = (struct.pack("=H", family) + struct.pack("!HI", 0, 0)
              + socket.inet_pton(family, addr) + struct.pack("=I", 0))
    return sa.ljust(128, b"\0") + struct.pack("=BBHi", 0, 0, 16, 0) + (b"k" * 16).ljust(80, b"\0")

def attack(family, src, dst, key_addr):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(5)
    s.bind((src, 0))
    out = {"local": list(s.getsockname()[:2]), "keys": 0, "stopped_by": None}
    while out["keys"] < 65536:
        try:
            s.setsockopt(socket.IPPROTO_TCP, TCP_MD5SIG, md5sig(family, key_addr(out["keys"])))
        except OSError as e:
            out["stopped_by"] = err_name(e)
            break
        out["keys"] += 1
    talk(s, dst, port, out)
    s.close()
    return out

out = {
    "v4": attack(socket.AF_INET, "127.0.0.3", "127.0.0.1",
                 lambda n: "127.1.%d.%d" % (n >> 8, n & 255)),
    # Keys alternate between v4-mapped and plain IPv6 peers.
    "v6_mapped": attack(socket.AF_INET6, "::ffff:127.0.0.3", "::ffff:127.0.0.1",
                        lambda n: ("::ffff:127.1.%d.%d" % (n >> 8, n & 255)) if n % 2 == 0
                        else "fd00::1:%x:%x" % (n >> 8, n & 255)),
}
out["fresh"] = connect_from(socket.AF_INET, "127.0.0.3", "127.0.0.1", port)
print(json.dumps(out))
"#;

/// Root in the agent cgroup: makes the next pid the killed daemon's (ns_last_pid needs
/// CAP_SYS_ADMIN), forks, and the child that got it drops to uid/gid 65534 before it
/// connects and sends. argv = the old pid, the port in scope.
const PID_TAKER: &str = r#"
old, port = int(sys.argv[1]), int(sys.argv[2])

def attack():
    drop_privileges()
    out = {"pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid()}
    out["tcp"] = connect_from(socket.AF_INET, "127.0.0.3", "127.0.0.1", port, timeout=3)
    for name, addr in (("udp_443", ("127.0.0.1", 443)), ("udp_scope", ("127.0.0.1", port))):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.sendto(b"agent", addr)
            out[name] = "sent"
        except OSError as e:
            out[name] = err_name(e)
        finally:
            u.close()
    return out

missed = []
for attempt in range(1, 201):
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(old - 1))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        if os.getpid() == old:
            try:
                res = attack()
            except BaseException as e:
                res = {"error": repr(e)}
            os.write(w, json.dumps(res).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    if pid == old:
        print(json.dumps({"attempts": attempt, "child": json.loads(data)}))
        sys.exit(0)
    missed.append(pid)
print(json.dumps({"attempts": len(missed), "child": None, "got_instead": missed[-20:]}))
"#;

/// Tries to take the gateway's listener address. argv = "all" listen4 listen6: every
/// address and option, one at a time; or "hold" host port seconds: bind and listen, report
/// the bind at once, then accept (and count) for `seconds`.
const SQUATTER: &str = r#"
def squat(family, host, port, reuseport):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        s.bind((host, port))
        s.listen(16)
        return s, "listening"
    except OSError as e:
        s.close()
        return None, err_name(e)

if sys.argv[1] == "all":
    l4, l6 = int(sys.argv[2]), int(sys.argv[3])
    out = {}
    for family, host, port in ((socket.AF_INET, "127.0.0.1", l4), (socket.AF_INET, "0.0.0.0", l4),
                               (socket.AF_INET6, "::1", l6), (socket.AF_INET6, "::", l6)):
        for reuseport in (False, True):
            s, state = squat(family, host, port, reuseport)
            name = "[%s]:%d SO_REUSEADDR%s" % (host, port, " SO_REUSEPORT" if reuseport else "")
            out[name] = state
            if s:
                s.close()
    print(json.dumps(out))
else:
    host, port, seconds = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    s, state = squat(socket.AF_INET, host, port, False)
    print(json.dumps({"bind": state}), flush=True)
    accepted, end = [], time.monotonic() + seconds
    if s:
        s.settimeout(0.05)
    while time.monotonic() < end:
        if not s:
            time.sleep(0.05)
            continue
        try:
            c, a = s.accept()
            accepted.append(list(a[:2]))
            c.close()
        except OSError:
            pass
    print(json.dumps({"accepted": accepted}), flush=True)
"#;

/// Root, outside the agent cgroup: per round, removes the agent cgroup and creates it again,
/// then a forked child joins it (root is needed to write cgroup.procs), drops to uid 65534
/// and connects at once. argv = cgroup directory, port, rounds.
const CGROUP_CHURN: &str = r#"
cg, port, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
results, made_by_daemon = [], 0
for i in range(rounds):
    for _ in range(400):
        try:
            os.rmdir(cg)
            break
        except FileNotFoundError:
            break
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            time.sleep(0.005)
    else:
        sys.exit("round %d: %s stays busy" % (i, cg))
    try:
        os.mkdir(cg)
    except FileExistsError:
        # The daemon's own re-resolution created it between the rmdir and the mkdir.
        made_by_daemon += 1
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            with open(os.path.join(cg, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
            drop_privileges()
            res = connect_from(socket.AF_INET, "127.0.0.3", "127.0.0.1", port, timeout=3)
        except BaseException as e:
            res = {"result": "helper error", "error": repr(e)}
        os.write(w, json.dumps(res).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    results.append(json.loads(data))
print(json.dumps({"results": results, "made_by_daemon": made_by_daemon}))
"#;

/// UDP-Lite to 443 every way: sendto and connect()+send, IPv4, IPv6 and v4-mapped.
const UDPLITE_AGENT: &str = r#"
out = {}
def attempt(name, family, addr, connect):
    try:
        s = socket.socket(family, socket.SOCK_DGRAM, 136)
    except OSError as e:
        out[name] = "socket " + err_name(e)
        return
    try:
        if connect:
            s.connect(addr)
            s.send(name.encode())
        else:
            s.sendto(name.encode(), addr)
        out[name] = "sent"
    except OSError as e:
        out[name] = err_name(e)
    finally:
        s.close()
attempt("v4_sendto", socket.AF_INET, ("127.0.0.1", 443), False)
attempt("v4_connect_send", socket.AF_INET, ("127.0.0.1", 443), True)
attempt("v6_sendto", socket.AF_INET6, ("::1", 443), False)
attempt("v6_connect_send", socket.AF_INET6, ("::1", 443), True)
attempt("mapped_sendto", socket.AF_INET6, ("::ffff:127.0.0.1", 443), False)
attempt("mapped_connect_send", socket.AF_INET6, ("::ffff:127.0.0.1", 443), True)
print(json.dumps(out))
"#;

fn opts(port: u16) -> GatewayOptions {
    GatewayOptions {
        ports: vec![port],
        ..Default::default()
    }
}

/// `python3 -c PRELUDE+body args...`
fn python(body: &str, args: &[String]) -> Command {
    let mut cmd = Command::new(PYTHON);
    cmd.arg("-c").arg([PRELUDE, body].concat()).args(args);
    cmd
}

/// Runs a program to its end and parses its last output line.
fn run_json(mut cmd: Command, what: &str) -> Value {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({}): stdout={stdout} stderr={stderr}",
        out.status
    );
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("{what} printed nothing; stderr={stderr}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{what}'s output {line:?}: {e}"))
}

/// An agent (uid 65534, in the agent cgroup) making one connection.
fn agent_connect(gw: &Gateway, family: &str, src: &str, dst: &str, port: u16, proto: u32) -> Value {
    let args = [family, src, dst, &port.to_string(), &proto.to_string()].map(String::from);
    run_json(
        gw.wrap_as(python(ONE_CONNECT, &args), AGENT_USER),
        "the connecting agent",
    )
}

/// The server's peers that were the agent's own sockets.
fn direct(echo: &EchoServer) -> Vec<SocketAddr> {
    echo.peers()
        .into_iter()
        .filter(|p| p.ip() == IpAddr::V4(AGENT_IP))
        .collect()
}

fn client_port(record: &Value) -> Option<u64> {
    record["client"].as_str()?.rsplit(':').next()?.parse().ok()
}

/// The flow record of the agent's connection from `port`, waiting up to 10 s for it.
fn find_flow(gw: &Gateway, port: u64) -> Option<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let hit = gw
            .audit_records()
            .into_iter()
            .find(|r| r["type"] == "flow" && client_port(r) == Some(port));
        if hit.is_some() || Instant::now() > deadline {
            return hit;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Why `out` (an agent's connection report) is not a mediated connection; empty if it is:
/// the echo came back, the server never met the agent's socket, the gateway recorded it.
fn mediation_problems(gw: &Gateway, echo: &EchoServer, out: &Value, what: &str) -> Vec<String> {
    if out["result"] != "echoed" {
        return vec![format!("{what}: expected mediated, the agent got {out}")];
    }
    let Some(port) = out["local"][1].as_u64() else {
        return vec![format!("{what}: no local port reported: {out}")];
    };
    if echo
        .peers()
        .iter()
        .any(|p| p.ip() == IpAddr::V4(AGENT_IP) && u64::from(p.port()) == port)
    {
        return vec![format!(
            "{what}: DIRECT: the echo server met the agent's own socket {AGENT_IP}:{port} ({out})"
        )];
    }
    if find_flow(gw, port).is_none() {
        return vec![format!(
            "{what}: echoed, but the gateway wrote no flow record for the connection from \
             port {port} ({out})"
        )];
    }
    Vec::new()
}

/// An ordinary agent connection (uid 65534, from 127.0.0.3), expected mediated.
fn ordinary_agent_problems(gw: &Gateway, echo: &EchoServer, what: &str) -> Vec<String> {
    let out = agent_connect(gw, "4", "127.0.0.3", "127.0.0.1", echo.addr.port(), 0);
    mediation_problems(gw, echo, &out, what)
}

fn no_direct_problem(echo: &EchoServer) -> Vec<String> {
    let around = direct(echo);
    if around.is_empty() {
        Vec::new()
    } else {
        vec![format!(
            "DIRECT: the echo server was reached by the agent's own sockets (from {AGENT_IP}): \
             {around:?}"
        )]
    }
}

#[track_caller]
fn assert_none(problems: &[String], what: &str) {
    assert!(
        problems.is_empty(),
        "{what}:\n  - {}",
        problems.join("\n  - ")
    );
}

/// The example configuration shipped in systemd/.
fn example_config() -> toml::Table {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/mcp-gateway.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading the example config {}: {e}", path.display()));
    text.parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("parsing the example config {}: {e}", path.display()))
}

// 1. Option memory: the programs keep their per-connection record in socket storage,
//    charged to the socket's option memory. An agent that fills it (TCP-MD5 keys) before
//    connect() leaves no room for the record.
#[test]
fn option_memory_exhausted_before_connect_is_refused_or_mediated() {
    let echo = EchoServer::start("127.0.0.1:0");
    let port = echo.addr.port();
    let gw = Gateway::start("optmem", opts(port));
    let out = run_json(
        gw.wrap_as(python(MD5_AGENT, &[port.to_string()]), AGENT_USER),
        "the option-memory agent",
    );
    let mut wrong = Vec::new();
    for case in ["v4", "v6_mapped"] {
        let r = &out[case];
        if !(r["keys"].as_u64().unwrap_or(0) > 0 && r["stopped_by"] == "ENOMEM") {
            wrong.push(format!(
                "{case}: the attack did not happen: TCP_MD5SIG keys should have filled the \
                 socket's option memory (ENOMEM after some keys), got {r}"
            ));
            continue;
        }
        match r["result"].as_str() {
            Some("PermissionError") => {}
            Some("echoed") => wrong.extend(mediation_problems(
                &gw,
                &echo,
                r,
                &format!("{case} socket with its option memory full"),
            )),
            _ => wrong.push(format!(
                "{case}: a connect with the option memory full must fail with EPERM or be \
                 mediated, got {r}"
            )),
        }
    }
    wrong.extend(mediation_problems(
        &gw,
        &echo,
        &out["fresh"],
        "a fresh agent socket right after (the refusal is per socket)",
    ));
    let mut problems = no_direct_problem(&echo);
    problems.extend(wrong);
    assert_none(
        &problems,
        &format!("option memory exhausted before connect ({out})"),
    );
}

// 2. Pid reuse: the programs exempt the daemon by its pid. After a SIGKILL the programs stay
//    attached, and an agent that gets the dead daemon's pid must not inherit the exemption.
#[test]
fn an_agent_that_takes_the_killed_daemons_pid_is_not_exempt() {
    let echo = EchoServer::start("127.0.0.1:0");
    let port = echo.addr.port();
    let mut gw = Gateway::start("pid-reuse", opts(port));
    let old = gw.pid().expect("the daemon is running");
    gw.kill9();
    let out = run_json(
        gw.wrap(python(PID_TAKER, &[old.to_string(), port.to_string()])),
        "the pid-taking helper",
    );
    let child = &out["child"];
    assert_eq!(
        child["pid"],
        json!(old),
        "the attack needs an agent process with the killed daemon's pid {old}, and the \
         helper could not get it: {out}"
    );
    assert_eq!(child["uid"], json!(65534), "{out}");
    let mut problems = Vec::new();
    if child["tcp"]["result"] != "ConnectionRefusedError" {
        problems.push(format!(
            "TCP from the agent with the dead daemon's pid must be refused (daemon down), got \
             {}",
            child["tcp"]
        ));
    }
    for udp in ["udp_443", "udp_scope"] {
        if child[udp] != "EPERM" {
            problems.push(format!(
                "{udp} from the agent with the dead daemon's pid must be EPERM, got {}",
                child[udp]
            ));
        }
    }
    problems = [no_direct_problem(&echo), problems].concat();
    gw.launch();
    problems.extend(ordinary_agent_problems(
        &gw,
        &echo,
        "an ordinary agent after the restart",
    ));
    assert_none(&problems, &format!("agent with pid {old} ({out})"));
}

/// Agents try every way to take the listener address while the daemon is down, and one
/// holds 127.0.0.1:listen4 while another agent connects. Returns what went wrong.
fn agent_squat_problems(gw: &Gateway, echo: &EchoServer) -> Vec<String> {
    let mut problems = Vec::new();
    let (l4, l6) = (gw.listen4.to_string(), gw.listen6.to_string());
    let binds = run_json(
        gw.wrap_as(
            python(SQUATTER, &["all".into(), l4.clone(), l6]),
            AGENT_USER,
        ),
        "the squatting agent",
    );
    for (addr, state) in binds.as_object().expect("an object") {
        if state != "EPERM" {
            problems.push(format!(
                "an agent's bind+listen on {addr} must fail with EPERM, got {state}"
            ));
        }
    }
    let mut holder = gw
        .wrap_as(
            python(
                SQUATTER,
                &["hold".into(), "127.0.0.1".into(), l4, "3".into()],
            ),
            AGENT_USER,
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the holding squatter");
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    let mut next_json = |what: &str| -> Value {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("the holding squatter ended before {what}"))
            .unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("squatter said {line:?}: {e}"))
    };
    let bound = next_json("its bind");
    if bound["bind"] != "EPERM" {
        problems.push(format!(
            "the holding squatter's bind of 127.0.0.1:{} must fail with EPERM, got {}",
            gw.listen4, bound["bind"]
        ));
    }
    let conn = agent_connect(gw, "4", "127.0.0.3", "127.0.0.1", echo.addr.port(), 0);
    let accepted = next_json("its accept report");
    assert!(holder.wait().unwrap().success());
    if accepted["accepted"]
        .as_array()
        .is_none_or(|a| !a.is_empty())
    {
        problems.push(format!(
            "the squatting agent accepted redirected connections: {accepted}"
        ));
    }
    if conn["result"] != "ConnectionRefusedError" {
        problems.push(format!(
            "an agent connecting while the daemon is down (and an agent squats its port) \
             must be refused, got {conn}"
        ));
    }
    problems
}

/// Root outside the agents listens on 127.0.0.1:listen4 (allowed) while an agent connects.
fn root_squat_problems(gw: &Gateway, echo: &EchoServer) -> Vec<String> {
    let squatter = TcpListener::bind(("127.0.0.1", gw.listen4)).unwrap_or_else(|e| {
        panic!(
            "a root process outside the agents must be able to bind 127.0.0.1:{} (the setup \
             of this attack): {e}",
            gw.listen4
        )
    });
    squatter.set_nonblocking(true).unwrap();
    let conn = agent_connect(gw, "4", "127.0.0.3", "127.0.0.1", echo.addr.port(), 0);
    let mut accepted = Vec::new();
    let end = Instant::now() + Duration::from_secs(1);
    while Instant::now() < end {
        match squatter.accept() {
            Ok((_, peer)) => accepted.push(peer),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("accept on the root squatter: {e}"),
        }
    }
    let mut problems = Vec::new();
    if !accepted.is_empty() {
        problems.push(format!(
            "a root process squatting the listener port got the agent's redirected \
             connection(s): {accepted:?}"
        ));
    }
    if conn["result"] != "ConnectionRefusedError" {
        problems.push(format!(
            "an agent connecting while the daemon is down (and root squats its port) must be \
             refused, got {conn}"
        ));
    }
    problems
}

/// Takes a fresh daemon down with `down`, lets `squat` try to take its place, brings the
/// daemon back and asserts that nothing went around it and it mediates again.
fn squat_round(
    name: &str,
    down: impl FnOnce(&mut Gateway) -> String,
    squat: impl Fn(&Gateway, &EchoServer) -> Vec<String>,
) {
    let echo = EchoServer::start("127.0.0.1:0");
    let mut gw = Gateway::start(name, opts(echo.addr.port()));
    let how = down(&mut gw);
    let mut problems = squat(&gw, &echo);
    problems = [no_direct_problem(&echo), problems].concat();
    // The daemon can take its listener back.
    gw.launch();
    problems.extend(ordinary_agent_problems(
        &gw,
        &echo,
        "an agent after the restart",
    ));
    assert_none(&problems, &format!("squatting the listener {how}"));
}

// 3a. Listener squatting after a crash: the programs still redirect to 127.0.0.1:listen4,
//     so an agent that listens there would receive other agents' connections.
#[test]
fn agents_cannot_squat_the_listener_while_the_daemon_is_down() {
    squat_round(
        "squat-kill",
        |gw| {
            gw.kill9();
            "by agents while the daemon is down (SIGKILL)".into()
        },
        agent_squat_problems,
    );
}

// 3b. The same with a squatter that is not an agent: root may bind the port, but the
//     redirected connections must only ever reach the daemon's own socket.
#[test]
fn a_root_squatter_outside_the_agents_gets_no_redirected_connection() {
    squat_round(
        "squat-root",
        |gw| {
            gw.kill9();
            "by root outside the agents while the daemon is down".into()
        },
        root_squat_problems,
    );
}

// 4. Listener squatting during a clean restart (SIGTERM, what systemctl restart does), with
//    the default intercept settings: the programs must stay attached and refuse.
#[test]
fn agents_cannot_squat_the_listener_during_a_restart() {
    squat_round(
        "squat-stop",
        |gw| format!("during a clean restart (stop exit status {:?})", gw.stop()),
        |gw, echo| {
            [
                agent_squat_problems(gw, echo),
                root_squat_problems(gw, echo),
            ]
            .concat()
        },
    );
}

// 5. A recreated agent cgroup has a new id: an agent placed in it at once must not connect
//    before the daemon has re-resolved the cgroup.
#[test]
fn a_recreated_agent_cgroup_is_mediated_from_its_first_connect() {
    const ROUNDS: usize = 100;
    let echo = EchoServer::start("127.0.0.1:0");
    let port = echo.addr.port();
    let gw = Gateway::start("cgroup-churn", opts(port));
    let cgroup = cgroup2_mount().expect("cgroup2 mount").join(&gw.cgroup);
    // Not wrapped: the helper stays outside the cgroup it removes.
    let out = run_json(
        python(
            CGROUP_CHURN,
            &[
                cgroup.display().to_string(),
                port.to_string(),
                ROUNDS.to_string(),
            ],
        ),
        "the cgroup-churning helper",
    );
    let results = out["results"].as_array().expect("results");
    assert_eq!(results.len(), ROUNDS, "{out}");
    let around = direct(&echo);
    let is_direct = |r: &Value| {
        r["local"][1]
            .as_u64()
            .is_some_and(|p| around.iter().any(|a| u64::from(a.port()) == p))
    };
    let mediated = results
        .iter()
        .filter(|r| r["result"] == "echoed" && !is_direct(r))
        .count();
    let refused = results
        .iter()
        .filter(|r| {
            matches!(
                r["result"].as_str(),
                Some("ConnectionRefusedError" | "PermissionError")
            )
        })
        .count();
    let other: Vec<&Value> = results
        .iter()
        .filter(|r| {
            r["result"] != "echoed"
                && !matches!(
                    r["result"].as_str(),
                    Some("ConnectionRefusedError" | "PermissionError")
                )
        })
        .collect();
    let summary = format!(
        "{ROUNDS} rounds: {} direct, {mediated} mediated, {refused} refused, {} otherwise; \
         the daemon itself recreated the cgroup in {} rounds",
        around.len(),
        other.len(),
        out["made_by_daemon"]
    );
    let mut problems = Vec::new();
    if !around.is_empty() {
        problems.push(format!(
            "DIRECT: {} first connects from a recreated agent cgroup reached the server from \
             {AGENT_IP}: {:?}",
            around.len(),
            &around[..around.len().min(10)]
        ));
    }
    if !other.is_empty() {
        problems.push(format!(
            "connections neither mediated nor refused: {:?}",
            &other[..other.len().min(10)]
        ));
    }
    if mediated < 95 {
        problems.push(format!(
            "expected at least 95 of {ROUNDS} mediated, {mediated} were"
        ));
    }
    assert_none(&problems, &summary);
}

/// The first of the usual dev ports that is free here (else any free port; the point is a
/// port outside 80/443/8080).
fn dev_port() -> u16 {
    [3001, 3101, 5000]
        .into_iter()
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .unwrap_or_else(free_port)
}

// 6. Scope: with the example config's [scope], an MCP server on a dev port is reached by
//    agents directly unless every TCP port is in scope.
#[test]
fn a_dev_port_is_mediated_with_the_example_scope() {
    let example = example_config();
    let scope = example
        .get("scope")
        .and_then(toml::Value::as_table)
        .cloned()
        .expect("the example config has a [scope] table");
    let port = dev_port();
    let echo = EchoServer::start(&format!("127.0.0.1:{port}"));
    let gw = Gateway::start(
        "dev-port",
        GatewayOptions {
            scope: Some(toml::to_string(&scope).expect("serializing [scope]")),
            ..Default::default()
        },
    );
    let out = agent_connect(&gw, "4", "127.0.0.3", "127.0.0.1", port, 0);
    let mut problems = no_direct_problem(&echo);
    let what = format!("an agent dialing the dev port {port} with the example's scope");
    let mediation = mediation_problems(&gw, &echo, &out, &what);
    if mediation.is_empty() {
        let flow = find_flow(&gw, out["local"][1].as_u64().unwrap()).unwrap();
        if flow["orig_dst"] != format!("127.0.0.1:{port}") {
            problems.push(format!(
                "{what}: the flow record names another destination: {flow}"
            ));
        }
    }
    problems.extend(mediation);
    if scope.get("all_tcp").and_then(toml::Value::as_bool) != Some(true) {
        problems.push(format!(
            "systemd/mcp-gateway.toml's [scope] must set all_tcp = true (it is: {}): with a \
             port list, an MCP server on any port not listed (dev servers on 3000, 3001, 5000, \
             8000, ...) is reached by agents directly, around the gateway",
            toml::to_string(&scope).unwrap().replace('\n', "; ")
        ));
    }
    assert_none(&problems, "a dev port with the example's scope");
}

// 7. A clean restart (SIGTERM, then start ~1 s later) under load with the example's
//    [intercept] detach_on_stop: no agent connection may go around the daemon meanwhile.
#[test]
fn a_clean_restart_with_the_example_defaults_never_lets_an_agent_around() {
    let example = example_config();
    let detach = example
        .get("intercept")
        .and_then(|t| t.get("detach_on_stop"))
        .map(|v| {
            v.as_bool()
                .expect("the example's detach_on_stop is a boolean")
        });
    let echo = EchoServer::start("127.0.0.1:0");
    let port = echo.addr.port();
    let mut gw = Gateway::start(
        "restart-example",
        GatewayOptions {
            ports: vec![port],
            // Absent in the example: the daemon's default applies, so it is not set here.
            intercept: detach
                .map(|d| format!("detach_on_stop = {d}"))
                .unwrap_or_default(),
            ..Default::default()
        },
    );
    let agent = gw
        .wrap_as(
            python(CONNECTING_AGENT, &[port.to_string(), "4".into()]),
            AGENT_USER,
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let status = gw.stop();
    std::thread::sleep(Duration::from_millis(1000));
    gw.launch();
    let out = agent.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the connecting agent failed: {}",
        out.status
    );
    let attempts: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let count = |r: &str| attempts.iter().filter(|a| a["result"] == r).count();
    let around = direct(&echo);
    let unknown: Vec<&Value> = attempts
        .iter()
        .filter(|a| {
            !matches!(
                a["result"].as_str(),
                Some("echoed" | "ConnectionRefusedError")
            )
        })
        .collect();
    let mut problems = Vec::new();
    if !around.is_empty() {
        problems.push(format!(
            "DIRECT: {} agent connections reached the server from {AGENT_IP} while the daemon \
             was stopped: {:?}",
            around.len(),
            &around[..around.len().min(10)]
        ));
    }
    if count("echoed") <= 20 {
        problems.push(format!("expected > 20 echoed, got {}", count("echoed")));
    }
    if count("ConnectionRefusedError") <= 5 {
        problems.push(format!(
            "expected > 5 refused while the daemon was stopped, got {}",
            count("ConnectionRefusedError")
        ));
    }
    if unknown.len() > 2 {
        problems.push(format!(
            "only connections cut by the stop itself may end otherwise: {unknown:?}"
        ));
    }
    assert_none(
        &problems,
        &format!(
            "clean restart with the example's detach_on_stop = {} (stop exit status {status:?}; \
             {} attempts, {} echoed, {} refused)",
            detach.map_or("absent (daemon default)".to_string(), |d| d.to_string()),
            attempts.len(),
            count("echoed"),
            count("ConnectionRefusedError"),
        ),
    );
}

/// A root UDP-Lite socket bound to `addr`.
fn udplite_bound(addr: SocketAddr) -> OwnedFd {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the descriptor is owned from here on.
    let raw = unsafe {
        libc::socket(
            family,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            IPPROTO_UDPLITE,
        )
    };
    assert!(
        raw >= 0,
        "creating a UDP-Lite socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let bound = match addr {
        SocketAddr::V4(a) => {
            nix::sys::socket::bind(fd.as_raw_fd(), &nix::sys::socket::SockaddrIn::from(a))
        }
        SocketAddr::V6(a) => {
            nix::sys::socket::bind(fd.as_raw_fd(), &nix::sys::socket::SockaddrIn6::from(a))
        }
    };
    bound.unwrap_or_else(|e| panic!("binding a UDP-Lite receiver on {addr}: {e}"));
    fd
}

/// Every datagram waiting on `fd`, waiting up to `wait` for the first.
fn received(fd: &OwnedFd, wait: Duration) -> Vec<String> {
    use nix::sys::socket::{recv, MsgFlags};
    let mut got = Vec::new();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 512];
    loop {
        match recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(nix::errno::Errno::EAGAIN) => {
                if !got.is_empty() || Instant::now() > deadline {
                    return got;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("recv on the UDP-Lite receiver: {e}"),
        }
    }
}

// 8. UDP-Lite: QUIC over UDP-Lite to 443 is UDP in all but the protocol number, which the
//    programs must not let through for agents either.
#[test]
fn udp_lite_to_443_is_refused_for_agents() {
    let scope = free_port();
    let gw = Gateway::start("udplite", opts(scope));
    let v4: SocketAddr = "127.0.0.1:443".parse().unwrap();
    let v6: SocketAddr = "[::1]:443".parse().unwrap();
    let (recv4, recv6) = (udplite_bound(v4), udplite_bound(v6));
    let seen = run_json(
        gw.wrap_as(python(UDPLITE_AGENT, &[]), AGENT_USER),
        "the UDP-Lite agent",
    );
    let mut problems = Vec::new();
    for (name, result) in seen.as_object().expect("an object") {
        // Refused by the send (or the connect) itself, or already by socket(): EPERM either way.
        if result != "EPERM" && result != "socket EPERM" {
            problems.push(format!(
                "UDP-Lite {name} to port 443 must be EPERM, got {result}"
            ));
        }
    }
    let arrived4 = received(&recv4, Duration::from_millis(300));
    let arrived6 = received(&recv6, Duration::from_millis(300));
    if !arrived4.is_empty() || !arrived6.is_empty() {
        problems.push(format!(
            "agents' UDP-Lite datagrams arrived at 443: on 127.0.0.1 {arrived4:?}, on ::1 \
             {arrived6:?}"
        ));
    }
    // The receivers work: a non-agent's (this root process's) datagrams arrive.
    for (fd, to) in [(&recv4, v4), (&recv6, v6)] {
        let family = if to.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: plain socket(2); the descriptor is owned from here on.
        let raw = unsafe {
            libc::socket(
                family,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                IPPROTO_UDPLITE,
            )
        };
        assert!(raw >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let sender = unsafe { OwnedFd::from_raw_fd(raw) };
        let flags = nix::sys::socket::MsgFlags::empty();
        let sent = match to {
            SocketAddr::V4(a) => nix::sys::socket::sendto(
                sender.as_raw_fd(),
                b"host",
                &nix::sys::socket::SockaddrIn::from(a),
                flags,
            ),
            SocketAddr::V6(a) => nix::sys::socket::sendto(
                sender.as_raw_fd(),
                b"host",
                &nix::sys::socket::SockaddrIn6::from(a),
                flags,
            ),
        };
        sent.unwrap_or_else(|e| panic!("a non-agent's UDP-Lite datagram to {to}: {e}"));
        assert_eq!(
            received(fd, Duration::from_secs(5)),
            vec!["host".to_string()],
            "the UDP-Lite receiver on {to} must see a non-agent's datagram (else it proves \
             nothing)"
        );
    }
    assert_none(
        &problems,
        &format!("UDP-Lite to 443 from an agent ({seen})"),
    );
}

// 9. MPTCP: an MPTCP socket connects through a TCP subflow; it must be refused or mediated,
//    and when mediated the agent must still see the server it dialed, not the listener.
#[test]
fn mptcp_is_mediated_and_getpeername_shows_the_server() {
    let enabled = std::fs::read_to_string("/proc/sys/net/mptcp/enabled").unwrap_or_else(|e| {
        panic!(
            "MPTCP is not available here (/proc/sys/net/mptcp/enabled: {e}): this attack needs it"
        )
    });
    assert_eq!(
        enabled.trim(),
        "1",
        "MPTCP is off (net.mptcp.enabled = {}): this attack needs it on",
        enabled.trim()
    );
    let echo = EchoServer::start("127.0.0.1:0");
    let port = echo.addr.port();
    let gw = Gateway::start("mptcp", opts(port));
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    for (family, src, dst) in [
        ("4", "127.0.0.3", "127.0.0.1"),
        ("6", "::ffff:127.0.0.3", "::ffff:127.0.0.1"),
    ] {
        let what = format!(
            "MPTCP (AF_INET{}) to {dst}:{port}",
            if family == "6" { "6" } else { "" }
        );
        let out = agent_connect(&gw, family, src, dst, port, IPPROTO_MPTCP);
        match out["result"].as_str() {
            Some("no socket") => problems.push(format!(
                "{what}: an MPTCP socket could not be created, so the attack cannot be made: \
                 {out}"
            )),
            Some("PermissionError") => {}
            Some("echoed") => {
                let mediation = mediation_problems(&gw, &echo, &out, &what);
                if mediation.is_empty() && out["peer"] != json!([dst, port]) {
                    problems.push(format!(
                        "{what}: mediated, but getpeername() shows {} instead of the server \
                         the agent dialed ({dst}, {port}); the gateway's listener ports are \
                         {} and {}",
                        out["peer"], gw.listen4, gw.listen6
                    ));
                }
                problems.extend(mediation);
            }
            _ => problems.push(format!(
                "{what}: must be refused (EPERM) or mediated, got {out}"
            )),
        }
        seen.push(out);
    }
    problems = [no_direct_problem(&echo), problems].concat();
    assert_none(&problems, &format!("MPTCP agents ({seen:?})"));
}
