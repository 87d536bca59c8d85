"""Another process holding the database's write lock (a backup tool, an operator's sqlite3
shell): writes are refused with `store_busy` after the busy timeout, not a 500 and not a
hang; `/health` names it; the bridge recovers by itself once the lock is gone."""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.harness import BridgeProcess


def _flag_change(bridge: BridgeProcess, percent: int) -> tuple[int, dict, dict[str, str]]:
    req = urllib.request.Request(
        bridge.url + "/feature_flags",
        data=json.dumps({"rollout_percent": percent}).encode(),
        method="POST",
    )
    req.add_header("Authorization", f"Bearer {bridge.admin_token}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def test_a_store_locked_by_another_process_is_busy_then_recovers(tmp_path: Path) -> None:
    bridge = BridgeProcess(tmp_path)
    bridge.add_agent("alice")
    bridge.start()
    try:
        other = sqlite3.connect(bridge.db, isolation_level=None, timeout=30)
        other.execute("BEGIN IMMEDIATE")
        try:
            started = time.monotonic()
            status, body, headers = _flag_change(bridge, 50)
            assert status == 503 and body["reason"] == "store_busy", body
            assert int(headers["Retry-After"]) >= 1
            assert time.monotonic() - started < 30  # the busy timeout, not a hang
            health = bridge.health()
            assert health["status"] == "degraded" and health["reason"] == "store_busy"
        finally:
            other.execute("ROLLBACK")
            other.close()
        deadline = time.monotonic() + 30
        while bridge.health()["status"] != "ok" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert bridge.health()["status"] == "ok"
        status, body, _ = _flag_change(bridge, 60)
        assert status == 200, body
    finally:
        assert bridge.stop() == 0
