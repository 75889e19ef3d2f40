//! `cargo xtask bench`: the gateway measured against direct connections to the same upstream,
//! side by side in one run (docs/design.md, "Performance"), printed as a table and written as JSON
//! for comparison between commits (`cargo xtask bench --compare OLD.json NEW.json`).
//!
//! Per scenario: an upstream MCP server (`mcp-bench-client serve`, rmcp, TCP_NODELAY), for
//! the mediated ones a daemon with a generated config, and the load client
//! (`mcp-bench-client`), run directly or through `mcp-gateway exec` as an agent. The client
//! reads the CPU time of the daemon and the upstream over its timed windows; xtask reads the
//! daemon's RSS.

mod json;
mod procs;
mod report;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use json::{obj, Json};
use procs::{Client, Daemon, Env, GatewayConfig};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// About a minute instead of about five: shorter timed windows, fewer new connections
    /// (the numbers are noisier).
    #[arg(long)]
    quick: bool,
    /// Compare two result files instead of measuring: every metric, old → new, with
    /// regressions flagged.
    #[arg(long, num_args = 2, value_names = ["OLD", "NEW"])]
    compare: Option<Vec<PathBuf>>,
    /// With --compare: changes smaller than this many percent are not flagged.
    #[arg(long, default_value_t = 10.0)]
    threshold: f64,
    /// Only these scenarios (comma-separated: direct, relay, http-relay, gateway, full-always,
    /// full-batch, full-none, direct-tls, gateway-tls, stdio-direct, stdio-gateway); their
    /// direct baselines run too.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Write the JSON here instead of target/bench/bench-<git sha>-<date>.json.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Bytes of text each `echo` call carries (both ways).
    #[arg(long, default_value_t = 128)]
    text_bytes: usize,
    /// Run the chosen scenarios this many times, in turn (one of each, then again), and
    /// report each metric's median: on a noisy machine the host's load drifts over minutes,
    /// and taking turns spreads that drift over every column alike. With an even count the
    /// lower of the two middle values is taken: an odd count gives a true median.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=9))]
    rounds: u32,
    /// Keep each scenario's files (generated configs, daemon and upstream logs, audit
    /// ledgers) in target/bench/bench-<pid>/ instead of removing them.
    #[arg(long)]
    keep: bool,
    /// Count what a call costs the process in the middle (relay, HTTP relay or daemon) in
    /// instructions, under valgrind's callgrind, instead of timing it: exact, and the same
    /// from run to run on a machine whose CPU time per call drifts twofold; with the misses
    /// of callgrind's simulated first-level caches, which say why time grows faster than
    /// instructions. Runs relay,
    /// http-relay, gateway and full-none unless --only names others (the TCP ones with a
    /// process in the middle); installs valgrind when missing.
    #[arg(long)]
    instructions: bool,
    /// Serve the daemon's agent connections on this many worker threads
    /// (`listener.workers`) instead of its default, to measure which count a machine does
    /// best with.
    #[arg(long)]
    workers: Option<usize>,
    /// The binaries are built already (set when xtask re-runs itself through sudo).
    #[arg(long, hide = true)]
    prebuilt: bool,
    /// The binaries in this directory instead of target/release (`cargo xtask pgo`'s
    /// instrumented ones).
    #[arg(long, hide = true)]
    bins: Option<PathBuf>,
    /// What the release build was optimised with (set when xtask re-runs itself through
    /// sudo, which drops MCP_GATEWAY_PGO).
    #[arg(long, hide = true)]
    built_with: Option<String>,
}

#[derive(Clone, Copy)]
struct Scenario {
    key: &'static str,
    title: &'static str,
    tls: bool,
    gateway: Option<GatewayConfig>,
    /// Through a relay instead (not as an agent): the floor of a userspace proxy.
    relay: Option<Relay>,
    /// A stdio server the client starts as its child, instead of the HTTP upstream.
    stdio: bool,
    /// The direct scenario of the same transport, for ratios.
    baseline: &'static str,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        key: "direct",
        title: "plain HTTP, straight to the upstream (not an agent)",
        tls: false,
        gateway: None,
        relay: None,
        stdio: false,
        baseline: "direct",
    },
    Scenario {
        key: "relay",
        title: "plain HTTP through a plain L4 relay (tokio copy_bidirectional, TCP_NODELAY; \
                not an agent): the floor of any userspace proxy",
        tls: false,
        gateway: None,
        relay: Some(Relay::L4),
        stdio: false,
        baseline: "direct",
    },
    Scenario {
        key: "http-relay",
        title: "plain HTTP through a minimal HTTP/1.1 reverse proxy (hyper both sides, bodies \
                streamed, nothing read or recorded; not an agent): what terminating HTTP alone \
                costs",
        tls: false,
        gateway: None,
        relay: Some(Relay::Http),
        stdio: false,
        baseline: "direct",
    },
    Scenario {
        key: "gateway",
        title: "plain HTTP through the gateway: policy audit-only, no redaction, no pins, \
                ledger sync=none",
        tls: false,
        gateway: Some(GatewayConfig::Plain),
        relay: None,
        stdio: false,
        baseline: "direct",
    },
    Scenario {
        key: "gateway-journald",
        title: "as gateway, and every record also sent to journald (journald = \"auto\", the \
                default where systemd runs; a stand-in that only receives)",
        tls: false,
        gateway: Some(GatewayConfig::Journald),
        relay: None,
        stdio: false,
        baseline: "direct",
    },
    Scenario {
        key: "full-always",
        title: "plain HTTP, policy enforced + redaction both ways + pins, ledger sync=always",
        tls: false,
        gateway: Some(GatewayConfig::Full("always")),
        relay: None,
        stdio: false,
        baseline: "direct",
    },
    Scenario {
        key: "full-batch",
        title: "as full-always, ledger sync=batch (10 ms)",
        tls: false,
        gateway: Some(GatewayConfig::Full("batch")),
        relay: None,
        stdio: false,
        baseline: "direct",
    },
    Scenario {
        key: "full-none",
        title: "as full-always, ledger sync=none",
        tls: false,
        gateway: Some(GatewayConfig::Full("none")),
        relay: None,
        stdio: false,
        baseline: "direct",
    },
    Scenario {
        key: "direct-tls",
        title: "HTTPS straight to the upstream",
        tls: true,
        gateway: None,
        relay: None,
        stdio: false,
        baseline: "direct-tls",
    },
    Scenario {
        key: "gateway-tls",
        title: "HTTPS through the gateway, TLS terminated (leaf from its CA), otherwise as gateway",
        tls: true,
        gateway: Some(GatewayConfig::Plain),
        relay: None,
        stdio: false,
        baseline: "direct-tls",
    },
    Scenario {
        key: "stdio-direct",
        title: "stdio: the client starts the server as its child and talks over pipes (not \
                an agent)",
        tls: false,
        gateway: None,
        relay: None,
        stdio: true,
        baseline: "stdio-direct",
    },
    Scenario {
        key: "stdio-gateway",
        title: "stdio through the gateway: the client started by mcp-gateway exec, its server \
                mediated; policy audit-only, no redaction, no pins, ledger sync=none",
        tls: false,
        gateway: Some(GatewayConfig::Plain),
        relay: None,
        stdio: true,
        baseline: "stdio-direct",
    },
];

impl Scenario {
    /// Whether `--instructions` can count it: a process (relay or daemon) in the middle of
    /// a TCP path.
    fn countable(&self) -> bool {
        !self.stdio && (self.gateway.is_some() || self.relay.is_some())
    }
}

/// What `--instructions` counts unless --only says otherwise.
const INSTRUCTION_SCENARIOS: [&str; 4] = ["relay", "http-relay", "gateway", "full-none"];

/// What a relay scenario puts between the client and the upstream.
#[derive(Clone, Copy, PartialEq)]
enum Relay {
    /// Bytes copied both ways (tokio `copy_bidirectional`).
    L4,
    /// HTTP/1.1 terminated on both sides (hyper), bodies streamed.
    Http,
}

/// How long and how much, full or --quick.
struct Params {
    latency_seconds: f64,
    latency_warmup: usize,
    load_connections: usize,
    load_seconds: f64,
    load_warmup: usize,
    new_connections: usize,
    new_connection_seconds: f64,
    sessions: usize,
    session_connections: usize,
    text_bytes: usize,
    /// `--instructions`: the timed window under callgrind (a call is some 50 times slower
    /// there; a window holds a thousand calls or more).
    instruction_seconds: f64,
    /// `--instructions`: new connections counted (some 10 ms each there).
    counted_connections: usize,
}

impl Params {
    fn new(quick: bool, text_bytes: usize) -> Params {
        Params {
            latency_seconds: if quick { 2.0 } else { 10.0 },
            latency_warmup: if quick { 100 } else { 500 },
            load_connections: 16,
            load_seconds: if quick { 3.0 } else { 12.0 },
            load_warmup: if quick { 10 } else { 50 },
            new_connections: if quick { 150 } else { 500 },
            new_connection_seconds: if quick { 2.0 } else { 6.0 },
            sessions: 1000,
            session_connections: 8,
            text_bytes,
            instruction_seconds: if quick { 4.0 } else { 8.0 },
            counted_connections: if quick { 100 } else { 200 },
        }
    }

    fn json(&self) -> Json {
        obj([
            ("latency_seconds", self.latency_seconds.into()),
            ("latency_warmup_calls", (self.latency_warmup as f64).into()),
            ("load_connections", (self.load_connections as f64).into()),
            ("load_seconds", self.load_seconds.into()),
            (
                "load_warmup_calls_per_conn",
                (self.load_warmup as f64).into(),
            ),
            ("new_connections", (self.new_connections as f64).into()),
            ("new_connection_seconds", self.new_connection_seconds.into()),
            ("instruction_seconds", self.instruction_seconds.into()),
            // Counts made with callgrind's cache simulation (from 626704a), which slows
            // the process in the middle: the L4 relay's instructions a call depend on it.
            ("instruction_cache_sim", true.into()),
            (
                "counted_connections",
                (self.counted_connections as f64).into(),
            ),
            ("sessions", (self.sessions as f64).into()),
            (
                "session_connections",
                (self.session_connections as f64).into(),
            ),
            ("text_bytes", (self.text_bytes as f64).into()),
        ])
    }
}

pub fn run(root: &Path, args: BenchArgs) -> Result<()> {
    if let Some(files) = &args.compare {
        return report::compare(&files[0], &files[1], args.threshold);
    }
    for key in &args.only {
        if !SCENARIOS.iter().any(|s| s.key == key) {
            bail!(
                "--only: no scenario {key:?}; the scenarios are {}",
                SCENARIOS
                    .iter()
                    .map(|s| s.key)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    if args.instructions {
        for key in &args.only {
            let s = SCENARIOS
                .iter()
                .find(|s| s.key == key)
                .expect("checked above");
            if !s.countable() {
                bail!(
                    "--instructions: {key:?} has no process in the middle over TCP to count; \
                     choose from {}",
                    SCENARIOS
                        .iter()
                        .filter(|s| s.countable())
                        .map(|s| s.key)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    }
    // What the build uses, found once (the build's note, the profile's hash); the child
    // through sudo is told.
    let using = (args.bins.is_none() && args.built_with.is_none())
        .then(|| super::pgo::release(root))
        .transpose()?;
    let built_with = match (&args.bins, &args.built_with, &using) {
        (Some(_), ..) => "instrumented".to_string(),
        (None, Some(label), _) => label.clone(),
        (None, None, u) => u.as_ref().map_or_else(String::new, super::pgo::Use::label),
    };
    if !args.prebuilt {
        super::ensure_deps()?;
        match &using {
            Some(u) => build(u)?,
            None => build(&super::pgo::release(root)?)?,
        }
    }
    if !super::is_root() {
        // The daemon loads eBPF and the client joins an agent cgroup: both need root. The
        // build above stayed the caller's.
        eprintln!("xtask: running the bench through sudo (eBPF, cgroups)");
        let exe = std::env::current_exe().context("finding the xtask binary")?;
        let status = Command::new("sudo")
            .arg(exe)
            .args(std::env::args_os().skip(1))
            .args((!args.prebuilt).then_some("--prebuilt"))
            .args(
                args.built_with
                    .is_none()
                    .then(|| ["--built-with".to_string(), built_with.clone()])
                    .into_iter()
                    .flatten(),
            )
            .status()
            .context("running sudo")?;
        if !status.success() {
            bail!("the bench failed ({status})");
        }
        return Ok(());
    }

    if args.instructions && !super::runs("callgrind_control", &["--version"]) {
        super::apt_install(&["valgrind"])?;
    }
    let params = Params::new(args.quick, args.text_bytes);
    let chosen: Vec<Scenario> = SCENARIOS
        .iter()
        .filter(|s| {
            if args.instructions {
                // Nothing of a baseline is counted: only the middle process is.
                return match args.only.is_empty() {
                    true => INSTRUCTION_SCENARIOS.contains(&s.key),
                    false => args.only.iter().any(|k| k == s.key),
                };
            }
            args.only.is_empty()
                || args.only.iter().any(|k| k == s.key)
                || SCENARIOS
                    .iter()
                    .any(|o| o.baseline == s.key && args.only.iter().any(|k| k == o.key))
        })
        .copied()
        .collect();
    let target = root.join("target");
    eprintln!("bench: the release build's optimisation profile: {built_with}");
    let mut env = Env::new(&target, args.bins.as_deref())?;
    env.callgrind = args.instructions;
    env.workers = args.workers;
    let mut machine = machine();
    // What one fdatasync of a small append costs where the ledgers are written: the
    // `sync = "always"` target allows one on top of what the relay adds.
    machine.set("fdatasync_p50_us", fdatasync_p50_us(&env.work)?.into());
    let started = Instant::now();
    let mut runs: Vec<Vec<Result<(Metrics, Json), String>>> = vec![Vec::new(); chosen.len()];
    let mut failed = 0;
    for round in 1..=args.rounds {
        for (s, runs) in chosen.iter().zip(&mut runs) {
            eprintln!(
                "bench: {:<12} ({:>3.0} s{}) {}",
                s.key,
                started.elapsed().as_secs_f64(),
                if args.rounds > 1 {
                    format!(", round {round}/{}", args.rounds)
                } else {
                    String::new()
                },
                s.title
            );
            runs.push(run_scenario(&env, s, &params, round).map_err(|e| {
                failed += 1;
                eprintln!("bench: {} failed: {e:#}", s.key);
                format!("{e:#}")
            }));
        }
    }
    let scenarios: Vec<_> = chosen
        .iter()
        .zip(runs)
        .map(|(s, runs)| {
            let (metrics, raw, error) = medians(runs, args.rounds > 1);
            (s, metrics, raw, error)
        })
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    env.cleanup(args.keep);
    machine.set("loadavg_end", loadavg().into());

    // What the gateway adds over the direct run of the same transport.
    let value = |key: &str, metric: &str| -> Option<f64> {
        scenarios
            .iter()
            .find(|(s, ..)| s.key == key)
            .and_then(|(_, m, ..)| m.iter().find(|(k, _)| *k == metric).map(|(_, v)| *v))
    };
    let mut added = Vec::new();
    for (s, m, ..) in &scenarios {
        if s.baseline == s.key {
            added.push(Vec::new());
            continue;
        }
        let mut extra = Vec::new();
        for (metric, from) in [
            ("p50_added_us", "p50_us"),
            ("new_conn_added_us", "new_conn_p50_us"),
            ("exec_added_us", "exec_p50_us"),
        ] {
            let here = m.iter().find(|(k, _)| *k == from).map(|(_, v)| *v);
            if let (Some(h), Some(b)) = (here, value(s.baseline, from)) {
                extra.push((metric, h - b));
            }
        }
        added.push(extra);
    }

    let (sha, dirty) = git_head(root);
    let (date_iso, date_file) = now_utc();
    let result = obj([
        ("schema", 1.0.into()),
        ("tool", "cargo xtask bench".into()),
        (
            "git",
            obj([("sha", sha.clone().into()), ("dirty", dirty.into())]),
        ),
        ("date", date_iso.into()),
        ("quick", args.quick.into()),
        ("rounds", f64::from(args.rounds).into()),
        ("seconds", elapsed.into()),
        ("machine", machine),
        ("params", params.json()),
        // The profile the release build used (its hash), or why none (pgo.rs).
        ("pgo", built_with.into()),
        // The worker count the daemons started with (from their log; null when no daemon
        // ran): --workers, or the daemon's default on this machine.
        (
            "workers",
            env.workers_seen
                .get()
                .map_or(Json::Null, |w| f64::from(w).into()),
        ),
        (
            "scenarios",
            Json::Arr(
                scenarios
                    .iter()
                    .zip(&added)
                    .map(|((s, m, raw, error), extra)| {
                        let mut metrics: Vec<(String, Json)> = Vec::new();
                        // In the table's order, then whatever else was measured.
                        for def in report::METRICS {
                            if let Some((_, v)) = m.iter().chain(extra).find(|(k, _)| *k == def.key)
                            {
                                metrics.push((def.key.to_string(), (*v).into()));
                            }
                        }
                        for (k, v) in m {
                            if !metrics.iter().any(|(mk, _)| mk == k) {
                                metrics.push((k.to_string(), (*v).into()));
                            }
                        }
                        obj([
                            ("key", s.key.into()),
                            ("title", s.title.into()),
                            ("tls", s.tls.into()),
                            ("mediated", s.gateway.is_some().into()),
                            ("baseline", s.baseline.into()),
                            ("error", error.clone().into()),
                            ("metrics", Json::Obj(metrics)),
                            ("raw", raw.clone()),
                        ])
                    })
                    .collect(),
            ),
        ),
    ]);

    let out = args.out.clone().unwrap_or_else(|| {
        target
            .join("bench")
            .join(format!("bench-{sha}-{date_file}.json"))
    });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, result.pretty()).with_context(|| format!("writing {}", out.display()))?;
    give_back(&out);

    println!();
    if args.instructions {
        report::print_instructions(&result);
    } else {
        report::print_table(&result);
        report::print_targets(&result);
    }
    println!(
        "\n{} ({:.0} s{}). Compare runs with `cargo xtask bench --compare OLD.json NEW.json`.",
        out.display(),
        elapsed,
        if args.quick { ", --quick" } else { "" }
    );
    if failed > 0 {
        bail!("{failed} scenario run(s) failed");
    }
    Ok(())
}

/// The cargo command of the bench's release build.
pub const BUILD: [&str; 7] = [
    "build",
    "--release",
    "-p",
    "gateway-daemon",
    "-p",
    "gateway-tests",
    "--bins",
];

/// The release build the bench runs: the daemon with the profile (`pgo.rs`), and the
/// client, upstream and relays in the same build, so that the code they share with it
/// (hyper, tokio, rustls) is compiled alike.
fn build(using: &super::pgo::Use) -> Result<()> {
    let mut cmd = Command::new(super::cargo_bin());
    super::pgo::apply(&mut cmd, using);
    let status = cmd.args(BUILD).status().context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed", BUILD.join(" "));
    }
    Ok(())
}

type Metrics = Vec<(&'static str, f64)>;

/// One scenario's rounds made one: each metric's median over the rounds that measured it
/// (the lower middle of an even count), every round's raw output (just the one without
/// rounds), and the first failure, if any round failed.
fn medians(
    runs: Vec<Result<(Metrics, Json), String>>,
    rounds: bool,
) -> (Metrics, Json, Option<String>) {
    let error = runs.iter().find_map(|r| r.as_ref().err().cloned());
    let ok: Vec<(Metrics, Json)> = runs.into_iter().filter_map(Result::ok).collect();
    let mut metrics: Metrics = Vec::new();
    for (key, _) in ok.iter().flat_map(|(m, _)| m) {
        if metrics.iter().any(|(k, _)| k == key) {
            continue;
        }
        let mut values: Vec<f64> = ok
            .iter()
            .filter_map(|(m, _)| m.iter().find(|(k, _)| k == key).map(|(_, v)| *v))
            .collect();
        values.sort_by(f64::total_cmp);
        metrics.push((key, values[(values.len() - 1) / 2]));
    }
    let mut raws: Vec<Json> = ok.into_iter().map(|(_, raw)| raw).collect();
    let raw = match (rounds, raws.len()) {
        (false, 1) => raws.remove(0),
        (false, _) => Json::Obj(Vec::new()),
        (true, _) => Json::Arr(raws),
    };
    (metrics, raw, error)
}

fn run_scenario(env: &Env, s: &Scenario, p: &Params, round: u32) -> Result<(Metrics, Json)> {
    // A directory per round: a round's daemon starts without another's pins and ledger.
    let dir = match round {
        1 => env.work.join(s.key),
        n => env.work.join(format!("{}-r{n}", s.key)),
    };
    std::fs::create_dir_all(&dir)?;
    if s.stdio {
        return run_stdio(env, s, p, &dir);
    }
    let port = procs::free_port()?;
    let upstream = procs::upstream(env, &dir, port, s.tls)?;
    let daemon = match s.gateway {
        Some(config) => Some(Daemon::start(env, &dir, s.key, port, s.tls, false, config)?),
        None => None,
    };
    // The client dials the relay, which dials the upstream.
    let (relay, dial) = match s.relay {
        Some(kind) => {
            let at = procs::free_port()?;
            let http = kind == Relay::Http;
            (Some(procs::relay(env, &dir, at, port, http)?), at)
        }
        None => (None, port),
    };
    let middle = daemon
        .as_ref()
        .map(Daemon::pid)
        .or(relay.as_ref().map(procs::Proc::pid));
    let result = match (env.callgrind, middle) {
        (true, Some(pid)) => count_instructions(env, s, p, dial, daemon.as_ref(), pid, &dir),
        _ => measure(env, s, p, dial, &upstream, daemon.as_ref(), middle),
    };
    drop(relay);
    let result = match (result, &daemon) {
        (Err(e), Some(d)) => Err(e.context(format!("daemon log (tail):\n{}", d.log()))),
        (r, _) => r,
    };
    if let Some(d) = daemon {
        if let Some(n) = d.workers() {
            env.workers_seen.set(Some(n));
        }
        d.stop()?;
    }
    drop(upstream);
    result
}

fn measure(
    env: &Env,
    s: &Scenario,
    p: &Params,
    port: u16,
    upstream: &procs::Proc,
    daemon: Option<&Daemon>,
    // What sits between the client and the upstream (the daemon, or the relay): its CPU is
    // what a call costs on the way.
    middle: Option<u32>,
) -> Result<(Metrics, Json)> {
    let mut args = target_args(env, s, p, port, daemon);
    args.extend(["--watch".into(), upstream.pid().to_string()]);
    if let Some(pid) = middle {
        args.extend(["--watch".into(), pid.to_string()]);
    }
    let client = Client {
        env,
        mediated: daemon.is_some(),
        config: None,
        args,
    };
    let mut m: Metrics = Vec::new();
    let mut raw = Vec::new();
    let rss = |field: &str| -> Result<Option<f64>> {
        daemon
            .map(|d| procs::status_kib(d.pid(), field))
            .transpose()
    };

    // Memory first, on the fresh daemon: idle, then holding 1000 sessions (over a few
    // connections), all of it counted against the sessions. They are ended (DELETE) before
    // the timed runs.
    if daemon.is_some() {
        std::thread::sleep(Duration::from_millis(300));
        let idle = rss("VmRSS")?.unwrap_or(0.0);
        m.push(("rss_idle_mib", idle / 1024.0));
        let (count, conns) = (p.sessions.to_string(), p.session_connections.to_string());
        let mut held = client.spawn(&["sessions", "--count", &count, "--connections", &conns])?;
        let open = held.next()?;
        let opened = open.get("sessions").num().unwrap_or(0.0);
        if opened != p.sessions as f64 {
            bail!(
                "only {opened} of {} sessions opened: {}",
                p.sessions,
                open.get("first_error").str().unwrap_or("?")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
        let with = rss("VmRSS")?.unwrap_or(0.0);
        held.finish()?;
        m.push(("rss_sessions_mib", with / 1024.0));
        m.push(("rss_per_session_kib", (with - idle) / p.sessions as f64));
        raw.push(("sessions".to_string(), open));
    }

    let cpu_per_10k = |run: &Json, pid: u32| -> Option<f64> {
        let calls = run.get("calls").num()?;
        let cpu = run.get("cpu_s").get(&pid.to_string()).num()?;
        (calls > 0.0).then(|| cpu / calls * 10_000.0)
    };

    let one = client.load(1, p.latency_seconds, p.latency_warmup, &[])?;
    m.push(("p50_us", num(&one, "latency.p50_us")?));
    m.push(("p99_us", num(&one, "latency.p99_us")?));
    m.push(("calls_per_s_1", num(&one, "calls_per_s")?));
    if let Some(c) = middle.and_then(|pid| cpu_per_10k(&one, pid)) {
        m.push(("cpu_s_per_10k_1", c));
    }
    if let Some(c) = cpu_per_10k(&one, upstream.pid()) {
        m.push(("upstream_cpu_s_per_10k_1", c));
    }
    raw.push(("load_1".to_string(), one));

    let many = client.load(p.load_connections, p.load_seconds, p.load_warmup, &[])?;
    m.push(("calls_per_s_16", num(&many, "calls_per_s")?));
    m.push(("p50_us_16", num(&many, "latency.p50_us")?));
    m.push(("p99_us_16", num(&many, "latency.p99_us")?));
    if let Some(c) = middle.and_then(|pid| cpu_per_10k(&many, pid)) {
        m.push(("cpu_s_per_10k_16", c));
    }
    if let Some(c) = cpu_per_10k(&many, upstream.pid()) {
        m.push(("upstream_cpu_s_per_10k_16", c));
    }
    raw.push(("load_16".to_string(), many));

    let count = p.new_connections.to_string();
    let max = p.new_connection_seconds.to_string();
    let conn = client.run(&["connect", "--count", &count, "--max-seconds", &max])?;
    m.push(("new_conn_p50_us", num(&conn, "connect_initialize.p50_us")?));
    m.push(("new_conn_p99_us", num(&conn, "connect_initialize.p99_us")?));
    m.push(("connect_p50_us", num(&conn, "connect.p50_us")?));
    raw.push(("connect".to_string(), conn));
    if daemon.is_some() {
        m.push(("rss_peak_mib", rss("VmHWM")?.unwrap_or(0.0) / 1024.0));
    }

    Ok((m, Json::Obj(raw)))
}

/// What the client dials, and how (TLS trusting whom).
fn target_args(
    env: &Env,
    s: &Scenario,
    p: &Params,
    port: u16,
    daemon: Option<&Daemon>,
) -> Vec<String> {
    let mut args = vec![
        "--addr".to_string(),
        format!("127.0.0.1:{port}"),
        "--text-bytes".into(),
        p.text_bytes.to_string(),
    ];
    if s.tls {
        // Direct, the client trusts the upstream's CA; as an agent, only the gateway's.
        let ca = match daemon {
            Some(d) => d.dir.join("ca.pem"),
            None => env.ca.clone(),
        };
        args.extend([
            "--tls-name".into(),
            "localhost".into(),
            "--ca".into(),
            ca.display().to_string(),
        ]);
    }
    args
}

/// `--instructions`: the calls of 16 kept-alive connections, with callgrind counting in the
/// middle process `pid` for exactly the timed window; instructions per call. Then new
/// connections (connect, initialize, DELETE, close), counted from the first connect to the
/// last close; instructions per connection.
fn count_instructions(
    env: &Env,
    s: &Scenario,
    p: &Params,
    port: u16,
    daemon: Option<&Daemon>,
    pid: u32,
    dir: &Path,
) -> Result<(Metrics, Json)> {
    let client = Client {
        env,
        mediated: daemon.is_some(),
        config: None,
        args: target_args(env, s, p, port, daemon),
    };
    let run = client.load(
        p.load_connections,
        p.instruction_seconds,
        20,
        &["--callgrind", &pid.to_string()],
    )?;
    let calls = num(&run, "calls")?;
    if calls < 1.0 {
        bail!("no call completed under callgrind: {}", run.pretty());
    }
    let calls_counted = procs::callgrind_counts(pid, dir, 1)?;
    let count = p.counted_connections.to_string();
    let conn = client.run(&[
        "connect",
        "--count",
        &count,
        "--max-seconds",
        "120",
        "--callgrind",
        &pid.to_string(),
    ])?;
    let opened = num(&conn, "count")?;
    if opened < 1.0 || num(&conn, "errors")? > 0.0 {
        bail!("new connections failed under callgrind: {}", conn.pretty());
    }
    let conns_counted = procs::callgrind_counts(pid, dir, 2)?;
    let (c, n) = (calls_counted, conns_counted);
    let m: Metrics = vec![
        ("instructions_per_call_16", c.instructions.total / calls),
        (
            "instructions_per_call_16_no_sha",
            c.instructions.own() / calls,
        ),
        ("i1_misses_per_call_16_no_sha", c.i1_misses.own() / calls),
        ("d1_misses_per_call_16_no_sha", c.d1_misses.own() / calls),
        ("calls_counted", calls),
        ("instructions_per_connection", n.instructions.total / opened),
        (
            "instructions_per_connection_no_sha",
            n.instructions.own() / opened,
        ),
        (
            "i1_misses_per_connection_no_sha",
            n.i1_misses.own() / opened,
        ),
        (
            "d1_misses_per_connection_no_sha",
            n.d1_misses.own() / opened,
        ),
        ("connections_counted", opened),
        ("i1_cache_bytes", c.i1_bytes),
        ("d1_cache_bytes", c.d1_bytes),
    ];
    Ok((m, obj([("load_16", run), ("connect", conn)])))
}

/// A stdio scenario: the client starts `mcp-bench-client stdio-serve` as its server, straight
/// or as an agent of a daemon that mediates it; calls on one server, then program starts
/// (each one shown to the daemon first when mediated).
fn run_stdio(env: &Env, s: &Scenario, p: &Params, dir: &Path) -> Result<(Metrics, Json)> {
    let daemon = match s.gateway {
        Some(config) => Some(Daemon::start(
            env,
            dir,
            s.key,
            procs::free_port()?,
            false,
            true,
            config,
        )?),
        None => None,
    };
    let mut args = Vec::new();
    if let Some(d) = &daemon {
        args.extend(["--watch".to_string(), d.pid().to_string()]);
    }
    args.extend(["--text-bytes".to_string(), p.text_bytes.to_string()]);
    let client = Client {
        env,
        mediated: daemon.is_some(),
        config: daemon.as_ref().map(|d| d.dir.join("gateway.toml")),
        args,
    };
    let (secs, warm) = (p.latency_seconds.to_string(), p.latency_warmup.to_string());
    let server = format!("{} stdio-serve", env.client.display());
    let run = client.run(&[
        "stdio-load",
        "--seconds",
        &secs,
        "--warmup",
        &warm,
        "--execs",
        "300",
        "--server",
        &server,
    ]);
    let run = match (run, &daemon) {
        (Err(e), Some(d)) => Err(e.context(format!("daemon log (tail):\n{}", d.log()))),
        (r, _) => r,
    };
    let result = run.and_then(|one| {
        let mut m: Metrics = Vec::new();
        m.push(("p50_us", num(&one, "latency.p50_us")?));
        m.push(("p99_us", num(&one, "latency.p99_us")?));
        m.push(("calls_per_s_1", num(&one, "calls_per_s")?));
        if let Some(d) = &daemon {
            let calls = num(&one, "calls")?;
            let cpu = one.get("cpu_s").get(&d.pid().to_string()).num();
            if let Some(cpu) = cpu.filter(|_| calls > 0.0) {
                m.push(("cpu_s_per_10k_1", cpu / calls * 10_000.0));
            }
        }
        m.push(("exec_p50_us", num(&one, "exec.p50_us")?));
        m.push(("exec_p99_us", num(&one, "exec.p99_us")?));
        Ok((m, obj([("load_1", one)])))
    });
    if let Some(d) = daemon {
        d.stop()?;
    }
    result
}

fn num(v: &Json, path: &str) -> Result<f64> {
    v.at(path)
        .num()
        .with_context(|| format!("no {path} in the client's output {}", v.pretty()))
}

/// Cores, kernel, CPU model, memory, load: what makes two runs comparable or not.
/// The median time of an fdatasync after appending one ledger-sized line, in `dir`.
fn fdatasync_p50_us(dir: &Path) -> Result<f64> {
    use std::io::Write;
    let path = dir.join("fdatasync-probe");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let line = [b'x'; 700];
    let mut times = Vec::with_capacity(200);
    for _ in 0..200 {
        f.write_all(&line)?;
        let t = Instant::now();
        f.sync_data()?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn machine() -> Json {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            matches!(k.trim(), "model name" | "Model" | "Hardware").then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mem_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
    });
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as f64)
        .unwrap_or(0.0);
    let rustc = Command::new("rustc")
        .arg("-V")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    obj([
        ("cores", cores.into()),
        ("cpu", cpu.into()),
        ("kernel", kernel.into()),
        ("mem_mib", mem_kib.map(|k| (k / 1024.0).round()).into()),
        ("rustc", rustc.into()),
        ("loadavg_start", loadavg().into()),
    ])
}

/// The 1, 5 and 15 minute load averages: a busy machine makes a noisy bench.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn git_head(root: &Path) -> (String, bool) {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(["-c", "safe.directory=*", "-C"])
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let sha = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    (sha, dirty)
}

/// Now in UTC: ISO 8601, and `YYYYmmdd-HHMMSS` for a file name.
fn now_utc() -> (String, String) {
    // SAFETY: time and gmtime_r write only to the struct we pass.
    let tm = unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::gmtime_r(&t, &mut tm);
        tm
    };
    let (y, mo, d, h, mi, s) = (
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
    );
    (
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"),
        format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}"),
    )
}

/// Run through sudo, hands the result (and target/bench) back to the calling user.
fn give_back(file: &Path) {
    let ids = std::env::var("SUDO_UID")
        .ok()
        .zip(std::env::var("SUDO_GID").ok())
        .and_then(|(u, g)| Some((u.parse::<u32>().ok()?, g.parse::<u32>().ok()?)));
    let Some((uid, gid)) = ids else { return };
    for path in [file.parent(), Some(file)].into_iter().flatten() {
        if let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid C string; chown has no other preconditions.
            unsafe { libc::chown(c.as_ptr(), uid, gid) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_give_each_metric_its_median_and_keep_a_failure() {
        let round = |p50: f64, cpu: Option<f64>| {
            let mut m: Metrics = vec![("p50_us", p50)];
            m.extend(cpu.map(|c| ("cpu_s_per_10k_1", c)));
            Ok((m, Json::from(p50)))
        };
        let (m, raw, error) = medians(
            vec![
                round(300.0, Some(1.0)),
                round(100.0, Some(3.0)),
                Err("the daemon died".to_string()),
                round(200.0, None),
            ],
            true,
        );
        assert_eq!(m, vec![("p50_us", 200.0), ("cpu_s_per_10k_1", 1.0)]);
        assert_eq!(raw.arr().len(), 3);
        assert_eq!(error.as_deref(), Some("the daemon died"));

        let (m, raw, error) = medians(vec![round(150.0, None)], false);
        assert_eq!(m, vec![("p50_us", 150.0)]);
        assert_eq!(raw.num(), Some(150.0));
        assert_eq!(error, None);
    }
}
