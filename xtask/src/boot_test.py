# The boot test's driver, run by systemd (boot-test.service) inside a Debian container booted
# with systemd-nspawn by `cargo xtask test --full` (xtask/src/deb.rs). It does what an
# administrator does: install the package, check the service, run an agent service in
# mcp-agents.slice, and read the agent's MCP call in the audit ledger. Its log and verdict
# go to /results (bound from the host); its exit status ends the container.

import json
import os
import subprocess
import sys
import time
import traceback

LOG = open("/results/driver.log", "w", buffering=1)
AUDIT = "/var/log/mcp-gateway/audit.jsonl"
CONFIG = "/etc/mcp-gateway/mcp-gateway.toml"
PORT = 8080  # in the example config's scope.ports


def log(msg):
    LOG.write(msg + "\n")
    print(msg, flush=True)


def sh(cmd, check=True):
    """Runs a shell command, logs it and its output; returns stdout."""
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    log(f"$ {cmd}  [exit {p.returncode}]")
    for line in (p.stdout + p.stderr).rstrip().splitlines():
        log(f"  {line}")
    if check and p.returncode != 0:
        raise AssertionError(f"`{cmd}` exited {p.returncode}")
    return p.stdout


def check(cond, what):
    log(("ok: " if cond else "FAILED: ") + what)
    if not cond:
        raise AssertionError(what)


FAILURES = []


def soft_fail(what):
    """A failure that does not stop the run, so what follows is checked too."""
    log("FAILED: " + what)
    FAILURES.append(what)


def wait_for(pred, what, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


SERVER = r'''
import json, http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if req.get("method") == "tools/list":
            result = {"tools": [{"name": "ping", "description": "Answers pong.",
                                 "inputSchema": {"type": "object"}}]}
        else:
            result = {"content": [{"type": "text", "text": "pong"}]}
        body = json.dumps({"jsonrpc": "2.0", "id": req.get("id"), "result": result}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", 8080), H).serve_forever()
'''

# Lists the tools, as an agent does (the gateway pins what it lists and refuses calls to
# tools it never saw listed), then calls one.
AGENT = r'''
import json, sys, urllib.request
def post(msg):
    req = urllib.request.Request("http://127.0.0.1:8080/mcp", data=json.dumps(msg).encode(),
        method="POST", headers={"Content-Type": "application/json",
                                "Accept": "application/json, text/event-stream",
                                "MCP-Protocol-Version": "2025-11-25"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            print(r.status, r.read().decode())
    except urllib.error.HTTPError as e:
        print(e.code, e.read().decode())
post({"jsonrpc": "2.0", "id": 6, "method": "tools/list"})
post({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "ping", "arguments": {}}})
'''

# The README's example of an agent service: any unit with Slice=mcp-agents.slice.
AGENT_UNIT = """\
[Unit]
Description=A test AI agent
[Service]
Type=oneshot
Slice=mcp-agents.slice
User=nobody
ExecStart=/usr/bin/python3 /usr/local/lib/test-agent.py
StandardOutput=append:/run/test-agent.out
"""


def audit_records():
    out = sh(f"mcp-gateway audit show --type mcp", check=True)
    return [json.loads(l) for l in out.splitlines() if l.strip().startswith("{")]


def run_agent():
    open("/run/test-agent.out", "w").close()
    sh("systemctl start test-agent.service")
    return open("/run/test-agent.out").read()


def main():
    sh("systemctl --version | head -1")
    sh("cat /proc/self/mountinfo | grep -E 'cgroup|bpf' || true", check=False)

    # Install as an administrator would.
    sh("dpkg -i /root/mcp-gateway.deb")
    sh("dpkg-query -W -f='${Conffiles}\\n' mcp-gateway")
    check(sh("getent group mcp-gateway", check=False) != "", "sysusers created group mcp-gateway")
    check(os.path.isdir("/var/log/mcp-gateway"), "tmpfiles created /var/log/mcp-gateway")
    check(sh("systemctl is-enabled mcp-gateway.service", check=False).strip() == "enabled",
          "the service is enabled by the package")
    wait_for(lambda: subprocess.run(["systemctl", "is-active", "--quiet", "mcp-gateway"]).returncode == 0,
             "mcp-gateway.service active (the package starts it)")
    sh("systemctl status --no-pager mcp-gateway.service", check=False)
    sh("systemd-analyze verify /usr/lib/systemd/system/mcp-gateway.service "
       "/usr/lib/systemd/system/mcp-agents.slice")
    sh("systemd-analyze security --no-pager mcp-gateway.service | tail -25", check=False)
    sh("ls -la /sys/fs/bpf/mcp-gateway/default/ /var/log/mcp-gateway /var/lib/mcp-gateway")

    # An MCP server (not an agent) and an agent service in the slice.
    with open("/usr/local/lib/test-server.py", "w") as f:
        f.write(SERVER)
    with open("/usr/local/lib/test-agent.py", "w") as f:
        f.write(AGENT)
    with open("/etc/systemd/system/test-agent.service", "w") as f:
        f.write(AGENT_UNIT)
    sh("systemctl daemon-reload")
    sh("systemd-run --unit=test-mcp-server /usr/bin/python3 /usr/local/lib/test-server.py")
    wait_for(lambda: subprocess.run(["python3", "-c",
                                     f"import socket; socket.create_connection(('127.0.0.1', {PORT}), 1)"]).returncode == 0,
             "the test server listening")

    # 1. The example config's policy denies everything: the call is refused and audited.
    out = run_agent()
    log(f"agent output: {out.strip()}")
    if "-32012" not in out:
        # Recorded as a failure of the test, then worked around so the rest is checked.
        soft_fail("with the shipped config, the agent service in mcp-agents.slice was not "
                  "mediated (its call reached the server directly): systemd puts "
                  "mcp-agents.slice at the cgroup /mcp.slice/mcp-agents.slice (a dash in a "
                  "slice name is a level of the hierarchy), while agents.cgroups = "
                  "[\"mcp-agents.slice\"] names /mcp-agents.slice")
        sh("grep -n '^cgroups' " + CONFIG)
        sh(f"sed -i 's|^cgroups = \\[\"mcp-agents.slice\"\\]|cgroups = [\"mcp.slice/mcp-agents.slice\"]|' {CONFIG}")
        sh("grep -n '^cgroups' " + CONFIG)
        sh("systemctl restart mcp-gateway.service")
        out = run_agent()
        log(f"agent output: {out.strip()}")
    check("-32012" in out, "the agent's call was denied by the default policy (-32012)")
    recs = [r for r in audit_records() if r.get("method") == "tools/call"]
    check(any((r.get("principal") or {}).get("uid") == 65534 and r.get("outcome") == "refused"
              for r in recs),
          "the denied call is in the audit, refused, with the agent's uid (nobody)")

    # 2. Audit mode, loaded by `systemctl reload`: the call reaches the server.
    sh(f"sed -i 's/^mode = \"enforce\"/mode = \"audit\"/' {CONFIG}")
    sh("systemctl reload mcp-gateway.service")
    time.sleep(1)
    out = run_agent()
    log(f"agent output: {out.strip()}")
    check("pong" in out, "after reload (audit mode) the agent's call reached the server")
    recs = [r for r in audit_records() if r.get("method") == "tools/call"]
    ok = [r for r in recs if r.get("outcome") == "ok"]
    check(len(ok) >= 1, "an mcp record with outcome ok for the agent's tools/call")
    log("record: " + json.dumps(ok[-1]))

    # The admin socket under the service's sandbox: root:mcp-gateway 0660, answering.
    sock = sh("stat -c '%U:%G %a' /run/mcp-gateway/admin.sock", check=False).strip()
    check(sock == "root:mcp-gateway 660", f"the admin socket is root:mcp-gateway 660 ({sock})")
    check("127.0.0.1:8080" in sh("mcp-gateway pins list", check=False),
          "pins list (through the admin socket) shows the server the agent listed")
    check("listeners:" in sh("mcp-gateway status", check=False), "mcp-gateway status answers")

    # The agent's flow, with the identity the kernel gave. The procfs half (exe, cmdline,
    # cgroup, unit) cannot be checked here: the kernel reports pids of the initial pid
    # namespace and the daemon, inside the container, reads a /proc of another one, so the
    # pid reuse guard leaves those facts out. The privileged suite checks them on the host.
    flows = [json.loads(l) for l in sh("mcp-gateway audit show --type flow").splitlines()
             if l.startswith("{")]
    agent_flows = [f for f in flows if (f.get("identity") or {}).get("uid") == 65534]
    check(len(agent_flows) >= 1, "a flow record for the agent (uid nobody)")
    ident = agent_flows[-1]["identity"]
    log("identity: " + json.dumps(ident))
    if ident.get("exe"):
        check(bool(ident.get("cmdline")), "identity has the command line")
        check(str(ident.get("cgroup", "")).endswith("/mcp-agents.slice/test-agent.service"),
              "identity cgroup in the slice")
    else:
        log("note: identity has no procfs facts in this container (pid namespace); "
            "not checked here")

    # The ledger verifies; a restart keeps the service up and the ledger verifying.
    sh("mcp-gateway audit verify")
    sh("systemctl restart mcp-gateway.service")
    check(subprocess.run(["systemctl", "is-active", "--quiet", "mcp-gateway"]).returncode == 0,
          "active after restart")
    out = run_agent()
    check("pong" in out, "the agent is mediated after a restart")
    sh("mcp-gateway audit verify")
    sh("journalctl -u mcp-gateway --no-pager | tail -20", check=False)


if __name__ == "__main__":
    verdict = "failed"
    try:
        main()
        verdict = "failed" if FAILURES else "passed"
        for f in FAILURES:
            log("FAILED: " + f)
    except Exception:
        log(traceback.format_exc())
        sh("journalctl -u mcp-gateway --no-pager | tail -40", check=False)
    finally:
        with open("/results/verdict", "w") as f:
            f.write(verdict + "\n")
        log(f"boot test: {verdict}")
    sys.exit(0 if verdict == "passed" else 1)
