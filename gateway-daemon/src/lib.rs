//! mcp-gateway's daemon, as a library: the stages of a connection's path, in order.
//! The `mcp-gateway` binary (src/main.rs) is the command line around them.

pub mod admin;
pub mod admit;
pub mod approvals;
pub mod audit;
pub mod config;
pub mod daemon;
pub mod exec;
pub mod http;
pub mod identity;
pub mod intercept;
pub mod listen;
pub mod mcp;
pub mod metrics;
pub mod passthrough;
pub mod pins;
pub mod policy;
pub mod redact;
pub mod route;
pub mod status;
pub mod stdio;
pub mod tls;
pub mod workers;
