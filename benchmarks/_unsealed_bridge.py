"""`lighthouse serve` with encryption at rest switched off: a benchmark peer, nothing else.

`benchmarks/light_load.py --unsealed-peer` runs this beside the real bridge, in the same run
and with the same load, so the server CPU that sealing contents costs an `ask` is measured
as a difference of two processes instead of guessed from the store benchmark. The product
has no switch for this on purpose: a flag that stores what agents say in clear text is one
an operator could set by mistake. Here the one seam is replaced before the bridge starts:
`bridge.core.content_sealer` returns no sealer, so the `Log` appends and replays as it did
before encryption existed (every other stage, the vault included, is unchanged).
"""

from __future__ import annotations

import sys
from typing import Any

import bridge.core
from bridge.cli import main


def _no_sealer(*_args: Any) -> None:
    return None


if __name__ == "__main__":
    bridge.core.content_sealer = _no_sealer  # type: ignore[assignment]
    sys.exit(main())
