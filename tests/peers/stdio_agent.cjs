#!/usr/bin/env node
// An agent on the official TypeScript SDK that starts its MCP server over stdio (Node gives
// its children socketpairs, not pipes), for the gateway's stdio tests.
//
//   NODE_PATH=target/peers/node/node_modules node stdio_agent.cjs SPEC_JSON
//
// Same SPEC and output as stdio_agent.py.
const { Client } = require("@modelcontextprotocol/sdk/client/index.js");
const { StdioClientTransport } = require("@modelcontextprotocol/sdk/client/stdio.js");
const { McpError } = require("@modelcontextprotocol/sdk/types.js");

async function main(spec) {
  const s = spec.server;
  const transport = new StdioClientTransport({
    command: s.command,
    args: s.args,
    cwd: s.cwd,
    env: { PATH: process.env.PATH || "/usr/bin:/bin", HOME: process.env.HOME || "/", ...(s.env || {}) },
  });
  const client = new Client({ name: "stdio-agent", version: "1.0.0" });
  await client.connect(transport);
  const out = { tools: [], calls: [] };
  out.tools = (await client.listTools()).tools.map((t) => t.name).sort();
  for (const c of spec.calls || []) {
    const got = { name: c.name };
    let progress = 0;
    const options = c.progress ? { onprogress: () => { progress += 1; } } : undefined;
    try {
      const r = await client.callTool({ name: c.name, arguments: c.arguments || {} }, undefined, options);
      got.text = r.content.map((b) => b.text || "").join(" ");
      got.is_error = !!r.isError;
    } catch (e) {
      if (!(e instanceof McpError)) throw e;
      got.code = e.code;
      got.message = e.message.replace(/^MCP error -?\d+: /, "");
    }
    if (c.progress) got.progress = progress;
    out.calls.push(got);
  }
  await client.close();
  console.log(JSON.stringify(out));
}

main(JSON.parse(process.argv[2])).catch((e) => {
  console.error(`stdio_agent.cjs failed: ${e && e.stack ? e.stack : e}`);
  process.exit(2);
});
