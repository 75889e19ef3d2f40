//! The audit names the program that connected, not the one the process runs by the time
//! the daemon looks: the kernel records the executable's file at connect(), and a process
//! that exec's another program right after connecting, or exits at once, is still named for
//! it (what it runs now is recorded beside it).

use std::time::Duration;

use gateway_tests::{free_port, run_probe, Gateway, GatewayOptions, PYTHON};
use serde_json::Value;

/// argv[2] rounds of: connect to 127.0.0.1:argv[1] from a child that sends a few bytes and
/// then exec's `sleep` (argv[3] = "exec") or exits at once ("exit"); prints the children's
/// pids. One plain connection comes first, so the daemon has seen this interpreter.
const AGENT: &str = r#"
import json, os, socket, subprocess, sys, time
port, rounds, how = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
s = socket.create_connection(("127.0.0.1", port), timeout=5)
s.sendall(b"hello\x00")
s.recv(1)
s.close()
time.sleep(0.3)
child = r'''
import os, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(b"hello\x00")
if sys.argv[2] == "exec":
    os.set_inheritable(s.fileno(), True)
    os.execv("/bin/sleep", ["sleep", "1"])
os._exit(0)
'''
pids = []
for i in range(rounds):
    p = subprocess.Popen([sys.executable, "-c", child, str(port), how])
    pids.append(p.pid)
    p.wait()
print(json.dumps({"pids": pids}))
"#;

/// A gateway mediating a free port, and a server on it that reads what comes, then hangs
/// up: every flow ends and is recorded.
fn gateway_and_server(name: &str) -> (Gateway, u16) {
    let port = free_port();
    let gw = Gateway::start(
        name,
        GatewayOptions {
            ports: vec![port],
            ..Default::default()
        },
    );
    gateway_tests::start_hangup(port);
    (gw, port)
}

fn run(how: &str) -> (Vec<Value>, String) {
    let (gw, port) = gateway_and_server(&format!("identity-{how}"));
    let out = run_probe(gw.agent(
        PYTHON,
        &[
            "-c".into(),
            AGENT.into(),
            port.to_string(),
            "6".into(),
            how.into(),
        ],
    ));
    let pids: Vec<u64> = out["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    let flows = gw.flows_of_pids(&pids);
    let python = std::fs::canonicalize(PYTHON).unwrap();
    (flows, python.display().to_string())
}

#[test]
fn a_process_that_execs_after_connecting_is_named_for_the_program_that_connected() {
    let (flows, python) = run("exec");
    // Exec'ing takes a millisecond, the daemon's look longer: most children ran `sleep` by
    // then, which is the case this is about.
    assert!(
        flows.iter().any(|f| !f["identity"]["exe_now"].is_null()),
        "no child had exec'd when the daemon looked: {flows:?}"
    );
    for f in &flows {
        let id = &f["identity"];
        assert_eq!(id["exe"], python.as_str(), "{id}");
        assert!(id["exe_file"]["ino"].as_u64().is_some(), "{id}");
        // When the daemon looked after the exec, what runs now is recorded beside it.
        if !id["exe_now"].is_null() {
            assert_eq!(id["exe_now"], "/usr/bin/sleep", "{id}");
        }
    }
}

#[test]
fn a_process_that_exits_at_once_is_still_named() {
    let (flows, python) = run("exit");
    for f in &flows {
        assert_eq!(f["identity"]["exe"], python.as_str(), "{}", f["identity"]);
    }
}

/// A program whose path is not UTF-8 (an agent can name its own files as it likes) still
/// has its flow recorded, its path written as it displays. serde refused such a path, and
/// the whole record was lost; and an argument that is not UTF-8 failed the procfs read,
/// leaving the record without the program, its arguments and its cgroup.
#[test]
fn a_program_at_a_path_that_is_not_utf8_is_still_recorded() {
    use std::os::unix::ffi::OsStrExt;
    let (gw, port) = gateway_and_server("identity-not-utf8");
    let dir = std::env::temp_dir().join(std::ffi::OsStr::from_bytes(
        format!("mcp-gw-{}-ag\u{1}", std::process::id())
            .as_bytes()
            .iter()
            .copied()
            .chain(*b"\xffent")
            .collect::<Vec<u8>>()
            .as_slice(),
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let bash = dir.join("bash");
    std::fs::copy("/bin/bash", &bash).unwrap();
    let mut cmd = gw.agent(
        "/bin/sh",
        &[
            "-c".into(),
            "exec \"$AGENT_BIN\" -c 'exec 3<>/dev/tcp/127.0.0.1/'\"$PORT\"'; printf \"hello\\0\" >&3; sleep 1; :'"
                .into(),
        ],
    );
    cmd.env("AGENT_BIN", &bash).env("PORT", port.to_string());
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "agent failed: {out:?}");
    let expected = format!("{}/bash", dir.to_string_lossy());
    assert!(expected.contains('\u{fffd}'));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let flows: Vec<Value> = gw
            .audit_records()
            .into_iter()
            .filter(|r| r["type"] == "flow" && r["identity"]["exe"] == expected.as_str())
            .collect();
        if let Some(f) = flows.first() {
            assert_eq!(f["bytes_to_upstream"], 6, "{f}");
            // The argument that is not UTF-8 (argv[0]) blinds none of the procfs facts.
            let id = &f["identity"];
            assert_eq!(id["cmdline"][0], expected.as_str(), "{id}");
            assert!(id["cgroup"].as_str().is_some(), "{id}");
            assert!(id.get("procfs_error").is_none(), "{id}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no flow record names {expected:?}; the daemon said: {}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
