/* Transparent redirection of agent TCP connections to the mcp-gateway daemon.
 *
 * connect4/6 (process context) decide and record; sock_ops (softirq, never reads "current")
 * re-keys the record by the established tuple for the daemon's accept(); getpeername4/6
 * keep the redirection invisible to the agent. Any other transport of an agent toward a
 * port in scope (and datagrams to 443 always) is refused in connect4/6 and sendmsg4/6, so
 * QUIC and HTTP/3 clients fall back to TCP, which is mediated.
 *
 * The redirect target is the daemon's socket and nothing else: bind4/6 refuse agents the
 * listener's port, and sk_lookup hands connections to the listener address to the socket
 * the daemon put in `gw_listeners`, or refuses them while there is none (daemon down).
 *
 * Every path an agent's socket can reach ends in "redirected and recorded" or "refused":
 * nothing the agent shapes (option memory, pid, binds, protocol) turns a refusal into an
 * unmediated connection. Only the daemon's own sockets, marked with SO_MARK (which needs
 * CAP_NET_ADMIN), are exempt. */
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "gateway.h"

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_ICMPV6 58
#define IPPROTO_MPTCP 262
#define ALLOW 1
#define REFUSE 0
/* QUIC's port: refused even when only other ports are in scope for TCP. */
#define QUIC_PORT 443
#define GW_NSEC_MASK 0x3fffffff

char LICENSE[] SEC("license") = "GPL";

/* Only the fields read here; CO-RE relocates them against the running kernel's BTF. */
struct user_namespace {
	int level;
} __attribute__((preserve_access_index));

struct super_block {
	__u32 s_dev;
	struct user_namespace *s_user_ns;
} __attribute__((preserve_access_index));

struct inode {
	unsigned long i_ino;
	struct super_block *i_sb;
	__u32 i_generation;
} __attribute__((preserve_access_index));

/* The change time moved within struct inode twice; CO-RE picks the layout the running
 * kernel has (the others' reads are never run). */
struct timespec64___gw {
	__s64 tv_sec;
	long tv_nsec;
} __attribute__((preserve_access_index));

struct inode___since_6_11 {
	__s64 i_ctime_sec;
	__u32 i_ctime_nsec;
} __attribute__((preserve_access_index));

struct inode___6_6_to_6_10 {
	struct timespec64___gw __i_ctime;
} __attribute__((preserve_access_index));

struct inode___until_6_5 {
	struct timespec64___gw i_ctime;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
} __attribute__((preserve_access_index));

struct mm_struct {
	struct file *exe_file;
} __attribute__((preserve_access_index));

struct signal_struct {
	struct {
		int counter;
	} live;
} __attribute__((preserve_access_index));

struct task_struct {
	int tgid;
	__u64 start_boottime;
	struct task_struct *group_leader;
	struct mm_struct *mm;
	struct signal_struct *signal;
} __attribute__((preserve_access_index));

/* Every map is pinned by name under the instance's bpffs directory, so the programs of a
 * restarted daemon share them with the programs still attached from before. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gw_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} gw_config SEC(".maps");

/* cgroup id -> GW_CGROUP_*: agent cgroups, their ancestors and the ancestors' children. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} gw_cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} gw_agent_uids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u16);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} gw_scope_ports SEC(".maps");

/* Freed with the socket: no entry can leak between connect and established. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct gw_record);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} gw_pending SEC(".maps");

/* Read (and deleted) by the daemon on accept; LRU because a connection the daemon never
 * accepts (it died, the backlog overflowed) would otherwise leave its entry forever. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct gw_tuple);
	__type(value, struct gw_record);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} gw_conns SEC(".maps");

/* What each process's last exec loaded (gw_exec_seen), by tgid; a fork inherits its
 * parent's (gw_fork_seen), as it inherits the parent's executable, and the process's last
 * thread to exit takes it away (gw_exit_seen). A plain hash map, which cgroup programs can
 * read on every kernel; its size (intercept.max_processes) bounds the processes noted at
 * once, and a note that finds it full is counted in `gw_exec_lost`. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 131072);
	__type(key, __u32);
	__type(value, struct gw_exec_file);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} gw_exec_files SEC(".maps");

/* [0]: notes that could not be kept. Once any was lost, a process without a note may be
 * one of them, so its file is vouched for by nothing (GW_EXE_UNKNOWN). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} gw_exec_lost SEC(".maps");

/* The daemon's listening sockets (GW_LISTENER_V4/V6). A socket leaves the map when it is
 * closed, so a dead daemon leaves the slots empty and sk_lookup refuses. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32); /* a socket fd when written from user space */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} gw_listeners SEC(".maps");

static __always_inline struct gw_config *config_get(void)
{
	__u32 zero = 0;
	struct gw_config *cfg = bpf_map_lookup_elem(&gw_config, &zero);
	if (!cfg || !cfg->enabled)
		return 0;
	return cfg;
}

static __always_inline int port_in_scope(const struct gw_config *cfg, __u16 port)
{
	if (cfg->all_tcp)
		return 1;
	return bpf_map_lookup_elem(&gw_scope_ports, &port) != 0;
}

/* Whether the calling task's cgroup is an agent's. Walks from the root down: an agent
 * cgroup or anything below one is an agent; so is a cgroup the daemon has not resolved yet
 * whose parent is an ancestor of an agent cgroup. systemd removes and creates slices again
 * (with new ids) and starts the service's process at once: that process is mediated from
 * its first connect, before the daemon has seen the new cgroup. */
static __always_inline int cgroup_is_agent(void)
{
	int parent_watched = 0;
	for (int level = 0; level < GW_MAX_CGROUP_DEPTH; level++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);
		if (id == 0)
			break;
		__u8 *class = bpf_map_lookup_elem(&gw_cgroups, &id);
		if (!class)
			return parent_watched;
		if (*class == GW_CGROUP_AGENT)
			return 1;
		parent_watched = *class == GW_CGROUP_WATCHED;
	}
	return 0;
}

static __always_inline int caller_is_agent(void)
{
	__u32 uid = (__u32)bpf_get_current_uid_gid();
	if (bpf_map_lookup_elem(&gw_agent_uids, &uid))
		return 1;
	return cgroup_is_agent();
}

/* The daemon's own upstream sockets. The mark is the only exemption: a pid or a port can be
 * had by a forking or binding agent, SO_MARK cannot without CAP_NET_ADMIN. */
static __always_inline int is_daemons(const struct gw_config *cfg, struct bpf_sock *sk)
{
	return sk && cfg->mark && sk->mark == cfg->mark;
}

/* The file `mm` runs (`mm->exe_file`), as a note holds it; all 0 for none. */
static __always_inline void exe_of(struct mm_struct *mm, struct gw_exec_file *f)
{
	if (!mm)
		return;
	struct file *exe = mm->exe_file;
	if (!exe)
		return;
	struct inode *inode = exe->f_inode;
	if (!inode)
		return;
	f->ino = inode->i_ino;
	f->generation = inode->i_generation;
	struct super_block *sb = inode->i_sb;
	if (sb) {
		f->dev = sb->s_dev;
		/* Mounted in a user namespace (FUSE, overlayfs, tmpfs a user made there): its
		 * owner says what its files hold, whatever their times. */
		struct user_namespace *owner = sb->s_user_ns;
		if (owner && owner->level != 0)
			f->flags |= GW_EXE_USER_MOUNT;
	}
	struct inode___since_6_11 *now = (void *)inode;
	struct inode___6_6_to_6_10 *mid = (void *)inode;
	struct inode___until_6_5 *old = (void *)inode;
	if (bpf_core_field_exists(now->i_ctime_sec)) {
		f->ctime_sec = now->i_ctime_sec;
		f->ctime_nsec = now->i_ctime_nsec;
	} else if (bpf_core_field_exists(mid->__i_ctime)) {
		f->ctime_sec = mid->__i_ctime.tv_sec;
		f->ctime_nsec = (__u32)mid->__i_ctime.tv_nsec;
	} else if (bpf_core_field_exists(old->i_ctime)) {
		f->ctime_sec = old->i_ctime.tv_sec;
		f->ctime_nsec = (__u32)old->i_ctime.tv_nsec;
	}
	/* (A kernel with none of these leaves the time 0: the programs still load, and only
	 * the device and inode are compared.) */
	/* Nanoseconds stay below 2^30; since 6.13 the top bit says whether someone has read
	 * the time since it was set (multigrain timestamps), which a stat flips. */
	f->ctime_nsec &= GW_NSEC_MASK;
}

/* Whether a note was ever lost (an unreadable count says yes: nothing then vouches for a
 * process without one). */
static __always_inline int notes_were_lost(void)
{
	__u32 zero = 0;
	__u64 *lost = bpf_map_lookup_elem(&gw_exec_lost, &zero);
	return !lost || *lost;
}

static __always_inline void note_lost(void)
{
	__u32 zero = 0;
	__u64 *lost = bpf_map_lookup_elem(&gw_exec_lost, &zero);
	if (lost)
		__sync_fetch_and_add(lost, 1);
}

/* Keeps `note` for process `tgid`, or counts it lost (the map is full). */
static __always_inline void note_or_count(__u32 tgid, struct gw_exec_file *note)
{
	if (bpf_map_update_elem(&gw_exec_files, &tgid, note, BPF_ANY) != 0) {
		/* An older note under this tgid would name another program: gone with it. */
		bpf_map_delete_elem(&gw_exec_files, &tgid);
		note_lost();
	}
}

static __always_inline void fill_record(struct gw_record *r, const __u32 orig[4],
					__u16 orig_port, __u16 family)
{
	__builtin_memset(r, 0, sizeof(*r));
	r->orig_addr[0] = orig[0];
	r->orig_addr[1] = orig[1];
	r->orig_addr[2] = orig[2];
	r->orig_addr[3] = orig[3];
	r->orig_port = orig_port;
	r->orig_family = family;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	r->pid = (__u32)pid_tgid;
	r->tgid = (__u32)(pid_tgid >> 32);
	__u64 uid_gid = bpf_get_current_uid_gid();
	r->uid = (__u32)uid_gid;
	r->gid = (__u32)(uid_gid >> 32);
	r->cgroup_id = bpf_get_current_cgroup_id();
	r->connect_boot_ns = bpf_ktime_get_boot_ns();
	bpf_get_current_comm(r->comm, sizeof(r->comm));
	struct task_struct *task = bpf_get_current_task_btf();
	r->start_boottime = task->group_leader->start_boottime;
	/* The executable the caller runs now, at connect(): procfs, read later, may show
	 * another (the process exec'd since) or nothing (it exited). */
	struct gw_exec_file now = {};
	exe_of(task->mm, &now);
	r->exe_ino = now.ino;
	r->exe_dev = now.dev;
	r->exe_ctime_sec = now.ctime_sec;
	r->exe_ctime_nsec = now.ctime_nsec;
	r->exe_generation = now.generation;
	/* And whether that is the file its exec loaded, with the bytes it had then: a process
	 * whose exe_file is another set it itself (prctl PR_SET_MM); the same file changed
	 * since was let go of, written and taken back (or its inode number reused). */
	__u32 key = r->tgid;
	struct gw_exec_file *loaded = bpf_map_lookup_elem(&gw_exec_files, &key);
	if (loaded && loaded->start_boottime == r->start_boottime) {
		r->exe_flags = GW_EXE_ATTESTED;
		if (now.flags & GW_EXE_USER_MOUNT)
			r->exe_flags |= GW_EXE_USER_MOUNT;
		else if (loaded->ino != now.ino || loaded->dev != now.dev)
			r->exe_flags |= GW_EXE_REPLACED;
		else if (loaded->generation != now.generation ||
			 loaded->ctime_sec != now.ctime_sec || loaded->ctime_nsec != now.ctime_nsec)
			r->exe_flags |= GW_EXE_CHANGED;
	} else {
		if (notes_were_lost()) {
			r->exe_flags = GW_EXE_UNKNOWN;
		} else if (now.flags & GW_EXE_USER_MOUNT) {
			r->exe_flags = GW_EXE_USER_MOUNT;
		} else {
			/* Its exec came before the programs were attached: believed, as before,
			 * and noted now, so that a change it makes from here on shows. */
			now.start_boottime = r->start_boottime;
			note_or_count(key, &now);
		}
	}
}

/* Records an agent's connect in the socket's storage (and, for an MPTCP subflow, in its
 * connection socket's, where getpeername looks). Returns 0 when the record cannot be kept:
 * the storage is charged to the socket's option memory, which the agent can fill first,
 * and then the connection is refused rather than let through unrecorded. */
static __always_inline int record_agent(struct bpf_sock *sk, const __u32 orig[4],
					__u16 orig_port, __u16 family)
{
	struct gw_record *r = bpf_sk_storage_get(&gw_pending, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!r)
		return 0;
	fill_record(r, orig, orig_port, family);
	struct mptcp_sock *msk = bpf_skc_to_mptcp_sock(sk);
	if (msk) {
		struct gw_record *m =
			bpf_sk_storage_get(&gw_pending, msk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!m)
			return 0;
		fill_record(m, orig, orig_port, family);
	}
	return 1;
}

/* Datagrams (UDP, UDP-Lite, any other protocol) and non-TCP streams (SCTP) of an agent
 * toward a mediated port, and datagrams to 443, are refused (EPERM), never redirected: only
 * TCP is mediated. `all_tcp` does not widen the datagram rule: it would refuse DNS. */
static __always_inline int other_transport_verdict(struct bpf_sock_addr *ctx,
						   const struct gw_config *cfg)
{
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	int mediated = ctx->type == SOCK_STREAM ? port_in_scope(cfg, port)
						: bpf_map_lookup_elem(&gw_scope_ports, &port) != 0;
	if (!mediated && port != QUIC_PORT)
		return ALLOW;
	if (is_daemons(cfg, ctx->sk))
		return ALLOW;
	return caller_is_agent() ? REFUSE : ALLOW;
}

static __always_inline int is_tcp(struct bpf_sock_addr *ctx)
{
	return ctx->type == SOCK_STREAM && ctx->protocol == IPPROTO_TCP;
}

/* An MPTCP connection socket: its connect() goes on to its first subflow, a TCP socket whose
 * own connect4/6 run redirects and records it. */
static __always_inline int is_mptcp(struct bpf_sock_addr *ctx)
{
	return ctx->type == SOCK_STREAM && ctx->protocol == IPPROTO_MPTCP;
}

/* The inet transports an agent may open: those whose every path the programs here see.
 * UDP-Lite has no connect hook (a connected socket's sends pass no hook either), SCTP its
 * own paths: an agent's socket of any other protocol is refused at creation (EPERM). */
SEC("cgroup/sock_create")
int gw_sock_create(struct bpf_sock *sk)
{
	switch (sk->protocol) {
	case IPPROTO_TCP:
	case IPPROTO_MPTCP:
	case IPPROTO_UDP:
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		return ALLOW;
	}
	if (!config_get())
		return ALLOW;
	return caller_is_agent() ? REFUSE : ALLOW;
}

SEC("cgroup/sendmsg4")
int gw_sendmsg4(struct bpf_sock_addr *ctx)
{
	struct gw_config *cfg = config_get();
	return cfg ? other_transport_verdict(ctx, cfg) : ALLOW;
}

SEC("cgroup/sendmsg6")
int gw_sendmsg6(struct bpf_sock_addr *ctx)
{
	struct gw_config *cfg = config_get();
	return cfg ? other_transport_verdict(ctx, cfg) : ALLOW;
}

/* The TCP verdict shared by connect4 and connect6, after the daemon's own sockets and
 * out-of-scope ports have been let through: agents are recorded (and the caller redirects),
 * everyone else passes. A socket an agent dials the listener with directly is refused: it
 * could carry a record from an earlier connect of another process. */
static __always_inline int tcp_verdict(struct bpf_sock_addr *ctx, const __u32 orig[4],
				       __u16 port, __u16 family, int to_listener)
{
	if (!caller_is_agent())
		return ALLOW;
	struct bpf_sock *sk = ctx->sk;
	if (!sk || to_listener)
		return REFUSE;
	return record_agent(sk, orig, port, family) ? 2 : REFUSE;
}

/* A TCP connect out of scope goes where it was dialed. A record left on the socket by an
 * earlier, failed connect in scope goes: getpeername would otherwise name that server. */
static __always_inline int not_mediated(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (sk)
		bpf_sk_storage_delete(&gw_pending, sk);
	return ALLOW;
}

SEC("cgroup/connect4")
int gw_connect4(struct bpf_sock_addr *ctx)
{
	struct gw_config *cfg = config_get();
	if (!cfg)
		return ALLOW;
	if (is_mptcp(ctx))
		return ALLOW;
	if (!is_tcp(ctx))
		return other_transport_verdict(ctx, cfg);
	__u32 dst = ctx->user_ip4;
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	/* 0.0.0.0 dials the local host: the listener too. */
	int to_listener = (dst == cfg->listen4 || dst == 0) && port == cfg->listen4_port;
	if (!to_listener && !port_in_scope(cfg, port))
		return not_mediated(ctx);
	if (is_daemons(cfg, ctx->sk))
		return ALLOW;
	__u32 orig[4] = {0, 0, bpf_htonl(0xffff), dst};
	int verdict = tcp_verdict(ctx, orig, port, AF_INET, to_listener);
	if (verdict != 2)
		return verdict;
	ctx->user_ip4 = cfg->listen4;
	ctx->user_port = bpf_htons(cfg->listen4_port);
	return ALLOW;
}

static __always_inline int is_v4_mapped(const __u32 a[4])
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0xffff);
}

SEC("cgroup/connect6")
int gw_connect6(struct bpf_sock_addr *ctx)
{
	struct gw_config *cfg = config_get();
	if (!cfg)
		return ALLOW;
	if (is_mptcp(ctx))
		return ALLOW;
	if (!is_tcp(ctx))
		return other_transport_verdict(ctx, cfg);
	/* user_ip6 must be read and written one 32-bit word at a time. */
	__u32 dst[4];
	dst[0] = ctx->user_ip6[0];
	dst[1] = ctx->user_ip6[1];
	dst[2] = ctx->user_ip6[2];
	dst[3] = ctx->user_ip6[3];
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	int mapped = is_v4_mapped(dst);
	int to_listener;
	if (mapped)
		to_listener = (dst[3] == cfg->listen4 || dst[3] == 0) && port == cfg->listen4_port;
	else
		to_listener = ((dst[0] == cfg->listen6[0] && dst[1] == cfg->listen6[1] &&
				dst[2] == cfg->listen6[2] && dst[3] == cfg->listen6[3]) ||
			       (dst[0] | dst[1] | dst[2] | dst[3]) == 0) &&
			      port == cfg->listen6_port;
	if (!to_listener && !port_in_scope(cfg, port))
		return not_mediated(ctx);
	if (is_daemons(cfg, ctx->sk))
		return ALLOW;
	int verdict = tcp_verdict(ctx, dst, port, AF_INET6, to_listener);
	if (verdict != 2)
		return verdict;
	if (mapped) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0xffff);
		ctx->user_ip6[3] = cfg->listen4;
		ctx->user_port = bpf_htons(cfg->listen4_port);
	} else {
		ctx->user_ip6[0] = cfg->listen6[0];
		ctx->user_ip6[1] = cfg->listen6[1];
		ctx->user_ip6[2] = cfg->listen6[2];
		ctx->user_ip6[3] = cfg->listen6[3];
		ctx->user_port = bpf_htons(cfg->listen6_port);
	}
	return ALLOW;
}

/* Agents may not bind the listener's port, on any address (a wildcard bind would take the
 * listener's connections too): while the daemon is down or restarting, an agent holding it
 * would receive every other agent's redirected connections. */
static __always_inline int bind_verdict(struct bpf_sock_addr *ctx)
{
	struct gw_config *cfg = config_get();
	if (!cfg)
		return ALLOW;
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	if (port != cfg->listen4_port && port != cfg->listen6_port)
		return ALLOW;
	if (is_daemons(cfg, ctx->sk))
		return ALLOW;
	return caller_is_agent() ? REFUSE : ALLOW;
}

SEC("cgroup/bind4")
int gw_bind4(struct bpf_sock_addr *ctx)
{
	return bind_verdict(ctx);
}

SEC("cgroup/bind6")
int gw_bind6(struct bpf_sock_addr *ctx)
{
	return bind_verdict(ctx);
}

/* Separate non-inlined functions: clang would otherwise merge the v4 and v6 context loads
 * into one computed offset, which the verifier refuses for a context pointer. */
static __noinline void key_v4(struct bpf_sock_ops *skops, struct gw_tuple *key)
{
	key->client[2] = bpf_htonl(0xffff);
	key->client[3] = skops->local_ip4;
	key->listener[2] = bpf_htonl(0xffff);
	key->listener[3] = skops->remote_ip4;
}

static __noinline void key_v6(struct bpf_sock_ops *skops, struct gw_tuple *key)
{
	key->client[0] = skops->local_ip6[0];
	key->client[1] = skops->local_ip6[1];
	key->client[2] = skops->local_ip6[2];
	key->client[3] = skops->local_ip6[3];
	key->listener[0] = skops->remote_ip6[0];
	key->listener[1] = skops->remote_ip6[1];
	key->listener[2] = skops->remote_ip6[2];
	key->listener[3] = skops->remote_ip6[3];
}

/* A record that cannot be re-keyed leaves the daemon a connection without one, which it
 * refuses: nothing here can let a connection through unrecorded. */
SEC("sockops")
int gw_sockops(struct bpf_sock_ops *skops)
{
	if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 1;
	struct bpf_sock *sk = skops->sk;
	if (!sk)
		return 1;
	struct gw_record *r = bpf_sk_storage_get(&gw_pending, sk, 0, 0);
	if (!r)
		return 1;

	struct gw_tuple key = {};
	key.client_port = (__u16)skops->local_port;
	/* remote_port holds the network-order port in its upper 16 bits. */
	key.listener_port = (__u16)bpf_ntohl(skops->remote_port);
	if (skops->family == AF_INET)
		key_v4(skops, &key);
	else
		key_v6(skops, &key);
	bpf_map_update_elem(&gw_conns, &key, r, BPF_ANY);
	return 1;
}

SEC("cgroup/getpeername4")
int gw_getpeername4(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return ALLOW;
	struct gw_record *r = bpf_sk_storage_get(&gw_pending, sk, 0, 0);
	if (!r)
		return ALLOW;
	ctx->user_ip4 = r->orig_addr[3];
	ctx->user_port = bpf_htons(r->orig_port);
	return ALLOW;
}

SEC("cgroup/getpeername6")
int gw_getpeername6(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return ALLOW;
	struct gw_record *r = bpf_sk_storage_get(&gw_pending, sk, 0, 0);
	if (!r)
		return ALLOW;
	ctx->user_ip6[0] = r->orig_addr[0];
	ctx->user_ip6[1] = r->orig_addr[1];
	ctx->user_ip6[2] = r->orig_addr[2];
	ctx->user_ip6[3] = r->orig_addr[3];
	ctx->user_port = bpf_htons(r->orig_port);
	return ALLOW;
}

/* The listener address is reachable only as the daemon's own socket: a connection to it
 * goes to the socket in `gw_listeners`, whoever else has bound the address (a process
 * outside the agents, a squatter while the daemon was down), and is refused while the slot
 * is empty. Other traffic is not looked at. */
SEC("sk_lookup")
int gw_sk_lookup(struct bpf_sk_lookup *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	struct gw_config *cfg = config_get();
	if (!cfg)
		return SK_PASS;
	__u32 slot;
	if (ctx->family == AF_INET) {
		if (ctx->local_ip4 != cfg->listen4 || ctx->local_port != cfg->listen4_port)
			return SK_PASS;
		slot = GW_LISTENER_V4;
	} else if (ctx->family == AF_INET6) {
		if (ctx->local_ip6[0] != cfg->listen6[0] || ctx->local_ip6[1] != cfg->listen6[1] ||
		    ctx->local_ip6[2] != cfg->listen6[2] || ctx->local_ip6[3] != cfg->listen6[3] ||
		    ctx->local_port != cfg->listen6_port)
			return SK_PASS;
		slot = GW_LISTENER_V6;
	} else {
		return SK_PASS;
	}
	struct bpf_sock *sk = bpf_map_lookup_elem(&gw_listeners, &slot);
	if (!sk)
		return SK_DROP;
	long err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return err ? SK_DROP : SK_PASS;
}


/* Every exec, the moment the new program is in place: the file it loaded, for the process
 * (whose leader the exec'ing thread now is, with the leader's start). Attached for all of
 * the host, since an agent may connect through any process it can reach. */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(gw_exec_seen, struct task_struct *p, int old_pid, void *bprm)
{
	struct gw_exec_file note = {.start_boottime = p->start_boottime};
	exe_of(p->mm, &note);
	note_or_count(p->tgid, &note);
	return 0;
}

/* A new process starts with its parent's program (and its parent's mm, copied or shared):
 * it inherits what the parent's exec loaded. A new thread is its process's. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(gw_fork_seen, struct task_struct *parent, struct task_struct *child)
{
	if (child->tgid == parent->tgid)
		return 0;
	__u32 from = parent->tgid;
	__u64 parent_start = parent->group_leader->start_boottime;
	struct gw_exec_file note = {};
	struct gw_exec_file *had = bpf_map_lookup_elem(&gw_exec_files, &from);
	if (had && had->start_boottime == parent_start) {
		note = *had;
	} else {
		/* The parent's exec came before the programs were attached: it is believed, as
		 * before, and noted now, its child with it, so that a change either makes from
		 * here on shows. Unless notes were lost: it may be one whose note found no room,
		 * and changed its program since; then neither is noted. */
		if (notes_were_lost()) {
			__u32 c = child->tgid;
			bpf_map_delete_elem(&gw_exec_files, &c);
			return 0;
		}
		exe_of(parent->mm, &note);
		note.start_boottime = parent_start;
		note_or_count(from, &note);
	}
	note.start_boottime = child->start_boottime;
	note_or_count(child->tgid, &note);
	return 0;
}

/* The last thread of a process is gone: so is its note (a leader that exits before its
 * threads takes nothing away). */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(gw_exit_seen, struct task_struct *p)
{
	if (p->signal->live.counter != 0)
		return 0;
	__u32 key = p->tgid;
	bpf_map_delete_elem(&gw_exec_files, &key);
	return 0;
}
