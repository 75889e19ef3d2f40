//! On btrfs, `stat` shows a file's device as its subvolume's own (every subvolume, the top
//! one too, has one), while the kernel's records name the filesystem's: the device of the
//! superblock. The daemon compared the two as they came, so on btrfs every program read as
//! "exec'd since connecting": `exe` and `exe_sha256` selectors never matched, and agents on
//! a btrfs root (Fedora's default) had no program at all. Now it reads the superblock's
//! device of the mount the file is on, as the kernel does.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gateway_tests::config::{Policy, Principal, Rule, Server, TestConfig};
use gateway_tests::peers::rmcp_server;
use gateway_tests::{free_port, Gateway, GatewayOptions, PYTHON};
use serde_json::Value;

const CLIENT: &str = include_str!("../fixtures/fd_client.py");

/// A btrfs filesystem on a loop device, with a subvolume `sub`; unmounted when dropped.
struct Btrfs {
    _dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl Btrfs {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("fs.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
        run(Command::new("mkfs.btrfs").args(["-q", "-f"]).arg(&image));
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        run(Command::new("mount")
            .args(["-t", "btrfs", "-o", "loop"])
            .arg(&image)
            .arg(&mnt));
        let fs = Btrfs { _dir: dir, mnt };
        run(Command::new("btrfs")
            .args(["subvolume", "create"])
            .arg(fs.mnt.join("sub")));
        fs
    }
}

impl Drop for Btrfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (`cargo xtask deps` installs btrfs-progs)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha256_of(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// Runs the client with the interpreter at `exe` through a gateway whose only principal is
/// `principal`, allowed `echo`; the client's outcome and its connection's flow record.
fn through(name: &str, exe: &Path, principal: Principal) -> (Value, Value) {
    let port = free_port();
    let _server = rmcp_server(port);
    let principal_name = principal.name.clone();
    let gw = Gateway::start(
        name,
        GatewayOptions {
            ports: vec![port],
            config: TestConfig {
                servers: vec![Server::mcp_at("tools", port)],
                policy: Some(Policy::enforce()),
                principals: vec![principal],
                rules: vec![Rule::allow(&principal_name, "tools").tools(&["echo"])],
                ..Default::default()
            },
            ..Default::default()
        },
    );
    let out = gw
        .agent(
            exe.to_str().unwrap(),
            &["-c".into(), CLIENT.into(), port.to_string(), "own".into()],
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let outcome: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let flow = loop {
        let found = gw
            .audit_records()
            .into_iter()
            .find(|r| r["type"] == "flow" && r["identity"]["tgid"].is_u64());
        if let Some(f) = found {
            break f;
        }
        assert!(std::time::Instant::now() < deadline, "no flow recorded");
        std::thread::sleep(Duration::from_millis(100));
    };
    (outcome, flow)
}

fn interpreter_on(fs: &Btrfs, at: &str) -> PathBuf {
    let exe = fs.mnt.join(at);
    std::fs::copy(std::fs::canonicalize(PYTHON).unwrap(), &exe).unwrap();
    exe
}

#[test]
fn a_program_in_a_btrfs_subvolume_is_named_for_its_path() {
    gateway_tests::require_privileges();
    let fs = Btrfs::new();
    let exe = interpreter_on(&fs, "sub/python3");
    let (outcome, flow) = through(
        "identity-btrfs-exe",
        &exe,
        Principal::exe("on-btrfs", &[exe.to_str().unwrap()]),
    );
    let id = &flow["identity"];
    assert_eq!(id["exe"], exe.to_str().unwrap(), "{id}");
    assert!(id.get("exe_unvouched").is_none(), "{id}");
    assert!(id.get("exe_now").is_none(), "{id}");
    assert_eq!(outcome["initialize"], Value::Null, "{outcome}");
    assert_eq!(outcome["call"]["content"][0]["text"], "hi", "{outcome}");
}

#[test]
fn a_program_in_btrfs_s_top_subvolume_is_hashed() {
    gateway_tests::require_privileges();
    let fs = Btrfs::new();
    let exe = interpreter_on(&fs, "python3");
    let (outcome, flow) = through(
        "identity-btrfs-hash",
        &exe,
        Principal::exe_sha256("hashed", &sha256_of(&exe)),
    );
    let id = &flow["identity"];
    assert_eq!(id["exe"], exe.to_str().unwrap(), "{id}");
    assert_eq!(outcome["initialize"], Value::Null, "{outcome}");
    assert_eq!(outcome["call"]["content"][0]["text"], "hi", "{outcome}");
}

/// Rounds of: a child of this interpreter connects to 127.0.0.1:argv[1], sends a few bytes
/// and exec's the program argv[3]; prints the children's pids.
const EXEC_AGENT: &str = r#"
import json, socket, subprocess, sys
port, rounds, then = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
child = r'''
import os, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(b"hello\x00")
os.set_inheritable(s.fileno(), True)
os.execv(sys.argv[2], [sys.argv[2], "-c", "import time; time.sleep(1)"])
'''
pids = []
for i in range(rounds):
    p = subprocess.Popen([sys.executable, "-c", child, str(port), then])
    pids.append(p.pid)
    p.wait()
print(json.dumps({"pids": pids}))
"#;

/// Files of two subvolumes of one btrfs can have the same inode number under the
/// filesystem's device, which is all the kernel's record and the superblock's device say.
/// A program in a subvolume of the agent's own connects, then exec's a program another
/// subvolume holds under the same number: it must be named for what connected, not taken
/// for the other (the change times tell them apart).
#[test]
fn a_program_with_another_subvolume_s_inode_number_is_not_taken_for_its_program() {
    use std::os::unix::fs::MetadataExt;
    gateway_tests::require_privileges();
    let fs = Btrfs::new();
    let trusted = interpreter_on(&fs, "python3");
    let own = interpreter_on(&fs, "sub/python3");
    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
    assert_eq!(ino(&trusted), ino(&own), "the case needs one inode number");

    let port = free_port();
    let gw = Gateway::start(
        "identity-btrfs-twin",
        GatewayOptions {
            ports: vec![port],
            ..Default::default()
        },
    );
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            use std::io::Read;
            let _ = conn.read(&mut [0u8; 16]);
        }
    });
    let out = gw
        .agent(
            own.to_str().unwrap(),
            &[
                "-c".into(),
                EXEC_AGENT.into(),
                port.to_string(),
                "6".into(),
                trusted.display().to_string(),
            ],
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pids: Vec<u64> = serde_json::from_str::<Value>(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout}{}", String::from_utf8_lossy(&out.stderr)))
        ["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let flows = loop {
        let flows: Vec<Value> = gw
            .audit_records()
            .into_iter()
            .filter(|r| {
                r["type"] == "flow"
                    && r["identity"]["tgid"]
                        .as_u64()
                        .is_some_and(|t| pids.contains(&t))
            })
            .collect();
        if flows.len() == pids.len() {
            break flows;
        }
        assert!(std::time::Instant::now() < deadline, "{flows:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Exec'ing takes a millisecond, the daemon's look longer: most children ran the other
    // program by then, which is the case this is about.
    let trusted = trusted.to_str().unwrap();
    assert!(
        flows.iter().any(|f| f["identity"]["cmdline"][0] == trusted),
        "no child had exec'd when the daemon looked: {flows:?}"
    );
    for f in &flows {
        let id = &f["identity"];
        assert_ne!(id["exe"], trusted, "{id}");
        if id["cmdline"][0] == trusted {
            assert_eq!(id["exe_now"], trusted, "{id}");
        }
    }
}
