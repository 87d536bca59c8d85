"""bridge.mcp.state: requestState is sealed, bound, short-lived and single-use."""

from __future__ import annotations

import base64
import time

import pytest

from bridge.mcp.state import StateRejected, StateSealer

ARGS = {"timeout_s": 5}


def _reason(sealer: StateSealer, token: object, agent: str = "bob", args: dict = ARGS) -> str:
    with pytest.raises(StateRejected) as caught:
        sealer.open(token, agent, "wait_for_messages", args)
    return caught.value.reason


def test_round_trip_once() -> None:
    sealer = StateSealer(b"k" * 32)
    token = sealer.seal("bob", "wait_for_messages", ARGS, {"offered": ["r1"]})
    assert sealer.open(token, "bob", "wait_for_messages", ARGS) == {"offered": ["r1"]}
    assert _reason(sealer, token) == "replayed"


def test_contents_are_not_readable() -> None:
    token = StateSealer(b"k" * 32).seal("bob", "wait_for_messages", ARGS, {"offered": ["r1"]})
    raw = base64.urlsafe_b64decode(token[4:] + "==")
    assert b"r1" not in raw and b"bob" not in raw


def test_refusals_name_their_reason() -> None:
    sealer = StateSealer(b"k" * 32)
    token = sealer.seal("bob", "wait_for_messages", ARGS, {})
    assert _reason(sealer, "garbage") == "malformed"
    assert _reason(sealer, 42) == "malformed"
    assert _reason(sealer, "lh1.!!!") == "malformed"
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    assert _reason(sealer, flipped) == "tampered"
    assert _reason(StateSealer(b"x" * 32), token) == "tampered"  # another key
    assert _reason(sealer, token, agent="mallory") == "foreign"
    assert _reason(sealer, token, args={"timeout_s": 6}) == "wrong_call"
    # none of these used it up: the rightful retry still works
    assert sealer.open(token, "bob", "wait_for_messages", ARGS) == {}


def test_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    sealer = StateSealer(b"k" * 32, ttl_s=10)
    token = sealer.seal("bob", "wait_for_messages", ARGS, {})
    later = time.time() + 11
    monkeypatch.setattr(time, "time", lambda: later)
    assert _reason(sealer, token) == "expired"


def test_used_ids_are_forgotten_after_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory for replay refusal is bounded by what has not expired yet."""
    sealer = StateSealer(b"k" * 32, ttl_s=10)
    for _ in range(1100):
        sealer.open(sealer.seal("bob", "w", {}, {}), "bob", "w", {})
    old = set(sealer._used)
    later = time.time() + 11
    monkeypatch.setattr(time, "time", lambda: later)
    for _ in range(1000):
        sealer.open(sealer.seal("bob", "w", {}, {}), "bob", "w", {})
    assert len(sealer._used) == 1000 and not old & set(sealer._used)
