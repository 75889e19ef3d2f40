/* The kernel's word on an exec the daemon decided while it waited (stdio mediation).
 *
 * The daemon decides on the path and arguments it reads from the exec'ing process's
 * memory while the exec waits in a seccomp notification; the kernel reads them again
 * afterwards, and another thread (or a swapped symbolic link) can change them in between.
 * Before letting an exec go on, the daemon puts what it decided on here, keyed by the
 * exec'ing thread's pid: the file that will run (after `#!` interpreters) and the
 * arguments it will get. At sched_process_exec, after the new program is loaded and
 * before it runs one instruction, this checks the file and the arguments the kernel
 * actually used, and kills the process when they are not what the daemon decided on.
 * An exec the daemon never saw (no entry) is not looked at. */
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "exec_check.h"

char LICENSE[] SEC("license") = "GPL";

#define SIGKILL 9
/* Arguments are read and hashed in chunks of this many bytes. */
#define CHUNK 64

struct super_block {
	__u32 s_dev;
} __attribute__((preserve_access_index));

struct inode {
	unsigned long i_ino;
	struct super_block *i_sb;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
} __attribute__((preserve_access_index));

struct mm_struct {
	unsigned long arg_start;
	unsigned long arg_end;
} __attribute__((preserve_access_index));

struct task_struct {
	struct mm_struct *mm;
	__u64 start_boottime;
	struct task_struct *group_leader;
} __attribute__((preserve_access_index));

struct linux_binprm {
	struct file *file;
} __attribute__((preserve_access_index));

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, GW_EXEC_EXPECT_MAX);
	__type(key, __u32);
	__type(value, struct gw_exec_expect);
} gw_exec_expect SEC(".maps");

/* [0]: execs checked, [1]: execs killed. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} gw_exec_counts SEC(".maps");

struct hashing {
	unsigned long start;
	__u32 len;
	__u32 hash;
	int failed;
};

static long hash_chunk(__u32 i, struct hashing *h)
{
	__u8 buf[CHUNK];
	__u32 off = i * CHUNK;
	if (off >= h->len)
		return 1;
	__u32 n = h->len - off;
	if (n > CHUNK)
		n = CHUNK;
	__builtin_memset(buf, 0, sizeof(buf));
	if (bpf_probe_read_user(buf, n & (CHUNK - 1) ? n & (CHUNK - 1) : CHUNK,
				(void *)(h->start + off))) {
		h->failed = 1;
		return 1;
	}
	__u32 hash = h->hash;
	for (int j = 0; j < CHUNK; j++) {
		if (j >= n)
			break;
		hash ^= buf[j];
		hash *= GW_FNV_PRIME;
	}
	h->hash = hash;
	return 0;
}

static void count(__u32 slot)
{
	__u64 *c = bpf_map_lookup_elem(&gw_exec_counts, &slot);
	if (c)
		__sync_fetch_and_add(c, 1);
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(gw_exec_check, struct task_struct *p, int old_pid, struct linux_binprm *bprm)
{
	__u32 key = old_pid;
	struct gw_exec_expect *e = bpf_map_lookup_elem(&gw_exec_expect, &key);
	if (!e)
		return 0;
	struct gw_exec_expect want = *e;
	/* The thread that exec'd (its start, or its leader's, which a non-leader takes over
	 * when it execs): an entry of a thread gone since names another task. */
	__u64 start = p->start_boottime / GW_NS_PER_TICK;
	if (start != want.start_ticks && start != want.leader_start_ticks)
		return 0;
	bpf_map_delete_elem(&gw_exec_expect, &key);
	count(0);

	struct inode *inode = bprm->file->f_inode;
	int bad = inode->i_ino != want.ino || inode->i_sb->s_dev != want.dev;
	if (!bad) {
		struct mm_struct *mm = p->mm;
		struct hashing h = {
			.start = mm->arg_start,
			.len = (__u32)(mm->arg_end - mm->arg_start),
			.hash = GW_FNV_OFFSET,
		};
		if (h.len != want.argv_len || h.len > GW_EXEC_ARGV_MAX) {
			bad = 1;
		} else {
			bpf_loop((h.len + CHUNK - 1) / CHUNK, hash_chunk, &h, 0);
			bad = h.failed || h.hash != want.argv_hash;
		}
	}
	if (bad) {
		count(1);
		bpf_send_signal(SIGKILL);
	}
	return 0;
}
