//! The ledger under a real daemon: a SIGKILL in the middle of heavy writing leaves a ledger
//! that verifies after restart, and every call the server saw is in it.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use gateway_tests::fake::{received, start as start_fake};
use gateway_tests::{free_port, gateway_bin, Gateway, GatewayOptions, PYTHON};
use serde_json::Value;

/// Hammers the server with tools/call requests from several threads (each on one
/// kept-alive connection) until the gateway goes away; prints how many were answered.
const LOAD_AGENT: &str = r#"
import http.client, json, sys, threading
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
done = [0] * n
def run(t):
    conn = http.client.HTTPConnection(host, port, timeout=10)
    i = 0
    while True:
        i += 1
        body = json.dumps({"jsonrpc": "2.0", "id": t * 1000000 + i, "method": "tools/call",
                           "params": {"name": "echo", "arguments": {"n": i}}})
        try:
            conn.request("POST", "/mcp", body=body, headers={"Content-Type": "application/json",
                         "Accept": "application/json, text/event-stream"})
            conn.getresponse().read()
            done[t] += 1
        except Exception:
            return
threads = [threading.Thread(target=run, args=(t,)) for t in range(n)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps({"answered": sum(done)}))
"#;

fn ledger_records(gw: &Gateway) -> Vec<Value> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(gw.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("audit.jsonl") && !n.ends_with(".head")
        })
        .collect();
    files.sort();
    for f in files {
        for l in std::fs::read_to_string(f).unwrap().lines() {
            if let Ok(v) = serde_json::from_str::<Value>(l) {
                out.push(v);
            }
        }
    }
    out
}

#[test]
fn sigkill_under_load_then_restart_verifies_and_no_forwarded_call_is_missing() {
    sigkill_under_load("ledger-kill", 4, "");
}

/// With `always`, a call leaves once its record is written and its result waits for the
/// sync: killed at any point under many connections, nothing the server got is missing.
#[test]
fn sigkill_under_sixteen_connections_with_sync_always_misses_no_forwarded_call() {
    sigkill_under_load("ledger-kill-16", 16, "sync = \"always\"\n");
}

fn sigkill_under_load(name: &str, connections: usize, audit: &str) {
    let port = free_port();
    let mut gw = Gateway::start(
        name,
        GatewayOptions {
            ports: vec![port],
            // Small files: the kill may also land around a rotation.
            audit: format!("max_file_bytes = 262144\n{audit}"),
            ..Default::default()
        },
    );
    let log = gw.dir.path().join("server.log");
    let _server = start_fake(port, &log);

    let load = gw
        .agent(
            PYTHON,
            &[
                "-c".into(),
                LOAD_AGENT.into(),
                "127.0.0.1".into(),
                port.to_string(),
                connections.to_string(),
            ],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    gw.kill9();
    let out = load.wait_with_output().unwrap();
    let answered: Value = serde_json::from_slice(&out.stdout).unwrap();
    let answered = answered["answered"].as_u64().unwrap();
    assert!(answered > 100, "not much load: {answered} calls");

    gw.launch();
    let verify = Command::new(gateway_bin())
        .args(["audit", "verify", "--config"])
        .arg(&gw.config)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&verify.stdout);
    if !verify.status.success() {
        let _ = std::fs::copy(
            gw.dir.path().join("audit.jsonl"),
            "/tmp/failed-ledger.jsonl",
        );
    }
    assert!(
        verify.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(report.starts_with("ok:"), "{report}");

    // Every call the server received had been recorded before it was forwarded.
    let records = ledger_records(&gw);
    let recorded: HashSet<String> = records
        .iter()
        .filter(|r| r["type"] == "mcp_call")
        .filter_map(|r| r["id"].as_str().map(str::to_string))
        .collect();
    let seen = received(&log);
    assert!(seen.len() as u64 >= answered);
    for r in &seen {
        let id = r["id"].to_string();
        assert!(
            recorded.contains(&id),
            "call {id} reached the server but is not in the ledger"
        );
    }
    // The restart is in the ledger, after the records of the killed daemon.
    let starts = records
        .iter()
        .filter(|r| r["type"] == "daemon_start")
        .count();
    assert_eq!(starts, 2);
}

/// Reads journald's native protocol: `KEY=value` lines, or `KEY\n<u64 LE length><bytes>\n`
/// for values with newlines.
fn journal_fields(mut d: &[u8]) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    while !d.is_empty() {
        let nl = d.iter().position(|&b| b == b'\n').unwrap_or(d.len());
        let line = &d[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            out.insert(
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            );
            d = &d[(nl + 1).min(d.len())..];
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let len = u64::from_le_bytes(d[nl + 1..nl + 9].try_into().unwrap()) as usize;
            let value = &d[nl + 9..nl + 9 + len];
            out.insert(key, String::from_utf8_lossy(value).into_owned());
            d = &d[(nl + 9 + len + 1).min(d.len())..];
        }
    }
    out
}

#[test]
fn records_reach_journald_with_structured_fields() {
    let socket = std::path::Path::new("/run/systemd/journal/socket");
    assert!(
        !socket.exists(),
        "a real journald runs here: this test stands in for it and needs its socket path free"
    );
    // Stand in for journald: the daemon finds the socket (journald = "auto") and sends to it.
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let listener = std::os::unix::net::UnixDatagram::bind(socket).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    struct Cleanup;
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_file("/run/systemd/journal/socket");
            let _ = std::fs::remove_dir("/run/systemd/journal");
            let _ = std::fs::remove_dir("/run/systemd");
        }
    }
    let _cleanup = Cleanup;

    let port = free_port();
    let gw = Gateway::start(
        "journald",
        GatewayOptions {
            ports: vec![port],
            audit: "journald = \"auto\"\n".into(),
            ..Default::default()
        },
    );
    let log = gw.dir.path().join("server.log");
    let _server = start_fake(port, &log);
    let agent = r#"
import http.client, json, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
c.request("POST", "/mcp", body=json.dumps({"jsonrpc":"2.0","id":int(sys.argv[2]),
    "method":"tools/call","params":{"name":"echo","arguments":{}}}),
    headers={"Content-Type":"application/json", "Accept":"application/json, text/event-stream"})
print(json.dumps({"status": c.getresponse().status}))
"#;
    let do_call = |id: u32| {
        let args = ["-c".into(), agent.into(), port.to_string(), id.to_string()];
        let out = gateway_tests::run_probe(gw.agent(PYTHON, &args));
        assert_eq!(out["status"], 200);
    };
    // The entries of one call, up to its exchange record.
    let entries = |listener: &std::os::unix::net::UnixDatagram| {
        let mut buf = vec![0u8; 1 << 16];
        let mut seen = Vec::new();
        loop {
            let n = listener
                .recv(&mut buf)
                .expect("the daemon sent no journald record for the call");
            let f = journal_fields(&buf[..n]);
            let done = f.get("MCP_TYPE").map(String::as_str) == Some("mcp");
            seen.push(f);
            if done {
                return seen;
            }
        }
    };
    do_call(77);
    let seen = entries(&listener);
    let call = seen
        .iter()
        .find(|f| f.get("MCP_TYPE").map(String::as_str) == Some("mcp_call"))
        .expect("the write-ahead call record");
    assert_eq!(call["SYSLOG_IDENTIFIER"], "mcp-gateway-audit");
    assert_eq!(call["MCP_METHOD"], "tools/call");
    assert_eq!(call["MCP_NAME"], "echo");
    assert_eq!(call["MCP_ID"], "77");
    assert!(
        call["MESSAGE"].contains("mcp_call tools/call echo"),
        "{call:?}"
    );
    let exchange = seen.last().unwrap();
    assert_eq!(exchange["MCP_OUTCOME"], "ok");
    // The journal entry is the ledger's record, chain fields included.
    let record: Value = serde_json::from_str(&exchange["MCP_AUDIT_RECORD"]).unwrap();
    let seq = record["seq"].as_u64().unwrap();
    assert_eq!(exchange["MCP_SEQ"], seq.to_string());
    let in_file = ledger_records(&gw)
        .into_iter()
        .find(|r| r["seq"] == seq)
        .unwrap();
    assert_eq!(in_file, record);

    // journald restarts: its socket is a new one at the same path, and the daemon's
    // entries reach it.
    drop(listener);
    std::fs::remove_file(socket).unwrap();
    let listener = std::os::unix::net::UnixDatagram::bind(socket).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    do_call(78);
    let seen = entries(&listener);
    let ids: Vec<&str> = seen
        .iter()
        .filter(|f| f.get("MCP_TYPE").is_some_and(|t| t.starts_with("mcp")))
        .map(|f| f["MCP_ID"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["78", "78"],
        "the call's two records, after journald restarted"
    );
}

/// Connects to 127.0.0.1:argv[1] from argv[2] processes in turn, each carrying about a
/// megabyte of command line (ten arguments of 100 KB); each sends a few bytes and waits
/// for the server to hang up (alive until its flow ends, so procfs names it).
const FLOOD: &str = r#"
import socket, subprocess, sys
port, n = sys.argv[1], int(sys.argv[2])
one = "import socket, sys; s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5); s.sendall(b'hello\\x00'); s.recv(1); s.close()"
big = ["A" * 100_000 for _ in range(10)]
for i in range(n):
    subprocess.run([sys.executable, "-c", one, port, "flow-%d" % i] + big, check=True)
print("{}")
"#;

#[test]
fn a_flood_of_huge_command_lines_cannot_flush_history_out_of_the_ledger() {
    let port = free_port();
    let gw = Gateway::start(
        "ledger-flood",
        GatewayOptions {
            ports: vec![port],
            audit: "max_file_bytes = 32768\nretain_files = 2\n".into(),
            ..Default::default()
        },
    );
    // A server that reads what comes and hangs up, so every flow ends (and is recorded).
    gateway_tests::start_hangup(port);
    let flows = 40;
    gateway_tests::run_probe(gw.agent(
        PYTHON,
        &[
            "-c".into(),
            FLOOD.into(),
            port.to_string(),
            flows.to_string(),
        ],
    ));
    // Every flow is recorded: wait for the last one to land.
    let last = format!("flow-{}", flows - 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let records = ledger_records(&gw);
        let seen: Vec<&Value> = records
            .iter()
            .filter(|r| r["type"] == "flow")
            .map(|r| &r["identity"]["cmdline"][4])
            .collect();
        if seen.iter().any(|c| *c == last.as_str()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the last flow was not recorded: flows {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Bounded: about 40 MB of command lines make a few kilobytes per record, not megabytes.
    let records = ledger_records(&gw);
    let flow = records
        .iter()
        .rev()
        .find(|r| r["type"] == "flow" && r["identity"]["cmdline"].is_array())
        .expect("a flow record");
    let line = serde_json::to_string(flow).unwrap();
    assert!(
        line.len() < 16 * 1024,
        "a flow record of {} bytes",
        line.len()
    );
    let argv = flow["identity"]["cmdline"].as_array().unwrap();
    assert!(
        argv.iter()
            .any(|a| a.as_str().unwrap().contains("bytes, sha256 ")),
        "a long argument keeps its length and digest: {argv:?}"
    );
    // Every record is bounded, and the flood made one record per connection: the ledger
    // grew by at most that many bounded records (about 40 MB of argv became kilobytes).
    for r in &records {
        let n = serde_json::to_string(r).unwrap().len();
        assert!(n < 16 * 1024, "a record of {n} bytes: {}", r["type"]);
    }
    let last_seq = records
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .max()
        .unwrap();
    assert!(
        last_seq < flows as u64 + 30,
        "{last_seq} records for {flows} flows"
    );
    // Retention removed the oldest files, each after a signed record of what went; verify
    // reports where the chain starts and every retention point.
    let verify = Command::new(gateway_bin())
        .args(["audit", "verify", "--config"])
        .arg(&gw.config)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&verify.stdout);
    let listing: Vec<String> = std::fs::read_dir(gw.dir.path())
        .unwrap()
        .flatten()
        .map(|e| {
            format!(
                "{:?} {}",
                e.file_name(),
                e.metadata().map_or(0, |m| m.len())
            )
        })
        .collect();
    assert!(verify.status.success(), "{report}");
    assert!(
        report.contains("the chain starts at seq "),
        "{report} {listing:?}"
    );
    assert!(report.contains("retention at seq "), "{report}");
    let retention = records.iter().filter(|r| r["type"] == "retention").count();
    assert!(retention >= 1, "no retention record");
}

/// A secret in an agent's command line never reaches the ledger: its flow record shows the
/// argument redacted, and the key is nowhere in the file.
#[test]
fn a_secret_in_an_agents_command_line_is_redacted_in_its_flow_record() {
    const KEY: &str = "AKIAQX3TZLMB7NRWK2EH";
    let port = free_port();
    let gw = Gateway::start(
        "ledger-cmdline",
        GatewayOptions {
            ports: vec![port],
            ..Default::default()
        },
    );
    // A server that reads what comes and hangs up, so the flow ends (and is recorded).
    gateway_tests::start_hangup(port);
    let agent = "import socket, sys\n\
                 s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5)\n\
                 s.sendall(b'hello\\x00'); s.recv(1); s.close()\n\
                 print('{}')\n";
    gateway_tests::run_probe(gw.agent(
        PYTHON,
        &[
            "-c".into(),
            agent.into(),
            port.to_string(),
            format!("--aws-key={KEY}"),
            "--verbose".into(),
        ],
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let argv = loop {
        let flow = ledger_records(&gw).into_iter().find(|r| {
            r["type"] == "flow" && r["identity"]["cmdline"][5].as_str() == Some("--verbose")
        });
        if let Some(flow) = flow {
            break flow["identity"]["cmdline"].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent's flow was not recorded"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // python3 -c CODE PORT --aws-key=… --verbose
    let arg = argv[4].as_str().unwrap();
    assert!(
        arg.starts_with("--aws-key=") && !arg.contains(KEY),
        "the key is redacted in the record: {argv}"
    );
    let file = std::fs::read_to_string(gw.dir.path().join("audit.jsonl")).unwrap();
    assert!(!file.contains(KEY), "the key is nowhere in the ledger");
}
