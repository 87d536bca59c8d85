"""The README's agent example, run as written against a real bridge (only the address and
the credentials filled in), so the quick start cannot drift from what works."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.harness import BridgeProcess, read_events

README = Path(__file__).resolve().parents[2] / "README.md"


def _agent_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    [example] = [b for b in blocks if "from bridge.client import connect" in b]
    return example


async def test_readme_example_asks_and_gets_the_answer_by_elicitation(
    bridge: BridgeProcess, tmp_path: Path
) -> None:
    alice, bob = bridge.agents["alice"], bridge.agents["bob"]
    credentials = (
        f"ALICE_KEY_ID, ALICE_SECRET = {alice.key_id!r}, {alice.secret!r}\n"
        f"BOB_KEY_ID, BOB_SECRET = {bob.key_id!r}, {bob.secret!r}\n"
    )
    script = tmp_path / "agent.py"
    script.write_text(
        credentials + _agent_example().replace("http://127.0.0.1:8765/mcp", bridge.mcp_url)
    )
    run = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=README.parent,
    )
    assert run.returncode == 0, run.stderr
    assert "'status': 'accepted'" in run.stdout and "'path': 'elicitation'" in run.stdout
    assert "'answer': '42'" in run.stdout
    types = [r.type for r in await read_events(bridge.db) if r.stream.startswith("request-")]
    assert types == ["RequestCreated", "RequestRouted", "RequestDelivered", "RequestAnswered"]
