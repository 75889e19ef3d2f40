//! What `mcp-gateway status` and `top` show: the running daemon's state in one JSON
//! document (answered on the admin socket's `status` op), and its plain-text rendering.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::SystemTime;

use serde_json::{json, Value};

use crate::metrics;

/// What the daemon knows about itself, gathered where the `status` op is answered.
#[derive(Debug, Clone)]
pub struct StatusParts {
    pub started_at: SystemTime,
    /// The eBPF programs attached (names).
    pub programs: Vec<String>,
    /// Where they are attached, and the agent cgroups they select.
    pub attach_cgroup: String,
    pub cgroups: Vec<String>,
    /// Addresses redirected agent connections arrive on.
    pub listeners: Vec<SocketAddr>,
    /// `metrics.listen`, when the endpoint is on.
    pub metrics_listen: Option<SocketAddr>,
    /// Open MCP sessions per principal label.
    pub sessions: Vec<(String, u64)>,
    /// What `Pins::list` answers.
    pub pins: Value,
    /// Calls held for an administrator.
    pub pending_approvals: u64,
    /// Stdio mediation (`stdio::status`), when stdio servers are configured.
    pub stdio: Option<Value>,
}

/// The status document, with the process's metrics.
pub fn report(parts: StatusParts) -> Value {
    report_at(parts, SystemTime::now(), metrics::global().snapshot())
}

/// [`report`] at a given time with given metrics.
pub fn report_at(parts: StatusParts, now: SystemTime, metrics: Value) -> Value {
    let uptime = now.duration_since(parts.started_at).unwrap_or_default();
    let mut sessions = parts.sessions;
    sessions.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let sessions_total: u64 = sessions.iter().map(|(_, n)| n).sum();
    let waiting = pins_waiting(&parts.pins);
    let waiting_total: usize = waiting.iter().map(|(_, names)| names.len()).sum();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": humantime::format_rfc3339_seconds(parts.started_at).to_string(),
        "uptime_s": uptime.as_secs(),
        "attached": {
            "programs": parts.programs,
            "attach_cgroup": parts.attach_cgroup,
            "cgroups": parts.cgroups,
        },
        "listeners": parts.listeners.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "metrics_listen": parts.metrics_listen.map(|a| a.to_string()),
        "sessions": {
            "total": sessions_total,
            "by_principal": sessions
                .iter()
                .map(|(p, n)| json!({ "principal": p, "sessions": n }))
                .collect::<Vec<_>>(),
        },
        "pins": {
            "waiting": waiting_total,
            "servers": waiting
                .iter()
                .map(|(s, names)| json!({ "server": s, "waiting": names }))
                .collect::<Vec<_>>(),
        },
        "pending_approvals": parts.pending_approvals,
        "stdio": parts.stdio,
        "metrics": metrics,
    })
}

/// The definitions waiting for an administrator's review in a `Pins::list` answer, per
/// server (rejected ones are decided, so not counted). The daemon can feed
/// `metrics::global().set_pins_waiting` from the same count.
pub fn pins_waiting(pins_list: &Value) -> Vec<(String, Vec<String>)> {
    let Some(servers) = pins_list["servers"].as_array() else {
        return Vec::new();
    };
    servers
        .iter()
        .filter_map(|s| {
            let names: Vec<String> = s["pending"]
                .as_array()?
                .iter()
                .filter(|p| p["rejected"] != true)
                .map(|p| {
                    format!(
                        "{} {}",
                        p["kind"].as_str().unwrap_or("?"),
                        p["name"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            (!names.is_empty()).then(|| (s["server"].as_str().unwrap_or("?").to_owned(), names))
        })
        .collect()
}

/// A duration as people read an uptime: "3d 4h 5m", "2h 0m", "42s".
pub fn format_uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match () {
        _ if d > 0 => format!("{d}d {h}h {m}m"),
        _ if h > 0 => format!("{h}h {m}m"),
        _ if m > 0 => format!("{m}m {s}s"),
        _ => format!("{s}s"),
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_i64().map(|n| n.max(0) as u64))
        .unwrap_or(0)
}

/// "a 3, b 1" from a `{name: count}` object, largest first, zeros left out.
pub fn breakdown(v: &Value) -> String {
    let mut items: Vec<(&str, u64)> = v
        .as_object()
        .map(|o| o.iter().map(|(k, n)| (k.as_str(), u(n))).collect())
        .unwrap_or_default();
    items.retain(|(_, n)| *n > 0);
    items.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    items
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn list(v: &Value) -> String {
    let items: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn with_breakdown(total: u64, parts: &Value) -> String {
    let b = breakdown(parts);
    if b.is_empty() {
        total.to_string()
    } else {
        format!("{total} ({b})")
    }
}

/// The status document as `mcp-gateway status` prints it.
pub fn render_text(r: &Value) -> String {
    let m = &r["metrics"];
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        let _ = writeln!(out, "{:<18}{value}", format!("{label}:"));
    };
    line(
        "mcp-gateway",
        format!(
            "{}, up {} (since {})",
            r["version"].as_str().unwrap_or("?"),
            format_uptime(u(&r["uptime_s"])),
            r["started_at"].as_str().unwrap_or("?")
        ),
    );
    line("listeners", list(&r["listeners"]));
    line(
        "metrics",
        match r["metrics_listen"].as_str() {
            Some(a) => format!("http://{a}/metrics"),
            None => "off (metrics.listen)".into(),
        },
    );
    let a = &r["attached"];
    line(
        "attached",
        format!(
            "{} at {}",
            list(&a["programs"]),
            a["attach_cgroup"].as_str().unwrap_or("?")
        ),
    );
    line("agent cgroups", list(&a["cgroups"]));
    let s = &r["sessions"];
    let by: Vec<String> = s["by_principal"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    format!(
                        "{} {}",
                        p["principal"].as_str().unwrap_or("?"),
                        u(&p["sessions"])
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    line(
        "sessions",
        if by.is_empty() {
            u(&s["total"]).to_string()
        } else {
            format!("{} ({})", u(&s["total"]), by.join(", "))
        },
    );
    line("connections", format!("{} open", u(&m["connections_open"])));
    let pending = u(&r["pending_approvals"]);
    line(
        "approvals",
        if pending == 0 {
            "none pending".into()
        } else {
            format!("{pending} pending (mcp-gateway approvals list)")
        },
    );
    let pins = &r["pins"];
    let mut waiting = if u(&pins["waiting"]) == 0 {
        "nothing waits for review".to_owned()
    } else {
        format!(
            "{} waiting for review (mcp-gateway pins diff SERVER)",
            u(&pins["waiting"])
        )
    };
    for p in pins["servers"].as_array().into_iter().flatten() {
        let _ = write!(
            waiting,
            "\n  {}: {}",
            p["server"].as_str().unwrap_or("?"),
            list(&p["waiting"])
        );
    }
    line("pins", waiting);
    let st = &r["stdio"];
    line(
        "stdio",
        if st.is_null() {
            "off (no [[server]] with a command)".into()
        } else {
            format!(
                "{} trees enrolled, {} servers mediated; exec check {} ({} execs checked, {} killed)",
                u(&st["trees"]),
                u(&st["servers"]),
                st["exec_check"].as_str().unwrap_or("?"),
                u(&st["execs_checked"]),
                u(&st["execs_killed"])
            )
        },
    );
    let calls = &m["calls"];
    line(
        "calls",
        with_breakdown(u(&calls["total"]), &calls["by_outcome"]),
    );
    let denials = &m["denials"];
    line(
        "denials",
        with_breakdown(u(&denials["total"]), &denials["by_reason"]),
    );
    line("redactions", u(&m["redactions"]).to_string());
    let flows = &m["flows"];
    line(
        "flows",
        with_breakdown(u(&flows["total"]), &flows["by_protocol"]),
    );
    let servers = m["servers"].as_array().cloned().unwrap_or_default();
    if !servers.is_empty() {
        let width = servers
            .iter()
            .filter_map(|s| s["server"].as_str())
            .map(str::len)
            .max()
            .unwrap_or(0)
            .clamp(6, 40);
        let _ = writeln!(out, "\n{:<width$}  {:>10}  outcomes", "SERVER", "CALLS");
        for s in &servers {
            let _ = writeln!(
                out,
                "{:<width$}  {:>10}  {}",
                s["server"].as_str().unwrap_or("?"),
                u(&s["calls"]),
                breakdown(&s["by_outcome"])
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parts() -> StatusParts {
        StatusParts {
            started_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            programs: vec!["connect4".into(), "connect6".into(), "sock_ops".into()],
            attach_cgroup: "/sys/fs/cgroup".into(),
            cgroups: vec!["mcp.slice/mcp-agents.slice".into()],
            listeners: vec![
                "127.0.0.1:15001".parse().unwrap(),
                "[::1]:15001".parse().unwrap(),
            ],
            metrics_listen: Some("127.0.0.1:9464".parse().unwrap()),
            sessions: vec![("uid 1001 (bob)".into(), 1), ("uid 1000 (alice)".into(), 2)],
            pins: json!({"servers": [
                {"server": "github", "pending": [
                    {"kind": "tool", "name": "create_issue", "change": "changed", "findings": 0, "rejected": false},
                    {"kind": "tool", "name": "evil", "change": "new", "findings": 1, "rejected": true},
                ]},
                {"server": "files", "pending": []},
            ]}),
            pending_approvals: 1,
            stdio: None,
        }
    }

    fn sample() -> Value {
        let m = metrics::Metrics::new();
        m.mcp("github", "tools/call", "ok");
        m.mcp("github", "tools/call", "ok");
        m.mcp("github", "tools/call", "refused");
        m.mcp("files", "resources/read", "ok");
        m.denied("policy");
        m.redactions(2);
        m.flow("http1", "closed");
        m.connection_opened();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + 3 * 3600 + 125);
        report_at(parts(), now, m.snapshot())
    }

    #[test]
    fn report_has_what_the_daemon_knows() {
        let r = sample();
        assert_eq!(r["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(r["uptime_s"], 3 * 3600 + 125);
        assert_eq!(r["started_at"], "2023-11-14T22:13:20Z");
        assert_eq!(r["listeners"], json!(["127.0.0.1:15001", "[::1]:15001"]));
        assert_eq!(r["metrics_listen"], "127.0.0.1:9464");
        assert_eq!(r["sessions"]["total"], 3);
        assert_eq!(
            r["sessions"]["by_principal"][0],
            json!({"principal": "uid 1000 (alice)", "sessions": 2})
        );
        assert_eq!(r["pins"]["waiting"], 1, "a rejected definition is decided");
        assert_eq!(
            r["pins"]["servers"],
            json!([{"server": "github", "waiting": ["tool create_issue"]}])
        );
        assert_eq!(r["pending_approvals"], 1);
        assert_eq!(r["metrics"]["calls"]["total"], 4);
    }

    #[test]
    fn a_clock_set_back_gives_zero_uptime() {
        let r = report_at(parts(), SystemTime::UNIX_EPOCH, json!({}));
        assert_eq!(r["uptime_s"], 0);
    }

    #[test]
    fn text_summary_reads_well() {
        let text = render_text(&sample());
        let expect = [
            format!(
                "mcp-gateway:      {}, up 3h 2m (since 2023-11-14T22:13:20Z)",
                env!("CARGO_PKG_VERSION")
            ),
            "listeners:        127.0.0.1:15001, [::1]:15001".into(),
            "metrics:          http://127.0.0.1:9464/metrics".into(),
            "attached:         connect4, connect6, sock_ops at /sys/fs/cgroup".into(),
            "agent cgroups:    mcp.slice/mcp-agents.slice".into(),
            "sessions:         3 (uid 1000 (alice) 2, uid 1001 (bob) 1)".into(),
            "connections:      1 open".into(),
            "approvals:        1 pending (mcp-gateway approvals list)".into(),
            "pins:             1 waiting for review (mcp-gateway pins diff SERVER)".into(),
            "calls:            4 (ok 3, refused 1)".into(),
            "denials:          1 (policy 1)".into(),
            "redactions:       2".into(),
            "flows:            1 (http1 1)".into(),
            "  github: tool create_issue".into(),
        ];
        for line in &expect {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        let rows: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("SERVER"))
            .collect();
        assert_eq!(
            rows[0].split_whitespace().collect::<Vec<_>>(),
            ["SERVER", "CALLS", "outcomes"]
        );
        assert_eq!(
            rows[1].split_whitespace().collect::<Vec<_>>(),
            ["files", "1", "ok", "1"]
        );
        assert_eq!(
            rows[2].split_whitespace().collect::<Vec<_>>(),
            ["github", "3", "ok", "2,", "refused", "1"]
        );
    }

    #[test]
    fn an_idle_daemon_says_so() {
        let mut p = parts();
        p.sessions.clear();
        p.pins = json!({"servers": []});
        p.pending_approvals = 0;
        p.metrics_listen = None;
        let text = render_text(&report_at(
            p,
            SystemTime::now(),
            metrics::Metrics::new().snapshot(),
        ));
        assert!(text.contains("sessions:         0\n"), "{text}");
        assert!(text.contains("approvals:        none pending\n"), "{text}");
        assert!(
            text.contains("pins:             nothing waits for review\n"),
            "{text}"
        );
        assert!(
            text.contains("metrics:          off (metrics.listen)\n"),
            "{text}"
        );
        assert!(text.contains("calls:            0\n"), "{text}");
        assert!(!text.contains("SERVER"), "{text}");
    }

    #[test]
    fn uptime_formats() {
        assert_eq!(format_uptime(42), "42s");
        assert_eq!(format_uptime(125), "2m 5s");
        assert_eq!(format_uptime(3 * 3600 + 60), "3h 1m");
        assert_eq!(format_uptime(2 * 86_400 + 3600), "2d 1h 0m");
    }
}
