"""Losing the nonce database (issue 17.8) must not reopen the replay window.

A signed request captured while the bridge ran is replayed after the nonce file was
deleted and the bridge restarted: the new nonce store knows none of the old nonces, so it
refuses every request signed before its birth (`predates_nonce_store`) — which covers every
captured request until it would be stale anyway — and the loss is recorded as an event.
"""

from __future__ import annotations

import time
from pathlib import Path

from .conftest import RawClient, assert_refused, events_after, initialize_body, start_bridge


def test_replay_after_the_nonce_store_was_deleted(tmp_path: Path) -> None:
    bridge = start_bridge(tmp_path)
    raw = RawClient(bridge)
    try:
        captured = raw.build("alice", initialize_body())
        assert raw.send(captured).status_code == 200
        assert_refused(raw.send(captured), 401, "replayed_nonce")  # control
        bridge.stop()
        nonce_db = bridge.db.with_name(bridge.db.name + ".nonces")
        for suffix in ("", "-wal", "-shm"):
            Path(str(nonce_db) + suffix).unlink(missing_ok=True)
        time.sleep(1.1)  # `created` has whole seconds: the restart is in a later one
        bridge.start()
        raw.close()
        raw = RawClient(bridge)
        replay = raw.send(captured)
        assert_refused(replay, 401, "predates_nonce_store")
        assert "mcp-session-id" not in replay.headers
        rejected = events_after(bridge, 0, ["AuthRejected"])
        assert rejected[-1].data["reason"] == "predates_nonce_store"
        assert rejected[-1].data["agent"] == "alice"
        [created] = events_after(bridge, 0, ["NonceStoreCreated"])
        assert created.stream == "security" and created.data["born_at"] > captured_time(captured)
        assert "nonce store" in bridge.log_path.read_text()
        # Fresh requests work: the bridge is healthy for alice and everyone else.
        assert raw.post("alice", initialize_body()).status_code == 200
        assert raw.post("bob", initialize_body()).status_code == 200
        # A second restart keeps the birth (the store is not new any more) and still
        # refuses the captured request.
        bridge.stop()
        bridge.start()
        raw.close()
        raw = RawClient(bridge)
        assert_refused(raw.send(captured), 401, "predates_nonce_store")
        assert len(events_after(bridge, 0, ["NonceStoreCreated"])) == 1
    finally:
        raw.close()
        if bridge.proc is not None:
            bridge.stop()


def captured_time(request: object) -> int:
    headers = request.headers
    params = headers["Signature-Input"]
    return int(params.split("created=")[1].split(";")[0])
