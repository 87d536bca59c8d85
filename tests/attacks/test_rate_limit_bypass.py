"""Rate-limit bypass: bursts, key rotation and many sessions do not buy more requests.

The bridge runs with `--rate 0.2 --burst 10`: ten requests at once, then one every five
seconds. The slow refill keeps the bounds below independent of how slow the machine is:
whatever the scheduling, an agent gets at most ``10 + 0.2 * elapsed`` requests through.
Each test uses its own agent (buckets are per agent).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from security import decode_secret
from tests.harness import BridgeProcess

from .conftest import (
    RawClient,
    Signed,
    assert_refused,
    events_after,
    initialize_body,
    mark,
    start_bridge,
    tool_call_body,
)

RATE, BURST = 0.2, 10


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    b = start_bridge(
        tmp_path_factory.mktemp("ratelimit"),
        "--rate",
        str(RATE),
        "--burst",
        str(BURST),
        more_agents=("burster", "rotor", "multi", "victim"),
    )
    try:
        yield b
    finally:
        if b.proc is not None:
            b.stop()


async def _fire(bridge: BridgeProcess, requests: list[Signed]) -> list[httpx2.Response]:
    """Send all requests at once (one connection each)."""
    limits = httpx2.Limits(max_connections=len(requests))
    async with httpx2.AsyncClient(base_url=bridge.url, timeout=60, limits=limits) as http:
        return await asyncio.gather(
            *(http.request(r.method, r.path, content=r.body, headers=r.headers) for r in requests)
        )


def _messages(bridge: BridgeProcess, start: int, prefix: str) -> int:
    return sum(
        1
        for m in events_after(bridge, start, ["MessageSent"])
        if str(m.data.get("content", "")).startswith(prefix)
    )


def _limited(bridge: BridgeProcess, start: int, agent: str) -> list[dict[str, Any]]:
    return [
        r.data for r in events_after(bridge, start, ["RateLimited"]) if r.data.get("agent") == agent
    ]


def _check_429(response: httpx2.Response) -> None:
    assert_refused(response, 429, "rate_limited")
    # GCRA: a denied request may go as soon as one emission interval (1/rate) has passed.
    assert 1 <= int(response.headers["Retry-After"]) <= math.ceil(1 / RATE)
    assert response.headers["RateLimit-Limit"] == str(BURST)
    assert response.headers["RateLimit-Remaining"] == "0"


def _ceiling(elapsed: float) -> int:
    return BURST + math.ceil(RATE * elapsed)


async def test_concurrent_burst_beyond_the_limit(bridge: BridgeProcess, raw: RawClient) -> None:
    began = time.monotonic()
    session = raw.open_session("burster")  # 2 requests of the bucket
    requests = [
        raw.build(
            "burster",
            tool_call_body("send_message", {"to": "bob", "content": f"burst-{i}"}),
            session=session,
        )
        for i in range(30)
    ]
    start = mark(bridge)
    responses = await _fire(bridge, requests)
    elapsed = time.monotonic() - began
    allowed = [r for r in responses if r.status_code == 200]
    limited = [r for r in responses if r.status_code == 429]
    assert len(allowed) + len(limited) == 30, sorted({r.status_code for r in responses})
    assert BURST - 2 <= len(allowed) <= _ceiling(elapsed) - 2, (len(allowed), elapsed)
    for response in limited:
        _check_429(response)
    # What got through ran exactly once each; what was refused did not run.
    assert _messages(bridge, start, "burst-") == len(allowed)
    recorded = _limited(bridge, start, "burster")
    assert len(recorded) == len(limited)
    assert all(e["scope"] == "agent" and e["retry_after"] > 0 for e in recorded)


async def test_rotating_keys_does_not_reset_the_bucket(
    bridge: BridgeProcess, raw: RawClient
) -> None:
    session = raw.open_session("rotor")
    drain = [
        raw.build(
            "rotor",
            tool_call_body("send_message", {"to": "bob", "content": f"drain-{i}"}),
            session=session,
        )
        for i in range(BURST + 5)
    ]
    assert any(r.status_code == 429 for r in await _fire(bridge, drain))  # bucket empty

    status, rotated = bridge.admin("POST", "/admin/agents/rotor/rotate", {})
    assert status == 200
    began = time.monotonic()
    new_key, new_secret = rotated["key_id"], decode_secret(rotated["secret"])
    start = mark(bridge)
    after = [
        raw.build(
            "rotor",
            tool_call_body("send_message", {"to": "bob", "content": f"newkey-{i}"}),
            session=session,
            key_id=new_key,
            secret=new_secret,
        )
        for i in range(5)
    ]
    responses = await _fire(bridge, after)
    elapsed = time.monotonic() - began
    allowed = sum(1 for r in responses if r.status_code == 200)
    # A fresh bucket would let all 5 through; the shared one only what refilled since.
    assert allowed <= 1 + math.ceil(RATE * elapsed), (allowed, elapsed)
    for response in responses:
        if response.status_code != 200:
            _check_429(response)
    assert _messages(bridge, start, "newkey-") == allowed
    assert len(_limited(bridge, start, "rotor")) == 5 - allowed
    assert events_after(bridge, start, ["AuthRejected"]) == []  # the new key itself is fine


async def test_many_sessions_do_not_multiply_the_limit(
    bridge: BridgeProcess, raw: RawClient
) -> None:
    began = time.monotonic()
    sessions = [raw.open_session("multi") for _ in range(3)]  # 6 requests of the bucket
    requests = [
        raw.build(
            "multi",
            tool_call_body("send_message", {"to": "bob", "content": f"multi-{s}-{i}"}),
            session=session,
        )
        for s, session in enumerate(sessions)
        for i in range(5)
    ]
    start = mark(bridge)
    responses = await _fire(bridge, requests)
    elapsed = time.monotonic() - began
    allowed = sum(1 for r in responses if r.status_code == 200)
    # Per-session buckets would allow all 15.
    assert allowed <= _ceiling(elapsed) - 6, (allowed, elapsed)
    assert sum(1 for r in responses if r.status_code == 429) == 15 - allowed
    assert _messages(bridge, start, "multi-") == allowed
    assert len(_limited(bridge, start, "multi")) == 15 - allowed


async def test_forged_requests_cannot_exhaust_a_victims_bucket(
    bridge: BridgeProcess, raw: RawClient
) -> None:
    """The per-agent limit is counted after the signature verified, so an attacker who
    knows only a key id cannot lock its agent out."""
    victim = raw.agent("victim")
    forged = [
        raw.build("victim", initialize_body(), key_id=victim.key_id, secret=bytes(32))
        for _ in range(3 * BURST)
    ]
    start = mark(bridge)
    assert {r.status_code for r in await _fire(bridge, forged)} == {401}
    assert _limited(bridge, start, "victim") == []
    honest = [raw.build("victim", initialize_body()) for _ in range(BURST)]
    assert [r.status_code for r in await _fire(bridge, honest)] == [200] * BURST


def test_other_agents_are_not_affected(bridge: BridgeProcess, raw: RawClient) -> None:
    """Control: buckets are per agent; bursts above did not throttle bob."""
    start = mark(bridge)
    response = raw.post("bob", initialize_body())
    assert response.status_code == 200
    assert _limited(bridge, start, "bob") == []
