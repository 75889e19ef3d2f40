//! `mcp-gateway audit ...`: read, filter and verify the ledger on disk (no daemon needed).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Subcommand;
use gateway_daemon::audit::{self, files, query, sign, verify};
use gateway_daemon::config::{Config, SyncPolicy};

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Verify the hash chain, checkpoints and signed head; report the first bad record.
    Verify {
        /// Ledger files in chain order (default: all files of the configured ledger).
        files: Vec<PathBuf>,
        /// Public key (hex) to check signatures with (default: from the configured key).
        #[arg(long)]
        pubkey: Option<String>,
        /// Signed head file (default: `<audit.path>.head` when verifying the configured ledger).
        #[arg(long)]
        head: Option<PathBuf>,
    },
    /// Print the ledger's public key (hex), for verifying elsewhere.
    Pubkey,
    /// Print matching records, oldest first.
    Show {
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Print the last matching records; with --follow, keep printing new ones.
    Tail {
        #[arg(short = 'n', default_value_t = 20)]
        lines: usize,
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Measure the cost of each sync policy on the disk of audit.path.
    Bench {
        #[arg(long, default_value_t = 2000)]
        records: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
}

#[derive(clap::Args, Debug)]
pub struct FilterArgs {
    /// Substring of the principal's user, executable, unit or cgroup, or its uid.
    #[arg(long)]
    principal: Option<String>,
    #[arg(long)]
    server: Option<String>,
    #[arg(long)]
    tool: Option<String>,
    /// Outcome: ok, error, refused, upstream_error, ...
    #[arg(long)]
    decision: Option<String>,
    /// Record type: mcp, mcp_call, flow, checkpoint, ...
    #[arg(long = "type")]
    kind: Option<String>,
    /// One connection's records, by the id they all carry (`"connection"` on any of them;
    /// also the log lines' `conn{id=…}`).
    #[arg(long)]
    connection: Option<String>,
    /// RFC 3339 time, e.g. 2026-11-24T10:00:00Z.
    #[arg(long)]
    since: Option<String>,
    #[arg(long)]
    until: Option<String>,
}

impl From<FilterArgs> for query::Filter {
    fn from(a: FilterArgs) -> Self {
        query::Filter {
            principal: a.principal,
            server: a.server,
            tool: a.tool,
            decision: a.decision,
            kind: a.kind,
            connection: a.connection,
            since: a.since,
            until: a.until,
        }
    }
}

pub fn run(cmd: AuditCmd, config: &std::path::Path) -> anyhow::Result<()> {
    let cfg = || Config::load(config).map(|r| r.config);
    match cmd {
        AuditCmd::Pubkey => {
            let key = sign::load_or_create(&cfg()?.audit.key)?;
            outln!("{}", hex::encode(key.verifying_key().to_bytes()));
            Ok(())
        }
        AuditCmd::Verify {
            files: given,
            pubkey,
            head,
        } => {
            // The configured ledger is read as one moment of it (verify::verify_live):
            // its daemon may rotate it while it is read. Files named on the command line,
            // and a head named with --head, are read as they are.
            let live = (given.is_empty() && head.is_none())
                .then(|| cfg().map(|c| c.audit.path))
                .transpose()?;
            let list = match &live {
                Some(path) => files::ledger_files(path),
                None if given.is_empty() => files::ledger_files(&cfg()?.audit.path),
                None => given,
            };
            if list.is_empty() {
                bail!("no ledger files to verify");
            }
            let key = match pubkey {
                Some(p) => Some(
                    sign::parse_public(&p)
                        .context("--pubkey is not 64 hex digits of an ed25519 key")?,
                ),
                None => cfg()
                    .ok()
                    .and_then(|c| sign::load_or_create_existing(&c.audit.key))
                    .map(|k| k.verifying_key()),
            };
            if key.is_none() {
                eprintln!("warning: no public key: signatures are not checked (pass --pubkey)");
            }
            let (report, files_read) = match &live {
                Some(path) => verify::verify_live(path, key.as_ref()),
                None => (
                    verify::verify(&list, key.as_ref(), head.as_deref()),
                    list.len(),
                ),
            };
            match report.finding {
                Some(f) => {
                    outln!("FAILED: first bad record: {f}");
                    std::process::exit(1);
                }
                None => {
                    outln!(
                        "ok: {} records (seq {}..{}), {} checkpoints, {} file(s){}",
                        report.records,
                        report.first_seq.unwrap_or(0),
                        report.last_seq.unwrap_or(0),
                        report.checkpoints,
                        files_read,
                        if report.head_checked {
                            ", signed head matches"
                        } else {
                            ""
                        }
                    );
                    // Where history begins, and every point where retention removed some.
                    match report.first_seq {
                        Some(1) => outln!("the chain starts at its genesis (seq 1)"),
                        Some(seq) => outln!(
                            "the chain starts at seq {seq}: records before it were removed by \
                             retention"
                        ),
                        None => {}
                    }
                    for r in &report.retention {
                        outln!(
                            "retention at seq {}: deleted {} (seq {}..{}, last hash {})",
                            r.seq,
                            r.deleted_file,
                            r.first_seq,
                            r.last_seq,
                            r.last_hash
                        );
                    }
                    Ok(())
                }
            }
        }
        AuditCmd::Show { filter } => {
            let list = files::ledger_files(&cfg()?.audit.path);
            for r in query::select(&list, &filter.into())? {
                outln!("{r}");
            }
            Ok(())
        }
        AuditCmd::Tail {
            lines,
            follow,
            filter,
        } => {
            let path = cfg()?.audit.path;
            let filter: query::Filter = filter.into();
            let records = query::select(&files::ledger_files(&path), &filter)?;
            let mut last_seq = 0;
            for r in records.iter().skip(records.len().saturating_sub(lines)) {
                outln!("{r}");
            }
            if let Some(r) = records.last() {
                last_seq = r["seq"].as_u64().unwrap_or(0);
            }
            if !follow {
                return Ok(());
            }
            loop {
                std::thread::sleep(Duration::from_millis(500));
                let fresh = query::select(&files::ledger_files(&path), &filter)?;
                let after = last_seq;
                for r in fresh
                    .iter()
                    .filter(|r| r["seq"].as_u64().unwrap_or(0) > after)
                {
                    outln!("{r}");
                    last_seq = r["seq"].as_u64().unwrap_or(last_seq);
                }
            }
        }
        AuditCmd::Bench {
            records,
            concurrency,
        } => bench(cfg()?, records, concurrency),
    }
}

/// Durable records per second and latency for each sync policy, on a scratch ledger next
/// to the configured one (same disk).
fn bench(c: Config, records: usize, concurrency: usize) -> anyhow::Result<()> {
    let dir = c
        .audit
        .path
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir)?;
    let scratch = tempfile_in(&dir)?;
    let rt = tokio::runtime::Runtime::new()?;
    outln!(
        "{:<8} {:>12} {:>14} {:>14}",
        "sync",
        "records/s",
        "p50 latency",
        "p99 latency"
    );
    for policy in [SyncPolicy::Always, SyncPolicy::Batch, SyncPolicy::None] {
        let mut a = c.audit.clone();
        a.sync = policy;
        a.path = scratch.join(format!("{policy:?}.jsonl"));
        a.key = scratch.join("bench.key");
        a.journald = gateway_daemon::config::Journald::Off;
        let (rate, p50, p99) = rt.block_on(async move {
            let (sink, writer) = audit::open(&a).await?;
            let t0 = Instant::now();
            let mut tasks = Vec::new();
            for w in 0..concurrency {
                let sink = sink.clone();
                let n = records / concurrency + usize::from(w < records % concurrency);
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(n);
                    for i in 0..n {
                        let t = Instant::now();
                        sink.record_durable(&serde_json::json!({"type": "bench", "i": i}))?
                            .durable()
                            .await?;
                        lat.push(t.elapsed());
                    }
                    Ok::<_, audit::AuditError>(lat)
                }));
            }
            let mut lat = Vec::new();
            for t in tasks {
                lat.extend(t.await??);
            }
            let elapsed = t0.elapsed();
            drop(sink);
            writer.finish().await;
            lat.sort();
            let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
            Ok::<_, anyhow::Error>((
                lat.len() as f64 / elapsed.as_secs_f64(),
                pct(0.5),
                pct(0.99),
            ))
        })?;
        outln!(
            "{:<8} {:>12.0} {:>14?} {:>14?}",
            format!("{policy:?}").to_lowercase(),
            rate,
            p50,
            p99
        );
    }
    std::fs::remove_dir_all(&scratch)?;
    Ok(())
}

fn tempfile_in(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let p = dir.join(format!(".audit-bench-{}", std::process::id()));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}
