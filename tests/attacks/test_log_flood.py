"""Log flooding (issue 16.2): anonymous or rate-limited traffic must not grow the event store
faster than a fixed budget, while metrics keep exact counts and `audit security` still
shows every refusal.

The bridge runs with the default burst (5 individual records per source and reason per
window) and a 2 s window, so the aggregated fact of the flood appears within the test.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from bridge.refusals import refusal_count
from tests.harness import BridgeProcess, lighthouse

from .conftest import (
    ACCEPT,
    RawClient,
    events_after,
    initialize_body,
    mark,
    metric,
    start_bridge,
)

FLOOD = 400
WINDOW = 2.0


@pytest.fixture
def flood_bridge(tmp_path: Path) -> Iterator[BridgeProcess]:
    b = start_bridge(tmp_path, "--refusal-burst", "5", "--refusal-window", str(WINDOW))
    try:
        yield b
    finally:
        b.stop()


async def _flood(url: str, n: int) -> list[int]:
    async with httpx2.AsyncClient(base_url=url, timeout=30) as http:
        headers = {"Content-Type": "application/json", "Accept": ACCEPT}

        async def one() -> int:
            return (await http.post("/mcp", content=b"{}", headers=headers)).status_code

        statuses: list[int] = []
        for _ in range(n // 50):
            statuses += await asyncio.gather(*(one() for _ in range(50)))
        return statuses


def test_unsigned_flood_writes_a_bounded_number_of_events(flood_bridge: BridgeProcess) -> None:
    bridge = flood_bridge
    raw = RawClient(bridge)
    try:
        before = metric(bridge, "lighthouse_auth_rejections_total", 'reason="missing_signature"')
        start = mark(bridge)
        began = time.time()
        statuses = asyncio.run(_flood(bridge.url, FLOOD))
        elapsed = time.time() - began
        assert statuses == [401] * FLOOD
        # Healthy for others while and after it happened.
        assert raw.post("alice", initialize_body()).status_code == 200
        # Metrics count every refusal exactly.
        after = metric(bridge, "lighthouse_auth_rejections_total", 'reason="missing_signature"')
        assert after - before == FLOOD
        # The store: at most 5 individual records per window the flood spanned, plus one
        # aggregate per window; the aggregates appear once their window ended.
        windows = int(elapsed // WINDOW) + 2
        deadline = time.monotonic() + 3 * WINDOW + 5
        while True:
            events = events_after(bridge, start, ["AuthRejected"])
            total = sum(refusal_count(e.data) for e in events)
            if total == FLOOD or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert total == FLOOD, (total, [e.data.get("count") for e in events])
        assert len(events) <= windows * 6, (len(events), windows)
        aggregates = [e for e in events if e.data.get("aggregated")]
        assert aggregates, "the flood beyond the burst is one aggregated fact per window"
        agg = aggregates[0].data
        assert agg["reason"] == "missing_signature" and agg["remote"] == "127.0.0.1"
        assert agg["count"] >= 1 and agg["first_at"] <= agg["last_at"]
        assert agg["window_s"] == WINDOW
        # `audit security` shows the exact number of refusals.
        out = lighthouse(
            "audit", "security", "--format", "json", "--db", str(bridge.db), cwd=bridge.workdir
        )
        report = json.loads(out.stdout)
        assert report["auth_rejections"]["by_reason"]["missing_signature"] == FLOOD
        assert report["auth_rejections"]["total"] == FLOOD
        text = lighthouse("audit", "security", "--db", str(bridge.db), cwd=bridge.workdir)
        assert f"auth rejections: {FLOOD}" in text.stdout
    finally:
        raw.close()
