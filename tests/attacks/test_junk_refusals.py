"""Junk through refusals (issue 16.12): a refused caller's payload is not stored.

200 KB sent as a `request_id`, as refused answer content and as `ack` ids: each is
refused, and what the log keeps is a bounded digest (size, SHA-256, short escaped
sample) — never the payload, never raw control characters. Others stay served.
"""

from __future__ import annotations

from tests.harness import SCHEMA, BridgeProcess

from .conftest import RawClient, call_tool, error_text, events_after, mark

JUNK = "\x1b[2J\x1b[H" + "J" * 200_000


def test_junk_request_id_and_content_are_stored_as_digests(
    bridge: BridgeProcess, raw: RawClient
) -> None:
    start = mark(bridge)
    bob = raw.open_session("bob")
    refused = call_tool(
        raw,
        "bob",
        bob,
        "respond",
        {"request_id": JUNK, "action": "accept", "content": {"junk": JUNK}},
    )
    text = error_text(refused)
    assert "bad_request_id" in text and "JJJJ" not in text
    ack = call_tool(raw, "bob", bob, "wait_for_messages", {"timeout_s": 0, "ack": [JUNK]})
    assert not ack.get("isError")
    records = events_after(bridge, start, ["AnswerRejected", "MailboxAcknowledged"])
    assert {r.type for r in records} == {"AnswerRejected", "MailboxAcknowledged"}
    for r in records:
        assert len(str(r.data)) < 1000 and "\x1b" not in str(r.data), r.type
    [rejected] = [r for r in records if r.type == "AnswerRejected"]
    assert len(rejected.data["request_id"]) <= 80  # a printable, bounded stand-in
    assert rejected.data["request_id_digest"]["bytes"] == len(JUNK.encode())
    [acked] = [r for r in records if r.type == "MailboxAcknowledged"]
    assert acked.data["items"] == [] and acked.data["unknown"]["count"] == 1
    # bob is still served
    alice = raw.open_session("alice")
    asked = call_tool(
        raw,
        "alice",
        alice,
        "ask",
        {"to": "bob", "message": "still fine?", "schema": SCHEMA, "wait": False},
    )
    assert asked["structuredContent"]["status"] == "pending"
