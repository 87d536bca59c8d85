"""`ask` end to end: real server process, official SDK clients, signed requests.

Every test asserts on the events recorded, not only on what the tool returned.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mcp_types import ElicitResult

from tests.harness import SCHEMA, BridgeProcess, answer_next_request, read_events, wait_until


def _accept(answer: str = "42") -> Any:
    async def callback(ctx: Any, params: Any) -> ElicitResult:
        return ElicitResult(action="accept", content={"answer": answer})

    return callback


async def _types_for(bridge: BridgeProcess, request_id: str) -> list[str]:
    return [r.type for r in await read_events(bridge.db) if r.stream == f"request-{request_id}"]


async def _ask(client: Any, to: str = "bob", timeout_s: float = 10, **extra: Any) -> Any:
    result = await client.call_tool(
        "ask",
        {
            "to": to,
            "message": "meaning of life?",
            "schema": SCHEMA,
            "timeout_s": timeout_s,
            **extra,
        },
    )
    return result


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_ask_answered_by_elicitation(bridge: BridgeProcess, mode: str) -> None:
    seen: list[Any] = []

    async def answer(ctx: Any, params: Any) -> ElicitResult:
        seen.append(params)
        return ElicitResult(action="accept", content={"answer": "42"})

    async with (
        bridge.client("bob", mode=mode, elicitation_callback=answer) as bob,
        bridge.client("alice") as alice,
    ):
        waiter = asyncio.create_task(bob.call_tool("wait_for_messages", {"timeout_s": 10}))
        await wait_until(
            lambda: bridge.health()["sessions"].get("2026-07-28", 0) > 0 or mode == "legacy"
        )
        result = await _ask(alice)
        await waiter
    assert result.is_error is False
    out = result.structured_content
    assert out["status"] == "accepted" and out["content"] == {"answer": "42"}
    assert out["path"] == "elicitation"
    assert seen[0].message == "meaning of life?"
    assert seen[0].requested_schema == SCHEMA
    types = await _types_for(bridge, out["request_id"])
    assert types == ["RequestCreated", "RequestRouted", "RequestDelivered", "RequestAnswered"]
    events = {
        r.type: r
        for r in await read_events(bridge.db)
        if r.stream == f"request-{out['request_id']}"
    }
    assert events["RequestCreated"].actor == "alice"
    assert events["RequestAnswered"].actor == "bob"
    assert events["RequestAnswered"].data["content"] == {"answer": "42"}


async def test_ask_through_legacy_mailbox(bridge: BridgeProcess) -> None:
    """Bob's client declares no elicitation: the request waits in his mailbox."""
    async with bridge.client("bob") as bob, bridge.client("alice") as alice:
        asking = asyncio.create_task(_ask(alice))
        got = await bob.call_tool("wait_for_messages", {"timeout_s": 10})
        [item] = got.structured_content["messages"]
        assert item["kind"] == "request" and item["from"] == "alice"
        assert item["schema"] == SCHEMA
        answered = await bob.call_tool(
            "respond",
            {
                "request_id": item["request_id"],
                "action": "accept",
                "content": {"answer": "by mail"},
            },
        )
        assert answered.structured_content["status"] == "accepted"
        result = (await asking).structured_content
    assert result == {
        "request_id": item["request_id"],
        "status": "accepted",
        "content": {"answer": "by mail"},
        "path": "legacy",
    }
    types = await _types_for(bridge, item["request_id"])
    assert types == ["RequestCreated", "RequestFellBack", "RequestDelivered", "RequestAnswered"]
    [fell] = [r for r in await read_events(bridge.db, ["RequestFellBack"])]
    assert fell.data["cause"] == "no_capability"


@pytest.mark.parametrize(("action", "status"), [("decline", "declined"), ("cancel", "cancelled")])
async def test_decline_and_cancel(bridge: BridgeProcess, action: str, status: str) -> None:
    async def refuse(ctx: Any, params: Any) -> ElicitResult:
        return ElicitResult(action=action)

    async with (
        bridge.client("bob", elicitation_callback=refuse),
        bridge.client("alice") as alice,
    ):
        result = (await _ask(alice)).structured_content
    assert result["status"] == status and result["content"] is None
    types = await _types_for(bridge, result["request_id"])
    assert types[-1] == {"declined": "RequestDeclined", "cancelled": "RequestCancelled"}[status]


async def test_timeout_then_late_answer_refused(bridge: BridgeProcess) -> None:
    async with bridge.client("bob") as bob, bridge.client("alice") as alice:
        result = (await _ask(alice, timeout_s=0.5)).structured_content
        assert result["status"] == "timeout" and result["content"] is None
        late = await bob.call_tool(
            "respond",
            {
                "request_id": result["request_id"],
                "action": "accept",
                "content": {"answer": "too late"},
            },
        )
    assert late.is_error
    assert "already_closed" in late.content[0].text
    events = [
        r for r in await read_events(bridge.db) if r.stream == f"request-{result['request_id']}"
    ]
    assert [r.type for r in events][-2:] == ["RequestTimedOut", "AnswerRejected"]
    assert events[-1].data["reason"] == "already_closed"
    assert events[-1].actor == "bob"


async def test_invalid_content_is_recorded_and_not_passed_on(bridge: BridgeProcess) -> None:
    answers = iter([{"answer": 7}, {"wrong": "field"}, {"answer": "valid"}])

    async def sloppy(ctx: Any, params: Any) -> ElicitResult:
        return ElicitResult(action="accept", content=next(answers))

    async with (
        bridge.client("bob", elicitation_callback=sloppy),
        bridge.client("alice") as alice,
    ):
        result = (await _ask(alice)).structured_content
    assert result["content"] == {"answer": "valid"}
    rejected = [r for r in await read_events(bridge.db, ["AnswerRejected"])]
    assert [r.data["reason"] for r in rejected] == ["invalid_content", "invalid_content"]
    # a bounded digest of what was sent, not the payload (issue 16.12)
    assert rejected[0].data["content"]["sample"] == '{"answer": 7}'
    assert rejected[0].data["content"]["bytes"] == 13


async def test_only_the_recipient_may_answer(bridge: BridgeProcess) -> None:
    async with (
        bridge.client("bob") as bob,
        bridge.client("carol") as carol,
        bridge.client("alice") as alice,
    ):
        asking = asyncio.create_task(_ask(alice))
        item = (await bob.call_tool("wait_for_messages", {"timeout_s": 10})).structured_content[
            "messages"
        ][0]
        forged = await carol.call_tool(
            "respond",
            {
                "request_id": item["request_id"],
                "action": "accept",
                "content": {"answer": "carol says"},
            },
        )
        assert forged.is_error and "not_recipient" in forged.content[0].text
        await bob.call_tool(
            "respond",
            {
                "request_id": item["request_id"],
                "action": "accept",
                "content": {"answer": "bob says"},
            },
        )
        result = (await asking).structured_content
    assert result["content"] == {"answer": "bob says"}
    [rejected] = await read_events(bridge.db, ["AnswerRejected"])
    assert rejected.actor == "carol" and rejected.data["reason"] == "not_recipient"
    terminal = [r for r in await read_events(bridge.db, ["RequestAnswered"])]
    assert len(terminal) == 1


async def test_recipient_disconnects_mid_request_falls_back(bridge: BridgeProcess) -> None:
    """Bob vanishes while the elicitation is pending: the request moves to his mailbox and
    his next client picks it up there; alice's ask still gets the answer."""
    pending = asyncio.Event()

    async def hang(ctx: Any, params: Any) -> ElicitResult:
        pending.set()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async with bridge.client("alice") as alice:
        async with bridge.client("bob", elicitation_callback=hang):
            asking = asyncio.create_task(_ask(alice, timeout_s=30))
            await asyncio.wait_for(pending.wait(), 10)
        # leaving the block ended bob's session (DELETE) with the elicitation pending
        async with bridge.client("bob") as bob2:
            await answer_next_request(bob2, "after reconnect", timeout_s=10)
        result = (await asking).structured_content
    assert result["content"] == {"answer": "after reconnect"} and result["path"] == "legacy"
    [fell] = await read_events(bridge.db, ["RequestFellBack"])
    assert fell.data["cause"] == "session_gone"
    assert "SessionClosed" in [r.type for r in await read_events(bridge.db)]


async def test_ask_by_role_picks_a_matching_agent(bridge: BridgeProcess) -> None:
    async with (
        bridge.client("bob", elicitation_callback=_accept("expert")),
        bridge.client("alice") as alice,
    ):
        result = (await _ask(alice, to="role:expert")).structured_content
    assert result["content"] == {"answer": "expert"}
    [created] = await read_events(bridge.db, ["RequestCreated"])
    assert created.data["to"] == "role:expert" and created.data["recipient"] == "bob"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"to": "nobody"}, "unknown or revoked agent"),
        ({"to": "role:astronaut"}, "no agent has role"),
        (
            {"schema": {"type": "object", "properties": {"x": {"type": "object"}}}},
            "nested objects are not allowed",
        ),
        ({"timeout_s": -1}, "timeout_s"),
    ],
)
async def test_bad_ask_is_refused_before_anything_is_recorded(
    bridge: BridgeProcess, arguments: dict[str, Any], message: str
) -> None:
    async with bridge.client("alice") as alice:
        result = await alice.call_tool(
            "ask", {"to": "bob", "message": "q", "schema": SCHEMA, "timeout_s": 5, **arguments}
        )
    assert result.is_error and message in result.content[0].text
    assert await read_events(bridge.db, ["RequestCreated"]) == []


async def test_messages_are_redelivered_until_acknowledged(bridge: BridgeProcess) -> None:
    async with bridge.client("alice") as alice:
        sent = await alice.call_tool("send_message", {"to": "bob", "content": "hello"})
        assert sent.structured_content["delivered_to"][0]["agent"] == "bob"
        bad = await alice.call_tool("send_message", {"to": "nobody", "content": "x"})
        assert bad.is_error and "unknown or revoked agent" in bad.content[0].text
    # bob's first client receives the message and vanishes before its next call
    async with bridge.client("bob") as bob:
        first = await bob.call_tool("wait_for_messages", {"timeout_s": 5})
        assert [m["content"] for m in first.structured_content["messages"]] == ["hello"]
    # a new client gets it again: polling never eats mail that was not acknowledged
    async with bridge.client("bob") as bob:
        again = await bob.call_tool("wait_for_messages", {"timeout_s": 5})
        assert [m["content"] for m in again.structured_content["messages"]] == ["hello"]
        # calling again from the same session acknowledges it
        empty = await bob.call_tool("wait_for_messages", {"timeout_s": 0.2})
        assert empty.structured_content["messages"] == []
    types = [r.type for r in await read_events(bridge.db)]
    assert types.count("MessageDelivered") == 2 and types.count("MailboxAcknowledged") == 1


async def test_wait_returns_as_soon_as_mail_arrives(bridge: BridgeProcess) -> None:
    async with bridge.client("bob") as bob, bridge.client("alice") as alice:
        loop = asyncio.get_running_loop()
        waiting = asyncio.create_task(bob.call_tool("wait_for_messages", {"timeout_s": 20}))
        await asyncio.sleep(0.3)
        started = loop.time()
        await alice.call_tool("send_message", {"to": "bob", "content": "ping"})
        got = await asyncio.wait_for(waiting, 15)
        assert loop.time() - started < 10  # not the 20 s timeout: a real long-poll
    assert got.structured_content["messages"][0]["content"] == "ping"


async def test_list_agents(bridge: BridgeProcess) -> None:
    async with (
        bridge.client("bob", elicitation_callback=_accept()) as bob,
        bridge.client("alice") as alice,
    ):
        await bob.call_tool("list_agents", {})
        agents = (await alice.call_tool("list_agents", {})).structured_content["agents"]
    by_name = {a["name"]: a for a in agents}
    assert set(by_name) == {"alice", "bob", "carol"}
    assert by_name["bob"]["roles"] == ["expert"] and by_name["bob"]["online"] is True
    assert by_name["bob"]["elicitation"] is True
    assert by_name["carol"]["online"] is False


_VANISHING_BOB = """
import asyncio, json, sys
from bridge.client import connect

async def hang(ctx, params):
    print("elicited", flush=True)
    await asyncio.sleep(3600)

async def main():
    agent = json.loads(sys.argv[2])
    async with connect(sys.argv[1], agent["key_id"], agent["secret"],
                       elicitation_callback=hang) as bob:
        await bob.call_tool("wait_for_messages", {"timeout_s": 25})

asyncio.run(main())
"""


async def test_recipient_process_killed_mid_request_falls_back(bridge: BridgeProcess) -> None:
    """Bob's process dies (no DELETE, no goodbye) while the elicitation rides his pending
    call's stream: the bridge sees the client gone, moves the request to the mailbox, and
    bob's next client answers it there."""
    import json
    import signal
    import subprocess
    import sys

    bob = bridge.agents["bob"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _VANISHING_BOB,
        bridge.mcp_url,
        json.dumps({"key_id": bob.key_id, "secret": bob.secret}),
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    async with bridge.client("alice") as alice:
        await wait_until(lambda: bridge.health()["sessions"].get("2025-11-25", 0) >= 2)
        asking = asyncio.create_task(_ask(alice, timeout_s=60))
        assert (await asyncio.wait_for(proc.stdout.readline(), 20)).strip() == b"elicited"
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        async with bridge.client("bob") as bob2:
            await answer_next_request(bob2, "survived", timeout_s=20)
        result = (await asking).structured_content
    assert result["content"] == {"answer": "survived"} and result["path"] == "legacy"
    [fell] = await read_events(bridge.db, ["RequestFellBack"])
    assert fell.data["cause"] in ("transport_error", "session_gone")
