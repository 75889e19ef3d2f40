//! `mcp-gateway status` and `top` against a stand-in daemon: a Unix socket that answers
//! the admin protocol's `status` op with a canned report, as the real daemon would.
//! The bin-only modules are compiled into this test so their logic is tested without a
//! running daemon; the last tests run the `mcp-gateway` binary itself.

#[allow(dead_code, unused_macros)]
#[macro_use]
#[path = "../src/out.rs"]
mod out;
#[allow(dead_code)]
#[path = "../src/status_cli.rs"]
mod status_cli;
#[allow(dead_code)]
#[path = "../src/top_cli.rs"]
mod top_cli;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use gateway_daemon::metrics::Metrics;
use gateway_daemon::status::{self, StatusParts};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use serde_json::{json, Value};

fn parts(started: u64) -> StatusParts {
    StatusParts {
        started_at: SystemTime::UNIX_EPOCH + Duration::from_secs(started),
        programs: vec!["connect4".into(), "connect6".into()],
        attach_cgroup: "/sys/fs/cgroup".into(),
        cgroups: vec!["mcp.slice/mcp-agents.slice".into()],
        listeners: vec!["127.0.0.1:15001".parse().unwrap()],
        metrics_listen: None,
        sessions: vec![("uid 1000 (alice)".into(), 2)],
        pins: json!({"servers": [{"server": "github", "pending": [
            {"kind": "tool", "name": "create_issue", "change": "changed", "rejected": false}
        ]}]}),
        pending_approvals: 1,
        stdio: None,
    }
}

/// A report as the daemon would answer after `calls` tools/call to github and `denied`
/// policy denials.
fn report(started: u64, calls: u64, denied: u64) -> Value {
    let m = Metrics::new();
    for _ in 0..calls {
        m.mcp("github", "tools/call", "ok");
    }
    m.mcp("files", "resources/read", "ok");
    for _ in 0..denied {
        m.denied("policy");
    }
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(started + 90);
    status::report_at(parts(started), now, m.snapshot())
}

/// Serves `answer` (one response line) to every admin connection, in a thread.
fn fake_daemon(dir: &Path, answer: Value) -> PathBuf {
    let socket = dir.join("admin.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let mut request = String::new();
            BufReader::new(&conn).read_line(&mut request).unwrap();
            let request: Value = serde_json::from_str(&request).unwrap();
            let reply = if request["op"] == "status" {
                answer.clone()
            } else {
                json!({"ok": false, "error": format!("unknown op {}", request["op"])})
            };
            let _ = writeln!(conn, "{reply}");
        }
    });
    socket
}

fn config(dir: &Path, socket: &Path) -> PathBuf {
    let path = dir.join("mcp-gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[agents]\ncgroups = [\"mcp.slice/mcp-agents.slice\"]\n[admin]\nsocket = \"{}\"\n",
            socket.display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn status_asks_the_daemon_and_renders_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let expected = report(1_700_000_000, 3, 1);
    let socket = fake_daemon(dir.path(), json!({"ok": true, "result": expected}));
    let cfg = config(dir.path(), &socket);
    let got = status_cli::fetch(&cfg).unwrap();
    assert_eq!(got, expected);
    let text = status::render_text(&got);
    assert!(text.contains("calls:            4 (ok 4)\n"), "{text}");
    assert!(text.contains("denials:          1 (policy 1)\n"), "{text}");
    assert!(text.contains("  github: tool create_issue\n"), "{text}");
}

#[test]
fn status_without_a_daemon_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody-here.sock");
    let cfg = config(dir.path(), &socket);
    let e = format!("{:#}", status_cli::fetch(&cfg).unwrap_err());
    assert!(e.contains("no mcp-gateway daemon is listening"), "{e}");
    assert!(e.contains(&socket.display().to_string()), "{e}");
}

#[test]
fn status_shows_a_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let socket = fake_daemon(
        dir.path(),
        json!({"ok": false, "error": "unknown op \"status\""}),
    );
    let cfg = config(dir.path(), &socket);
    let e = format!("{:#}", status_cli::fetch(&cfg).unwrap_err());
    assert!(e.contains("unknown op"), "{e}");
}

#[test]
fn rates_come_from_successive_answers() {
    let a = report(1_700_000_000, 10, 2);
    let b = report(1_700_000_000, 30, 6);
    let r = top_cli::rates(&a, &b, Duration::from_secs(4));
    assert_eq!(r.calls, Some(5.0));
    assert_eq!(r.servers["github"], 5.0);
    assert_eq!(r.servers["files"], 0.0);
    assert_eq!(r.denials["policy"], 1.0);
    assert_eq!(r.denials["rate_limit"], 0.0);
    // A restarted daemon counts from zero again: no rates rather than nonsense.
    let restarted = report(1_700_000_500, 1, 0);
    assert_eq!(
        top_cli::rates(&b, &restarted, Duration::from_secs(4)),
        top_cli::Rates::default()
    );
}

fn screen(view: &top_cli::View, now: Instant) -> String {
    let mut terminal = Terminal::new(TestBackend::new(120, 30)).unwrap();
    terminal.draw(|f| top_cli::draw(f, view, now)).unwrap();
    let buffer = terminal.backend().buffer();
    let area = buffer.area;
    (0..area.height)
        .map(|y| {
            (0..area.width)
                .map(|x| buffer[(x, y)].symbol())
                .collect::<String>()
                + "\n"
        })
        .collect()
}

#[test]
fn top_shows_servers_with_rates_denials_sessions_and_pins() {
    let t0 = Instant::now();
    let mut view = top_cli::View::new(report(1_700_000_000, 10, 2), t0, Duration::from_secs(2));
    view.update(
        t0 + Duration::from_secs(2),
        Ok(report(1_700_000_000, 14, 3)),
    );
    let text = screen(&view, t0 + Duration::from_secs(2));
    let row = |first: &str| -> Vec<String> {
        text.lines()
            .map(|l| l.trim_matches(|c: char| c == '│' || c.is_whitespace()))
            .find(|l| l.starts_with(first))
            .unwrap_or_else(|| panic!("no row {first:?} in\n{text}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert!(
        text.contains(&format!("mcp-gateway {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.contains("up 1m"), "{text}");
    assert!(text.contains("listeners 127.0.0.1:15001"), "{text}");
    assert!(text.contains("calls 15 (2.0/s)"), "{text}");
    assert!(text.contains("approvals pending 1"), "{text}");
    assert!(text.contains("pins waiting for review 1"), "{text}");
    assert_eq!(row("github")[..4], ["github", "2.0", "14", "ok"]);
    assert_eq!(row("files")[..4], ["files", "0.0", "1", "ok"]);
    assert!(text.contains("policy"), "{text}");
    assert!(text.contains("0.5"), "denials/s: {text}");
    assert!(text.contains("uid 1000 (alice)"), "{text}");
    assert!(text.contains("github: tool create_issue"), "{text}");
    assert!(text.contains("q quit"), "{text}");
}

#[test]
fn top_keeps_the_last_answer_when_the_daemon_goes_away() {
    let t0 = Instant::now();
    let mut view = top_cli::View::new(report(1_700_000_000, 1, 0), t0, Duration::from_secs(1));
    view.update(
        t0 + Duration::from_secs(1),
        Err("no mcp-gateway daemon is listening on /run/x.sock".into()),
    );
    let text = screen(&view, t0 + Duration::from_secs(3));
    assert!(
        text.contains("no answer: no mcp-gateway daemon is listening on /run/x.sock"),
        "{text}"
    );
    assert!(text.contains("from 3s ago"), "{text}");
    assert!(text.contains("github"), "the last answer stays: {text}");
}

/// The `mcp-gateway` binary, as an administrator runs it (stdout is a pipe here).
fn mcp_gateway(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mcp-gateway"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn binary_status_and_top_print_the_daemons_answer() {
    let dir = tempfile::tempdir().unwrap();
    let expected = report(1_700_000_000, 3, 1);
    let socket = fake_daemon(dir.path(), json!({"ok": true, "result": expected}));
    let cfg = config(dir.path(), &socket);
    let cfg = cfg.to_str().unwrap();

    let (ok, out, err) = mcp_gateway(&["status", "--config", cfg, "--json"]);
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), expected);

    let (ok, out, err) = mcp_gateway(&["status", "--config", cfg]);
    assert!(ok, "{err}");
    assert_eq!(out, status::render_text(&expected));

    // Not on a terminal, top prints one snapshot and exits.
    let (ok, out, err) = mcp_gateway(&["top", "--config", cfg, "--interval", "1s"]);
    assert!(ok, "{err}");
    assert_eq!(out, status::render_text(&expected));
}

#[test]
fn binary_status_without_a_daemon_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody-here.sock");
    let cfg = config(dir.path(), &socket);
    for cmd in ["status", "top"] {
        let (ok, out, err) = mcp_gateway(&[cmd, "--config", cfg.to_str().unwrap()]);
        assert!(!ok, "{cmd}: {out}");
        assert!(
            err.contains("no mcp-gateway daemon is listening on"),
            "{cmd}: {err}"
        );
    }
}
