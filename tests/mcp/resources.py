"""The project's files as MCP resources, read with the official MCP Python SDK
(PyPI `mcp`) against dynapi's /mcp. Used by tests/it/mcp.rs, which checks what
this prints.

    python3 resources.py URL TOKEN MODE COMMIT [noread]
        MODE: legacy (initialize, resources/subscribe) or 2026-07-28
        (stateless, subscriptions/listen); COMMIT: a commit whose notes.md the
        test knows. With `noread` (a token without the read scope) it prints
        {"step": "refused", "list", "read"} and stops.

Prints one JSON object per line:
  {"step": "listed", "uris", "pages", "templates"}   every page of resources/list
  {"step": "read", name: contents or {"error"}}      resources/read of a few URIs
  {"step": "completed", name: {"values", "has_more"}}  completion/complete of
                                                     template and prompt arguments
  {"step": "ready"}                                  subscribed to notes.md; the
                                                     test commits as a human would
  {"step": "updated", "uris", "list_changed", "text"}  what it was told, then
                                                     notes.md read again
Errors end it with a non-zero exit and the reason on stderr.
"""

import asyncio
import contextlib
import sys

import mcp.types as types
from connection import connect, say
from mcp.shared.subscriptions import ResourcesListChanged, ResourceUpdated

WAIT = 15  # seconds to wait for a notification
NOTES = "dynapi://files/notes.md"



def contents(result):
    out = []
    for c in result.contents:
        item = {"uri": c.uri, "mime": c.mime_type}
        if getattr(c, "text", None) is not None:
            item["text"] = c.text
        else:
            item["blob"] = c.blob
        out.append(item)
    return out


def error_of(e):
    error = getattr(e, "error", None)
    return {"error": {"code": getattr(error, "code", None), "message": str(e)}}


async def main(url, token, mode, commit, noread=False):
    told = asyncio.Queue()

    async def on_message(message):
        # Legacy sessions are told on their stream; 2026-07-28 on the listen
        # stream (and tees them here too): count them once.
        if mode != "legacy":
            return
        if isinstance(message, types.ResourceUpdatedNotification):
            told.put_nowait(("updated", message.params.uri))
        elif isinstance(message, types.ResourceListChangedNotification):
            told.put_nowait(("list_changed", None))

    async with connect(url, token, mode, message_handler=on_message) as client:

        async def read(uri):
            try:
                return contents(await client.read_resource(uri))
            except Exception as e:  # the server's JSON-RPC error, as the SDK raises it
                return error_of(e)

        if noread:
            try:
                listed = {"uris": [r.uri for r in (await client.list_resources()).resources]}
            except Exception as e:
                listed = error_of(e)
            say(step="refused", list=listed, read=await read(NOTES))
            return

        uris, pages, cursor = [], 0, None
        while True:
            page = await client.list_resources(cursor=cursor)
            pages += 1
            uris += [r.uri for r in page.resources]
            cursor = page.next_cursor
            if not cursor:
                break
        templates = await client.list_resource_templates()
        say(
            step="listed",
            uris=uris,
            pages=pages,
            templates=[t.uri_template for t in templates.resource_templates],
        )

        say(
            step="read",
            notes=await read(NOTES),
            binary=await read("dynapi://files/data/logo.bin"),
            spaced=await read("dynapi://files/docs/a%20b.md"),
            at_commit=await read(f"dynapi://commits/{commit[:7]}/files/notes.md"),
            ignored=await read("dynapi://files/.env"),
            escape=await read("dynapi://files/../outside.txt"),
            git=await read("dynapi://files/.git/config"),
            missing=await read("dynapi://files/no/such.md"),
            foreign=await read("file:///etc/passwd"),
            folder=await read("dynapi://files/docs"),
        )

        async def complete(ref, name, value):
            done = (await client.complete(ref, {"name": name, "value": value})).completion
            return {"values": done.values, "has_more": bool(done.has_more)}

        files = types.ResourceTemplateReference(type="ref/resource", uri="dynapi://files/{+path}")
        at = types.ResourceTemplateReference(
            type="ref/resource", uri="dynapi://commits/{commit}/files/{+path}"
        )
        review = types.PromptReference(type="ref/prompt", name="review-file")
        say(
            step="completed",
            folder=await complete(files, "path", "do"),
            in_folder=await complete(files, "path", "docs/a"),
            many=await complete(files, "path", "many/"),
            secret=await complete(files, "path", ".en"),
            dot=await complete(files, "path", ".gi"),
            escape=await complete(files, "path", "../"),
            commit=await complete(at, "commit", commit[:3]),
            prompt=await complete(review, "path", "scripts/he"),
            not_a_path=await complete(review, "focus", "err"),
        )

        listen = contextlib.AsyncExitStack()
        if mode == "legacy":
            await client.subscribe_resource(NOTES)
        else:
            subscription = await listen.enter_async_context(
                client.listen(resource_subscriptions=[NOTES], resources_list_changed=True)
            )

            async def pump():
                async for event in subscription:
                    if isinstance(event, ResourceUpdated):
                        told.put_nowait(("updated", event.uri))
                    elif isinstance(event, ResourcesListChanged):
                        told.put_nowait(("list_changed", None))

            pumping = asyncio.create_task(pump())

        say(step="ready")
        updated, list_changed = [], False
        while not (updated and list_changed):
            kind, uri = await asyncio.wait_for(told.get(), WAIT)
            if kind == "updated":
                updated.append(uri)
            else:
                list_changed = True
        say(
            step="updated",
            uris=updated,
            list_changed=list_changed,
            text=contents(await client.read_resource(NOTES))[0]["text"],
        )
        if mode != "legacy":
            pumping.cancel()
        await listen.aclose()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5], noread=sys.argv[5:6] == ["noread"]))
