/* An agent that starts its MCP server with the raw execve system call (no libc wrapper,
 * no PATH search), for the gateway's stdio tests.
 *
 *   raw_execve SERVER_PATH [ARGS...]
 *
 * It gives the server two pipes, writes initialize and notifications/initialized, then
 * each JSON-RPC request it reads from its own stdin, one at a time, copying each answer
 * line to its stdout; then it closes the server's stdin. With RAW_DETACH=1 the server is started after a
 * double fork and setsid (a daemonised grandchild, in another session).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv) {
    int to_server[2], from_server[2];
    if (argc < 2 || pipe(to_server) || pipe(from_server)) {
        fprintf(stderr, "usage: raw_execve SERVER [ARGS...]\n");
        return 2;
    }
    int detach = getenv("RAW_DETACH") && strcmp(getenv("RAW_DETACH"), "1") == 0;
    pid_t pid = fork();
    if (pid < 0) return 2;
    if (pid == 0) {
        if (detach) {
            if (setsid() < 0) _exit(120);
            pid_t again = fork();
            if (again < 0) _exit(121);
            if (again > 0) _exit(0);
        }
        dup2(to_server[0], 0);
        dup2(from_server[1], 1);
        close(to_server[0]); close(to_server[1]);
        close(from_server[0]); close(from_server[1]);
        syscall(SYS_execve, argv[1], &argv[1], environ);
        perror("execve");
        _exit(127);
    }
    close(to_server[0]);
    close(from_server[1]);
    if (detach) waitpid(pid, NULL, 0);
    FILE *in = fdopen(to_server[1], "w");
    fprintf(in, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{"
                "\"protocolVersion\":\"2025-06-18\",\"capabilities\":{},"
                "\"clientInfo\":{\"name\":\"raw\",\"version\":\"1\"}}}\n");
    fprintf(in, "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n");
    fflush(in);
    /* Wait for initialize's answer before the calls, as a client does. */
    FILE *out = fdopen(from_server[0], "r");
    char *line = NULL;
    size_t cap = 0;
    if (getline(&line, &cap, out) < 0) {
        fprintf(stderr, "raw_execve: the server closed before answering initialize\n");
        return 3;
    }
    fputs(line, stdout);
    /* One request at a time, each answered before the next, as a client that waits. */
    char *mine = NULL;
    size_t mcap = 0;
    while (getline(&mine, &mcap, stdin) > 0) {
        fputs(mine, in);
        fflush(in);
        if (getline(&line, &cap, out) < 0) break;
        fputs(line, stdout);
    }
    fclose(in);
    fflush(stdout);
    if (!detach) waitpid(pid, NULL, 0);
    return 0;
}
