"""bridge.mcp.server over real HTTP, with a stand-in application (no router, no store).

The agent is passed in a test header in place of the signature check that fronts `/mcp`
in the bridge, so these tests see only the protocol: statuses, codes, sessions, streams,
pushes and requestState, for all three eras.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bridge.mcp import (
    InputRequired,
    McpEndpoint,
    Session,
    SessionTable,
    StateSealer,
    ToolCall,
    ToolError,
    ToolSpec,
)
from bridge.mcp.protocol import META_CLIENT_CAPABILITIES, META_PROTOCOL_VERSION, META_SERVER_INFO

MODERN = "2026-07-28"
JSON = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


class App:
    """Tools: `echo` returns its arguments, `boom` fails, `fail` refuses, `hold` waits,
    `elicit` asks the caller for input (2026-07-28) and reports what came back."""

    specs: ClassVar[list[ToolSpec]] = [
        ToolSpec(n, f"{n} tool", {"type": "object"})
        for n in ("echo", "boom", "fail", "hold", "elicit")
    ]

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.sessions: dict[str, Session] = {}
        self.held = asyncio.Event()

    async def call(self, call: ToolCall) -> dict[str, Any] | InputRequired:
        if call.name == "echo":
            return {"agent": call.agent, "args": call.arguments, "modern": call.modern}
        if call.name == "fail":
            raise ToolError("fail: refused on purpose")
        if call.name == "hold":
            self.held.set()
            await asyncio.sleep(3600)
        if call.name == "elicit":
            if call.state is None:
                return InputRequired(
                    {"q1": {"method": "elicitation/create", "params": {"message": "?"}}},
                    {"asked": ["q1"]},
                )
            return {"state": call.state, "responses": call.input_responses}
        raise RuntimeError("secret internals")

    async def session_opened(self, session: Session) -> None:
        self.sessions[session.id] = session
        self.events.append(("opened", session.id))

    async def session_closed(self, session: Session, reason: str) -> None:
        self.events.append(("closed", reason))

    def stream_opened(self, session: Session) -> None:
        self.events.append(("stream", session.id))

    async def stream_closed(self, session: Session, *, client_gone: bool) -> None:
        self.events.append(("stream_closed", client_gone))

    async def refused(self, agent: str, reason: str, detail: str) -> None:
        self.events.append(("refused", reason))

    def protocol_error(self, code: int) -> None:
        self.events.append(("error", code))


@pytest.fixture
async def served() -> AsyncIterator[tuple[TestClient, App, McpEndpoint]]:
    app_ = App()
    endpoint = McpEndpoint(
        app_,
        app_,
        SessionTable(per_agent=2, total=10),
        StateSealer(b"k" * 32),
        server_name="test",
        server_version="1",
        instructions="hi",
    )

    async def handle(request: web.Request) -> web.StreamResponse:
        return await endpoint.handle(request, request.headers.get("X-Agent", "alice"))

    web_app = web.Application()
    web_app.router.add_route("*", "/mcp", handle)
    client = TestClient(TestServer(web_app))
    await client.start_server()
    endpoint.start()
    try:
        yield client, app_, endpoint
    finally:
        await endpoint.close()
        await client.close()


def rpc(method: str, params: dict[str, Any] | None = None, id_: Any = 1) -> str:
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if id_ is not None:
        body["id"] = id_
    if params is not None:
        body["params"] = params
    return json.dumps(body)


async def initialize(
    client: TestClient, agent: str = "alice", version: str = "2025-11-25", caps: Any = None
) -> str:
    r = await client.post(
        "/mcp",
        data=rpc(
            "initialize",
            {"protocolVersion": version, "capabilities": caps or {}, "clientInfo": {"name": "t"}},
        ),
        headers={**JSON, "X-Agent": agent},
    )
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["result"]["protocolVersion"] == version
    sid = r.headers["Mcp-Session-Id"]
    assert sid.isascii() and sid.isprintable() and len(sid) >= 24
    await client.post(
        "/mcp",
        data=rpc("notifications/initialized", id_=None),
        headers={**JSON, "X-Agent": agent, "Mcp-Session-Id": sid},
    )
    return sid


async def post(client: TestClient, body: str, **headers: str) -> tuple[int, Any]:
    r = await client.post("/mcp", data=body, headers={**JSON, **headers})
    text = await r.text()
    return r.status, json.loads(text) if text else None


def modern(method: str, **params: Any) -> tuple[str, dict[str, str]]:
    meta = {META_PROTOCOL_VERSION: MODERN, META_CLIENT_CAPABILITIES: {}}
    headers = {"MCP-Protocol-Version": MODERN, "Mcp-Method": method}
    if method in ("tools/call", "prompts/get"):
        headers["Mcp-Name"] = params["name"]
    return rpc(method, {**params, "_meta": meta}), headers


# -- 2025 eras -----------------------------------------------------------------------------


async def test_session_lifecycle(served: Any) -> None:
    client, app_, _ = served
    sid = await initialize(client)
    h = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
    assert await post(client, rpc("ping", id_=2), **h) == (
        200,
        {"jsonrpc": "2.0", "id": 2, "result": {}},
    )
    status, listed = await post(client, rpc("tools/list", id_=3), **h)
    assert [t["name"] for t in listed["result"]["tools"]] == [s.name for s in App.specs]
    status, called = await post(
        client, rpc("tools/call", {"name": "echo", "arguments": {"x": 1}}, 4), **h
    )
    result = called["result"]
    assert result["structuredContent"] == {"agent": "alice", "args": {"x": 1}, "modern": False}
    assert json.loads(result["content"][0]["text"]) == result["structuredContent"]
    r = await client.delete("/mcp", headers=h)
    assert r.status == 200
    status, gone = await post(client, rpc("ping", id_=5), **h)
    assert status == 404 and gone["error"]["code"] == -32001
    assert ("closed", "deleted") in app_.events


async def test_version_negotiation_and_mismatch(served: Any) -> None:
    client, _, _ = served
    sid = await initialize(client, version="2025-06-18")
    status, body = await post(
        client, rpc("ping"), **{"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2099-01-01"}
    )
    assert status == 400 and body["error"]["code"] == -32022
    r = await client.post(
        "/mcp",
        data=rpc("initialize", {"protocolVersion": "2024-11-05", "capabilities": {}}),
        headers=JSON,
    )
    assert (await r.json())["result"]["protocolVersion"] == "2025-11-25"


async def test_tool_errors_are_results_and_never_tracebacks(served: Any) -> None:
    client, _, _ = served
    h = {"Mcp-Session-Id": await initialize(client)}
    _, refused = await post(client, rpc("tools/call", {"name": "fail"}), **h)
    assert (
        refused["result"]["isError"]
        and "refused on purpose" in refused["result"]["content"][0]["text"]
    )
    _, crashed = await post(client, rpc("tools/call", {"name": "boom"}, 2), **h)
    text = crashed["result"]["content"][0]["text"]
    assert crashed["result"]["isError"] and "secret internals" not in text and "ref" in text
    status, unknown = await post(client, rpc("tools/call", {"name": "nope"}, 3), **h)
    assert status == 200 and unknown["result"]["isError"]  # as the official SDK answers
    assert "Unknown tool: nope" in unknown["result"]["content"][0]["text"]
    status, bad = await post(client, rpc("tools/call", {"name": "echo", "arguments": [1]}, 4), **h)
    assert bad["error"]["code"] == -32602
    status, missing = await post(client, rpc("completion/complete", id_=5), **h)
    assert status == 404 and missing["error"]["code"] == -32601


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        ("{", {}, 400, -32700),
        ('[{"jsonrpc":"2.0","id":1,"method":"ping"}]', {}, 400, -32600),
        (rpc("ping"), {}, 400, -32600),  # no session and not initialize
        (rpc("ping"), {"Mcp-Session-Id": "nope"}, 404, -32001),
        (rpc("ping"), {"Accept": "text/html"}, 406, -32600),
        (rpc("ping"), {"Content-Type": "text/plain"}, 415, -32600),
    ],
)
async def test_http_level_refusals(
    served: Any, body: str, headers: dict[str, str], status: int, code: int
) -> None:
    client, app_, _ = served
    got_status, got = await post(client, body, **headers)
    assert (got_status, got["error"]["code"]) == (status, code)
    assert got["error"]["message"]
    assert ("error", code) in app_.events


async def test_sessions_belong_to_their_agent(served: Any) -> None:
    client, _, _ = served
    sid = await initialize(client, agent="alice")
    status, _body = await post(client, rpc("ping"), **{"Mcp-Session-Id": sid, "X-Agent": "mallory"})
    assert status == 404  # indistinguishable from an unknown session


async def test_per_agent_session_cap(served: Any) -> None:
    client, _, _ = served
    await initialize(client, agent="greedy")
    await initialize(client, agent="greedy")
    r = await client.post(
        "/mcp",
        data=rpc("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}}),
        headers={**JSON, "X-Agent": "greedy"},
    )
    assert r.status == 429 and "2 sessions" in (await r.json())["error"]["message"]
    await initialize(client, agent="other")  # others are not locked out


async def test_duplicate_in_flight_id_and_cancel(served: Any) -> None:
    client, app_, _ = served
    h = {**JSON, "Mcp-Session-Id": await initialize(client)}
    holding = asyncio.ensure_future(
        client.post("/mcp", data=rpc("tools/call", {"name": "hold"}, 9), headers=h)
    )
    await asyncio.wait_for(app_.held.wait(), 5)
    status, dup = await post(client, rpc("tools/call", {"name": "echo"}, 9), **h)
    assert status == 400 and "already in flight" in dup["error"]["message"]
    status, _ = await post(client, rpc("notifications/cancelled", {"requestId": 9}, None), **h)
    assert status == 202
    r = await asyncio.wait_for(holding, 5)
    assert (await r.json())["error"]["code"] == -32800


async def read_event(stream: Any) -> dict[str, Any]:
    while True:
        line = (await stream.content.readline()).decode()
        if line.startswith("data: "):
            return json.loads(line[6:])


async def test_get_stream_push_and_answer(served: Any) -> None:
    client, app_, _endpoint = served
    sid = await initialize(client, caps={"elicitation": {}})
    h = {**JSON, "Mcp-Session-Id": sid}
    stream = await client.get("/mcp", headers=h)
    assert stream.status == 200 and stream.headers["Content-Type"] == "text/event-stream"
    second = await client.get("/mcp", headers=h)
    assert second.status == 409
    session = app_.sessions[sid]
    assert session.elicitation
    asking = asyncio.ensure_future(session.elicit_form("why?", {"type": "object"}))
    pushed = await asyncio.wait_for(read_event(stream), 5)
    assert pushed["method"] == "elicitation/create"
    assert pushed["params"] == {
        "message": "why?",
        "requestedSchema": {"type": "object"},
        "mode": "form",
    }
    answer = {
        "jsonrpc": "2.0",
        "id": pushed["id"],
        "result": {"action": "accept", "content": {"a": 1}},
    }
    assert (await post(client, json.dumps(answer), **h))[0] == 202
    outcome = await asyncio.wait_for(asking, 5)
    assert (outcome.action, outcome.content) == ("accept", {"a": 1})
    stream.close()


async def test_lost_stream_fails_pushes_and_delete_reads_as_gone(served: Any) -> None:
    from bridge.mcp import PushFailed

    client, app_, _ = served
    sid = await initialize(client, caps={"elicitation": {}})
    h = {**JSON, "Mcp-Session-Id": sid}
    stream = await client.get("/mcp", headers=h)
    session = app_.sessions[sid]
    asking = asyncio.ensure_future(session.elicit_form("q", {}))
    await read_event(stream)
    await client.delete("/mcp", headers=h)
    with pytest.raises(PushFailed) as failed:
        await asyncio.wait_for(asking, 5)
    assert failed.value.gone
    stream.close()


# -- 2026-07-28 ----------------------------------------------------------------------------


async def test_modern_discover_and_list(served: Any) -> None:
    client, _, _ = served
    body, headers = modern("server/discover")
    status, found = await post(client, body, **headers)
    result = found["result"]
    assert status == 200 and "2026-07-28" in result["supportedVersions"]
    assert (
        result["resultType"] == "complete" and result["_meta"][META_SERVER_INFO]["name"] == "test"
    )
    body, headers = modern("tools/list")
    _, listed = await post(client, body, **headers)
    assert listed["result"]["ttlMs"] > 0 and listed["result"]["cacheScope"] in ("public", "private")


@pytest.mark.parametrize("method", ["initialize", "ping", "logging/setLevel", "nope/nope"])
async def test_modern_removed_and_unknown_methods(served: Any, method: str) -> None:
    client, _, _ = served
    body, headers = modern(method)
    status, got = await post(client, body, **headers)
    assert (status, got["error"]["code"]) == (404, -32601)


async def test_modern_get_and_delete_are_405(served: Any) -> None:
    client, _, _ = served
    for method in ("GET", "DELETE"):
        r = await client.request(method, "/mcp", headers={"MCP-Protocol-Version": MODERN})
        assert r.status == 405 and "POST" in r.headers["Allow"]


async def test_modern_header_and_version_errors(served: Any) -> None:
    client, _, _ = served
    body, headers = modern("tools/call", name="echo")
    status, got = await post(client, body, **{**headers, "Mcp-Name": "other"})
    assert (status, got["error"]["code"]) == (400, -32020)
    status, got = await post(
        client,
        rpc("tools/list", {}),
        **{"MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/list"},
    )
    assert (status, got["error"]["code"]) == (400, -32602)
    body, headers = modern("tools/list")
    body = body.replace(MODERN, "2099-01-01")
    status, got = await post(client, body, **{**headers, "MCP-Protocol-Version": "2099-01-01"})
    assert (status, got["error"]["code"]) == (400, -32022)
    assert "2026-07-28" in got["error"]["data"]["supported"]


async def test_input_required_state_is_single_use(served: Any) -> None:
    client, app_, _ = served
    body, headers = modern("tools/call", name="elicit", arguments={"n": 1})
    _, first = await post(client, body, **headers)
    result = first["result"]
    assert result["resultType"] == "input_required" and set(result["inputRequests"]) == {"q1"}
    state = result["requestState"]
    retry = json.loads(body)
    retry["params"]["requestState"] = state
    retry["params"]["inputResponses"] = {"q1": {"action": "accept", "content": {"a": 1}}}
    _, done = await post(client, json.dumps(retry), **headers)
    assert done["result"]["structuredContent"]["state"] == {"asked": ["q1"]}
    assert done["result"]["resultType"] == "complete"
    status, again = await post(client, json.dumps(retry), **headers)
    assert (status, again["error"]["code"]) == (400, -32602)
    assert "replayed" in again["error"]["message"]
    # another agent, or a forged state: refused and reported
    _, fresh = await post(client, body, **headers)
    retry["params"]["requestState"] = fresh["result"]["requestState"]
    status, foreign = await post(client, json.dumps(retry), **{**headers, "X-Agent": "mallory"})
    assert "foreign" in foreign["error"]["message"]
    retry["params"]["requestState"] = "lh1.AAAA"
    status, forged = await post(client, json.dumps(retry), **headers)
    assert "malformed" in forged["error"]["message"]
    assert [e for e in app_.events if e[0] == "refused"] == [
        ("refused", "request_state_replayed"),
        ("refused", "request_state_foreign"),
        ("refused", "request_state_malformed"),
    ]


async def test_modern_input_responses_need_state(served: Any) -> None:
    client, _, _ = served
    body, headers = modern("tools/call", name="elicit", inputResponses={"q1": {"action": "accept"}})
    status, got = await post(client, body, **headers)
    assert (status, got["error"]["code"]) == (400, -32602)


async def test_modern_notification_is_accepted(served: Any) -> None:
    client, _, _ = served
    status, _ = await post(
        client,
        rpc("notifications/cancelled", {"requestId": 1}, None),
        **{"MCP-Protocol-Version": MODERN},
    )
    assert status == 202


async def test_empty_prompt_and_resource_listings_in_both_eras(served: Any) -> None:
    client, _, _ = served
    h = {"Mcp-Session-Id": await initialize(client)}
    for method, key in [
        ("prompts/list", "prompts"),
        ("resources/list", "resources"),
        ("resources/templates/list", "resourceTemplates"),
    ]:
        status, got = await post(client, rpc(method, id_=2), **h)
        assert (status, got["result"]) == (200, {key: []})
        body, headers = modern(method)
        _, got = await post(client, body, **headers)
        assert got["result"][key] == [] and got["result"]["ttlMs"] >= 0
    status, missing = await post(client, rpc("resources/read", {"uri": "x://y"}, 3), **h)
    assert (status, missing["error"]["code"]) == (400, -32602)
    assert missing["error"]["data"] == {"uri": "x://y"}
    body, headers = modern("prompts/get", name="nope")
    status, missing = await post(client, body, **headers)
    assert (status, missing["error"]["code"]) == (400, -32602)


async def test_modern_listen_stream_acknowledges_then_ends_with_the_bridge(served: Any) -> None:
    client, _, endpoint = served
    body, headers = modern("subscriptions/listen", notifications={"toolsListChanged": True, "x": 1})
    stream = await client.post("/mcp", data=body, headers={**JSON, **headers})
    assert stream.status == 200 and stream.headers["Content-Type"] == "text/event-stream"
    ack = await asyncio.wait_for(read_event(stream), 5)
    assert ack["method"] == "notifications/subscriptions/acknowledged"
    assert ack["params"]["notifications"] == {"toolsListChanged": True}
    assert ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == 1
    endpoint.end_streams()
    final = await asyncio.wait_for(read_event(stream), 5)
    assert final["id"] == 1 and final["result"]["resultType"] == "complete"
