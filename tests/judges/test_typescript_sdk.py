"""The official TypeScript SDK client (`@modelcontextprotocol/sdk`, pinned in js/) asks
and answers through a real bridge, signing in JavaScript (js/ts_client.mjs): alice asks
bob, who answers by elicitation; alice asks carol, who has no elicitation capability and
answers through wait_for_messages -> respond. Asserted on the results and the events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from security.keys import decode_secret
from security.signatures import sign_request
from tests.harness import SCHEMA, BridgeProcess, read_events
from tests.judges.node import JS_DIR, run_node

pytestmark = pytest.mark.judges

SCRIPT = JS_DIR / "ts_client.mjs"


async def test_js_signer_matches_ours(node: Path, home: Path) -> None:
    """Same inputs, byte-identical headers: the JS signer is our profile, not a lookalike."""
    case = {
        "method": "post",
        "path": "/mcp",
        "query": "a=1&b=%20",
        "session": "3f1c0e",
        "body": '{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
        "key_id": "k_0123456789abcdef",
        "secret": "eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHg",
        "nonce": "n-1",
        "created": 1_700_000_000,
    }
    done = await run_node(SCRIPT, "vector", home=home, timeout=30, stdin=json.dumps(case).encode())
    assert done.code == 0, done.stderr
    ours = sign_request(
        "POST",
        case["path"],
        case["query"],
        {"Mcp-Session-Id": case["session"]},
        case["body"].encode(),
        case["key_id"],
        decode_secret(case["secret"]),
        nonce=case["nonce"],
        created=case["created"],
    )
    assert json.loads(done.stdout) == ours


async def _request_events(bridge: BridgeProcess, request_id: str) -> list[Any]:
    return [r for r in await read_events(bridge.db) if r.stream == f"request-{request_id}"]


async def test_typescript_sdk_asks_and_answers(
    bridge: BridgeProcess, node: Path, home: Path
) -> None:
    bridge.add_agent("carol")
    agents = {name: {"key_id": a.key_id, "secret": a.secret} for name, a in bridge.agents.items()}
    payload = json.dumps({"url": bridge.mcp_url, "agents": agents}).encode()
    done = await run_node(SCRIPT, "run", home=home, timeout=120, stdin=payload)
    assert done.code == 0, f"ts client failed:\n{done.stderr[-3000:]}"
    out = json.loads(done.stdout)

    assert out["tools"] == [
        "ask",
        "get_request",
        "list_agents",
        "respond",
        "send_message",
        "wait_for_messages",
    ]
    assert out["protocol"] == "2025-11-25"

    # Elicitation: bob's handler saw the question and the schema, alice got his answer.
    elicited = out["elicitation"]
    [params] = elicited["seen"]
    assert params["message"] == "meaning of life?" and params["requestedSchema"] == SCHEMA
    result = elicited["result"]
    assert result["isError"] is False
    answer = result["structuredContent"]
    assert answer["status"] == "accepted" and answer["path"] == "elicitation"
    assert answer["content"] == {"answer": "42 from typescript"}
    events = await _request_events(bridge, answer["request_id"])
    assert [e.type for e in events] == [
        "RequestCreated",
        "RequestRouted",
        "RequestDelivered",
        "RequestAnswered",
    ]
    assert events[0].actor == "alice" and events[-1].actor == "bob"
    assert events[-1].data["content"] == {"answer": "42 from typescript"}

    # Legacy: carol took the request from her mailbox and answered with respond.
    legacy = out["legacy"]
    [item] = [m for m in legacy["waited"]["messages"] if m["kind"] == "request"]
    assert item["from"] == "alice" and item["schema"] == SCHEMA
    assert legacy["responded"]["structuredContent"]["status"] == "accepted"
    assert legacy["result"]["structuredContent"] == {
        "request_id": item["request_id"],
        "status": "accepted",
        "content": {"answer": "blue"},
        "path": "legacy",
    }
    events = await _request_events(bridge, item["request_id"])
    assert [e.type for e in events] == [
        "RequestCreated",
        "RequestFellBack",
        "RequestDelivered",
        "RequestAnswered",
    ]
    assert events[1].data["cause"] == "no_capability" and events[-1].actor == "carol"

    # Every session the TS client opened was its own agent's, and DELETE closed them.
    opened = await read_events(bridge.db, ["SessionOpened"])
    closed = await read_events(bridge.db, ["SessionClosed"])
    assert sorted(e.actor for e in opened) == ["alice", "bob", "carol"]
    assert len(closed) == 3
    rejected = await read_events(bridge.db, ["AuthRejected"])
    assert rejected == [], [e.data for e in rejected]
    listed = {a["name"]: a for a in out["agents"]["agents"]}
    assert listed["carol"]["online"] is True and listed["alice"]["online"] is True
