"""A vault row damaged under a running bridge: the agent is told it is the server's fault
(500 with a reason, no trace), the operator reads which key in the log, nobody else is hit."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.attacks.conftest import RawClient, initialize_body
from tests.harness import BridgeProcess


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
