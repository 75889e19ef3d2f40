//! The kernel side of mcp-gateway: the compiled eBPF object and the `#[repr(C)]` mirrors of
//! the structs in `src/bpf/gateway.h`.
//!
//! Size and offset assertions here and `_Static_assert`s in the header pin both sides to the
//! same layout, so a change made on one side only fails the build.

use std::mem::{offset_of, size_of};

/// The object file with every program and map, built by `build.rs`.
pub static REDIRECT_OBJ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/redirect.bpf.o"));

/// The exec check of stdio mediation (`src/bpf/exec_check.bpf.c`): its own object, loaded
/// only when stdio servers are configured.
pub static EXEC_CHECK_OBJ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/exec_check.bpf.o"));
pub const PROG_EXEC_CHECK: &str = "gw_exec_check";
/// Exec'ing thread's pid → `GwExecExpect`.
pub const MAP_EXEC_EXPECT: &str = "gw_exec_expect";
/// [0] execs checked, [1] execs killed.
pub const MAP_EXEC_COUNTS: &str = "gw_exec_counts";
/// FNV-1a (32 bits) of the argument area (GW_FNV_* in exec_check.h).
pub const FNV_OFFSET: u32 = 2_166_136_261;
pub const FNV_PRIME: u32 = 16_777_619;
/// Longest argument area the check reads (GW_EXEC_ARGV_MAX).
pub const EXEC_ARGV_MAX: usize = 4 << 20;

/// `struct gw_exec_expect` (exec_check.h): what the daemon decided an exec runs.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GwExecExpect {
    /// The file's device as the kernel encodes it (major << 20 | minor).
    pub dev: u64,
    pub ino: u64,
    /// The exec'ing thread's start and its thread group leader's, in clock ticks since
    /// boot (/proc's unit): an entry left by a thread that is gone never matches another.
    pub start_ticks: u64,
    pub leader_start_ticks: u64,
    pub argv_len: u32,
    pub argv_hash: u32,
}

const _: () = {
    assert!(size_of::<GwExecExpect>() == 40);
    assert!(offset_of!(GwExecExpect, argv_len) == 32);
};
// SAFETY: integers only, no padding (the layout is asserted above), any bit pattern valid.
unsafe impl aya::Pod for GwExecExpect {}

/// Program names (C function names) and their roles.
pub const PROG_CONNECT4: &str = "gw_connect4";
pub const PROG_CONNECT6: &str = "gw_connect6";
pub const PROG_SOCKOPS: &str = "gw_sockops";
pub const PROG_GETPEERNAME4: &str = "gw_getpeername4";
pub const PROG_GETPEERNAME6: &str = "gw_getpeername6";
pub const PROG_SENDMSG4: &str = "gw_sendmsg4";
pub const PROG_SENDMSG6: &str = "gw_sendmsg6";
pub const PROG_BIND4: &str = "gw_bind4";
pub const PROG_BIND6: &str = "gw_bind6";
pub const PROG_SK_LOOKUP: &str = "gw_sk_lookup";
pub const PROG_SOCK_CREATE: &str = "gw_sock_create";
/// tp_btf/sched_process_exec, _fork and _exit: what each process's exec loaded, kept in
/// `gw_exec_files` while the process lives.
pub const PROG_EXEC_SEEN: &str = "gw_exec_seen";
pub const PROG_FORK_SEEN: &str = "gw_fork_seen";
pub const PROG_EXIT_SEEN: &str = "gw_exit_seen";

/// Map names, as pinned under the instance's bpffs directory.
pub const MAP_CONFIG: &str = "gw_config";
/// cgroup id → class (`CGROUP_*`).
pub const MAP_CGROUPS: &str = "gw_cgroups";
pub const MAP_AGENT_UIDS: &str = "gw_agent_uids";
pub const MAP_SCOPE_PORTS: &str = "gw_scope_ports";
pub const MAP_CONNS: &str = "gw_conns";
pub const MAP_PENDING: &str = "gw_pending";
/// The daemon's listening sockets, at `LISTENER_V4` and `LISTENER_V6`.
pub const MAP_LISTENERS: &str = "gw_listeners";
/// tgid → `GwExecFile`: the file each process's last exec loaded.
pub const MAP_EXEC_FILES: &str = "gw_exec_files";
/// [0]: notes that could not be kept (the map was full).
pub const MAP_EXEC_LOST: &str = "gw_exec_lost";

/// Classes of `gw_cgroups` (GW_CGROUP_* in gateway.h).
pub const CGROUP_AGENT: u8 = 1;
pub const CGROUP_KNOWN: u8 = 2;
pub const CGROUP_WATCHED: u8 = 3;
/// Slots of `gw_listeners` (GW_LISTENER_* in gateway.h).
pub const LISTENER_V4: u32 = 0;
pub const LISTENER_V6: u32 = 1;

pub const COMM_LEN: usize = 16;

/// Key of `gw_conns`: addresses in network byte order, IPv4 written v4-mapped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GwTuple {
    pub client: [u8; 16],
    pub listener: [u8; 16],
    pub client_port: u16,
    pub listener_port: u16,
}

/// What the kernel saw at `connect()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GwRecord {
    pub orig_addr: [u8; 16],
    pub orig_port: u16,
    pub orig_family: u16,
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub _pad: u32,
    pub cgroup_id: u64,
    pub start_boottime: u64,
    pub connect_boot_ns: u64,
    pub comm: [u8; COMM_LEN],
    /// Inode of the caller's executable at connect(); 0 when it had none.
    pub exe_ino: u64,
    /// Its filesystem's device, in the kernel's encoding (major << 20 | minor).
    pub exe_dev: u32,
    /// `EXE_*`: what the kernel can say of that file.
    pub exe_flags: u32,
    /// Its change time at connect(), and its inode's generation.
    pub exe_ctime_sec: i64,
    pub exe_ctime_nsec: u32,
    pub exe_generation: u32,
}

/// `GwRecord::exe_flags` (GW_EXE_* in gateway.h): the exec that loaded the caller's
/// program was seen...
pub const EXE_ATTESTED: u32 = 1;
/// ...and the caller's executable is no longer that program: the process set it itself
/// (prctl PR_SET_MM, which it may do in a user namespace of its own).
pub const EXE_REPLACED: u32 = 2;
/// No note of the caller's exec, and notes were lost (`gw_exec_lost`): nothing vouches for
/// the file.
pub const EXE_UNKNOWN: u32 = 4;
/// ...or the very file its exec loaded, changed since (change time or generation moved).
pub const EXE_CHANGED: u32 = 8;
/// ...or on a filesystem mounted in a user namespace, whose owner says what it holds.
pub const EXE_USER_MOUNT: u32 = 16;

/// `struct gw_exec_file`: the file a process's last exec loaded (`gw_exec_files`, by tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GwExecFile {
    /// The process's (leader's) start, ns since boot: a reused tgid never matches.
    pub start_boottime: u64,
    pub ino: u64,
    /// The kernel's encoding (major << 20 | minor).
    pub dev: u32,
    pub generation: u32,
    pub ctime_sec: i64,
    pub ctime_nsec: u32,
    /// `EXE_USER_MOUNT` when its filesystem was mounted in a user namespace.
    pub flags: u32,
}

const _: () = assert!(size_of::<GwExecFile>() == 40);
// SAFETY: integers only, padding explicit (the layout is asserted above).
unsafe impl aya::Pod for GwExecFile {}

/// The single entry of `gw_config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GwConfig {
    pub listen4: [u8; 4],
    pub listen6: [u8; 16],
    pub listen4_port: u16,
    pub listen6_port: u16,
    /// Zero: it was the daemon's tgid, an exemption a forking agent could obtain.
    pub _reserved: u32,
    pub mark: u32,
    pub enabled: u8,
    pub all_tcp: u8,
    pub _pad: u16,
}

// SAFETY: plain `#[repr(C)]` data without padding holes that the kernel could read
// uninitialised (explicit `_pad` fields), valid for every bit pattern.
unsafe impl aya::Pod for GwTuple {}
unsafe impl aya::Pod for GwRecord {}
unsafe impl aya::Pod for GwConfig {}

const _: () = {
    assert!(size_of::<GwTuple>() == 36);
    assert!(offset_of!(GwTuple, client_port) == 32);
    assert!(size_of::<GwRecord>() == 112);
    assert!(offset_of!(GwRecord, exe_ctime_sec) == 96);
    assert!(offset_of!(GwRecord, exe_ino) == 80);
    assert!(offset_of!(GwRecord, orig_port) == 16);
    assert!(offset_of!(GwRecord, pid) == 20);
    assert!(offset_of!(GwRecord, cgroup_id) == 40);
    assert!(offset_of!(GwRecord, comm) == 64);
    assert!(offset_of!(GwRecord, exe_flags) == 92);
    assert!(size_of::<GwConfig>() == 36);
    assert!(offset_of!(GwConfig, listen4_port) == 20);
    assert!(offset_of!(GwConfig, mark) == 28);
    assert!(offset_of!(GwConfig, enabled) == 32);
};
