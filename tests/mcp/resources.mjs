// The project's files as MCP resources, read with the official MCP TypeScript
// SDK's client (npm @modelcontextprotocol/sdk, the one most desktop clients are
// built on) against dynapi's /mcp. It speaks the revisions with `initialize`
// (2025-11-25 and before). Used by tests/it/mcp.rs, which checks what this
// prints: the same lines as resources.py in its `legacy` mode.
//
//     node resources.mjs URL TOKEN legacy COMMIT [noread]

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import {
  ResourceListChangedNotificationSchema,
  ResourceUpdatedNotificationSchema,
} from "@modelcontextprotocol/sdk/types.js";

const WAIT = 15_000; // milliseconds to wait for a notification
const NOTES = "dynapi://files/notes.md";

const say = (fields) => process.stdout.write(JSON.stringify(fields) + "\n");

const contents = (result) =>
  result.contents.map((c) => {
    const item = { uri: c.uri, mime: c.mimeType ?? null };
    if (typeof c.text === "string") item.text = c.text;
    else item.blob = c.blob;
    return item;
  });

const errorOf = (e) => ({ error: { code: e.code ?? null, message: String(e.message ?? e) } });

async function main([url, token, mode, commit, noread]) {
  if (mode !== "legacy") throw new Error("the TypeScript SDK speaks the legacy revisions only");
  const told = [];
  let wake = () => {};
  const tell = (event) => {
    told.push(event);
    wake();
  };
  const next = () =>
    told.length
      ? Promise.resolve(told.shift())
      : new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error("no notification in time")), WAIT);
          wake = () => {
            clearTimeout(timer);
            resolve(told.shift());
          };
        });

  const client = new Client({ name: "dynapi-tests", version: "1.0.0" });
  client.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) =>
    tell(["updated", n.params.uri]),
  );
  client.setNotificationHandler(ResourceListChangedNotificationSchema, () =>
    tell(["list_changed", null]),
  );
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { Authorization: `Bearer ${token}` } },
  });
  await client.connect(transport);

  const read = async (uri) => {
    try {
      return contents(await client.readResource({ uri }));
    } catch (e) {
      return errorOf(e);
    }
  };

  if (noread === "noread") {
    let list;
    try {
      list = { uris: (await client.listResources()).resources.map((r) => r.uri) };
    } catch (e) {
      list = errorOf(e);
    }
    say({ step: "refused", list, read: await read(NOTES) });
    await client.close();
    return;
  }

  const uris = [];
  let pages = 0;
  let cursor;
  do {
    const page = await client.listResources(cursor ? { cursor } : {});
    pages += 1;
    uris.push(...page.resources.map((r) => r.uri));
    cursor = page.nextCursor;
  } while (cursor);
  const templates = await client.listResourceTemplates();
  say({
    step: "listed",
    uris,
    pages,
    templates: templates.resourceTemplates.map((t) => t.uriTemplate),
  });

  say({
    step: "read",
    notes: await read(NOTES),
    binary: await read("dynapi://files/data/logo.bin"),
    spaced: await read("dynapi://files/docs/a%20b.md"),
    at_commit: await read(`dynapi://commits/${commit.slice(0, 7)}/files/notes.md`),
    ignored: await read("dynapi://files/.env"),
    escape: await read("dynapi://files/../outside.txt"),
    git: await read("dynapi://files/.git/config"),
    missing: await read("dynapi://files/no/such.md"),
    foreign: await read("file:///etc/passwd"),
    folder: await read("dynapi://files/docs"),
  });

  const complete = async (ref, name, value) => {
    const done = (await client.complete({ ref, argument: { name, value } })).completion;
    return { values: done.values, has_more: Boolean(done.hasMore) };
  };
  const files = { type: "ref/resource", uri: "dynapi://files/{+path}" };
  const at = { type: "ref/resource", uri: "dynapi://commits/{commit}/files/{+path}" };
  const review = { type: "ref/prompt", name: "review-file" };
  say({
    step: "completed",
    folder: await complete(files, "path", "do"),
    in_folder: await complete(files, "path", "docs/a"),
    many: await complete(files, "path", "many/"),
    secret: await complete(files, "path", ".en"),
    dot: await complete(files, "path", ".gi"),
    escape: await complete(files, "path", "../"),
    commit: await complete(at, "commit", commit.slice(0, 3)),
    prompt: await complete(review, "path", "scripts/he"),
    not_a_path: await complete(review, "focus", "err"),
  });

  await client.subscribeResource({ uri: NOTES });
  say({ step: "ready" });
  const updated = [];
  let listChanged = false;
  while (!(updated.length && listChanged)) {
    const [kind, uri] = await next();
    if (kind === "updated") updated.push(uri);
    else listChanged = true;
  }
  say({
    step: "updated",
    uris: updated,
    list_changed: listChanged,
    text: contents(await client.readResource({ uri: NOTES }))[0].text,
  });
  await client.close();
}

main(process.argv.slice(2)).catch((e) => {
  process.stderr.write(`${e.stack ?? e}\n`);
  process.exit(1);
});
