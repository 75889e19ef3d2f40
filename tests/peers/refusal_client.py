#!/usr/bin/env python3
"""Calls tools the way an agent on the official Python SDK does, and reports what the
library surfaced for each call: its result, or the JSON-RPC error (code and message) it
raised as that call's error. After each case it calls `echo` on the same session, to show
the session survived the refusal.

    refusal_client.py URL streamable|sse|modern CASES_JSON

CASES_JSON is a list of {"label", "tool", "arguments", "repeat" (default 1), "pause"}: the
call is made `repeat` times in a row and the first error (if any) is reported, then the
client waits `pause` seconds. `modern` speaks
the 2026-07-28 revision (stateless requests, no initialize). Prints one JSON object:
{"label": {"code", "message", "seconds", "next_ok"}, ...}.
"""

import asyncio
import json
import sys
import time
import traceback

from mcp import Client, ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

CALL_TIMEOUT = 60


async def one(call, case):
    for _ in range(case.get("repeat", 1)):
        start = time.monotonic()
        try:
            result = await asyncio.wait_for(call(case["tool"], case.get("arguments", {})), CALL_TIMEOUT)
        except MCPError as e:
            return {"code": e.code, "message": e.message, "seconds": time.monotonic() - start}
        except TimeoutError:
            return {"timed_out": True, "seconds": time.monotonic() - start}
        out = {"ok": [c.model_dump(mode="json", exclude_none=True) for c in result.content],
               "is_error": bool(result.is_error)}
    return out


async def exercise(call, list_tools, cases):
    out = {"tools": sorted(t.name for t in (await list_tools()).tools)}
    for case in cases:
        got = await one(call, case)
        await asyncio.sleep(case.get("pause", 0))
        nxt = await one(call, {"tool": "echo", "arguments": {"text": "still here"}})
        got["next_ok"] = nxt.get("ok") == [{"type": "text", "text": "still here"}]
        if not got["next_ok"]:
            got["next"] = nxt
        out[case["label"]] = got
    return out


async def run(url, transport, cases):
    if transport == "modern":
        async with Client(url, mode="2026-07-28") as client:
            return await exercise(client.call_tool, client.list_tools, cases)
    opener = streamable_http_client if transport == "streamable" else sse_client
    async with opener(url) as streams:
        read, write = streams[0], streams[1]
        async with ClientSession(read, write) as session:
            await session.initialize()
            return await exercise(session.call_tool, session.list_tools, cases)


def main():
    url, transport, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    try:
        out = asyncio.run(run(url, transport, cases))
    except BaseException as e:  # noqa: BLE001 - report every failure
        traceback.print_exc(file=sys.stderr)
        print(f"refusal_client.py: {transport} session with {url} failed: {e!r}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
