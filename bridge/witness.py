"""`lighthouse witness`: an independent party that cosigns only consistent checkpoints.

The witness keeps the last checkpoint it accepted in its state directory. Each round it
fetches the log's latest signed checkpoint and a consistency proof from the accepted size;
a checkpoint that does not extend the accepted one — a forked or rewritten history, a
rollback, two roots for one size — is refused, reported, and the evidence kept in the
directory. Consistent ones get a C2SP tlog-cosignature with the witness's own Ed25519 key,
posted back to the bridge, which serves it with the checkpoint so that `verify-proof
--witness … --witnesses-required N` can demand it.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from events import merkle, note
from events.chain import write_secret_file

from .audit import EXIT_FAIL, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, AuditError, _guarded
from .tlog import VerifyFailure, _open, b64, unb64

KEY_FILE, VKEY_FILE, STATE_FILE = "witness.key", "witness.vkey", "state.json"


def load_signer(state_dir: Path, name: str | None) -> note.NoteSigner:
    """The witness key, created on first use (never replaced: it is the witness's identity)."""
    key_path, vkey_path = state_dir / KEY_FILE, state_dir / VKEY_FILE
    if key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise AuditError(f"{key_path} is not an Ed25519 private key", EXIT_USAGE)
        known = note.Verifier.from_vkey(vkey_path.read_text()).name
        if name is not None and name != known:
            raise AuditError(f"this witness is named {known!r}, not {name!r}", EXIT_USAGE)
        return note.NoteSigner(known, key, note.COSIGNATURE_ALG)
    key = Ed25519PrivateKey.generate()
    signer = note.NoteSigner(
        name or f"witness.lighthouse/{secrets.token_hex(4)}", key, note.COSIGNATURE_ALG
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_secret_file(key_path, pem)
    vkey_path.write_text(signer.verifier.vkey() + "\n")
    return signer


@dataclass
class LogClient:
    url: str
    token: str | None

    def call(
        self, method: str, path: str, params: dict[str, Any] | None = None, body: Any = None
    ) -> Any:
        query = "?" + urllib.parse.urlencode(params) if params else ""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path + query, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise AuditError(f"{method} {path} failed with HTTP {exc.code}: {detail}") from None
        except (OSError, ValueError) as exc:
            raise AuditError(
                f"the log at {self.url} is unreachable: {exc}", EXIT_UNAVAILABLE
            ) from None


@dataclass
class Outcome:
    accepted: bool
    message: str
    size: int = 0


def _refuse(state_dir: Path, kind: str, message: str, evidence: dict[str, Any]) -> Outcome:
    """Keep what the log showed (both checkpoints, the proof) so the fork can be shown."""
    path = state_dir / f"refused-{int(time.time())}-{kind}.json"
    path.write_text(json.dumps({"verdict": kind, "message": message, **evidence}, indent=1))
    return Outcome(False, f"REFUSED ({kind}): {message}; evidence in {path}")


def witness_round(
    client: LogClient, pem: bytes, state_dir: Path, signer: note.NoteSigner
) -> Outcome:
    """Fetch, check against the accepted checkpoint, cosign and remember — or refuse."""
    latest = client.call("GET", "/admin/tlog/checkpoint")
    text = str(latest.get("note", ""))
    state_path = state_dir / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.exists() else None
    try:
        signed, head = _open(text, pem, state["origin"] if state else None)
    except VerifyFailure as exc:
        return _refuse(state_dir, exc.kind, str(exc), {"checkpoint": text})
    evidence: dict[str, Any] = {"accepted": state and state["note"], "offered": text}
    if state is not None:
        old_size, old_root = int(state["size"]), unb64(state["root"], "the stored root")
        if head.size < old_size:
            return _refuse(
                state_dir,
                "rollback",
                f"the log offers size {head.size}, smaller than the accepted {old_size}",
                evidence,
            )
        proof: list[bytes] = []
        if head.size > old_size:
            got = client.call(
                "GET", "/admin/proof/consistency", {"from": old_size, "to": head.size}
            )
            proof = [unb64(h, "a consistency proof hash") for h in got.get("proof", [])]
            evidence["proof"] = [b64(h) for h in proof]
        try:
            merkle.verify_consistency(old_size, head.size, old_root, head.root, proof)
        except merkle.ProofError as exc:
            message = (
                f"the checkpoint at size {head.size} does not extend the accepted checkpoint "
                f"at size {old_size} ({exc})"
            )
            return _refuse(state_dir, "fork", message, evidence)
    line = signer.cosign(signed.text).line()
    client.call("POST", "/admin/tlog/cosignature", body={"size": head.size, "cosignature": line})
    new_state = {"origin": head.origin, "size": head.size, "root": b64(head.root), "note": text}
    tmp = state_path.with_suffix(".partial")
    tmp.write_text(json.dumps(new_state, indent=1))
    os.replace(tmp, state_path)
    first = " (first checkpoint: trusted on first use)" if state is None else ""
    return Outcome(True, f"cosigned {head.origin} at size {head.size}{first}", head.size)


@_guarded
def cmd_witness(args: argparse.Namespace) -> int:
    pem_path, state_dir = Path(args.public_key), Path(args.state)
    if not pem_path.is_file():
        raise AuditError(f"no public key file at {pem_path}", EXIT_USAGE)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    signer = load_signer(state_dir, args.name)
    token = os.environ.get("LIGHTHOUSE_ADMIN_TOKEN")
    if args.token_file:
        token = Path(args.token_file).read_text().strip()
    client = LogClient(args.log.rstrip("/"), token)
    rounds = 0
    while True:
        outcome = witness_round(client, pem_path.read_bytes(), state_dir, signer)
        print(outcome.message, flush=True)
        rounds += 1
        if not outcome.accepted:
            return EXIT_FAIL
        if args.rounds and rounds >= args.rounds:
            return EXIT_OK
        time.sleep(args.interval)


def add_commands(sub: Any) -> None:
    w = sub.add_parser("witness", help="cosign a log's checkpoints only while they stay consistent")
    w.add_argument("--log", required=True, metavar="URL", help="the bridge's base URL")
    w.add_argument("--public-key", required=True, metavar="PEM", help="the log's checkpoint key")
    w.add_argument("--state", required=True, metavar="DIR", help="witness key and accepted state")
    w.add_argument("--name", help="the witness's key name (first run only)")
    w.add_argument("--token-file", help="admin token file (default: $LIGHTHOUSE_ADMIN_TOKEN)")
    w.add_argument("--interval", type=float, default=30.0, metavar="S")
    w.add_argument("--rounds", type=int, default=1, metavar="N", help="0: run until stopped")
    w.set_defaults(func=cmd_witness)
