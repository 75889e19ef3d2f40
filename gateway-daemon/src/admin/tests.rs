//! A real socket in a tempdir, served by a runtime of its own; unprivileged clients are this
//! test binary run again under `setpriv` as uid 65534. Needs root (to change uid, chown the
//! socket and create the test group): without it these tests fail, they do not skip.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener as StdUnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::client::call_with_timeout;
use super::server::{serve_with, Limits};
use super::*;
use crate::config;

const TEST_GROUP: &str = "mcp-gw-test-admin";
const NOBODY: u32 = 65534;
const CHILD_SOCKET_ENV: &str = "MCP_GW_ADMIN_TEST_SOCKET";
const CHILD_MARK: &str = "ADMIN-CHILD-OUTCOME ";

struct TestHandler {
    calls: Arc<AtomicUsize>,
}

impl Handler for TestHandler {
    fn handle(&self, caller: &Caller, op: &str, args: Value) -> HandlerFuture<'_> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let caller = *caller;
        let op = op.to_owned();
        Box::pin(async move {
            match op.as_str() {
                "echo" => Ok(args),
                "fail" => Err(args["message"].as_str().unwrap_or("failed").to_owned()),
                "whoami" => Ok(json!({ "uid": caller.uid, "gid": caller.gid, "pid": caller.pid })),
                "sleep" => {
                    let ms = args["ms"].as_u64().unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok(json!("slept"))
                }
                "panic" => panic!("test handler panics on purpose"),
                other => Err(format!("unknown op {other}")),
            }
        })
    }
}

/// A tempdir nobody (uid 65534) can traverse, so only the socket's own mode fences it.
fn socket_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("mcp-gw-admin-")
        .tempdir()
        .unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn admin_config(socket: PathBuf, group: &str) -> config::Admin {
    config::Admin {
        socket,
        group: group.to_owned(),
    }
}

/// The gid of a group made for these tests, created once per test process.
fn test_gid() -> u32 {
    static GID: OnceLock<u32> = OnceLock::new();
    *GID.get_or_init(|| {
        let status = Command::new("groupadd")
            .args(["-f", TEST_GROUP])
            .status()
            .expect("groupadd must exist (these tests run as root on Linux)");
        assert!(
            status.success(),
            "groupadd -f {TEST_GROUP} failed: {status}"
        );
        nix::unistd::Group::from_name(TEST_GROUP)
            .unwrap()
            .unwrap_or_else(|| panic!("{TEST_GROUP} missing right after groupadd"))
            .gid
            .as_raw()
    })
}

/// The daemon side: the listener served on a runtime of its own, until dropped.
struct Daemon {
    path: PathBuf,
    calls: Arc<AtomicUsize>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Daemon {
    fn start(listener: AdminListener) -> Daemon {
        Self::start_with(listener, Limits::default())
    }

    fn start_with(listener: AdminListener, limits: Limits) -> Daemon {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(TestHandler {
            calls: calls.clone(),
        });
        let path = listener.path().to_owned();
        runtime.spawn(serve_with(listener, handler, limits));
        Daemon {
            path,
            calls,
            runtime: Some(runtime),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Stops serving and waits until the serving task, and with it the listener, is gone.
    fn stop(mut self) {
        drop(self.runtime.take());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn serve_root_only(dir: &Path) -> Daemon {
    let cfg = admin_config(dir.join("admin.sock"), TEST_GROUP);
    test_gid();
    Daemon::start(AdminListener::bind(&cfg).unwrap())
}

/// A raw connection for speaking the protocol by hand.
fn raw(path: &Path) -> (BufReader<UnixStream>, UnixStream) {
    let stream = UnixStream::connect(path).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (BufReader::new(stream.try_clone().unwrap()), stream)
}

fn read_response(reader: &mut BufReader<UnixStream>) -> Value {
    let mut line = String::new();
    let n = reader.read_line(&mut line).unwrap();
    assert!(
        n > 0,
        "the daemon closed the connection instead of answering"
    );
    assert!(line.ends_with('\n'), "response without newline: {line:?}");
    serde_json::from_str(&line).unwrap()
}

/// After the daemon hangs up, a read sees EOF (or a reset when it left our bytes unread).
fn assert_closed(reader: &mut BufReader<UnixStream>) {
    let mut rest = Vec::new();
    match reader.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "more after close: {rest:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}

#[test]
fn root_calls_and_ok_and_error_results_round_trip() {
    let dir = socket_dir();
    let daemon = serve_root_only(dir.path());

    let args = json!({ "name": "fs", "nested": [1, 2, { "x": null }] });
    assert_eq!(call(&daemon.path, "echo", args.clone()).unwrap(), args);

    let err = call(
        &daemon.path,
        "fail",
        json!({ "message": "no such pin: fs/read" }),
    )
    .unwrap_err();
    assert!(matches!(err, AdminError::Refused(_)), "{err:?}");
    assert_eq!(err.to_string(), "no such pin: fs/read");

    let me = call(&daemon.path, "whoami", json!({})).unwrap();
    assert_eq!(me["uid"], 0);
    assert_eq!(me["pid"], std::process::id());
    assert_eq!(daemon.calls(), 3);
}

#[test]
fn several_requests_on_one_connection_are_answered_in_order() {
    let dir = socket_dir();
    let daemon = serve_root_only(dir.path());
    let (mut reader, mut writer) = raw(&daemon.path);

    // All at once, so the daemon must split them and keep their order.
    writer
        .write_all(
            b"{\"op\":\"sleep\",\"args\":{\"ms\":100}}\n\
              {\"op\":\"fail\",\"args\":{\"message\":\"second\"}}\n\
              {\"op\":\"echo\"}\n\
              \n\
              {\"op\":\"echo\",\"args\":null}\n",
        )
        .unwrap();
    assert_eq!(
        read_response(&mut reader),
        json!({ "ok": true, "result": "slept" })
    );
    assert_eq!(
        read_response(&mut reader),
        json!({ "ok": false, "error": "second" })
    );
    // Absent or null args reach the handler as {}; the blank line is not a request.
    assert_eq!(
        read_response(&mut reader),
        json!({ "ok": true, "result": {} })
    );
    assert_eq!(
        read_response(&mut reader),
        json!({ "ok": true, "result": {} })
    );
    assert_eq!(daemon.calls(), 4);
}

#[test]
fn malformed_request_gets_an_error_and_the_connection_stays_usable() {
    let dir = socket_dir();
    let daemon = serve_root_only(dir.path());
    let (mut reader, mut writer) = raw(&daemon.path);

    writer.write_all(b"{not json\n").unwrap();
    let response = read_response(&mut reader);
    assert_eq!(response["ok"], false);
    let error = response["error"].as_str().unwrap();
    assert!(
        error.starts_with("malformed request: key must be a string"),
        "{error}"
    );

    writer.write_all(b"{\"args\":{}}\n").unwrap();
    let error = read_response(&mut reader)["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("missing field `op`"), "{error}");

    writer
        .write_all(b"{\"op\":\"echo\",\"arsg\":{}}\n")
        .unwrap();
    let error = read_response(&mut reader)["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("unknown field `arsg`"), "{error}");

    writer
        .write_all(b"{\"op\":\"echo\",\"args\":{\"n\":1}}\n")
        .unwrap();
    assert_eq!(
        read_response(&mut reader),
        json!({ "ok": true, "result": { "n": 1 } })
    );
    assert_eq!(daemon.calls(), 1);
}

#[test]
fn a_line_at_the_limit_is_served_and_one_over_it_closes_the_connection() {
    let dir = socket_dir();
    let daemon = serve_root_only(dir.path());

    let frame = r#"{"op":"echo","args":{"s":""}}"#;
    let at_limit =
        r#"{"op":"echo","args":{"s":""#.to_owned() + &"a".repeat(MAX_LINE - frame.len()) + r#""}}"#;
    assert_eq!(at_limit.len(), MAX_LINE);
    let (mut reader, mut writer) = raw(&daemon.path);
    writer.write_all(at_limit.as_bytes()).unwrap();
    writer.write_all(b"\n").unwrap();
    let response = read_response(&mut reader);
    assert_eq!(
        response["result"]["s"].as_str().unwrap().len(),
        MAX_LINE - frame.len()
    );

    // The daemon stops reading at the limit, so the writer may block until it hangs up.
    let mut flood = writer.try_clone().unwrap();
    let writer_thread = std::thread::spawn(move || {
        let _ = flood.write_all(&vec![b'a'; 2 * MAX_LINE]);
    });
    let response = read_response(&mut reader);
    assert_eq!(
        response,
        json!({ "ok": false, "error": "request line longer than 1048576 bytes; closing the connection" })
    );
    assert_closed(&mut reader);
    writer_thread.join().unwrap();

    // The client refuses to send what the daemon would refuse.
    let err = call(&daemon.path, "echo", json!({ "s": "a".repeat(MAX_LINE) })).unwrap_err();
    assert!(matches!(err, AdminError::TooLarge { .. }), "{err:?}");
    assert_eq!(daemon.calls(), 1);
    // And the daemon serves on.
    assert_eq!(call(&daemon.path, "echo", json!(1)).unwrap(), json!(1));
}

#[test]
fn an_idle_client_is_disconnected_without_disturbing_others() {
    let dir = socket_dir();
    let cfg = admin_config(dir.path().join("admin.sock"), TEST_GROUP);
    test_gid();
    let limits = Limits {
        idle: Duration::from_millis(300),
        ..Limits::default()
    };
    let daemon = Daemon::start_with(AdminListener::bind(&cfg).unwrap(), limits);

    let (mut idle, _idle_writer) = raw(&daemon.path);
    let (mut busy, mut busy_writer) = raw(&daemon.path);
    busy_writer
        .write_all(b"{\"op\":\"echo\",\"args\":1}\n")
        .unwrap();
    assert_eq!(read_response(&mut busy)["result"], 1);

    let started = Instant::now();
    let response = read_response(&mut idle);
    assert_eq!(
        response,
        json!({ "ok": false, "error": "no request for 0.3 s; closing the connection" })
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_closed(&mut idle);
}

#[test]
fn a_panicking_handler_answers_with_an_error_and_the_daemon_serves_on() {
    let dir = socket_dir();
    let daemon = serve_root_only(dir.path());
    let err = call(&daemon.path, "panic", json!({})).unwrap_err();
    assert_eq!(
        err.to_string(),
        "internal error while handling \"panic\"; see the daemon's log"
    );
    assert_eq!(
        call(&daemon.path, "echo", json!("still here")).unwrap(),
        "still here"
    );
}

#[test]
fn the_client_gives_up_after_its_timeout() {
    let dir = socket_dir();
    let daemon = serve_root_only(dir.path());
    let started = Instant::now();
    let err = call_with_timeout(
        &daemon.path,
        "sleep",
        json!({ "ms": 5000 }),
        Duration::from_millis(300),
    )
    .unwrap_err();
    assert!(matches!(err, AdminError::Timeout { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        err.to_string(),
        format!(
            "the daemon on {} did not answer within 0.3 s",
            daemon.path.display()
        )
    );
}

#[test]
fn the_client_names_a_missing_daemon() {
    let dir = socket_dir();
    let path = dir.path().join("admin.sock");
    let err = call(&path, "pins.list", json!({})).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "no mcp-gateway daemon is listening on {} (is the service running? see admin.socket in the config)",
            path.display()
        )
    );

    // A socket file whose daemon is gone reads the same.
    drop(StdUnixListener::bind(&path).unwrap());
    let err = call(&path, "pins.list", json!({})).unwrap_err();
    assert!(matches!(err, AdminError::NotRunning { .. }), "{err:?}");
}

// --- who may connect ---------------------------------------------------------------------

/// The body of the unprivileged client that `as_nobody` runs; in a normal test run (without
/// the variable) it has nothing to do.
#[test]
fn child_client_helper() {
    let Ok(socket) = std::env::var(CHILD_SOCKET_ENV) else {
        return;
    };
    let outcome = match call(Path::new(&socket), "whoami", json!({})) {
        Ok(result) => json!({ "ok": result }),
        Err(e) => {
            let kind = match e {
                AdminError::Refused(_) => "refused",
                AdminError::PermissionDenied { .. } => "permission_denied",
                _ => "other",
            };
            json!({ "kind": kind, "error": e.to_string() })
        }
    };
    println!("{CHILD_MARK}{outcome}");
}

/// Calls `whoami` on `socket` from a process with uid 65534 and the given groups.
fn as_nobody(socket: &Path, primary_gid: u32, supplementary: Option<u32>) -> Value {
    let groups = match supplementary {
        Some(gid) => format!("--groups={gid}"),
        None => "--clear-groups".to_owned(),
    };
    let exe = std::env::current_exe().unwrap();
    let output = Command::new("setpriv")
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={primary_gid}"))
        .arg(groups)
        .arg(&exe)
        .args(["--exact", "admin::tests::child_client_helper"])
        .args(["--nocapture", "--test-threads=1", "--quiet"])
        .env(CHILD_SOCKET_ENV, socket)
        .output()
        .expect("setpriv (util-linux) runs the unprivileged client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child client failed ({}): {stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(CHILD_MARK))
        .unwrap_or_else(|| panic!("the child client printed no outcome: {stdout}"));
    serde_json::from_str(line).unwrap()
}

#[test]
fn a_uid_outside_the_admin_group_is_refused_by_its_peer_credentials() {
    let dir = socket_dir();
    let cfg = admin_config(dir.path().join("admin.sock"), TEST_GROUP);
    test_gid();
    // World-writable, so only the peer-credential check stands in the way.
    let daemon = Daemon::start(AdminListener::bind_with_mode(&cfg, 0o666).unwrap());

    let outcome = as_nobody(&daemon.path, NOBODY, None);
    assert_eq!(
        outcome,
        json!({
            "kind": "refused",
            "error": format!("not allowed: uid {NOBODY} is neither root nor in group {TEST_GROUP}"),
        })
    );
    assert_eq!(daemon.calls(), 0, "the handler ran for a refused caller");
    // The daemon is unharmed.
    assert_eq!(call(&daemon.path, "echo", json!(2)).unwrap(), json!(2));
}

#[test]
fn a_supplementary_member_of_the_admin_group_is_allowed() {
    let dir = socket_dir();
    let cfg = admin_config(dir.path().join("admin.sock"), TEST_GROUP);
    let gid = test_gid();
    let daemon = Daemon::start(AdminListener::bind(&cfg).unwrap());

    let outcome = as_nobody(&daemon.path, NOBODY, Some(gid));
    assert_eq!(outcome["ok"]["uid"], NOBODY, "{outcome}");
    assert_eq!(outcome["ok"]["gid"], NOBODY, "{outcome}");
    assert_eq!(daemon.calls(), 1);
}

#[test]
fn a_primary_member_of_the_admin_group_is_allowed() {
    let dir = socket_dir();
    let cfg = admin_config(dir.path().join("admin.sock"), TEST_GROUP);
    let gid = test_gid();
    let daemon = Daemon::start(AdminListener::bind(&cfg).unwrap());

    let outcome = as_nobody(&daemon.path, gid, None);
    assert_eq!(outcome["ok"]["uid"], NOBODY, "{outcome}");
    assert_eq!(outcome["ok"]["gid"], gid, "{outcome}");
}

#[test]
fn the_file_mode_stops_a_non_member_before_the_daemon_sees_it() {
    let dir = socket_dir();
    let daemon = serve_root_only(dir.path());
    let outcome = as_nobody(&daemon.path, NOBODY, None);
    assert_eq!(
        outcome,
        json!({
            "kind": "permission_denied",
            "error": format!(
                "permission denied on {}: run as root or as a member of the admin group (admin.group in the config)",
                daemon.path.display()
            ),
        })
    );
}

// --- the socket file ---------------------------------------------------------------------

#[test]
fn the_socket_has_mode_0660_and_the_admin_group_in_a_new_0755_directory() {
    let dir = socket_dir();
    let path = dir.path().join("run/mcp-gateway/admin.sock");
    let gid = test_gid();
    let listener = AdminListener::bind(&admin_config(path.clone(), TEST_GROUP)).unwrap();

    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o660);
    assert_eq!(meta.gid(), gid);
    for d in [dir.path().join("run"), dir.path().join("run/mcp-gateway")] {
        assert_eq!(
            fs::metadata(&d).unwrap().mode() & 0o7777,
            0o755,
            "{}",
            d.display()
        );
    }

    // Going away takes the file with it.
    drop(listener);
    assert!(!path.exists());
}

#[test]
fn without_the_admin_group_the_socket_is_root_only() {
    let dir = socket_dir();
    let path = dir.path().join("admin.sock");
    let cfg = admin_config(path.clone(), "mcp-gw-test-no-such-group");
    let daemon = Daemon::start(AdminListener::bind(&cfg).unwrap());
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
    assert_eq!(call(&path, "echo", json!(3)).unwrap(), json!(3));
    daemon.stop();
}

#[test]
fn a_second_daemon_on_the_same_path_is_refused() {
    let dir = socket_dir();
    let daemon = serve_root_only(dir.path());
    let cfg = admin_config(daemon.path.clone(), TEST_GROUP);
    let err = AdminListener::bind(&cfg).unwrap_err();
    assert!(matches!(err, AdminError::AnotherDaemon { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "another mcp-gateway is using {}: stop it, or set admin.socket to another path",
            daemon.path.display()
        )
    );
    // The first is untouched and serving.
    assert_eq!(call(&daemon.path, "echo", json!(4)).unwrap(), json!(4));
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = socket_dir();
    let path = dir.path().join("admin.sock");
    // A listener dropped without unlinking, as a crashed daemon leaves it.
    drop(StdUnixListener::bind(&path).unwrap());
    assert!(path.exists());

    test_gid();
    let daemon =
        Daemon::start(AdminListener::bind(&admin_config(path.clone(), TEST_GROUP)).unwrap());
    assert_eq!(call(&path, "echo", json!(5)).unwrap(), json!(5));

    // Stopping the daemon removes its socket.
    daemon.stop();
    assert!(!path.exists());
}

#[test]
fn a_file_that_is_not_a_socket_is_left_alone() {
    let dir = socket_dir();
    let path = dir.path().join("admin.sock");
    fs::write(&path, "not a socket").unwrap();
    let err = AdminListener::bind(&admin_config(path.clone(), TEST_GROUP)).unwrap_err();
    assert!(matches!(err, AdminError::NotASocket { .. }), "{err:?}");
    assert_eq!(fs::read_to_string(&path).unwrap(), "not a socket");
}
