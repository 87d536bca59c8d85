"""The wheel users install holds every package and data file of the source tree.

An editable install (what the test suite runs on) imports straight from the tree, so a
package missing from the wheel is invisible to every other test; this one builds the wheel.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP_LEVEL = ("bridge", "events", "security", "migrations")
DATA = ("*.sql", "*.html", "*.css", "*.svg", "*.js")


def test_wheel_holds_every_module_and_data_file(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        str(path.relative_to(ROOT))
        for top in TOP_LEVEL
        for pattern in ("*.py", *DATA)
        for path in (ROOT / top).rglob(pattern)
        if "__pycache__" not in path.parts
    }
    assert expected, "no source files found"
    assert "bridge/mcp/server.py" in expected
    assert sorted(expected - names) == []
