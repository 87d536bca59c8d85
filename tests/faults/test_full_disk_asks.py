"""A full disk under pending asks (issue 17.2), with a real bridge on a small tmpfs.

An ask is waiting when the disk fills up. Its caller still gets the timeout by its deadline
(not a hang); the bridge logs no unretrieved task exception; once space is freed the
timeout is written (retried with backoff) — exactly one terminal fact for the request.
Needs root (to mount the tmpfs); skipped otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.domain import REQUEST_CREATED, TERMINAL_TYPES
from tests.harness import SCHEMA, BridgeProcess, read_events, wait_until

TIMEOUT_S = 4.0


class _OffDiskLog(BridgeProcess):
    """The bridge's own output goes elsewhere: only the store lives on the small disk."""

    log_dir: Path = Path("/tmp")

    @property
    def log_path(self) -> Path:
        return self.log_dir / "bridge.log"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh, contextlib.suppress(OSError):  # no flush at close
        while True:
            fh.write(b"\0" * (256 * 1024))
            fh.flush()
            os.fsync(fh.fileno())
    return filler


async def test_ask_times_out_on_a_full_disk_and_is_closed_once_space_returns(
    small_disk: Path, tmp_path: Path
) -> None:
    b = _OffDiskLog(small_disk)
    b.log_dir = tmp_path
    b.add_agent("alice")
    b.add_agent("bob")
    b.start()
    filler: Path | None = None
    try:
        async with b.client("alice") as alice:
            args = {
                "to": "bob",
                "message": "will the disk hold?",
                "schema": SCHEMA,
                "timeout_s": TIMEOUT_S,
                "request_id": "full-disk-1",
            }
            # the SDK fetches tool schemas to check a result: cached now, so the ask's
            # result needs no new request while the disk (and the nonce store) is full
            await alice.list_tools()
            asking = asyncio.create_task(alice.call_tool("ask", args))

            async def created() -> bool:
                return bool(await read_events(b.db, [REQUEST_CREATED]))

            await wait_until(created, 10)
            started = time.monotonic()
            filler = _fill(small_disk)
            result = await asyncio.wait_for(asking, TIMEOUT_S + 10)
            elapsed = time.monotonic() - started
            assert elapsed < TIMEOUT_S + 3, elapsed
            if result.is_error:
                assert "store_unavailable" in result.content[0].text
            else:
                assert result.structured_content["status"] == "timeout"
        filler.unlink()
        filler = None

        async def closed() -> bool:
            events = await read_events(b.db, list(TERMINAL_TYPES))
            return any(r.data["request_id"] == "full-disk-1" for r in events)

        await wait_until(closed, 60, interval=0.5)
    finally:
        if filler is not None:
            filler.unlink()
        if b.proc is not None:
            b.stop()
    terminal = [
        r
        for r in await read_events(b.db, list(TERMINAL_TYPES))
        if r.data["request_id"] == "full-disk-1"
    ]
    assert len(terminal) == 1, terminal
    log = b.log_path.read_text()
    assert "Task exception was never retrieved" not in log, log[-3000:]
    # Whether the timeout's own write failed depends on the room left in the WAL file
    # (SQLite reuses it after a checkpoint); the retry path itself is covered
    # deterministically in tests/bridge/test_routing.py.
