//! A clean stop (SIGTERM, what `systemctl stop` and a restart send): calls in flight are
//! answered and recorded before the daemon exits, and one that outlasts the grace period
//! is cut rather than holding the stop, with a ledger that verifies either way.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gateway_tests::fake::{received, start as start_fake};
use gateway_tests::{free_port, gateway_bin, Gateway, GatewayOptions, PYTHON};
use serde_json::Value;

const RAW_AGENT: &str = include_str!("../fixtures/raw_agent.py");

/// The daemon's grace for open flows at a stop (`listen::Server::serve_on_own_thread`).
const GRACE: Duration = Duration::from_secs(5);

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An agent calling the fake server's `slow` tool, which answers after `seconds`.
fn slow_call(gw: &Gateway, port: u16, seconds: f64) -> std::process::Child {
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"slow","arguments":{{"seconds":{seconds}}}}}}}"#
    );
    gw.agent(
        PYTHON,
        &[
            "-c".into(),
            RAW_AGENT.into(),
            "127.0.0.1".into(),
            port.to_string(),
            b64(body.as_bytes()),
            "{}".into(),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

/// Waits until the server has received the call.
fn wait_received(log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !received(log).iter().any(|r| r["method"] == "tools/call") {
        assert!(Instant::now() < deadline, "the server never got the call");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn verify(gw: &Gateway) {
    let out = Command::new(gateway_bin())
        .args(["audit", "verify", "--config"])
        .arg(&gw.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn started(name: &str, port: u16) -> Gateway {
    Gateway::start(
        name,
        GatewayOptions {
            ports: vec![port],
            ..Default::default()
        },
    )
}

#[test]
fn a_call_in_flight_at_the_stop_is_answered_and_recorded_before_the_daemon_exits() {
    let port = free_port();
    let mut gw = started("stop-drain", port);
    let log = gw.dir.path().join("server.log");
    let _server = start_fake(port, &log);

    let agent = slow_call(&gw, port, 1.5);
    wait_received(&log);
    let asked = Instant::now();
    assert_eq!(gw.stop(), Some(0), "{}", gw.log());
    let took = asked.elapsed();

    let out = agent.wait_with_output().unwrap();
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the agent got no answer ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(answer["status"], 200, "{answer}");
    let records = gw.mcp_records();
    let call = records
        .iter()
        .find(|r| r["method"] == "tools/call" && r["name"] == "slow")
        .unwrap_or_else(|| panic!("no record of the call: {records:#?}"));
    assert_eq!(call["outcome"], "ok", "{call}");
    // The stop waited for the call, and no longer: the daemon counts its open flows out as
    // they end, so it does not sit out the whole grace period.
    assert!(
        took < GRACE - Duration::from_millis(500),
        "the stop took {took:?} for a call answered after 1.5 s:\n{}",
        gw.log()
    );
    verify(&gw);
}

#[test]
fn a_call_that_outlasts_the_grace_period_is_cut_and_the_stop_completes() {
    let port = free_port();
    let mut gw = started("stop-grace", port);
    let log = gw.dir.path().join("server.log");
    let _server = start_fake(port, &log);

    let agent = slow_call(&gw, port, 60.0);
    wait_received(&log);
    let asked = Instant::now();
    // `stop` fails the test if the daemon is still running 15 s after SIGTERM.
    assert_eq!(gw.stop(), Some(0), "{}", gw.log());
    let took = asked.elapsed();
    assert!(
        took >= GRACE - Duration::from_millis(500),
        "the stop did not wait for the open call: {took:?}"
    );

    let out = agent.wait_with_output().unwrap();
    let answer: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    assert!(
        answer.is_none(),
        "the agent got an answer from a call cut at the stop: {answer:?}"
    );
    verify(&gw);
}
