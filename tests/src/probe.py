# An agent that knows nothing of the gateway: it connects, sends, reads the echo back and
# reports what it saw as one JSON line. Modes exercise the ways a process can make a
# connection: directly, from a forked child (no exec), or from a thread.
import json, os, socket, sys, threading

host, port, mode, size = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
family = sys.argv[5] if len(sys.argv) > 5 else "auto"


def talk():
    fam = socket.AF_INET6 if (family == "6" or ":" in host) else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    out = {"pid": os.getpid(), "tid": threading.get_native_id()}
    try:
        s.connect((host, port))
    except OSError as e:
        out["error"] = f"{type(e).__name__}: {e}"
        out["errno"] = e.errno
        return out
    out["peer"] = list(s.getpeername()[:2])
    out["local"] = list(s.getsockname()[:2])
    payload = bytes((i * 7 + 3) % 251 for i in range(size))
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    got = bytearray()
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    s.close()
    out["sent"] = len(payload)
    out["received"] = len(got)
    out["echo_ok"] = bytes(got) == payload
    return out


if mode == "plain":
    print(json.dumps(talk()), flush=True)
elif mode == "thread":
    box = {}
    t = threading.Thread(target=lambda: box.update(talk()))
    t.start()
    t.join()
    box["main_pid"] = os.getpid()
    print(json.dumps(box), flush=True)
elif mode == "fork":
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r)
        os.write(w, json.dumps(talk()).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.waitpid(child, 0)
    res = json.loads(data)
    res["parent_pid"] = os.getpid()
    print(json.dumps(res), flush=True)
else:
    sys.exit(f"unknown mode {mode}")
