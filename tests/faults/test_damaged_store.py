"""A damaged store is named precisely and never written over.

A tail cut below the checkpoint file kept outside the database (what a lost or truncated
WAL leaves), and a lost checkpoint file: `serve` refuses to start with the cause and exit
code 1 (not a hang, not a silent start), `verify` names the damage, and only
`repair --accept-damage` lets a writer on — which then never reuses a position a signed
checkpoint covers.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.harness import BridgeProcess, lighthouse


def _serve_once(bridge: BridgeProcess) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "bridge.cli", "serve", "--port", str(bridge.port)]
    return subprocess.run(
        [*cmd, "--db", str(bridge.db)],
        cwd=bridge.workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _bridge_with_history(tmp_path: Path, agents: int = 6) -> BridgeProcess:
    bridge = BridgeProcess(tmp_path)
    for i in range(agents):
        bridge.add_agent(f"agent{i}")
    bridge.start()
    assert bridge.stop() == 0  # a clean stop signs a checkpoint over the whole log
    return bridge


def _cut_tail(db: Path, keep: int) -> None:
    """The database as a lost WAL leaves it: rows, checkpoints and sequence after `keep` gone."""
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER events_no_delete")
    conn.execute("DROP TRIGGER checkpoints_no_delete")
    conn.execute("DELETE FROM events WHERE position > ?", (keep,))
    conn.execute("DELETE FROM checkpoints")
    conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'events'", (keep,))
    conn.commit()
    conn.close()


def _positions(db: Path) -> list[int]:
    conn = sqlite3.connect(db)
    try:
        return [r[0] for r in conn.execute("SELECT position FROM events ORDER BY position")]
    finally:
        conn.close()


def test_serve_refuses_a_cut_store_until_damage_is_accepted(tmp_path: Path) -> None:
    bridge = _bridge_with_history(tmp_path)
    head = max(_positions(bridge.db))
    _cut_tail(bridge.db, 4)

    refused = _serve_once(bridge)
    assert refused.returncode == 1
    assert f"covers {head} events but the store ends at 4" in refused.stderr
    assert "repair --accept-damage" in refused.stderr and "Traceback" not in refused.stderr
    assert _positions(bridge.db) == [1, 2, 3, 4]  # nothing written

    verified = lighthouse("verify", "--db", str(bridge.db), "--json", cwd=tmp_path, check=False)
    report = json.loads(verified.stdout)
    assert verified.returncode == 1
    assert (5, "truncated") in [(p["position"], p["kind"]) for p in report["problems"]]

    lighthouse("repair", "--db", str(bridge.db), "--accept-damage", cwd=tmp_path)
    after = _positions(bridge.db)
    assert after[:4] == [1, 2, 3, 4] and min(after[4:]) > head  # no covered position reused
    bridge.start()  # accepted: serve starts, and what it writes continues past the cut
    bridge.add_agent("late")
    assert bridge.stop() == 0
    assert min(p for p in _positions(bridge.db) if p > 4) > head


def test_serve_refuses_a_store_whose_checkpoint_file_is_lost(tmp_path: Path) -> None:
    bridge = _bridge_with_history(tmp_path, agents=2)
    checkpoints = tmp_path / "lighthouse.db.checkpoints"
    checkpoints.unlink()

    refused = _serve_once(bridge)
    assert refused.returncode == 1
    assert "checkpoint file" in refused.stderr and "is missing" in refused.stderr

    verified = lighthouse("verify", "--db", str(bridge.db), cwd=tmp_path, check=False)
    assert verified.returncode == 1
    assert "checkpoint_file_missing" in verified.stdout

    repaired = lighthouse("repair", "--db", str(bridge.db), "--accept-damage", cwd=tmp_path)
    assert "accepted" in repaired.stdout
    assert checkpoints.exists()
    bridge.start()
    assert bridge.health()["status"] == "ok"
    assert bridge.stop() == 0
    assert lighthouse("verify", "--db", str(bridge.db), cwd=tmp_path).returncode == 0
