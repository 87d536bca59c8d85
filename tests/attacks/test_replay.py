"""Replay: an attacker who captured one signed request sends it again, byte for byte.

The nonce makes every signed request single-use for as long as its `created` passes the
skew check, and the nonce store is on disk, so restarting the bridge opens no window.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import BridgeProcess

from .conftest import (
    RawClient,
    assert_refused,
    events_after,
    initialize_body,
    mark,
    messages_with,
    one_event,
    start_bridge,
    tool_call_body,
    tool_result,
)


def test_exact_replay_of_a_tool_call_is_refused(bridge: BridgeProcess, raw: RawClient) -> None:
    session = raw.open_session("alice")
    captured = raw.build(
        "alice",
        tool_call_body("send_message", {"to": "bob", "content": "pay 100"}),
        session=session,
    )
    start = mark(bridge)
    tool_result(raw.send(captured))

    replayed = raw.send(captured)
    assert_refused(replayed, 401, "replayed_nonce")
    event = one_event(bridge, start, "AuthRejected")
    assert event.data["reason"] == "replayed_nonce"
    assert event.data["agent"] == "alice"
    assert event.data["key_id"] == raw.agent("alice").key_id
    assert event.data["status"] == 401
    # The nonce itself is never written to the log.
    nonce = captured.headers["Signature-Input"].split('nonce="')[1].split('"')[0]
    assert nonce not in str(event.data)
    assert len(messages_with(bridge, "pay 100", start)) == 1  # executed once, not twice


def test_many_replays_all_refused(bridge: BridgeProcess, raw: RawClient) -> None:
    session = raw.open_session("alice")
    captured = raw.build(
        "alice",
        tool_call_body("send_message", {"to": "bob", "content": "pay 5 times"}),
        session=session,
    )
    start = mark(bridge)
    tool_result(raw.send(captured))
    statuses = [raw.send(captured).status_code for _ in range(5)]
    assert statuses == [401] * 5
    rejected = events_after(bridge, start, ["AuthRejected"])
    assert [r.data["reason"] for r in rejected] == ["replayed_nonce"] * 5
    assert len(messages_with(bridge, "pay 5 times", start)) == 1


def test_replay_of_initialize_opens_no_session(bridge: BridgeProcess, raw: RawClient) -> None:
    captured = raw.build("carol", initialize_body())
    first = raw.send(captured)
    assert first.status_code == 200
    start = mark(bridge)
    replayed = raw.send(captured)
    assert_refused(replayed, 401, "replayed_nonce")
    assert "mcp-session-id" not in replayed.headers
    assert one_event(bridge, start, "AuthRejected").data["reason"] == "replayed_nonce"


def test_replay_with_extra_query_is_refused(bridge: BridgeProcess, raw: RawClient) -> None:
    """Changing the request so the nonce looks "new" is impossible (the nonce is signed),
    and adding an unsigned part (a query) is refused too."""
    session = raw.open_session("alice")
    captured = raw.build(
        "alice",
        tool_call_body("send_message", {"to": "bob", "content": "query smuggle"}),
        session=session,
    )
    start = mark(bridge)
    response = raw.http.post("/mcp?again=1", content=captured.body, headers=captured.headers)
    assert_refused(response, 401, "missing_component")
    assert one_event(bridge, start, "AuthRejected").data["reason"] == "missing_component"
    assert messages_with(bridge, "query smuggle", start) == []


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[BridgeProcess]:
    b = start_bridge(tmp_path)
    try:
        yield b
    finally:
        if b.proc is not None:
            b.stop()


def test_replay_after_restart_is_refused(restartable: BridgeProcess) -> None:
    bridge = restartable
    raw = RawClient(bridge)
    try:
        session = raw.open_session("alice")
        tool_call = raw.build(
            "alice",
            tool_call_body("send_message", {"to": "bob", "content": "before restart"}),
            session=session,
        )
        init = raw.build("bob", initialize_body())
        tool_result(raw.send(tool_call))
        assert raw.send(init).status_code == 200
    finally:
        raw.close()

    bridge.stop()
    bridge.start()
    raw = RawClient(bridge)
    try:
        start = mark(bridge)
        # Without a persistent nonce store the initialize would open a session as bob.
        replayed_init = raw.send(init)
        assert_refused(replayed_init, 401, "replayed_nonce")
        assert "mcp-session-id" not in replayed_init.headers
        # The tool call is refused for its nonce, before the (now unknown) session matters.
        assert_refused(raw.send(tool_call), 401, "replayed_nonce")
        rejected = events_after(bridge, start, ["AuthRejected"])
        assert [(r.data["reason"], r.data["agent"]) for r in rejected] == [
            ("replayed_nonce", "bob"),
            ("replayed_nonce", "alice"),
        ]
        assert events_after(bridge, start, ["SessionOpened"]) == []
        assert len(messages_with(bridge, "before restart")) == 1
        # A fresh request after the restart still works.
        assert raw.send(raw.build("bob", initialize_body())).status_code == 200
    finally:
        raw.close()
