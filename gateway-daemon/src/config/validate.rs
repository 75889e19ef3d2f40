//! Checks a parsed config for what serde cannot: consistent addresses, resolvable users,
//! sane names and sizes. Each failure names the key.

use nix::unistd::User;

use super::{Config, UserRef};

/// A config that passed validation, with user names resolved to ids.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub config: Config,
    pub agent_uids: Vec<u32>,
    /// A valid config that leaves a door open: printed by `check-config`, logged at start.
    pub warnings: Vec<String>,
}

type Failure = (String, String);

fn fail<T>(key: &str, message: impl Into<String>) -> Result<T, Failure> {
    Err((key.to_string(), message.into()))
}

pub(super) fn validate(config: Config) -> Result<Resolved, Failure> {
    let l = &config.listener;
    if !l.ipv4.is_ipv4() {
        return fail(
            "listener.ipv4",
            format!("{} is not an IPv4 address", l.ipv4),
        );
    }
    if !l.ipv6.is_ipv6() {
        return fail(
            "listener.ipv6",
            format!("{} is not an IPv6 address", l.ipv6),
        );
    }
    if l.ipv4.port() == 0 || l.ipv6.port() == 0 {
        return fail(
            "listener",
            "port 0 is not allowed: the eBPF programs need the port before the daemon binds",
        );
    }
    if !l.ipv4.ip().is_loopback() || !l.ipv6.ip().is_loopback() {
        return fail(
            "listener",
            "listener addresses must be loopback (127.0.0.0/8 and ::1): redirected agent \
             connections must not be reachable from the network",
        );
    }

    if let Some(message) = ephemeral_clash(
        &[l.ipv4.port(), l.ipv6.port()],
        &std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default(),
        &std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports").unwrap_or_default(),
    ) {
        return fail("listener", message);
    }

    for (i, c) in config.agents.cgroups.iter().enumerate() {
        if c.is_empty() || c.split('/').any(|part| part == "..") {
            return fail(
                &format!("agents.cgroups[{i}]"),
                format!("{c:?} is not a cgroup path below the cgroup2 mount"),
            );
        }
    }
    let mut agent_uids = Vec::new();
    for (i, u) in config.agents.users.iter().enumerate() {
        match u {
            UserRef::Id(id) => agent_uids.push(*id),
            UserRef::Name(name) => match User::from_name(name) {
                Ok(Some(user)) => agent_uids.push(user.uid.as_raw()),
                Ok(None) => {
                    return fail(
                        &format!("agents.users[{i}]"),
                        format!("no such user {name:?} (use a uid, or create the user)"),
                    )
                }
                Err(e) => {
                    return fail(
                        &format!("agents.users[{i}]"),
                        format!("looking up {name:?}: {e}"),
                    )
                }
            },
        }
    }
    if agent_uids.contains(&0) {
        return fail(
            "agents.users",
            "root (uid 0) cannot be an agent: the daemon itself runs as root",
        );
    }
    if config.agents.cgroups.is_empty() && agent_uids.is_empty() {
        return fail(
            "agents",
            "no agents selected: set agents.cgroups and/or agents.users",
        );
    }

    if !config.scope.all_tcp && config.scope.ports.is_empty() {
        return fail(
            "scope.ports",
            "empty: list ports to mediate, or set scope.all_tcp = true",
        );
    }
    if config.scope.ports.contains(&0) {
        return fail("scope.ports", "port 0 is not a destination port");
    }
    let sizes = [
        ("scope.ports", config.scope.ports.len()),
        ("agents.cgroups", config.agents.cgroups.len()),
        ("agents.users", agent_uids.len()),
    ];
    for (key, n) in sizes {
        if n > config.intercept.selector_capacity as usize {
            return fail(
                key,
                format!(
                    "{n} entries exceed intercept.selector_capacity = {}",
                    config.intercept.selector_capacity
                ),
            );
        }
    }

    let i = &config.intercept;
    if i.instance.is_empty()
        || !i
            .instance
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return fail(
            "intercept.instance",
            format!("{:?}: use letters, digits, '-' and '_'", i.instance),
        );
    }
    if !i.bpffs.is_absolute() {
        return fail("intercept.bpffs", "must be an absolute path");
    }
    if i.attach_cgroup.split('/').any(|part| part == "..") {
        return fail(
            "intercept.attach_cgroup",
            "must be a path below the cgroup2 mount",
        );
    }
    if i.mark == 0 {
        return fail(
            "intercept.mark",
            "0 marks nothing: the daemon's own upstream connections need a non-zero mark",
        );
    }
    if i.max_connections < 64 {
        return fail("intercept.max_connections", "must be at least 64");
    }
    if i.selector_capacity == 0 {
        return fail("intercept.selector_capacity", "must be at least 1");
    }
    let h = &config.http;
    for (key, v, min) in [
        ("http.max_request_bytes", h.max_request_bytes, 1024),
        ("http.max_response_bytes", h.max_response_bytes, 1024),
        ("http.max_event_bytes", h.max_event_bytes, 1024),
        ("http.max_pending", h.max_pending, 1),
        ("http.max_sessions", h.max_sessions, 1),
        ("http.max_sessions_per_user", h.max_sessions_per_user, 1),
        (
            "listener.max_connections_per_user",
            config.listener.max_connections_per_user,
            1,
        ),
        (
            "listener.first_byte_timeout_s",
            config.listener.first_byte_timeout_s as usize,
            1,
        ),
        (
            "listener.connections_per_second_per_user",
            config.listener.connections_per_second_per_user as usize,
            1,
        ),
    ] {
        if v < min {
            return fail(key, format!("{v} is below the minimum {min}"));
        }
    }
    // One user must be able to hold at least one body of each kind at its largest.
    let largest = h
        .max_request_bytes
        .max(h.max_response_bytes)
        .max(h.max_event_bytes);
    if h.max_buffered_bytes_per_user < largest {
        return fail(
            "http.max_buffered_bytes_per_user",
            format!(
                "{} is below the largest body one exchange may hold ({largest}: \
                 max_request_bytes, max_response_bytes or max_event_bytes)",
                h.max_buffered_bytes_per_user
            ),
        );
    }
    if h.max_buffered_bytes < h.max_buffered_bytes_per_user {
        return fail(
            "http.max_buffered_bytes",
            format!(
                "{} is below http.max_buffered_bytes_per_user ({})",
                h.max_buffered_bytes, h.max_buffered_bytes_per_user
            ),
        );
    }
    let mut names = std::collections::HashSet::new();
    for (i, s) in config.servers.iter().enumerate() {
        let key = |k: &str| format!("server[{i}].{k}");
        if s.name.is_empty() {
            return fail(&key("name"), "must not be empty");
        }
        if !names.insert(s.name.as_str()) {
            return fail(
                &key("name"),
                format!("{:?} is used by another server", s.name),
            );
        }
        if let Some(command) = &s.command {
            if s.address.is_some() || s.host.is_some() || s.path.is_some() {
                return fail(
                    &key("command"),
                    format!(
                        "server {:?} is started over stdio: `command` goes without \
                         `address`, `host` and `path`",
                        s.name
                    ),
                );
            }
            if command.is_empty() {
                return fail(&key("command"), "needs at least the executable's glob");
            }
            for (j, g) in command.iter().enumerate() {
                if let Err(e) = globset::Glob::new(g) {
                    return fail(
                        &format!("server[{i}].command[{j}]"),
                        format!("{g:?} is not a valid glob: {e}"),
                    );
                }
            }
            if !s.credentials.is_empty() {
                return fail(
                    &key("credential"),
                    "a stdio server has no HTTP headers to carry credentials",
                );
            }
        } else if s.address.is_none() && s.host.is_none() {
            return fail(
                &format!("server[{i}]"),
                format!("server {:?} needs `address` or `host` (or `command` for a server started over stdio)", s.name),
            );
        }
        if s.port.is_some() && s.host.is_none() {
            return fail(&key("port"), "only meaningful with `host`");
        }
        if let Some(h) = &s.host {
            if h.is_empty() || h.contains([':', '/', ' ']) {
                return fail(
                    &key("host"),
                    format!("{h:?} is not a host name (no port, no path)"),
                );
            }
        }
        if let Some(p) = &s.path {
            if !p.starts_with('/') {
                return fail(&key("path"), format!("{p:?} must start with '/'"));
            }
        }
    }
    if config.stdio.max_servers_per_user == 0 {
        return fail(
            "stdio.max_servers_per_user",
            "must be at least 1 (a stdio server is refused past it)",
        );
    }
    // Credentials: their shape here; the secrets are read at start (mcp::inject::load).
    super::credential::validate(&config.servers).map_err(|e| (e.key, e.message))?;
    let a = &config.audit;
    if a.path.as_os_str().is_empty() || a.path.file_name().is_none() {
        return fail("audit.path", "must name a file");
    }
    if a.key.as_os_str().is_empty() {
        return fail("audit.key", "must name a file");
    }
    if a.max_file_bytes < 4096 {
        return fail("audit.max_file_bytes", "must be at least 4096");
    }
    if a.checkpoint_interval_s == 0 {
        return fail("audit.checkpoint_interval_s", "must be at least 1");
    }
    if a.batch_interval_ms == 0 || a.batch_interval_ms > 10_000 {
        return fail("audit.batch_interval_ms", "must be between 1 and 10000");
    }
    let t = &config.tls;
    for (key, path) in [("tls.ca_cert", &t.ca_cert), ("tls.ca_key", &t.ca_key)] {
        if path.as_os_str().is_empty() || path.file_name().is_none() {
            return fail(key, "must name a file");
        }
    }
    if t.ca_cert == t.ca_key {
        return fail("tls.ca_key", "must be a different file from tls.ca_cert");
    }
    if t.leaf_cache == 0 {
        return fail("tls.leaf_cache", "must be at least 1");
    }
    if !(3_600..=90 * 86_400).contains(&t.leaf_validity_s) {
        return fail(
            "tls.leaf_validity_s",
            "must be between 3600 (an hour) and 7776000 (90 days)",
        );
    }
    if !(100..=120_000).contains(&t.handshake_timeout_ms) {
        return fail("tls.handshake_timeout_ms", "must be between 100 and 120000");
    }
    if !t.system_roots && t.extra_roots.is_empty() {
        return fail(
            "tls.system_roots",
            "is false and tls.extra_roots is empty: no upstream server could be verified",
        );
    }
    let ap = &config.approvals;
    if !(1..=86_400).contains(&ap.timeout_s) {
        return fail("approvals.timeout_s", "must be between 1 and 86400");
    }
    if ap.max_held == 0 {
        return fail("approvals.max_held", "must be at least 1");
    }
    if !(1..=3_600).contains(&ap.progress_interval_s) {
        return fail(
            "approvals.progress_interval_s",
            "must be between 1 and 3600",
        );
    }
    if let Some(m) = config.metrics.listen {
        if !m.ip().is_loopback() {
            return fail(
                "metrics.listen",
                format!("{m} is not a loopback address: metrics stay on this host"),
            );
        }
    }
    // A group named on purpose must exist: the daemon would make the socket root-only and
    // only say so in its log. The default's group comes with the package (sysusers); without
    // it the daemon warns at start.
    if config.admin.group != super::defaults::ADMIN_GROUP {
        match nix::unistd::Group::from_name(&config.admin.group) {
            Ok(Some(_)) => {}
            Ok(None) => {
                return fail(
                    "admin.group",
                    format!(
                        "no such group {:?}: create it (its members may use the admin \
                         socket), or leave admin.group out for {:?}, which the package creates",
                        config.admin.group,
                        super::defaults::ADMIN_GROUP
                    ),
                )
            }
            Err(e) => {
                return fail(
                    "admin.group",
                    format!("looking up {:?}: {e}", config.admin.group),
                )
            }
        }
    }
    config.redact.validate().map_err(|e| match e {
        crate::redact::RedactError::Config { key, message } => (key, message),
        other => ("redact".to_string(), other.to_string()),
    })?;
    crate::policy::Policy::compile(&config)?;
    let warnings = warnings(&config);
    Ok(Resolved {
        config,
        agent_uids,
        warnings,
    })
}

/// A listener port the kernel may hand out as an ephemeral port: while the daemon is down,
/// any process (an agent too: autobind runs no bind program) could take it with a bare
/// `listen()` and keep the daemon from starting again.
pub(super) fn ephemeral_clash(ports: &[u16], range: &str, reserved: &str) -> Option<String> {
    let mut bounds = range.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(low)), Some(Ok(high))) = (bounds.next(), bounds.next()) else {
        return None;
    };
    let reserved: Vec<(u16, u16)> = reserved
        .trim()
        .split(',')
        .filter_map(|r| {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
        })
        .collect();
    let port = *ports.iter().find(|p| {
        (low..=high).contains(*p) && !reserved.iter().any(|(a, b)| (*a..=*b).contains(*p))
    })?;
    Some(format!(
        "port {port} lies in the kernel's ephemeral range {low}-{high} \
         (net.ipv4.ip_local_port_range): while the daemon is down any process could take it \
         by autobind and keep the daemon from starting. Choose a port below {low}, or reserve \
         it in net.ipv4.ip_local_reserved_ports"
    ))
}

fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if config.agents.users.is_empty() && !config.agents.cgroups.is_empty() {
        out.push(
            "agents.users is empty: agents are selected by cgroup only. An agent can ptrace \
             a process of its own uid that runs outside the agent cgroups (unless Yama's \
             kernel.yama.ptrace_scope is 1 or more) and connect through it, unmediated. Run \
             agents as dedicated users and list them in agents.users too"
                .to_string(),
        );
    }
    if config.intercept.detach_on_stop {
        out.push(
            "intercept.detach_on_stop = true: every stop and restart of the daemon (an \
             upgrade, `systemctl restart`) lets agents connect directly until it is back"
                .to_string(),
        );
    }
    if !config.intercept.attach_cgroup.trim_matches('/').is_empty() {
        out.push(format!(
            "intercept.attach_cgroup = {:?}: the programs see only processes below it, and go \
             with it when it is removed (systemd removes a stopped slice): agents created \
             again there, or selected by user elsewhere, would connect unmediated. Attach to \
             \"/\"",
            config.intercept.attach_cgroup
        ));
    }
    if !config.scope.all_tcp {
        out.push(format!(
            "scope.all_tcp = false: only agent connections to ports {:?} are mediated; an MCP \
             server on any other port (a dev server on 3000 or 8000) is reached unaudited",
            config.scope.ports
        ));
    }
    out
}
