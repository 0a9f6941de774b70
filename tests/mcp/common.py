"""What the MCP client scripts of tests/mcp share: one JSON line per step, and
a connected client of the official MCP Python SDK (PyPI `mcp`)."""

import contextlib
import json

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


def say(**fields):
    print(json.dumps(fields), flush=True)


@contextlib.asynccontextmanager
async def connect(url, token, mode, **options):
    """A client of `url` in `mode` (`legacy` or `2026-07-28`) with `token`;
    `options` go to `Client` (handlers, log level)."""
    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx2.Timeout(30, read=300),
    )
    async with http, Client(
        streamable_http_client(url, http_client=http), mode=mode, cache=None, **options
    ) as client:
        yield client
