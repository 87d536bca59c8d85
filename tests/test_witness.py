"""bridge.witness: a witness process cosigning a live bridge's checkpoints.

A real bridge process, the real `lighthouse witness` command, and the cosignature coming
back through the bridge into a proof bundle that `verify-proof` then requires.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.harness import BridgeProcess, running_bridge


def run(*args: str, bridge: BridgeProcess, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **bridge.env, "LIGHTHOUSE_ADMIN_TOKEN": bridge.admin_token}
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def sign_now(bridge: BridgeProcess) -> int:
    status, body = bridge.admin("POST", "/admin/tlog/checkpoint")
    assert status == 200, body
    return int(body["size"])


def witness(bridge: BridgeProcess, state: Path, key: Path) -> subprocess.CompletedProcess[str]:
    done = run(
        "witness",
        "--log",
        bridge.url,
        "--public-key",
        str(key),
        "--state",
        str(state),
        bridge=bridge,
        cwd=state.parent,
    )
    assert "Traceback" not in done.stderr
    return done


def test_the_witness_cosigns_and_verify_proof_requires_it(tmp_path: Path) -> None:
    work, state = tmp_path / "log", tmp_path / "witness"
    work.mkdir()
    with running_bridge(work, {"alice": (), "bob": ()}) as bridge:
        key = tmp_path / "log.pub"
        shutil.copy(work / "lighthouse.db.keys" / "checkpoint.pub", key)
        first = sign_now(bridge)
        done = witness(bridge, state, key)
        assert done.returncode == 0, done.stderr
        assert f"at size {first} (first checkpoint: trusted on first use)" in done.stdout
        bridge.add_agent("carol")
        second = sign_now(bridge)
        assert second > first
        done = witness(bridge, state, key)
        assert done.returncode == 0 and "cosigned" in done.stdout and str(second) in done.stdout
        status, cp = bridge.admin("GET", "/admin/tlog/checkpoint")
        assert status == 200 and cp["note"].count("\u2014 ") == 2  # the log's and the witness's
        status, proof = bridge.admin("GET", f"/admin/proof/consistency?from={first}&to={second}")
        assert status == 200 and proof["proof"]
        status, bad = bridge.admin("GET", "/admin/proof/consistency?from=9&to=x")
        assert status == 400 and bad["field"] == "to"
        status, bad = bridge.admin("GET", f"/admin/proof/inclusion?position={second + 5}")
        assert status == 400
        # prove through the running bridge's API (no --db): the bundle carries the cosignature
        bundle = tmp_path / "bundle.json"
        done = run(
            "audit", "prove", "--position", "1", "--out", str(bundle), bridge=bridge, cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr
    vkey = state / "witness.vkey"
    done = run(
        "audit",
        "verify-proof",
        str(bundle),
        "--public-key",
        str(key),
        "--witness",
        str(vkey),
        "--witnesses-required",
        "1",
        "--json",
        bridge=bridge,
        cwd=tmp_path,
    )
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["witnesses"] == [vkey.read_text().split("+")[0]]
    assert report["size"] == second
