"""Two `lighthouse serve --database-url` processes on one PostgreSQL store.

They share the store, the key dir and the local agent-secret vault (one working
directory); nonces go to PostgreSQL or, with `--redis-url`, to Redis together with the
per-agent rate limit. What one bridge changes, the other applies within a second.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.attacks.conftest import RawClient, initialize_body
from tests.harness import BridgeProcess, lighthouse
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
