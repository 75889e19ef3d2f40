//! More red-team attacks on the kernel side of the interception, beyond bypass.rs and
//! bypass_agent_state.rs: the other ways a TCP connection can be started (TCP Fast Open,
//! io_uring, a socket made by someone else), sockets used again after a refusal or a
//! disconnect, every spelling of a loopback address, binds of the listener's port, user
//! namespaces, and the agent cgroup's place in the hierarchy.
//!
//! Each test is one family of attacks an unprivileged agent (uid 65534 in the test's agent
//! cgroup) can make, and asserts what every test of the suite asserts: each attempt is
//! mediated by the daemon (the echo comes back, the server never meets the agent's socket,
//! a flow record exists) or refused, never made directly.
//!
//! How a direct connection is told apart: attacking sockets are bound to 127.0.0.3 (or
//! ::ffff:127.0.0.3), an address the gateway's own upstream sockets never use, and the echo
//! servers remember their peers. IPv6 attempts can only come from ::1, which the daemon uses
//! too: there a peer with the agent's own port and no flow record for it is the agent's
//! socket.
//!
//! What stays outside by design (README, Known limits): a privileged process that hands an
//! agent a socket it marked with the daemon's SO_MARK (the mark is the daemon's exemption,
//! and only CAP_NET_ADMIN sets it).

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gateway_tests::{cgroup2_mount, free_port, EchoServer, Gateway, GatewayOptions, PYTHON};
use serde_json::{json, Value};

/// The unprivileged agent user (nobody).
const AGENT_USER: &str = "65534";
/// The source address of attacking IPv4 sockets; the gateway never uses it.
const AGENT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// No agent program may run longer (each also arms SIGALRM itself, a little earlier).
const AGENT_DEADLINE: Duration = Duration::from_secs(50);

/// Shared by every agent program: raw syscalls, timeouts kept in the kernel (the sockets
/// stay blocking, as TCP Fast Open's sendto needs), an echo exchange and its report.
const PRELUDE: &str = r#"
import ctypes, errno, json, mmap, os, select, signal, socket, struct, sys, time
signal.alarm(45)
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
MARK = 0x4d435047
TCP_FASTOPEN_CONNECT = 30
TCP_FASTOPEN_NO_COOKIE = 34
MSG_FASTOPEN = 0x20000000
IPPROTO_MPTCP = 262

def err_name(e):
    if isinstance(e, int):
        return errno.errorcode.get(e, str(e))
    return errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__

def failed(out, e, at=None):
    out["result"] = type(e).__name__
    out["errno"] = err_name(e)
    if at:
        out["failed_at"] = at
    return out

def kernel_timeouts(s, seconds):
    tv = struct.pack("@ll", int(seconds), 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)

def local_of(s, out):
    try:
        out["local"] = list(s.getsockname()[:2])
    except OSError:
        pass

def fresh(family=socket.AF_INET, src="127.0.0.3", proto=0, seconds=5):
    s = socket.socket(family, socket.SOCK_STREAM, proto)
    kernel_timeouts(s, seconds)
    if src is not None:
        s.bind((src, 0))
    return s

def echo(s, out, sent=0, payload=b"ping\n"):
    # The rest of `payload` goes out (`sent` bytes already went, e.g. in a SYN), the echo
    # is read back, and the socket's addresses are reported.
    try:
        if sent < len(payload):
            s.sendall(payload[sent:])
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(len(payload) - len(got))
            if not chunk:
                break
            got += chunk
        local_of(s, out)
        out["peer"] = list(s.getpeername()[:2])
        out["result"] = "echoed" if got == payload else "closed after %r" % got
    except OSError as e:
        local_of(s, out)
        failed(out, e, "exchange")
    return out

def connect_echo(s, addr, out=None):
    out = {} if out is None else out
    local_of(s, out)
    try:
        s.connect(addr)
    except OSError as e:
        local_of(s, out)
        return failed(out, e, "connect")
    return echo(s, out)

def disconnect(s):
    # connect(AF_UNSPEC): TCP's disconnect, after which the socket may connect again.
    sa = struct.pack("=H", socket.AF_UNSPEC).ljust(16, b"\0")
    if libc.connect(s.fileno(), sa, len(sa)) != 0:
        return err_name(ctypes.get_errno())
    return "ok"
"#;

/// io_uring driven by hand: setup, the three mappings, one SQE at a time.
const IO_URING: &str = r#"
IORING_SETUP_SQPOLL = 2
IORING_ENTER_GETEVENTS, IORING_ENTER_SQ_WAKEUP = 1, 2
IOSQE_ASYNC = 1 << 4
OP_SENDMSG, OP_CONNECT, OP_SOCKET, OP_BIND, OP_LISTEN = 9, 16, 45, 56, 57

class Ring:
    def __init__(self, flags=0, entries=8):
        params = ctypes.create_string_buffer(120)
        struct.pack_into("=I", params, 8, flags)
        struct.pack_into("=I", params, 16, 2000)  # sq_thread_idle, ms
        fd = libc.syscall(ctypes.c_long(425), ctypes.c_long(entries), params)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "io_uring_setup")
        self.fd, self.sqpoll = fd, bool(flags & IORING_SETUP_SQPOLL)
        sq_entries, cq_entries = struct.unpack_from("=II", params, 0)
        # struct io_sqring_offsets: head tail ring_mask ring_entries flags dropped array resv1 user_addr
        self.sq_off = struct.unpack_from("=8IQ", params, 40)
        # struct io_cqring_offsets: head tail ring_mask ring_entries overflow cqes flags resv1 user_addr
        self.cq_off = struct.unpack_from("=8IQ", params, 80)
        rw = mmap.PROT_READ | mmap.PROT_WRITE
        self.sq = mmap.mmap(fd, self.sq_off[6] + sq_entries * 4, mmap.MAP_SHARED, rw, offset=0)
        self.cq = mmap.mmap(fd, self.cq_off[5] + cq_entries * 16, mmap.MAP_SHARED, rw,
                            offset=0x8000000)
        self.sqes = mmap.mmap(fd, sq_entries * 64, mmap.MAP_SHARED, rw, offset=0x10000000)

    def u32(self, m, off):
        return struct.unpack_from("=I", m, off)[0]

    def enter(self, to_submit, min_complete, flags):
        rc = libc.syscall(ctypes.c_long(426), ctypes.c_long(self.fd), ctypes.c_long(to_submit),
                          ctypes.c_long(min_complete), ctypes.c_long(flags), None, ctypes.c_long(0))
        if rc < 0 and ctypes.get_errno() not in (errno.EINTR, errno.EAGAIN, errno.EBUSY):
            raise OSError(ctypes.get_errno(), "io_uring_enter")

    def run(self, opcode, fd, addr=0, off=0, length=0, op_flags=0, sqe_flags=0):
        # One request to completion; returns the CQE's res (negative errno on failure).
        tail = self.u32(self.sq, self.sq_off[1])
        idx = tail & self.u32(self.sq, self.sq_off[2])
        sqe = struct.pack("=BBHiQQIIQHHiQQ", opcode, sqe_flags, 0, fd, off, addr, length,
                          op_flags, 7, 0, 0, 0, 0, 0)
        self.sqes[idx * 64:(idx + 1) * 64] = sqe
        struct.pack_into("=I", self.sq, self.sq_off[6] + idx * 4, idx)
        struct.pack_into("=I", self.sq, self.sq_off[1], tail + 1)
        flags = IORING_ENTER_GETEVENTS | (IORING_ENTER_SQ_WAKEUP if self.sqpoll else 0)
        end = time.monotonic() + 10
        while True:
            head, ctail = self.u32(self.cq, self.cq_off[0]), self.u32(self.cq, self.cq_off[1])
            if head != ctail:
                break
            if time.monotonic() > end:
                raise OSError(errno.ETIMEDOUT, "no completion")
            self.enter(0 if self.sqpoll else 1, 1, flags)
            if self.sqpoll:
                time.sleep(0.01)
        at = self.cq_off[5] + (head & self.u32(self.cq, self.cq_off[2])) * 16
        _, res, _ = struct.unpack_from("=QiI", self.cq, at)
        struct.pack_into("=I", self.cq, self.cq_off[0], head + 1)
        return res

def sockaddr(family, host, port):
    if family == socket.AF_INET:
        raw = struct.pack("=H", family) + struct.pack("!H", port) + socket.inet_aton(host)
        return ctypes.create_string_buffer(raw.ljust(16, b"\0"), 16)
    raw = (struct.pack("=H", family) + struct.pack("!HI", port, 0)
           + socket.inet_pton(family, host) + struct.pack("=I", 0))
    return ctypes.create_string_buffer(raw, 28)

class Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

class Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(Iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]
"#;

/// TCP Fast Open, every way: sendto(MSG_FASTOPEN) (with and without a cookie: without one,
/// TCP_FASTOPEN_NO_COOKIE puts the data in the SYN), TCP_FASTOPEN_CONNECT then connect(),
/// IPv4, v4-mapped, IPv6 and MPTCP; and to the listener itself. argv = port, listen4, listen6.
const TFO_AGENT: &str = r#"
port, l4, l6 = map(int, sys.argv[1:4])

def attempt(name, family, src, dst, dport, mode, proto=0, no_cookie=False):
    out = {"name": name}
    try:
        s = fresh(family, src, proto)
    except OSError as e:
        return failed(out, e, "socket/bind")
    try:
        local_of(s, out)
        if no_cookie:
            s.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_NO_COOKIE, 1)
        if mode == "sendto":
            try:
                sent = s.sendto(b"ping\n", MSG_FASTOPEN, (dst, dport))
            except OSError as e:
                local_of(s, out)
                return failed(out, e, "sendto")
            out["sent_with_connect"] = sent
            echo(s, out, sent)
        else:
            s.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)
            connect_echo(s, (dst, dport), out)
    except OSError as e:
        failed(out, e)
    finally:
        s.close()
    return out

A4, A6 = socket.AF_INET, socket.AF_INET6
runs = [
    ("v4 sendto", A4, "127.0.0.3", "127.0.0.1", port, "sendto", 0, False),
    ("v4 sendto no cookie", A4, "127.0.0.3", "127.0.0.1", port, "sendto", 0, True),
    ("v4 TCP_FASTOPEN_CONNECT", A4, "127.0.0.3", "127.0.0.1", port, "connect", 0, False),
    ("v4 TCP_FASTOPEN_CONNECT no cookie", A4, "127.0.0.3", "127.0.0.1", port, "connect", 0, True),
    ("v4-mapped sendto no cookie", A6, "::ffff:127.0.0.3", "::ffff:127.0.0.1", port, "sendto", 0, True),
    ("v4-mapped TCP_FASTOPEN_CONNECT no cookie", A6, "::ffff:127.0.0.3", "::ffff:127.0.0.1", port, "connect", 0, True),
    ("v6 sendto no cookie", A6, "::1", "::1", port, "sendto", 0, True),
    ("v6 TCP_FASTOPEN_CONNECT no cookie", A6, "::1", "::1", port, "connect", 0, True),
    ("mptcp sendto no cookie", A4, "127.0.0.3", "127.0.0.1", port, "sendto", IPPROTO_MPTCP, True),
    ("mptcp TCP_FASTOPEN_CONNECT", A4, "127.0.0.3", "127.0.0.1", port, "connect", IPPROTO_MPTCP, False),
    ("listener4 sendto no cookie", A4, "127.0.0.3", "127.0.0.1", l4, "sendto", 0, True),
    ("listener4 v4-mapped sendto no cookie", A6, "::ffff:127.0.0.3", "::ffff:127.0.0.1", l4, "sendto", 0, True),
    ("listener6 sendto no cookie", A6, "::1", "::1", l6, "sendto", 0, True),
]
print(json.dumps([attempt(*r) for r in runs]))
"#;

/// Root, outside the agents: makes TCP sockets and hands them to the first process that
/// connects to the abstract Unix socket argv[1]. argv = name.
const SOCKET_GIVER: &str = r#"
name = sys.argv[1]
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind("\0" + name)
srv.listen(1)
srv.settimeout(40)

def made(family, src, proto=0):
    s = socket.socket(family, socket.SOCK_STREAM, proto)
    if src is not None:
        s.bind((src, 0))
    return s

socks = [made(socket.AF_INET, "127.0.0.3"), made(socket.AF_INET, None),
         made(socket.AF_INET6, "::ffff:127.0.0.3"), made(socket.AF_INET, "127.0.0.3", IPPROTO_MPTCP)]
print("ready", flush=True)
c, _ = srv.accept()
socket.send_fds(c, [b"socks"], [s.fileno() for s in socks])
c.settimeout(40)
c.recv(1)
"#;

/// The agent that receives those sockets and connects each to the server in scope.
/// argv = name, port.
const SOCKET_TAKER: &str = r#"
name, port = sys.argv[1], int(sys.argv[2])
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
c.connect("\0" + name)
_, fds, _, _ = socket.recv_fds(c, 16, 8)
names = ["v4 bound by root", "v4 unbound", "v4-mapped bound by root", "mptcp bound by root"]
if len(fds) == 1:
    names = ["v4 marked by root"]
out = []
for n, fd in zip(names, fds):
    s = socket.socket(fileno=fd)
    kernel_timeouts(s, 5)
    r = {"name": n, "uid": os.getuid()}
    try:
        if n == "v4 unbound":
            s.bind(("127.0.0.3", 0))
        dst = "::ffff:127.0.0.1" if "mapped" in n else "127.0.0.1"
        connect_echo(s, (dst, port), r)
    except OSError as e:
        failed(r, e)
    out.append(r)
    s.close()
c.send(b"x")
print(json.dumps(out))
"#;

/// Sockets refused while the daemon is down, then used again once it is back; disconnects
/// with connect(AF_UNSPEC) between a direct out-of-scope connection and one in scope.
/// Prints one JSON line per phase and waits for a line on stdin between them.
/// argv = port in scope, port out of scope, listen4.
const RECONNECT_AGENT: &str = r#"
port, out_port, l4 = map(int, sys.argv[1:4])
IN, IN_MAPPED, OUT = ("127.0.0.1", port), ("::ffff:127.0.0.1", port), ("127.0.0.1", out_port)
kept, phase1 = {}, []

def keep(name, s, r):
    r["name"] = name
    kept[name] = s
    phase1.append(r)

# While the daemon is down: each socket's connect in scope is refused.
s = fresh()
keep("blocking refused", s, connect_echo(s, IN))
s = fresh()
r = {}
local_of(s, r)
s.setblocking(False)
r["connect_ex"] = err_name(s.connect_ex(IN))
select.select([], [s], [], 5)
r["so_error"] = err_name(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
s.setblocking(True)
kernel_timeouts(s, 5)
r["result"] = "nonblocking attempt"
keep("nonblocking refused", s, r)
s = fresh()
keep("listener itself", s, connect_echo(s, ("127.0.0.1", l4)))
s = fresh(socket.AF_INET6, "::ffff:127.0.0.3")
keep("v4-mapped refused", s, connect_echo(s, IN_MAPPED))
s = fresh()
s.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)
s.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_NO_COOKIE, 1)
keep("TCP_FASTOPEN_CONNECT refused", s, connect_echo(s, IN))
try:
    s = fresh(proto=IPPROTO_MPTCP)
    keep("mptcp refused", s, connect_echo(s, IN))
except OSError as e:
    phase1.append(failed({"name": "mptcp refused"}, e, "socket"))
# Out of scope: direct, as it should be; then disconnected.
s = fresh()
r = connect_echo(s, OUT)
r["disconnect"] = disconnect(s)
keep("out of scope, then disconnected", s, r)
print(json.dumps(phase1), flush=True)
sys.stdin.readline()

# The daemon is back: every kept socket connects in scope again.
phase2 = []
for name, s in kept.items():
    dst = IN_MAPPED if name.startswith("v4-mapped") else IN
    r = {"name": name}
    try:
        connect_echo(s, dst, r)
        if r.get("failed_at") == "connect" and r.get("errno") in ("ECONNREFUSED", "ECONNABORTED"):
            # A pending error of the refused attempt may be reported once more.
            r["first_try"] = r.pop("errno")
            r.pop("result"); r.pop("failed_at")
            connect_echo(s, dst, r)
    except OSError as e:
        failed(r, e)
    phase2.append(r)
    s.close()

# One socket, three connects: in scope, in scope again after a disconnect, then out of
# scope (where getpeername must name the server it reached, not the earlier one).
s = fresh()
a = connect_echo(s, IN, {"name": "in scope"})
a["disconnect"] = disconnect(s)
b = connect_echo(s, IN, {"name": "in scope again after AF_UNSPEC"})
b["disconnect"] = disconnect(s)
c = connect_echo(s, OUT, {"name": "out of scope after AF_UNSPEC"})
s.close()
# Out of scope first, then in scope on the same socket.
s = fresh()
d = connect_echo(s, OUT, {"name": "out of scope first"})
d["disconnect"] = disconnect(s)
e = connect_echo(s, IN, {"name": "in scope after an out-of-scope connection"})
s.close()
print(json.dumps({"kept": phase2, "same_socket": [a, b, c, d, e]}), flush=True)
"#;

/// One connection per spec: every spelling of a loopback destination, from IPv4, dual-stack
/// and IPV6_V6ONLY sockets. argv = JSON list of
/// [name, family, v6only (null: default), source (null: unbound), destination, port,
///  flowinfo, scope id (or "lo")].
const ADDR_AGENT: &str = r#"
out = []
for name, family, v6only, src, dst, dport, flowinfo, scope in json.loads(sys.argv[1]):
    r = {"name": name}
    fam = socket.AF_INET6 if family == 6 else socket.AF_INET
    try:
        s = socket.socket(fam, socket.SOCK_STREAM)
        kernel_timeouts(s, 5)
        if v6only is not None:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        if src is not None:
            s.bind((src, 0))
    except OSError as e:
        out.append(failed(r, e, "socket/bind"))
        continue
    if scope == "lo":
        scope = socket.if_nametoindex("lo")
    addr = (dst, dport) if fam == socket.AF_INET else (dst, dport, flowinfo, scope)
    out.append(connect_echo(s, addr, r))
    s.close()
print(json.dumps(out))
"#;

/// Every way to bind the listener's ports: each address of both families, dual-stack and
/// V6ONLY, scope ids, SO_REUSEADDR/SO_REUSEPORT, IP_FREEBIND, TCP, MPTCP and UDP; binds that
/// succeed are kept listening for a moment, so a success is visible. argv = listen4, listen6.
const BIND_AGENT: &str = r#"
l4, l6 = int(sys.argv[1]), int(sys.argv[2])
IP_FREEBIND, IPV6_FREEBIND = 15, 78
out = {}
v4 = ["127.0.0.1", "127.0.0.2", "0.0.0.0"]
v6 = ["::1", "::", "::ffff:127.0.0.1", "::ffff:127.0.0.2", "::ffff:0.0.0.0"]
for port in (l4, l6):
    for fam, hosts in ((socket.AF_INET, v4), (socket.AF_INET6, v6)):
        for host in hosts:
            for proto, kind in ((0, socket.SOCK_STREAM), (IPPROTO_MPTCP, socket.SOCK_STREAM),
                                (0, socket.SOCK_DGRAM)):
                for opts in ("plain", "reuse", "freebind", "v6only", "scope"):
                    if fam == socket.AF_INET and opts in ("v6only", "scope"):
                        continue
                    if opts == "scope" and host != "::1":
                        continue
                    key = "%s %s:%d %s %s" % ("v4" if fam == socket.AF_INET else "v6", host, port,
                                              {0: "tcp" if kind == socket.SOCK_STREAM else "udp",
                                               IPPROTO_MPTCP: "mptcp"}[proto], opts)
                    try:
                        s = socket.socket(fam, kind, proto)
                    except OSError as e:
                        out[key] = "socket " + err_name(e)
                        continue
                    try:
                        if opts == "reuse":
                            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                        if opts == "freebind":
                            if fam == socket.AF_INET:
                                s.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
                            else:
                                s.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
                        if opts == "v6only":
                            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                        addr = (host, port) if fam == socket.AF_INET else (
                            host, port, 0, socket.if_nametoindex("lo") if opts == "scope" else 0)
                        s.bind(addr)
                        if kind == socket.SOCK_STREAM:
                            s.listen(8)
                        out[key] = "bound"
                    except OSError as e:
                        out[key] = err_name(e)
                    finally:
                        s.close()
print(json.dumps(out))
"#;

/// io_uring: connect inline, from an io-wq worker (IOSQE_ASYNC) and from an SQPOLL thread;
/// a socket made by IORING_OP_SOCKET; TCP Fast Open by IORING_OP_SENDMSG from a worker; the
/// listener dialed directly; and IORING_OP_BIND of the listener's port.
/// argv = port, listen4.
const IO_URING_AGENT: &str = r#"
port, l4 = int(sys.argv[1]), int(sys.argv[2])
out = []

def ring_connect(name, ring, sqe_flags=0, dport=None, op_socket=False):
    r = {"name": name}
    dport = port if dport is None else dport
    try:
        if op_socket:
            fd = ring.run(OP_SOCKET, socket.AF_INET, off=socket.SOCK_STREAM, length=0)
            if fd < 0:
                r["socket_res"] = err_name(-fd)
                r["result"] = "no socket"
                return r
            s = socket.socket(fileno=fd)
            kernel_timeouts(s, 5)
            s.bind(("127.0.0.3", 0))
        else:
            s = fresh()
        local_of(s, r)
        sa = sockaddr(socket.AF_INET, "127.0.0.1", dport)
        res = ring.run(OP_CONNECT, s.fileno(), addr=ctypes.addressof(sa), off=16, sqe_flags=sqe_flags)
        r["res"] = res
        if res < 0:
            r["result"] = "connect failed"
            r["errno"] = err_name(-res)
        else:
            echo(s, r)
        s.close()
    except OSError as e:
        failed(r, e)
    return r

def ring_fastopen(name, ring):
    r = {"name": name}
    try:
        s = fresh()
        s.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_NO_COOKIE, 1)
        local_of(s, r)
        sa = sockaddr(socket.AF_INET, "127.0.0.1", port)
        data = ctypes.create_string_buffer(b"ping\n", 5)
        iov = Iovec(ctypes.addressof(data), 5)
        msg = Msghdr(ctypes.addressof(sa), 16, ctypes.pointer(iov), 1, None, 0, 0)
        res = ring.run(OP_SENDMSG, s.fileno(), addr=ctypes.addressof(msg),
                       op_flags=MSG_FASTOPEN, sqe_flags=IOSQE_ASYNC)
        r["res"] = res
        if res < 0 and -res != errno.EINPROGRESS:
            r["result"] = "sendmsg failed"
            r["errno"] = err_name(-res)
        else:
            if res < 0:
                select.select([], [s], [], 5)
            echo(s, r, max(res, 0))
        s.close()
    except OSError as e:
        failed(r, e)
    return r

def ring_bind(name, ring, host):
    r = {"name": name}
    try:
        s = socket.socket()
        sa = sockaddr(socket.AF_INET, host, l4)
        res = ring.run(OP_BIND, s.fileno(), addr=ctypes.addressof(sa), off=16)
        if res == 0:
            res = ring.run(OP_LISTEN, s.fileno(), length=8)
            r["result"] = "bound" if res == 0 else "bound, listen " + err_name(-res)
        else:
            r["result"] = err_name(-res)
        s.close()
    except OSError as e:
        failed(r, e)
    return r

plain = Ring()
out.append(ring_connect("connect inline", plain))
out.append(ring_connect("connect from an io-wq worker", plain, IOSQE_ASYNC))
out.append(ring_connect("IORING_OP_SOCKET then connect from a worker", plain, IOSQE_ASYNC, op_socket=True))
out.append(ring_fastopen("sendmsg MSG_FASTOPEN from a worker", plain))
out.append(ring_connect("listener dialed directly from a worker", plain, IOSQE_ASYNC, dport=l4))
out.append(ring_bind("IORING_OP_BIND 127.0.0.2:listen4", plain, "127.0.0.2"))
out.append(ring_bind("IORING_OP_BIND 0.0.0.0:listen4", plain, "0.0.0.0"))
try:
    sq = Ring(IORING_SETUP_SQPOLL)
    out.append(ring_connect("connect from an SQPOLL thread", sq))
    out.append(ring_connect("connect from an SQPOLL thread, async", sq, IOSQE_ASYNC))
except OSError as e:
    out.append(failed({"name": "SQPOLL ring"}, e, "io_uring_setup"))
print(json.dumps(out))
"#;

/// An agent in a user namespace of its own (root there, uid 65534 outside): SO_MARK on its
/// sockets, connections, and writes to cgroup.procs files outside its cgroup; then a child
/// in a network namespace of its own, where SO_MARK works. argv = port, cgroup.procs paths…
const USERNS_AGENT: &str = r#"
port = int(sys.argv[1])
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
out = {"uid_before": os.getuid()}
before = fresh()

def map_self():
    for f, v in (("setgroups", "deny"), ("uid_map", "0 65534 1"), ("gid_map", "0 65534 1")):
        with open("/proc/self/" + f, "w") as fh:
            fh.write(v)

if libc.unshare(CLONE_NEWUSER) != 0:
    out["unshare"] = err_name(ctypes.get_errno())
else:
    out["unshare"] = "ok"
    map_self()
out["uid_in_namespace"] = os.getuid()
after = fresh()
for name, s in (("socket made before", before), ("socket made after", after)):
    r = {"name": name}
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)
        r["so_mark"] = "set"
    except OSError as e:
        r["so_mark"] = err_name(e)
    out[name] = connect_echo(s, ("127.0.0.1", port), r)
    s.close()
moves = {}
for path in sys.argv[2:]:
    try:
        with open(path, "w") as fh:
            fh.write(str(os.getpid()))
        moves[path] = "moved"
    except OSError as e:
        moves[path] = err_name(e)
out["cgroup_moves"] = moves
out["after the moves"] = connect_echo(fresh(), ("127.0.0.1", port), {"name": "after the moves"})

r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    res = {}
    try:
        if libc.unshare(CLONE_NEWNET) != 0:
            res["unshare"] = err_name(ctypes.get_errno())
        else:
            res["unshare"] = "ok"
            s = socket.socket()
            kernel_timeouts(s, 3)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)
            res["so_mark"] = "set"
            try:
                s.connect(("127.0.0.1", port))
                res["connect"] = "connected"
            except OSError as e:
                res["connect"] = err_name(e)
    except BaseException as e:
        res["error"] = repr(e)
    os.write(w, json.dumps(res).encode())
    os._exit(0)
os.close(w)
data = b""
while True:
    chunk = os.read(r, 65536)
    if not chunk:
        break
    data += chunk
os.waitpid(pid, 0)
out["own network namespace"] = json.loads(data)
print(json.dumps(out))
"#;

/// An agent whose cgroup's parent is delegated to it (owned by its uid, as systemd does for
/// a user's own manager, user@UID.service): it creates a sibling cgroup, moves itself there
/// and connects. argv = the parent cgroup's directory, port.
const CGROUP_LEAVER: &str = r#"
parent, port = sys.argv[1], int(sys.argv[2])
out = {"cgroup_before": open("/proc/self/cgroup").read().strip()}
escape = os.path.join(parent, "escape")
try:
    os.mkdir(escape)
    out["mkdir"] = "ok"
except OSError as e:
    out["mkdir"] = err_name(e)
try:
    with open(os.path.join(escape, "cgroup.procs"), "w") as fh:
        fh.write(str(os.getpid()))
    out["move"] = "moved"
except OSError as e:
    out["move"] = err_name(e)
out["cgroup_after"] = open("/proc/self/cgroup").read().strip()
# Let the daemon resolve the new cgroup (until then it is taken for an agent's).
time.sleep(2)
out["conn"] = connect_echo(fresh(), ("127.0.0.1", port))
print(json.dumps(out))
"#;

fn opts(port: u16) -> GatewayOptions {
    GatewayOptions {
        ports: vec![port],
        ..Default::default()
    }
}

/// `python3 -c PRELUDE+parts args...`
fn python(parts: &[&str], args: &[String]) -> Command {
    let mut cmd = Command::new(PYTHON);
    cmd.arg("-c")
        .arg([&[PRELUDE][..], parts].concat().concat())
        .args(args);
    cmd
}

/// Runs a program to its end (at most AGENT_DEADLINE) and parses its last output line.
fn run_json(mut cmd: Command, what: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    // The agent user must be able to write them: they are opened here, passed as fds.
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let deadline = Instant::now() + AGENT_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} still running after {AGENT_DEADLINE:?}; stdout={} stderr={}",
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(
        status.success(),
        "{what} failed ({status}): stdout={stdout} stderr={stderr}"
    );
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("{what} printed nothing; stderr={stderr}"));
    eprintln!("{what}: {line}");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{what}'s output {line:?}: {e}"))
}

/// An agent program: uid 65534 in the test's agent cgroup.
fn agent(gw: &Gateway, parts: &[&str], args: &[String]) -> Command {
    gw.wrap_as(python(parts, args), AGENT_USER)
}

fn client_port(record: &Value) -> Option<u64> {
    record["client"].as_str()?.rsplit(':').next()?.parse().ok()
}

/// The daemon's audit record (flow or refused) of the connection from `port`, waiting up to
/// `wait` for it.
fn record_for(gw: &Gateway, port: u64, wait: Duration) -> Option<Value> {
    let deadline = Instant::now() + wait;
    loop {
        let hit = gw.audit_records().into_iter().find(|r| {
            matches!(r["type"].as_str(), Some("flow" | "refused")) && client_port(r) == Some(port)
        });
        if hit.is_some() || Instant::now() > deadline {
            return hit;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An address as the echo server would see it (v4-mapped peers written as IPv4).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn local_addr(out: &Value) -> Option<(IpAddr, u16)> {
    let ip: IpAddr = out["local"][0].as_str()?.split('%').next()?.parse().ok()?;
    let port = u16::try_from(out["local"][1].as_u64()?).ok()?;
    Some((canonical(ip), port))
}

/// Every peer of `echoes` that was an agent's socket bound to 127.0.0.3.
fn direct_peers(echoes: &[&EchoServer]) -> Vec<SocketAddr> {
    echoes
        .iter()
        .flat_map(|e| e.peers())
        .filter(|p| canonical(p.ip()) == IpAddr::V4(AGENT_IP))
        .collect()
}

/// How one attempt ended, judged from the agent's report, the servers' peers and the audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Echoed, the server never met the agent's socket, a flow record names it.
    Mediated,
    /// The daemon took the connection and recorded it, and the upstream side failed.
    MediatedFailed,
    /// The connect failed (or, for a deferred Fast Open connect, the first send).
    Refused,
}

/// The verdict on one attempt (in scope of `echoes`), or why it is a problem.
fn judge(gw: &Gateway, echoes: &[&EchoServer], out: &Value) -> Result<Verdict, String> {
    let local = local_addr(out);
    let seen_directly = local.is_some_and(|(ip, port)| {
        echoes
            .iter()
            .flat_map(|e| e.peers())
            .any(|p| canonical(p.ip()) == ip && p.port() == port)
    });
    let result = out["result"].as_str().unwrap_or("");
    let port = local.map(|(_, p)| u64::from(p)).filter(|p| *p != 0);
    if seen_directly {
        // From 127.0.0.3 nothing but the agent's socket can come; from ::1 a daemon's
        // upstream socket can have the same port: its flow record tells.
        let is_agent_ip = local.is_some_and(|(ip, _)| ip == IpAddr::V4(AGENT_IP));
        let recorded = port.and_then(|p| record_for(gw, p, Duration::from_secs(3)));
        if is_agent_ip || recorded.is_none() {
            return Err(format!(
                "DIRECT: the server met the agent's own socket {:?} ({out})",
                local
            ));
        }
    }
    match result {
        "echoed" => match port.and_then(|p| record_for(gw, p, Duration::from_secs(10))) {
            Some(r) if r["type"] == "flow" => Ok(Verdict::Mediated),
            other => Err(format!(
                "echoed, but the gateway has no flow record of the connection ({out}; record: \
                 {other:?})"
            )),
        },
        // Connected, then closed or reset by the daemon without an echo (its upstream
        // connection failed): the daemon must have recorded the connection.
        r if r.starts_with("closed")
            || (out["failed_at"] == "exchange"
                && !matches!(out["errno"].as_str(), Some("ECONNREFUSED" | "EPERM"))) =>
        {
            match port.and_then(|p| record_for(gw, p, Duration::from_secs(10))) {
                Some(_) => Ok(Verdict::MediatedFailed),
                None => Err(format!(
                    "connected and closed without an echo, and the gateway has no record of it \
                     ({out})"
                )),
            }
        }
        "" => Err(format!("no result reported: {out}")),
        _ => Ok(Verdict::Refused),
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

/// Judges every attempt of a list; returns the problems and a summary line per attempt.
fn judge_all(
    gw: &Gateway,
    echoes: &[&EchoServer],
    attempts: &[Value],
    problems: &mut Vec<String>,
) -> Vec<String> {
    attempts
        .iter()
        .map(|a| {
            let name = a["name"].as_str().unwrap_or("?").to_string();
            match judge(gw, echoes, a) {
                Ok(v) => format!("{name}: {v:?} ({})", a["errno"].as_str().unwrap_or("")),
                Err(p) => {
                    problems.push(format!("{name}: {p}"));
                    format!("{name}: PROBLEM")
                }
            }
        })
        .collect()
}

fn no_direct(echoes: &[&EchoServer], problems: &mut Vec<String>) {
    let around = direct_peers(echoes);
    if !around.is_empty() {
        problems.insert(
            0,
            format!(
                "DIRECT: the server was reached by agents' own sockets (from {AGENT_IP}): \
                 {around:?}"
            ),
        );
    }
}

/// Starts an echo server on 0.0.0.0:port and [::1]:port, for a port free on both.
fn echo_pair() -> (EchoServer, EchoServer) {
    let port = free_port();
    (
        EchoServer::start(&format!("0.0.0.0:{port}")),
        EchoServer::start(&format!("[::1]:{port}")),
    )
}

/// net.ipv4.tcp_fastopen with the client bit (1) set for as long as the guard lives; the
/// value found is written back when it is dropped (also when the test fails).
struct FastOpenClient {
    before: Option<String>,
}

impl FastOpenClient {
    const PATH: &'static str = "/proc/sys/net/ipv4/tcp_fastopen";

    fn enable() -> Self {
        let now = std::fs::read_to_string(Self::PATH).expect("reading net.ipv4.tcp_fastopen");
        let value: u32 = now
            .trim()
            .parse()
            .expect("net.ipv4.tcp_fastopen is a number");
        if value & 1 == 1 {
            return Self { before: None };
        }
        std::fs::write(Self::PATH, (value | 1).to_string()).expect("setting tcp_fastopen");
        Self {
            before: Some(now.trim().to_string()),
        }
    }
}

impl Drop for FastOpenClient {
    fn drop(&mut self) {
        if let Some(v) = &self.before {
            let _ = std::fs::write(Self::PATH, v);
        }
    }
}

// 1. TCP Fast Open: sendto(MSG_FASTOPEN) connects and may carry data in the SYN;
//    TCP_FASTOPEN_CONNECT defers the SYN from connect() to the first write. Both start the
//    connection from tcp_sendmsg, not from connect(2).
#[test]
fn tcp_fast_open_is_mediated_or_refused() {
    let _tfo = FastOpenClient::enable();
    let (echo4, echo6) = echo_pair();
    let port = echo4.addr.port();
    let gw = Gateway::start("tfo", opts(port));
    let out = run_json(
        agent(
            &gw,
            &[TFO_AGENT],
            &[
                port.to_string(),
                gw.listen4.to_string(),
                gw.listen6.to_string(),
            ],
        ),
        "the TCP Fast Open agent",
    );
    let attempts = out.as_array().expect("a list").clone();
    let echoes = [&echo4, &echo6];
    let mut problems = Vec::new();
    let summary = judge_all(&gw, &echoes, &attempts, &mut problems);
    for a in &attempts {
        let name = a["name"].as_str().unwrap_or("");
        if !name.starts_with("listener") && a["result"] != "echoed" {
            problems.push(format!(
                "{name}: expected mediated (the daemon is up), got {a}"
            ));
        }
        if name.starts_with("listener") && a["errno"] != "EPERM" {
            problems.push(format!(
                "{name}: an agent dialing the listener itself must get EPERM, got {a}"
            ));
        }
    }
    no_direct(&echoes, &mut problems);
    assert_none(
        &problems,
        &format!("TCP Fast Open agents:\n{}", summary.join("\n")),
    );
}

/// Starts the root socket giver on a fresh abstract name and waits for it to be ready.
fn socket_giver(name: &str) -> std::process::Child {
    let mut giver = python(&[SOCKET_GIVER], &[name.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the socket giver");
    let mut line = String::new();
    BufReader::new(giver.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "the socket giver did not start");
    giver
}

// 2. A socket made by a process outside the agents (root, not in the agent cgroup) and
//    handed to an agent over a Unix socket (SCM_RIGHTS): the agent connects it.
#[test]
fn a_socket_made_outside_the_agents_and_passed_in_is_mediated() {
    let echo = EchoServer::start("127.0.0.1:0");
    let port = echo.addr.port();
    let gw = Gateway::start("scm-rights", opts(port));
    let name = format!("mcp-gw-bypass-more-{}-scm", std::process::id());
    let mut giver = socket_giver(&name);
    let out = run_json(
        agent(&gw, &[SOCKET_TAKER], &[name.clone(), port.to_string()]),
        "the agent taking root's sockets",
    );
    let _ = giver.kill();
    let _ = giver.wait();
    let attempts = out.as_array().expect("a list").clone();
    assert_eq!(attempts.len(), 4, "the agent got every socket: {out}");
    let mut problems = Vec::new();
    let summary = judge_all(&gw, &[&echo], &attempts, &mut problems);
    for a in &attempts {
        if a["result"] != "echoed" && a["errno"] != "EPERM" {
            problems.push(format!(
                "{}: expected mediated (or EPERM), got {a}",
                a["name"]
            ));
        }
    }
    no_direct(&[&echo], &mut problems);
    assert_none(
        &problems,
        &format!(
            "sockets made by root, connected by an agent:\n{}",
            summary.join("\n")
        ),
    );
}

// 3. A socket refused while the daemon is down (blocking, non-blocking, v4-mapped, Fast
//    Open, MPTCP, the listener itself) connects again once the daemon is back; sockets are
//    disconnected with connect(AF_UNSPEC) between connections in and out of scope.
#[test]
fn sockets_used_again_after_a_refusal_or_a_disconnect_are_mediated() {
    let _tfo = FastOpenClient::enable();
    let echo = EchoServer::start("127.0.0.1:0");
    let outside = EchoServer::start("127.0.0.1:0");
    let port = echo.addr.port();
    let mut gw = Gateway::start("reconnect", opts(port));
    gw.kill9();
    let mut child = agent(
        &gw,
        &[RECONNECT_AGENT],
        &[
            port.to_string(),
            outside.addr.port().to_string(),
            gw.listen4.to_string(),
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("starting the reconnecting agent");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = |what: &str, child: &mut std::process::Child| -> Value {
        match lines.next() {
            Some(Ok(line)) => serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("the agent's {what} {line:?}: {e}")),
            _ => {
                let _ = child.kill();
                let out = child.wait_with_output_ref();
                panic!("the reconnecting agent ended before its {what}: {out}")
            }
        }
    };
    let phase1 = next("first phase", &mut child);
    gw.launch();
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"go\n")
        .expect("waking the agent");
    let phase2 = next("second phase", &mut child);
    assert!(child.wait().unwrap().success());
    eprintln!("phase 1 (daemon down): {phase1}\nphase 2 (daemon back): {phase2}");

    let mut problems = Vec::new();
    for a in phase1.as_array().expect("a list") {
        let name = a["name"].as_str().unwrap_or("?");
        if name.starts_with("out of scope") {
            if a["result"] != "echoed" || a["disconnect"] != "ok" {
                problems.push(format!(
                    "{name}: the out-of-scope server must be reached directly and the socket \
                     disconnected (the attack's setup), got {a}"
                ));
            }
            continue;
        }
        if a["result"] == "echoed" {
            problems.push(format!(
                "{name}: connected in scope while the daemon was down: {a}"
            ));
        }
    }
    let kept = phase2["kept"].as_array().expect("kept").clone();
    let same = phase2["same_socket"]
        .as_array()
        .expect("same_socket")
        .clone();
    let mut summary = judge_all(&gw, &[&echo], &kept, &mut problems);
    for a in &kept {
        if a["result"] != "echoed" {
            problems.push(format!(
                "{}: once the daemon is back the socket must be mediated, got {a}",
                a["name"]
            ));
        }
    }
    let in_scope: Vec<Value> = same
        .iter()
        .filter(|a| !a["name"].as_str().unwrap_or("").starts_with("out of scope"))
        .cloned()
        .collect();
    summary.extend(judge_all(&gw, &[&echo], &in_scope, &mut problems));
    for a in &in_scope {
        if a["result"] != "echoed" || a["peer"] != json!(["127.0.0.1", port]) {
            problems.push(format!(
                "{}: expected mediated with getpeername naming the server, got {a}",
                a["name"]
            ));
        }
    }
    for a in same
        .iter()
        .filter(|a| a["name"].as_str().unwrap_or("").starts_with("out of scope"))
    {
        if a["result"] != "echoed" || a["peer"] != json!(["127.0.0.1", outside.addr.port()]) {
            problems.push(format!(
                "{}: an out-of-scope connection goes where it was dialed and getpeername names \
                 that server, got {a}",
                a["name"]
            ));
        }
    }
    no_direct(&[&echo], &mut problems);
    assert_none(
        &problems,
        &format!(
            "sockets used again:\nphase 1 (daemon down): {phase1}\n{}",
            summary.join("\n")
        ),
    );
}

/// `Child::wait_with_output` for a child still owned by the caller: its status and stderr.
trait WaitRef {
    fn wait_with_output_ref(&mut self) -> String;
}

impl WaitRef for std::process::Child {
    fn wait_with_output_ref(&mut self) -> String {
        let status = self.wait().map(|s| s.to_string()).unwrap_or_default();
        let mut err = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        format!("{status}; stderr={err}")
    }
}

// 4. Every spelling of a loopback destination: other 127/8 addresses, 0.0.0.0, v4-mapped
//    on dual-stack and V6ONLY sockets, ::1 with a scope id or a flow label, ::, the
//    IPv4-compatible ::127.0.0.1 and a link-local address on lo.
#[test]
fn every_spelling_of_a_loopback_destination_is_mediated_or_refused() {
    let (echo4, echo6) = echo_pair();
    let port = echo4.addr.port();
    let gw = Gateway::start("addresses", opts(port));
    let (p, l4, l6) = (port, gw.listen4, gw.listen6);
    #[rustfmt::skip]
    let specs = json!([
        // name, family, IPV6_V6ONLY, source, destination, port, flowinfo, scope id
        ["v4 127.0.0.1", 4, null, "127.0.0.3", "127.0.0.1", p, 0, 0],
        ["v4 127.0.0.2", 4, null, "127.0.0.3", "127.0.0.2", p, 0, 0],
        ["v4 127.255.255.254", 4, null, "127.0.0.3", "127.255.255.254", p, 0, 0],
        ["v4 0.0.0.0", 4, null, "127.0.0.3", "0.0.0.0", p, 0, 0],
        ["dual ::ffff:127.0.0.1", 6, false, "::ffff:127.0.0.3", "::ffff:127.0.0.1", p, 0, 0],
        ["dual ::ffff:127.0.0.2", 6, false, "::ffff:127.0.0.3", "::ffff:127.0.0.2", p, 0, 0],
        ["dual ::ffff:0.0.0.0", 6, false, "::ffff:127.0.0.3", "::ffff:0.0.0.0", p, 0, 0],
        ["dual unbound ::ffff:127.0.0.2", 6, false, null, "::ffff:127.0.0.2", p, 0, 0],
        ["v6only ::ffff:127.0.0.1", 6, true, null, "::ffff:127.0.0.1", p, 0, 0],
        ["v6only ::ffff:127.0.0.2", 6, true, "::1", "::ffff:127.0.0.2", p, 0, 0],
        ["v6 ::1", 6, null, "::1", "::1", p, 0, 0],
        ["v6 ::1 scope lo", 6, null, "::1", "::1", p, 0, "lo"],
        ["v6 ::1 scope 999", 6, null, "::1", "::1", p, 0, 999],
        ["v6 ::1 flowinfo", 6, null, "::1", "::1", p, 0x12345, 0],
        ["v6 ::", 6, true, "::1", "::", p, 0, 0],
        ["v6 ::127.0.0.1 (IPv4-compatible)", 6, true, "::1", "::127.0.0.1", p, 0, 0],
        ["v6 fe80::1 scope lo", 6, true, null, "fe80::1", p, 0, "lo"],
        ["v6 ::ffff:127.0.0.1 from ::1-bound dual socket", 6, false, "::1", "::ffff:127.0.0.1", p, 0, 0],
        // The listener by another name (the kernel dials 0.0.0.0 and :: as the socket's own
        // address, or loopback, after connect4/6 compared the address with the listener's):
        // not in scope, so let through to the daemon, which must refuse a connection without
        // a record.
        ["listener as 0.0.0.0:listen4", 4, null, "127.0.0.3", "0.0.0.0", l4, 0, 0],
        ["listener as ::ffff:0.0.0.0:listen4", 6, false, "::ffff:127.0.0.3", "::ffff:0.0.0.0", l4, 0, 0],
        ["listener as [::]:listen6", 6, true, "::1", "::", l6, 0, 0],
        ["listener as 0.0.0.0:listen4, unbound", 4, null, null, "0.0.0.0", l4, 0, 0],
        ["listener as [::]:listen6, unbound", 6, true, null, "::", l6, 0, 0],
        ["listener as 127.0.0.2:listen4", 4, null, "127.0.0.3", "127.0.0.2", l4, 0, 0],
    ]);
    let out = run_json(
        agent(&gw, &[ADDR_AGENT], &[specs.to_string()]),
        "the address-spelling agent",
    );
    let attempts = out.as_array().expect("a list").clone();
    let echoes = [&echo4, &echo6];
    let mut problems = Vec::new();
    let summary = judge_all(&gw, &echoes, &attempts, &mut problems);
    // The plain spellings of a reachable server must work (mediated), not merely fail.
    for a in &attempts {
        let name = a["name"].as_str().unwrap_or("");
        let must_work = [
            "v4 127.0.0.1",
            "v4 0.0.0.0",
            "dual ::ffff:127.0.0.1",
            "v6 ::1",
            "v6 ::1 scope lo",
            "v6 ::1 flowinfo",
        ];
        if must_work.contains(&name) && a["result"] != "echoed" {
            problems.push(format!("{name}: expected mediated, got {a}"));
        }
        if name.starts_with("listener") && a["result"] == "echoed" {
            problems.push(format!(
                "{name}: an agent reached the daemon's listener directly and was served: {a}"
            ));
        }
    }
    no_direct(&echoes, &mut problems);
    assert_none(
        &problems,
        &format!("loopback spellings:\n{}", summary.join("\n")),
    );
}

// 5. The listener's ports on every address and option an agent could bind them with, while
//    the daemon is up and while it is down; then an ordinary agent is still mediated.
#[test]
fn agents_cannot_bind_the_listener_ports_in_any_spelling() {
    let echo = EchoServer::start("127.0.0.1:0");
    let port = echo.addr.port();
    let mut gw = Gateway::start("bind-spellings", opts(port));
    let args = [gw.listen4.to_string(), gw.listen6.to_string()];
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    for phase in ["daemon up", "daemon down"] {
        if phase == "daemon down" {
            gw.kill9();
        }
        let out = run_json(agent(&gw, &[BIND_AGENT], &args), "the binding agent");
        for (key, state) in out.as_object().expect("an object") {
            // EPERM from the programs; a socket that cannot even be made is no bind either.
            if state != "EPERM" && !state.as_str().unwrap_or("").starts_with("socket ") {
                problems.push(format!("{phase}: bind {key} must be EPERM, got {state}"));
            }
        }
        seen.push(format!(
            "{phase}: {} binds tried",
            out.as_object().unwrap().len()
        ));
    }
    gw.launch();
    let out = run_json(
        agent(
            &gw,
            &[ADDR_AGENT],
            &[json!([[
                "after the binds",
                4,
                null,
                "127.0.0.3",
                "127.0.0.1",
                port,
                0,
                0
            ]])
            .to_string()],
        ),
        "an ordinary agent",
    );
    let attempts = out.as_array().unwrap().clone();
    judge_all(&gw, &[&echo], &attempts, &mut problems);
    if attempts[0]["result"] != "echoed" {
        problems.push(format!(
            "an ordinary agent after the binds: expected mediated, got {out}"
        ));
    }
    no_direct(&[&echo], &mut problems);
    assert_none(&problems, &format!("binding the listener ports ({seen:?})"));
}

// 6. io_uring: connect(2) is not the only caller of the socket's connect; io_uring issues
//    it from the submitting task, from io-wq workers and from an SQPOLL kernel thread.
#[test]
fn io_uring_connects_are_mediated() {
    let _tfo = FastOpenClient::enable();
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "0".into());
    assert_eq!(
        disabled, "0",
        "io_uring is disabled for unprivileged users here (kernel.io_uring_disabled = \
         {disabled}): agents cannot use it, and this attack cannot be made"
    );
    let echo = EchoServer::start("127.0.0.1:0");
    let port = echo.addr.port();
    let gw = Gateway::start("io-uring", opts(port));
    let out = run_json(
        agent(
            &gw,
            &[IO_URING, IO_URING_AGENT],
            &[port.to_string(), gw.listen4.to_string()],
        ),
        "the io_uring agent",
    );
    let attempts = out.as_array().expect("a list").clone();
    let mut problems = Vec::new();
    let connects: Vec<Value> = attempts
        .iter()
        .filter(|a| {
            !a["name"]
                .as_str()
                .unwrap_or("")
                .starts_with("IORING_OP_BIND")
        })
        .cloned()
        .collect();
    let summary = judge_all(&gw, &[&echo], &connects, &mut problems);
    for a in &attempts {
        let name = a["name"].as_str().unwrap_or("");
        if name.starts_with("IORING_OP_BIND") {
            if a["result"] != "EPERM" {
                problems.push(format!("{name}: must be EPERM, got {a}"));
            }
        } else if name.starts_with("listener") {
            if a["errno"] != "EPERM" {
                problems.push(format!("{name}: must be EPERM, got {a}"));
            }
        } else if a["result"] != "echoed" {
            problems.push(format!("{name}: expected mediated, got {a}"));
        }
    }
    no_direct(&[&echo], &mut problems);
    assert_none(
        &problems,
        &format!("io_uring agents:\n{}\n{out}", summary.join("\n")),
    );
}

// 7. User namespaces: an agent that makes itself root in a user namespace of its own gains
//    capabilities there, not over the host's network namespace (SO_MARK stays refused) or
//    the cgroup hierarchy. In a network namespace of its own SO_MARK works, but nothing of
//    the host is reachable from there. Selected by cgroup and, in a second daemon, by uid
//    only (the kernel reports the uid as seen from the initial namespace).
#[test]
fn agents_in_their_own_user_namespace_stay_agents() {
    let echo = EchoServer::start("127.0.0.1:0");
    let port = echo.addr.port();
    let mount = cgroup2_mount().expect("cgroup2 mount");
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    for selection in ["cgroup", "uid"] {
        let gw = Gateway::start(
            &format!("userns-{selection}"),
            GatewayOptions {
                ports: vec![port],
                users: if selection == "uid" {
                    vec![65534]
                } else {
                    vec![]
                },
                no_cgroup: selection == "uid",
                ..Default::default()
            },
        );
        let agent_cgroup = mount.join(&gw.cgroup);
        let procs = [
            agent_cgroup.parent().unwrap().join("cgroup.procs"),
            mount.join("cgroup.procs"),
        ];
        let mut args = vec![port.to_string()];
        args.extend(procs.iter().map(|p| p.display().to_string()));
        let out = run_json(
            agent(&gw, &[USERNS_AGENT], &args),
            "the user-namespace agent",
        );
        if out["unshare"] != "ok" || out["uid_in_namespace"] != 0 {
            problems.push(format!(
                "{selection}: the agent could not make itself root in a user namespace, so \
                 the attack was not made: {out}"
            ));
        }
        let attempts: Vec<Value> = ["socket made before", "socket made after", "after the moves"]
            .iter()
            .map(|k| out[*k].clone())
            .collect();
        judge_all(&gw, &[&echo], &attempts, &mut problems);
        for a in &attempts {
            if a["result"] != "echoed" {
                problems.push(format!(
                    "{selection}: {}: expected mediated, got {a}",
                    a["name"]
                ));
            }
            if a.get("so_mark").is_some() && a["so_mark"] != "EPERM" {
                problems.push(format!(
                    "{selection}: {}: SO_MARK on a socket of the host's network namespace must \
                     be EPERM, got {}",
                    a["name"], a["so_mark"]
                ));
            }
        }
        for (path, state) in out["cgroup_moves"].as_object().expect("moves") {
            if state == "moved" {
                problems.push(format!(
                    "{selection}: the agent moved itself out of its cgroup by writing {path}"
                ));
            }
        }
        let own = &out["own network namespace"];
        if own["connect"] == "connected" {
            problems.push(format!(
                "{selection}: a marked socket in the agent's own network namespace connected \
                 to 127.0.0.1:{port}: {own}"
            ));
        }
        seen.push(format!("{selection}: {out}"));
    }
    no_direct(&[&echo], &mut problems);
    assert_none(
        &problems,
        &format!("agents in user namespaces:\n{}", seen.join("\n")),
    );
}

/// Removes the cgroups a delegation test made, after its daemon is gone (declared before
/// the Gateway, so dropped after it).
struct CgroupCleanup(Vec<PathBuf>);

impl Drop for CgroupCleanup {
    fn drop(&mut self) {
        for dir in &self.0 {
            for _ in 0..100 {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

/// A daemon whose agent cgroup is `<test cgroup>/agents`, with `<test cgroup>` delegated to
/// the agent user (its directory and cgroup.procs owned by uid 65534). Returns the daemon
/// and the delegated directory.
fn delegated_gateway(name: &str, users: Vec<u32>, port: u16) -> (Gateway, PathBuf) {
    let mount = cgroup2_mount().expect("cgroup2 mount");
    let mut gw = Gateway::start(
        name,
        GatewayOptions {
            ports: vec![port],
            users,
            ..Default::default()
        },
    );
    gw.stop();
    let parent_rel = gw.cgroup.clone();
    let agents_rel = format!("{parent_rel}/agents");
    let config = std::fs::read_to_string(&gw.config).unwrap();
    let from = format!("cgroups = [{parent_rel:?}]");
    assert!(config.contains(&from), "the harness's config names {from}");
    std::fs::write(
        &gw.config,
        config.replace(&from, &format!("cgroups = [{agents_rel:?}]")),
    )
    .unwrap();
    gw.cgroup = agents_rel;
    gw.launch();
    let parent = mount.join(&parent_rel);
    let nobody = Some(nix::unistd::Uid::from_raw(65534));
    let nogroup = Some(nix::unistd::Gid::from_raw(65534));
    for p in [parent.clone(), parent.join("cgroup.procs")] {
        nix::unistd::chown(&p, nobody, nogroup)
            .unwrap_or_else(|e| panic!("delegating {}: {e}", p.display()));
    }
    (gw, parent)
}

fn leave_and_connect(gw: &Gateway, parent: &Path, echo: &EchoServer) -> (Value, Vec<String>) {
    let out = run_json(
        agent(
            gw,
            &[CGROUP_LEAVER],
            &[parent.display().to_string(), echo.addr.port().to_string()],
        ),
        "the cgroup-leaving agent",
    );
    let mut problems = Vec::new();
    if out["move"] != "moved" {
        problems.push(format!(
            "the agent could not leave its cgroup for a sibling, so the attack was not made: \
             {out}"
        ));
    }
    let conn = {
        let mut c = out["conn"].clone();
        c["name"] = json!("after leaving the agent cgroup");
        c
    };
    judge_all(gw, &[echo], std::slice::from_ref(&conn), &mut problems);
    if conn["result"] != "echoed" && conn["errno"] != "EPERM" {
        problems.push(format!("expected mediated or refused, got {conn}"));
    }
    no_direct(&[echo], &mut problems);
    (out, problems)
}

// 8a. An agent cgroup below a cgroup delegated to the agent's user (as any cgroup below
//     user@UID.service is): the agent creates a sibling cgroup, moves itself there (it may,
//     it owns the common ancestor) and is no agent any more. Selected by uid as well, it
//     stays one.
#[test]
fn an_agent_that_leaves_a_delegated_cgroup_is_still_mediated_when_selected_by_uid() {
    let name = "deleg-uid";
    let parent_rel = format!("mcp-gateway-tests/{name}-{}", std::process::id());
    let mount = cgroup2_mount().expect("cgroup2 mount");
    let _cleanup = CgroupCleanup(vec![
        mount.join(&parent_rel).join("escape"),
        mount.join(&parent_rel).join("agents"),
        mount.join(&parent_rel),
    ]);
    let echo = EchoServer::start("127.0.0.1:0");
    let (gw, parent) = delegated_gateway(name, vec![65534], echo.addr.port());
    let (out, problems) = leave_and_connect(&gw, &parent, &echo);
    assert_none(
        &problems,
        &format!("an agent leaving its delegated cgroup ({out})"),
    );
}

// 8b. The same agent selected by its cgroup alone.
// The subtree delegated to the agent's user is mediated whole.
#[test]
fn an_agent_that_leaves_a_delegated_cgroup_is_still_mediated() {
    let name = "deleg-cgroup";
    let parent_rel = format!("mcp-gateway-tests/{name}-{}", std::process::id());
    let mount = cgroup2_mount().expect("cgroup2 mount");
    let _cleanup = CgroupCleanup(vec![
        mount.join(&parent_rel).join("escape"),
        mount.join(&parent_rel).join("agents"),
        mount.join(&parent_rel),
    ]);
    let echo = EchoServer::start("127.0.0.1:0");
    let (gw, parent) = delegated_gateway(name, vec![], echo.addr.port());
    let (out, problems) = leave_and_connect(&gw, &parent, &echo);
    assert_none(
        &problems,
        &format!("an agent leaving its delegated cgroup ({out})"),
    );
}

// 9. A listener port inside net.ipv4.ip_local_port_range could be taken by autobind
//    (listen() on an unbound socket runs no bind program) while the daemon is down, keeping
//    it from starting again: such a port is refused by the config check and at start.
#[test]
fn a_listener_port_the_kernel_may_hand_out_is_refused() {
    let echo = EchoServer::start("127.0.0.1:0");
    let mut gw = Gateway::start("autobind", opts(echo.addr.port()));
    gw.stop();
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let low: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
    let inside = low + 1001;
    let config = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(
        &gw.config,
        config.replace(
            &format!("127.0.0.1:{}", gw.listen4),
            &format!("127.0.0.1:{inside}"),
        ),
    )
    .unwrap();
    let out = Command::new(gateway_tests::gateway_bin())
        .arg("check-config")
        .arg(&gw.config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {err}");
    assert!(err.contains("`listener`"), "{err}");
    assert!(err.contains(&format!("port {inside}")), "{err}");
    assert!(err.contains("ip_local_port_range"), "{err}");
    let run = Command::new(gateway_tests::gateway_bin())
        .args(["run", "--config"])
        .arg(&gw.config)
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("ip_local_port_range"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}
