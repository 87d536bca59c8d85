from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import BridgeProcess, running_bridge

AGENTS = {"alice": (), "bob": ("--role", "expert", "--capability", "review"), "carol": ()}


@pytest.fixture
def bridge(tmp_path: Path) -> Iterator[BridgeProcess]:
    """A running bridge with agents alice, bob (role expert) and carol."""
    with running_bridge(tmp_path, AGENTS) as b:
        yield b
