"""The light load generator: its HTTP/SSE parsing on fed bytes, and a tiny run of every
pair kind against a real bridge process and the bare relay (a smoke test, not a timed one:
it asserts zero errors and numbers that make sense, never a speed)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from benchmarks.light_load import Connection, Response

REPO = Path(__file__).resolve().parents[2]


async def test_chunked_sse_stream_split_anywhere_yields_each_event_once() -> None:
    conn = Connection()
    events: list[bytes] = []
    conn.on_event = events.append
    conn.waiter = asyncio.get_running_loop().create_future()
    body = (
        b": keep-alive\r\n\r\n"
        b'event: message\r\ndata: {"id":1,"method":"elicitation/create"}\r\n\r\n'
        b'id: 7\ndata: {"a":\ndata: 2}\n\n'
    )
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 9]), body[i : i + 9]) for i in range(0, len(body), 9)
    )
    wire = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunked
    )
    for i in range(0, len(wire), 5):  # the network may cut anywhere
        conn.data_received(wire[i : i + 5])
    head = await conn.waiter
    assert head.status == 200 and head.headers["content-type"] == "text/event-stream"
    assert events == [b'{"id":1,"method":"elicitation/create"}', b'{"a":\n2}']


async def test_content_length_and_chunked_bodies_complete_in_order() -> None:
    conn = Connection()
    for wire, want in (
        (b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n", b""),
        (b'HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{"x":1}', b'{"x":1}'),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", b"abc"),
    ):
        conn.waiter = asyncio.get_running_loop().create_future()
        conn.data_received(wire)
        got: Response = await conn.waiter
        assert got.body == want


def test_tiny_run_of_every_pair_kind_against_a_real_bridge(tmp_path: Path) -> None:
    out = tmp_path / "light_load.json"
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "light_load.py"),
            *("--cells", "push", "modern", "legacy", "open"),
            *("--pairs", "2", "--duration", "2", "--warmup", "0.5", "--grace", "15"),
            *("--open-pairs", "2", "--open-rate", "20", "--late-ms", "5000"),
            *("--workers", "1", "--unsealed-peer", "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    cells = {(c["cell"], c["server"]): c for c in result["cells"]}
    assert set(cells) == {
        ("push@2", "bridge"),
        ("push@2", "bare"),
        ("modern@2", "bridge"),
        ("legacy@2", "bridge"),
        ("push@2", "unsealed"),
        ("modern@2", "unsealed"),
        ("legacy@2", "unsealed"),
        ("open@20rps", "bridge"),
        ("open@20rps", "bare"),
    }
    for key, c in cells.items():
        assert c["errors"] == 0 and not c["answerer_errors"], (key, c["error_examples"])
        assert c["connected_pairs"] == 2, key
        assert c["ok"] > 0 and c["asks_per_s"] > 0, key
        assert 0 < c["p50_ms"] <= c["p99_ms"] <= c["max_ms"] < 15_000, key
        assert 0 < c["server_cpu_ms_per_ask"] < 1000, key  # the server did work, measured
        assert c["client_cpu_pct"] > 0 and c["server_rss_kb_peak"] > 10_000, key
    for rate_cell in (cells[("open@20rps", "bridge")], cells[("open@20rps", "bare")]):
        # the schedule was kept: about 20/s were due in the 2 s window, each counted once
        assert 20 <= rate_cell["scheduled_in_window"] <= 60
        assert rate_cell["ok"] + rate_cell["errors"] == rate_cell["scheduled_in_window"]
    targets = {t["target"] for t in result["targets"]}
    assert targets >= {"zero errors", "legacy CPU/ask ≤ 0.6 ms", "sealing ≤ +10 % CPU/ask"}
    sealing = [t for t in result["targets"] if t["target"].startswith("sealing")]
    assert {t["cell"] for t in sealing} == {"push@2", "modern@2", "legacy@2"}
    assert all(isinstance(t["value"], float) and t["peer"] > 0 for t in sealing)
    assert "bare / baseline" in run.stdout  # the table was printed
