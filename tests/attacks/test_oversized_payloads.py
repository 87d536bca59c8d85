"""Oversized payloads (issue 16.4): questions, messages and answers above the size cap.

With `--max-content-bytes 4096`, each is refused with a clear error naming the limit and
nothing of it reaches the store; an answer too large is refused as `too_large` (recorded
as a bounded digest) and the request stays answerable; normal traffic goes on.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import SCHEMA, BridgeProcess

from .conftest import RawClient, call_tool, error_text, events_after, mark, start_bridge

LIMIT = 4096


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    b = start_bridge(tmp_path_factory.mktemp("oversized"), "--max-content-bytes", str(LIMIT))
    try:
        yield b
    finally:
        if b.proc is not None:
            b.stop()


def test_oversized_question_message_and_answer_are_refused(
    bridge: BridgeProcess, raw: RawClient
) -> None:
    start = mark(bridge)
    big = "A" * 100_000
    alice, bob = raw.open_session("alice"), raw.open_session("bob")
    question = call_tool(
        raw, "alice", alice, "ask", {"to": "bob", "message": big, "schema": SCHEMA, "wait": False}
    )
    assert f"more than the limit of {LIMIT}" in error_text(question)
    message = call_tool(raw, "alice", alice, "send_message", {"to": "bob", "content": big})
    assert f"more than the limit of {LIMIT}" in error_text(message)
    ok = call_tool(
        raw,
        "alice",
        alice,
        "ask",
        {"to": "bob", "message": "small", "schema": SCHEMA, "wait": False, "request_id": "q1"},
    )
    assert ok["structuredContent"]["status"] == "pending"
    answer = call_tool(
        raw,
        "bob",
        bob,
        "respond",
        {"request_id": "q1", "action": "accept", "content": {"answer": big}},
    )
    assert "too_large" in error_text(answer)
    fine = call_tool(
        raw,
        "bob",
        bob,
        "respond",
        {"request_id": "q1", "action": "accept", "content": {"answer": "small"}},
    )
    assert fine["structuredContent"]["status"] == "accepted"
    records = events_after(bridge, start)
    assert all(len(str(r.data)) < LIMIT for r in records), [r.type for r in records]
    [rejected] = [r for r in records if r.type == "AnswerRejected"]
    assert rejected.data["reason"] == "too_large"
    assert rejected.data["content"]["bytes"] > 100_000
