//! mcp-gateway: a transparent host firewall for MCP traffic.

mod allocator;
#[macro_use]
mod out;

mod approvals_cli;
mod audit_cli;
mod pins_cli;
mod status_cli;
mod top_cli;

use gateway_daemon::{
    admin, admit, approvals, audit, config, exec, intercept, listen, mcp, metrics, pins, policy,
    tls,
};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};

const DEFAULT_CONFIG: &str = "/etc/mcp-gateway/mcp-gateway.toml";
/// Where every command reads the config from when `--config` is not given.
const CONFIG_ENV: &str = "MCP_GATEWAY_CONFIG";

#[derive(Parser)]
#[command(
    name = "mcp-gateway",
    version,
    about = "Transparent eBPF-assisted firewall for MCP traffic",
    after_help = "Every command reads its config from --config, else from $MCP_GATEWAY_CONFIG, \
                  else from /etc/mcp-gateway/mcp-gateway.toml."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the eBPF programs and mediate agent connections.
    Run {
        #[arg(long, short, env = CONFIG_ENV, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Run a command inside an agent cgroup (created when missing).
    Exec {
        /// cgroup path relative to the cgroup2 mount; defaults to the config's first
        /// agents.cgroups entry.
        #[arg(long)]
        cgroup: Option<String>,
        /// The daemon's config (default /etc/mcp-gateway/mcp-gateway.toml): its stdio
        /// servers, if any, are mediated for the command and everything it starts.
        #[arg(long, short, env = CONFIG_ENV)]
        config: Option<PathBuf>,
        /// Run the command as this user (name or uid), after joining the cgroup.
        #[arg(long)]
        user: Option<String>,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// Detach the programs a stopped daemon left attached: agents then connect directly,
    /// unmediated, until the daemon starts again. The daemon must be stopped first.
    Detach {
        #[arg(long, short, env = CONFIG_ENV, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a config file; exit status 0 when valid.
    CheckConfig {
        #[arg(env = CONFIG_ENV, default_value = DEFAULT_CONFIG)]
        file: PathBuf,
    },
    /// The gateway's local CA, which agents trust for the MCP servers it terminates.
    Ca {
        #[arg(long, short, env = CONFIG_ENV, default_value = DEFAULT_CONFIG, global = true)]
        config: PathBuf,
        #[command(subcommand)]
        command: CaCmd,
    },
    /// Calls held for a person (`ask` rules) on the running daemon: list, approve, deny.
    Approvals {
        #[arg(long, short, env = CONFIG_ENV, default_value = DEFAULT_CONFIG, global = true)]
        config: PathBuf,
        #[command(subcommand)]
        command: approvals_cli::ApprovalsCmd,
    },
    /// The running daemon at a glance: listeners, sessions, what waits for review, counters.
    Status {
        #[arg(long, short, env = CONFIG_ENV, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A live view of the running daemon (q, Esc or Ctrl-C quits); prints one snapshot
    /// when stdout is not a terminal.
    Top {
        #[arg(long, short, env = CONFIG_ENV, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Refresh interval, e.g. 2s or 500ms.
        #[arg(long, short, default_value = "2s", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
    /// Tool manifest pins on the running daemon: review, approve, reject, forget.
    Pins {
        #[arg(long, short, env = CONFIG_ENV, default_value = DEFAULT_CONFIG, global = true)]
        config: PathBuf,
        #[command(subcommand)]
        command: pins_cli::PinsCmd,
    },
    /// Read and verify the audit ledger.
    Audit {
        #[arg(long, short, env = CONFIG_ENV, default_value = DEFAULT_CONFIG, global = true)]
        config: PathBuf,
        #[command(subcommand)]
        command: audit_cli::AuditCmd,
    },
}

#[derive(Subcommand)]
enum CaCmd {
    /// Print the CA certificate (PEM), making the CA first if the daemon has not yet.
    Export,
}

fn main() {
    if let Err(e) = run_cli(Cli::parse()) {
        eprintln!("mcp-gateway: error: {}", causes(&e));
        std::process::exit(1);
    }
}

/// The error and its causes on one line, each said once: many of our errors already quote
/// their source in their own message, and `{:#}` would print it a second time.
fn causes(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn run_cli(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::CheckConfig { file } => {
            let resolved = config::Config::load(&file)?;
            for w in &resolved.warnings {
                eprintln!("mcp-gateway: warning: {w}");
            }
            // The same reading of credential files as at start, so a missing one shows here.
            mcp::inject::load(&resolved.config)
                .with_context(|| format!("invalid config {}", file.display()))?;
            outln!("{}: ok", file.display());
            Ok(())
        }
        Command::Exec {
            cgroup,
            config,
            user,
            command,
        } => {
            let config_given = config.is_some();
            let config = config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
            let cgroup = match cgroup {
                Some(c) => c,
                None => {
                    let agents = config::Config::load(&config)?.config.agents.cgroups;
                    // Already in an agent cgroup (a unit in the agents' slice): it stays
                    // there, where systemd keeps track of it.
                    match exec::current_cgroup().filter(|c| exec::within(c, &agents)) {
                        Some(here) => here,
                        None => agents.first().cloned().with_context(|| {
                            format!(
                                "{} has no agents.cgroups entry: pass --cgroup NAME",
                                config.display()
                            )
                        })?,
                    }
                }
            };
            // Agents started here have their stdio servers mediated when the config names
            // any: the daemon must then take the tree's exec listener before they run.
            let stdio = match config::Config::load(&config) {
                Ok(r) if gateway_daemon::stdio::Stage::configured(&r.config) => {
                    Some(r.config.stdio.socket.clone())
                }
                Ok(_) => None,
                Err(_) if !config_given => None,
                Err(e) => return Err(e.into()),
            };
            exec::exec(&cgroup, user.as_deref(), &command, stdio.as_deref())
        }
        Command::Detach { config } => detach(&config),
        Command::Audit { config, command } => audit_cli::run(command, &config),
        Command::Pins { config, command } => pins_cli::run(command, &config),
        Command::Status { config, json } => status_cli::run(&config, json),
        Command::Top { config, interval } => top_cli::run(&config, interval),
        Command::Approvals { config, command } => approvals_cli::run(command, &config),
        Command::Ca {
            config,
            command: CaCmd::Export,
        } => {
            let cfg = config::Config::load(&config)?.config;
            let ca = tls::Ca::load_or_create(&cfg.tls.ca_cert, &cfg.tls.ca_key)?;
            out!("{}", ca.pem);
            Ok(())
        }
        Command::Run { config } => {
            init_logging();
            let resolved = config::Config::load(&config)?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(run(resolved, config))
        }
    }
}

/// `mcp-gateway detach`: the explicit way to open agents' traffic, never a side effect of a
/// stop or restart.
fn detach(config: &std::path::Path) -> anyhow::Result<()> {
    let cfg = config::Config::load(config)?.config;
    match admin::call(&cfg.admin.socket, "status", serde_json::json!({})) {
        Err(admin::AdminError::NotRunning { .. }) => {}
        Ok(_) | Err(_) => anyhow::bail!(
            "the daemon of {} is running (its admin socket {} answers or exists): stop it \
             first (`systemctl stop mcp-gateway`); detaching under it would leave it \
             believing it mediates traffic that goes around it",
            config.display(),
            cfg.admin.socket.display()
        ),
    }
    let links = intercept::detach_pinned(&cfg)?;
    if links == 0 {
        outln!(
            "nothing to detach: no programs of instance {:?} are pinned",
            cfg.intercept.instance
        );
    } else {
        outln!(
            "detached {links} programs of instance {:?}: agents now connect directly, \
             unmediated, until the daemon starts again",
            cfg.intercept.instance
        );
    }
    Ok(())
}

fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // A macro, not a closure: the layer's type names the subscriber it sits on.
    macro_rules! fmt {
        () => {
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        };
    }
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string());
    let registry = tracing_subscriber::registry();
    match static_filter(&spec) {
        Some(targets) => registry.with(targets).with(fmt!()).init(),
        None => {
            let filter = tracing_subscriber::EnvFilter::try_new(&spec)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            registry.with(filter).with(fmt!()).init()
        }
    }
}

/// `RUST_LOG` as a static filter, when one means what `EnvFilter` would make of it.
///
/// Levels by target (`info`, `warn,gateway_daemon=debug`) need no more. An `EnvFilter`
/// takes a lock on every entry into a span, to track span-scoped directives, and a
/// connection's span is entered on every poll of its future, several times a call. But the
/// two parsers differ at the edges: `Targets` reads `[conn]=debug` as a target named
/// "[conn]", an empty piece (`info,`) as the level `error`, and `*` or `=debug` as targets
/// `EnvFilter` refuses. Those, and whatever `EnvFilter` refuses, stay with `EnvFilter`.
fn static_filter(spec: &str) -> Option<tracing_subscriber::filter::Targets> {
    let plain = |piece: &str| {
        piece
            .trim()
            .starts_with(|c: char| c.is_ascii_alphanumeric() || "-:_".contains(c))
    };
    if spec.contains('[') || !spec.split(',').all(plain) {
        return None;
    }
    tracing_subscriber::EnvFilter::try_new(spec).ok()?;
    spec.parse().ok()
}

/// SIGHUP: load the config again and put its policy in force for every new request; open
/// sessions stay. An invalid file is refused with its reason and the old policy stays.
async fn reload_on_sighup(
    path: PathBuf,
    policy: Arc<policy::PolicyHandle>,
    audit: audit::AuditSink,
) -> anyhow::Result<()> {
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let result = config::Config::load(&path)
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    let p = policy::Policy::compile(&r.config)
                        .map_err(|(k, m)| format!("`{k}`: {m}"))?;
                    let i = mcp::inject::load(&r.config).map_err(|e| e.to_string())?;
                    Ok((p, i))
                });
            let (outcome, detail) = match result {
                Ok((p, i)) => {
                    policy.replace(p);
                    mcp::inject::install(i);
                    tracing::info!(config = %path.display(), "SIGHUP: policy reloaded");
                    ("ok", None)
                }
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: config rejected; the previous policy stays in force");
                    ("rejected", Some(e))
                }
            };
            audit
                .record(&serde_json::json!({
                    "type": "reload",
                    "time": audit::timestamp(std::time::SystemTime::now()),
                    "config": path.display().to_string(),
                    "outcome": outcome,
                    "detail": detail,
                }))
                .await;
        }
    });
    Ok(())
}

/// Every mediated connection holds two descriptors (agent and upstream): the default soft
/// limit of 1024 would turn away agents past ~500 connections while the hard limit allows
/// far more, so the soft limit is raised to the hard one.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(soft, hard, error = %e, "could not raise the open files limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "reading the open files limit failed"),
    }
}

async fn run(resolved: config::Resolved, config_path: PathBuf) -> anyhow::Result<()> {
    let euid = nix::unistd::geteuid();
    if !euid.is_root() {
        anyhow::bail!(
            "mcp-gateway run needs root: it loads eBPF programs, attaches them to the cgroup2 \
             hierarchy and mounts bpffs (running as uid {euid})"
        );
    }
    // Before READY=1: a SIGTERM that follows readiness at once must stop the daemon
    // cleanly, not kill it by the default action.
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let cfg = resolved.config.clone();
    for w in &resolved.warnings {
        tracing::warn!("{w}");
    }
    raise_open_files_limit();
    // Credentials are read before anything is attached: a missing one stops the start.
    mcp::inject::install(
        mcp::inject::load(&cfg)
            .with_context(|| format!("invalid config {}", config_path.display()))?,
    );
    let (sink, writer) = audit::open(&cfg.audit).await?;
    let tls = Arc::new(tls::Tls::load(&cfg.tls)?);
    let pins = Arc::new(pins::Pins::open(&cfg)?);
    let approvals = Arc::new(approvals::Approvals::new(&cfg.approvals));
    let admin_listener = admin::AdminListener::bind(&cfg.admin)?;
    // Bound before READY: a launcher started right after finds it (served once the shared
    // state exists, a moment later).
    let stdio_listener = if gateway_daemon::stdio::Stage::configured(&cfg) {
        Some(gateway_daemon::stdio::enrol::bind(&cfg.stdio.socket)?)
    } else {
        None
    };
    if let Some(addr) = cfg.metrics.listen {
        tokio::spawn(metrics::serve_on(metrics::bind(addr).await?));
    }
    // Listen before attaching: the first redirected connection must find a listener.
    let listeners = vec![
        listen::bind(cfg.listener.ipv4, cfg.intercept.mark).await?,
        listen::bind(cfg.listener.ipv6, cfg.intercept.mark).await?,
    ];
    let interceptor = Arc::new(intercept::Interceptor::start(
        &resolved,
        [&listeners[0], &listeners[1]],
    )?);
    let a = &interceptor.attached;
    tracing::info!(
        cgroup2 = %a.cgroup2.display(),
        attach = %a.attach_cgroup.display(),
        pins = %a.pin_dir.display(),
        agent_cgroups = ?a.agent_cgroups,
        agent_uids = ?resolved.agent_uids,
        replaced_links = a.replaced_links,
        ipv4 = %cfg.listener.ipv4,
        ipv6 = %cfg.listener.ipv6,
        "ready: programs attached"
    );
    let sessions = Arc::new(mcp::Sessions::new(
        cfg.http.max_sessions,
        cfg.http.max_sessions_per_user,
        cfg.http.max_pending,
    ));
    let started = admin::ops::Started {
        at: std::time::SystemTime::now(),
        programs: intercept::PROGRAMS.iter().map(|p| p.to_string()).collect(),
        attach_cgroup: a.attach_cgroup.display().to_string(),
        cgroups: a
            .agent_cgroups
            .iter()
            .map(|(c, id)| format!("{c} (id {id})"))
            .collect(),
        listeners: vec![cfg.listener.ipv4, cfg.listener.ipv6],
        metrics_listen: cfg.metrics.listen,
    };
    tokio::spawn(admin::serve(
        admin_listener,
        Arc::new(admin::ops::Ops {
            started,
            sessions: sessions.clone(),
            pins: pins.clone(),
            approvals: approvals.clone(),
            audit: sink.clone(),
        }),
    ));
    // The programs are loaded and what loading them only passed through (the kernel's
    // BTF) is freed: given back before the daemon says it is up.
    allocator::release_startup_memory();
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    // Agent cgroups can be removed and created again under the daemon (a slice stopped
    // and started): new ids are resolved as cgroupfs reports them.
    let watcher = tokio::spawn(intercept::watch::run(interceptor.clone()));

    let policy = Arc::new(policy::PolicyHandle::new(
        policy::Policy::compile(&cfg).map_err(|(k, m)| anyhow::anyhow!("`{k}`: {m}"))?,
    ));
    reload_on_sighup(config_path, policy.clone(), sink.clone()).await?;
    let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    let admission = Arc::new(admit::Admission::new(
        nofile,
        cfg.listener.max_connections_per_user,
        cfg.listener.connections_per_second_per_user,
    ));
    let (max_total, max_per_user) = admission.limits();
    tracing::info!(
        nofile,
        max_connections = max_total,
        max_connections_per_user = max_per_user,
        "connection limits"
    );
    let workers = Arc::new(gateway_daemon::workers::Workers::start(
        cfg.listener.workers,
    )?);
    tracing::info!(workers = workers.count(), "connection workers started");
    let daemon = Arc::new(gateway_daemon::daemon::Daemon {
        budget: Arc::new(gateway_daemon::http::budget::Budget::new(
            cfg.http.max_buffered_bytes,
            cfg.http.max_buffered_bytes_per_user,
        )),
        policy,
        catalog: Default::default(),
        tasks: Default::default(),
        issued: Default::default(),
        limiter: Default::default(),
        tls,
        pins: pins.clone(),
        approvals,
        audit: sink,
        sessions: sessions.clone(),
        config: Arc::new(cfg.clone()),
    });
    if let Some(l) = stdio_listener {
        let stage =
            gateway_daemon::stdio::Stage::new(daemon.clone(), tokio::runtime::Handle::current());
        stage.publish();
        gateway_daemon::stdio::enrol::restore(&stage);
        gateway_daemon::stdio::enrol::serve(l, stage);
        tracing::info!(socket = %cfg.stdio.socket.display(), "stdio servers mediated for trees enrolled by mcp-gateway exec");
    }
    let server = listen::Server {
        daemon,
        admission,
        interceptor: interceptor.clone(),
        workers: workers.clone(),
    };
    let (stop, stopping) = tokio::sync::oneshot::channel();
    let mut served = server
        .clone()
        .serve_on_own_thread(listeners, stopping, Duration::from_secs(5))
        .context("starting the acceptor thread")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
        _ = &mut served => anyhow::bail!("the acceptor thread ended unasked (see the error before)"),
    }
    let _ = stop.send(());
    served.await.context("the acceptor thread failed")?;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    // Whatever a connection left running goes with its worker, and the state it held.
    tokio::task::spawn_blocking(move || workers.stop()).await?;
    drop(server);

    // The watcher holds the interceptor too: stop it before detaching.
    watcher.abort();
    let _ = watcher.await;
    let interceptor = Arc::try_unwrap(interceptor)
        .map_err(|_| anyhow::anyhow!("interceptor still in use at shutdown"))?;
    if cfg.intercept.detach_on_stop {
        interceptor.detach()?;
        tracing::info!("programs detached");
    } else {
        interceptor.keep_attached();
        tracing::info!("programs left attached (intercept.detach_on_stop = false): agent connections are refused until the daemon is back");
    }
    if tokio::time::timeout(Duration::from_secs(10), writer.finish())
        .await
        .is_err()
    {
        tracing::error!("audit records still queued after 10 s at shutdown");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::static_filter;

    #[test]
    fn only_plain_levels_by_target_take_the_static_filter() {
        for spec in ["info", "INFO", "debug", "off", "warn,gateway_daemon=debug"] {
            assert!(static_filter(spec).is_some(), "{spec:?}");
        }
        // Span and field directives, empty pieces, and targets EnvFilter refuses keep
        // EnvFilter's meaning (or its refusal, and the `info` fallback).
        for spec in [
            "info,[conn]=debug",
            "[conn{id=1}]=trace",
            "info,",
            "",
            ",x=debug",
            "*",
            "=debug",
            " ",
        ] {
            assert!(static_filter(spec).is_none(), "{spec:?}");
        }
    }
}
