"""Fan-out amplification (issue 16.4): one message to a role with many holders.

With `--max-fanout 3`, a message to a role of five holders is refused (nothing written);
a broadcast within the cap is stored once — one MessageSent carrying the content and
naming the recipients — and each holder still gets it; other traffic is unaffected.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import BridgeProcess

from .conftest import Agent, RawClient, call_tool, error_text, events_after, mark, start_bridge


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    b = start_bridge(tmp_path_factory.mktemp("fanout"), "--max-fanout", "3")
    for n in range(5):
        name = f"holder{n}"
        role = ["crowd"] + (["few"] if n < 3 else [])
        status, created = b.admin(
            "POST", "/admin/agents", {"name": name, "roles": role, "capabilities": []}
        )
        assert status == 201, created
        b.agents[name] = Agent(created["agent"], created["key_id"], created["secret"])
    try:
        yield b
    finally:
        if b.proc is not None:
            b.stop()


def test_wide_fan_out_is_refused_and_a_broadcast_is_stored_once(
    bridge: BridgeProcess, raw: RawClient
) -> None:
    start = mark(bridge)
    alice = raw.open_session("alice")
    content = "x" * 10_000
    wide = call_tool(raw, "alice", alice, "send_message", {"to": "role:crowd", "content": content})
    assert "fan-out limit of 3" in error_text(wide)
    assert events_after(bridge, start, ["MessageSent"]) == []
    few = call_tool(raw, "alice", alice, "send_message", {"to": "role:few", "content": content})
    assert [d["agent"] for d in few["structuredContent"]["delivered_to"]] == [
        "holder0",
        "holder1",
        "holder2",
    ]
    [sent] = events_after(bridge, start, ["MessageSent"])
    assert sent.data["recipients"] == ["holder0", "holder1", "holder2"]
    for n in range(3):
        session = raw.open_session(f"holder{n}")
        got = call_tool(raw, f"holder{n}", session, "wait_for_messages", {"timeout_s": 5})
        [message] = got["structuredContent"]["messages"]
        assert message["content"] == content
    # the content is in the store once, not once per recipient
    stored = sum(len(str(r.data)) for r in events_after(bridge, start))
    assert stored < 2 * len(content)
    direct = call_tool(
        raw,
        "carol",
        raw.open_session("carol"),
        "send_message",
        {"to": "bob", "content": "still served"},
    )
    assert not direct.get("isError")
