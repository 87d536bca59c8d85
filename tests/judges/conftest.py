from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.harness import BridgeProcess, running_bridge
from tests.judges.node import require_node
from tests.judges.signing_proxy import SigningProxy


@pytest.fixture
def node() -> Path:
    return require_node()


@pytest.fixture
def bridge(tmp_path: Path, node: Path) -> Iterator[BridgeProcess]:
    """A running bridge with `judge` (signs for the proxied tools), alice and bob."""
    with running_bridge(tmp_path, {"judge": (), "alice": (), "bob": ()}) as b:
        yield b


@pytest.fixture
async def proxy(bridge: BridgeProcess) -> AsyncIterator[SigningProxy]:
    """The signing proxy in front of `bridge`, signing as `judge`."""
    agent = bridge.agents["judge"]
    async with SigningProxy(bridge.url, agent.key_id, agent.secret) as p:
        yield p


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """Working directory and $HOME of the Node programs (their results land here)."""
    path = tmp_path / "node-home"
    path.mkdir()
    return path
