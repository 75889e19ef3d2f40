//! Each ledger record also goes to journald (when configured and present), as structured
//! fields, so host-level log shipping collects the audit without reading the file.

use std::sync::atomic::{AtomicBool, Ordering};

use libsystemd::logging::{journal_send, Priority};
use serde_json::Value;

static FAILED: AtomicBool = AtomicBool::new(false);

/// Sends one sealed record line. The file stays the record of truth: a journald failure is
/// logged once and otherwise ignored.
pub fn send(line: &[u8]) {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(line) else {
        return;
    };
    let get = |k: &str| map.get(k).and_then(Value::as_str).unwrap_or("");
    let message = format!(
        "mcp-gateway audit {} {} {} {}",
        get("type"),
        get("method"),
        get("name"),
        get("outcome")
    );
    let mut vars: Vec<(String, String)> = vec![
        ("SYSLOG_IDENTIFIER".into(), "mcp-gateway-audit".into()),
        (
            "MCP_AUDIT_RECORD".into(),
            String::from_utf8_lossy(line).trim_end().to_string(),
        ),
    ];
    for (k, v) in &map {
        let value = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => continue,
        };
        let key: String = k
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        vars.push((format!("MCP_{key}"), value));
    }
    if let Err(e) = journal_send(Priority::Info, &message, vars.into_iter()) {
        if !FAILED.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "sending audit records to journald failed (further failures are not logged)");
        }
    }
}
