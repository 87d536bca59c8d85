"""One agent opening session after session must not take the slots of others.

Each agent may hold a bounded number of sessions (`--max-sessions-per-agent`, default 32);
past it, `initialize` is refused with 429 and a message saying what to do, while other
agents still connect. Sessions that never send `notifications/initialized` are sessions
all the same: recorded, counted in /health, and expired when left idle.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import BridgeProcess

from .conftest import RawClient, events_after, initialize_body, jsonrpc_payload, mark, start_bridge


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    b = start_bridge(
        tmp_path_factory.mktemp("capped"),
        "--max-sessions-per-agent",
        "3",
        "--session-idle-timeout",
        "2",
    )
    try:
        yield b
    finally:
        if b.proc is not None:
            b.stop()


def test_per_agent_cap_refuses_the_greedy_agent_only(capped: BridgeProcess, tmp_path: Path) -> None:
    raw = RawClient(capped)
    try:
        held = [raw.post("carol", initialize_body()) for _ in range(3)]
        assert all(r.status_code == 200 for r in held)
        refused = raw.post("carol", initialize_body())
        assert refused.status_code == 429
        error = jsonrpc_payload(refused)["error"]
        assert "3 sessions" in error["message"] and "DELETE" in error["message"]
        assert refused.headers.get("retry-after")
        # the others are not locked out
        assert raw.post("alice", initialize_body()).status_code == 200
        # ending one of carol's sessions frees a slot
        gone = raw.send(
            raw.build("carol", method="DELETE", session=held[0].headers["mcp-session-id"])
        )
        assert gone.status_code == 200
        assert raw.post("carol", initialize_body()).status_code == 200
    finally:
        raw.close()


def test_uninitialized_sessions_are_visible_and_expire(capped: BridgeProcess) -> None:
    raw = RawClient(capped)
    try:
        start = mark(capped)
        before = capped.health()["sessions"].get("2025-11-25", 0)
        sid = raw.post("bob", initialize_body()).headers["mcp-session-id"]  # no `initialized`
        opened = events_after(capped, start, ["SessionOpened"])
        assert [e.data["session_id"] for e in opened] == [sid]
        assert capped.health()["sessions"]["2025-11-25"] == before + 1
        deadline = time.monotonic() + 30  # idle timeout 2 s, checked every few seconds

        def closed_events() -> list:
            found = events_after(capped, start, ["SessionClosed"])
            return [e for e in found if e.data["session_id"] == sid]

        while time.monotonic() < deadline and not closed_events():
            time.sleep(0.25)
        [closed] = closed_events()
        assert closed.data["session_id"] == sid and closed.data["reason"] == "expired"
        late = raw.post("bob", b'{"jsonrpc":"2.0","id":1,"method":"ping"}', session=sid)
        assert late.status_code == 404
    finally:
        raw.close()
