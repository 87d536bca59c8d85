"""bridge.tlog: proof bundles proved and checked as an outsider would, with the CLI.

Stores are real SQLite stores; `lighthouse audit prove` and `verify-proof` run as
subprocesses; every bad input must give its own verdict, exit code 1 (2 for unusable
arguments) and no traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bridge.audit import AuditQuery, StoreSource
from bridge.audit_export import verify_export, write_export
from events import NewEvent, SqliteEventStore, StoreConfig


async def _fill(db: Path, n: int, tag: str = "a", start: int = 0) -> None:
    store = await SqliteEventStore.open(StoreConfig(path=db, checkpoint_interval=0))
    try:
        for i in range(start, start + n):
            rid = f"r{i % 5}"
            await store.append(
                f"request-{rid}",
                [NewEvent(type="RequestCreated", data={"request_id": rid, "i": i, "tag": tag})],
            )
    finally:
        await store.close()


def _copy_store(src: Path, dst: Path) -> None:
    """The same store (same identity and keys) in a second place: a fork in the making."""
    for path in src.parent.iterdir():
        if path.name.startswith(src.name):
            target = dst.parent / (dst.name + path.name[len(src.name) :])
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, target)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "LIGHTHOUSE_URL": "http://127.0.0.1:9"},
        timeout=120,
    )


def _pub(db: Path) -> Path:
    return db.parent / (db.name + ".keys") / "checkpoint.pub"


def _latest_note(db: Path, out: Path) -> Path:
    lines = (db.parent / (db.name + ".checkpoints.tlog")).read_text().splitlines()
    out.write_text(json.loads(lines[-1])["note"])
    return out


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    path = tmp_path / "log.db"
    await _fill(path, 60)
    return path


def _prove(db: Path, out: Path, *extra: str) -> Path:
    done = _cli("audit", "prove", "--db", str(db), *extra, "--out", str(out), cwd=db.parent)
    assert done.returncode == 0, done.stderr
    return out


def _verify(bundle: Path, key: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    done = _cli(
        "audit",
        "verify-proof",
        str(bundle),
        "--public-key",
        str(key),
        "--json",
        *extra,
        cwd=bundle.parent,
    )
    assert "Traceback" not in done.stderr
    return done.returncode, json.loads(done.stdout) if done.stdout else {}, done.stderr


def test_a_request_is_proved_with_a_file_and_the_public_key(db: Path, tmp_path: Path) -> None:
    bundle = _prove(db, tmp_path / "r2.json", "--request", "r2")
    key = tmp_path / "log.pub"
    shutil.copy(_pub(db), key)
    (tmp_path / "log.db").unlink()  # offline: no database behind the check
    code, report, _ = _verify(bundle, key)
    assert code == 0 and report["ok"] and report["verdict"] == "ok"
    assert report["positions"] == list(range(3, 61, 5)) and report["size"] == 60
    entry = json.loads(bundle.read_text())["entries"][0]["proof"]
    assert entry.startswith("c2sp.org/tlog-proof@v1\nindex 2\n")


def test_one_position_and_the_human_verdict(db: Path, tmp_path: Path) -> None:
    bundle = _prove(db, tmp_path / "p17.json", "--position", "17")
    done = _cli("audit", "verify-proof", str(bundle), "--public-key", str(_pub(db)), cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("OK: 1 record(s) at positions 17 ")


@pytest.mark.parametrize(
    ("damage", "verdict"),
    [
        (lambda b: b["entries"][0]["record"]["data"].update(i=999), "not_included"),
        (lambda b: b["entries"][0]["record"].update(position=4), "not_included"),
        (
            lambda b: b["entries"][1].update(
                proof=b["entries"][1]["proof"].replace("index 7\n", "index 7\n" + "A" * 43 + "=\n")
            ),
            "not_included",
        ),
        (
            lambda b: b.update(checkpoint=b["checkpoint"].replace("\n60\n", "\n61\n")),
            "bad_signature",
        ),
        (lambda b: b["entries"].clear(), "malformed"),
        (lambda b: b.update(format="something else"), "malformed"),
    ],
)
def test_an_altered_bundle_gets_a_precise_verdict(
    db: Path, tmp_path: Path, damage: Any, verdict: str
) -> None:
    bundle = _prove(db, tmp_path / "b.json", "--request", "r2")
    data = json.loads(bundle.read_text())
    damage(data)
    if verdict == "bad_signature":  # every entry embeds the checkpoint: change them alike
        for e in data["entries"]:
            e["proof"] = e["proof"].replace("\n60\n", "\n61\n")
    bundle.write_text(json.dumps(data))
    code, report, _ = _verify(bundle, _pub(db))
    assert code == 1 and report["verdict"] == verdict and not report["ok"], report


def test_a_truncated_bundle_is_malformed(db: Path, tmp_path: Path) -> None:
    bundle = _prove(db, tmp_path / "b.json", "--request", "r2")
    bundle.write_bytes(bundle.read_bytes()[:700])
    code, report, _ = _verify(bundle, _pub(db))
    assert code == 1 and report["verdict"] == "malformed" and "truncated" in report["message"]


async def test_a_proof_of_another_store_or_with_an_unknown_key_is_refused(
    db: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other" / "log.db"
    other.parent.mkdir()
    await _fill(other, 10)
    bundle = _prove(other, tmp_path / "other.json", "--position", "3")
    code, report, _ = _verify(bundle, _pub(db))
    assert code == 1 and report["verdict"] == "unknown_key"
    assert "not signed by the key given" in report["message"]
    stranger = tmp_path / "stranger.pem"
    stranger.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    code, report, _ = _verify(bundle, stranger)
    assert code == 1 and report["verdict"] == "unknown_key"
    origin = json.loads(bundle.read_text())["checkpoint"].split("\n")[0]
    code, report, _ = _verify(bundle, _pub(other), "--origin", origin.replace("-", "0"))
    assert code == 1 and report["verdict"] == "foreign_origin"


def test_unusable_arguments_exit_2(db: Path, tmp_path: Path) -> None:
    bundle = _prove(db, tmp_path / "b.json", "--position", "1")
    not_a_key = tmp_path / "junk.pem"
    not_a_key.write_text("not a key")
    code, _, err = _verify(bundle, not_a_key)
    assert code == 2 and "not an Ed25519 public key PEM" in err
    code, _, err = _verify(tmp_path / "missing.json", _pub(db))
    assert code == 2 and "no proof bundle file" in err
    done = _cli("audit", "prove", "--db", str(db), "--out", str(tmp_path / "x"), cwd=tmp_path)
    assert done.returncode == 2 and "--request ID or --position N" in done.stderr


async def test_a_later_checkpoint_extends_the_one_seen_before(db: Path, tmp_path: Path) -> None:
    seen = _latest_note(db, tmp_path / "seen.checkpoint")
    await _fill(db, 25, start=60)
    bundle = _prove(db, tmp_path / "b.json", "--position", "70", "--previous", str(seen))
    code, report, _ = _verify(bundle, _pub(db), "--previous", str(seen))
    assert code == 0 and report["extends"] == 60 and report["size"] == 85
    # asked for, but not in the bundle
    plain = _prove(db, tmp_path / "plain.json", "--position", "70")
    code, report, _ = _verify(plain, _pub(db), "--previous", str(seen))
    assert code == 1 and report["verdict"] == "no_consistency_proof"


async def test_a_forked_history_is_caught_by_the_consistency_check(
    db: Path, tmp_path: Path
) -> None:
    fork = tmp_path / "fork" / "log.db"
    fork.parent.mkdir()
    _copy_store(db, fork)  # same identity, same signing key: an operator showing two views
    await _fill(db, 10, tag="honest", start=60)
    await _fill(fork, 12, tag="rewritten", start=60)
    seen = _latest_note(db, tmp_path / "seen.checkpoint")  # an auditor saw the honest 70
    bundle = _prove(fork, tmp_path / "fork.json", "--position", "72", "--previous", str(seen))
    code, report, _ = _verify(bundle, _pub(db), "--previous", str(seen))
    assert code == 1 and report["verdict"] == "inconsistent"
    assert "fork" in report["message"]


async def test_requiring_witnesses_that_did_not_cosign_fails(db: Path, tmp_path: Path) -> None:
    from events import note

    bundle = _prove(db, tmp_path / "b.json", "--position", "5")
    signer = note.NoteSigner("w.example", Ed25519PrivateKey.generate(), note.COSIGNATURE_ALG)
    vkey = tmp_path / "w.vkey"
    vkey.write_text(signer.verifier.vkey())
    code, report, _ = _verify(bundle, _pub(db), "--witness", str(vkey), "--witnesses-required", "1")
    assert code == 1 and report["verdict"] == "witness_quorum"
    # the same bundle with that witness's cosignature added passes
    data = json.loads(bundle.read_text())
    body = data["checkpoint"].split("\n\n")[0] + "\n"
    line = signer.cosign(body).line()
    data["checkpoint"] += line
    for e in data["entries"]:
        e["proof"] += line
    bundle.write_text(json.dumps(data))
    code, report, _ = _verify(bundle, _pub(db), "--witness", str(vkey), "--witnesses-required", "1")
    assert code == 0 and report["witnesses"] == ["w.example"]


async def test_filtered_export_holds_only_the_matches_with_their_proofs(
    db: Path, tmp_path: Path
) -> None:
    out = tmp_path / "r3.jsonl"
    source = await StoreSource.open(db)
    try:
        summary = await write_export(source, AuditQuery(request_id="r3"), out)
    finally:
        await source.close()
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert summary.inclusion and summary.records == 12 and len(lines) == 14
    assert all(ln["data"]["request_id"] == "r3" for ln in lines[1:-1])
    report = verify_export(out, _pub(db).read_bytes())
    assert report.ok, report.problems
    assert "reveals no other record" in report.describe()
    lines[3]["data"]["i"] = 1000
    out.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert [p.kind for p in verify_export(out, _pub(db).read_bytes()).problems] == ["edited"]
    lines[3]["data"]["i"], lines[3]["data"]["request_id"] = 13, "r4"
    lines[3]["stream"] = "request-r4"
    out.write_text("".join(json.dumps(x) + "\n" for x in lines[:-1]))
    kinds = {p.kind for p in verify_export(out, _pub(db).read_bytes()).problems}
    assert kinds == {"match_flag", "edited", "truncated"}


async def test_verify_export_proves_the_export_extends_a_seen_checkpoint(
    db: Path, tmp_path: Path
) -> None:
    seen = _latest_note(db, tmp_path / "seen.checkpoint")
    await _fill(db, 7, start=60)
    out = tmp_path / "full.jsonl"
    done = _cli(
        "audit",
        "export",
        "--db",
        str(db),
        "--out",
        str(out),
        "--previous",
        str(seen),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    done = _cli(
        "audit",
        "verify-export",
        str(out),
        "--public-key",
        str(_pub(db)),
        "--previous",
        str(seen),
        "--json",
        cwd=tmp_path,
    )
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["extends"] == 60 and report["tree_root"]
