"""Control group: the security layer must not get in the way of a legitimate signed client.

Every other module shows a refusal; this one shows that the official SDK client, signing
with `LighthouseAuth`, works end to end with no refusal recorded for it, so the refusals
elsewhere are caused by the attack and not by a layer that refuses everything.
"""

from __future__ import annotations

from typing import Any

from tests.harness import BridgeProcess

from .conftest import events_after, mark


def _structured(result: Any) -> dict[str, Any]:
    assert not result.is_error, result
    payload: dict[str, Any] = result.structured_content
    return payload


async def test_sdk_client_lists_agents_and_sends_a_message(bridge: BridgeProcess) -> None:
    start = mark(bridge)
    async with bridge.client("alice") as alice:
        listed = _structured(await alice.call_tool("list_agents", {}))
        sent = _structured(
            await alice.call_tool("send_message", {"to": "bob", "content": "legit hello"})
        )
    agents = {a["name"]: a for a in listed["agents"]}
    assert set(agents) == {"alice", "bob", "carol"}
    assert agents["bob"]["roles"] == ["expert"]

    assert sent["delivered_to"] == [{"agent": "bob", "status": "queued", "online": False}]
    messages = events_after(bridge, start, ["MessageSent"])
    assert [(m.actor, m.data["from"], m.data["to"], m.data["content"]) for m in messages] == [
        ("alice", "alice", "bob", "legit hello")
    ]
    assert messages[0].data["message_id"] == sent["message_id"]
    # Not one of the client's requests (initialize, notifications, calls, DELETE) was refused.
    assert events_after(bridge, start, ["AuthRejected", "RateLimited"]) == []


async def test_recipient_receives_the_message_end_to_end(bridge: BridgeProcess) -> None:
    start = mark(bridge)
    async with bridge.client("carol") as carol:
        _structured(await carol.call_tool("send_message", {"to": "alice", "content": "ping e2e"}))
    async with bridge.client("alice") as alice:
        waited = _structured(
            await alice.call_tool("wait_for_messages", {"timeout_s": 5, "max": 10})
        )
    contents = [(m.get("from"), m.get("content")) for m in waited["messages"]]
    assert ("carol", "ping e2e") in contents
    delivered = events_after(bridge, start, ["MessageDelivered"])
    assert any(d.data["to"] == "alice" for d in delivered)
    assert events_after(bridge, start, ["AuthRejected", "RateLimited"]) == []


async def test_single_exchange_protocol_client_is_accepted(bridge: BridgeProcess) -> None:
    start = mark(bridge)
    async with bridge.client("bob", mode="2026-07-28") as bob:
        listed = _structured(await bob.call_tool("list_agents", {}))
        _structured(await bob.call_tool("send_message", {"to": "carol", "content": "modern hi"}))
    assert {a["name"] for a in listed["agents"]} == {"alice", "bob", "carol"}
    messages = events_after(bridge, start, ["MessageSent"])
    assert [(m.actor, m.data["to"], m.data["content"]) for m in messages] == [
        ("bob", "carol", "modern hi")
    ]
    assert events_after(bridge, start, ["AuthRejected", "RateLimited"]) == []
