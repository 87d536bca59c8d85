"""bridge.mcp.state: requestState is sealed, bound, short-lived and single-use."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import pytest

from bridge.mcp.state import SharedUsedStates, StateRejected, StateSealer

ARGS = {"timeout_s": 5}


def _open(sealer: StateSealer, token: object, agent: str = "bob", args: Any = ARGS) -> Any:
    return asyncio.run(sealer.open(token, agent, "wait_for_messages", args))


def _reason(sealer: StateSealer, token: object, agent: str = "bob", args: dict = ARGS) -> str:
    with pytest.raises(StateRejected) as caught:
        _open(sealer, token, agent, args)
    return caught.value.reason


def test_round_trip_once() -> None:
    sealer = StateSealer(b"k" * 32)
    token = sealer.seal("bob", "wait_for_messages", ARGS, {"offered": ["r1"]})
    assert _open(sealer, token) == {"offered": ["r1"]}
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
    assert _open(sealer, token) == {}


def test_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    sealer = StateSealer(b"k" * 32, ttl_s=10)
    token = sealer.seal("bob", "wait_for_messages", ARGS, {})
    later = time.time() + 11
    monkeypatch.setattr(time, "time", lambda: later)
    assert _reason(sealer, token) == "expired"


def test_used_ids_are_forgotten_after_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory for replay refusal is bounded by what has not expired yet."""
    sealer = StateSealer(b"k" * 32, ttl_s=10)
    used = sealer._used._used  # type: ignore[attr-defined]

    async def use(n: int) -> None:
        for _ in range(n):
            await sealer.open(sealer.seal("bob", "w", {}, {}), "bob", "w", {})

    asyncio.run(use(1100))
    old = set(used)
    later = time.time() + 11
    monkeypatch.setattr(time, "time", lambda: later)
    asyncio.run(use(1000))
    assert len(used) == 1000 and not old & set(used)


def test_single_use_holds_across_bridges() -> None:
    """Two bridges (two sealers, one key) sharing one PostgreSQL nonce table: a state used on
    one is refused on the other — a 2026-07-28 retry may land on any bridge."""
    from security.shared import PostgresNonceStore
    from tests.pgtools import drop_created, fresh_database

    url = fresh_database("state")

    async def run() -> tuple[str, str]:
        first, second = await PostgresNonceStore.open(url), await PostgresNonceStore.open(url)
        try:
            a = StateSealer(b"k" * 32, used=SharedUsedStates(first))
            b = StateSealer(b"k" * 32, used=SharedUsedStates(second))
            token = a.seal("bob", "wait_for_messages", ARGS, {"offered": ["r1"]})
            assert await b.open(token, "bob", "wait_for_messages", ARGS) == {"offered": ["r1"]}
            reasons = []
            for sealer in (a, b):
                with pytest.raises(StateRejected) as caught:
                    await sealer.open(token, "bob", "wait_for_messages", ARGS)
                reasons.append(caught.value.reason)
            return reasons[0], reasons[1]
        finally:
            await first.close()
            await second.close()

    try:
        assert asyncio.run(run()) == ("replayed", "replayed")
    finally:
        drop_created()
