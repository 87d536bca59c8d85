"""Read-only files and directories: a writer is refused at start, an auditor can verify.

Runs as root in CI, and root ignores permission bits, so read-only means what binds root
too: `chattr +i` on the file, a read-only bind mount for the directory.
"""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.conftest import read_only_view
from tests.harness import BridgeProcess, lighthouse


def test_serve_refuses_a_read_only_database_file(tmp_path: Path) -> None:
    bridge = BridgeProcess(tmp_path)
    bridge.add_agent("alice")
    if subprocess.run(["chattr", "+i", str(bridge.db)], capture_output=True).returncode:
        pytest.skip("chattr +i is not supported on this file system")
    try:
        started = time.monotonic()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "bridge.cli",
                "serve",
                "--port",
                str(bridge.port),
                "--db",
                str(bridge.db),
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1
        assert "is not writable" in result.stderr and "Traceback" not in result.stderr
        assert time.monotonic() - started < 30
    finally:
        subprocess.run(["chattr", "-i", str(bridge.db)], capture_output=True)
    bridge.start()  # nothing was left holding the writer lock
    assert bridge.stop() == 0


def _wal_store_copy(tmp_path: Path) -> Path:
    """A copy of a live store taken while its WAL still held events (as a backup tool or
    an evidence copy would take it): database + `-wal`, no `-shm`."""
    bridge = BridgeProcess(tmp_path / "live")
    bridge.workdir.mkdir()
    bridge.add_agent("alice")
    bridge.start()
    try:
        writer = sqlite3.connect(bridge.db)  # holds the WAL open so it is not folded back
        writer.execute("BEGIN")
        writer.execute("SELECT count(*) FROM events").fetchone()
        for i in range(5):
            bridge.add_agent(f"late{i}")
        copy = tmp_path / "evidence"
        copy.mkdir()
        for suffix in ("", "-wal"):
            shutil.copyfile(f"{bridge.db}{suffix}", copy / f"lighthouse.db{suffix}")
        shutil.copytree(bridge.workdir / "lighthouse.db.keys", copy / "lighthouse.db.keys")
        shutil.copyfile(
            bridge.workdir / "lighthouse.db.checkpoints", copy / "lighthouse.db.checkpoints"
        )
        writer.rollback()
        writer.close()
    finally:
        bridge.stop(signal.SIGTERM)
    assert (copy / "lighthouse.db-wal").stat().st_size > 0
    return copy


def test_verify_reads_a_wal_store_in_a_read_only_directory(tmp_path: Path) -> None:
    copy = _wal_store_copy(tmp_path)
    with read_only_view(copy, tmp_path / "ro") as ro:
        result = lighthouse("verify", "--db", str(ro / "lighthouse.db"), cwd=tmp_path, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "chain intact" in result.stdout
        events = int(result.stdout.split()[1])
        assert events >= 7  # the five agents added last are read from the WAL
        assert sorted(p.name for p in ro.iterdir()) == sorted(p.name for p in copy.iterdir())
    # Without its WAL the copy is opened immutable: it reads the database file alone, so the
    # events only the WAL held are gone — reported as a cut tail when a signed checkpoint in
    # the file covers them (it depends on when the last one was signed), fewer events if not.
    (copy / "lighthouse.db-wal").unlink()
    with read_only_view(copy, tmp_path / "ro2") as ro:
        result = lighthouse("verify", "--db", str(ro / "lighthouse.db"), cwd=tmp_path, check=False)
        assert result.stderr == "", result.stderr
        if result.returncode == 0:
            assert int(result.stdout.split()[1]) < events, result.stdout
        else:
            assert "truncated" in result.stdout, result.stdout
