"""Mailboxes on a real store: fair hand-out by sender, retention recorded, bounded acks,
and what `agents forget` erases from a running bridge."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.admin import forget_agent
from bridge.app import Bridge, open_bridge
from bridge.config import Settings
from bridge.domain import MAILBOX_ITEMS_EXPIRED
from bridge.routing import AnswerRefused
from bridge.sealing import ERASED
from tests.harness import SCHEMA


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[Bridge]:
    b = await open_bridge(Settings(db=tmp_path / "lighthouse.db"))
    for name in ("alice", "bob", "carol", "flood"):
        await b.agents.add(name, [], [], "test")
    try:
        yield b
    finally:
        await b.close()


async def test_hand_out_is_round_robin_by_asker(bridge: Bridge) -> None:
    for n in range(30):
        await bridge.router.ask("flood", "bob", f"spam {n}", SCHEMA, 60, wait=False)
    await bridge.router.ask("alice", "bob", "real question", SCHEMA, 60, wait=False)
    await bridge.router.send_message("carol", "bob", "a note")
    first = bridge.mailboxes.pending("bob", 3)
    assert sorted(i.payload["from"] for i in first) == ["alice", "carol", "flood"]
    everything = bridge.mailboxes.pending("bob", 100)
    assert len(everything) == 32
    flood = [i.payload["message"] for i in everything if i.payload["from"] == "flood"]
    assert flood == [f"spam {n}" for n in range(30)]  # each sender's own order kept


async def test_messages_past_retention_are_expired_by_a_recorded_fact(bridge: Bridge) -> None:
    await bridge.router.send_message("alice", "bob", "old news")
    assert await bridge.mailboxes.expire(bridge.log, 3600) == 0
    assert await bridge.mailboxes.expire(bridge.log, 3600, now=time.time() + 7200) == 1
    assert bridge.mailboxes.pending("bob", 10) == []
    [fact] = await bridge.store.read_all(1, limit=None, types=[MAILBOX_ITEMS_EXPIRED])
    assert fact.data["agent"] == "bob" and fact.data["reason"] == "retention"
    assert len(fact.data["items"]) == 1


async def test_ack_keeps_known_ids_and_a_digest_of_the_rest(bridge: Bridge) -> None:
    sent = await bridge.router.send_message("alice", "bob", "hi")
    junk = ["x" * 50_000, sent["message_id"], 7]
    data = bridge.mailboxes.acknowledgement("bob", "s1", junk)
    assert data is not None and data["items"] == [sent["message_id"]]
    assert data["unknown"]["count"] == 2 and len(str(data)) < 1000
    with pytest.raises(ValueError, match="ack"):
        bridge.mailboxes.acknowledgement("bob", "s1", ["a"] * 1001)
    with pytest.raises(ValueError, match="ack"):
        bridge.mailboxes.acknowledgement("bob", "s1", "not-a-list")


async def test_forget_erases_what_the_running_bridge_holds_as_a_replay_would(
    tmp_path: Path,
) -> None:
    settings = Settings(db=tmp_path / "lighthouse.db")
    bridge = await open_bridge(settings)
    try:
        for name in ("alice", "bob", "carol"):
            await bridge.agents.add(name, [], [], "test")
        await bridge.router.send_message("alice", "bob", "alice's private note")
        await bridge.router.send_message("carol", "bob", "carol's note")
        asked = await bridge.router.ask("alice", "bob", "alice's question", SCHEMA, 60, wait=False)
        rid = asked["request_id"]
        await forget_agent(bridge, "alice", "erasure request", "test", force=True)
        live = {i.item_id: i.payload for i in bridge.mailboxes.pending("bob", 10)}
        by_sender = {(p["from"], p["kind"]): p for p in live.values()}
        assert by_sender[("alice", "message")]["content"] == ERASED
        assert by_sender[("alice", "request")]["message"] == ERASED
        assert by_sender[("alice", "request")]["schema"] == ERASED
        assert by_sender[("carol", "message")]["content"] == "carol's note"  # others: as sent
        assert bridge.requests.open[rid].message == ERASED  # still open, question gone
        with pytest.raises(AnswerRefused) as refused:
            await bridge.router.answer(rid, "bob", "accept", {"answer": "x"}, "legacy")
        assert refused.value.reason == "question_erased"
    finally:
        await bridge.close()
    again = await open_bridge(settings)  # a replay with alice's keys gone
    try:
        assert {i.item_id: i.payload for i in again.mailboxes.pending("bob", 10)} == live
        declined = await again.router.answer(rid, "bob", "decline", None, "legacy")
        assert declined["status"] == "declined"
    finally:
        await again.close()
