"""The operator CLI against a running bridge: readable tables by default, `--json` for
scripts, and the admin token found from the running bridge whatever the working directory
(issue 17.12), with the file it tried named when that fails."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import BridgeProcess, lighthouse


@pytest.fixture
def running(tmp_path: Path) -> Iterator[BridgeProcess]:
    b = BridgeProcess(tmp_path / "store")
    b.workdir.mkdir()
    b.add_agent("alice", "--role", "expert")
    b.start()
    try:
        yield b
    finally:
        b.stop()


def test_tables_and_json(running: BridgeProcess, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    agents = lighthouse("agents", "list", cwd=elsewhere, env=running.env).stdout.splitlines()
    assert agents[0].split() == ["AGENT", "ROLES", "CAPABILITIES", "STATUS", "ACTIVE", "KEYS"]
    assert agents[1].split()[:4] == ["alice", "expert", "-", "active"]
    listed = json.loads(
        lighthouse("agents", "list", "--json", cwd=elsewhere, env=running.env).stdout
    )
    assert [a["agent"] for a in listed["agents"]] == ["alice"]
    flags = lighthouse("flags", "show", cwd=elsewhere, env=running.env).stdout
    assert "elicitation  enabled" in flags and "rollout      100%" in flags
    drained = lighthouse("drain", "--timeout", "0", cwd=elsewhere, env=running.env).stdout
    assert "moved to legacy" in drained
    as_json = lighthouse("drain", "--timeout", "0", "--json", cwd=elsewhere, env=running.env)
    assert json.loads(as_json.stdout)["draining"] is True


def test_token_is_found_from_another_directory(running: BridgeProcess, tmp_path: Path) -> None:
    """The store lives in store/, the operator runs `repair`-style admin calls from /."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = lighthouse(
        "flags", "set", "--rollout", "40", "--reason", "cwd", cwd=elsewhere, env=running.env
    )
    assert "40%" in out.stdout


def test_a_failing_token_names_the_file_it_came_from(
    running: BridgeProcess, tmp_path: Path
) -> None:
    token_file = running.workdir / "lighthouse.db.keys" / "admin.token"
    good = token_file.read_text()
    token_file.write_text("lh_admin_not-the-right-one\n")
    try:
        failed = lighthouse("flags", "show", cwd=tmp_path, env=running.env, check=False)
    finally:
        token_file.write_text(good)
    assert failed.returncode != 0
    assert "HTTP 401" in failed.stderr and str(token_file.resolve()) in failed.stderr
    assert "not-the-right-one" not in failed.stderr and "Traceback" not in failed.stderr
