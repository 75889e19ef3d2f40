//! Every command's output into a reader that has gone (`mcp-gateway … | head -1`): the
//! command ends quietly with status 141 (as `cat` killed by SIGPIPE), never with a panic,
//! and the daemon keeps working — against a
//! running daemon with something in every list (a pinned server, a change waiting in pins,
//! a call held for approval, a ledger of records).

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gateway_tests::config::{Rule, Server, TestConfig};
use gateway_tests::peers::{run_json, venv_python};
use gateway_tests::{free_port, gateway_bin, Gateway, GatewayOptions};
use serde_json::{json, Value};

const CLIENT: &str = include_str!("../fixtures/policy_client.py");
use gateway_tests::peers::rug_server as bank;

fn agent(gw: &Gateway, url: &str, calls: Value) -> Command {
    let mut cmd = Command::new(venv_python());
    cmd.arg("-c").arg(CLIENT).arg(url).arg(calls.to_string());
    gw.wrap(cmd)
}

/// Runs `mcp-gateway ARGS --config …` with its stdout a pipe whose reader is already gone:
/// its first write fails with EPIPE. Returns the exit code and stderr.
fn into_closed_pipe(gw: &Gateway, args: &[&str]) -> (Option<i32>, String) {
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let out = Command::new(gateway_bin())
        .args(args)
        .arg("--config")
        .arg(&gw.config)
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until `approvals list` shows a held call.
fn wait_held(gw: &Gateway) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = gw.cli(&["approvals", "list", "--json"]);
        let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if list["held"].as_array().is_some_and(|h| !h.is_empty()) {
            return;
        }
        assert!(Instant::now() < deadline, "no held call\n{}", gw.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_command_ends_quietly_when_its_reader_has_gone() {
    let port = free_port();
    let gw = Gateway::start(
        "cli-epipe",
        GatewayOptions {
            ports: vec![port],
            config: TestConfig::allowing("agent", Server::at("bank", port))
                .first(Rule::ask("agent", "bank").tools(&["deposit"])),
            pins: "mode = \"tofu\"\n".into(),
            ..Default::default()
        },
    );
    // Pinned at v1, then a rug pull waits in pins.
    let v1 = bank(port, "v1");
    let url = v1.url.clone();
    run_json(agent(&gw, &url, json!([])));
    drop(v1);
    let _v2 = bank(port, "v2");
    run_json(agent(&gw, &url, json!([])));
    // A call held for approval while the commands run.
    let held: Child = agent(
        &gw,
        &url,
        json!([{"name": "deposit", "arguments": {"account": "a", "amount": 1}}]),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_held(&gw);

    let commands: &[&[&str]] = &[
        &["status"],
        &["status", "--json"],
        &["top"],
        &["pins", "list"],
        &["pins", "diff", "bank"],
        &["approvals", "list"],
        &["approvals", "list", "--json"],
        &["audit", "show"],
        &["audit", "tail", "-n", "5"],
        &["audit", "verify"],
        &["audit", "pubkey"],
        &["audit", "bench", "--records", "50", "--concurrency", "2"],
        &["ca", "export"],
    ];
    for args in commands {
        // Each one prints something when read (or the test would prove nothing).
        let read = gw.cli(args);
        assert!(
            read.status.success() && !read.stdout.is_empty(),
            "mcp-gateway {args:?} printed nothing: {}",
            String::from_utf8_lossy(&read.stderr)
        );
        let (code, stderr) = into_closed_pipe(&gw, args);
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        assert_eq!(code, Some(141), "{args:?} into a closed pipe: {stderr}");
    }
    // check-config takes the file as its argument.
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let out = Command::new(gateway_bin())
        .arg("check-config")
        .arg(&gw.config)
        .stdout(Stdio::from(write))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");

    // `exec` passes its command's output through untouched: the command meets the closed
    // pipe itself, and exec ends with its status, never a panic of its own.
    let (code, stderr) = into_closed_pipe(&gw, &["exec", "--", "/bin/echo", "hello"]);
    assert!(!stderr.contains("panicked"), "exec panicked: {stderr}");
    assert_ne!(code, Some(101), "{stderr}");

    // The daemon served them all and still answers.
    assert!(gw.cli(&["status"]).status.success());
    let mut held = held;
    let _ = held.kill();
    let mut ignored = String::new();
    let _ = held.stdout.take().unwrap().read_to_string(&mut ignored);
    let _ = held.wait();

    // `detach` speaks once the daemon has stopped (its programs stay attached until then).
    let mut gw = gw;
    gw.stop();
    let (code, stderr) = into_closed_pipe(&gw, &["detach"]);
    assert!(!stderr.contains("panicked"), "detach panicked: {stderr}");
    assert_eq!(code, Some(141), "detach into a closed pipe: {stderr}");
}
