"""A full disk under a running bridge: reported, survived, and recovered from by itself.

The store sits on a 12 MiB tmpfs that a filler file then fills. What the operator sees:
`/health` says `degraded` with `store_full`, the store metrics count the failures, admin
writes answer JSON 503 with `Retry-After`; what agents see: JSON 503 with the reason, never
a plain-text 500. Deleting the filler brings everything back without a restart, and the
log verifies afterwards.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import httpx2

from security.client import LighthouseAuth
from tests.faults.conftest import StoreElsewhere, fill
from tests.harness import lighthouse

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "fault-probe", "version": "1"},
    },
}


def _admin_post(bridge: StoreElsewhere, path: str, body: Any) -> tuple[int, Any, dict[str, str]]:
    req = urllib.request.Request(bridge.url + path, data=json.dumps(body).encode(), method="POST")
    req.add_header("Authorization", f"Bearer {bridge.admin_token}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null"), dict(exc.headers)


def _flag_change(bridge: StoreElsewhere, i: int) -> tuple[int, Any, dict[str, str]]:
    return _admin_post(
        bridge, "/feature_flags", {"rollout_percent": i % 100, "reason": f"fill {i} " + "x" * 3000}
    )


def _health(bridge: StoreElsewhere) -> dict[str, Any]:
    return bridge.health()


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} not seen within {timeout} s")


def test_full_disk_is_reported_survived_and_recovered(tmp_path: Path, small_disk: Path) -> None:
    bridge = StoreElsewhere(tmp_path, store_dir=small_disk)
    alice = bridge.add_agent("alice")
    bridge.start()
    try:
        assert _health(bridge)["status"] == "ok"
        filler = fill(small_disk)

        # Operator: admin writes go on until the store cannot grow; then a JSON 503.
        for i in range(2000):
            status, body, headers = _flag_change(bridge, i)
            if status != 200:
                break
        assert status == 503, (status, body)
        assert body["error"] == "unavailable" and body["reason"] == "store_full", body
        assert int(headers["Retry-After"]) >= 1
        health = _health(bridge)
        assert health["status"] == "degraded" and health["reason"] == "store_full", health
        assert any(f["reason"] == "store_full" for f in health["store"]["failing"])
        with urllib.request.urlopen(bridge.url + "/metrics", timeout=5) as r:
            metrics = r.read().decode()
        assert "lighthouse_store_degraded 1.0" in metrics
        assert 'lighthouse_store_failures_total{component="append",reason="store_full"}' in metrics

        # Agents: signed requests claim nonces on the same disk: 503 + reason, never a 500.
        seen: set[int] = set()
        with httpx2.Client(auth=LighthouseAuth(alice.key_id, alice.secret), timeout=30) as http:
            for _ in range(300):
                r = http.post(
                    bridge.mcp_url,
                    json=INITIALIZE,
                    headers={"Accept": "application/json, text/event-stream"},
                )
                seen.add(r.status_code)
                assert r.status_code != 500, r.text
                if r.status_code == 503:
                    assert r.headers["Retry-After"] and r.json()["reason"] == "store_full"
                    break
        assert 503 in seen, seen

        # Freed space: the bridge recovers by itself, no restart.
        filler.unlink()
        try:
            _wait(lambda: _health(bridge)["status"] == "ok", 30, "/health back to ok")
        except AssertionError:
            raise AssertionError(_health(bridge)) from None
        status, body, _ = _flag_change(bridge, 1)
        assert status == 200, body
        assert bridge.proc is not None and bridge.proc.poll() is None
        _wait(
            lambda: _health(bridge)["store"]["wal_checkpoint"]["retry_in_s"] is None,
            40,
            "WAL checkpointer healthy again",
        )
    finally:
        code = bridge.stop()
    assert code == 0, bridge.log_path.read_text()[-3000:]
    verified = lighthouse("verify", "--db", str(bridge.db), cwd=tmp_path, check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "chain intact" in verified.stdout
