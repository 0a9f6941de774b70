"""The official MCP Python SDK's OAuth client signing in to dynapi's /mcp.

Used by tests/it/oauth.rs, which checks what this prints.

    python3 oauth_client.py URL OWNER_TOKEN

The SDK (mcp.client.auth.OAuthClientProvider) does what ChatGPT's connectors
do: it is refused with 401, reads the protected-resource and authorization
server metadata, registers itself, sends the owner to the authorization URL
with PKCE and the resource, and trades the code for tokens. The "browser" here
plays the owner: it opens the consent page, ticks read and run, types the
owner's admin token, approves, and hands the redirect's code to the SDK.

Prints one JSON object per line:
  {"step": "consent", "status", "has_form"}   the consent page as the owner saw it
  {"step": "signed-in", "tools", "listed", "write", "scope", "resource"}
Errors end it with a non-zero exit and the reason on stderr.
"""

import asyncio
import sys
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx2
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

# The other client's way of printing steps and results (same folder).
from client import result, say

REDIRECT = "http://127.0.0.1:9/callback"


class Memory:
    """Token storage for one run."""

    def __init__(self):
        self.tokens = None
        self.client = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, client_info):
        self.client = client_info


async def main(url, owner_token):
    returned = asyncio.Queue()
    browser = httpx2.AsyncClient(follow_redirects=False, timeout=30)

    async def redirect_handler(authorization_url):
        page = await browser.get(authorization_url, headers={"accept": "text/html"})
        say(step="consent", status=page.status_code, has_form='name="owner_token"' in page.text)
        fields = parse_qsl(urlsplit(authorization_url).query)
        fields += [("owner_token", owner_token), ("grant", "read"), ("grant", "run"), ("decision", "approve")]
        base = f"{urlsplit(authorization_url).scheme}://{urlsplit(authorization_url).netloc}"
        approved = await browser.post(
            f"{base}/oauth/authorize",
            content=urlencode(fields),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        if approved.status_code != 303:
            raise SystemExit(f"approval answered {approved.status_code}: {approved.text}")
        returned.put_nowait(dict(parse_qsl(urlsplit(approved.headers["location"]).query)))

    async def callback_handler():
        back = await returned.get()
        return AuthorizationCodeResult(code=back["code"], state=back.get("state"), iss=back.get("iss"))

    storage = Memory()
    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="Python SDK",
            redirect_uris=[REDIRECT],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )
    http = httpx2.AsyncClient(auth=provider, timeout=httpx2.Timeout(30, read=300))
    async with browser, http, Client(streamable_http_client(url, http_client=http), cache=None) as client:
        listed = await client.list_tools()
        say(
            step="signed-in",
            tools=sorted(t.name for t in listed.tools),
            listed=result(await client.call_tool("listFiles", {"path": "manifests"})),
            write=result(await client.call_tool("writeFile", {"path": "x.md", "content": "x"})),
            scope=storage.tokens.scope if storage.tokens else None,
            client=storage.client.client_id if storage.client else None,
        )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
