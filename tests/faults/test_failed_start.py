"""A start that fails after the store opened exits non-zero with the cause and lets go.

Before, a step after `open_bridge` that raised left the store open: the process hung
holding the writer lock and the next start failed with "already open for writing".
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.harness import BridgeProcess


def test_a_failing_start_step_exits_with_the_cause_and_releases_the_store(
    tmp_path: Path,
) -> None:
    bridge = BridgeProcess(tmp_path)
    bridge.add_agent("alice")
    key = tmp_path / "lighthouse.db.keys" / "request_state.key"
    key.write_text("this is not base64 !!!\n")  # read after the store is open
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
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().startswith("lighthouse:"), result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 30
    key.unlink()
    bridge.start()  # the writer lock was released: a fixed start succeeds at once
    assert bridge.health()["status"] == "ok"
    assert bridge.stop() == 0
