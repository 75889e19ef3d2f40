//! On btrfs, `stat` shows a file's device as its subvolume's own, while the kernel's
//! records name the filesystem's (the superblock's), under which files of two subvolumes
//! can share an inode number, and their change times too (the coarse clock). Until the
//! kernel's record can tell subvolumes apart, the daemon names programs on btrfs for no
//! program: fail closed. This holds the case a naive fix (the superblock's device read
//! from mountinfo) opened: a program in a subvolume of the agent's own connects, then
//! exec's a program another subvolume holds under the same number, and is taken for it.

use std::path::{Path, PathBuf};
use std::process::Command;

use gateway_tests::{Gateway, GatewayOptions, PYTHON};

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

/// Two copies of the interpreter in two new subvolumes, with one inode number (the first
/// file of a subvolume always has 257) and one change time: copied, then given their mode
/// back to back within one tick of the coarse clock, unread in between (a read time makes
/// the next change fine-grained). As any user can make them on a btrfs they can write to.
fn twins(fs: &Btrfs) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let python = std::fs::read(std::fs::canonicalize(PYTHON).unwrap()).unwrap();
    for attempt in 0..50 {
        let pair: Vec<PathBuf> = ["a", "b"]
            .iter()
            .map(|side| {
                let sub = fs.mnt.join(format!("{side}{attempt}"));
                run(Command::new("btrfs")
                    .args(["subvolume", "create"])
                    .arg(&sub));
                let exe = sub.join("python3");
                std::fs::write(&exe, &python).unwrap();
                exe
            })
            .collect();
        for exe in &pair {
            std::fs::set_permissions(exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let id = |p: &Path| {
            let m = std::fs::metadata(p).unwrap();
            (m.dev(), m.ino(), m.ctime(), m.ctime_nsec())
        };
        let (a, b) = (id(&pair[0]), id(&pair[1]));
        assert_ne!(a.0, b.0, "two subvolumes, two devices as stat shows them");
        if (a.1, a.2, a.3) == (b.1, b.2, b.3) {
            return (pair[0].clone(), pair[1].clone());
        }
    }
    panic!("no two files with one inode number and change time in 50 attempts");
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

/// Files of two subvolumes of one btrfs can have the same inode number and change time
/// under the filesystem's device, which is all the kernel's record says. A program in one
/// connects, then exec's its twin in the other: it must not be taken for the twin.
#[test]
fn a_program_with_another_subvolume_s_inode_number_is_not_taken_for_its_program() {
    gateway_tests::require_privileges();
    let fs = Btrfs::new();
    let (own, trusted) = twins(&fs);

    let echo = gateway_tests::EchoServer::start("127.0.0.1:0");
    let port = echo.addr.port();
    let gw = Gateway::start(
        "identity-btrfs-twin",
        GatewayOptions {
            ports: vec![port],
            ..Default::default()
        },
    );
    let out = gateway_tests::run_probe(gw.agent(
        own.to_str().unwrap(),
        &[
            "-c".into(),
            EXEC_AGENT.into(),
            port.to_string(),
            "6".into(),
            trusted.display().to_string(),
        ],
    ));
    let pids: Vec<u64> = out["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    let flows = gw.flows_of_pids(&pids);
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
