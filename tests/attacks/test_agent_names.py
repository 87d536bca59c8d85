"""Agent names (issue 16.11): `bob\\n` is not `bob`, and `Bob` may not sit beside `bob`.

`re.match` with `$` accepted a trailing newline; names that differ only by case read as the
same agent in every table and log line. Both are refused, nothing is recorded, and the
existing agent keeps working.
"""

from __future__ import annotations

import pytest

from tests.harness import BridgeProcess

from .conftest import RawClient, initialize_body, mark, side_effects


@pytest.mark.parametrize("name", ["bob\n", "alice\n", "BOB", "Alice", "carol\r", "dave\x1b[2J"])
def test_lookalike_names_are_refused(bridge: BridgeProcess, raw: RawClient, name: str) -> None:
    start = mark(bridge)
    status, body = bridge.admin("POST", "/admin/agents", {"name": name})
    assert status == 409, (status, body)
    assert body["error"] == "agent_error" and "secret" not in body
    assert side_effects(bridge, start) == []
    _, listed = bridge.admin("GET", "/admin/agents")
    assert name not in [a["agent"] for a in listed["agents"]]
    assert raw.post("bob", initialize_body()).status_code == 200


def test_case_message_names_the_existing_agent(bridge: BridgeProcess) -> None:
    status, body = bridge.admin("POST", "/admin/agents", {"name": "Bob"})
    assert status == 409 and "'bob'" in body["message"] and "case" in body["message"]
