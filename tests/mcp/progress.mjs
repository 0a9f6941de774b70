// Long runs through MCP with the official MCP TypeScript SDK's client (npm
// @modelcontextprotocol/sdk) against dynapi's /mcp, in the revisions with
// `initialize`. Used by tests/it/mcp.rs, which checks what this prints: the
// same lines as progress.py in its `legacy` mode.
//
//     node progress.mjs URL TOKEN legacy

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import {
  CallToolResultSchema,
  LoggingMessageNotificationSchema,
} from "@modelcontextprotocol/sdk/types.js";

const say = (fields) => process.stdout.write(JSON.stringify(fields) + "\n");
const result = (r) => ({ is_error: Boolean(r.isError), structured: r.structuredContent ?? null });

async function main([url, token, mode]) {
  if (mode !== "legacy") throw new Error("the TypeScript SDK speaks the legacy revisions only");
  const logs = [];
  const client = new Client({ name: "dynapi-tests", version: "1.0.0" });
  client.setNotificationHandler(LoggingMessageNotificationSchema, (n) =>
    logs.push({ level: n.params.level, logger: n.params.logger ?? null, data: n.params.data }),
  );
  await client.connect(
    new StreamableHTTPClientTransport(new URL(url), {
      requestInit: { headers: { Authorization: `Bearer ${token}` } },
    }),
  );
  await client.setLoggingLevel("info");
  const long = { timeout: 120_000 };

  const progress = [];
  const ticked = await client.callTool({ name: "ticker", arguments: {} }, CallToolResultSchema, {
    ...long,
    onprogress: (p) => progress.push({ progress: p.progress, total: p.total ?? null, message: p.message ?? null }),
  });
  say({ step: "ticked", progress, logs, result: result(ticked) });

  const abort = new AbortController();
  let named;
  const seen = new Promise((resolve) => {
    named = resolve;
  });
  const call = client
    .callTool({ name: "forever", arguments: {} }, CallToolResultSchema, {
      ...long,
      signal: abort.signal,
      onprogress: (p) => {
        const found = [...(p.message ?? "").matchAll(/pid (\d+)/g)].map((m) => Number(m[1]));
        if (found.length >= 2) named(found);
      },
    })
    .then(result, () => "cancelled");
  const pids = await Promise.race([
    seen,
    new Promise((_, reject) => setTimeout(() => reject(new Error("no pids in time")), 15_000)),
  ]);
  abort.abort("the test cancels it");
  say({ step: "cancelled", pids, result: await call });

  const jobbed = result(await client.callTool({ name: "sleepy", arguments: {} }, CallToolResultSchema, long));
  const id = jobbed.structured?.job_id;
  const job = id ? result(await client.callTool({ name: "getJob", arguments: { id } })) : null;
  say({ step: "jobbed", result: jobbed, job });

  const tools = Object.fromEntries((await client.listTools()).tools.map((t) => [t.name, t]));
  const weather = await client.callTool({ name: "weather", arguments: {} });
  const broken = await client.callTool({ name: "broken", arguments: {} });
  say({
    step: "structured",
    schema: tools.weather.outputSchema ?? null,
    weather: result(weather),
    broken: { ...result(broken), text: broken.content.filter((c) => c.type === "text").map((c) => c.text) },
  });
  await client.close();
}

main(process.argv.slice(2)).catch((e) => {
  process.stderr.write(`${e.stack ?? e}\n`);
  process.exit(1);
});
