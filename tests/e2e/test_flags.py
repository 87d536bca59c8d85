"""Operators' switch: flags over the admin API, fallback causes, drain — real processes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from mcp_types import ElicitResult

from tests.harness import SCHEMA, BridgeProcess, answer_next_request, read_events, wait_until


async def _hang(ctx: Any, params: Any) -> ElicitResult:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


async def _answer(ctx: Any, params: Any) -> ElicitResult:
    return ElicitResult(action="accept", content={"answer": "pushed"})


def _ask(client: Any, timeout_s: float = 20) -> Any:
    return client.call_tool(
        "ask", {"to": "bob", "message": "q", "schema": SCHEMA, "timeout_s": timeout_s}
    )


async def _answer_from_mailbox(bridge: BridgeProcess, text: str) -> str:
    async with bridge.client("bob") as bob:
        return await answer_next_request(bob, text)


def test_flag_changes_are_validated_versioned_and_recorded(bridge: BridgeProcess) -> None:
    status, body = bridge.admin("GET", "/feature_flags")
    assert status == 200 and body["elicitation_enabled"] is True and body["version"] == 0
    for bad, field in [
        ({"rollout_percent": 101}, "rollout_percent"),
        ({"rollout_percent": "50"}, "rollout_percent"),
        ({"elicitation_enabled": "no"}, "elicitation_enabled"),
        ({"colour": "red"}, "colour"),
        ({"overrides": {"bob": "yes"}}, "overrides.bob"),
    ]:
        status, body = bridge.admin("POST", "/feature_flags", bad)
        assert status == 400 and body["field"] == field, (bad, body)
    status, body = bridge.admin(
        "POST",
        "/feature_flags",
        {"rollout_percent": 30, "reason": "canary"},
        headers={"If-Match": "0", "X-Lighthouse-Operator": "ops-ann"},
    )
    assert status == 200 and body["rollout_percent"] == 30 and body["version"] == 1
    stale, body = bridge.admin(
        "POST", "/feature_flags", {"rollout_percent": 60}, headers={"If-Match": "0"}
    )
    assert stale == 409
    assert bridge.health()["flags"]["rollout_percent"] == 30
    changes = asyncio.run(read_events(bridge.db, ["FlagChanged"]))
    assert len(changes) == 1
    assert changes[0].actor == "ops-ann" and changes[0].data["reason"] == "canary"
    assert changes[0].data["old"]["rollout_percent"] == 100


async def test_kill_switch_routes_new_asks_to_legacy_without_restart(
    bridge: BridgeProcess,
) -> None:
    async with (
        bridge.client("bob", elicitation_callback=_answer) as bob,
        bridge.client("alice") as alice,
    ):
        first = (await _ask(alice)).structured_content
        assert first["path"] == "elicitation"
        assert bridge.admin("POST", "/feature_flags", {"elicitation_enabled": False})[0] == 200
        asking = asyncio.create_task(_ask(alice))
        await answer_next_request(bob, "by mail")
        second = (await asking).structured_content
    assert second["path"] == "legacy" and second["content"] == {"answer": "by mail"}
    [fell] = await read_events(bridge.db, ["RequestFellBack"])
    assert fell.data["cause"] == "flag_off"


async def test_per_agent_override_excludes_one_agent(bridge: BridgeProcess) -> None:
    bridge.admin("POST", "/feature_flags", {"overrides": {"bob": False}})
    async with (
        bridge.client("bob", elicitation_callback=_answer) as _,
        bridge.client("alice") as alice,
    ):
        asking = asyncio.create_task(_ask(alice))
        request_id = await _answer_from_mailbox(bridge, "overridden")
        result = (await asking).structured_content
    assert result["request_id"] == request_id and result["path"] == "legacy"


async def test_forced_kill_switch_moves_in_flight_elicitations(bridge: BridgeProcess) -> None:
    """Nothing lost, at most one answer: the pending elicitation falls back; bob answers
    from his mailbox; alice gets that answer."""
    async with (
        bridge.client("bob", elicitation_callback=_hang),
        bridge.client("alice") as alice,
    ):
        asking = asyncio.create_task(_ask(alice, timeout_s=30))
        await wait_until(lambda: _delivered(bridge), timeout=15)
        status, _ = bridge.admin(
            "POST", "/feature_flags", {"elicitation_enabled": False, "force": True}
        )
        assert status == 200
        await _answer_from_mailbox(bridge, "after kill switch")
        result = (await asking).structured_content
    assert result["content"] == {"answer": "after kill switch"} and result["path"] == "legacy"
    [fell] = await read_events(bridge.db, ["RequestFellBack"])
    assert fell.data["cause"] == "kill_switch"
    assert len(await read_events(bridge.db, ["RequestAnswered"])) == 1


async def _delivered(bridge: BridgeProcess) -> list[Any]:
    return await read_events(bridge.db, ["RequestDelivered"])


async def test_drain_waits_then_moves_the_rest(bridge: BridgeProcess) -> None:
    async with (
        bridge.client("bob", elicitation_callback=_hang),
        bridge.client("alice") as alice,
    ):
        asking = asyncio.create_task(_ask(alice, timeout_s=30))
        await wait_until(lambda: _delivered(bridge), timeout=15)
        status, report = await asyncio.to_thread(
            bridge.admin, "POST", "/admin/drain", {"timeout": 0.5}
        )
        assert status == 200
        assert report == {
            "in_flight_at_start": 1,
            "finished": 0,
            "moved_to_legacy": 1,
            "draining": True,
        }
        assert bridge.health()["status"] == "draining"
        await _answer_from_mailbox(bridge, "drained")
        assert (await asking).structured_content["content"] == {"answer": "drained"}
    types = [r.type for r in await read_events(bridge.db)]
    assert "DrainStarted" in types and "DrainFinished" in types
    [fell] = await read_events(bridge.db, ["RequestFellBack"])
    assert fell.data["cause"] == "drain"


@pytest.mark.parametrize("extra", [("--no-elicitation",)])
def test_cli_flags_show_and_set(tmp_path: Any, extra: tuple[str, ...]) -> None:
    from tests.harness import lighthouse

    b = BridgeProcess(tmp_path, extra_args=extra)
    b.add_agent("alice")
    b.start()
    try:
        shown = lighthouse("flags", "show", "--json", cwd=tmp_path, env=b.env)
        assert json.loads(shown.stdout)["elicitation_enabled"] is False
        table = lighthouse("flags", "show", cwd=tmp_path, env=b.env).stdout
        assert table.splitlines()[1].split() == ["elicitation", "DISABLED"]
        lighthouse(
            "flags",
            "set",
            "--enable",
            "--rollout",
            "25",
            "--override",
            "alice=off",
            "--reason",
            "ramp",
            cwd=tmp_path,
            env=b.env,
        )
        state = b.health()["flags"]
        assert (state["elicitation_enabled"], state["rollout_percent"]) == (True, 25)
        assert "overrides" not in state and "changed_by" not in state  # admin API only
        status, full = b.admin("GET", "/feature_flags")
        assert status == 200 and full["overrides"] == {"alice": False}
        bad = lighthouse("flags", "set", "--rollout", "250", cwd=tmp_path, env=b.env, check=False)
        assert bad.returncode != 0 and "rollout_percent" in bad.stderr
        assert "Traceback" not in bad.stderr
    finally:
        b.stop()
