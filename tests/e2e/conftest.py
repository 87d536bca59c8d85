from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import BridgeProcess


@pytest.fixture
def bridge(tmp_path: Path) -> Iterator[BridgeProcess]:
    """A running bridge with agents alice, bob (role expert) and carol."""
    b = BridgeProcess(tmp_path)
    b.add_agent("alice")
    b.add_agent("bob", "--role", "expert", "--capability", "review")
    b.add_agent("carol")
    b.start()
    try:
        yield b
    finally:
        if b.proc is not None:
            b.stop()
