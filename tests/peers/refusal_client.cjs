#!/usr/bin/env node
// Calls tools the way an agent on the official TypeScript SDK does, and reports what the
// library surfaced for each call: its result, or the error it threw for that call (an
// McpError carries the JSON-RPC code; a transport failure carries no such code). After each
// case it calls `echo` on the same session, to show the session survived the refusal.
//
//   NODE_PATH=target/peers/node/node_modules node refusal_client.cjs URL streamable|sse|modern CASES_JSON
//
// Same cases and output as refusal_client.py. `streamable` and `sse` use the SDK's 1.x
// release (@modelcontextprotocol/sdk); `modern` speaks the 2026-07-28 revision with its 2.x
// client (@modelcontextprotocol/client, version pinned to 2026-07-28: no initialize).
const v1 = {
  ...require("@modelcontextprotocol/sdk/client/index.js"),
  ...require("@modelcontextprotocol/sdk/client/streamableHttp.js"),
  ...require("@modelcontextprotocol/sdk/client/sse.js"),
};
const { McpError } = require("@modelcontextprotocol/sdk/types.js");
const v2 = require("@modelcontextprotocol/client");

// The JSON-RPC error a library raised for the call (1.x: McpError; 2.x: ProtocolError).
const rpcError = (e) => e instanceof McpError || v2.ProtocolError.isInstance(e);

const CALL_TIMEOUT_MS = 60000;

async function one(client, c) {
  let out;
  for (let i = 0; i < (c.repeat || 1); i++) {
    const start = process.hrtime.bigint();
    const seconds = () => Number(process.hrtime.bigint() - start) / 1e9;
    try {
      const r = await client.callTool({ name: c.tool, arguments: c.arguments || {} }, undefined, {
        timeout: CALL_TIMEOUT_MS,
      });
      out = { ok: r.content, is_error: !!r.isError };
    } catch (e) {
      if (rpcError(e)) {
        // The SDK prefixes the server's message with "MCP error CODE: ".
        return { code: e.code, message: e.message.replace(/^MCP error -?\d+: /, ""), seconds: seconds() };
      }
      return { transport_error: String(e), seconds: seconds() };
    }
  }
  return out;
}

async function main() {
  const [url, transport, casesJson] = process.argv.slice(2);
  const cases = JSON.parse(casesJson);
  const info = { name: "refusal-client", version: "1.0.0" };
  let client;
  if (transport === "modern") {
    client = new v2.Client(info, { versionNegotiation: { mode: { pin: "2026-07-28" } } });
    await client.connect(new v2.StreamableHTTPClientTransport(new URL(url)));
  } else {
    client = new v1.Client(info);
    const t =
      transport === "streamable"
        ? new v1.StreamableHTTPClientTransport(new URL(url))
        : new v1.SSEClientTransport(new URL(url));
    await client.connect(t);
  }
  const out = { tools: (await client.listTools()).tools.map((x) => x.name).sort() };
  for (const c of cases) {
    const got = await one(client, c);
    await new Promise((r) => setTimeout(r, (c.pause || 0) * 1000));
    const next = await one(client, { tool: "echo", arguments: { text: "still here" } });
    got.next_ok = JSON.stringify(next.ok) === JSON.stringify([{ type: "text", text: "still here" }]);
    if (!got.next_ok) got.next = next;
    out[c.label] = got;
  }
  await client.close();
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((e) => {
  process.stderr.write(`refusal_client.cjs: failed: ${e && e.stack ? e.stack : e}\n`);
  process.exit(2);
});
