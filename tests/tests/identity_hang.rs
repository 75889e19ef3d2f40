//! What the daemon reads of a process is the process's to shape: its program may sit on a
//! filesystem the agent serves, which need never answer. Such a read holds up that
//! connection alone (and at most `READ_FOR`), never another agent's traffic; the process is
//! then taken for no principal whose facts could not be read, not for a later one.
//!
//! Privileged: mounts a FUSE filesystem (served by `fixtures/hung_fuse.py` over /dev/fuse).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gateway_tests::config::{Policy, Principal, Rule, Server, TestConfig};
use gateway_tests::peers::{rmcp_server, venv_python};
use gateway_tests::{free_port, Gateway, GatewayOptions, PYTHON};
use serde_json::{json, Value};

const FUSE: &str = include_str!("../fixtures/hung_fuse.py");
const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/policy_client.py");

/// Waits for the trigger file argv[1], opens argv[3] connections to the server at argv[4]
/// (host:port) and keeps them, then runs the SDK client argv[2] with the rest of argv.
const WAIT_THEN_CLIENT: &str = r#"
import os, socket, sys, time
trigger, client, extra, at = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
print("ready", flush=True)
while not os.path.exists(trigger):
    time.sleep(0.02)
host, port = at.rsplit(":", 1)
held = [socket.create_connection((host, int(port))) for _ in range(extra)]
sys.argv = [client] + sys.argv[5:]
exec(compile(open(client).read(), client, "exec"))
"#;

/// A uid of no other test's, for agent B.
fn other_uid() -> u32 {
    49_000 + (std::process::id() % 1000)
}

/// A FUSE filesystem at `mnt` serving `prog`, unmounted (and its held requests failed)
/// when dropped.
struct Fuse {
    child: Child,
    lines: mpsc::Receiver<String>,
    mnt: std::path::PathBuf,
}

impl Fuse {
    fn serve(mnt: &Path, source: &Path) -> Fuse {
        if !Path::new("/dev/fuse").exists() {
            // The module may be there without its node (a minimal /dev).
            let _ = Command::new("modprobe").arg("fuse").status();
            let _ = Command::new("mknod")
                .args(["/dev/fuse", "c", "10", "229"])
                .status();
        }
        assert!(
            Path::new("/dev/fuse").exists(),
            "this test needs FUSE (/dev/fuse, the fuse module)"
        );
        let mut child = Command::new(PYTHON)
            .args(["-c", FUSE])
            .arg(mnt)
            .arg(source)
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the FUSE server");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let fuse = Fuse {
            child,
            lines,
            mnt: mnt.to_owned(),
        };
        fuse.wait_for("mounted", |l| l == "mounted");
        fuse
    }

    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if pred(&l) => return l,
                Ok(l) => eprintln!("fuse: {l}"),
                Err(_) => break,
            }
        }
        panic!("the FUSE server never said {what}");
    }
}

impl Drop for Fuse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

fn tgid_of(tid: &str) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Runs `cmd` to its end, or kills it at `limit`: its JSON line, or None.
fn run_within(mut cmd: Command, limit: Duration) -> Option<Value> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            return text
                .lines()
                .last()
                .and_then(|l| serde_json::from_str(l).ok());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn a_program_on_a_filesystem_that_never_answers_holds_up_no_other_agent() {
    let port = free_port();
    let server = rmcp_server(port);
    let gw = Gateway::start(
        "identity-hang",
        GatewayOptions {
            ports: vec![port],
            // One worker: every connection shares it.
            listener: "workers = 1".into(),
            config: TestConfig {
                servers: vec![Server::mcp_at("tools", port)],
                policy: Some(Policy::enforce()),
                principals: vec![
                    // Root's processes in the tests' cgroups, allowed nothing: A is one,
                    // and its cgroup is a fact it cannot shed.
                    Principal {
                        cgroup: vec!["/mcp-gateway-tests/*".into()],
                        ..Principal::uids("contained", &[0])
                    },
                    Principal::uids("anywhere", &[0, other_uid()]),
                ],
                rules: vec![Rule::allow("anywhere", "tools").tools(&["echo"])],
                ..Default::default()
            },
            ..Default::default()
        },
    );
    let daemon = gw.pid().expect("the daemon runs");
    let dir = tempfile::Builder::new()
        .prefix("hung-")
        .tempdir_in("/tmp")
        .unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let python = std::fs::canonicalize("/usr/bin/python3").unwrap();
    let fuse = Fuse::serve(&mnt, &python);

    // Agent A runs the interpreter from the FUSE mount, and waits there.
    let trigger = dir.path().join("go");
    let site = venv_python()
        .parent()
        .unwrap()
        .join("../lib/python3.11/site-packages");
    let calls = json!([{"name": "echo", "arguments": {"text": "from a"}}]);
    // Its user's share of reads (4) taken by connections it holds open first: its own
    // later reads wait for one in vain; another user's do not.
    let mut a = Command::new(mnt.join("prog"));
    a.env("PYTHONPATH", &site)
        .args(["-c", WAIT_THEN_CLIENT])
        .arg(&trigger)
        .args([CLIENT, "4", &format!("127.0.0.1:{port}")])
        .args([&server.url, &calls.to_string()]);
    let mut a = gw
        .wrap(a)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut a_out = BufReader::new(a.stdout.take().unwrap());
    let mut line = String::new();
    a_out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "agent A started from the FUSE mount");

    // The filesystem stops answering; A connects, and the daemon looks at its program.
    let _ = Command::new("kill")
        .args(["-USR1", &fuse.child.id().to_string()])
        .status();
    fuse.wait_for("hung", |l| l == "hung");
    std::fs::write(&trigger, "").unwrap();
    let held = fuse.wait_for("a request of the daemon held", |l| {
        l.strip_prefix("held ")
            .and_then(|r| r.split(' ').nth(1))
            .and_then(tgid_of)
            == Some(daemon)
    });
    eprintln!("the daemon is held: {held}");

    // Agent B, an ordinary client of another user, is served meanwhile.
    let calls_b = json!([{"name": "echo", "arguments": {"text": "from b"}}]);
    let mut b = Command::new(venv_python());
    b.args(["-c", &std::fs::read_to_string(CLIENT).unwrap()])
        .args([&server.url, &calls_b.to_string()]);
    let t = Instant::now();
    let out_b = run_within(
        gw.wrap_as(b, &other_uid().to_string()),
        Duration::from_secs(30),
    )
    .expect("agent B was served while A's program did not answer");
    eprintln!("agent B took {:?}", t.elapsed());
    assert_eq!(
        out_b["calls"][0],
        json!({"name": "echo", "ok": true, "text": "from b"}),
        "{out_b}"
    );

    // A's identity could not be read: it is taken for no principal, not the broader one.
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut a_out, &mut rest).unwrap();
    a.wait().unwrap();
    let out_a: Value = serde_json::from_str(rest.lines().last().unwrap_or("null")).unwrap();
    assert_eq!(
        (&out_a["code"], out_a["calls"].is_null()),
        (&json!(-32012), true),
        "agent A is refused: {out_a}"
    );
    drop(fuse);

    let records = gw.audit_records();
    let a_flows: Vec<&Value> = records
        .iter()
        .filter(|r| r["type"] == "flow" && r["identity"]["comm"] == "prog")
        .collect();
    assert!(!a_flows.is_empty(), "A's connections are recorded");
    let whys: Vec<&str> = a_flows
        .iter()
        .map(|f| f["identity"]["procfs_error"].as_str().unwrap_or(""))
        .collect();
    assert!(
        whys.iter()
            .all(|w| w.contains("not read within 3s") || w.contains("still under way")),
        "{whys:?}"
    );
    assert!(
        whys.iter()
            .any(|w| w.contains("4 reads of uid 0's processes were still under way")),
        "A's client waited for a share of its user's reads: {whys:?}"
    );
    // A's calls name no executable (it could not be read); B's do.
    let calls_of = |a: bool| -> Vec<Value> {
        records
            .iter()
            .filter(|r| r["principal"].is_object() && r["principal"]["exe"].is_null() == a)
            .map(|r| json!([r["method"], r["principal"]["name"]]))
            .collect()
    };
    let b_calls = calls_of(false);
    assert!(
        b_calls.contains(&json!(["tools/call", "anywhere"])),
        "B's call is anywhere's: {b_calls:?}"
    );
    assert_eq!(
        calls_of(true),
        vec![json!(["initialize", null])],
        "A's initialize names no principal"
    );
    // And the record says which principal could not be told, and why.
    let refused = records
        .iter()
        .find(|r| r["type"] == "mcp" && r["principal"]["exe"].is_null())
        .unwrap();
    assert_eq!(
        refused["principal"]["undecided"],
        json!("contained"),
        "{refused}"
    );
    assert_eq!(
        (&refused["error_code"], &refused["refusal"]),
        (&json!(-32012), &json!("policy")),
        "{refused}"
    );
    let reason = refused["decision"]["reason"].as_str().unwrap_or("");
    assert!(
        // Busy or timed out: which of A's five connections got the user's four shares is
        // the daemon's order of accepting them.
        reason.contains("\"contained\" cannot be told")
            && (reason.contains("4 reads of uid 0's processes were still under way")
                || reason.contains("not read within 3s")),
        "{refused}"
    );
}
