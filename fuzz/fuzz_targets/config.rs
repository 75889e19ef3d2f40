//! Config parsing and validation (`config::Config::parse`, what `run` and `check-config`
//! use) on arbitrary text.
//!
//! Asserts: it never panics; an error names the file, and a validation error names a key
//! that is a path into the config (its first part one of the config's tables); the same
//! text gives the same answer twice; and a config that passes is one the daemon can start
//! its policy from (the policy and the redactor compile, the limits validation promises
//! hold).
#![no_main]

use std::path::Path;

use gateway_daemon::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

/// The top-level keys of the config (`Config`'s fields as TOML names them).
const TABLES: &[&str] = &[
    "listener",
    "agents",
    "scope",
    "intercept",
    "audit",
    "http",
    "tls",
    "admin",
    "pins",
    "approvals",
    "metrics",
    "server",
    "policy",
    "principal",
    "rule",
    "redact",
];

fn describe(r: &Result<gateway_daemon::config::Resolved, ConfigError>) -> String {
    match r {
        Ok(r) => format!("ok {:?}", r.agent_uids),
        Err(e) => e.to_string(),
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("/etc/mcp-gateway/fuzz.toml");
    let result = Config::parse(path, &text);
    assert_eq!(
        describe(&result),
        describe(&Config::parse(path, &text)),
        "not deterministic"
    );
    match result {
        Err(ConfigError::Read { .. }) => panic!("parse does not read files"),
        Err(e @ ConfigError::Parse { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("/etc/mcp-gateway/fuzz.toml"), "{msg}");
            if let ConfigError::Parse { message, .. } = &e {
                assert!(!message.trim().is_empty(), "an empty parse error");
            }
        }
        Err(e @ ConfigError::Invalid { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("/etc/mcp-gateway/fuzz.toml"), "{msg}");
            let ConfigError::Invalid { key, message, .. } = &e else {
                unreachable!()
            };
            assert!(!message.trim().is_empty(), "no message for `{key}`");
            let first = key
                .split(['.', '['])
                .next()
                .expect("split yields at least one part");
            assert!(
                TABLES.contains(&first),
                "`{key}` is not a config key ({msg})"
            );
            assert!(msg.contains(&format!("`{key}`")), "{msg}");
        }
        Ok(resolved) => {
            let c = &resolved.config;
            assert!(c.listener.ipv4.ip().is_loopback() && c.listener.ipv6.ip().is_loopback());
            assert!(c.listener.ipv4.port() != 0 && c.listener.ipv6.port() != 0);
            assert!(!c.agents.cgroups.is_empty() || !resolved.agent_uids.is_empty());
            assert!(!resolved.agent_uids.contains(&0));
            assert!(c.scope.all_tcp || !c.scope.ports.is_empty());
            assert!(c.http.max_event_bytes >= 1024 && c.http.max_request_bytes >= 1024);
            assert!(c.http.max_pending >= 1 && c.http.max_sessions >= 1);
            for s in &c.servers {
                assert!(!s.name.is_empty() && (s.address.is_some() || s.host.is_some()));
            }
            gateway_daemon::policy::Policy::compile(c)
                .unwrap_or_else(|(k, m)| panic!("validated, but the policy fails: `{k}`: {m}"));
            gateway_daemon::redact::Redactor::new(&c.redact)
                .unwrap_or_else(|e| panic!("validated, but the redactor fails: {e}"));
        }
    }
});
