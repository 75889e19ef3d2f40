#!/usr/bin/env python3
"""A small MCP server over stdio on the official Python SDK, for the gateway's stdio tests.

    stdio_server.py DESCRIPTION_FILE

Its one tool, `fetch`, is described by the text of DESCRIPTION_FILE when the server starts:
changing the file between runs is a server changing a tool's description (a rug pull).
`fetch` answers with its `url` argument echoed back.
"""

import sys

from mcp.server.mcpserver import MCPServer

with open(sys.argv[1]) as f:
    DESCRIPTION = f.read().strip()

server = MCPServer("stdio-test-server")


@server.tool(name="fetch", description=DESCRIPTION)
def fetch(url: str) -> str:
    return f"fetched {url}"


if __name__ == "__main__":
    server.run("stdio")
