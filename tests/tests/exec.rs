//! `mcp-gateway exec` run by root at a terminal hands the agent nothing of root's: not the
//! terminal (no input pushed into root's shell with TIOCSTI), not root's open descriptors,
//! not root's environment. Each test runs exec inside `script`, which gives it a pty as a
//! root login shell would have.

use std::process::{Command, Stdio};
use std::time::Duration;

use gateway_tests::{cgroup2_mount, gateway_bin, PYTHON};
use serde_json::Value;

/// What the agent tries and reports: push a command into its terminal's input with TIOCSTI
/// (on each of 0..2 and /dev/tty), and list its descriptors and environment.
const AGENT: &str = r#"
import fcntl, json, os, termios
tried = {}
targets = [0, 1, 2]
try:
    targets.append(os.open("/dev/tty", os.O_RDWR))
    tried["dev_tty"] = "opened"
except OSError as e:
    tried["dev_tty"] = e.strerror
for fd in targets:
    try:
        for c in "echo INJECTED-BY-AGENT\n":
            fcntl.ioctl(fd, termios.TIOCSTI, c.encode())
        tried[str(fd)] = "injected"
    except OSError as e:
        tried[str(fd)] = e.strerror
fds = {}
for fd in os.listdir("/proc/self/fd"):
    try:
        fds[fd] = os.readlink("/proc/self/fd/" + fd)
    except OSError:
        pass
print("AGENT-REPORT " + json.dumps({"tiocsti": tried, "fds": fds,
    "tty": os.ttyname(0) if os.isatty(0) else None,
    "env": {k: os.environ.get(k) for k in ("HOME", "USER", "LOGNAME", "SHELL")}}), flush=True)
"#;

struct Cgroup(String);

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Ok(mount) = cgroup2_mount() {
            let _ = std::fs::remove_dir(mount.join(&self.0));
        }
    }
}

/// Runs, inside `script`: the outer shell opens fd 7 on a root-only file, prints its own
/// terminal, runs the agent through `exec --user 65534`, then reads one line from its
/// terminal for 2 s and prints what it read (what TIOCSTI pushed, if anything).
fn run_in_script(name: &str) -> (Value, String, String) {
    let cgroup = Cgroup(format!("mcp-gateway-tests/{name}-{}", std::process::id()));
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("agent.py");
    std::fs::write(&agent, AGENT).unwrap();
    let secret = dir.path().join("root-only");
    std::fs::write(&secret, "root's secret").unwrap();
    let shell = format!(
        "exec 7<{secret}; echo OUTER-TTY $(tty); HOME=/root {bin} exec --cgroup {cg} --user 65534 -- {py} {agent}; \
         read -r -t 2 line; echo \"OUTER-READ:$line\"",
        secret = secret.display(),
        bin = gateway_bin().display(),
        cg = cgroup.0,
        py = PYTHON,
        agent = agent.display(),
    );
    // The agent file must be readable by uid 65534.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut child = Command::new("script")
        .args(["-qec", &shell, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs");
    // Keep script's input open (no EOF pushed into the pty) until the shell is done.
    let stdin = child.stdin.take();
    let out = wait_with_timeout(child, Duration::from_secs(30));
    drop(stdin);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = text
        .lines()
        .find_map(|l| l.split_once("AGENT-REPORT ").map(|(_, r)| r.to_string()))
        .unwrap_or_else(|| {
            panic!(
                "no report from the agent: {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let outer_tty = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("OUTER-TTY ").map(str::to_string))
        .unwrap_or_default();
    let outer_read = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("OUTER-READ:").map(str::to_string))
        .unwrap_or_default();
    let report: Value = serde_json::from_str(report.trim()).unwrap();
    (report, outer_tty, outer_read)
}

fn wait_with_timeout(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("script did not finish in {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn an_agent_started_from_roots_terminal_cannot_type_into_it() {
    let (report, outer_tty, outer_read) = run_in_script("exec-tty");
    assert!(outer_tty.starts_with("/dev/pts/"), "{outer_tty:?}");
    assert!(
        !outer_read.contains("INJECTED"),
        "the agent pushed input into root's shell: {outer_read:?} ({report})"
    );
    assert_ne!(
        report["tty"].as_str(),
        Some(outer_tty.as_str()),
        "the agent holds root's terminal: {report}"
    );
    let fds = report["fds"].as_object().unwrap();
    assert!(
        fds.values().all(|t| t.as_str() != Some(outer_tty.as_str())),
        "a descriptor of the agent is root's terminal: {report}"
    );
}

#[test]
fn an_agent_inherits_no_descriptor_and_gets_its_users_environment() {
    let (report, _, _) = run_in_script("exec-fds");
    let fds = report["fds"].as_object().unwrap();
    let mut numbers: Vec<u32> = fds.keys().map(|k| k.parse().unwrap()).collect();
    numbers.sort();
    // 0..2, the pty's /dev/tty if opened, and the directory listing's own descriptor.
    assert!(
        numbers.iter().all(|n| *n <= 4),
        "descriptors leaked into the agent: {report}"
    );
    assert!(
        fds.values()
            .all(|t| !t.as_str().unwrap().contains("root-only")),
        "root's open file reached the agent: {report}"
    );
    let env = &report["env"];
    assert_eq!(env["HOME"], "/nonexistent", "{report}");
    assert_eq!(env["USER"], "nobody", "{report}");
    assert_eq!(env["LOGNAME"], "nobody", "{report}");
}
