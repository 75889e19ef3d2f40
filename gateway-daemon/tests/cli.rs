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

/// A ledger written by the library, then read with the command line an admin uses.
fn ledger_with_config() -> (tempfile::TempDir, std::path::PathBuf) {
    use gateway_daemon::config::{Audit, Journald};
    let dir = tempfile::tempdir().unwrap();
    let cfg = Audit {
        path: dir.path().join("audit.jsonl"),
        key: dir.path().join("audit.key"),
        journald: Journald::Off,
        ..Default::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (sink, writer) = gateway_daemon::audit::open(&cfg).await.unwrap();
        for (i, outcome) in ["ok", "refused", "ok"].iter().enumerate() {
            sink.record_durable(&serde_json::json!({
                "type": "mcp", "time": format!("2026-11-24T10:00:0{i}.000000Z"),
                "server": "gh", "name": "search", "outcome": outcome,
                "principal": {"uid": 1500, "user": "agent", "exe": "/usr/bin/node"}
            }))
            .unwrap()
            .durable()
            .await
            .unwrap();
        }
        drop(sink);
        writer.finish().await;
    });
    let config = dir.path().join("gw.toml");
    std::fs::write(
        &config,
        format!(
            "[agents]\ncgroups = [\"a\"]\n[audit]\npath = \"{}\"\nkey = \"{}\"\n",
            cfg.path.display(),
            cfg.key.display()
        ),
    )
    .unwrap();
    (dir, config)
}

#[test]
fn audit_verify_pubkey_and_show() {
    let (dir, config) = ledger_with_config();
    let run = |args: &[&str]| {
        let out = gateway()
            .args(["audit", "--config"])
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run(&["verify"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("ok: 6 records"), "{out}");
    assert!(out.contains("signed head matches"), "{out}");

    let (code, key) = run(&["pubkey"]);
    assert_eq!(code, Some(0));
    assert_eq!(key.trim().len(), 64, "{key}");

    let (_, shown) = run(&["show", "--decision", "refused", "--principal", "node"]);
    let shown: Vec<&str> = shown.lines().collect();
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert!(shown[0].contains("\"outcome\":\"refused\""));
    let (_, tail) = run(&["tail", "-n", "2", "--type", "mcp"]);
    assert_eq!(tail.lines().count(), 2, "{tail}");

    // Verified elsewhere with only the public key and the files.
    let ledger = dir.path().join("audit.jsonl");
    let text = std::fs::read_to_string(&ledger).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(3);
    std::fs::write(&ledger, lines.join("\n") + "\n").unwrap();
    let out = gateway()
        .args(["audit", "verify", "--pubkey", key.trim()])
        .arg(&ledger)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("deleted") && stdout.contains("seq 5"),
        "{stdout}"
    );
}

#[test]
fn ca_export_prints_the_same_ca_every_time_and_keeps_its_key_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gw.toml");
    let (cert, key) = (
        dir.path().join("state/ca.pem"),
        dir.path().join("state/ca.key"),
    );
    std::fs::write(
        &config,
        format!(
            "[agents]\ncgroups = [\"a\"]\n[tls]\nca_cert = {:?}\nca_key = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    )
    .unwrap();
    let export = || {
        let out = gateway()
            .args(["ca", "export", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let first = export();
    assert!(first.starts_with("-----BEGIN CERTIFICATE-----"), "{first}");
    assert_eq!(first, std::fs::read_to_string(&cert).unwrap());
    assert_eq!(export(), first, "the CA is made once and kept");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    std::fs::remove_file(&key).unwrap();
    let out = gateway()
        .args(["ca", "export", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("half there") && err.contains("ca.key"),
        "{err}"
    );
}
