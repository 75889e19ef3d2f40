#!/usr/bin/env python3
"""An agent on the official Python SDK that starts its MCP server over stdio, for the
gateway's stdio tests: the server is its child (`stdio_client`), the agent knows nothing of
the gateway.

    stdio_agent.py SPEC_JSON

SPEC: {"server": {"command", "args", "cwd"?, "env"?}, "calls": [{"name", "arguments",
"progress"?: bool}]}. It initializes, lists the tools, makes the calls in order and prints
ONE JSON object: {"tools": [names], "calls": [{"name", "text"? | "code"?, "message"?,
"progress"?}]}. A call's JSON-RPC error is its result here (code and message as the library
raised them); any other failure exits 2 with the reason on stderr.
"""

import asyncio
import json
import os
import sys
import traceback

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError


async def main(spec):
    s = spec["server"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    env.update(s.get("env", {}))
    params = StdioServerParameters(command=s["command"], args=s["args"], cwd=s.get("cwd"), env=env)
    out = {"tools": [], "calls": []}
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            out["tools"] = sorted(t.name for t in (await session.list_tools()).tools)
            for c in spec.get("calls", []):
                got = {"name": c["name"]}
                progress = []

                async def on_progress(value, total, message):
                    progress.append(value)

                try:
                    r = await session.call_tool(
                        c["name"], c.get("arguments", {}),
                        progress_callback=on_progress if c.get("progress") else None,
                    )
                    got["text"] = " ".join(getattr(b, "text", "") for b in r.content)
                    got["is_error"] = bool(r.is_error)
                except MCPError as e:
                    got["code"] = e.error.code
                    got["message"] = e.error.message
                if c.get("progress"):
                    got["progress"] = len(progress)
                out["calls"].append(got)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    try:
        asyncio.run(main(json.loads(sys.argv[1])))
    except BaseException as e:  # noqa: BLE001 - report every failure
        traceback.print_exc()
        print(f"stdio_agent failed: {e!r}", file=sys.stderr)
        sys.exit(2)
