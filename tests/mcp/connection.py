"""What the MCP client scripts of tests/mcp share: one JSON line per step on
stdout, and a client of the official Python SDK (PyPI `mcp`) connected to
dynapi's /mcp with a bearer token, in a protocol revision (MODE: legacy, or a
2026-07-28 pin)."""

import contextlib
import json

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


def say(**fields):
    print(json.dumps(fields), flush=True)


@contextlib.asynccontextmanager
async def connect(url, token, mode, changed=None, notification=None, **options):
    """The connected client; `options` go to `Client` (handlers, log level).
    With `changed` (an asyncio.Queue), in a legacy session each `notification`
    (a type of mcp.types) the stream brings puts "notification" in it.
    2026-07-28 delivers changes on the listen stream (and tees them to the
    stream too): the caller counts them there, once."""

    if changed is not None:

        async def on_message(message):
            if mode == "legacy" and isinstance(message, notification):
                changed.put_nowait("notification")

        options["message_handler"] = on_message

    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx2.Timeout(30, read=300),
    )
    async with http, Client(
        streamable_http_client(url, http_client=http),
        mode=mode,
        cache=None,
        **options,
    ) as client:
        yield client
