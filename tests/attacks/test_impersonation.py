"""Impersonation: alice tries to act as bob.

The identity of a caller is the agent owning the key that verified the signature, and
nothing else: not the `keyid` she writes (it must match the secret), not a tool argument,
not `clientInfo`, not a header of her choosing.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from security import decode_secret
from tests.harness import SCHEMA, BridgeProcess, wait_until

from .conftest import (
    RawClient,
    assert_no_secret_leak,
    assert_refused,
    events_after,
    initialize_body,
    mark,
    messages_with,
    one_event,
    rpc,
    side_effects,
    tool_call_body,
    tool_result,
)


def test_bob_key_id_with_alice_secret_is_refused(bridge: BridgeProcess, raw: RawClient) -> None:
    alice, bob = raw.agent("alice"), raw.agent("bob")
    session = raw.open_session("alice")
    start = mark(bridge)
    body = tool_call_body("send_message", {"to": "carol", "content": "as bob?"})
    response = raw.post(
        "alice", body, session=session, key_id=bob.key_id, secret=decode_secret(alice.secret)
    )
    assert_refused(response, 401, "invalid_signature")
    event = one_event(bridge, start, "AuthRejected")
    assert event.data["reason"] == "invalid_signature"
    assert event.data["key_id"] == bob.key_id
    assert event.data["status"] == 401
    assert_no_secret_leak(event, alice.secret, bob.secret)
    assert side_effects(bridge, start) == []


def test_claimed_key_id_cannot_open_a_session(bridge: BridgeProcess, raw: RawClient) -> None:
    alice, bob = raw.agent("alice"), raw.agent("bob")
    start = mark(bridge)
    response = raw.post(
        "alice", initialize_body(), key_id=bob.key_id, secret=decode_secret(alice.secret)
    )
    assert_refused(response, 401, "invalid_signature")
    assert "mcp-session-id" not in response.headers  # no session was issued to anyone
    assert one_event(bridge, start, "AuthRejected").data["reason"] == "invalid_signature"
    assert events_after(bridge, start, ["SessionOpened"]) == []


def test_tool_arguments_naming_another_agent_do_not_change_the_actor(
    bridge: BridgeProcess, raw: RawClient
) -> None:
    session = raw.open_session("alice")
    start = mark(bridge)
    # Extra fields an attacker hopes the server reads as "who is calling".
    body = rpc(
        "tools/call",
        {
            "name": "send_message",
            "arguments": {
                "to": "carol",
                "content": "spoofed-from",
                "from": "bob",
                "sender": "bob",
                "agent": "bob",
            },
            "_meta": {"agent": "bob", "from": "bob"},
        },
    )
    response = raw.post("alice", body, session=session)
    assert response.status_code == 200, response.text
    tool_result(response)  # unknown arguments are ignored: the call runs, as alice
    sent = messages_with(bridge, "spoofed-from", start)
    assert [(m.actor, m.data["from"], m.data["to"]) for m in sent] == [("alice", "alice", "carol")]
    assert not any(r.actor == "bob" for r in events_after(bridge, start))


def test_client_info_naming_another_agent_does_not_change_the_actor(
    bridge: BridgeProcess, raw: RawClient
) -> None:
    start = mark(bridge)
    init = rpc(
        "initialize",
        {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "bob", "version": "1"},
            "_meta": {"agent": "bob"},
        },
    )
    response = raw.post(
        "alice", init, headers={"X-Lighthouse-Agent": "bob", "X-Lighthouse-Operator": "bob"}
    )
    assert response.status_code == 200, response.text
    session = response.headers["mcp-session-id"]
    ack = raw.post("alice", rpc("notifications/initialized", notification=True), session=session)
    assert ack.status_code == 202
    tool_result(raw.send_message("alice", session, "carol", "who am i"))
    sent = messages_with(bridge, "who am i", start)
    assert [(m.actor, m.data["from"]) for m in sent] == [("alice", "alice")]
    # The session (and so pushes and mailbox hand-outs) belongs to alice, not bob.
    bob_session = raw.post("bob", rpc("ping"), session=session)
    assert_refused(bob_session, 401, "session_hijack")


def test_duplicate_signature_label_is_refused(bridge: BridgeProcess, raw: RawClient) -> None:
    """Two `lh` signatures (alice's valid one and one naming bob) must not let a parser
    pick the second: a duplicated dictionary key is malformed."""
    session = raw.open_session("alice")
    start = mark(bridge)
    body = tool_call_body("send_message", {"to": "carol", "content": "two labels"})
    as_alice = raw.build("alice", body, session=session)
    as_bob_claim = raw.build(
        "alice",
        body,
        session=session,
        key_id=raw.agent("bob").key_id,
        secret=decode_secret(raw.agent("alice").secret),
    )
    headers = dict(as_alice.headers)
    headers["Signature-Input"] += ", " + as_bob_claim.headers["Signature-Input"]
    headers["Signature"] += ", " + as_bob_claim.headers["Signature"]
    response = raw.http.post("/mcp", content=body, headers=headers)
    assert_refused(response, 401, "malformed_signature")
    assert one_event(bridge, start, "AuthRejected").data["reason"] == "malformed_signature"
    assert messages_with(bridge, "two labels", start) == []


async def test_carol_cannot_answer_a_request_addressed_to_bob(bridge: BridgeProcess) -> None:
    """`respond` names a request id, never a responder: only the request's recipient (from
    the signature) may answer. carol learns the id (it is in the log) and tries anyway;
    then bob answers for real and alice gets bob's answer, not carol's."""
    start = mark(bridge)
    async with bridge.client("alice") as alice, bridge.client("carol") as carol:
        ask = asyncio.create_task(
            alice.call_tool(
                "ask",
                {
                    "to": "bob",
                    "message": "sign off?",
                    "schema": SCHEMA,
                    "timeout_s": 120,
                },
            )
        )
        created: list[Any] = []

        async def request_created() -> bool:
            created[:] = await asyncio.to_thread(events_after, bridge, start, ["RequestCreated"])
            return bool(created)

        try:
            await wait_until(request_created, timeout=30)
            request_id = created[0].data["request_id"]
            forged = await carol.call_tool(
                "respond",
                {
                    "request_id": request_id,
                    "action": "accept",
                    "content": {"answer": "approved by carol posing as bob"},
                },
            )
            assert forged.is_error, forged
            assert "not_recipient" in json.dumps(forged.model_dump(mode="json"))
            assert not ask.done()  # the forged answer did not close alice's request

            async with bridge.client("bob") as bob:
                waited = await bob.call_tool("wait_for_messages", {"timeout_s": 10})
                items = waited.structured_content["messages"]
                assert [i["request_id"] for i in items if i["kind"] == "request"] == [request_id]
                real = await bob.call_tool(
                    "respond",
                    {
                        "request_id": request_id,
                        "action": "accept",
                        "content": {"answer": "bob says yes"},
                    },
                )
                assert not real.is_error, real
            result = (await asyncio.wait_for(ask, 60)).structured_content
        finally:
            if not ask.done():
                ask.cancel()
    assert (result["status"], result["content"]) == ("accepted", {"answer": "bob says yes"})
    answered = events_after(bridge, start, ["RequestAnswered"])
    assert [(a.actor, a.data["by"]) for a in answered] == [("bob", "bob")]
    refused = events_after(bridge, start, ["AnswerRejected"])
    assert [(r.data["by"], r.data["reason"]) for r in refused] == [("carol", "not_recipient")]
