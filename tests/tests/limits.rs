//! No agent can starve the daemon of descriptors or bury the ledger in flows: one user
//! holds a bounded share of the connections and opens them at a bounded rate (the excess is
//! reset and audited once per interval), and a connection on which neither side says
//! anything is closed after `listener.first_byte_timeout_s`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gateway_tests::fake::start as start_fake;
use gateway_tests::{free_port, run_probe, Gateway, GatewayOptions, PYTHON};

/// A server that accepts every connection and never says anything.
fn silent_server(port: u16) -> Child {
    const SERVER: &str = r#"
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen(4096)
held = []
while True:
    c, _ = srv.accept()
    held.append(c)
"#;
    let child = Command::new(PYTHON)
        .args(["-c", SERVER, &port.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    gateway_tests::wait_listening(port, "the silent server");
    child
}

/// Opens argv[2] connections to 127.0.0.1:argv[1], sends nothing, prints how many it
/// opened, and holds them until its stdin closes.
const HOLDER: &str = r#"
import json, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
held, failed = [], 0
for i in range(n):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect(("127.0.0.1", port))
        held.append(s)
    except OSError:
        failed += 1
        s.close()
print(json.dumps({"opened": len(held), "failed": failed}), flush=True)
sys.stdin.read()
"#;

/// One tools/call to 127.0.0.1:argv[1]; prints the status and body.
const CALL: &str = r#"
import http.client, json, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
c.request("POST", "/mcp", body=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
          "params": {"name": "echo", "arguments": {}}}),
          headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
r = c.getresponse()
print(json.dumps({"status": r.status, "body": r.read().decode()}))
"#;

#[test]
fn ten_thousand_silent_connections_of_one_agent_leave_another_agents_calls_answered() {
    let (silent_port, mcp_port) = (free_port(), free_port());
    let gw = Gateway::start(
        "limits-fds",
        GatewayOptions {
            ports: vec![silent_port, mcp_port],
            ..Default::default()
        },
    );
    let mut silent = silent_server(silent_port);
    let log = gw.dir.path().join("server.log");
    let _fake = start_fake(mcp_port, &log);

    // Root's agent takes as many connections as it can.
    let mut holder = gw
        .agent(
            PYTHON,
            &[
                "-c".into(),
                HOLDER.into(),
                silent_port.to_string(),
                "10000".into(),
            ],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let opened: serde_json::Value = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(holder.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    };
    assert!(opened["opened"].as_u64().unwrap() > 100, "{opened}");

    // Another user's agent, while they are held: its call is answered.
    let out = run_probe(gw.agent_as(
        "65534",
        PYTHON,
        &["-c".into(), CALL.into(), mcp_port.to_string()],
    ));
    assert_eq!(out["status"], 200, "{out}");
    assert!(
        out["body"].as_str().unwrap().contains("\"result\""),
        "{out}"
    );

    // The excess was refused, and audited once for the burst, not once a connection.
    let limited: Vec<serde_json::Value> = gw
        .audit_records()
        .into_iter()
        .filter(|r| r["type"] == "connection_limited")
        .collect();
    assert!(!limited.is_empty(), "no record of the refused connections");
    assert!(limited.len() <= 3, "{limited:?}");
    assert_eq!(limited[0]["uid"], 0, "{limited:?}");
    // Refused for holding its share, or for opening them faster than its rate.
    assert!(
        limited.iter().all(|r| {
            let why = r["reason"].as_str().unwrap();
            why.contains("max_connections_per_user") || why.contains("connections_per_second")
        }),
        "{limited:?}"
    );

    drop(holder.stdin.take());
    let _ = holder.wait();
    let _ = silent.kill();
    let _ = silent.wait();
}

#[test]
fn a_connection_on_which_nobody_speaks_is_closed() {
    let port = free_port();
    let gw = Gateway::start(
        "limits-idle",
        GatewayOptions {
            ports: vec![port],
            listener: "first_byte_timeout_s = 2".into(),
            ..Default::default()
        },
    );
    let mut silent = silent_server(port);
    const WAIT: &str = r#"
import json, socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20)
t = time.monotonic()
try:
    got = s.recv(1)
    how = "closed" if not got else "data"
except OSError as e:
    how = type(e).__name__
print(json.dumps({"how": how, "after": time.monotonic() - t}))
"#;
    let started = Instant::now();
    let out = run_probe(gw.agent(PYTHON, &["-c".into(), WAIT.into(), port.to_string()]));
    let after = out["after"].as_f64().unwrap();
    assert!(
        (1.5..10.0).contains(&after),
        "closed after {after} s: {out}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    let flow = gw.wait_record("the idle flow", |r| r["type"] == "flow");
    assert_eq!(flow["outcome"], "idle_no_first_byte", "{flow}");
    // An ending, not a failure: said in `detail`, with no `error`.
    assert!(
        flow.get("error").is_none() && flow["detail"].is_string(),
        "{flow}"
    );
    let _ = silent.kill();
    let _ = silent.wait();
}

/// Sends argv[2] concurrent tools/call `huge_stalled` to 127.0.0.1:argv[1]; prints, once
/// every one is answered or has waited 8 s, how many got an HTTP error.
const STALLERS: &str = r#"
import http.client, json, sys, threading
port, n = int(sys.argv[1]), int(sys.argv[2])
errors, stalled = [0], [0]
def one(i):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=8)
    try:
        c.request("POST", "/mcp", body=json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                  "params": {"name": "huge_stalled", "arguments": {}}}),
                  headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
        r = c.getresponse()
        r.read()
        if r.status >= 400:
            errors[0] += 1
    except OSError:
        stalled[0] += 1
threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps({"errors": errors[0], "stalled": stalled[0]}))
"#;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn sixty_stalled_huge_answers_leave_the_daemons_memory_bounded() {
    let port = free_port();
    let gw = Gateway::start(
        "limits-memory",
        GatewayOptions {
            ports: vec![port],
            extra:
                "[http]\nmax_buffered_bytes = 134217728\nmax_buffered_bytes_per_user = 67108864\n"
                    .into(),
            ..Default::default()
        },
    );
    let log = gw.dir.path().join("server.log");
    let _fake = start_fake(port, &log);
    let pid = gw.pid().expect("the daemon runs");
    let before = rss_bytes(pid);
    let stallers = gw
        .agent(
            PYTHON,
            &["-c".into(), STALLERS.into(), port.to_string(), "60".into()],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // While they stall: the daemon's memory, and another user's call.
    std::thread::sleep(Duration::from_secs(4));
    let during = rss_bytes(pid);
    let out = run_probe(gw.agent_as(
        "65534",
        PYTHON,
        &["-c".into(), CALL.into(), port.to_string()],
    ));
    let result = stallers.wait_with_output().unwrap();
    let counts: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    // And once they are gone, the memory their answers held goes back to the system: the
    // allocator serves buffers of 256 KiB and more from pages it gives back when freed.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut after = rss_bytes(pid);
    while after > before + (16 << 20) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        after = rss_bytes(pid);
    }
    // Under the configured cap (128 MiB for everyone), allocator and buffers included.
    assert!(
        during < before + (128 << 20),
        "the daemon grew from {before} to {during} bytes"
    );
    assert!(
        during > before + (16 << 20),
        "the stalled answers were held in memory ({before} to {during} bytes)"
    );
    assert!(
        after <= before + (16 << 20),
        "the daemon stayed at {after} bytes after the stalled answers ended (from {before})"
    );
    assert_eq!(out["status"], 200, "another user's call: {out}");
    // Most of the sixty were refused at once with an error, not left to pile up.
    assert!(counts["errors"].as_u64().unwrap() >= 50, "{counts}");
    let refused = gw
        .audit_records()
        .into_iter()
        .filter(|r| {
            r["type"] == "mcp"
                && r["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("max_buffered_bytes_per_user"))
        })
        .count();
    assert!(refused >= 50, "{refused} refusals audited");
}

/// Opens argv[2] connections to 127.0.0.1:argv[1] one after another, each sending a line and
/// reading it back; prints how many were answered and how many were refused.
const RAPID: &str = r#"
import json, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
ok = refused = 0
for i in range(n):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"ping\x00")
        if s.recv(16):
            ok += 1
        else:
            refused += 1
        s.close()
    except OSError:
        refused += 1
print(json.dumps({"ok": ok, "refused": refused}))
"#;

#[test]
fn an_agent_opening_connections_too_fast_is_slowed_and_audited_once() {
    let echo = gateway_tests::EchoServer::start("127.0.0.1:0");
    let port = echo.addr.port();
    let mut gw = Gateway::start(
        "limits-rate",
        GatewayOptions {
            ports: vec![port],
            listener: "connections_per_second_per_user = 20".into(),
            ..Default::default()
        },
    );
    let out = run_probe(gw.agent(
        PYTHON,
        &["-c".into(), RAPID.into(), port.to_string(), "400".into()],
    ));
    let ok = out["ok"].as_u64().unwrap();
    assert!(out["refused"].as_u64().unwrap() > 0, "{out}");
    // A burst of five seconds' worth, then twenty a second for as long as it took.
    assert!((100..=300).contains(&ok), "{out}");
    // Another user is not slowed by it.
    let other = run_probe(gw.agent_as(
        "65534",
        PYTHON,
        &["-c".into(), RAPID.into(), port.to_string(), "5".into()],
    ));
    assert_eq!(other["ok"], 5, "{other}");
    // Every refusal is counted in the ledger, the tail of the burst too (by the daemon's
    // own clock, at the latest when it stops), in a few records.
    gw.stop();
    let records = gw.audit_records();
    let limited: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["type"] == "connection_limited")
        .collect();
    assert!(!limited.is_empty() && limited.len() <= 4, "{limited:?}");
    let counted: u64 = limited.iter().filter_map(|r| r["refused"].as_u64()).sum();
    assert_eq!(counted, out["refused"].as_u64().unwrap(), "{limited:?}");
    assert!(
        limited[0]["reason"]
            .as_str()
            .unwrap()
            .contains("connections_per_second_per_user"),
        "{limited:?}"
    );
    let flows = records.iter().filter(|r| r["type"] == "flow").count() as u64;
    assert!(
        flows <= ok + 10,
        "{flows} flow records for {ok} connections"
    );
}

/// Anyone on the host may dial the listener directly (no kernel record: refused). Each such
/// connection was a ledger record and a log line, so any local user could write the ledger
/// as fast as it could connect, and fill its disk, after which every call is refused for
/// want of a record. They are counted now: the first 32 of every 10 s recorded with their
/// addresses, the rest counted into one record every 10 s and at the stop, every one once;
/// an agent is served meanwhile.
#[test]
fn a_flood_of_connections_without_a_record_is_counted_not_recorded_one_by_one() {
    let echo = gateway_tests::EchoServer::start("127.0.0.1:0");
    let port = echo.addr.port();
    let mut gw = Gateway::start(
        "limits-strays",
        GatewayOptions {
            ports: vec![port],
            ..Default::default()
        },
    );
    let mut dialed = 0u64;
    for _ in 0..3000 {
        if std::net::TcpStream::connect(("127.0.0.1", gw.listen4)).is_ok() {
            dialed += 1;
        }
    }
    assert!(dialed > 2500, "only {dialed} of 3000 connects went through");
    // Served after every one of them was accepted (one queue): the flood cost it nothing.
    let out = run_probe(gw.agent(
        PYTHON,
        &gateway_tests::probe_args("127.0.0.1", port, "plain", 10),
    ));
    assert_eq!(out["echo_ok"], true, "{out}");
    gw.stop();
    let records = gw.audit_records();
    let refused: Vec<&serde_json::Value> =
        records.iter().filter(|r| r["type"] == "refused").collect();
    // 32 each interval the flood spanned (it takes a second or two), and a count each 10 s.
    assert!(
        (32..=70).contains(&refused.len()),
        "{} records for the flood",
        refused.len()
    );
    let counted: u64 = refused.iter().filter_map(|r| r["refused"].as_u64()).sum();
    assert_eq!(counted, dialed, "{refused:?}");
    assert!(
        refused[0]["client"].is_string() && refused[0]["connection"].is_string(),
        "the first says who: {}",
        refused[0]
    );
}
