/* Structs shared between the eBPF programs and user space.
 *
 * Mirrored as #[repr(C)] types in gateway-ebpf/src/lib.rs; both sides assert sizes and
 * offsets so a change on one side that is not made on the other fails the build. */
#ifndef MCP_GATEWAY_H
#define MCP_GATEWAY_H

#define GW_COMM_LEN 16
/* Deepest cgroup nesting searched for an agent ancestor. */
#define GW_MAX_CGROUP_DEPTH 32

/* Values of the `gw_cgroups` map: what the daemon resolved a cgroup id to. */
#define GW_CGROUP_AGENT 1   /* a configured agent cgroup: it and everything below are agents */
#define GW_CGROUP_KNOWN 2   /* resolved, not an agent */
#define GW_CGROUP_WATCHED 3 /* an ancestor of an agent cgroup: not an agent itself, but a child
			     * the daemon has not resolved yet (just created) is one */

/* Keys of the `gw_listeners` sockmap. */
#define GW_LISTENER_V4 0
#define GW_LISTENER_V6 1

/* Key of the `conns` map: the connection as the daemon sees it on accept.
 * Addresses are 16 bytes in network order, IPv4 written v4-mapped (::ffff:a.b.c.d) on both
 * sides so an AF_INET6 agent socket dialing a v4-mapped address meets the daemon's v4 view. */
struct gw_tuple {
	__u32 client[4];
	__u32 listener[4];
	__u16 client_port;   /* host order */
	__u16 listener_port; /* host order */
};

/* What the kernel saw at connect(): the original destination and who asked for it. */
struct gw_record {
	__u32 orig_addr[4];  /* network order, IPv4 v4-mapped */
	__u16 orig_port;     /* host order */
	__u16 orig_family;   /* AF_INET or AF_INET6: the agent socket's family */
	__u32 pid;           /* thread id of the caller */
	__u32 tgid;          /* process id */
	__u32 uid;
	__u32 gid;
	__u32 _pad;
	__u64 cgroup_id;     /* cgroup2 id of the calling task */
	__u64 start_boottime; /* ns since boot, thread-group leader: guards pid reuse */
	__u64 connect_boot_ns;
	char comm[GW_COMM_LEN];
	__u64 exe_ino;       /* inode of the caller's executable (mm->exe_file) at connect(); 0: none */
	__u32 exe_dev;       /* its filesystem's device, kernel encoding (major << 20 | minor) */
	__u32 exe_flags;     /* GW_EXE_*: what the kernel can say of that file */
	__s64 exe_ctime_sec; /* its change time at connect(): a later one means other bytes */
	__u32 exe_ctime_nsec;
	__u32 exe_generation; /* its inode's generation: a reused inode number has another */
};

/* `exe_flags`: the exec that loaded the process's program was seen (gw_exec_seen)... */
#define GW_EXE_ATTESTED 1
/* ...and `mm->exe_file` is not that program: it was set since with prctl(PR_SET_MM),
 * which a process may do inside a user namespace of its own, naming any file it can
 * execute. The file then says nothing about what the process runs. */
#define GW_EXE_REPLACED 2
/* No note of the process's exec, and notes were lost (the map was full): the file cannot
 * be vouched for either. */
#define GW_EXE_UNKNOWN 4
/* The very file its exec loaded, changed since (its change time or generation moved): the
 * process let go of it (prctl PR_SET_MM), wrote other bytes into it and took it back, or
 * the inode number is another file's now. Its bytes are not what was exec'd. */
#define GW_EXE_CHANGED 8
/* The file is on a filesystem mounted in a user namespace (FUSE, overlayfs, tmpfs that an
 * unprivileged user mounted there): its owner says what it holds. */
#define GW_EXE_USER_MOUNT 16

/* Value of the `gw_exec_files` map, keyed by tgid: the file a process's last exec loaded. */
struct gw_exec_file {
	__u64 start_boottime; /* the process's (leader's) start: a reused tgid never matches */
	__u64 ino;
	__u32 dev;
	__u32 generation;
	__s64 ctime_sec;
	__u32 ctime_nsec;
	__u32 flags;         /* GW_EXE_USER_MOUNT when its filesystem was mounted in a user ns */
};

/* The single entry of the `config` array map, written by the daemon. */
struct gw_config {
	__u32 listen4;        /* network order */
	__u32 listen6[4];     /* network order */
	__u16 listen4_port;   /* host order */
	__u16 listen6_port;   /* host order */
	__u32 _reserved;      /* was the daemon's tgid, which a forking agent can obtain; kept
			       * zero so the pinned map keeps its layout across an upgrade */
	__u32 mark;           /* SO_MARK of the daemon's upstream sockets: never redirected
			       * (setting SO_MARK needs CAP_NET_ADMIN or CAP_NET_RAW) */
	__u8 enabled;         /* 0 until the daemon has filled the selector maps */
	__u8 all_tcp;         /* every TCP port is in scope, not only `scope_ports` */
	__u16 _pad;
};

/* Layout contract with gateway-ebpf/src/lib.rs (which asserts the same numbers). */
_Static_assert(sizeof(struct gw_tuple) == 36, "gw_tuple size");
_Static_assert(__builtin_offsetof(struct gw_tuple, client_port) == 32, "gw_tuple.client_port");
_Static_assert(sizeof(struct gw_record) == 112, "gw_record size");
_Static_assert(__builtin_offsetof(struct gw_record, exe_ino) == 80, "gw_record.exe_ino");
_Static_assert(__builtin_offsetof(struct gw_record, orig_port) == 16, "gw_record.orig_port");
_Static_assert(__builtin_offsetof(struct gw_record, pid) == 20, "gw_record.pid");
_Static_assert(__builtin_offsetof(struct gw_record, cgroup_id) == 40, "gw_record.cgroup_id");
_Static_assert(__builtin_offsetof(struct gw_record, comm) == 64, "gw_record.comm");
_Static_assert(__builtin_offsetof(struct gw_record, exe_flags) == 92, "gw_record.exe_flags");
_Static_assert(sizeof(struct gw_exec_file) == 40, "gw_exec_file size");
_Static_assert(__builtin_offsetof(struct gw_record, exe_ctime_sec) == 96, "gw_record.exe_ctime_sec");
_Static_assert(sizeof(struct gw_config) == 36, "gw_config size");
_Static_assert(__builtin_offsetof(struct gw_config, listen4_port) == 20, "gw_config.listen4_port");
_Static_assert(__builtin_offsetof(struct gw_config, mark) == 28, "gw_config.mark");
_Static_assert(__builtin_offsetof(struct gw_config, enabled) == 32, "gw_config.enabled");

#endif
