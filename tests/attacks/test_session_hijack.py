"""Session hijack: bob, properly signed with his own key, presents alice's Mcp-Session-Id.

A valid signature proves who bob is; it must not let him use a session issued to alice
(to read her pushes, answer her elicitations, or close her session).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx2
import pytest

from security import decode_secret, sign_request
from tests.harness import SCHEMA, BridgeProcess

from .conftest import (
    PROTOCOL,
    RawClient,
    assert_refused,
    events_after,
    mark,
    messages_with,
    one_event,
    rpc,
    side_effects,
    tool_call_body,
    tool_result,
)


@pytest.fixture(scope="module")
def alice_session(raw: RawClient) -> str:
    return raw.open_session("alice")


def _assert_hijack_recorded(bridge: BridgeProcess, start: int, method: str) -> None:
    event = one_event(bridge, start, "AuthRejected")
    assert event.data["reason"] == "session_hijack"
    assert event.data["status"] == 401
    assert event.data["agent"] == "bob"
    assert event.data["key_id"] == bridge.agents["bob"].key_id
    assert event.data["session_owner"] == "alice"
    assert event.data["method"] == method
    assert event.actor == "bob"


def test_tool_call_on_another_agents_session_is_refused(
    bridge: BridgeProcess, raw: RawClient, alice_session: str
) -> None:
    start = mark(bridge)
    response = raw.send_message("bob", alice_session, "carol", "hijacked call")
    assert_refused(response, 401, "session_hijack")
    _assert_hijack_recorded(bridge, start, "POST")
    assert side_effects(bridge, start) == []


def test_listening_on_another_agents_session_stream_is_refused(
    bridge: BridgeProcess, raw: RawClient, alice_session: str
) -> None:
    """GET opens the standalone SSE stream on which alice's elicitations are pushed."""
    start = mark(bridge)
    response = raw.send(raw.build("bob", method="GET", session=alice_session))
    assert_refused(response, 401, "session_hijack")
    _assert_hijack_recorded(bridge, start, "GET")


def test_closing_another_agents_session_is_refused(
    bridge: BridgeProcess, raw: RawClient, alice_session: str
) -> None:
    start = mark(bridge)
    response = raw.send(raw.build("bob", method="DELETE", session=alice_session))
    assert_refused(response, 401, "session_hijack")
    _assert_hijack_recorded(bridge, start, "DELETE")
    assert events_after(bridge, start, ["SessionClosed"]) == []


def test_answering_on_another_agents_session_is_refused(
    bridge: BridgeProcess, raw: RawClient, alice_session: str
) -> None:
    """A JSON-RPC *response* posted on alice's session would answer an elicitation the
    bridge pushed to her."""
    start = mark(bridge)
    forged = b'{"jsonrpc":"2.0","id":0,"result":{"action":"accept","content":{"answer":"x"}}}'
    response = raw.post("bob", forged, session=alice_session)
    assert_refused(response, 401, "session_hijack")
    _assert_hijack_recorded(bridge, start, "POST")
    assert events_after(bridge, start, ["RequestAnswered", "AnswerRejected"]) == []


def test_owner_keeps_using_the_session_after_hijack_attempts(
    bridge: BridgeProcess, raw: RawClient, alice_session: str
) -> None:
    start = mark(bridge)
    assert_refused(
        raw.send_message("bob", alice_session, "carol", "hijack again"), 401, "session_hijack"
    )
    tool_result(raw.send_message("alice", alice_session, "carol", "still mine"))
    assert [m.actor for m in messages_with(bridge, "still mine", start)] == ["alice"]
    assert messages_with(bridge, "hijack again", start) == []


def test_own_session_with_the_right_key_is_accepted(bridge: BridgeProcess, raw: RawClient) -> None:
    """Control: the same request shape on bob's own session goes through."""
    bob_session = raw.open_session("bob")
    start = mark(bridge)
    body = tool_call_body("send_message", {"to": "carol", "content": "bob in his session"})
    tool_result(raw.post("bob", body, session=bob_session))
    assert [m.actor for m in messages_with(bridge, "bob in his session", start)] == ["bob"]
    assert events_after(bridge, start, ["AuthRejected"]) == []


def test_made_up_session_id_executes_nothing(bridge: BridgeProcess, raw: RawClient) -> None:
    start = mark(bridge)
    response = raw.post(
        "bob",
        rpc(
            "tools/call",
            {
                "name": "send_message",
                "arguments": {"to": "carol", "content": "guessed session"},
            },
        ),
        session="0" * 32,
    )
    assert response.status_code == 404, response.text
    assert messages_with(bridge, "guessed session", start) == []


async def _wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_duplicate_session_headers_cannot_redirect_another_agents_questions(
    bridge: BridgeProcess, raw: RawClient
) -> None:
    # alice declares elicitation but has no stream: her questions must go to her mailbox.
    init = rpc(
        "initialize",
        {
            "protocolVersion": PROTOCOL,
            "capabilities": {"elicitation": {"form": {}}},
            "clientInfo": {"name": "alice", "version": "1"},
        },
    )
    alice_session = raw.post("alice", init).headers["mcp-session-id"]
    assert (
        raw.post(
            "alice", rpc("notifications/initialized", notification=True), session=alice_session
        ).status_code
        == 202
    )
    bob_session = raw.open_session("bob")

    bob = raw.agent("bob")
    combined = f"{bob_session}, {alice_session}"  # what the verifier sees and bob signs
    signature = sign_request(
        "GET", "/mcp", "", {"Mcp-Session-Id": combined}, b"", bob.key_id, decode_secret(bob.secret)
    )
    headers = [
        ("Accept", "text/event-stream"),
        ("Mcp-Protocol-Version", PROTOCOL),
        ("Mcp-Session-Id", bob_session),
        ("Mcp-Session-Id", alice_session),
        *signature.items(),
    ]
    start = mark(bridge)
    async with httpx2.AsyncClient(base_url=bridge.url, timeout=60) as http:
        stream = asyncio.create_task(http.get("/mcp", headers=headers))
        try:
            await asyncio.sleep(1.0)  # let the GET reach the bridge (it stays open)
            if stream.done():  # refused outright: the fix that rejects duplicates
                assert 400 <= stream.result().status_code < 500
            async with bridge.client("carol") as carol:
                ask = asyncio.create_task(
                    carol.call_tool(
                        "ask",
                        {
                            "to": "alice",
                            "message": "still reachable?",
                            "schema": SCHEMA,
                            "timeout_s": 8,
                        },
                    )
                )
                await _wait_for(
                    lambda: bool(
                        events_after(bridge, start, ["RequestFellBack", "RequestDelivered"])
                    )
                )
                waited = await asyncio.to_thread(
                    raw.post,
                    "alice",
                    tool_call_body("wait_for_messages", {"timeout_s": 3}),
                    session=alice_session,
                )
                requests = [
                    i for i in tool_result(waited)["messages"] if i.get("kind") == "request"
                ]
                for item in requests:
                    tool_result(
                        await asyncio.to_thread(
                            raw.post,
                            "alice",
                            tool_call_body(
                                "respond",
                                {
                                    "request_id": item["request_id"],
                                    "action": "accept",
                                    "content": {"answer": "yes"},
                                },
                            ),
                            session=alice_session,
                        )
                    )
                result = (await ask).structured_content
        finally:
            stream.cancel()
    assert [i["message"] for i in requests] == ["still reachable?"], (
        result,
        [(e.type, e.data) for e in events_after(bridge, start)],
    )
    assert (result["status"], result["content"]) == ("accepted", {"answer": "yes"})
