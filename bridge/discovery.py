"""Where a running bridge can be found by the CLI on the same machine, whatever the
working directory: `serve` writes a small file naming its store and admin-token file,
keyed by port, in the user's runtime directory (0700 directory, 0600 file); the CLI reads
the one for LIGHTHOUSE_URL's port. Nothing secret is in it, only paths.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["discovery_file", "read_discovery", "remove_discovery", "write_discovery"]


def _directory() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or str(Path.home() / ".cache")
    return Path(base) / "lighthouse"


def discovery_file(port: int) -> Path:
    return _directory() / f"bridge-{port}.json"


def write_discovery(port: int, db: Path, admin_token_file: Path) -> Path:
    path = discovery_file(port)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    payload = {
        "pid": os.getpid(),
        "port": port,
        "db": str(db.resolve()),
        "admin_token_file": str(admin_token_file.resolve()),
    }
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f)
    os.replace(tmp, path)
    return path


def remove_discovery(port: int) -> None:
    path = discovery_file(port)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():  # not a newer bridge's
            path.unlink()


def read_discovery(url: str) -> dict[str, Any] | None:
    """The discovery record of the bridge at *url*'s port, if its process is alive."""
    try:
        port = urlsplit(url).port or 80
        record = json.loads(discovery_file(port).read_text())
        os.kill(int(record["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if isinstance(record, dict) else None
