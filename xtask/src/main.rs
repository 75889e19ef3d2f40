//! `cargo xtask run|test`: the two commands of the README, with the build's system
//! packages installed where missing.

mod bench;
mod deb;
mod fuzz;
mod peers;
mod pgo;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build mcp-gateway and run it (as root) on a config (default: the example config).
    Run {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Build with optimisations.
        #[arg(long)]
        release: bool,
    },
    /// Run COMMAND as an agent of the daemon `run` started (in its config's first agent
    /// cgroup, as you: the user behind sudo), e.g. `cargo xtask exec -- curl …`.
    Exec {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Run an mcp-gateway command (as root) on the config `run` uses, e.g.
    /// `cargo xtask cli audit tail`.
    Cli {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// A small MCP server to try the gateway with (rmcp: tools echo, add, …), on
    /// 127.0.0.1:PORT; it also builds the matching client, target/debug/rmcp-test-client.
    DemoServer {
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Run the whole test suite: unit tests, then the privileged integration tests (root).
    Test {
        /// Also run the boot test: the .deb installed in a systemd-nspawn container
        /// (Debian bookworm, debootstrapped on first use; root, several minutes).
        #[arg(long)]
        full: bool,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Build the Debian package (cargo-deb, installed when missing) into target/debian/.
    Deb {
        /// Then run the boot test on it alone (what `test --full` adds; root).
        #[arg(long)]
        boot_test: bool,
    },
    /// Install the system packages the build and the tests need (apt, as root).
    Deps,
    /// Install the MCP test peers (server-everything, the Python SDK) into target/peers.
    Peers,
    /// Measure the gateway against direct connections (release build; root; ~5 min, --quick
    /// ~1 min); writes target/bench/bench-<sha>-<date>.json. --compare OLD NEW diffs two runs.
    Bench(bench::BenchArgs),
    /// Run the cargo-fuzz targets in fuzz/ (all by default) for --seconds each; fails on a
    /// crash, naming the input libFuzzer wrote.
    Fuzz(fuzz::FuzzArgs),
    /// Take the release build's optimisation profile again (pgo/mcp-gateway.profdata): the
    /// bench's binaries instrumented, under its relay and gateway scenarios (root; ~20 min).
    Pgo,
}

/// A system package the build or the tests need, and how to tell it is present.
struct Need {
    package: &'static str,
    present: fn() -> bool,
}

const NEEDS: &[Need] = &[
    Need {
        package: "clang-19",
        present: || {
            ["clang-19", "clang-18", "clang-17", "clang-16", "clang"]
                .iter()
                .any(|c| runs(c, &["--version"]))
        },
    },
    Need {
        package: "libbpf-dev",
        present: || Path::new("/usr/include/bpf/bpf_helpers.h").exists(),
    },
    Need {
        package: "python3",
        present: || Path::new("/usr/bin/python3").exists(),
    },
    // The MCP test peers (`cargo xtask peers`): a venv of Debian's python3, and Node.js.
    Need {
        package: "python3-venv",
        present: || runs("/usr/bin/python3", &["-c", "import ensurepip, venv"]),
    },
    Need {
        package: "nodejs",
        present: || runs("node", &["--version"]),
    },
    Need {
        package: "npm",
        present: || runs("npm", &["--version"]),
    },
    // jemalloc, the daemon's allocator, is built from its C sources (tikv-jemalloc-sys).
    Need {
        package: "make",
        present: || runs("make", &["--version"]),
    },
    // An HTTP/2 (h2c) agent in the tests.
    Need {
        package: "curl",
        present: || runs("curl", &["--version"]),
    },
    // `systemd-analyze verify` of the units (tests/tests/systemd_units.rs).
    Need {
        package: "systemd",
        present: || runs("systemd-analyze", &["--version"]),
    },
    // The TLS tests add their CA to a private copy of the host's trust store
    // (tests/src/tls.rs: `unshare`, `update-ca-certificates`; it brings `openssl`).
    Need {
        package: "ca-certificates",
        present: || Path::new("/usr/sbin/update-ca-certificates").exists(),
    },
    Need {
        package: "util-linux",
        present: || runs("unshare", &["--version"]),
    },
    // Programs on btrfs, whose `stat` device is not the kernel's
    // (tests/tests/identity_btrfs.rs makes one on a loop device).
    Need {
        package: "btrfs-progs",
        present: || runs("mkfs.btrfs", &["--version"]),
    },
];

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.command {
        Cmd::Deps => ensure_deps(),
        Cmd::Bench(args) => bench::run(&root, args),
        Cmd::Pgo => pgo::take(&root),
        Cmd::Fuzz(args) => fuzz::run(&root, &args),
        Cmd::Peers => {
            ensure_deps()?;
            peers::install(&root)
        }
        Cmd::Run { config, release } => {
            ensure_deps()?;
            let bin = build_daemon(release)?;
            let config = config.unwrap_or_else(|| example_config(&root));
            eprintln!(
                "xtask: starting the daemon on {}. In another terminal, next:\n  \
                 cargo xtask demo-server          # an MCP server on 127.0.0.1:8080\n  \
                 cargo xtask exec -- target/debug/rmcp-test-client http://127.0.0.1:8080/mcp\n  \
                 cargo xtask cli audit tail -n 5  # what the gateway recorded",
                config.display()
            );
            let status = as_root(&bin)
                .args(["run", "--config"])
                .arg(&config)
                .status()
                .with_context(|| format!("starting {}", bin.display()))?;
            if !status.success() {
                bail!("mcp-gateway exited with {status}");
            }
            Ok(())
        }
        Cmd::Exec { config, command } => {
            let bin = build_daemon(false)?;
            let config = config.unwrap_or_else(|| example_config(&root));
            let mut cmd = as_root(&bin);
            cmd.arg("exec").arg("--config").arg(&config);
            // The agent runs as whoever asked, not as root: the cgroup makes it an agent.
            if let Some(user) = invoking_user() {
                cmd.args(["--user", &user]);
            }
            cmd.arg("--").args(&command);
            exit_like(cmd.status().context("running mcp-gateway exec")?)
        }
        Cmd::Cli { config, args } => {
            let bin = build_daemon(false)?;
            let config = config.unwrap_or_else(|| example_config(&root));
            let mut cmd = as_root_with_config(&bin, &config);
            cmd.args(&args);
            exit_like(cmd.status().context("running mcp-gateway")?)
        }
        Cmd::DemoServer { port } => {
            let status = Command::new(cargo_bin())
                .args(["build", "-p", "gateway-tests", "--bin", "rmcp-test-server"])
                .args(["--bin", "rmcp-test-client"])
                .status()?;
            if !status.success() {
                bail!("building the demo server failed");
            }
            let server = root.join("target/debug/rmcp-test-server");
            eprintln!(
                "xtask: an MCP server (rmcp) on http://127.0.0.1:{port}/mcp; an agent of the \
                 daemon reaches it through the gateway:\n  \
                 cargo xtask exec -- target/debug/rmcp-test-client http://127.0.0.1:{port}/mcp"
            );
            let status = Command::new(&server)
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .status()
                .with_context(|| format!("starting {}", server.display()))?;
            exit_like(status)
        }
        Cmd::Deb { boot_test } => {
            ensure_deps()?;
            let package = deb::build(&root)?;
            if boot_test {
                deb::boot_test(&package)?;
            }
            Ok(())
        }
        Cmd::Test { full, args } => {
            ensure_deps()?;
            peers::install(&root)?;
            let bin = build_daemon(false)?;
            cargo(
                &["test", "--workspace", "--exclude", "gateway-tests"],
                &args,
                &bin,
            )?;
            // The package, inspected by tests/tests/systemd_units.rs.
            let package = deb::build(&root)?;
            // The privileged suite runs as root: through sudo when we are not, as the test
            // binary's runner, so the build itself stays unprivileged.
            let mut cmd = Command::new(cargo_bin());
            if !is_root() {
                eprintln!("xtask: running the privileged integration tests through sudo");
                cmd.env(
                    format!(
                        "CARGO_TARGET_{}_RUNNER",
                        host_triple()?.to_uppercase().replace('-', "_")
                    ),
                    "sudo -E",
                );
            }
            cmd.args(["test", "-p", "gateway-tests"]);
            cmd.env("MCP_GATEWAY_DEB", &package);
            run_cargo(cmd, &args, &bin)?;
            // A short run of every fuzz target, unless a filter picked some tests only.
            if args.is_empty() {
                fuzz::smoke(&root)?;
            }
            if full {
                deb::boot_test(&package)?;
            }
            Ok(())
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The config `run`, `exec` and `cli` use unless given one: `$MCP_GATEWAY_CONFIG` (as
/// for mcp-gateway itself), else the example config.
fn example_config(root: &Path) -> PathBuf {
    match std::env::var_os("MCP_GATEWAY_CONFIG") {
        Some(c) if !c.is_empty() => PathBuf::from(c),
        _ => root.join("systemd/mcp-gateway.toml"),
    }
}

/// `bin` as root: directly when we are, else through sudo (the build stays unprivileged).
fn as_root(bin: &Path) -> Command {
    if is_root() {
        Command::new(bin)
    } else {
        let mut c = Command::new("sudo");
        c.arg(bin);
        c
    }
}

/// `bin` as root with `MCP_GATEWAY_CONFIG` set to `config`, which every command reads
/// (sudo would drop it from our environment, so it goes on the command line).
fn as_root_with_config(bin: &Path, config: &Path) -> Command {
    let var = format!("MCP_GATEWAY_CONFIG={}", config.display());
    if is_root() {
        let mut c = Command::new(bin);
        c.env("MCP_GATEWAY_CONFIG", config);
        c
    } else {
        let mut c = Command::new("sudo");
        c.arg("env").arg(var).arg(bin);
        c
    }
}

/// Who asked: the user behind sudo, or this one when not root; None for root itself.
fn invoking_user() -> Option<String> {
    if is_root() {
        return std::env::var("SUDO_USER")
            .ok()
            .filter(|u| !u.is_empty() && u != "root");
    }
    let out = Command::new("id").arg("-un").output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|u| !u.is_empty())
}

/// Ends xtask with the status of the command it ran.
fn exit_like(status: std::process::ExitStatus) -> Result<()> {
    std::process::exit(status.code().unwrap_or(1))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn ensure_deps() -> Result<()> {
    let missing: Vec<&str> = NEEDS
        .iter()
        .filter(|n| !(n.present)())
        .map(|n| n.package)
        .collect();
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    ensure_agent_user()
}

/// The example config selects agents by the `mcp-agent` user as well as by cgroup (the
/// package's sysusers file creates it); `run`, the unit tests and check-config need it.
fn ensure_agent_user() -> Result<()> {
    const USER: &str = "mcp-agent";
    if runs("id", &["-u", USER]) {
        return Ok(());
    }
    let args = [
        "--system",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        "--comment",
        "AI agents mediated by mcp-gateway",
        USER,
    ];
    if !is_root() {
        bail!(
            "the example config's agent user {USER} does not exist. Create it with: sudo useradd {}",
            args.join(" ")
        );
    }
    eprintln!("xtask: creating the system user {USER}");
    if !Command::new("useradd").args(args).status()?.success() {
        bail!("`useradd {}` failed", args.join(" "));
    }
    Ok(())
}

/// Installs Debian packages (as root; otherwise fails with the command to run).
fn apt_install(missing: &[&str]) -> Result<()> {
    let cmd = format!("apt-get update && apt-get install -y {}", missing.join(" "));
    if !is_root() {
        bail!(
            "missing system packages: {}. Install them with: sudo sh -c '{cmd}'",
            missing.join(", ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(", "));
    let ok = Command::new("sh")
        .args(["-c", &cmd])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?
        .success();
    if !ok {
        bail!("`{cmd}` failed");
    }
    Ok(())
}

fn build_daemon(release: bool) -> Result<PathBuf> {
    let mut args = vec!["build", "-p", "gateway-daemon"];
    let mut cmd = Command::new(cargo_bin());
    if release {
        args.push("--release");
        pgo::apply(&mut cmd, &pgo::release(&workspace_root())?);
    }
    let status = cmd.args(&args).status()?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    let profile = if release { "release" } else { "debug" };
    Ok(workspace_root()
        .join("target")
        .join(profile)
        .join("mcp-gateway"))
}

fn cargo(base: &[&str], extra: &[String], bin: &Path) -> Result<()> {
    let mut cmd = Command::new(cargo_bin());
    cmd.args(base);
    run_cargo(cmd, extra, bin)
}

fn run_cargo(mut cmd: Command, extra: &[String], bin: &Path) -> Result<()> {
    cmd.env("MCP_GATEWAY_BIN", bin);
    if !extra.is_empty() {
        cmd.arg("--").args(extra);
    }
    let status = cmd.status()?;
    if !status.success() {
        bail!("{cmd:?} failed");
    }
    Ok(())
}

fn host_triple() -> Result<String> {
    rustc_says("host")
}

/// One field of `rustc -vV` (`host`, `release`, `LLVM version`).
fn rustc_says(field: &str) -> Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(": "))
        .map(str::to_string)
        .with_context(|| format!("rustc -vV printed no {field}"))
}

fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}
