"""Several real processes appending to one PostgreSQL log: one chain, nothing lost.

Each process is `tests.pg_appender` with its own store and group-commit writer; they start
appending in the same millisecond. Afterwards `lighthouse verify --database-url` (a user's
command, another process) must exit 0, and every acknowledged append must be in the log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from events import StoreConfig
from events.postgres import PostgresEventStore
from tests.harness import lighthouse
from tests.pgtools import drop_created, fresh_database

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def _drop_databases() -> Iterator[None]:
    yield
    drop_created()


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


async def _new_store(tmp_path: Path) -> tuple[str, Path]:
    """A fresh database with its identity and keys created (what the first bridge does)."""
    url = fresh_database("proc")
    key_dir = tmp_path / "keys"
    store = await PostgresEventStore.open(
        StoreConfig(path=tmp_path / "s", url=url, key_dir=key_dir)
    )
    await store.close()
    return url, key_dir


def _appender(url: str, key_dir: Path, tag: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.pg_appender", url, str(key_dir), "--tag", tag, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=ROOT,
    )


def _acked(output: str) -> tuple[dict[str, int], dict[str, object] | None]:
    acked, summary = {}, None
    for line in output.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue  # a line torn by SIGKILL
        if item.get("summary"):
            summary = item
        else:
            acked[item["id"]] = item["pos"]
    return acked, summary


async def _stored(url: str, tmp_path: Path) -> dict[str, int]:
    store = await PostgresEventStore.open(
        StoreConfig(path=tmp_path / "s", url=url, key_dir=tmp_path / "keys", readonly=True)
    )
    try:
        return {r.event_id: r.position for r in await store.read_all(limit=None)}
    finally:
        await store.close()


def _verify(url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return lighthouse(
        "verify",
        "--database-url",
        url,
        "--key-dir",
        str(tmp_path / "keys"),
        "--checkpoint",
        str(tmp_path / "keys.checkpoints"),  # the appenders' copy (path=KEY_DIR minus suffix)
        cwd=tmp_path,
        env=_env(),
        check=False,
    )


async def test_three_processes_one_chain_verified(tmp_path: Path) -> None:
    url, key_dir = await _new_store(tmp_path)
    start_at = f"{time.time() + 3:.3f}"  # all three begin in the same millisecond
    procs = [
        _appender(
            url,
            key_dir,
            f"p{i}",
            "--events",
            "600",
            "--concurrency",
            "30",
            "--start-at",
            start_at,
            "--checkpoint-every",
            "250",
        )
        for i in range(3)
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    acked: dict[str, int] = {}
    for out, _ in outputs:
        mine, summary = _acked(out)
        assert summary is not None and summary["errors"] == 0
        acked.update(mine)
    assert len(acked) == 1800
    stored = await _stored(url, tmp_path)
    assert stored == acked  # every acknowledged append, at the position it was told
    assert sorted(stored.values()) == list(range(1, 1801))  # gap-free, no duplicates
    result = _verify(url, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: 1800 events, chain intact" in result.stdout
    # Checkpoints every 250 events, signed by whichever process held the role, each once.
    assert (tmp_path / "keys.checkpoints").exists()
    checkpoints = int(result.stdout.split("intact, ")[1].split()[0])
    assert checkpoints >= 6, result.stdout


async def test_process_killed_mid_commit_loses_no_acknowledged_append(tmp_path: Path) -> None:
    url, key_dir = await _new_store(tmp_path)
    steady = _appender(url, key_dir, "steady", "--events", "3000", "--concurrency", "20")
    victim = _appender(url, key_dir, "victim", "--events", "0", "--concurrency", "50")
    assert victim.stdout is not None
    # Let the victim get well into committing batches, then kill it without warning.
    seen = 0
    while seen < 300:
        line = victim.stdout.readline()
        assert line, victim.stderr.read() if victim.stderr else "victim exited"
        seen += 1
    victim.send_signal(signal.SIGKILL)
    rest, _ = victim.communicate(timeout=30)
    out, err = steady.communicate(timeout=180)
    assert steady.returncode == 0, err
    victim_acked, _ = _acked(rest)
    steady_acked, summary = _acked(out)
    assert summary is not None and summary["errors"] == 0 and len(steady_acked) == 3000
    stored = await _stored(url, tmp_path)
    for event_id, position in {**steady_acked, **victim_acked}.items():
        assert stored.get(event_id) == position
    assert sorted(stored.values()) == list(range(1, len(stored) + 1))
    # The killed process's open transaction was rolled back: the log continues after it.
    url_result = _verify(url, tmp_path)
    assert url_result.returncode == 0, url_result.stdout + url_result.stderr
    after = await PostgresEventStore.open(
        StoreConfig(path=tmp_path / "s", url=url, key_dir=key_dir)
    )
    try:
        assert (await after.head()).position == len(stored)
        from events import NewEvent

        [position] = await after.append("after", [NewEvent(type="T")])
        assert position == len(stored) + 1
    finally:
        await after.close()
