/* Transparent redirection of agent TCP connections to the mcp-gateway daemon.
 *
 * connect4/6 (process context) decide and record; sock_ops (softirq, never reads "current")
 * re-keys the record by the established tuple for the daemon's accept(); getpeername4/6
 * keep the redirection invisible to the agent. UDP from agents to a port in scope (and
 * always to 443) is refused in connect4/6 and sendmsg4/6, so QUIC and HTTP/3 clients fall
 * back to TCP, which is mediated. */
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "gateway.h"

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define ALLOW 1
#define REFUSE 0
/* QUIC's port: refused even when only other ports are in scope for TCP. */
#define QUIC_PORT 443

char LICENSE[] SEC("license") = "GPL";

/* Only the fields read here; CO-RE relocates them against the running kernel's BTF. */
struct task_struct {
	__u64 start_boottime;
	struct task_struct *group_leader;
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

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} gw_agent_cgroups SEC(".maps");

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

static __always_inline int caller_is_agent(const struct gw_config *cfg)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if ((__u32)(pid_tgid >> 32) == cfg->daemon_tgid)
		return 0;

	__u32 uid = (__u32)bpf_get_current_uid_gid();
	if (bpf_map_lookup_elem(&gw_agent_uids, &uid))
		return 1;

	__u64 id = bpf_get_current_cgroup_id();
	if (bpf_map_lookup_elem(&gw_agent_cgroups, &id))
		return 1;
	for (int level = 1; level < GW_MAX_CGROUP_DEPTH; level++) {
		id = bpf_get_current_ancestor_cgroup_id(level);
		if (id == 0)
			break;
		if (bpf_map_lookup_elem(&gw_agent_cgroups, &id))
			return 1;
	}
	return 0;
}

/* Shared by connect4 and connect6: checks the socket, then records the caller. */
static __always_inline int record_caller(struct bpf_sock_addr *ctx, const struct gw_config *cfg,
					 const __u32 orig[4], __u16 orig_port, __u16 family)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 0;
	if (cfg->mark && sk->mark == cfg->mark)
		return 0;
	if (!caller_is_agent(cfg))
		return 0;

	struct gw_record *r = bpf_sk_storage_get(&gw_pending, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!r)
		return 0;
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
	return 1;
}

static __always_inline int is_v4_mapped(const __u32 a[4])
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0xffff);
}

/* UDP of an agent toward a mediated port: refused (EPERM), never redirected. The daemon's
 * own sockets (marked, or its tgid) and non-agents pass. `all_tcp` does not widen this: it
 * would refuse DNS. */
static __always_inline int udp_verdict(struct bpf_sock_addr *ctx)
{
	struct gw_config *cfg = config_get();
	if (!cfg)
		return ALLOW;
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	if (port != QUIC_PORT && !bpf_map_lookup_elem(&gw_scope_ports, &port))
		return ALLOW;
	struct bpf_sock *sk = ctx->sk;
	if (sk && cfg->mark && sk->mark == cfg->mark)
		return ALLOW;
	return caller_is_agent(cfg) ? REFUSE : ALLOW;
}

static __always_inline int is_udp(struct bpf_sock_addr *ctx)
{
	return ctx->type == SOCK_DGRAM && ctx->protocol == IPPROTO_UDP;
}

SEC("cgroup/sendmsg4")
int gw_sendmsg4(struct bpf_sock_addr *ctx)
{
	return is_udp(ctx) ? udp_verdict(ctx) : ALLOW;
}

SEC("cgroup/sendmsg6")
int gw_sendmsg6(struct bpf_sock_addr *ctx)
{
	return is_udp(ctx) ? udp_verdict(ctx) : ALLOW;
}

SEC("cgroup/connect4")
int gw_connect4(struct bpf_sock_addr *ctx)
{
	if (is_udp(ctx))
		return udp_verdict(ctx);
	if (ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP)
		return ALLOW;
	struct gw_config *cfg = config_get();
	if (!cfg)
		return ALLOW;
	__u32 dst = ctx->user_ip4;
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	if (dst == cfg->listen4 && port == cfg->listen4_port)
		return ALLOW;
	if (!port_in_scope(cfg, port))
		return ALLOW;
	__u32 orig[4] = {0, 0, bpf_htonl(0xffff), dst};
	if (!record_caller(ctx, cfg, orig, port, AF_INET))
		return ALLOW;
	ctx->user_ip4 = cfg->listen4;
	ctx->user_port = bpf_htons(cfg->listen4_port);
	return ALLOW;
}

SEC("cgroup/connect6")
int gw_connect6(struct bpf_sock_addr *ctx)
{
	if (is_udp(ctx))
		return udp_verdict(ctx);
	if (ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP)
		return ALLOW;
	struct gw_config *cfg = config_get();
	if (!cfg)
		return ALLOW;
	/* user_ip6 must be read and written one 32-bit word at a time. */
	__u32 dst[4];
	dst[0] = ctx->user_ip6[0];
	dst[1] = ctx->user_ip6[1];
	dst[2] = ctx->user_ip6[2];
	dst[3] = ctx->user_ip6[3];
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	int mapped = is_v4_mapped(dst);
	if (mapped) {
		if (dst[3] == cfg->listen4 && port == cfg->listen4_port)
			return ALLOW;
	} else if (dst[0] == cfg->listen6[0] && dst[1] == cfg->listen6[1] &&
		   dst[2] == cfg->listen6[2] && dst[3] == cfg->listen6[3] &&
		   port == cfg->listen6_port) {
		return ALLOW;
	}
	if (!port_in_scope(cfg, port))
		return ALLOW;
	if (!record_caller(ctx, cfg, dst, port, AF_INET6))
		return ALLOW;
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
