"""Small helpers shared by the benchmarks: percentiles, machine info, a text table, JSON.

Nothing here knows about a particular benchmark; each one builds its own rows and payload.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (`q` in 0..100) of an already sorted sequence; None if empty."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), math.ceil(round(q / 100 * len(sorted_values), 9))))
    return sorted_values[rank - 1]


def filesystem_of(path: Path) -> tuple[str, str]:
    """(mount point, filesystem type) holding `path`, from /proc/mounts; ("?", "?") elsewhere."""
    target = path.resolve()
    best: tuple[str, str] = ("?", "?")
    best_len = -1
    try:
        with open("/proc/mounts", encoding="utf-8") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mount = Path(parts[1].replace("\\040", " "))
                if (mount == target or mount in target.parents) and len(str(mount)) > best_len:
                    best, best_len = (str(mount), parts[2]), len(str(mount))
    except OSError:
        pass
    return best


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_commit(repo: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_info(packages: Sequence[str] = (), repo: Path | None = None) -> dict[str, Any]:
    """What a reader needs to compare two result files: hardware, versions, load, time."""
    try:
        usable_cpus: int | None = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cpus = None
    try:
        load: list[float] | None = list(os.getloadavg())
    except OSError:
        load = None
    info: dict[str, Any] = {
        "timestamp": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus,
        "loadavg_1_5_15": load,
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
        "packages": {name: _version(name) for name in packages},
    }
    if repo is not None:
        info["git_commit"] = _git_commit(repo)
    return info


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain, right-aligned text table (first column left-aligned)."""
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` as indented JSON, atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
