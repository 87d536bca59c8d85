"""Two `lighthouse serve --database-url` processes on one PostgreSQL store.

They share the store and its secret vault, and the key dir (one working directory;
`tests/e2e/test_shared_vault.py` runs bridges with separate ones); nonces go to
PostgreSQL or, with `--redis-url`, to Redis together with the
per-agent rate limit. What one bridge changes, the other applies within a second — an
agent forgotten on one is erased from what the other hands out.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.attacks.conftest import RawClient, initialize_body
from tests.harness import BridgeProcess, lighthouse, wait_until
from tests.pgtools import drop_created, fresh_database

REDIS_URL = os.environ.get("LIGHTHOUSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="module", autouse=True)
def _drop_databases() -> Iterator[None]:
    yield
    drop_created()


@pytest.fixture(scope="module", params=["postgres-nonces", "redis"])
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[BridgeProcess]]:
    tmp_path = tmp_path_factory.mktemp("pair")
    url = fresh_database("e2e")
    extra: tuple[str, ...] = ("--database-url", url, "--rate", "1", "--burst", "6")
    if request.param == "redis":
        extra += ("--redis-url", REDIS_URL, "--redis-prefix", f"lh-test-{uuid.uuid4().hex}:")
    first = BridgeProcess(tmp_path, extra_args=extra).start()  # creates identity and keys
    second = BridgeProcess(tmp_path, extra_args=extra)
    try:
        second.start()
        yield [first, second]
    finally:
        for bridge in (first, second):
            if bridge.proc is not None:
                bridge.stop()


def _until(predicate: object, timeout: float) -> float:
    """Seconds until `predicate()` held (AssertionError after `timeout`)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.01)
    raise AssertionError(f"not seen within {timeout} s")


def test_changes_on_one_bridge_take_effect_on_the_other(pair: list[BridgeProcess]) -> None:
    a, b = pair
    status, _ = a.admin("POST", "/feature_flags", {"rollout_percent": 37})
    assert status == 200
    took = _until(lambda: b.health()["flags"]["rollout_percent"] == 37, timeout=5)
    assert took < 1.0, f"flag change reached the other bridge after {took:.2f} s"

    status, created = a.admin("POST", "/admin/agents", {"name": "dora"})
    assert status == 201
    status, _ = a.admin("POST", "/admin/agents/dora/revoke", {})
    assert status == 200

    def revoked_on_b() -> bool:
        _, listed = b.admin("GET", "/admin/agents")
        return any(x["agent"] == "dora" and x["revoked"] for x in listed["agents"])

    assert _until(revoked_on_b, timeout=5) < 1.0
    assert created["key_id"]


def test_replay_and_rate_limit_across_bridges(pair: list[BridgeProcess]) -> None:
    a, b = pair
    status, created = a.admin("POST", "/admin/agents", {"name": "erin"})
    assert status == 201
    from tests.harness import Agent

    for bridge in pair:
        bridge.agents["erin"] = Agent(created["agent"], created["key_id"], created["secret"])
    _until(
        lambda: any(x["agent"] == "erin" for x in b.admin("GET", "/admin/agents")[1]["agents"]), 5
    )
    raw_a, raw_b = RawClient(a), RawClient(b)
    try:
        captured = raw_a.build("erin", initialize_body())
        assert raw_a.send(captured).status_code == 200
        replayed = raw_b.send(captured)  # the same signed request, to the other bridge
        assert replayed.status_code == 401, replayed.text
        assert "nonce" in replayed.text.lower() or "replay" in replayed.text.lower()
        if "--redis-url" in a.extra_args:
            # burst 6 at 1/s is one budget: 2 spent above (a success and a refused
            # replay count too), then alternate bridges until the shared limit answers.
            codes = [
                (raw_a if i % 2 else raw_b).post("erin", initialize_body()).status_code
                for i in range(6)
            ]
            assert 429 in codes and codes.count(200) <= 5, codes
    finally:
        raw_a.close()
        raw_b.close()


def test_verify_against_the_shared_store(pair: list[BridgeProcess]) -> None:
    a, b = pair
    for i, bridge in enumerate(pair * 3):
        status, _ = bridge.admin("POST", "/admin/agents", {"name": f"agent{i}"})
        assert status == 201
    url = a.extra_args[a.extra_args.index("--database-url") + 1]
    result = lighthouse("verify", "--database-url", url, cwd=a.workdir, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "chain intact" in result.stdout
    assert b.health()["store"]["position"] == a.health()["store"]["position"]


async def test_forget_on_one_bridge_erases_what_the_other_hands_out(tmp_path: Path) -> None:
    """alice's note, question and answer sit decrypted in bridge 2's projections; she is
    forgotten through bridge 1; bridge 2's tools hand out [erased] within a second."""
    from tests.e2e.test_contents import NOTE, erased_view, queue_and_answer

    extra = ("--database-url", fresh_database("forget"))
    first = BridgeProcess(tmp_path, extra_args=extra).start()
    second = BridgeProcess(tmp_path, extra_args=extra)
    try:
        second.start()
        for name in ("alice", "bob"):
            first.add_agent(name)
        second.agents.update(first.agents)
        await asyncio.sleep(0.5)  # bridge 2 follows the registrations
        async with second.client("bob") as bob:
            async with first.client("alice") as alice:
                answered, _ = await queue_and_answer(bob, alice)

            async def held_on_second() -> list[dict]:
                got = await bob.call_tool("wait_for_messages", {"timeout_s": 0, "ack": []})
                return got.structured_content["messages"]

            async def holds_note() -> bool:  # decrypted in bridge 2's memory
                return NOTE in json.dumps(await held_on_second())

            await wait_until(holds_note, timeout=5)  # what the forget must reach
            forget = ("agents", "forget", "alice", "--reason", "gdpr art. 17", "--force")
            lighthouse(*forget, cwd=tmp_path, env=first.env)
            started = time.monotonic()

            async def erased_on_second() -> bool:
                answer = await bob.call_tool("get_request", {"request_id": answered})
                return erased_view(await held_on_second(), answer.structured_content)

            await wait_until(erased_on_second, timeout=5, interval=0.01)
            took = time.monotonic() - started
            assert took < 1.0, f"bridge 2 handed out alice's contents {took:.2f} s after"
    finally:
        for bridge in (first, second):
            if bridge.proc is not None:
                bridge.stop()
