//! Throughput of redaction on realistic text with few secrets (issue 6's bench). Ignored by
//! default — timings belong in a report, not in a pass/fail test:
//!
//! ```sh
//! cargo test --release -p gateway-daemon --lib redact::bench_tests -- --ignored --nocapture
//! ```

use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};

use super::{RedactConfig, Redactor};

/// A small deterministic generator (xorshift), so every run measures the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
    fn hex(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from_digit(self.below(16) as u32, 16).unwrap())
            .collect()
    }
}

const WORDS: &[&str] = &[
    "the",
    "request",
    "returned",
    "an",
    "error",
    "when",
    "the",
    "cache",
    "was",
    "cold",
    "and",
    "retry",
    "budget",
    "exceeded",
    "after",
    "deploying",
    "version",
    "we",
    "saw",
    "latency",
    "spike",
    "in",
    "eu-west-1",
    "fixed",
    "by",
    "increasing",
    "pool",
    "size",
    "to",
    "64",
    "connections",
    "see",
    "dashboard",
    "for",
    "details",
    "tokenizer",
    "key",
    "lookup",
    "secret",
    "rotation",
    "scheduled",
    "monday",
    "2024-03-11",
    "build",
    "passed",
    "on",
    "commit",
    "branch",
    "main",
    "thanks",
    "review",
    "LGTM",
    "merged",
    "closes",
    "#4521",
];

fn prose(rng: &mut Rng, words: usize) -> String {
    (0..words)
        .map(|_| rng.pick(WORDS))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A page of `gh issue list --json`-like tool output.
fn json_tool_output(rng: &mut Rng, items: usize) -> Value {
    let issues: Vec<Value> = (0..items)
        .map(|i| {
            json!({
                "number": 4000 + i,
                "id": 1_900_000_000u64 + rng.below(100_000_000),
                "node_id": format!("I_kwDOA{}", rng.hex(12)),
                "title": prose(rng, 8),
                "state": rng.pick(&["open", "closed"]),
                "user": {"login": rng.pick(&["octocat", "dev-alice", "bob42", "ci-bot"]),
                         "id": 583231 + i, "type": "User"},
                "labels": [{"name": rng.pick(&["bug", "enhancement", "p1", "needs-triage"]),
                            "color": rng.hex(6)}],
                "created_at": format!("2024-0{}-1{}T0{}:2{}:33Z", 1 + rng.below(9),
                                      rng.below(10), rng.below(10), rng.below(10)),
                "head_sha": rng.hex(40),
                "url": format!("https://api.github.com/repos/acme/widget/issues/{}", 4000 + i),
                "body": prose(rng, 60),
                "reactions": {"total_count": rng.below(20), "+1": rng.below(10)},
                "request_id": format!("{}-{}-4{}-a{}-{}", rng.hex(8), rng.hex(4), rng.hex(3),
                                      rng.hex(3), rng.hex(12)),
            })
        })
        .collect();
    json!({"content": [{"type": "text", "text": serde_json::to_string_pretty(&issues).unwrap()}],
           "structuredContent": {"issues": issues}})
}

fn log_lines(rng: &mut Rng, lines: usize) -> String {
    let mut out = String::new();
    for i in 0..lines {
        let ip = format!(
            "{}.{}.{}.{}",
            10 + rng.below(200),
            rng.below(256),
            rng.below(256),
            rng.below(256)
        );
        match i % 3 {
            0 => out.push_str(&format!(
                "{ip} - - [11/Mar/2024:13:{:02}:{:02} +0000] \"GET /api/v2/items/{}?page={} HTTP/1.1\" \
                 200 {} \"-\" \"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36\" {}.{:03}\n",
                rng.below(60), rng.below(60), rng.below(100000), rng.below(50), rng.below(90000),
                rng.below(3), rng.below(1000)
            )),
            1 => out.push_str(&format!(
                "2024-03-11T13:{:02}:{:02}.{:06}Z INFO  worker{} request_id={}-{}-{} \
                 user_id={} duration_ms={} status=ok cache_key=items:{} msg=\"{}\"\n",
                rng.below(60), rng.below(60), rng.below(1_000_000), rng.below(16), rng.hex(8),
                rng.hex(4), rng.hex(12), rng.below(1_000_000), rng.below(5000), rng.below(99999),
                prose(rng, 6)
            )),
            _ => out.push_str(&format!(
                "Mar 11 13:{:02}:{:02} host-{} kernel: [{}.{:06}] eth0: link up, 1000Mbps, \
                 full-duplex, lpa 0x{}\n",
                rng.below(60), rng.below(60), rng.below(99), rng.below(99999),
                rng.below(1_000_000), rng.hex(4)
            )),
        }
    }
    out
}

/// This crate's own source code: real Rust, with its comments and string literals.
fn source_code() -> String {
    let mut out = String::new();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    let mut files = Vec::new();
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs")
                && !p.to_string_lossy().contains("/redact/")
            {
                files.push(p);
            }
        }
    }
    files.sort();
    for f in files {
        out.push_str(&std::fs::read_to_string(f).unwrap());
    }
    out
}

fn measure(name: &str, bytes: usize, rounds: usize, mut f: impl FnMut() -> u64) {
    let _ = f(); // warm-up
    let start = Instant::now();
    let mut found = 0;
    for _ in 0..rounds {
        found += f();
    }
    let secs = start.elapsed().as_secs_f64();
    let mb = (bytes * rounds) as f64 / 1e6;
    println!(
        "{name:<44} {:>7.2} MB x{rounds:<3} {:>8.1} MB/s   ({} redactions per round)",
        bytes as f64 / 1e6,
        mb / secs,
        found / rounds as u64
    );
}

#[test]
#[ignore = "bench: run with --release --ignored --nocapture"]
fn throughput() {
    let r = Redactor::new(&RedactConfig::default()).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);

    // Tool results as the gateway sees them: ~64 KiB strings.
    let code = source_code();
    let logs = log_lines(&mut rng, 30_000);
    let mut prose_text = String::new();
    while prose_text.len() < 3_000_000 {
        prose_text.push_str(&prose(&mut rng, 80));
        prose_text.push_str(".\n\n");
    }
    // A few secrets: one per ~200 KB.
    let mut seeded = logs.clone();
    for (i, secret) in [
        "AKIAIOSFODNN7EXAMPLE",
        "alice@corp.io",
        "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
        "4111 1111 1111 1111",
    ]
    .iter()
    .cycle()
    .take(seeded.len() / 200_000)
    .enumerate()
    {
        let at = (i + 1) * 200_000;
        let at = (at..).find(|&k| seeded.is_char_boundary(k)).unwrap();
        seeded.insert_str(at, &format!(" {secret} "));
    }

    let chunks = |s: &str| -> Vec<String> {
        let mut v = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            let mut n = rest.len().min(64 * 1024);
            while !rest.is_char_boundary(n) {
                n += 1;
            }
            v.push(rest[..n].to_string());
            rest = &rest[n..];
        }
        v
    };
    for (name, text) in [
        ("source code (this crate, 64 KiB strings)", &code),
        ("logs (nginx/app/kernel, 64 KiB strings)", &logs),
        ("logs + 1 secret per 200 KB", &seeded),
        ("english-ish prose (64 KiB strings)", &prose_text),
    ] {
        let parts = chunks(text);
        let mut fired = super::Counts::default();
        let mut triggered = std::collections::BTreeMap::new();
        for p in &parts {
            if let Some((out, c)) = r.redact_str(p) {
                fired.merge(&c);
                if std::env::var_os("REDACT_BENCH_SHOW").is_some() {
                    for line in out.lines().filter(|l| l.contains("[REDACTED:")) {
                        println!("  redacted: {}", line.trim());
                    }
                }
            }
            for i in r.set.matches(p).iter() {
                let d = &r.detectors[i];
                let n = triggered.entry(d.name.as_str()).or_insert(0);
                if *n == 0 && std::env::var_os("REDACT_BENCH_SHOW").is_some() {
                    let m = regex::Regex::new(&d.trigger).unwrap().find(p).unwrap();
                    let ctx = &p[m.start().saturating_sub(20)..(m.end() + 20).min(p.len())];
                    println!("  {} trigger: {:?}", d.name, ctx);
                }
                *n += 1;
            }
        }
        println!(
            "{name}: {} strings, triggers fired {triggered:?}, redacted {:?}",
            parts.len(),
            serde_json::to_string(&fired).unwrap()
        );
        measure(name, text.len(), 5, || {
            parts
                .iter()
                .map(|p| r.redact_str(p).map_or(0, |(_, c)| c.total()))
                .sum()
        });
    }

    let doc = json_tool_output(&mut rng, 2_000);
    let bytes = serde_json::to_vec(&doc).unwrap().len();
    measure(
        "JSON tool result (redact_json, clone incl.)",
        bytes,
        5,
        || {
            let mut v = doc.clone();
            r.redact_json(&mut v).total()
        },
    );
    let start = Instant::now();
    for _ in 0..5 {
        std::hint::black_box(doc.clone());
    }
    println!(
        "  (of which cloning the Value: {:.1} MB/s)",
        (bytes * 5) as f64 / 1e6 / start.elapsed().as_secs_f64()
    );
}
