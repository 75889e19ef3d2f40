//! The command line as an administrator meets it, without root.

use std::process::Command;

fn gateway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mcp-gateway"))
}

#[test]
fn check_config_accepts_the_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd/mcp-gateway.toml");
    let out = gateway().args(["check-config", example]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
}

#[test]
fn check_config_names_the_bad_key_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[agents]\ncgroups = [\"a\"]\n[scope]\nports = [0]\n").unwrap();
    let out = gateway().arg("check-config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`scope.ports`"), "{err}");
    assert!(err.contains("bad.toml"), "{err}");
    assert!(!err.contains("backtrace"), "{err}");

    std::fs::write(&bad, "[listner]\n").unwrap();
    let out = gateway().arg("check-config").arg(&bad).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("unknown field `listner`"), "{err}");
}

#[test]
fn check_config_on_a_missing_file_says_so() {
    let out = gateway()
        .args(["check-config", "/nonexistent/gw.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read config /nonexistent/gw.toml"),
        "{err}"
    );
}

#[test]
fn exec_without_a_command_is_refused() {
    let out = gateway().args(["exec", "--cgroup", "x"]).output().unwrap();
    assert!(!out.status.success());
}
