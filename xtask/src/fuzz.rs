//! `cargo xtask fuzz [--seconds N] [TARGET...]`: runs the cargo-fuzz targets in fuzz/ (all
//! of them by default), each for N seconds, and fails when one finds a crash, naming the
//! file libFuzzer wrote the crashing input to.
//!
//! cargo-fuzz is installed when missing (`cargo install cargo-fuzz --locked`). With a
//! nightly toolchain the targets run under AddressSanitizer (cargo-fuzz's default). This
//! machine kind has only the stable toolchain and none can be fetched: without nightly the
//! targets run on stable with `--sanitizer none` (libFuzzer's coverage-guided search, debug
//! assertions and overflow checks, no ASan), and this says so; `--require-nightly` fails
//! instead.
//!
//! New inputs libFuzzer finds go to fuzz/target/corpus/<target> (not committed); the seed
//! corpora in fuzz/corpus/<target> are only read. Crash inputs go to
//! fuzz/artifacts/<target>/.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context, Result};

/// Every fuzz target (fuzz/fuzz_targets/<name>.rs).
pub const TARGETS: &[&str] = &[
    "sse",
    "jsonrpc",
    "http_classify",
    "http_serve",
    "config",
    "redact",
    "pins_poison",
];

/// Seconds per target of the smoke run `cargo xtask test` makes.
pub const SMOKE_SECONDS: u64 = 15;

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// How long each target runs.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Fail when no nightly toolchain is installed instead of fuzzing on stable without
    /// AddressSanitizer.
    #[arg(long)]
    pub require_nightly: bool,
    /// Targets to run (default: all): sse, jsonrpc, http_classify, http_serve, config,
    /// redact, pins_poison.
    pub targets: Vec<String>,
}

/// Every target for `SMOKE_SECONDS` seconds (what `cargo xtask test`, and so CI, runs).
pub fn smoke(root: &Path) -> Result<()> {
    run(
        root,
        &FuzzArgs {
            seconds: SMOKE_SECONDS,
            require_nightly: false,
            targets: Vec::new(),
        },
    )
}

/// How the targets are built: the toolchain, and the cargo-fuzz options that go with it.
struct Toolchain {
    cargo_prefix: Vec<&'static str>,
    fuzz_options: Vec<&'static str>,
    label: &'static str,
}

fn toolchain(require_nightly: bool) -> Result<Toolchain> {
    let nightly = Command::new("rustc")
        .args(["+nightly", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if nightly {
        return Ok(Toolchain {
            cargo_prefix: vec!["+nightly"],
            fuzz_options: vec![],
            label: "nightly, AddressSanitizer",
        });
    }
    if require_nightly {
        bail!(
            "no nightly Rust toolchain (`rustc +nightly --version` fails), and \
             --require-nightly was given: install one with `rustup toolchain install nightly` \
             where the network allows it, or drop --require-nightly to fuzz on stable without \
             AddressSanitizer"
        );
    }
    eprintln!(
        "xtask: NOTE: no nightly Rust toolchain: fuzzing on stable with `--sanitizer none` \
         (coverage-guided, debug assertions and overflow checks on, no AddressSanitizer)"
    );
    Ok(Toolchain {
        cargo_prefix: vec![],
        fuzz_options: vec!["--sanitizer", "none"],
        label: "stable, no sanitizer",
    })
}

fn ensure_cargo_fuzz() -> Result<()> {
    let present = Command::new(cargo_bin())
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if present {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz (cargo install cargo-fuzz --locked)");
    let status = Command::new(cargo_bin())
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("running cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("`cargo install cargo-fuzz --locked` failed ({status})");
    }
    Ok(())
}

/// What libFuzzer said at the end of one run.
#[derive(Default)]
struct Stats {
    runs: Option<String>,
    execs_per_sec: Option<String>,
    peak_rss_mb: Option<String>,
    corpus: Option<String>,
}

impl Stats {
    fn read(&mut self, line: &str) {
        let stat = |name: &str| {
            line.strip_prefix(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if let Some(v) = stat("stat::number_of_executed_units:") {
            self.runs = Some(v);
        } else if let Some(v) = stat("stat::average_exec_per_sec:") {
            self.execs_per_sec = Some(v);
        } else if let Some(v) = stat("stat::peak_rss_mb:") {
            self.peak_rss_mb = Some(v);
        } else if let Some(rest) = line.split_once(" corp: ").map(|(_, r)| r) {
            // "#1234  pulse  cov: 567 ft: 890 corp: 45/6789b ..."
            self.corpus = rest.split_whitespace().next().map(str::to_string);
        }
    }
}

/// Crash, leak, timeout or OOM inputs libFuzzer wrote for `target` since `since`.
fn new_artifacts(dir: &Path, since: SystemTime) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since)
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

pub fn run(root: &Path, args: &FuzzArgs) -> Result<()> {
    let targets: Vec<String> = if args.targets.is_empty() {
        TARGETS.iter().map(|t| t.to_string()).collect()
    } else {
        args.targets.clone()
    };
    for t in &targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!(
                "no fuzz target {t:?}; the targets are: {}",
                TARGETS.join(", ")
            );
        }
    }
    if args.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    ensure_cargo_fuzz()?;
    let tc = toolchain(args.require_nightly)?;
    let fuzz_dir = root.join("fuzz");

    // One build of every target first, so each run's time is spent fuzzing.
    let mut build = Command::new(cargo_bin());
    build
        .current_dir(root)
        .args(&tc.cargo_prefix)
        .args(["fuzz", "build"])
        .args(&tc.fuzz_options);
    eprintln!("xtask: building the fuzz targets ({})", tc.label);
    let status = build.status().context("running cargo fuzz build")?;
    if !status.success() {
        bail!("{build:?} failed ({status})");
    }

    let mut failures = Vec::new();
    let mut summary = Vec::new();
    for target in &targets {
        let work = fuzz_dir.join("target").join("corpus").join(target);
        let seeds = fuzz_dir.join("corpus").join(target);
        let artifacts = fuzz_dir.join("artifacts").join(target);
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let mut cmd = Command::new(cargo_bin());
        cmd.current_dir(root)
            .args(&tc.cargo_prefix)
            .args(["fuzz", "run"])
            .args(&tc.fuzz_options)
            .arg(target)
            .arg(&work)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={}", args.seconds))
            .arg("-rss_limit_mb=2048")
            .arg("-timeout=60")
            .arg("-print_final_stats=1")
            .env("RUST_BACKTRACE", "1")
            .stderr(Stdio::piped());
        eprintln!(
            "xtask: fuzzing {target} for {} s ({}; new inputs in {})",
            args.seconds,
            tc.label,
            work.display()
        );
        let started = SystemTime::now();
        let t0 = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        let mut stats = Stats::default();
        if let Some(stderr) = child.stderr.take() {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("{line}");
                stats.read(&line);
            }
        }
        let status = child.wait().context("waiting for cargo fuzz run")?;
        let took = t0.elapsed().as_secs();
        let line = format!(
            "{target}: {} runs in {took} s ({} exec/s, peak RSS {} MB, corpus {})",
            stats.runs.as_deref().unwrap_or("?"),
            stats.execs_per_sec.as_deref().unwrap_or("?"),
            stats.peak_rss_mb.as_deref().unwrap_or("?"),
            stats.corpus.as_deref().unwrap_or("?"),
        );
        if status.success() {
            summary.push(format!("ok    {line}"));
            continue;
        }
        let crashes = new_artifacts(&artifacts, started);
        let inputs = if crashes.is_empty() {
            format!(
                "no new input in {} (see the output above)",
                artifacts.display()
            )
        } else {
            crashes
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        summary.push(format!("CRASH {line}: {inputs}"));
        let plus = tc.cargo_prefix.join(" ");
        let opts = tc.fuzz_options.join(" ");
        failures.push(format!(
            "fuzz target {target} failed ({status}); crash input written to: {inputs}\n  \
             reproduce: cargo {plus} fuzz run {opts} {target} <input>\n  \
             minimise:  cargo {plus} fuzz tmin {opts} {target} <input>"
        ));
    }
    eprintln!("xtask: fuzzing summary ({}):", tc.label);
    for s in &summary {
        eprintln!("  {s}");
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}

/// rustup's `cargo` proxy, which understands `+nightly` (`$CARGO`, set when xtask runs
/// under cargo, is one toolchain's own cargo, which does not).
fn cargo_bin() -> &'static str {
    "cargo"
}
