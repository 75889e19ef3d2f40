/* Shared with the daemon (gateway-ebpf/src/lib.rs mirrors it; the asserts pin the layout). */
#ifndef GW_EXEC_CHECK_H
#define GW_EXEC_CHECK_H

#include <linux/types.h>

/* Execs waiting for their check at once (one per thread in an exec). */
#define GW_EXEC_EXPECT_MAX 16384
/* Longest argument area checked (the daemon refuses longer ones). */
#define GW_EXEC_ARGV_MAX (4 << 20)
/* 32-bit FNV-1a over the argument area (each argument NUL-terminated, in order). */
#define GW_FNV_OFFSET 2166136261u
#define GW_FNV_PRIME 16777619u

struct gw_exec_expect {
	/* The file that will run, as the kernel names its device (major << 20 | minor). */
	__u64 dev;
	__u64 ino;
	/* The exec'ing thread's start and its leader's, in clock ticks since boot (USER_HZ,
	 * as /proc shows them): an entry a vanished thread left matches no other task. */
	__u64 start_ticks;
	__u64 leader_start_ticks;
	/* Bytes of the new program's argument area, and their hash. */
	__u32 argv_len;
	__u32 argv_hash;
};

/* USER_HZ: /proc's clock ticks are 10 ms on every architecture Linux runs this on. */
#define GW_NS_PER_TICK 10000000ull

_Static_assert(sizeof(struct gw_exec_expect) == 40, "gw_exec_expect layout");

#endif
