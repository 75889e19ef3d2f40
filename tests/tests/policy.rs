//! The rule set with real peers: unmodified clients in agent cgroups, under different uids
//! and executables, each see and can call exactly what their principal may; argument
//! constraints admit and refuse; unknown processes are denied; audit mode records would-be
//! denials; a reload changes decisions for new calls on an open session.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use gateway_tests::config::{Policy, Principal, Rule, Server, TestConfig};
use gateway_tests::peers::{rmcp_client_cmd, rmcp_server, run_json, venv_python, Profile};
use gateway_tests::{free_port, Gateway, GatewayOptions};
use serde_json::{json, Value};

const CLIENT: &str = include_str!("../fixtures/policy_client.py");

/// A uid no other test uses, for the second principal.
fn agent_uid() -> u32 {
    48_000 + (std::process::id() % 1000)
}

fn policy(mode: &str, port: u16, uid: u32, py_root_tools: &str) -> String {
    format!(
        r#"
[[server]]
name = "tools"
address = "127.0.0.1:{port}"
path = "/mcp"

[policy]
mode = "{mode}"

[[principal]]
name = "rmcp"
exe = ["*/rmcp-test-client"]

[[principal]]
name = "py-root"
users = [0]
exe = ["/usr/bin/python3*"]

[[principal]]
name = "py-user"
users = [{uid}]

[[rule]]
principal = "py-root"
server = "tools"
tools = [{py_root_tools}]
action = "allow"

[[rule]]
principal = "py-user"
server = "tools"
tools = ["add"]
action = "allow"
arguments = {{ type = "object", properties = {{ a = {{ type = "integer", maximum = 10 }} }} }}

[[rule]]
principal = "rmcp"
server = "tools"
methods = ["tools/call", "resources/read", "prompts/get"]
action = "allow"
"#
    )
}

fn client(url: &str, calls: Value) -> Command {
    let mut c = Command::new(venv_python());
    c.args(["-c", CLIENT, url, &calls.to_string()]);
    c
}

fn call(out: &Value, i: usize) -> &Value {
    &out["calls"][i]
}

#[test]
fn each_principal_sees_and_calls_exactly_its_tools() {
    let port = free_port();
    let server = rmcp_server(port);
    let uid = agent_uid();
    let gw = Gateway::start(
        "policy",
        GatewayOptions {
            ports: vec![port],
            extra: policy("enforce", port, uid, "\"echo\""),
            ..Default::default()
        },
    );
    let calls = json!([
        {"name": "echo", "arguments": {"text": "hi"}},
        {"name": "add", "arguments": {"a": 5, "b": 1}},
        {"name": "add", "arguments": {"a": 50, "b": 1}},
    ]);

    // Root's python: echo only.
    let out = run_json(gw.wrap(client(&server.url, calls.clone())));
    assert_eq!(out["failed"], Value::Null, "{out}");
    assert_eq!(out["tools"], json!(["echo"]), "{out}");
    assert_eq!(call(&out, 0)["text"], "hi");
    for i in [1, 2] {
        assert_eq!(call(&out, i)["code"], -32012, "{out}");
        assert!(
            call(&out, i)["error"]
                .as_str()
                .unwrap()
                .contains("denied by policy"),
            "{out}"
        );
    }

    // The same program as another uid: add, with a ≤ 10.
    let out = run_json(gw.wrap_as(client(&server.url, calls.clone()), &uid.to_string()));
    assert_eq!(out["failed"], Value::Null, "{out}");
    assert_eq!(out["tools"], json!(["add"]), "{out}");
    assert_eq!(call(&out, 0)["code"], -32012, "{out}");
    assert_eq!(call(&out, 1)["ok"], true, "{out}");
    assert_eq!(call(&out, 1)["text"], "6");
    let refused = call(&out, 2)["error"].as_str().unwrap();
    assert_eq!(call(&out, 2)["code"], -32012);
    assert!(
        refused.contains("arguments/a"),
        "the message names the constraint: {refused}"
    );

    // Another executable: everything on this server, same results as going direct.
    let direct = run_json(rmcp_client_cmd(&server.url, Profile::Rmcp));
    let mediated = run_json(gw.wrap(rmcp_client_cmd(&server.url, Profile::Rmcp)));
    assert_eq!(mediated, direct);

    // A process no principal matches gets nothing, not even initialize.
    let mut curl = Command::new("curl");
    curl.args(["-sS", "-X", "POST", "-H", "Content-Type: application/json"])
        .args(["-H", "Accept: application/json, text/event-stream", "-w", "\n%{http_code}"])
        .args(["--data", r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#])
        .arg(&server.url);
    let text = String::from_utf8_lossy(&gw.wrap(curl).output().unwrap().stdout).into_owned();
    assert!(text.ends_with("200"), "{text}");
    assert!(
        text.contains("-32012") && text.contains("unknown principal"),
        "{text}"
    );

    // The audit names the principal and the rule of every decision.
    let records = gw.audit_records();
    let allowed = records
        .iter()
        .find(|r| r["type"] == "mcp_call" && r["name"] == "add")
        .expect("the allowed add call");
    assert_eq!(allowed["principal"]["name"], "py-user");
    assert_eq!(allowed["decision"]["action"], "allow");
    assert!(
        allowed["decision"]["rule"]
            .as_str()
            .unwrap()
            .starts_with("rule[1]"),
        "{allowed}"
    );
    let denied: Vec<&Value> = records
        .iter()
        .filter(|r| r["outcome"] == "refused")
        .collect();
    assert!(
        denied.iter().any(|r| r["principal"]["name"] == "py-root"
            && r["name"] == "add"
            && r["decision"]["rule"] == "default: deny"),
        "{denied:#?}"
    );
    assert!(
        denied.iter().any(|r| r["principal"].get("name").is_none()
            && r["decision"]["rule"] == "default: unknown principal"),
        "{denied:#?}"
    );
    // Nothing denied reached the server: every forwarded call has an allowing decision.
    assert!(records
        .iter()
        .filter(|r| r["type"] == "mcp_call")
        .all(|r| r["decision"]["action"] == "allow"));
}

#[test]
fn audit_mode_lets_everything_through_and_records_would_be_denials() {
    let port = free_port();
    let server = rmcp_server(port);
    let gw = Gateway::start(
        "policy-audit",
        GatewayOptions {
            ports: vec![port],
            extra: policy("audit", port, agent_uid() + 1, "\"echo\""),
            ..Default::default()
        },
    );
    let out = run_json(gw.wrap(client(
        &server.url,
        json!([{"name": "add", "arguments": {"a": 1, "b": 2}}]),
    )));
    assert_eq!(
        out["tools"],
        json!(["add", "echo", "slow_count"]),
        "nothing hidden: {out}"
    );
    assert_eq!(call(&out, 0)["text"], "3", "{out}");
    let rec = gw.wait_record("the add call", |r| {
        r["type"] == "mcp_call" && r["name"] == "add"
    });
    assert_eq!(rec["decision"]["action"], "deny", "{rec}");
    assert_eq!(rec["decision"]["enforced"], false, "{rec}");
}

#[test]
fn reload_changes_decisions_on_an_open_session_and_rejects_a_bad_config() {
    let port = free_port();
    let server = rmcp_server(port);
    let uid = agent_uid() + 2;
    let gw = Gateway::start(
        "policy-reload",
        GatewayOptions {
            ports: vec![port],
            extra: policy("enforce", port, uid, "\"echo\""),
            ..Default::default()
        },
    );
    let pause = gw.dir.path().join("go");
    let mut cmd = gw.wrap(client(
        &server.url,
        json!([{"name": "add", "arguments": {"a": 2, "b": 2}}]),
    ));
    cmd.arg(&pause).stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert_eq!(first, r#"{"phase": 1}"#);

    // A broken file is refused and the policy in force stays.
    let original = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(
        &gw.config,
        original.replace("tools = [\"add\"]", "tools = [\"a[\"]"),
    )
    .unwrap();
    gw.reload();
    let rejected = gw.wait_record("the rejected reload", |r| r["type"] == "reload");
    assert_eq!(rejected["outcome"], "rejected", "{rejected}");
    assert!(
        rejected["detail"]
            .as_str()
            .unwrap()
            .contains("rule[1].tools[0]"),
        "{rejected}"
    );

    // Now root's python may also add.
    let before = gw
        .audit_records()
        .iter()
        .filter(|r| r["type"] == "reload")
        .count();
    std::fs::write(
        &gw.config,
        original.replace("tools = [\"echo\"]", "tools = [\"echo\", \"add\"]"),
    )
    .unwrap();
    gw.reload();
    gw.wait_record("the second reload", |r| {
        r["type"] == "reload" && r["outcome"] == "ok"
    });
    assert_eq!(before, 1);
    std::fs::write(&pause, b"").unwrap();

    let out: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    child.wait().unwrap();
    assert_eq!(out["failed"], Value::Null, "{out}");
    assert_eq!(
        out["calls"][0]["code"], -32012,
        "denied before the reload: {out}"
    );
    assert_eq!(
        out["calls_after"][0]["text"], "4",
        "allowed after it, same session: {out}"
    );
    assert_eq!(out["tools"], json!(["echo"]));
    assert_eq!(out["tools_after"], json!(["add", "echo"]));
    // One session throughout.
    let sessions: std::collections::HashSet<String> = gw
        .mcp_records()
        .iter()
        .filter_map(|r| r["session"].as_str().map(str::to_string))
        .collect();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
}

#[test]
fn a_principal_over_its_rate_limit_is_refused() {
    let port = free_port();
    let server = rmcp_server(port);
    let extra = format!(
        r#"
[[server]]
name = "tools"
address = "127.0.0.1:{port}"

[policy]
mode = "enforce"

[[principal]]
name = "limited"
exe = ["/usr/bin/python3*"]
rate_calls = 2
rate_window_s = 3600

[[rule]]
principal = "limited"
server = "tools"
action = "allow"
"#
    );
    let gw = Gateway::start(
        "policy-rate",
        GatewayOptions {
            ports: vec![port],
            extra,
            ..Default::default()
        },
    );
    let echo = json!({"name": "echo", "arguments": {"text": "x"}});
    let out = run_json(gw.wrap(client(&server.url, json!([echo, echo, echo]))));
    assert_eq!(call(&out, 0)["ok"], true, "{out}");
    assert_eq!(call(&out, 1)["ok"], true, "{out}");
    assert_eq!(call(&out, 2)["code"], -32013, "{out}");
    assert!(
        call(&out, 2)["error"]
            .as_str()
            .unwrap()
            .contains("rate limit: 2 calls per 3600 s"),
        "{out}"
    );
    // Listing is plumbing, not a call: it still works past the limit.
    assert_eq!(out["tools"], json!(["add", "echo", "slow_count"]));
}

/// An argument-schema denial names the argument and the constraint it missed, never the
/// value: neither the agent's error nor any ledger record quotes it.
#[test]
fn a_schema_denial_records_no_argument_value() {
    const RAW: &str = r#"
import http.client, json, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
c.request("POST", "/mcp", body=open(sys.argv[2], "rb").read(), headers={"Content-Type": "application/json",
          "Accept": "application/json, text/event-stream"})
r = c.getresponse()
print(json.dumps({"status": r.status, "body": r.read().decode()}))
"#;
    let port = free_port();
    let gw = Gateway::start(
        "policy-schema-value",
        GatewayOptions {
            ports: vec![port],
            extra: "[policy]\nmode = \"enforce\"\n\
                    [[principal]]\nname = \"agent\"\nusers = [0]\n\
                    [[rule]]\nprincipal = \"agent\"\ntools = [\"write\"]\naction = \"allow\"\n\
                    arguments = { type = \"object\", properties = { text = { type = \"string\", maxLength = 100 } } }\n"
                .into(),
            ..Default::default()
        },
    );
    let log = gw.dir.path().join("server.log");
    let _server = gateway_tests::fake::start(port, &log);
    let value = format!("SECRET-VALUE-{}", "z".repeat(150));
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "write", "arguments": {"text": value}}});
    // From a file: the agent's command line is in the ledger (its flow record).
    let body_file = gw.dir.path().join("call.json");
    std::fs::write(&body_file, body.to_string()).unwrap();
    let out = gateway_tests::run_probe(gw.agent(
        gateway_tests::PYTHON,
        &[
            "-c".into(),
            RAW.into(),
            port.to_string(),
            body_file.display().to_string(),
        ],
    ));
    let answer = out["body"].as_str().unwrap();
    assert!(answer.contains("-32012"), "{out}");
    assert!(answer.contains("arguments/text"), "{out}");
    assert!(!answer.contains("SECRET-VALUE"), "{out}");
    let record = gw.wait_record("the denial", |r| {
        r["type"] == "mcp" && r["name"] == "write" && r["outcome"] == "refused"
    });
    assert!(
        record["detail"].as_str().unwrap().contains("maxLength"),
        "{record}"
    );
    let ledger = std::fs::read_to_string(gw.dir.path().join("audit.jsonl")).unwrap();
    assert!(
        !ledger.contains("SECRET-VALUE"),
        "the ledger quotes the argument's value"
    );
}

/// A process picks its own arguments: one that is not UTF-8 must not cost it the facts a
/// principal is selected by. Reading them as text failed on such a byte and left the
/// identity without cgroup, unit and executable, so the process fell past a principal
/// chosen by cgroup to a broader one chosen by uid alone.
#[test]
fn an_argument_that_is_not_utf8_does_not_move_a_process_to_another_principal() {
    use std::os::unix::ffi::OsStrExt;
    let port = free_port();
    let server = rmcp_server(port);
    let gw = Gateway::start(
        "policy-not-utf8",
        GatewayOptions {
            ports: vec![port],
            extra: format!(
                r#"
[[server]]
name = "tools"
address = "127.0.0.1:{port}"
path = "/mcp"

[policy]
mode = "enforce"

[[principal]]
name = "contained"
cgroup = ["/mcp-gateway-tests/*"]

[[principal]]
name = "root-anywhere"
users = [0]

[[rule]]
principal = "root-anywhere"
server = "tools"
tools = ["echo"]
action = "allow"
"#
            ),
            ..Default::default()
        },
    );
    let calls = json!([{"name": "echo", "arguments": {"text": "hi"}}]);
    for bad_argument in [false, true] {
        let mut c = Command::new(venv_python());
        if bad_argument {
            // An interpreter option Python ignores, with a byte that is not UTF-8.
            c.arg(std::ffi::OsStr::from_bytes(b"-Xtag=\xff"));
        }
        c.args(["-c", CLIENT, &server.url, &calls.to_string()]);
        let out = run_json(gw.wrap(c));
        // The contained principal may not even initialize.
        assert_eq!(
            (&out["code"], out["calls"].is_null()),
            (&json!(-32012), true),
            "the contained agent is denied (bad argument: {bad_argument}): {out}"
        );
        assert!(
            out["failed"]
                .as_str()
                .is_some_and(|f| f.contains("principal contained")),
            "{out}"
        );
    }
    let records = gw.audit_records();
    let named: Vec<&Value> = records
        .iter()
        .filter(|r| r["type"] == "mcp" || r["type"] == "mcp_call")
        .map(|r| &r["principal"]["name"])
        .collect();
    assert!(
        !named.is_empty() && named.iter().all(|n| *n == "contained"),
        "every call is the contained principal's: {named:?}"
    );
}

/// The SHA-256 of a file, as `exe_sha256` lists it.
fn sha256_of(path: &std::path::Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// A process may own the program it runs, change it while it is not running and put its
/// modification time back (utimensat is the owner's to call). A hash remembered by inode,
/// size and modification time then vouched for bytes it never read: the changed program
/// was taken for the pinned one.
#[test]
fn a_program_changed_in_place_is_hashed_again_even_with_its_time_put_back() {
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;
    let python = std::fs::canonicalize("/usr/bin/python3").unwrap();
    let port = free_port();
    let server = rmcp_server(port);
    let gw = Gateway::start(
        "policy-exe-hash",
        GatewayOptions {
            ports: vec![port],
            config: TestConfig {
                servers: vec![Server::mcp_at("tools", port)],
                policy: Some(Policy::enforce()),
                principals: vec![Principal::exe_sha256("pinned", &sha256_of(&python))],
                rules: vec![Rule::allow("pinned", "tools").tools(&["echo"])],
                ..Default::default()
            },
            ..Default::default()
        },
    );
    // The agent's own copy of the interpreter, with the SDK from the test venv.
    let dir = tempfile::tempdir().unwrap();
    let tool = dir.path().join("tool");
    std::fs::copy(&python, &tool).unwrap();
    let site = venv_python()
        .parent()
        .unwrap()
        .join("../lib/python3.11/site-packages");
    let calls = json!([{"name": "echo", "arguments": {"text": "hi"}}]);
    let run = || {
        let mut c = Command::new(&tool);
        c.env("PYTHONPATH", &site)
            .args(["-c", CLIENT, &server.url, &calls.to_string()]);
        run_json(gw.wrap(c))
    };
    let out = run();
    assert_eq!(
        call(&out, 0)["ok"],
        json!(true),
        "the pinned program calls: {out}"
    );

    // One byte of a message the interpreter prints, changed in place: the same inode and
    // size, and the modification time put back.
    let before = std::fs::metadata(&tool).unwrap();
    let bytes = std::fs::read(&tool).unwrap();
    let at = bytes
        .windows(11)
        .position(|w| w == b"Type \"help\"")
        .expect("the banner is in the interpreter");
    let mut f = std::fs::OpenOptions::new().write(true).open(&tool).unwrap();
    f.seek(SeekFrom::Start(at as u64)).unwrap();
    f.write_all(b"t").unwrap();
    let mtime = std::time::UNIX_EPOCH
        + std::time::Duration::new(before.mtime() as u64, before.mtime_nsec() as u32);
    f.set_modified(mtime).unwrap();
    drop(f);
    let after = std::fs::metadata(&tool).unwrap();
    assert_eq!(
        (after.ino(), after.size(), after.mtime(), after.mtime_nsec()),
        (
            before.ino(),
            before.size(),
            before.mtime(),
            before.mtime_nsec()
        ),
        "the change shows in no field the old cache key had"
    );
    assert_ne!(sha256_of(&tool), sha256_of(&python));

    let out = run();
    assert_eq!(
        (&out["code"], out["calls"].is_null()),
        (&json!(-32012), true),
        "the changed program is no principal's: {out}"
    );
    let named: Vec<Value> = gw
        .audit_records()
        .iter()
        .filter(|r| r["type"] == "mcp_call" && r["method"] == "tools/call")
        .map(|r| json!([r["name"], r["principal"]["name"]]))
        .collect();
    assert_eq!(
        named,
        vec![json!(["echo", "pinned"])],
        "the pinned program's call is recorded as its: {named:?}"
    );
    let records = gw.audit_records();
    let last = records
        .iter()
        .rev()
        .find(|r| r["type"] == "mcp" || r["type"] == "mcp_call")
        .unwrap();
    assert!(
        last["principal"]["name"].is_null(),
        "the changed program's exchange names no principal: {last}"
    );
}

/// /proc/PID/exe shows the path in the process's own mount namespace, and an agent can make
/// one of its own (a user namespace, or as here a mount namespace) with its program at any
/// path a principal trusts. That path names the program only if the daemon finds the very
/// file there too.
#[test]
fn a_path_made_in_the_agents_own_mount_namespace_names_no_program() {
    let port = free_port();
    let server = rmcp_server(port);
    let gw = Gateway::start(
        "policy-own-mounts",
        GatewayOptions {
            ports: vec![port],
            config: TestConfig {
                servers: vec![Server::mcp_at("tools", port)],
                policy: Some(Policy::enforce()),
                principals: vec![Principal::exe("trusted", &["/mnt/mcp-trusted/*"])],
                rules: vec![Rule::allow("trusted", "tools").tools(&["echo"])],
                ..Default::default()
            },
            ..Default::default()
        },
    );
    assert!(
        !std::path::Path::new("/mnt/mcp-trusted").exists(),
        "/mnt/mcp-trusted must not exist on this host"
    );
    let site = venv_python()
        .parent()
        .unwrap()
        .join("../lib/python3.11/site-packages");
    let calls = json!([{"name": "echo", "arguments": {"text": "hi"}}]);
    // A tmpfs of its own over /mnt, the interpreter copied to the trusted path in it.
    let script = r#"mount -t tmpfs agent /mnt && mkdir /mnt/mcp-trusted &&
cp "$(readlink -f /usr/bin/python3)" /mnt/mcp-trusted/python &&
exec /mnt/mcp-trusted/python -c "$0" "$@""#;
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env("PYTHONPATH", &site)
        .args([CLIENT, &server.url, &calls.to_string()]);
    let out = run_json(gw.wrap(c));
    assert_eq!(
        (&out["code"], out["calls"].is_null()),
        (&json!(-32012), true),
        "a path only the agent's namespace has is no principal's: {out}"
    );
    let records = gw.audit_records();
    let flow = records
        .iter()
        .find(|r| r["type"] == "flow" && r["identity"]["comm"] == "python")
        .expect("the agent's flow is recorded");
    assert!(flow["identity"]["exe"].is_null(), "{flow}");
}
