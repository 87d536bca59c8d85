"""Open-request flood (issue 16.3): one agent piling up asks to an offline recipient.

The bridge runs with small caps (`--max-open-per-caller 20 --max-open-per-recipient 30`):
the flooder is refused with a clear quota error once it holds 20 open requests, nothing is
recorded for the refused asks, another asker is still served, and the recipient's first
`wait_for_messages` hands out the other asker's request next to the flood (round-robin
by asker), not after it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import SCHEMA, BridgeProcess

from .conftest import RawClient, call_tool, error_text, events_after, mark, start_bridge

PER_CALLER, PER_RECIPIENT = 20, 30


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    b = start_bridge(
        tmp_path_factory.mktemp("flood"),
        "--max-open-per-caller",
        str(PER_CALLER),
        "--max-open-per-recipient",
        str(PER_RECIPIENT),
        more_agents=("mallory", "mallory2"),
    )
    try:
        yield b
    finally:
        if b.proc is not None:
            b.stop()


def _ask(raw: RawClient, name: str, session: str, message: str) -> dict:
    args = {"to": "bob", "message": message, "schema": SCHEMA, "timeout_s": 3600, "wait": False}
    return call_tool(raw, name, session, "ask", args)


def test_flooder_is_capped_and_others_are_served_first_in_line(
    bridge: BridgeProcess, raw: RawClient
) -> None:
    start = mark(bridge)
    mallory = raw.open_session("mallory")
    for n in range(PER_CALLER):
        assert not _ask(raw, "mallory", mallory, f"flood {n}").get("isError")
    refused = [_ask(raw, "mallory", mallory, f"flood extra {n}") for n in range(5)]
    for result in refused:
        assert "quota: you have 20 open requests" in error_text(result)
    # a second flooding agent fills bob up to the per-recipient cap
    mallory2 = raw.open_session("mallory2")
    for n in range(PER_RECIPIENT - PER_CALLER - 1):
        assert not _ask(raw, "mallory2", mallory2, f"flood2 {n}").get("isError")
    alice = raw.open_session("alice")
    served = _ask(raw, "alice", alice, "a real question")
    assert served["structuredContent"]["status"] == "pending"
    full = _ask(raw, "carol", raw.open_session("carol"), "one too many")
    assert "quota: bob has 30 open requests" in error_text(full)
    created = events_after(bridge, start, ["RequestCreated"])
    assert len(created) == PER_RECIPIENT  # refusals recorded nothing
    # bob's first hand-out of 3 holds one of each asker, alice's included
    bob = raw.open_session("bob")
    got = call_tool(raw, "bob", bob, "wait_for_messages", {"timeout_s": 0, "max": 3})
    senders = sorted(m["from"] for m in got["structuredContent"]["messages"])
    assert senders == ["alice", "mallory", "mallory2"]
    assert bridge.health()["status"] == "ok"
