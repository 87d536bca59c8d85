"""Attack: the operator shows a witness two histories (a forked log).

The operator copies the store — same identity, same signing key — and lets the copy
diverge. Every checkpoint of the copy carries a valid log signature, so only consistency
with what the witness accepted before can tell: the witness must refuse to cosign, say
why, exit 1, and keep the evidence.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.harness import BridgeProcess
from tests.test_witness import sign_now, witness


def test_a_witness_refuses_a_forked_log(tmp_path: Path) -> None:
    honest_dir, state = tmp_path / "honest", tmp_path / "witness"
    honest_dir.mkdir()
    honest = BridgeProcess(honest_dir)
    honest.add_agent("alice")
    honest.start()
    key = tmp_path / "log.pub"
    shutil.copy(honest_dir / "lighthouse.db.keys" / "checkpoint.pub", key)
    try:
        sign_now(honest)
        assert witness(honest, state, key).returncode == 0
    finally:
        honest.stop()
    fork_dir = tmp_path / "fork"
    shutil.copytree(honest_dir, fork_dir)  # the operator's second view starts here
    honest.start()
    try:
        honest.add_agent("bob")
        accepted = sign_now(honest)
        done = witness(honest, state, key)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        honest.stop()
    fork = BridgeProcess(fork_dir)
    fork.start()
    try:
        for name in ("mallory", "eve"):  # a different history, longer than the honest one
            fork.add_agent(name)
        offered = sign_now(fork)
        assert offered > accepted
        done = witness(fork, state, key)
        assert done.returncode == 1
        assert done.stdout.startswith("REFUSED (fork): ")
        assert f"does not extend the accepted checkpoint at size {accepted}" in done.stdout
        [evidence] = state.glob("refused-*-fork.json")
        kept = json.loads(evidence.read_text())
        assert kept["verdict"] == "fork" and kept["accepted"] != kept["offered"]
        status, cp = fork.admin("GET", "/admin/tlog/checkpoint")
        assert status == 200 and cp["note"].count("\u2014 ") == 1  # nothing cosigned the fork
        state_now = json.loads((state / "state.json").read_text())
        assert state_now["size"] == accepted  # the witness still holds the honest view
    finally:
        fork.stop()
