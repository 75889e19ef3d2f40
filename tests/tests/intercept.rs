//! The foundation's promises, checked with real processes, cgroups and eBPF: agent
//! connections reach their destination through the daemon, carrying kernel-attested
//! identity; nothing else is touched; the host fails closed.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::Command;

use gateway_tests::{probe_args, run_probe, EchoServer, Gateway, GatewayOptions, PYTHON};
use serde_json::Value;

fn opts(ports: &[u16]) -> GatewayOptions {
    GatewayOptions {
        ports: ports.to_vec(),
        ..Default::default()
    }
}

fn local_addr(v: &Value) -> SocketAddr {
    format!("{}:{}", v[0].as_str().unwrap(), v[1])
        .parse()
        .or_else(|_| format!("[{}]:{}", v[0].as_str().unwrap(), v[1]).parse())
        .unwrap()
}

/// A mediated connection: the agent's bytes came back intact, the agent saw the original
/// peer, the server saw the daemon (not the agent) and the audit has the agent's identity.
fn assert_mediated(gw: &Gateway, echo: &EchoServer, out: &Value, dst: &str, size: u64) -> Value {
    assert_eq!(out["error"], Value::Null, "agent could not connect: {out}");
    assert_eq!(out["echo_ok"], true, "bytes differ: {out}");
    assert_eq!(out["received"], size);
    let agent_local = local_addr(&out["local"]);
    let peers = echo.peers();
    assert_eq!(peers.len(), 1, "server saw {peers:?}");
    assert_ne!(
        peers[0].port(),
        agent_local.port(),
        "the server was reached by the agent's own socket: not mediated"
    );
    let flow = gw.flow_from(&out["local"]);
    assert_eq!(flow["orig_dst"], dst, "{flow:#}");
    assert_eq!(flow["bytes_to_upstream"], size, "{flow:#}");
    assert_eq!(flow["bytes_to_agent"], size, "{flow:#}");
    assert_eq!(flow["outcome"], "closed", "{flow:#}");
    let id = &flow["identity"];
    assert_eq!(id["pid"], out["tid"], "{flow:#}");
    assert_eq!(id["tgid"], out["pid"], "{flow:#}");
    assert_eq!(id["uid"], 0);
    assert_eq!(id["exe"], "/usr/bin/python3.11", "{flow:#}");
    assert_eq!(id["comm"], "python3");
    assert_eq!(id["procfs_error"], Value::Null, "{flow:#}");
    flow
}

#[test]
fn ipv4_agent_is_mediated_with_identity() {
    let echo = EchoServer::start("127.0.0.1:0");
    let port = echo.addr.port();
    let gw = Gateway::start("v4", opts(&[port]));
    let out = run_probe(gw.agent(PYTHON, &probe_args("127.0.0.1", port, "plain", 300_000)));
    assert_eq!(out["peer"], serde_json::json!(["127.0.0.1", port]));
    let flow = assert_mediated(&gw, &echo, &out, &format!("127.0.0.1:{port}"), 300_000);
    assert_eq!(flow["identity"]["cgroup"], format!("/{}", gw.cgroup));
    assert_eq!(flow["identity"]["user"], "root");
    // One connection, one flow: the daemon's own upstream connection was not redirected
    // back into itself.
    let flows = gw
        .audit_records()
        .into_iter()
        .filter(|r| r["type"] == "flow")
        .count();
    assert_eq!(flows, 1);
}

#[test]
fn ipv6_agent_is_mediated() {
    let echo = EchoServer::start("[::1]:0");
    let port = echo.addr.port();
    let gw = Gateway::start("v6", opts(&[port]));
    let out = run_probe(gw.agent(PYTHON, &probe_args("::1", port, "plain", 50_000)));
    assert_eq!(out["peer"], serde_json::json!(["::1", port]));
    let flow = assert_mediated(&gw, &echo, &out, &format!("[::1]:{port}"), 50_000);
    assert_eq!(flow["upstream"], format!("[::1]:{port}"));
}

#[test]
fn v4_mapped_address_on_ipv6_socket_is_mediated() {
    let echo = EchoServer::start("127.0.0.1:0");
    let port = echo.addr.port();
    let gw = Gateway::start("mapped", opts(&[port]));
    let mut args = probe_args("::ffff:127.0.0.1", port, "plain", 20_000);
    args.push("6".into());
    let out = run_probe(gw.agent(PYTHON, &args));
    assert_eq!(out["peer"], serde_json::json!(["::ffff:127.0.0.1", port]));
    let flow = assert_mediated(
        &gw,
        &echo,
        &out,
        &format!("[::ffff:127.0.0.1]:{port}"),
        20_000,
    );
    assert_eq!(flow["upstream"], format!("127.0.0.1:{port}"));
}

#[test]
fn another_address_of_the_same_server_is_mediated_too() {
    // The server listens on every address; the agent picks one nobody configured.
    let echo = EchoServer::start("0.0.0.0:0");
    let port = echo.addr.port();
    let gw = Gateway::start("otheraddr", opts(&[port]));
    let out = run_probe(gw.agent(PYTHON, &probe_args("127.0.0.2", port, "plain", 10_000)));
    assert_eq!(out["peer"], serde_json::json!(["127.0.0.2", port]));
    assert_mediated(&gw, &echo, &out, &format!("127.0.0.2:{port}"), 10_000);
}

#[test]
fn forked_child_and_thread_are_mediated() {
    let echo = EchoServer::start("127.0.0.1:0");
    let port = echo.addr.port();
    let gw = Gateway::start("forkthread", opts(&[port]));

    let out = run_probe(gw.agent(PYTHON, &probe_args("127.0.0.1", port, "fork", 1000)));
    assert_ne!(out["pid"], out["parent_pid"], "the probe did not fork");
    let flow = assert_mediated(&gw, &echo, &out, &format!("127.0.0.1:{port}"), 1000);
    assert_eq!(
        flow["identity"]["tgid"], out["pid"],
        "identity is the child's"
    );

    let echo2 = EchoServer::start("127.0.0.1:0");
    let gw2 = Gateway::start("thread", opts(&[echo2.addr.port()]));
    let out = run_probe(gw2.agent(
        PYTHON,
        &probe_args("127.0.0.1", echo2.addr.port(), "thread", 1000),
    ));
    assert_ne!(out["tid"], out["pid"], "the probe did not use a thread");
    let flow = assert_mediated(
        &gw2,
        &echo2,
        &out,
        &format!("127.0.0.1:{}", echo2.addr.port()),
        1000,
    );
    assert_eq!(
        flow["identity"]["pid"], out["tid"],
        "pid is the thread's id"
    );
    assert_eq!(flow["identity"]["tgid"], out["main_pid"]);
}

#[test]
fn processes_outside_agent_cgroups_are_not_redirected() {
    let echo = EchoServer::start("127.0.0.1:0");
    let port = echo.addr.port();
    let gw = Gateway::start("outside", opts(&[port]));
    // This test process is in no agent cgroup and runs as root, which is never an agent.
    let out = run_probe({
        let mut c = Command::new(PYTHON);
        c.args(probe_args("127.0.0.1", port, "plain", 100));
        c
    });
    assert_eq!(out["echo_ok"], true);
    let peers = echo.peers();
    assert_eq!(
        peers,
        vec![local_addr(&out["local"])],
        "server saw the process itself"
    );
    // A port outside the scope is not redirected for an agent either.
    let other = EchoServer::start("127.0.0.1:0");
    let out = run_probe(gw.agent(
        PYTHON,
        &probe_args("127.0.0.1", other.addr.port(), "plain", 100),
    ));
    assert_eq!(other.peers(), vec![local_addr(&out["local"])]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        gw.audit_records().iter().all(|r| r["type"] != "flow"),
        "{:#?}",
        gw.audit_records()
    );
}

#[test]
fn agent_dialing_the_listener_directly_is_closed_and_logged() {
    let echo = EchoServer::start("127.0.0.1:0");
    let gw = Gateway::start("direct", opts(&[echo.addr.port()]));
    let mut s = TcpStream::connect(("127.0.0.1", gw.listen4)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut s, &mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the daemon served a connection without a record");
    let local = s.local_addr().unwrap();
    let r = gw.wait_record("refused", |r| r["type"] == "refused");
    assert_eq!(r["client"], local.to_string());
    assert!(r["reason"]
        .as_str()
        .unwrap()
        .contains("no interception record"));
}

#[test]
fn daemon_killed_means_refused_and_restart_restores() {
    let echo = EchoServer::start("127.0.0.1:0");
    let port = echo.addr.port();
    let mut gw = Gateway::start("failclosed", opts(&[port]));
    let out = run_probe(gw.agent(PYTHON, &probe_args("127.0.0.1", port, "plain", 10)));
    assert_eq!(out["echo_ok"], true);

    gw.kill9();
    let out = run_probe(gw.agent(PYTHON, &probe_args("127.0.0.1", port, "plain", 10)));
    assert_eq!(
        out["errno"],
        libc::ECONNREFUSED,
        "with the daemon down the agent must be refused, got {out}"
    );
    assert_eq!(
        echo.peers().len(),
        1,
        "the agent reached the server around the daemon"
    );

    gw.launch();
    // Eight cgroup sock_addr programs, sock_create, sock_ops, the netns's sk_lookup, and the
    // exec, fork and exit tracepoints.
    assert!(gw.log().contains("replaced_links=14"), "{}", gw.log());
    let out = run_probe(gw.agent(PYTHON, &probe_args("127.0.0.1", port, "plain", 10)));
    assert_eq!(out["echo_ok"], true, "{out}");
    gw.flow_from(&out["local"]);

    // `detach` refuses while the daemon runs: it would mediate nothing it believes it does.
    let out = gw.cli(&["detach"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A clean stop (what `systemctl restart` and upgrades do) stays attached: refused.
    assert_eq!(gw.stop(), Some(0));
    assert!(gw.pin_dir().exists());
    let out = run_probe(gw.agent(PYTHON, &probe_args("127.0.0.1", port, "plain", 10)));
    assert_eq!(
        out["errno"],
        libc::ECONNREFUSED,
        "after a clean stop: {out}"
    );
    assert_eq!(echo.peers().len(), 2, "only the two mediated connections");

    // Detaching is explicit: then, and only then, agents connect directly.
    let out = gw.cli(&["detach"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("detached 14 programs"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!gw.pin_dir().exists());
    let out = run_probe(gw.agent(PYTHON, &probe_args("127.0.0.1", port, "plain", 10)));
    assert_eq!(out["echo_ok"], true, "{out}");
    assert_eq!(echo.peers().last(), Some(&local_addr(&out["local"])));
}

#[test]
fn agent_uid_is_redirected_outside_any_agent_cgroup() {
    let echo = EchoServer::start("127.0.0.1:0");
    let port = echo.addr.port();
    // A uid no other test uses, so parallel tests never mediate each other's agents.
    let uid = 47_000 + (std::process::id() % 1000);
    let gw = Gateway::start(
        "uid",
        GatewayOptions {
            ports: vec![port],
            users: vec![uid],
            no_cgroup: true,
            ..Default::default()
        },
    );
    let mut cmd = Command::new(PYTHON);
    cmd.args(probe_args("127.0.0.1", port, "plain", 5000))
        .uid(uid)
        .gid(uid)
        .current_dir("/");
    let out = run_probe(cmd);
    assert_eq!(out["echo_ok"], true, "{out}");
    let flow = gw.flow_from(&out["local"]);
    assert_eq!(flow["identity"]["uid"], uid);
    assert_eq!(flow["identity"]["gid"], uid);
    assert_eq!(flow["bytes_to_agent"], 5000);
    assert_ne!(echo.peers()[0], local_addr(&out["local"]));
}

#[test]
fn two_gateways_do_not_see_each_others_agents() {
    let echo = EchoServer::start("127.0.0.1:0");
    let port = echo.addr.port();
    let a = Gateway::start("iso-a", opts(&[port]));
    let b = Gateway::start("iso-b", opts(&[port]));
    let out_a = run_probe(a.agent(PYTHON, &probe_args("127.0.0.1", port, "plain", 10)));
    let out_b = run_probe(b.agent(PYTHON, &probe_args("127.0.0.1", port, "plain", 10)));
    let fa = a.flow_from(&out_a["local"]);
    let fb = b.flow_from(&out_b["local"]);
    assert_eq!(fa["identity"]["tgid"], out_a["pid"]);
    assert_eq!(fb["identity"]["tgid"], out_b["pid"]);
    let count = |g: &Gateway| {
        g.audit_records()
            .iter()
            .filter(|r| r["type"] == "flow")
            .count()
    };
    assert_eq!(count(&a), 1, "{:#?}", a.audit_records());
    assert_eq!(count(&b), 1, "{:#?}", b.audit_records());
}

#[test]
fn unprivileged_daemon_fails_with_the_reason() {
    let gw_bin = gateway_tests::gateway_bin();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[agents]\ncgroups = [\"x\"]\n[audit]\npath = \"/tmp/none.jsonl\"\n",
    )
    .unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = Command::new(gw_bin)
        .args(["run", "--config"])
        .arg(&config)
        .uid(65534)
        .gid(65534)
        .current_dir("/")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs root"), "{err}");
}

#[test]
fn an_agent_cgroup_created_again_is_still_mediated() {
    let echo = EchoServer::start("127.0.0.1:0");
    let port = echo.addr.port();
    let gw = Gateway::start("recreated", opts(&[port]));
    let path = gateway_tests::cgroup2_mount().unwrap().join(&gw.cgroup);
    let old = std::fs::metadata(&path).unwrap();
    // What systemd does when a slice is stopped and started: a new cgroup, a new id.
    std::fs::remove_dir(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let new = std::fs::metadata(&path).unwrap();
    assert_ne!(
        std::os::unix::fs::MetadataExt::ino(&old),
        std::os::unix::fs::MetadataExt::ino(&new)
    );
    // The daemon resolves the new id as cgroupfs reports it (and treats the cgroup as an
    // agent's until then).
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = run_probe(gw.agent(PYTHON, &probe_args("127.0.0.1", port, "plain", 100)));
    assert_mediated(&gw, &echo, &out, &format!("127.0.0.1:{port}"), 100);
    assert!(
        gw.log().contains("agent cgroup (re)created"),
        "{}",
        gw.log()
    );
}

/// systemd starts a restarted service in a cgroup created anew. Below an ancestor of an agent
/// cgroup, the programs left attached take that new cgroup for an agent's until the daemon
/// has resolved it, and refuse agents the listener's port: the daemon's own listener still
/// binds (it carries the daemon's mark) and the daemon mediates again.
#[test]
fn a_daemon_restarted_in_a_new_cgroup_next_to_the_agents_binds_and_mediates() {
    let echo = EchoServer::start("127.0.0.1:0");
    let port = echo.addr.port();
    let mut gw = Gateway::start("newcg", opts(&[port]));
    assert_eq!(gw.stop(), Some(0));
    // A sibling of the agent cgroup: its parent is an ancestor of the agent cgroup.
    let daemon_cgroup = format!("{}-daemon", gw.cgroup);
    gw.launch_in(Some(&daemon_cgroup));
    let out = run_probe(gw.agent(PYTHON, &probe_args("127.0.0.1", port, "plain", 10)));
    assert_eq!(out["echo_ok"], true, "{out}");
    gw.flow_from(&out["local"]);
    assert_ne!(echo.peers().last(), Some(&local_addr(&out["local"])));
    assert_eq!(gw.stop(), Some(0));
    let mount = gateway_tests::cgroup2_mount().unwrap();
    std::fs::remove_dir(mount.join(&daemon_cgroup)).unwrap();
}

/// Pins an LRU hash map at argv[1] with the record layout of an older version (80-byte
/// values), as a daemon of that version left it.
const PIN_OLD_MAP: &str = r#"
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
SYS_bpf, BPF_MAP_CREATE, BPF_OBJ_PIN, LRU_HASH = 321, 0, 6, 9
attr = ctypes.create_string_buffer(128)
struct.pack_into("IIIII", attr, 0, LRU_HASH, 36, 80, 64, 0)
name = b"gw_conns"
attr[28:28 + len(name)] = name
fd = libc.syscall(SYS_bpf, BPF_MAP_CREATE, attr, 128)
assert fd >= 0, os.strerror(ctypes.get_errno())
os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True)
path = ctypes.create_string_buffer(sys.argv[1].encode())
pin = ctypes.create_string_buffer(128)
struct.pack_into("QI", pin, 0, ctypes.addressof(path), fd)
r = libc.syscall(SYS_bpf, BPF_OBJ_PIN, pin, 128)
assert r == 0, os.strerror(ctypes.get_errno())
"#;

#[test]
fn a_map_pinned_by_an_older_version_is_made_anew() {
    let echo = EchoServer::start("127.0.0.1:0");
    let port = echo.addr.port();
    // Where a daemon of this test's instance pins its maps, filled first by an "older" one.
    let instance = format!("t-upgrade-{}", std::process::id());
    let maps = std::path::PathBuf::from("/sys/fs/bpf/mcp-gateway")
        .join(&instance)
        .join("maps");
    let status = Command::new(PYTHON)
        .args(["-c", PIN_OLD_MAP])
        .arg(maps.join("gw_conns"))
        .status()
        .unwrap();
    assert!(status.success());
    let gw = Gateway::start("upgrade", opts(&[port]));
    assert_eq!(gw.instance, instance);
    assert!(gw.log().contains("older record layout"), "{}", gw.log());
    let out = run_probe(gw.agent(PYTHON, &probe_args("127.0.0.1", port, "plain", 1000)));
    let flow = assert_mediated(&gw, &echo, &out, &format!("127.0.0.1:{port}"), 1000);
    assert!(
        flow["identity"]["exe_file"]["ino"].as_u64().is_some(),
        "{flow:#}"
    );
}
