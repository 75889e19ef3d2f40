/* An agent that passes itself off as another program: forged_exe FILE PORT PROGRAM ARGS...
 *
 * Unprivileged, it makes a user namespace of its own (where it holds CAP_SYS_ADMIN), puts
 * anonymous copies in place of its own program's mappings, and sets its executable
 * (mm->exe_file, what /proc/PID/exe shows and what the kernel reports for it) to FILE with
 * prctl(PR_SET_MM, PR_SET_MM_MAP). It then connects to 127.0.0.1:PORT and runs PROGRAM
 * with that connection as descriptor 3, waiting for it; its exit status is PROGRAM's.
 * The connection was opened by this code, whatever FILE is.
 *
 * FORGED_HOW says who does what:
 *   self    (the default) as above;
 *   fork    a child forked after the change opens the connection;
 *   shared  a helper sharing this process's memory (clone CLONE_VM, not a thread) makes the
 *           user namespace and the change, and exits; this process, which never left the
 *           host's user namespace, opens the connection;
 *   exec    no connection: after the change it execs PROGRAM itself (a stdio server, which
 *           the gateway sees started by a process that claims to be FILE);
 *   rewrite its executable stays its own file, but with FILE's bytes: it lets go of its
 *           file (setting /bin/true), writes FILE's bytes into it, takes it back, and then
 *           connects as `self` does. Its own file must be writable by it;
 *   late    started before the gateway: it waits until the file FORGED_WAIT exists,
 *           connects once as itself (sends a line and closes), and then goes on as
 *           `self`. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/prctl.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(const char *what)
{
	perror(what);
	exit(100);
}

static void write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY);
	if (fd < 0 || write(fd, text, strlen(text)) < 0)
		die(path);
	close(fd);
}

/* Replaces every mapping of this program's file with an anonymous copy at the same place:
 * the kernel lets the executable change only once nothing maps the old one. */
static void unmap_own_program(void)
{
	char exe[4096];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
	if (n < 0)
		die("readlink /proc/self/exe");
	exe[n] = 0;
	unsigned long lo[64], hi[64];
	int prot[64], count = 0;
	FILE *maps = fopen("/proc/self/maps", "r");
	if (!maps)
		die("/proc/self/maps");
	char line[4096 + 128];
	while (count < 64 && fgets(line, sizeof line, maps)) {
		char perms[8], path[4096] = "";
		unsigned long a, b;
		if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %4095[^\n]", &a, &b, perms, path) < 3)
			continue;
		if (strcmp(path, exe) != 0)
			continue;
		lo[count] = a;
		hi[count] = b;
		prot[count] = (perms[0] == 'r' ? PROT_READ : 0) | (perms[1] == 'w' ? PROT_WRITE : 0) |
			      (perms[2] == 'x' ? PROT_EXEC : 0);
		count++;
	}
	fclose(maps);
	for (int i = 0; i < count; i++) {
		size_t len = hi[i] - lo[i];
		void *copy = mmap(0, len, PROT_READ | PROT_WRITE | PROT_EXEC,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (copy == MAP_FAILED)
			die("mmap");
		if (prot[i] & PROT_READ)
			memcpy(copy, (void *)lo[i], len);
		/* The copy takes the mapping's place in one step: the code running now is in it. */
		if (mremap(copy, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)lo[i]) == MAP_FAILED)
			die("mremap");
		mprotect((void *)lo[i], len, prot[i] ? prot[i] : PROT_NONE);
	}
}

static void set_exe(const char *file)
{
	/* PR_SET_MM_MAP takes the whole layout; this process's own, from /proc/self/stat. */
	unsigned long f[53] = {0};
	char stat[4096];
	FILE *s = fopen("/proc/self/stat", "r");
	if (!s || !fgets(stat, sizeof stat, s))
		die("/proc/self/stat");
	fclose(s);
	char *p = strrchr(stat, ')');
	int field = 3;
	for (char *t = strtok(p + 2, " "); t && field < 53; t = strtok(NULL, " "))
		f[field++] = strtoul(t, NULL, 10);
	int fd = open(file, O_RDONLY);
	if (fd < 0)
		die(file);
	struct prctl_mm_map map = {
		.start_code = f[26],
		.end_code = f[27],
		.start_stack = f[28],
		.start_data = f[45],
		.end_data = f[46],
		.start_brk = f[47],
		.brk = (unsigned long)sbrk(0),
		.arg_start = f[48],
		.arg_end = f[49],
		.env_start = f[50],
		.env_end = f[51],
		.exe_fd = fd,
	};
	if (prctl(PR_SET_MM, PR_SET_MM_MAP, (unsigned long)&map, sizeof map, 0) != 0)
		die("prctl(PR_SET_MM_MAP)");
}

/* A user namespace of its own, where this process is root. */
static void own_user_namespace(uid_t uid, gid_t gid)
{
	char map[64];
	if (unshare(CLONE_NEWUSER) != 0)
		die("unshare(CLONE_NEWUSER)");
	write_file("/proc/self/setgroups", "deny");
	snprintf(map, sizeof map, "0 %u 1", uid);
	write_file("/proc/self/uid_map", map);
	snprintf(map, sizeof map, "0 %u 1", gid);
	write_file("/proc/self/gid_map", map);
}

/* Writes the bytes of `from` over the file `to`. */
static void copy_file(const char *from, const char *to)
{
	int in = open(from, O_RDONLY);
	int out = open(to, O_WRONLY | O_TRUNC);
	if (in < 0 || out < 0)
		die("opening the files to copy");
	char buf[65536];
	ssize_t n;
	while ((n = read(in, buf, sizeof buf)) > 0)
		if (write(out, buf, n) != n)
			die("write");
	if (n < 0)
		die("read");
	close(in);
	close(out);
}

static struct {
	const char *file;
	uid_t uid;
	gid_t gid;
} helper_args;

static int helper(void *unused)
{
	(void)unused;
	own_user_namespace(helper_args.uid, helper_args.gid);
	unmap_own_program();
	set_exe(helper_args.file);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: forged_exe FILE PORT PROGRAM [ARGS...]\n");
		return 100;
	}
	const char *how = getenv("FORGED_HOW") ? getenv("FORGED_HOW") : "self";
	if (strcmp(how, "late") == 0) {
		const char *wait = getenv("FORGED_WAIT");
		while (!wait || access(wait, F_OK) != 0)
			usleep(10000);
		int first = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
		inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
		if (first < 0 || connect(first, (struct sockaddr *)&to, sizeof to) != 0)
			die("connect (first)");
		if (write(first, "hello\n", 6) != 6)
			die("write (first)");
		close(first);
		how = "self";
	}
	if (strcmp(how, "shared") == 0) {
		helper_args.file = argv[1];
		helper_args.uid = getuid();
		helper_args.gid = getgid();
		size_t size = 1 << 20;
		char *stack = mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (stack == MAP_FAILED)
			die("mmap stack");
		pid_t h = clone(helper, stack + size, CLONE_VM | SIGCHLD, NULL);
		int status;
		if (h < 0 || waitpid(h, &status, 0) < 0)
			die("clone(CLONE_VM)");
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			return 100;
	} else if (strcmp(how, "rewrite") == 0) {
		char self[4096];
		ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
		if (n < 0)
			die("readlink /proc/self/exe");
		self[n] = 0;
		own_user_namespace(getuid(), getgid());
		unmap_own_program();
		set_exe("/bin/true");
		copy_file(argv[1], self);
		set_exe(self);
	} else {
		own_user_namespace(getuid(), getgid());
		unmap_own_program();
		set_exe(argv[1]);
	}
	if (strcmp(how, "exec") == 0) {
		execv(argv[3], argv + 3);
		die(argv[3]);
	}
	if (strcmp(how, "fork") == 0) {
		pid_t opener = fork();
		if (opener < 0)
			die("fork");
		if (opener > 0) {
			int status;
			if (waitpid(opener, &status, 0) < 0)
				die("waitpid");
			return WIFEXITED(status) ? WEXITSTATUS(status) : 101;
		}
	}

	int s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
	inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
	if (s < 0 || connect(s, (struct sockaddr *)&to, sizeof to) != 0)
		die("connect");
	pid_t child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		if (dup2(s, 3) < 0)
			die("dup2");
		execv(argv[3], argv + 3);
		die(argv[3]);
	}
	close(s);
	int status;
	if (waitpid(child, &status, 0) < 0)
		die("waitpid");
	return WIFEXITED(status) ? WEXITSTATUS(status) : 101;
}
