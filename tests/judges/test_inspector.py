"""The MCP Inspector CLI (`@modelcontextprotocol/inspector` 2.12.0, pinned in js/) calls
our tools through the signing proxy, in both protocol eras: `--protocol-era legacy`
(initialize + session, 2025-11-25) and `--protocol-era modern` (2026-07-28 single
exchange). The proxy signs as `judge`; what the Inspector sends must reach the tools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.harness import BridgeProcess, read_events
from tests.judges.node import INSPECTOR_BIN, run_node
from tests.judges.signing_proxy import SigningProxy

pytestmark = pytest.mark.judges


async def _inspect(proxy: SigningProxy, home: Path, era: str, *args: str) -> tuple[int, Any]:
    done = await run_node(
        INSPECTOR_BIN,
        "--cli",
        "--protocol-era",
        era,
        "--server-url",
        proxy.mcp_url,
        "--transport",
        "http",
        "--format",
        "json",
        *args,
        home=home,
        timeout=90,
    )
    try:
        return done.code, json.loads(done.stdout or done.stderr)
    except ValueError:
        raise AssertionError(f"inspector said: {done.stdout}\n{done.stderr}") from None


@pytest.mark.parametrize(("era", "wire"), [("legacy", "2025-11-25"), ("modern", "2026-07-28")])
async def test_inspector_calls_our_tools(
    bridge: BridgeProcess, proxy: SigningProxy, home: Path, era: str, wire: str
) -> None:
    code, listed = await _inspect(proxy, home, era, "--method", "tools/list")
    assert code == 0, listed
    tools = {t["name"]: t for t in listed["result"]["tools"]}
    assert sorted(tools) == [
        "ask",
        "get_request",
        "list_agents",
        "respond",
        "send_message",
        "wait_for_messages",
    ]
    assert all(t["description"] and t["inputSchema"]["type"] == "object" for t in tools.values())

    code, agents = await _inspect(
        proxy, home, era, "--method", "tools/call", "--tool-name", "list_agents"
    )
    assert code == 0 and agents["result"]["isError"] is False, agents
    names = [a["name"] for a in agents["result"]["structuredContent"]["agents"]]
    assert names == ["alice", "bob", "judge"]

    text = f"hello from the inspector ({era})"
    code, sent = await _inspect(
        proxy,
        home,
        era,
        "--method",
        "tools/call",
        "--tool-name",
        "send_message",
        "--tool-args-json",
        json.dumps({"to": "alice", "content": text}),
    )
    assert code == 0 and sent["result"]["isError"] is False, sent
    message_id = sent["result"]["structuredContent"]["message_id"]

    # A refused call is an error result, and the Inspector says so with its exit code.
    code, refused = await _inspect(
        proxy,
        home,
        era,
        "--method",
        "tools/call",
        "--tool-name",
        "send_message",
        "--tool-args-json",
        json.dumps({"to": "nobody", "content": "x"}),
    )
    assert code != 0 and "nobody" in json.dumps(refused)

    # The message is in the log as sent by the signing agent, and alice receives it.
    [event] = [
        e
        for e in await read_events(bridge.db, ["MessageSent"])
        if e.data["message_id"] == message_id
    ]
    assert event.actor == "judge" and event.data["to"] == "alice"
    async with bridge.client("alice") as alice:
        got = await alice.call_tool("wait_for_messages", {"timeout_s": 5})
    [message] = got.structured_content["messages"]
    assert message["from"] == "judge" and message["content"] == text

    # The Inspector spoke the era it was asked for.
    rpc = [r for r in proxy.log if r.method == "POST"]
    assert all(r.status < 400 for r in rpc), [(r.rpc_method, r.status) for r in rpc]
    versions = {r.protocol_version for r in rpc if r.rpc_method != "initialize"}
    assert versions == {wire}
    assert any(r.rpc_method == "initialize" for r in rpc) is (era == "legacy")
