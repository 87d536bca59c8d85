"""Fault tests: real bridge processes against disks that fill up, go read-only or lose files.

They need root for `mount` (tmpfs, read-only bind mounts) and `chattr`; the CI machine runs
them as root. Where that is impossible they skip and say why, never pass silently.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import BridgeProcess


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts a tmpfs / read-only bind mount (CI runs as root)")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 12 MiB tmpfs: small enough to fill in a test, big enough to start a bridge."""
    _need_root()
    mount = tmp_path / "disk"
    mount.mkdir()
    result = _run("mount", "-t", "tmpfs", "-o", "size=12m,mode=0700", "tmpfs", str(mount))
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        _run("umount", "-l", str(mount))


@contextlib.contextmanager
def read_only_view(source: Path, target: Path) -> Iterator[Path]:
    """`source` bind-mounted read-only at `target` (root cannot write through it either)."""
    _need_root()
    target.mkdir()
    result = _run("mount", "--bind", str(source), str(target))
    if result.returncode:
        pytest.skip(f"cannot bind-mount here: {result.stderr.strip()}")
    try:
        result = _run("mount", "-o", "remount,bind,ro", str(target))
        if result.returncode:
            pytest.skip(f"cannot remount read-only here: {result.stderr.strip()}")
        yield target
    finally:
        _run("umount", "-l", str(target))


@dataclass
class StoreElsewhere(BridgeProcess):
    """A bridge whose store lives in `store_dir` (a small disk) while its log stays in
    `workdir`, so a full store disk does not also swallow the evidence."""

    store_dir: Path | None = None

    @property
    def db(self) -> Path:
        assert self.store_dir is not None
        return self.store_dir / "lighthouse.db"

    @property
    def admin_token(self) -> str:
        return (self.db.parent / "lighthouse.db.keys" / "admin.token").read_text().strip()


def fill(directory: Path) -> Path:
    """Write a file until the disk holding `directory` is full; return it (delete to free)."""
    filler = directory / "filler"
    chunk = b"\0" * (1 << 16)
    with open(filler, "wb", buffering=0) as fh:
        with contextlib.suppress(OSError):
            while True:
                fh.write(chunk)
        with contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 512)
    return filler
