"""`lighthouse mcp`, the stdio gateway, end to end.

A real bridge process; the gateway as its own process (`python -m bridge.cli mcp`); the host
is the SDK's stdio client, as an IDE would be. Alice is an ordinary signed HTTP client.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp_types import ElicitResult

from security import generate_secret
from tests.harness import SCHEMA, BridgeProcess, read_events, wait_until


def _credentials(bridge: BridgeProcess, name: str, path: Path, **override: str) -> Path:
    agent = bridge.agents[name]
    data = {"agent": agent.name, "key_id": agent.key_id, "secret": agent.secret, **override}
    path.write_text(json.dumps(data))
    return path


def _gateway_args(bridge: BridgeProcess, credentials: Path, agent: str = "bob") -> list[str]:
    return [
        "-m",
        "bridge.cli",
        "mcp",
        "--agent",
        agent,
        "--url",
        bridge.url,
        "--credentials",
        str(credentials),
    ]


@asynccontextmanager
async def _host(
    bridge: BridgeProcess, tmp_path: Path, **client_kwargs: Any
) -> AsyncIterator[Client]:
    """An MCP host (the SDK's stdio client) running the gateway for bob."""
    credentials = _credentials(bridge, "bob", tmp_path / "bob.json")
    params = StdioServerParameters(
        command=sys.executable, args=_gateway_args(bridge, credentials), cwd=Path.cwd()
    )
    with open(tmp_path / "gateway.stderr", "w") as errlog:
        # read timeout: a cold gateway start on a busy machine must not fail the handshake
        async with Client(
            stdio_client(params, errlog=errlog),
            mode="legacy",
            read_timeout_seconds=60,
            **client_kwargs,
        ) as host:
            yield host
    stderr = (tmp_path / "gateway.stderr").read_text()
    assert "Traceback" not in stderr, stderr


async def _request_events(bridge: BridgeProcess, request_id: str) -> list[Any]:
    return [r for r in await read_events(bridge.db) if r.stream == f"request-{request_id}"]


def _acknowledged(bridge: BridgeProcess) -> Any:
    async def check() -> bool:
        return bool(await read_events(bridge.db, ["MailboxAcknowledged"]))

    return check


async def test_tools_are_the_bridges(bridge: BridgeProcess, tmp_path: Path) -> None:
    async with _host(bridge, tmp_path) as host, bridge.client("alice") as alice:
        via_gateway = (await host.list_tools()).tools
        direct = (await alice.list_tools()).tools
        agents = await host.call_tool("list_agents", {})
    assert [(t.name, t.description, t.input_schema, t.output_schema) for t in via_gateway] == [
        (t.name, t.description, t.input_schema, t.output_schema) for t in direct
    ]
    assert {t.name for t in via_gateway} >= {
        "ask",
        "wait_for_messages",
        "send_message",
        "respond",
        "list_agents",
    }
    by_name = {a["name"]: a for a in agents.structured_content["agents"]}
    assert by_name["bob"]["online"] is True and by_name["bob"]["elicitation"] is False


async def test_ask_reaches_the_host_by_elicitation(bridge: BridgeProcess, tmp_path: Path) -> None:
    seen: list[Any] = []

    async def answer(ctx: Any, params: Any) -> ElicitResult:
        seen.append(params)
        return ElicitResult(action="accept", content={"answer": "from the IDE"})

    async with (
        _host(bridge, tmp_path, elicitation_callback=answer) as host,
        bridge.client("alice") as alice,
    ):
        # Bob's host reads a message, then waits again: the second wait acknowledges the
        # first (an event we can see) and holds a stream open that the push can ride.
        await alice.call_tool("send_message", {"to": "bob", "content": "hello"})
        got = await host.call_tool("wait_for_messages", {"timeout_s": 20})
        assert [m["content"] for m in got.structured_content["messages"]] == ["hello"]
        waiting = asyncio.create_task(host.call_tool("wait_for_messages", {"timeout_s": 20}))
        await wait_until(_acknowledged(bridge), timeout=20)
        result = await alice.call_tool(
            "ask", {"to": "bob", "message": "ship it?", "schema": SCHEMA, "timeout_s": 30}
        )
        waiting.cancel()
    assert result.is_error is False
    out = result.structured_content
    assert out["status"] == "accepted" and out["path"] == "elicitation"
    assert out["content"] == {"answer": "from the IDE"}
    assert seen[0].message == "ship it?" and seen[0].requested_schema == SCHEMA
    events = await _request_events(bridge, out["request_id"])
    assert [r.type for r in events] == [
        "RequestCreated",
        "RequestRouted",
        "RequestDelivered",
        "RequestAnswered",
    ]
    assert events[-1].actor == "bob"
    [opened] = [
        r for r in await read_events(bridge.db, ["SessionOpened"]) if r.data["agent"] == "bob"
    ]
    assert opened.data["elicitation"] is True


async def test_host_without_elicitation_answers_from_the_mailbox(
    bridge: BridgeProcess, tmp_path: Path
) -> None:
    async with _host(bridge, tmp_path) as host, bridge.client("alice") as alice:
        # the gateway opens bob's bridge session after the host's handshake; a first call
        # waits for it, so bob is online (not merely offline) when alice asks
        await host.call_tool("list_agents", {})
        asking = asyncio.create_task(
            alice.call_tool(
                "ask", {"to": "bob", "message": "ship it?", "schema": SCHEMA, "timeout_s": 30}
            )
        )
        got = await host.call_tool("wait_for_messages", {"timeout_s": 20})
        [item] = got.structured_content["messages"]
        assert item["kind"] == "request" and item["schema"] == SCHEMA
        answered = await host.call_tool(
            "respond",
            {
                "request_id": item["request_id"],
                "action": "accept",
                "content": {"answer": "by mail"},
            },
        )
        assert answered.structured_content["status"] == "accepted"
        # the bridge's refusals come back unchanged: isError and its reason
        again = await host.call_tool(
            "respond",
            {"request_id": item["request_id"], "action": "accept", "content": {"answer": "twice"}},
        )
        assert again.is_error and "already_closed" in again.content[0].text
        result = (await asking).structured_content
    assert result == {
        "request_id": item["request_id"],
        "status": "accepted",
        "content": {"answer": "by mail"},
        "path": "legacy",
    }
    [fell] = await read_events(bridge.db, ["RequestFellBack"])
    assert fell.data["cause"] == "no_capability"
    [opened] = [
        r for r in await read_events(bridge.db, ["SessionOpened"]) if r.data["agent"] == "bob"
    ]
    assert opened.data["elicitation"] is False


def _raw_gateway(
    args: list[str], env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """The gateway with a scripted host on stdin (closed after `stdin`)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("LIGHTHOUSE_")}
    return subprocess.run(
        [sys.executable, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **(env or {})},
    )


def _scripted_host(
    args: list[str], messages: list[dict[str, Any]]
) -> tuple[int, list[dict[str, Any]], str]:
    """A host that sends each message, reads the reply to each request, then closes stdin."""
    proc = subprocess.Popen(
        [sys.executable, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    replies = []
    try:
        for message in messages:
            proc.stdin.write(json.dumps(message) + "\n")
            proc.stdin.flush()
            if "id" in message:
                replies.append(json.loads(proc.stdout.readline()))
        proc.stdin.close()
        code = proc.wait(timeout=60)
        return code, replies, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


async def test_stdin_closing_ends_the_gateway_and_its_bridge_session(
    bridge: BridgeProcess, tmp_path: Path
) -> None:
    credentials = _credentials(bridge, "bob", tmp_path / "bob.json")
    host_says = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "script", "version": "0"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "list_agents", "arguments": {}},
        },
    ]
    code, replies, stderr = await asyncio.to_thread(
        _scripted_host, _gateway_args(bridge, credentials), host_says
    )
    assert code == 0, stderr
    assert stderr == ""
    assert replies[0]["result"]["serverInfo"]["name"] == "lighthouse-gateway"
    agents = replies[1]["result"]["structuredContent"]["agents"]
    assert {a["name"] for a in agents} == {"alice", "bob", "carol"}
    # the gateway left its bridge session properly (DELETE), not by vanishing
    opened = [r for r in await read_events(bridge.db, ["SessionOpened"])]
    closed = [r for r in await read_events(bridge.db, ["SessionClosed"])]
    assert [r.data["agent"] for r in opened] == ["bob"]
    assert [r.data["session_id"] for r in closed] == [opened[0].data["session_id"]]


@pytest.mark.parametrize(
    "case", ["wrong_secret", "unknown_key", "other_agents_file", "no_credentials", "unreachable"]
)
def test_bad_setup_is_one_clear_line_and_a_failing_exit(
    bridge: BridgeProcess, tmp_path: Path, case: str
) -> None:
    wrong = generate_secret()
    path = tmp_path / "creds.json"
    if case == "wrong_secret":
        args = _gateway_args(bridge, _credentials(bridge, "bob", path, secret=wrong))
        expect = "refused agent 'bob'"
    elif case == "unknown_key":
        args = _gateway_args(bridge, _credentials(bridge, "bob", path, key_id="k_0000"))
        expect = "refused agent 'bob'"
    elif case == "other_agents_file":
        args = _gateway_args(bridge, _credentials(bridge, "alice", path))
        expect = "is for agent 'alice', not 'bob'"
    elif case == "no_credentials":
        args = ["-m", "bridge.cli", "mcp", "--agent", "bob", "--url", bridge.url]
        expect = "no credentials for agent 'bob'"
    else:
        args = _gateway_args(bridge, _credentials(bridge, "bob", path))
        args[args.index("--url") + 1] = "http://127.0.0.1:9"
        expect = "cannot reach the bridge"
    done = _raw_gateway(args)
    assert done.returncode != 0
    assert done.stdout == ""  # nothing on the MCP channel
    [line] = done.stderr.splitlines()
    assert expect in line and "Traceback" not in line
    assert wrong not in line and bridge.agents["bob"].secret not in line


def test_credentials_from_the_environment(bridge: BridgeProcess) -> None:
    bob = bridge.agents["bob"]
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "script", "version": "0"},
        },
    }
    done = _raw_gateway(
        ["-m", "bridge.cli", "mcp", "--agent", "bob"],
        env={
            "LIGHTHOUSE_URL": bridge.url,
            "LIGHTHOUSE_KEY_ID": bob.key_id,
            "LIGHTHOUSE_SECRET": bob.secret,
        },
        stdin=json.dumps(init) + "\n",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[0])["result"]["protocolVersion"] == "2025-11-25"
