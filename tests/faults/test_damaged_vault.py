"""A vault row damaged under a running bridge: the agent is told it is the server's fault
(500 with a reason, no trace), the operator reads which key in the log, nobody else is hit."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.attacks.conftest import Agent, RawClient, initialize_body
from tests.harness import BridgeProcess, lighthouse
from tests.pgtools import drop_created, fresh_database


@pytest.fixture(scope="module", autouse=True)
def _drop_databases() -> Iterator[None]:
    yield
    drop_created()


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.1)


def test_a_secret_that_no_longer_decrypts_is_a_500_with_its_reason(tmp_path: Path) -> None:
    bridge = BridgeProcess(tmp_path)
    victim = bridge.add_agent("alice")
    bridge.add_agent("bob")
    bridge.start()  # the start-up check opens every row: all sound now
    raw = RawClient(bridge)
    try:
        db = sqlite3.connect(bridge.db)
        (sealed,) = db.execute(
            "SELECT ciphertext FROM key_vault WHERE key_id = ?", (victim.key_id,)
        ).fetchone()
        damaged = bytes([sealed[0] ^ 1]) + sealed[1:]  # the AEAD tag no longer matches
        db.execute("UPDATE key_vault SET ciphertext = ? WHERE key_id = ?", (damaged, victim.key_id))
        db.commit()
        db.close()
        response = raw.post("alice", initialize_body())
        assert response.status_code == 500
        assert response.json() == {"error": "internal", "reason": "secret_vault_damaged"}
        assert "Traceback" not in response.text
        assert raw.post("bob", initialize_body()).status_code == 200  # only alice's row
    finally:
        raw.close()
        assert bridge.stop() == 0
    log = bridge.log_path.read_text()
    assert f"secret of {victim.key_id} does not decrypt" in log
    assert victim.secret not in log


def test_a_secret_missing_from_the_shared_vault_is_an_unknown_key(tmp_path: Path) -> None:
    """A key the log issued whose row is gone from the PostgreSQL vault (deleted by hand, a
    restore that lost it): the secret is looked for off the event loop, found missing, and
    the request refused as signed with an unknown key — 401, not a 500."""
    url = fresh_database("vault_missing_row")
    bridge = BridgeProcess(tmp_path, extra_args=("--database-url", url)).start()
    raw = RawClient(bridge)
    try:
        status, created = bridge.admin("POST", "/admin/agents", {"name": "alice"})
        assert status == 201
        bridge.agents["alice"] = Agent(created["agent"], created["key_id"], created["secret"])
        # bob comes from the CLI: this bridge has never read (cached) his secret.
        added = json.loads(
            lighthouse("agents", "add", "bob", "--database-url", url, cwd=tmp_path).stdout
        )
        bridge.agents["bob"] = Agent(added["agent"], added["key_id"], added["secret"])
        wait_for(
            lambda: "bob" in {a["agent"] for a in bridge.admin("GET", "/admin/agents")[1]["agents"]}
        )
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DELETE FROM key_vault WHERE key_id = %s", (added["key_id"],))
        refused = raw.post("bob", initialize_body())
        assert refused.status_code == 401, refused.text
        assert refused.json()["reason"] == "invalid_signature"  # unknown keys are not told apart
        assert raw.post("alice", initialize_body()).status_code == 200
    finally:
        raw.close()
        assert bridge.stop() == 0
    assert "Traceback" not in bridge.log_path.read_text()
