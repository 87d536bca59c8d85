"""bridge.asgi: the MCP SDK hosted in a real aiohttp server through our ASGI adapter."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
from aiohttp import ClientSession, web
from mcp.client import Client, ClientRequestContext
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver import Context, MCPServer, RequestStateSecurity
from mcp.server.session import ServerSession
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import (
    CallToolResult,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitRequestParams,
    ElicitResult,
    InputRequiredResult,
    TextContent,
)

from bridge.asgi import asgi_handler, lifespan_cleanup_ctx, run_in_cleanup_ctx

AGENT = web.RequestKey("agent", str)
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
NO_REBINDING_CHECK = TransportSecuritySettings(enable_dns_rebinding_protection=False)


def build_mcp() -> tuple[MCPServer, dict[str, ServerSession]]:
    """Tools: `whoami`, `ask` (push elicitation to another agent's session), `nap`, `question`."""
    sessions: dict[str, ServerSession] = {}
    mcp = MCPServer(
        "asgi-test",
        request_state_security=RequestStateSecurity(
            keys=[b"k" * 32],
            bind_principal=lambda rc: rc.request.scope.get("test.agent") if rc.request else None,
        ),
    )

    @mcp.tool()
    async def whoami(ctx: Context) -> dict[str, Any]:
        agent = ctx.request_context.request.scope["test.agent"]
        if ctx.protocol_version != "2026-07-28":
            sessions[agent] = ctx.session
        return {"agent": agent, "session_id": (ctx.headers or {}).get("mcp-session-id")}

    @mcp.tool()
    async def ask(to: str, message: str) -> dict[str, Any]:
        async with asyncio.timeout(10):
            res = await sessions[to].elicit_form(message, SCHEMA)  # B's standalone GET stream
        return {"action": res.action, "content": res.content}

    @mcp.tool()
    async def nap(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "rested"

    @mcp.tool()
    async def question(ctx: Context, prompt: str) -> CallToolResult | InputRequiredResult:
        """2026-07-28: return input_required with a schema only known at run time."""
        if ctx.input_responses and ctx.request_state == "q1":
            answer = ctx.input_responses["q1"]
            assert isinstance(answer, ElicitResult)
            return CallToolResult(
                content=[TextContent(type="text", text=str((answer.content or {})["answer"]))]
            )
        req = ElicitRequest(params=ElicitRequestFormParams(message=prompt, requested_schema=SCHEMA))
        return InputRequiredResult(input_requests={"q1": req}, request_state="q1")

    return mcp, sessions


@dataclass
class Served:
    url: str
    app: web.Application
    runner: web.AppRunner


async def serve(app: web.Application) -> Served:
    runner = web.AppRunner(app, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return Served(f"http://{host}:{port}/mcp", app, runner)


def mcp_app(mcp: MCPServer, *, via_starlette: bool = False) -> web.Application:
    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        request[AGENT] = request.headers.get("x-agent", "anon")  # stands in for signature checks
        return await handler(request)

    def extras(request: web.Request) -> dict[str, Any]:
        agent = request[AGENT]
        return {
            "test.agent": agent,
            "user": AuthenticatedUser(AccessToken(token="-", client_id=agent, scopes=[])),
        }

    app = web.Application(middlewares=[auth])
    starlette_app = mcp.streamable_http_app(transport_security=NO_REBINDING_CHECK)
    if (
        via_starlette
    ):  # the whole Starlette app, its lifespan run through the ASGI lifespan protocol
        handler = asgi_handler(starlette_app, scope_extras=extras)
        app.cleanup_ctx.append(lifespan_cleanup_ctx(starlette_app))
    else:  # the session manager directly (what the bridge does)
        handler = asgi_handler(mcp.session_manager.handle_request, scope_extras=extras)
        app.cleanup_ctx.append(run_in_cleanup_ctx(mcp.session_manager.run))
    app.router.add_route("*", "/mcp", handler.handle)
    app.on_shutdown.append(handler.on_shutdown)
    return app


@pytest.fixture
async def served() -> AsyncIterator[tuple[Served, dict[str, ServerSession]]]:
    mcp, sessions = build_mcp()
    s = await serve(mcp_app(mcp))
    try:
        yield s, sessions
    finally:
        await s.runner.cleanup()


class Seen(httpx2.Auth):
    """An httpx2 auth hook: sees (and could sign) every request the SDK client sends."""

    def __init__(self, agent: str) -> None:
        self.agent = agent
        self.requests: list[tuple[str, str | None]] = []

    def auth_flow(self, request: httpx2.Request):  # type: ignore[override]
        request.headers["X-Agent"] = self.agent
        self.requests.append((request.method, request.headers.get("mcp-session-id")))
        yield request


def client(url: str, agent: str, mode: str, **kw: Any) -> tuple[Client, Seen]:
    seen = Seen(agent)
    http = httpx2.AsyncClient(auth=seen, timeout=httpx2.Timeout(30, read=60))
    return Client(streamable_http_client(url, http_client=http), mode=mode, **kw), seen


async def answer(context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
    return ElicitResult(action="accept", content={"answer": f"re: {params.message}"})


async def test_legacy_session_tools_and_pushed_elicitation(
    served: tuple[Served, dict[str, ServerSession]],
) -> None:
    s, _ = served
    bob, bob_seen = client(s.url, "bob", "legacy", elicitation_callback=answer)
    alice, _ = client(s.url, "alice", "legacy")
    async with bob, alice:
        names = {t.name for t in (await alice.list_tools()).tools}
        assert {"whoami", "ask", "nap", "question"} <= names
        me = (await bob.call_tool("whoami", {})).structured_content
        assert me is not None and me["agent"] == "bob" and me["session_id"]
        await alice.call_tool("whoami", {})
        res = await alice.call_tool("ask", {"to": "bob", "message": "6*7?"})
        assert res.structured_content == {"action": "accept", "content": {"answer": "re: 6*7?"}}
    methods = [m for m, _ in bob_seen.requests]
    assert methods[0] == "POST" and "GET" in methods and methods[-1] == "DELETE"
    assert all(sid == me["session_id"] for _, sid in bob_seen.requests[1:])


async def test_session_bound_to_agent(served: tuple[Served, dict[str, ServerSession]]) -> None:
    s, _ = served
    alice, _ = client(s.url, "alice", "legacy")
    async with alice:
        sid = (await alice.call_tool("whoami", {})).structured_content["session_id"]  # type: ignore[index]
        headers = {
            "mcp-session-id": sid,
            "mcp-protocol-version": "2025-11-25",
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
        }
        body = b'{"jsonrpc":"2.0","id":7,"method":"tools/list"}'
        async with httpx2.AsyncClient() as h:
            assert (
                await h.post(s.url, headers={**headers, "x-agent": "mallory"}, content=body)
            ).status_code == 404
            ok = await h.post(s.url, headers={**headers, "x-agent": "alice"}, content=body)
            assert ok.status_code == 200 and '"id":7' in ok.text


async def test_idle_streams_do_not_spin(served: tuple[Served, dict[str, ServerSession]]) -> None:
    """Open GET SSE stream + a pending legacy SSE POST + a pending 2026-07-28 call: ~no CPU."""
    s, _ = served
    legacy, _ = client(s.url, "bob", "legacy", elicitation_callback=answer)
    modern, _ = client(s.url, "carol", "2026-07-28")
    async with legacy, modern:
        await legacy.call_tool("whoami", {})
        pending = [
            asyncio.create_task(legacy.call_tool("nap", {"seconds": 2.0})),
            asyncio.create_task(modern.call_tool("nap", {"seconds": 2.0})),
        ]
        await asyncio.sleep(0.4)  # let requests and streams settle
        cpu0 = time.process_time()
        await asyncio.sleep(1.0)
        cpu = time.process_time() - cpu0
        assert cpu < 0.3, f"server spun: {cpu:.2f}s CPU in 1s idle"
        for task in pending:
            assert [c.text for c in (await task).content] == ["rested"]  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", ["2026-07-28", "auto"])
async def test_modern_client_and_input_required(
    served: tuple[Served, dict[str, ServerSession]], mode: str
) -> None:
    s, _ = served
    carol, seen = client(s.url, "carol", mode, elicitation_callback=answer)
    async with carol:
        assert carol.protocol_version == "2026-07-28"
        assert (await carol.call_tool("whoami", {})).structured_content == {
            "agent": "carol",
            "session_id": None,
        }
        res = await carol.call_tool("question", {"prompt": "why?"})
        assert [c.text for c in res.content] == ["re: why?"]  # type: ignore[union-attr]
    assert all(sid is None for _, sid in seen.requests)


async def test_whole_starlette_app_with_asgi_lifespan() -> None:
    mcp, _ = build_mcp()
    s = await serve(mcp_app(mcp, via_starlette=True))
    try:
        c, _ = client(s.url, "dave", "legacy")
        async with c:
            assert (await c.call_tool("nap", {"seconds": 0})).content[0].text == "rested"  # type: ignore[union-attr]
    finally:
        await s.runner.cleanup()


async def test_raw_asgi_chunked_body_disconnect_and_shutdown() -> None:
    """Body arrives in chunks; receive() blocks after it; a client hang-up and shutdown end it."""
    log: list[Any] = []
    received_disconnect = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        log.append((scope["method"], scope["path"], scope["query_string"], body))
        headers = [
            (b"content-type", b"text/event-stream"),
            (b"x-seen", dict(scope["headers"])[b"x-test"]),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"data: first\n\n", "more_body": True})
        t0 = time.monotonic()
        msg = await receive()  # must block until the client goes away
        log.append((msg["type"], time.monotonic() - t0))
        received_disconnect.set()

    handler = asgi_handler(app, poll_interval=0.1)
    web_app = web.Application()
    web_app.router.add_route("*", "/mcp", handler.handle)
    web_app.on_shutdown.append(handler.on_shutdown)
    s = await serve(web_app)
    try:

        async def chunks() -> AsyncIterator[bytes]:
            for part in (b"he", b"llo ", b"world"):
                yield part
                await asyncio.sleep(0.05)

        async with ClientSession() as http:
            resp = await http.post(s.url + "?a=1%202", data=chunks(), headers={"x-test": "yes"})
            assert resp.status == 200 and resp.headers["x-seen"] == "yes"
            assert await resp.content.readuntil(b"\n\n") == b"data: first\n\n"
            await asyncio.sleep(0.5)
            assert not received_disconnect.is_set()  # still blocked, not returning early
            resp.close()  # hang up
        await asyncio.wait_for(received_disconnect.wait(), 5)
        assert log[0] == ("POST", "/mcp", b"a=1%202", b"hello world")
        assert log[1][0] == "http.disconnect" and log[1][1] >= 0.5

        # shutdown: an open stream is ended by on_shutdown, well before shutdown_timeout
        received_disconnect.clear()
        async with ClientSession() as http:
            resp = await http.post(s.url, data=b"x", headers={"x-test": "1"})
            await resp.content.readuntil(b"\n\n")
            t0 = time.monotonic()
            await s.runner.cleanup()
            assert time.monotonic() - t0 < 3
            assert received_disconnect.is_set()
    finally:
        with contextlib.suppress(Exception):
            await s.runner.cleanup()
