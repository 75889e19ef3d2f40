//! Every default of the config, named once. Each section's `Default` is built from these,
//! and serde fills a key left out of the file from that `Default` (`#[serde(default)]` on
//! the struct): the code has one value per key. The example config
//! (systemd/mcp-gateway.toml) spells them out, and a test holds it to these.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

// [listener]
pub const LISTENER_IPV4: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 15001));
pub const LISTENER_IPV6: SocketAddr =
    SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 15001, 0, 0));
pub const MAX_CONNECTIONS_PER_USER: usize = 4096;
pub const FIRST_BYTE_TIMEOUT_S: u64 = 60;
pub const CONNECTIONS_PER_SECOND_PER_USER: u32 = 500;
/// 0: one worker thread per two cores the daemon may run on, rounded up.
pub const WORKERS: usize = 0;

// [scope]
pub const ALL_TCP: bool = true;
pub const PORTS: [u16; 3] = [80, 443, 8080];

// [intercept]
pub const INSTANCE: &str = "default";
pub const BPFFS: &str = "/sys/fs/bpf";
pub const ATTACH_CGROUP: &str = "/";
/// "MCPG".
pub const MARK: u32 = 0x4d43_5047;
pub const MAX_CONNECTIONS: u32 = 65536;
pub const SELECTOR_CAPACITY: u32 = 1024;
/// A busy host runs a few thousand processes; each note costs the kernel some 100 bytes,
/// only while its process lives.
pub const MAX_PROCESSES: u32 = 131_072;
pub const DETACH_ON_STOP: bool = false;

// [audit]
pub const AUDIT_PATH: &str = "/var/log/mcp-gateway/audit.jsonl";
pub const BATCH_INTERVAL_MS: u64 = 10;
pub const MAX_FILE_BYTES: u64 = 64 << 20;
pub const MAX_FILE_AGE_S: u64 = 86_400;
pub const RETAIN_FILES: usize = 30;
pub const CHECKPOINT_INTERVAL_S: u64 = 60;
pub const AUDIT_KEY: &str = "/var/lib/mcp-gateway/audit-signing.key";

// [http]
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
pub const MAX_RESPONSE_BYTES: usize = 32 << 20;
pub const MAX_EVENT_BYTES: usize = 8 << 20;
pub const MCP_ONLY: bool = false;
pub const MAX_PENDING: usize = 1024;
pub const MAX_SESSIONS: usize = 10_000;
pub const MAX_SESSIONS_PER_USER: usize = 1_000;
pub const MAX_BUFFERED_BYTES: usize = 1 << 30;
pub const MAX_BUFFERED_BYTES_PER_USER: usize = 256 << 20;

// [tls]
pub const CA_CERT: &str = "/var/lib/mcp-gateway/ca.pem";
pub const CA_KEY: &str = "/var/lib/mcp-gateway/ca.key";
pub const DISCOVER: bool = false;
pub const SYSTEM_ROOTS: bool = true;
pub const LEAF_CACHE: usize = 1024;
pub const LEAF_VALIDITY_S: u64 = 86_400;
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

// [admin]
pub const ADMIN_SOCKET: &str = "/run/mcp-gateway/admin.sock";
/// The admin group the package creates.
pub const ADMIN_GROUP: &str = "mcp-gateway";

// [stdio]
pub const STDIO_SOCKET: &str = "/run/mcp-gateway/stdio.sock";
pub const MAX_SERVERS_PER_USER: usize = 64;

// [pins]
pub const PINS_PATH: &str = "/var/lib/mcp-gateway/pins.json";

// [approvals]
pub const APPROVAL_TIMEOUT_S: u64 = 120;
pub const MAX_HELD: usize = 256;
pub const PROGRESS_INTERVAL_S: u64 = 5;
pub const MAX_GRANT_S: u64 = 86_400;

// [[principal]] and [[rule]] (tables with required keys: their defaults are per key)
pub const RATE_WINDOW_S: u64 = 60;
pub const RULE_SERVER: &str = "*";
pub const RULE_METHODS: [&str; 1] = ["tools/call"];
