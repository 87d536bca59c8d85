"""The signing proxy in front of a stand-in upstream that verifies with our verifier:
requests arrive signed, headers pass untouched except a Host/Origin naming the proxy,
and an SSE stream reaches the client event by event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from security import InMemoryNonceStore, RequestView, SignatureVerifier, Verified, generate_secret
from security.keys import decode_secret
from tests.judges.signing_proxy import SigningProxy

pytestmark = pytest.mark.judges

KEY_ID = "k_00000000000000aa"
SECRET = generate_secret()


class Upstream:
    """Records what reached it and whether the signature verified."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.release = asyncio.Event()
        self.verifier = SignatureVerifier(
            lambda key_id: ("judge", decode_secret(SECRET)) if key_id == KEY_ID else None,
            InMemoryNonceStore(window=600),
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        view = RequestView(
            request.method,
            request.rel_url.raw_path,
            request.rel_url.raw_query_string,
            request.headers,
            body,
        )
        verdict = await self.verifier.verify(view)
        self.seen.append(
            {
                "verified": isinstance(verdict, Verified),
                "headers": dict(request.headers),
                "body": body,
                "query": request.rel_url.raw_query_string,
            }
        )
        if request.path == "/sse":
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b"data: first\n\n")
            await self.release.wait()  # the second event only after the client saw the first
            await response.write(b"data: second\n\n")
            await response.write_eof()
            return response
        return web.json_response(
            {"ok": True}, status=202, headers={"Mcp-Session-Id": "s-123", "X-Up": "1"}
        )


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, str]]:
    up = Upstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", up.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield up, f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def proxy(upstream: tuple[Upstream, str]) -> AsyncIterator[SigningProxy]:
    async with SigningProxy(upstream[1], KEY_ID, SECRET) as p:
        yield p


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def test_requests_arrive_signed_with_headers_untouched(
    upstream: tuple[Upstream, str], proxy: SigningProxy
) -> None:
    up, up_url = upstream
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            proxy.mcp_url + "?a=1",
            data=b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
            headers={
                "Mcp-Session-Id": "s-123",
                "MCP-Protocol-Version": "2025-11-25",
                "Mcp-Method": "ping",
                "Origin": f"http://localhost:{proxy.port}",
                "Signature": "lh=:forged:",
            },
        ) as r,
    ):
        assert r.status == 202
        assert r.headers["Mcp-Session-Id"] == "s-123" and r.headers["X-Up"] == "1"
        assert await r.json() == {"ok": True}
    [seen] = up.seen
    assert seen["verified"] is True  # the session id is covered: it is in the signature
    assert seen["query"] == "a=1" and seen["body"].startswith(b'{"jsonrpc"')
    headers = seen["headers"]
    assert headers["Host"] == f"127.0.0.1:{_port(up_url)}"
    assert headers["Origin"] == f"http://localhost:{_port(up_url)}"
    assert headers["Mcp-Session-Id"] == "s-123"
    assert headers["MCP-Protocol-Version"] == "2025-11-25" and headers["Mcp-Method"] == "ping"
    assert "mcp-session-id" in headers["Signature-Input"]


async def test_foreign_host_and_origin_pass_unchanged(
    upstream: tuple[Upstream, str], proxy: SigningProxy
) -> None:
    up, _ = upstream
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            proxy.mcp_url,
            headers={"Host": "evil.example:80", "Origin": "http://evil.example"},
        ) as r,
    ):
        assert r.status == 202
    headers = up.seen[0]["headers"]
    assert headers["Host"] == "evil.example:80" and headers["Origin"] == "http://evil.example"
    assert up.seen[0]["verified"] is True  # a GET: no body, no digest, still signed


async def test_sse_streams_event_by_event(
    upstream: tuple[Upstream, str], proxy: SigningProxy
) -> None:
    up, _ = upstream
    async with aiohttp.ClientSession() as http, http.get(proxy.url + "/sse") as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        # If the proxy buffered, this read would wait for the end of the stream, which
        # only comes after `release` below: the wait_for would time out.
        first = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 5)
        assert first == b"data: first\n\n"
        up.release.set()
        rest = await asyncio.wait_for(r.content.read(), 5)
    assert rest == b"data: second\n\n"


async def test_bridge_down_is_a_502() -> None:
    dead = SigningProxy("http://127.0.0.1:9", KEY_ID, SECRET)
    async with dead, aiohttp.ClientSession() as http, http.get(dead.mcp_url) as r:
        assert r.status == 502
        assert (await r.json())["error"] == "bad_gateway"
