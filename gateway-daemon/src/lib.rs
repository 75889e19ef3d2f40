//! mcp-gateway's daemon, as a library: the stages of a connection's path in the order a
//! connection meets them, then what serves the administrator. The `mcp-gateway` binary
//! (src/main.rs) is the command line around them; docs/design.md walks the path.

// What everything starts from.
pub mod config;
pub mod daemon;

// The kernel side: the programs that redirect agents' connections and record who made them.
pub mod intercept;

// A redirected connection, in order: accepted (with its connection limits), identified,
// routed, its TLS terminated or passed through, its HTTP served, its MCP decided.
pub mod listen;

pub mod admit;

pub mod identity;

pub mod route;

pub mod tls;

pub mod http;

pub mod mcp;

// What the MCP stage decides with: rules, held calls, tool pins, redaction.
pub mod policy;

pub mod approvals;

pub mod pins;

pub mod redact;

// A flow nobody reads (not HTTP, or TLS passed through): a byte pipe.
pub mod passthrough;

// Where every decision lands.
pub mod audit;

// Stdio servers: the launcher (`mcp-gateway exec`) and the relay through the MCP stage.
pub mod exec;

pub mod stdio;

// The threads connections are served on.
pub mod workers;

// The administrator's side: the admin socket, metrics, status.
pub mod admin;

pub mod metrics;

pub mod status;
