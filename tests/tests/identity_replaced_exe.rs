//! The program the kernel reports for a process (`mm->exe_file`, what /proc/PID/exe shows)
//! is the process's to set: inside a user namespace of its own, which any unprivileged
//! process may create, prctl(PR_SET_MM_MAP) makes it any file the process can execute. An
//! agent so passed itself off as a program a principal trusts, and got that principal's
//! rules for a connection its own code opened. The gateway now names such a process for
//! no program: the exec that loaded its program is noted by the kernel, and a program set
//! since is said to be replaced (`identity.exe_unvouched`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gateway_tests::config::{Policy, Principal, Rule, Server, TestConfig};
use gateway_tests::peers::rmcp_server;
use gateway_tests::{free_port, Gateway, GatewayOptions, PYTHON};
use serde_json::Value;

const CLIENT: &str = include_str!("../fixtures/fd_client.py");

/// The SHA-256 of a file, as `exe_sha256` lists it.
fn sha256_of(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// Builds `peers/forged_exe.c` into `dir`.
fn forger(dir: &Path) -> PathBuf {
    let bin = dir.join("forged_exe");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/forged_exe.c");
    let out = Command::new("cc")
        .args(["-O1", "-pthread", "-o"])
        .arg(&bin)
        .arg(source)
        .output()
        .expect("a C compiler (`cc`): `cargo xtask deps` installs clang");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// Runs `cmd` and reads the JSON line the client prints.
fn outcome(mut cmd: Command) -> Value {
    outcome_of(cmd.output().unwrap())
}

/// The JSON line the client printed, once its run ended well.
fn outcome_of(out: std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}: {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The flow records of the connections the forger opened, once there are `n`.
fn forgers_flows(gw: &Gateway, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let flows: Vec<Value> = gw
            .audit_records()
            .into_iter()
            .filter(|r| {
                r["type"] == "flow"
                    && r["identity"]["cmdline"][0]
                        .as_str()
                        .is_some_and(|a| a.ends_with("/forged_exe"))
            })
            .collect();
        if flows.len() >= n {
            return flows;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} flows of the forger recorded",
            flows.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_process_that_set_its_own_executable_is_named_for_no_program() {
    gateway_tests::require_privileges();
    let python = std::fs::canonicalize(PYTHON).unwrap();
    let python = python.to_str().unwrap();
    let port = free_port();
    let _server = rmcp_server(port);
    let gw = Gateway::start(
        "identity-replaced-exe",
        GatewayOptions {
            ports: vec![port],
            config: TestConfig {
                servers: vec![Server::mcp_at("tools", port)],
                policy: Some(Policy::enforce()),
                principals: vec![
                    Principal::exe("interpreter", &[python]),
                    Principal::exe_sha256("hashed", &sha256_of(Path::new(python))),
                ],
                rules: vec![
                    Rule::allow("interpreter", "tools").tools(&["echo"]),
                    Rule::allow("hashed", "tools").tools(&["echo"]),
                ],
                ..Default::default()
            },
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let forger = forger(dir.path());
    let port = port.to_string();

    // The interpreter itself, on a connection of its own: the principal's, and it calls.
    let mut own = Command::new(python);
    own.args(["-c", CLIENT, &port, "own"]);
    let own = outcome(gw.wrap_as(own, "65534"));
    assert_eq!(own["initialize"], Value::Null, "{own}");
    assert_eq!(own["call"]["content"][0]["text"], "hi", "{own}");

    // Code of the agent's own that set its executable to the interpreter and then opened the
    // connection (which the interpreter, started after, speaks on): no program's, so no
    // principal's, and refused in enforce. Whoever opens it: the process that changed its
    // program, a child forked after, or a process that shares its memory with a helper that
    // made the change in a user namespace the process itself never entered.
    // Its own copy, which it may write: `rewrite` lets go of it, writes the interpreter's
    // bytes into it and takes it back, so the file is its exec's and hashes as the
    // interpreter's.
    let own = dir.path().join("own");
    std::fs::create_dir(&own).unwrap();
    let own_copy = own.join("forged_exe");
    std::fs::copy(&forger, &own_copy).unwrap();
    std::os::unix::fs::chown(&own_copy, Some(65534), Some(65534)).unwrap();
    for (how, program) in [
        ("self", &forger),
        ("fork", &forger),
        ("shared", &forger),
        ("rewrite", &own_copy),
    ] {
        let mut forged = Command::new(program);
        forged
            .env("FORGED_HOW", how)
            .args([python, &port, python, "-c", CLIENT, &port, "fd"]);
        let forged = outcome(gw.wrap_as(forged, "65534"));
        assert_eq!(
            (&forged["initialize"], &forged["call"]),
            (&Value::from(-32012), &Value::Null),
            "{how}: a connection opened by code that set its program to the interpreter: {forged}"
        );
    }

    // The ledger says why: the file the kernel reported is the interpreter's, replaced.
    use std::os::unix::fs::MetadataExt;
    let interpreter = std::fs::metadata(python).unwrap().ino();
    let rewritten = std::fs::metadata(&own_copy).unwrap().ino();
    let flows = forgers_flows(&gw, 4);
    for flow in &flows {
        let id = &flow["identity"];
        let expected = match id["exe_file"]["ino"].as_u64() == Some(rewritten) {
            true => "changed",
            false => "replaced",
        };
        assert_eq!(
            (&id["exe_unvouched"], &id["exe"]),
            (&Value::from(expected), &Value::Null),
            "{id}"
        );
        if expected == "replaced" {
            assert_eq!(id["exe_file"]["ino"], interpreter, "{id}");
        }
        let decided: Vec<Value> = gw
            .audit_records()
            .into_iter()
            .filter(|r| r["type"] == "mcp" && r["connection"] == flow["connection"])
            .collect();
        assert!(
            !decided.is_empty() && decided.iter().all(|r| r["principal"]["name"].is_null()),
            "{decided:?}"
        );
    }
}

/// argv[2] children of this interpreter, one after another, each connecting to
/// 127.0.0.1:argv[1] and sending a few bytes; prints the children's pids.
const CHILDREN: &str = r#"
import json, socket, subprocess, sys
child = r'''
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(b"hello\x00")
s.recv(1)
'''
pids = []
for _ in range(int(sys.argv[2])):
    p = subprocess.Popen([sys.executable, "-c", child, sys.argv[1]])
    pids.append(p.pid)
    p.wait()
print(json.dumps({"pids": pids}))
"#;

/// The kernel keeps `intercept.max_processes` notes at once. Past that, a process whose
/// note could not be kept might be one that set its executable: with notes lost, a process
/// without one is named for no program either, and its records say why.
#[test]
fn without_room_for_its_note_a_process_is_named_for_no_program() {
    gateway_tests::require_privileges();
    let port = free_port();
    let gw = Gateway::start(
        "identity-notes-lost",
        GatewayOptions {
            ports: vec![port],
            // One note for the whole host: the agent's children, forked while its holder
            // (the agent, or some other process) lives, find no room.
            intercept: "max_processes = 1".into(),
            ..Default::default()
        },
    );
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            use std::io::{Read, Write};
            let _ = conn.read(&mut [0u8; 16]);
            let _ = conn.write_all(b"k");
        }
    });
    let out = gateway_tests::run_probe(gw.agent(
        PYTHON,
        &["-c".into(), CHILDREN.into(), port.to_string(), "3".into()],
    ));
    let pids: Vec<u64> = out["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    let flows = gw.flows_of_pids(&pids);
    for f in &flows {
        let id = &f["identity"];
        assert_eq!(
            (&id["exe_unvouched"], &id["exe"]),
            (&Value::from("unknown"), &Value::Null),
            "{id}"
        );
    }
}

/// A process exec'd before the gateway's programs were attached has no note: it is believed,
/// as before, and noted at its first connection, so a program it sets itself after that
/// shows.
#[test]
fn a_process_older_than_the_gateway_is_noted_at_its_first_connection() {
    use std::os::unix::process::CommandExt;
    gateway_tests::require_privileges();
    let python = std::fs::canonicalize(PYTHON).unwrap();
    let python = python.to_str().unwrap();
    let port = free_port();
    let _server = rmcp_server(port);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let forger = forger(dir.path());
    let go = dir.path().join("go");
    let port_text = port.to_string();
    // Started first, as a user the gateway will take for an agent, before the gateway is.
    let older = Command::new(&forger)
        .env("FORGED_HOW", "late")
        .env("FORGED_WAIT", &go)
        .args([python, &port_text, python, "-c", CLIENT, &port_text, "fd"])
        .uid(65534)
        .gid(65534)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let gw = Gateway::start(
        "identity-late-note",
        GatewayOptions {
            ports: vec![port],
            users: vec![65534],
            config: TestConfig {
                servers: vec![Server::mcp_at("tools", port)],
                policy: Some(Policy::enforce()),
                principals: vec![Principal::exe("interpreter", &[python])],
                rules: vec![Rule::allow("interpreter", "tools").tools(&["echo"])],
                ..Default::default()
            },
            ..Default::default()
        },
    );
    std::fs::write(&go, "").unwrap();
    let forged = outcome_of(older.wait_with_output().unwrap());
    assert_eq!(
        (&forged["initialize"], &forged["call"]),
        (&Value::from(-32012), &Value::Null),
        "{forged}"
    );
    // Its first connection, as itself: believed (the file the kernel saw is its own). Its
    // second, claiming the interpreter: replaced.
    use std::os::unix::fs::MetadataExt;
    let own = std::fs::metadata(&forger).unwrap().ino();
    let interpreter = std::fs::metadata(python).unwrap().ino();
    let flows = forgers_flows(&gw, 2);
    let mut seen: Vec<(Value, Value)> = flows
        .iter()
        .map(|f| {
            let id = &f["identity"];
            (id["exe_file"]["ino"].clone(), id["exe_unvouched"].clone())
        })
        .collect();
    seen.sort_by_key(|(_, unvouched)| !unvouched.is_null());
    assert_eq!(
        seen,
        vec![
            (Value::from(own), Value::Null),
            (Value::from(interpreter), Value::from("replaced")),
        ],
        "{flows:?}"
    );
}

/// A program on a filesystem an unprivileged user mounted in a user namespace of its own
/// (overlayfs here; FUSE and tmpfs alike) holds what its owner says, whatever its times
/// show: named for no program, and never hashed. A copy of the interpreter there hashed as
/// the interpreter.
#[test]
fn a_program_on_a_filesystem_a_user_mounted_is_named_for_no_program() {
    gateway_tests::require_privileges();
    let python = std::fs::canonicalize(PYTHON).unwrap();
    let port = free_port();
    let _server = rmcp_server(port);
    let gw = Gateway::start(
        "identity-user-mount",
        GatewayOptions {
            ports: vec![port],
            config: TestConfig {
                servers: vec![Server::mcp_at("tools", port)],
                policy: Some(Policy::enforce()),
                principals: vec![Principal::exe_sha256("hashed", &sha256_of(&python))],
                rules: vec![Rule::allow("hashed", "tools").tools(&["echo"])],
                ..Default::default()
            },
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    for sub in ["lower", "upper", "work", "merged"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    std::fs::copy(&python, dir.path().join("lower/python3")).unwrap();
    for entry in walk(dir.path()) {
        std::os::unix::fs::chown(&entry, Some(65534), Some(65534)).unwrap();
    }
    let d = dir.path().display();
    let script = format!(
        "mount -t overlay overlay -o lowerdir={d}/lower,upperdir={d}/upper,workdir={d}/work \
         {d}/merged && exec {d}/merged/python3 -c \"$CLIENT\" {port} own"
    );
    let mut cmd = Command::new("unshare");
    cmd.env("CLIENT", CLIENT)
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", &script]);
    let out = outcome(gw.wrap_as(cmd, "65534"));
    assert_eq!(
        (&out["initialize"], &out["call"]),
        (&Value::from(-32012), &Value::Null),
        "the interpreter's copy on the user's own mount: {out}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let flow = loop {
        let found = gw.audit_records().into_iter().find(|r| {
            r["type"] == "flow"
                && r["identity"]["cmdline"][0]
                    .as_str()
                    .is_some_and(|a| a.ends_with("/merged/python3"))
        });
        if let Some(f) = found {
            break f;
        }
        assert!(std::time::Instant::now() < deadline, "no flow recorded");
        std::thread::sleep(Duration::from_millis(100));
    };
    let id = &flow["identity"];
    assert_eq!(
        (&id["exe_unvouched"], &id["exe"]),
        (&Value::from("user_mount"), &Value::Null),
        "{id}"
    );
}

/// `root` and everything below it.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut all = vec![root.to_path_buf()];
    let mut i = 0;
    while i < all.len() {
        if all[i].is_dir() {
            let children: Vec<PathBuf> = std::fs::read_dir(&all[i])
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            all.extend(children);
        }
        i += 1;
    }
    all
}
