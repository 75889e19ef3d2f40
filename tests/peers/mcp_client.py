#!/usr/bin/env python3
"""An MCP client built on the official Python SDK (`mcp`), for the gateway's integration tests.

    mcp_client.py URL TRANSPORT [--profile auto|everything|rmcp]

TRANSPORT is `streamable` (Streamable HTTP, URL like http://127.0.0.1:PORT/mcp) or `sse`
(the legacy HTTP+SSE transport, URL like http://127.0.0.1:PORT/sse).

It does what an agent would do with a server: initialize, list the tools, call the echo tool,
call a tool that sends progress notifications while it runs (with a progress token), read a
resource, list the prompts and get one (and with --templates, list the resource templates and
read from the first). It prints ONE JSON object on stdout with the results
normalised (sorted names, no session ids, timestamps or random values), so that a run straight
to the server and a run through a proxy can be compared for equality. Any failure exits 2 with
the reason on stderr.

The profile names the server's tool, resource and prompt names: `everything` for
@modelcontextprotocol/server-everything, `rmcp` for the project's rmcp-test-server; `auto`
(the default) picks it from the tool list.
"""

import argparse
import asyncio
import json
import re
import sys
import traceback

from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

ECHO_TEXT = "hello through the gateway"
PROGRESS_STEPS = 4

# What each server calls the things this client exercises.
PROFILES = {
    "everything": {
        "echo": ("echo", "message"),
        "progress": ("trigger-long-running-operation", {"duration": 1, "steps": PROGRESS_STEPS}),
        "resource": "demo://resource/static/document/architecture.md",
        "prompt": ("args-prompt", {"city": "Lyon", "state": "Rhone"}),
    },
    "rmcp": {
        "echo": ("echo", "text"),
        "progress": ("slow_count", {"steps": PROGRESS_STEPS}),
        "resource": "test://hello",
        "prompt": ("greet", {"name": "Ada"}),
    },
}


def content_json(block):
    """A content block as plain JSON, without `_meta` and other absent fields."""
    data = block.model_dump(mode="json", by_alias=True, exclude_none=True)
    data.pop("_meta", None)
    return data


def tool_result(result):
    if result.is_error:
        raise RuntimeError(f"tool returned an error: {[content_json(c) for c in result.content]}")
    return [content_json(c) for c in result.content]


async def exercise(session, profile_name, templates=False):
    init = await session.initialize()
    out = {
        "client": "python-mcp",
        "protocol_version": init.protocol_version,
        "server_name": init.server_info.name,
    }

    tools = await session.list_tools()
    names = sorted(t.name for t in tools.tools)
    if profile_name == "auto":
        profile_name = "everything" if "trigger-long-running-operation" in names else "rmcp"
    profile = PROFILES[profile_name]
    out["profile"] = profile_name
    out["tools"] = names

    echo_tool, echo_arg = profile["echo"]
    echo = tool_result(await session.call_tool(echo_tool, {echo_arg: ECHO_TEXT}))
    out["echo"] = {"sent": ECHO_TEXT, "content": echo, "text": echo[0].get("text") if echo else None}

    progress = []

    async def on_progress(value, total, message):
        progress.append({"progress": value, "total": total, "message": message})

    progress_tool, progress_args = profile["progress"]
    result = tool_result(
        await session.call_tool(progress_tool, progress_args, progress_callback=on_progress)
    )
    # Notifications and the response travel separately: give a late one a moment.
    for _ in range(20):
        if len(progress) >= PROGRESS_STEPS:
            break
        await asyncio.sleep(0.05)
    out["progress"] = {
        "tool": progress_tool,
        "steps": PROGRESS_STEPS,
        "count": len(progress),
        "final": progress[-1]["progress"] if progress else None,
        "total": progress[-1]["total"] if progress else None,
        "values": [p["progress"] for p in progress],
        "result": result,
    }

    uri = profile["resource"]
    contents = (await session.read_resource(uri)).contents
    out["resource"] = {
        "uri": uri,
        "contents": [
            {
                "uri": str(c.uri),
                "mime_type": c.mime_type,
                "text": getattr(c, "text", None),
                "blob": getattr(c, "blob", None),
            }
            for c in contents
        ],
    }

    prompts = await session.list_prompts()
    out["prompts"] = sorted(p.name for p in prompts.prompts)
    prompt_name, prompt_args = profile["prompt"]
    prompt = await session.get_prompt(prompt_name, prompt_args)
    out["prompt"] = {
        "name": prompt_name,
        "arguments": prompt_args,
        "messages": [{"role": m.role, "content": content_json(m.content)} for m in prompt.messages],
    }
    if templates:
        listed = await session.list_resource_templates()
        out["templates"] = sorted(t.uri_template for t in listed.resource_templates)
        # The first template, every variable set to 1.
        uri = re.sub(r"\{[^}]*\}", "1", out["templates"][0])
        contents = (await session.read_resource(uri)).contents
        out["template_read"] = {
            "uri": uri,
            # What was read, not its bytes (the server stamps them with the time).
            "contents": ["text" if getattr(c, "text", None) else "blob" for c in contents],
        }
    return out


async def run(url, transport, profile, templates):
    if transport == "streamable":
        async with streamable_http_client(url) as (read, write):
            async with ClientSession(read, write) as session:
                return await exercise(session, profile, templates)
    else:
        async with sse_client(url) as (read, write):
            async with ClientSession(read, write) as session:
                return await exercise(session, profile, templates)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("transport", choices=["streamable", "sse"])
    parser.add_argument("--profile", choices=["auto", "everything", "rmcp"], default="auto")
    parser.add_argument("--templates", action="store_true",
                        help="then list the resource templates and read from the first")
    parser.add_argument("--timeout", type=float, default=60, help="seconds for the whole run")
    args = parser.parse_args()
    try:
        out = asyncio.run(asyncio.wait_for(run(args.url, args.transport, args.profile, args.templates), args.timeout))
    except BaseException as e:  # noqa: BLE001 - report every failure, including groups
        if isinstance(e, KeyboardInterrupt):
            raise
        traceback.print_exc(file=sys.stderr)
        reason = describe(e)
        if reason == "timed out":
            reason += f" after {args.timeout:g} s"
        print(
            f"mcp_client.py: {args.transport} session with {args.url} failed: {reason}",
            file=sys.stderr,
        )
        sys.exit(2)
    print(json.dumps(out, sort_keys=True))


def describe(e):
    """The innermost causes of an exception (anyio wraps task failures in groups)."""
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(describe(x) for x in e.exceptions)
    if isinstance(e, TimeoutError):  # asyncio.wait_for's, on Python >= 3.11
        return "timed out"
    return f"{type(e).__name__}: {e}"


if __name__ == "__main__":
    main()
