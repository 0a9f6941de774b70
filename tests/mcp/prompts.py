"""A real MCP client (the official Python SDK, PyPI `mcp`) using dynapi's prompts.

Used by tests/it/prompts.rs, which tells it what to do on stdin and checks
what it prints.

    python3 prompts.py URL TOKEN MODE
        MODE: legacy (initialize and sessions, 2025-11-25 and before) or
        2026-07-28 (stateless, changes on subscriptions/listen)

First prints {"step": "connected", "protocol", "prompts_capability", "honored"}
(`honored`: what subscriptions/listen agreed to send, 2026-07-28 only). Then,
for each JSON line read on stdin, prints one line:
  {"do": "list"}                       {"step": "list", "prompts": {name: prompt}}
  {"do": "get", "name", "arguments"}   {"step": "get", "result": {...} or null,
                                        "error": {"code", "message"} or null}
  {"do": "wait"}                       {"step": "changed", "how"} once told the
                                       prompt list changed (fails after WAIT s)
  {"do": "pending"}                    {"step": "pending", "count"}: changes told
                                       and not yet waited for
  {"do": "quit"}                       ends
Errors end it with a non-zero exit and the reason on stderr.
"""

import asyncio
import contextlib
import json
import sys

import mcp.types as types
from connection import connect, say
from mcp.client.subscriptions import PromptsListChanged
from mcp.shared.exceptions import MCPError

WAIT = 15  # seconds to wait for a notification


async def main(url, token, mode):
    changed = asyncio.Queue()

    async with connect(url, token, mode, changed, types.PromptListChangedNotification) as client:
        listen = contextlib.AsyncExitStack()
        honored = None
        pumping = None
        if mode != "legacy":
            subscription = await listen.enter_async_context(client.listen(prompts_list_changed=True))
            honored = subscription.honored.model_dump(by_alias=True, exclude_none=True)

            async def pump():
                async for event in subscription:
                    if isinstance(event, PromptsListChanged):
                        changed.put_nowait("subscriptions/listen")

            pumping = asyncio.create_task(pump())

        if mode == "legacy":
            prompts = client.server_capabilities.prompts
            prompts = prompts.model_dump(by_alias=True, exclude_none=True) if prompts else None
        else:
            # A pinned revision adopts no capabilities: ask server/discover.
            discovered = await client.session.send_discover(client.protocol_version)
            prompts = discovered["capabilities"].get("prompts")
        say(step="connected", protocol=client.protocol_version, prompts_capability=prompts, honored=honored)

        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            command = json.loads(line)
            what = command["do"]
            if what == "list":
                listed = await client.list_prompts()
                say(
                    step="list",
                    prompts={p.name: p.model_dump(by_alias=True, exclude_none=True) for p in listed.prompts},
                )
            elif what == "get":
                try:
                    got = await client.get_prompt(command["name"], command.get("arguments"))
                    say(step="get", result=got.model_dump(by_alias=True, exclude_none=True), error=None)
                except MCPError as e:
                    say(step="get", result=None, error={"code": e.code, "message": e.message})
            elif what == "wait":
                how = await asyncio.wait_for(changed.get(), WAIT)
                say(step="changed", how=how)
            elif what == "pending":
                say(step="pending", count=changed.qsize())
            else:
                break
        if pumping is not None:
            pumping.cancel()
        await listen.aclose()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
