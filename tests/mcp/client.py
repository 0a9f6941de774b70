"""A real MCP client (the official Python SDK, PyPI `mcp`) against dynapi's /mcp.

Used by tests/it/mcp.rs, which checks what this prints.

    python3 client.py URL TOKEN MODE [readonly]
        MODE: legacy (initialize and sessions, 2025-11-25 and before) or
        2026-07-28 (stateless, changes on subscriptions/listen)

Prints one JSON object per line:
  {"step": "connected", "protocol", "server", "tools": {name: tool}}
  {"step": "called", ...}                 results of a few tool calls
  {"step": "added", "tools"}              after adding an endpoint through the
                                          addEndpoint tool and being told the list
                                          changed
  {"step": "ready"}                       then it waits to be told again (the test
                                          commits a manifest as a human would)
  {"step": "human", "tools", "result"}    the human's endpoint, listed and called
With `readonly` it stops after "connected" and one {"step": "write"}: the
result of a writeFile call (for a token without the write scope).
Errors end it with a non-zero exit and the reason on stderr.
"""

import asyncio
import contextlib
import sys

import mcp.types as types
from connection import connect, say

WAIT = 15  # seconds to wait for a notification


def result(r):
    return {
        "is_error": bool(r.is_error),
        "structured": r.structured_content,
        "text": [c.text for c in r.content if getattr(c, "text", None) is not None],
    }


async def main(url, token, mode, readonly=False):
    changed = asyncio.Queue()

    async with connect(url, token, mode, changed, types.ToolListChangedNotification) as client:
        listen = contextlib.AsyncExitStack()
        subscription = None
        if mode != "legacy":
            subscription = await listen.enter_async_context(client.listen(tools_list_changed=True))

            async def pump():
                async for _ in subscription:
                    changed.put_nowait("subscriptions/listen")

            pumping = asyncio.create_task(pump())

        async def tools():
            listed = await client.list_tools()
            return {t.name: t.model_dump(by_alias=True, exclude_none=True) for t in listed.tools}

        info = client.server_info
        say(
            step="connected",
            protocol=client.protocol_version,
            server=info.name if info else None,
            instructions=client.instructions,
            tools=await tools(),
        )

        if readonly:
            say(
                step="write",
                result=result(await client.call_tool("writeFile", {"path": "x.md", "content": "x"})),
            )
            return

        say(
            step="called",
            hello=result(await client.call_tool("hello", {"name": "Ada"})),
            write=result(
                await client.call_tool(
                    "writeFile",
                    {"path": "notes/from mcp.md", "content": "hi from MCP\n", "message": "Note from MCP"},
                )
            ),
            read=result(await client.call_tool("readFile", {"path": "notes/from mcp.md"})),
            missing=result(await client.call_tool("readFile", {"path": "no/such/file"})),
            bad_argument=result(await client.call_tool("listFiles", {"depth": "deep"})),
            sql=result(await client.call_tool("runSql", {"query": "SELECT 1 + 1 AS two"})),
        )

        added = result(
            await client.call_tool(
                "addEndpoint",
                {
                    "manifest": "name: shout\ndescription: Upper-case a word.\nmethod: POST\npath: /shout\n"
                    "script: scripts/shout.sh\nargs: ['{word}']\nparams:\n  word: {type: string, maxLength: 20, required: true}\n",
                    "script": {"path": "scripts/shout.sh", "content": "#!/bin/sh\necho \"$1\" | tr a-z A-Z\n"},
                    "message": "Add shout through MCP",
                },
            )
        )
        how = await asyncio.wait_for(changed.get(), WAIT)
        say(
            step="added",
            how=how,
            add=added,
            tools=await tools(),
            shout=result(await client.call_tool("shout", {"word": "hey"})),
        )

        say(step="ready")
        how = await asyncio.wait_for(changed.get(), WAIT)
        say(
            step="human",
            how=how,
            tools=await tools(),
            result=result(await client.call_tool("whisper", {"word": "HEY"})),
        )
        if subscription is not None:
            pumping.cancel()
        await listen.aclose()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4], readonly=sys.argv[4:5] == ["readonly"]))
