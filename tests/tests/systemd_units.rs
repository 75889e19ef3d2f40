//! The install path: the systemd units pass `systemd-analyze verify`, the tmpfiles.d and
//! sysusers.d files do what they say, and the Debian package (`cargo xtask deb`) holds what
//! an administrator expects. The boot test that installs the package in a booted systemd is
//! `cargo xtask test --full` (xtask/src/deb.rs).
//!
//! Nothing here needs root except the tmpfiles check; nothing is skipped: a missing tool
//! fails the test with the package to install.

use std::path::{Path, PathBuf};
use std::process::Command;

use gateway_tests::gateway_bin;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn systemd_dir() -> PathBuf {
    repo().join("systemd")
}

/// Runs a tool, failing loudly (never skipping) when it is not installed.
fn tool(program: &str, package: &str) -> Command {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{program} is not installed: `apt-get install {package}` (cargo xtask test does)"
    );
    Command::new(program)
}

fn output(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The README's example of an agent service.
const AGENT_UNIT: &str = "\
[Unit]
Description=An AI agent whose connections mcp-gateway mediates
[Service]
Slice=mcp-agents.slice
DynamicUser=yes
ExecStart=/usr/bin/python3 -m http.server 9999
[Install]
WantedBy=multi-user.target
";

/// `systemd-analyze verify` of the unit, the slice and an agent unit placed in the slice.
/// Warnings (an unknown key, a bad value) fail the test as errors do: systemd ignores such
/// lines, so a typo in a hardening option would silently weaken the sandbox.
#[test]
fn units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let service = std::fs::read_to_string(systemd_dir().join("mcp-gateway.service")).unwrap();
    assert!(
        service.contains("ExecStart=/usr/bin/mcp-gateway run"),
        "the unit runs the installed binary"
    );
    // verify checks that every Exec command exists: point it at the binary just built
    // rather than at /usr/bin, where the package puts it.
    let service = service.replace("/usr/bin/mcp-gateway", &gateway_bin().to_string_lossy());
    std::fs::write(dir.path().join("mcp-gateway.service"), service).unwrap();
    std::fs::copy(
        systemd_dir().join("mcp-agents.slice"),
        dir.path().join("mcp-agents.slice"),
    )
    .unwrap();
    std::fs::write(dir.path().join("example-agent.service"), AGENT_UNIT).unwrap();

    let mut cmd = tool("systemd-analyze", "systemd");
    cmd.args(["verify", "--man=no"])
        .arg(dir.path().join("mcp-gateway.service"))
        .arg(dir.path().join("mcp-agents.slice"))
        .arg(dir.path().join("example-agent.service"))
        // The directory first, then the default search path (the trailing colon).
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.path().display()));
    let (ok, text) = output(&mut cmd);
    assert!(ok, "systemd-analyze verify failed:\n{text}");
    assert!(
        text.trim().is_empty(),
        "systemd-analyze verify warned (systemd would ignore those lines):\n{text}"
    );
}

/// The agents' slice pulls the gateway in and starts after it; the gateway is a notify
/// service that reloads by SIGHUP and restarts always (fail closed).
#[test]
fn unit_and_slice_dependencies() {
    // Read as written: `systemctl show` needs a running manager.
    let show = |unit: &str, props: &str| {
        let text = std::fs::read_to_string(systemd_dir().join(unit)).unwrap();
        props
            .split(',')
            .map(|p| {
                text.lines()
                    .find(|l| l.starts_with(&format!("{p}=")))
                    .unwrap_or_else(|| panic!("{unit} has no {p}="))
                    .to_string()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        show("mcp-agents.slice", "Wants,After"),
        ["Wants=mcp-gateway.service", "After=mcp-gateway.service"]
    );
    assert_eq!(
        show("mcp-gateway.service", "Type,Restart"),
        ["Type=notify", "Restart=always"]
    );
    let reload = &show("mcp-gateway.service", "ExecReload")[0];
    assert!(reload.contains("kill -HUP"), "{reload}");
}

/// sysusers.d creates the admin group and the agents' user the example config selects;
/// tmpfiles.d creates the directories with the modes the unit also uses. Both run against a
/// scratch root.
#[test]
fn sysusers_and_tmpfiles_create_group_and_directories() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    let (ok, text) = output(
        tool("systemd-sysusers", "systemd")
            .arg(format!("--root={}", root.path().display()))
            .arg(systemd_dir().join("mcp-gateway.sysusers")),
    );
    assert!(ok, "systemd-sysusers failed:\n{text}");
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    assert!(
        group.lines().any(|l| l.starts_with("mcp-gateway:")),
        "no mcp-gateway group in {group}"
    );
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let agent = passwd
        .lines()
        .find(|l| l.starts_with("mcp-agent:"))
        .unwrap_or_else(|| panic!("no mcp-agent user in {passwd}"));
    assert!(agent.ends_with(":/usr/sbin/nologin"), "{agent}");
    let example = std::fs::read_to_string(systemd_dir().join("mcp-gateway.toml")).unwrap();
    assert!(
        example.contains("users = [\"mcp-agent\"]"),
        "the example selects agents by the user the package creates"
    );

    let (ok, text) = output(
        tool("systemd-tmpfiles", "systemd")
            .args(["--create", &format!("--root={}", root.path().display())])
            .arg(systemd_dir().join("mcp-gateway.tmpfile")),
    );
    assert!(ok, "systemd-tmpfiles failed:\n{text}");
    use std::os::unix::fs::PermissionsExt;
    for (dir, mode) in [
        ("var/lib/mcp-gateway", 0o700),
        ("var/log/mcp-gateway", 0o750),
    ] {
        let meta = std::fs::metadata(root.path().join(dir))
            .unwrap_or_else(|e| panic!("tmpfiles did not create /{dir}: {e}"));
        assert_eq!(meta.permissions().mode() & 0o7777, mode, "mode of /{dir}");
    }
    let service = std::fs::read_to_string(systemd_dir().join("mcp-gateway.service")).unwrap();
    assert!(service.contains("StateDirectoryMode=0700"));
    assert!(service.contains("LogsDirectoryMode=0750"));
}

/// The package `cargo xtask deb` built (MCP_GATEWAY_DEB, set by `cargo xtask test`).
fn package() -> PathBuf {
    let path = std::env::var_os("MCP_GATEWAY_DEB")
        .map(PathBuf::from)
        .expect(
            "MCP_GATEWAY_DEB is not set: run the suite with `cargo xtask test`, which builds the \
         package, or build it with `cargo xtask deb` and set MCP_GATEWAY_DEB to the path it \
         prints",
        );
    assert!(path.exists(), "{} does not exist", path.display());
    path
}

#[test]
fn deb_holds_binary_units_config_tmpfiles_sysusers() {
    let deb = package();
    let (ok, listing) = output(tool("dpkg-deb", "dpkg").arg("-c").arg(&deb));
    assert!(ok, "dpkg-deb -c failed:\n{listing}");
    for (path, mode) in [
        ("./usr/bin/mcp-gateway", "-rwxr-xr-x"),
        ("./usr/lib/systemd/system/mcp-gateway.service", "-rw-r--r--"),
        ("./usr/lib/systemd/system/mcp-agents.slice", "-rw-r--r--"),
        ("./etc/mcp-gateway/mcp-gateway.toml", "-rw-r--r--"),
        ("./usr/lib/tmpfiles.d/mcp-gateway.conf", "-rw-r--r--"),
        ("./usr/lib/sysusers.d/mcp-gateway.conf", "-rw-r--r--"),
        ("./usr/share/doc/mcp-gateway/install.md", "-rw-r--r--"),
    ] {
        let line = listing
            .lines()
            .find(|l| l.ends_with(&format!(" {path}")))
            .unwrap_or_else(|| panic!("{path} is not in the package:\n{listing}"));
        assert!(line.starts_with(mode), "{path}: {line}");
        assert!(
            line.contains(" root/root ") || line.contains(" 0/0 "),
            "{path}: {line}"
        );
    }

    // The packaged files are the repository's, byte for byte.
    let root = tempfile::tempdir().unwrap();
    let (ok, text) = output(
        tool("dpkg-deb", "dpkg")
            .arg("-x")
            .arg(&deb)
            .arg(root.path()),
    );
    assert!(ok, "dpkg-deb -x failed:\n{text}");
    for (packaged, source) in [
        (
            "usr/lib/systemd/system/mcp-gateway.service",
            "mcp-gateway.service",
        ),
        (
            "usr/lib/systemd/system/mcp-agents.slice",
            "mcp-agents.slice",
        ),
        ("etc/mcp-gateway/mcp-gateway.toml", "mcp-gateway.toml"),
        ("usr/lib/tmpfiles.d/mcp-gateway.conf", "mcp-gateway.tmpfile"),
        (
            "usr/lib/sysusers.d/mcp-gateway.conf",
            "mcp-gateway.sysusers",
        ),
    ] {
        assert_eq!(
            std::fs::read(root.path().join(packaged)).unwrap(),
            std::fs::read(systemd_dir().join(source)).unwrap(),
            "/{packaged} differs from systemd/{source}: rebuild with `cargo xtask deb`"
        );
    }
    // The packaged binary accepts the packaged config.
    let (ok, text) = output(
        Command::new(root.path().join("usr/bin/mcp-gateway"))
            .arg("check-config")
            .arg(root.path().join("etc/mcp-gateway/mcp-gateway.toml")),
    );
    assert!(
        ok,
        "the packaged binary rejects the packaged config:\n{text}"
    );
}

#[test]
fn deb_control_conffile_and_maintainer_scripts() {
    let deb = package();
    let (ok, info) = output(tool("dpkg-deb", "dpkg").arg("-I").arg(&deb));
    assert!(ok, "dpkg-deb -I failed:\n{info}");
    for field in [" Package: mcp-gateway", " Section: net", " Depends: libc6"] {
        assert!(info.contains(field), "no `{field}` in:\n{info}");
    }
    let control = |member: &str| {
        let (ok, text) = output(tool("dpkg-deb", "dpkg").arg("-I").arg(&deb).arg(member));
        assert!(ok, "the package has no {member}:\n{text}");
        text
    };
    // The example config is a conffile: an admin's edits survive upgrades.
    assert_eq!(
        control("conffiles").trim(),
        "/etc/mcp-gateway/mcp-gateway.toml"
    );

    let postinst = control("postinst");
    for needle in [
        "systemd-sysusers",
        "mcp-gateway.conf",
        "systemd-tmpfiles --create",
        "deb-systemd-helper enable mcp-gateway.service",
        "systemctl --system daemon-reload",
        "deb-systemd-invoke $_dh_action mcp-gateway.service",
    ] {
        assert!(
            postinst.contains(needle),
            "postinst lacks `{needle}`:\n{postinst}"
        );
    }
    // sysusers before tmpfiles (the directories may name the group).
    assert!(
        postinst.find("systemd-sysusers") < postinst.find("systemd-tmpfiles"),
        "{postinst}"
    );
    // An upgrade restarts the gateway only: restarting the slice would stop every agent.
    assert!(
        !postinst.contains("mcp-agents.slice"),
        "postinst acts on the agents' slice:\n{postinst}"
    );
    let prerm = control("prerm");
    assert!(
        prerm.contains("deb-systemd-invoke stop mcp-gateway.service") && prerm.contains("remove"),
        "prerm stops the service on removal only:\n{prerm}"
    );
    // The stopped daemon stays attached; removing the package detaches on purpose, after
    // the stop.
    let detach = prerm
        .find("mcp-gateway detach")
        .unwrap_or_else(|| panic!("prerm does not detach on removal:\n{prerm}"));
    assert!(
        prerm.find("deb-systemd-invoke stop") < Some(detach),
        "prerm detaches before stopping the service:\n{prerm}"
    );
    let postrm = control("postrm");
    assert!(
        postrm.contains("systemctl --system daemon-reload"),
        "postrm reloads systemd:\n{postrm}"
    );
    assert!(
        postrm.contains("deb-systemd-helper purge mcp-gateway.service"),
        "{postrm}"
    );
}
