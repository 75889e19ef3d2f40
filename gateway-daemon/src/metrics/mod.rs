//! The daemon's counters and gauges: what it mediated, refused and redacted, and what is
//! open now. Process-wide ([`global`]), so a decision point counts with one call and no
//! plumbing; every call is a few atomics. Label values are bounded: methods outside the
//! MCP specification, servers past the first [`MAX_SERVERS`] and unknown denial reasons
//! count as "other", so nothing an agent sends grows the label set.
//!
//! Read as Prometheus text on `metrics.listen` ([`serve`]) and as JSON in
//! `mcp-gateway status` and `top` ([`Metrics::snapshot`]).

mod labels;
mod serve;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{json, Map, Value};

use labels::{CappedCounters, LabelSet, OTHER};
pub use serve::{bind, serve, serve_on, MetricsError, CONTENT_TYPE};

/// Distinct `server` label values; later servers count as "other".
pub const MAX_SERVERS: usize = 256;
/// Distinct values of the labels the daemon itself chooses (protocol, outcome): a guard
/// against a bug, not a limit anyone should reach.
const MAX_FREE_VALUES: usize = 32;
/// Series of the per-exchange counter (server × method × outcome).
const MAX_MCP_SERIES: usize = 4096;

/// Why a request or connection was refused: the `reason` label of `denied_total`.
pub const DENY_REASONS: [&str; 8] = [
    "policy",
    "rate_limit",
    "exfiltration",
    "unpinned",
    "approval_denied",
    "approval_timeout",
    "malformed",
    OTHER,
];

/// JSON-RPC methods of the MCP specification (and the extensions rmcp knows): the values
/// the `method` label may take; anything else counts as "other".
pub const MCP_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/directory/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "sampling/createMessage",
    "elicitation/create",
    "roots/list",
    "tasks/get",
    "tasks/list",
    "tasks/result",
    "tasks/cancel",
    "tasks/update",
    "server/discover",
    "skills/list",
    "skills/get",
    "subscriptions/listen",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/message",
    "notifications/resources/updated",
    "notifications/resources/list_changed",
    "notifications/tools/list_changed",
    "notifications/prompts/list_changed",
    "notifications/roots/list_changed",
    "notifications/elicitation/complete",
    "notifications/elicitation/response",
    "notifications/tasks",
    "notifications/tasks/status",
    "notifications/subscriptions/acknowledged",
];

/// The `method` label for a JSON-RPC method name.
pub fn method_label(method: &str) -> &str {
    if MCP_METHODS.contains(&method) {
        method
    } else {
        OTHER
    }
}

/// The `reason` label for a denial reason.
pub fn reason_label(reason: &str) -> &str {
    if DENY_REASONS.contains(&reason) {
        reason
    } else {
        OTHER
    }
}

/// The process's metrics; see [`global`].
pub struct Metrics {
    registry: Registry,
    flows: CappedCounters<2>,
    mcp: CappedCounters<3>,
    denied: [Counter; DENY_REASONS.len()],
    redactions: Counter,
    sessions: Gauge,
    pending_approvals: Gauge,
    pins_waiting: Gauge,
    connections_open: Gauge,
}

/// The daemon's metrics, created on first use.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set, all zero (tests use their own; the daemon uses [`global`]).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mcp_gateway");
        let flows = CappedCounters::new(
            ["protocol", "outcome"],
            [MAX_FREE_VALUES, MAX_FREE_VALUES],
            MAX_FREE_VALUES * MAX_FREE_VALUES,
        );
        registry.register(
            "flows",
            "Agent connections that ended, by protocol (http1, http2, tls, tcp) and outcome",
            flows.family(),
        );
        let mcp = CappedCounters::new(
            ["server", "method", "outcome"],
            [MAX_SERVERS, MCP_METHODS.len(), MAX_FREE_VALUES],
            MAX_MCP_SERIES,
        );
        registry.register(
            "mcp_calls",
            "Audited JSON-RPC exchanges, by server, MCP method and outcome",
            mcp.family(),
        );
        let denied_family = Family::<LabelSet<1>, Counter>::default();
        // Every reason is exported from the start, at 0, so rates and alerts need no
        // "absent" special case.
        let denied =
            DENY_REASONS.map(|r| denied_family.get_or_create_owned(&[("reason", r.to_owned())]));
        registry.register(
            "denied",
            "Requests and connections refused, by reason",
            denied_family,
        );
        let redactions = Counter::default();
        registry.register(
            "redactions",
            "Secrets and personal data redacted from MCP traffic",
            redactions.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let sessions = gauge(&mut registry, "sessions", "Open MCP sessions");
        let pending_approvals = gauge(
            &mut registry,
            "pending_approvals",
            "Calls held for an administrator's approval",
        );
        let pins_waiting = gauge(
            &mut registry,
            "pins_waiting",
            "Tool definitions waiting for an administrator's review",
        );
        let connections_open = gauge(
            &mut registry,
            "connections_open",
            "Agent connections being mediated now",
        );
        let build_info = Family::<LabelSet<1>, Gauge>::default();
        build_info
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION").to_owned())])
            .set(1);
        registry.register(
            "build_info",
            "The running mcp-gateway's version (always 1)",
            build_info,
        );
        Self {
            registry,
            flows,
            mcp,
            denied,
            redactions,
            sessions,
            pending_approvals,
            pins_waiting,
            connections_open,
        }
    }

    /// A mediated connection ended. `protocol`: http1, http2, tls or tcp.
    pub fn flow(&self, protocol: &str, outcome: &str) {
        self.flows.inc([protocol, outcome]);
    }

    /// One audited JSON-RPC exchange with `server`. Methods outside the MCP specification
    /// count as "other", and so do servers past the first [`MAX_SERVERS`].
    pub fn mcp(&self, server: &str, method: &str, outcome: &str) {
        self.mcp.inc([server, method_label(method), outcome]);
    }

    /// A request or connection was refused. `reason`: one of [`DENY_REASONS`]; anything
    /// else counts as "other".
    pub fn denied(&self, reason: &str) {
        let i = DENY_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(DENY_REASONS.len() - 1);
        self.denied[i].inc();
    }

    /// `n` values were redacted.
    pub fn redactions(&self, n: u64) {
        if n > 0 {
            self.redactions.inc_by(n);
        }
    }

    pub fn set_sessions(&self, n: usize) {
        self.sessions.set(gauge_value(n));
    }

    pub fn set_pending_approvals(&self, n: usize) {
        self.pending_approvals.set(gauge_value(n));
    }

    pub fn set_pins_waiting(&self, n: usize) {
        self.pins_waiting.set(gauge_value(n));
    }

    /// An agent connection is being mediated; pair with [`Metrics::connection_closed`], or
    /// hold the guard of [`Metrics::open_connection`].
    pub fn connection_opened(&self) {
        self.connections_open.inc();
    }

    pub fn connection_closed(&self) {
        self.connections_open.dec();
    }

    /// Counts one open connection until the guard is dropped (on every path out of the
    /// connection's task, panics included).
    pub fn open_connection(&'static self) -> OpenConnection {
        self.connection_opened();
        OpenConnection(self)
    }

    /// Everything, in the Prometheus text exposition format (version 0.0.4).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }

    /// The same numbers as JSON, for `mcp-gateway status` and `top`.
    pub fn snapshot(&self) -> Value {
        let mut flows_total = 0;
        let mut flows_by_protocol = BTreeMap::<String, u64>::new();
        let mut flows_by_outcome = BTreeMap::<String, u64>::new();
        self.flows.for_each(|[protocol, outcome], n| {
            flows_total += n;
            *flows_by_protocol.entry(protocol.into()).or_default() += n;
            *flows_by_outcome.entry(outcome.into()).or_default() += n;
        });

        #[derive(Default)]
        struct Server {
            calls: u64,
            by_outcome: BTreeMap<String, u64>,
            by_method: BTreeMap<String, u64>,
        }
        let mut calls_total = 0;
        let mut calls_by_outcome = BTreeMap::<String, u64>::new();
        let mut calls_by_method = BTreeMap::<String, u64>::new();
        let mut servers = BTreeMap::<String, Server>::new();
        self.mcp.for_each(|[server, method, outcome], n| {
            calls_total += n;
            *calls_by_outcome.entry(outcome.into()).or_default() += n;
            *calls_by_method.entry(method.into()).or_default() += n;
            let s = servers.entry(server.into()).or_default();
            s.calls += n;
            *s.by_outcome.entry(outcome.into()).or_default() += n;
            *s.by_method.entry(method.into()).or_default() += n;
        });
        let servers: Vec<Value> = servers
            .into_iter()
            .map(|(name, s)| {
                json!({
                    "server": name,
                    "calls": s.calls,
                    "by_outcome": s.by_outcome,
                    "by_method": s.by_method,
                })
            })
            .collect();

        let mut denials_by_reason = Map::new();
        let mut denials_total = 0;
        for (reason, c) in DENY_REASONS.iter().zip(&self.denied) {
            denials_total += c.get();
            denials_by_reason.insert((*reason).into(), c.get().into());
        }

        json!({
            "calls": {
                "total": calls_total,
                "by_outcome": calls_by_outcome,
                "by_method": calls_by_method,
            },
            "servers": servers,
            "denials": { "total": denials_total, "by_reason": denials_by_reason },
            "redactions": self.redactions.get(),
            "flows": {
                "total": flows_total,
                "by_protocol": flows_by_protocol,
                "by_outcome": flows_by_outcome,
            },
            "connections_open": self.connections_open.get(),
            "sessions": self.sessions.get(),
            "pending_approvals": self.pending_approvals.get(),
            "pins_waiting": self.pins_waiting.get(),
        })
    }
}

/// One open agent connection, counted in `connections_open` until dropped.
#[must_use = "the connection counts as open only while the guard lives"]
pub struct OpenConnection(&'static Metrics);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connection_closed();
    }
}
