"""Client signers against a real aiohttp server that verifies with our verifier, including
the MCP SDK's ``streamable_http_client`` over an ``httpx2.AsyncClient(auth=LighthouseAuth)``."""

import json

import aiohttp
import httpx2
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from security.client import LighthouseAuth, signing_middleware
from security.nonces import InMemoryNonceStore
from security.signatures import Rejection, RequestView, SignatureVerifier, Verified
from tests.security.conftest import AGENT, KEY_ID, SECRET, keys

SESSION = "sess-7f3a"


class Recorder:
    """A minimal Streamable HTTP endpoint: verifies every request, then plays MCP."""

    def __init__(self) -> None:
        self.verifier = SignatureVerifier(keys, InMemoryNonceStore())
        self.seen: list[tuple[str, str | None, str, Verified | Rejection]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        view = RequestView(
            request.method,
            request.rel_url.raw_path,
            request.rel_url.raw_query_string,
            request.headers,
            body,
        )
        result = await self.verifier.verify(view)
        self.seen.append(
            (
                request.method,
                request.headers.get("Mcp-Session-Id"),
                request.headers.get("Signature-Input", ""),
                result,
            )
        )
        if isinstance(result, Rejection):
            return web.json_response(result.public_body(), status=result.status)
        if request.method == "GET":
            return web.Response(status=405)
        if request.method == "DELETE":
            return web.Response(status=200)
        if request.path != "/mcp":
            return web.json_response(
                {"path": request.path, "query": request.rel_url.raw_query_string}
            )
        message = json.loads(body)
        if "id" not in message:
            return web.Response(status=202)
        if message["method"] == "initialize":
            result_body = {
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "recorder", "version": "0"},
            }
            return web.json_response(
                {"jsonrpc": "2.0", "id": message["id"], "result": result_body},
                headers={"Mcp-Session-Id": SESSION},
            )
        if message["method"] == "tools/list":
            return web.json_response(
                {"jsonrpc": "2.0", "id": message["id"], "result": {"tools": []}}
            )
        return web.json_response(
            {"jsonrpc": "2.0", "id": message["id"], "error": {"code": -32601, "message": "no"}}
        )


@pytest.fixture
async def server():
    recorder = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    srv = TestServer(app, host="127.0.0.1")
    await srv.start_server()
    srv.recorder = recorder
    yield srv
    await srv.close()


async def test_httpx2_auth_signs_posts_and_gets(server):
    base = str(server.make_url(""))
    async with httpx2.AsyncClient(auth=LighthouseAuth(KEY_ID, SECRET)) as client:
        r1 = await client.post(base + "/tools/a%20b", params={"q": "x y"}, content=b"hello")
        r2 = await client.get(base + "/x", headers={"Mcp-Session-Id": "s1"})
        r3 = await client.post(base + "/y", json={"k": 1})
    assert [r.status_code for r in (r1, r2, r3)] == [200, 405, 200]  # GET: no SSE here
    assert r1.json() == {"path": "/tools/a b", "query": "q=x+y"}
    results = [seen[3] for seen in server.recorder.seen]
    assert all(isinstance(r, Verified) and r.agent == AGENT for r in results)
    assert len({r.nonce for r in results}) == 3  # fresh nonce per request
    assert '"mcp-session-id"' in server.recorder.seen[1][2]


async def test_httpx2_auth_with_wrong_secret_gets_401(server):
    async with httpx2.AsyncClient(auth=LighthouseAuth(KEY_ID, b"w" * 32)) as client:
        response = await client.post(str(server.make_url("/mcp")), content=b"{}")
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized", "reason": "invalid_signature"}


async def test_sync_httpx2_auth_flow_signs(server):
    # The sync client path uses auth_flow (run in a thread so the server loop keeps going).
    import asyncio

    def call():
        with httpx2.Client(auth=LighthouseAuth(KEY_ID, SECRET)) as client:
            return client.post(str(server.make_url("/sync")), content=b"abc").status_code

    assert await asyncio.to_thread(call) == 200


async def test_aiohttp_signing_middleware(server):
    async with aiohttp.ClientSession(middlewares=(signing_middleware(KEY_ID, SECRET),)) as s:
        async with s.post(server.make_url("/p?a=1"), data=b"payload") as r1:
            assert r1.status == 200
        async with s.post(server.make_url("/j"), json={"x": [1, 2]}) as r2:
            assert r2.status == 200
        async with s.get(server.make_url("/g"), headers={"Mcp-Session-Id": "abc"}) as r3:
            assert r3.status == 405  # verified, then "no SSE stream"
    results = [seen[3] for seen in server.recorder.seen]
    assert all(isinstance(r, Verified) for r in results), results
    assert '"content-digest"' in server.recorder.seen[0][2]
    assert '"@query"' in server.recorder.seen[0][2]
    assert '"mcp-session-id"' in server.recorder.seen[2][2]


async def test_mcp_sdk_streamable_http_client_is_signed(server):
    auth = LighthouseAuth(KEY_ID, SECRET)
    async with (
        httpx2.AsyncClient(auth=auth) as http,
        streamable_http_client(str(server.make_url("/mcp")), http_client=http) as streams,
    ):
        read, write = streams[0], streams[1]
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            assert init.server_info.name == "recorder"
            tools = await session.list_tools()
            assert tools.tools == []
    seen = server.recorder.seen
    assert seen, "no request reached the server"
    assert all(isinstance(r, Verified) for *_, r in seen), [r for *_, r in seen]
    first, *later = seen
    assert first[1] is None and '"mcp-session-id"' not in first[2]
    # Every request after initialize carries the session id, and the signature covers it.
    assert later
    for _method, session_id, sig_input, _ in later:
        assert session_id == SESSION
        assert '"mcp-session-id"' in sig_input
    assert {m for m, *_ in later} >= {"POST", "DELETE"}
