//! `cargo xtask deb`: the Debian package, built by cargo-deb from
//! `[package.metadata.deb]` in gateway-daemon/Cargo.toml; and the boot test
//! (`cargo xtask test --full`), which installs that package in a Debian bookworm root booted
//! with systemd-nspawn and watches an agent unit's MCP call reach the audit ledger.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// cargo-deb, installed into the caller's cargo bin directory when missing.
pub fn ensure_cargo_deb() -> Result<()> {
    if crate::runs(&crate::cargo_bin(), &["deb", "--version"]) {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-deb (cargo install cargo-deb --locked)");
    let ok = Command::new(crate::cargo_bin())
        .args(["install", "cargo-deb", "--locked"])
        .status()
        .context("running cargo install cargo-deb")?
        .success();
    if !ok {
        bail!("`cargo install cargo-deb --locked` failed");
    }
    Ok(())
}

/// Builds the package (release build of the daemon) into target/debian/ and returns its path.
pub fn build(root: &Path) -> Result<PathBuf> {
    ensure_cargo_deb()?;
    let out_dir = root.join("target/debian");
    let mut cmd = Command::new(crate::cargo_bin());
    crate::pgo::apply(&mut cmd, &crate::pgo::release(root)?);
    let out = cmd
        .args(["deb", "-p", "gateway-daemon", "--output"])
        .arg(&out_dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo deb")?;
    if !out.status.success() {
        bail!("`cargo deb -p gateway-daemon` failed");
    }
    // cargo-deb prints the path of the package it wrote as its last line of stdout.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .with_context(|| format!("cargo deb printed no .deb path; its output was: {stdout}"))?;
    if !path.exists() {
        bail!("cargo deb named {} but it does not exist", path.display());
    }
    println!("{}", path.display());
    Ok(path)
}

/// Where the debootstrapped base root is kept between runs (root-owned, so outside target/
/// to keep `cargo clean` working for the user). Remove it to start over.
const CACHE: &str = "/var/tmp/mcp-gateway-boot-test";
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// Packages of the base root besides minbase: a booting systemd, and the test's agent,
/// server and driver (python3), and curl for the README's agent example.
const INCLUDE: &str = "systemd,systemd-sysv,dbus,python3,curl,ca-certificates";
/// How long the booted container may take for the whole test.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// Host packages the boot test needs.
pub const BOOT_NEEDS: &[(&str, &str)] = &[
    ("debootstrap", "debootstrap"),
    ("systemd-container", "systemd-nspawn"),
    // `script` gives the container a pseudo-terminal: systemd as PID 1 of an nspawn
    // container prints nothing and its console is unusable with --console=pipe.
    ("bsdutils", "script"),
];

/// The boot test. Needs root (debootstrap, systemd-nspawn); fails with the reason when the
/// host cannot run it, never skips.
pub fn boot_test(deb: &Path) -> Result<()> {
    if !crate::is_root() {
        bail!(
            "the boot test needs root (debootstrap, systemd-nspawn): run `sudo -E cargo xtask \
             test --full`"
        );
    }
    let missing: Vec<&str> = BOOT_NEEDS
        .iter()
        .filter(|(_, tool)| !which(tool))
        .map(|(pkg, _)| *pkg)
        .collect();
    if !missing.is_empty() {
        crate::apt_install(&missing)?;
    }
    check_host()?;

    let base = Path::new(CACHE).join(format!("{SUITE}-base"));
    let stamp = base.join(".mcp-gateway-debootstrap");
    if fs::read_to_string(&stamp).ok().as_deref() != Some(INCLUDE) {
        eprintln!("xtask: debootstrap {SUITE} into {}", base.display());
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(CACHE)?;
        run(Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={INCLUDE}"), SUITE])
            .arg(&base)
            .arg(MIRROR))?;
        fs::write(&stamp, INCLUDE)?;
    }

    // A fresh copy of the base for every run: the package's install is part of the test.
    let machine = Path::new(CACHE).join("run");
    let _ = fs::remove_dir_all(&machine);
    run(Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(&base)
        .arg(&machine))?;
    let results = Path::new(CACHE).join("results");
    let _ = fs::remove_dir_all(&results);
    fs::create_dir_all(&results)?;
    fs::copy(deb, machine.join("root/mcp-gateway.deb"))?;
    fs::write(machine.join("root/boot-test.py"), DRIVER)?;
    fs::write(
        machine.join("etc/systemd/system/boot-test.service"),
        DRIVER_UNIT,
    )?;
    let wants = machine.join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants)?;
    std::os::unix::fs::symlink(
        "/etc/systemd/system/boot-test.service",
        wants.join("boot-test.service"),
    )?;
    // No login prompt on the console: it would only add noise to the log.
    std::os::unix::fs::symlink(
        "/dev/null",
        machine.join("etc/systemd/system/console-getty.service"),
    )?;

    // With --private-network nspawn gives the container a /sys of its own in which /sys/fs
    // holds only the cgroup mounts: no bpffs, nor a directory to mount one on. The
    // container gets a bpffs instance of its own (not the host's /sys/fs/bpf, where the
    // pins of a gateway on the host live), as systemd would mount it on a real host.
    let bpffs = Path::new(CACHE).join("bpffs");
    fs::create_dir_all(&bpffs)?;
    if !crate::runs("mountpoint", &["-q", &bpffs.to_string_lossy()]) {
        run(Command::new("mount")
            .args(["-t", "bpf", "-o", "mode=0700", "bpffs"])
            .arg(&bpffs))?;
    }
    let result = boot(&machine, &results, &bpffs);
    let _ = Command::new("umount").arg(&bpffs).status();
    result
}

fn boot(machine: &Path, results: &Path, bpffs: &Path) -> Result<()> {
    eprintln!("xtask: booting {} with systemd-nspawn", machine.display());
    let console = results.join("console.log");
    let nspawn = [
        "systemd-nspawn",
        "--quiet",
        "--boot",
        "--directory",
        &machine.to_string_lossy(),
        "--machine=mcp-gateway-boot-test",
        // The host's PID 1 need not be systemd: no machined registration, no scope unit.
        "--register=no",
        "--keep-unit",
        "--private-network",
        // Loading and attaching eBPF, reading other users' /proc/PID/exe, SO_MARK.
        "--capability=CAP_BPF,CAP_PERFMON,CAP_NET_ADMIN,CAP_SYS_ADMIN,CAP_SYS_PTRACE,CAP_DAC_READ_SEARCH",
        // nspawn's own seccomp filter lets bpf(2) through only when asked to.
        "--system-call-filter=bpf",
        &format!("--bind={}:/results", results.display()),
        &format!("--bind={}:/sys/fs/bpf", bpffs.display()),
        "--console=read-only",
    ]
    .iter()
    .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
    .collect::<Vec<_>>()
    .join(" ");
    // script(1) gives nspawn the terminal its console needs; the container's exit status
    // is the driver's (SuccessAction=/FailureAction=exit in its unit).
    let started = Instant::now();
    let mut child = Command::new("script")
        .args(["--quiet", "--flush", "--return", "--command", &nspawn])
        .arg(&console)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting script(1) for systemd-nspawn")?;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if started.elapsed() > BOOT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            print_results(results);
            bail!(
                "the boot test did not finish in {}s; console: {}",
                BOOT_TIMEOUT.as_secs(),
                console.display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    print_results(results);
    let verdict = fs::read_to_string(results.join("verdict")).unwrap_or_default();
    if !status.success() || verdict.trim() != "passed" {
        bail!(
            "boot test failed (container exit: {status}, driver verdict: {:?}); log: {}, \
             console: {}",
            verdict.trim(),
            results.join("driver.log").display(),
            console.display()
        );
    }
    println!("boot test: 1 passed, 0 failed");
    Ok(())
}

fn print_results(results: &Path) {
    if let Ok(log) = fs::read_to_string(results.join("driver.log")) {
        eprintln!("---- boot test driver log ----\n{log}---- end ----");
    }
}

/// What the container needs from the host kernel; each missing piece is named.
fn check_host() -> Result<()> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!("the host kernel has no BTF (/sys/kernel/btf/vmlinux): the daemon cannot load");
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    if !mountinfo.lines().any(|l| l.contains(" - cgroup2 ")) {
        bail!(
            "no cgroup2 hierarchy on the host: systemd-nspawn gives the container none, and \
             the daemon attaches its programs to cgroup2"
        );
    }
    Ok(())
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs the driver once the container has booted; its exit status ends the container.
const DRIVER_UNIT: &str = "\
[Unit]
Description=mcp-gateway boot test driver
After=multi-user.target
SuccessAction=exit
FailureAction=exit
[Service]
Type=oneshot
ExecStart=/usr/bin/python3 /root/boot-test.py
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=240
[Install]
WantedBy=multi-user.target
";

/// Inside the booted container: install the package as an admin would, start the service,
/// run an agent unit in mcp-agents.slice, and find its MCP call in the audit ledger.
const DRIVER: &str = include_str!("boot_test.py");
