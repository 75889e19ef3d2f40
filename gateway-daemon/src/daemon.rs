//! The daemon's shared state: what every connection's path reads, built once at start and
//! shared by every stage (`route` carries each flow with it, the MCP stage decides with
//! it). Per connection there is `mcp::ConnCtx`, which holds this and what is the
//! connection's own; the front door (`listen::Server`) holds this and what only accepting
//! needs (the kernel's records, the connection limits, the worker threads).

use std::sync::Arc;

use crate::approvals::Approvals;
use crate::audit::AuditSink;
use crate::config::Config;
use crate::http::budget::Budget;
use crate::mcp::Sessions;
use crate::pins::Pins;
use crate::policy::filter::Catalog;
use crate::policy::limits::Limiter;
use crate::policy::PolicyHandle;
use crate::tls::Tls;

pub struct Daemon {
    pub config: Arc<Config>,
    pub audit: AuditSink,
    /// Memory for bodies under inspection, shared by every connection.
    pub budget: Arc<Budget>,
    pub sessions: Arc<Sessions>,
    pub policy: Arc<PolicyHandle>,
    /// What servers said about their tools (annotations), for policy.
    pub catalog: Arc<Catalog>,
    pub limiter: Arc<Limiter>,
    pub tls: Arc<Tls>,
    pub pins: Arc<Pins>,
    pub approvals: Arc<Approvals>,
    /// Task handles servers gave out, and to whom (2026-07-28 tasks extension).
    pub tasks: Arc<crate::mcp::tasks::Tasks>,
    /// Request states servers issued (2026-07-28 multi-round-trip requests).
    pub issued: Arc<crate::mcp::input_required::Issued>,
}
