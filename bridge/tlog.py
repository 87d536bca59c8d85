"""Proving single interactions to outsiders: proof bundles, their offline check, the admin
proof routes.

A bundle (`lighthouse audit prove`) holds the selected records, for each a C2SP
`tlog-proof` (index, RFC 9162 inclusion proof, the signed C2SP checkpoint verbatim, with
any witness cosignatures), and optionally a consistency proof from a checkpoint the
recipient saw before. `verify-proof` needs the bundle and the log's public key only: it
recomputes each record's leaf from its canonical bytes, so an altered record, a proof of
another store, a checkpoint signed by another key or an older view that the new one does
not extend each fail with their own verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
from aiohttp import web

from events import Record, merkle, note
from events.chain import load_public_key
from events.model import record_bytes
from events.tlog import (
    TreeCheckpoint,
    consistency_proof,
    inclusion_proof,
    origin_of,
)

from .audit import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_USAGE,
    AuditError,
    AuditQuery,
    HttpSource,
    StoreSource,
    _guarded,
    iterate,
    open_source,
    record_json,
)

if TYPE_CHECKING:
    from .core import Bridge

FORMAT, VERSION = "lighthouse-tlog-proof", 1
TLOG_PROOF_HEADER = "c2sp.org/tlog-proof@v1"
MAX_RECORDS = 10_000
NO_TREE = "the {} backend keeps no Merkle tree; no proofs can be served"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise VerifyFailure("malformed", f"{what} is not base64") from None
    if len(raw) != merkle.HASH_SIZE:
        raise VerifyFailure("malformed", f"{what} is not a 32-byte hash")
    return raw


# -- C2SP tlog-proof text -----------------------------------------------------------------


def render_tlog_proof(index: int, proof: Sequence[bytes], checkpoint: str) -> str:
    lines = [TLOG_PROOF_HEADER, f"index {index}", *(b64(h) for h in proof)]
    return "\n".join(lines) + "\n\n" + checkpoint


def parse_tlog_proof(text: str) -> tuple[int, list[bytes], str]:
    """(index, inclusion proof, checkpoint note) of a C2SP tlog-proof."""
    head, sep, checkpoint = text.partition("\n\n")
    lines = head.split("\n")
    if not sep or not lines or lines[0] != TLOG_PROOF_HEADER:
        raise VerifyFailure("malformed", "an entry's proof is not a c2sp.org/tlog-proof@v1")
    rest = lines[1:]
    if rest and rest[0].startswith("extra "):
        rest = rest[1:]
    if not rest or not rest[0].startswith("index "):
        raise VerifyFailure("malformed", "an entry's proof has no index line")
    digits = rest[0][len("index ") :]
    if not digits.isdigit() or (digits != "0" and digits.startswith("0")):
        raise VerifyFailure("malformed", f"an entry's proof index {digits!r} is not a number")
    return int(digits), [unb64(h, "an inclusion proof hash") for h in rest[1:]], checkpoint


# -- where proofs come from ---------------------------------------------------------------


class Prover(Protocol):
    async def checkpoint(self, size: int | None = None) -> TreeCheckpoint: ...

    async def inclusion(self, index: int, size: int) -> list[bytes]: ...

    async def consistency(self, old: int, new: int) -> list[bytes]: ...


@dataclass
class StoreProver:
    """Proofs straight from a store (a read-only open beside the bridge, or the bridge's own)."""

    store: Any

    async def checkpoint(self, size: int | None = None) -> TreeCheckpoint:
        if not hasattr(self.store, "tree_checkpoints"):
            raise AuditError(NO_TREE.format(type(self.store).__name__))
        found = await self.store.tree_checkpoints(size)
        if not found:
            raise AuditError(
                "the store has no signed Merkle checkpoint"
                + (f" at size {size}" if size is not None else "")
                + " yet (the bridge signs one every checkpoint interval)"
            )
        return found[-1]

    async def inclusion(self, index: int, size: int) -> list[bytes]:
        return await _proof(inclusion_proof(self.store, index, size))

    async def consistency(self, old: int, new: int) -> list[bytes]:
        return await _proof(consistency_proof(self.store, old, new))


async def _proof(work: Any) -> list[bytes]:
    try:
        return await work
    except merkle.ProofError as exc:
        raise AuditError(str(exc)) from None


@dataclass
class HttpProver:
    """The same through a running bridge's admin API."""

    source: HttpSource

    async def checkpoint(self, size: int | None = None) -> TreeCheckpoint:
        params = [("size", str(size))] if size is not None else None
        payload = await asyncio.to_thread(self.source._get, "/admin/tlog/checkpoint", params)
        return TreeCheckpoint(int(payload["size"]), str(payload["note"]))

    async def inclusion(self, index: int, size: int) -> list[bytes]:
        params = [("index", str(index)), ("size", str(size))]
        payload = await asyncio.to_thread(self.source._get, "/admin/proof/inclusion", params)
        return [base64.b64decode(h) for h in payload["proof"]]

    async def consistency(self, old: int, new: int) -> list[bytes]:
        params = [("from", str(old)), ("to", str(new))]
        payload = await asyncio.to_thread(self.source._get, "/admin/proof/consistency", params)
        return [base64.b64decode(h) for h in payload["proof"]]


def prover_for(source: Any) -> Prover:
    if isinstance(source, StoreSource):
        return StoreProver(source.store)
    if isinstance(source, HttpSource):
        return HttpProver(source)
    raise AuditError("this source cannot produce Merkle proofs")


# -- building a bundle --------------------------------------------------------------------


async def build_bundle(
    records: Sequence[Record], prover: Prover, previous: str | None = None
) -> dict[str, Any]:
    """Records with their inclusion proofs in the latest signed checkpoint covering them."""
    cp = await prover.checkpoint()
    last = max((r.position for r in records), default=0)
    if last > cp.size:
        raise AuditError(
            f"the latest signed checkpoint covers {cp.size} events, the records go to {last}; "
            "retry after the next checkpoint"
        )
    entries = []
    for r in records:
        proof = await prover.inclusion(r.position - 1, cp.size)
        entries.append(
            {"record": record_json(r), "proof": render_tlog_proof(r.position - 1, proof, cp.note)}
        )
    bundle: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "checkpoint": cp.note,
        "entries": entries,
    }
    if previous is not None:
        bundle["consistency"] = await consistency_section(previous, cp, prover)
    return bundle


async def consistency_section(previous: str, cp: TreeCheckpoint, prover: Prover) -> dict[str, Any]:
    try:
        old = note.parse_checkpoint(note.parse_note(previous).text)
    except note.NoteError as exc:
        raise AuditError(f"the previous checkpoint is not a signed checkpoint: {exc}") from None
    if old.size > cp.size:
        raise AuditError(
            f"the previous checkpoint (size {old.size}) is newer than the latest ({cp.size})"
        )
    proof = await prover.consistency(old.size, cp.size)
    return {"previous": previous, "proof": [b64(h) for h in proof]}


# -- verifying a bundle -------------------------------------------------------------------


class VerifyFailure(Exception):
    """One precise verdict: a kind a script can branch on and a sentence for a person."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class ProofReport:
    ok: bool = False
    kind: str = "ok"
    message: str = ""
    origin: str = ""
    size: int = 0
    root: str = ""
    records: list[int] = field(default_factory=list)
    witnesses: list[str] = field(default_factory=list)
    extends: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "verdict": self.kind,
            "message": self.message,
            "origin": self.origin,
            "size": self.size,
            "root": self.root,
            "positions": self.records,
            "witnesses": self.witnesses,
            "extends": self.extends,
        }

    def describe(self) -> str:
        if not self.ok:
            return f"FAILED ({self.kind}): {self.message}"
        text = (
            f"OK: {len(self.records)} record(s) at positions "
            f"{', '.join(map(str, self.records))} are in log {self.origin} as of its signed "
            f"checkpoint at size {self.size} (root {self.root})"
        )
        if self.extends is not None:
            text += f"; that checkpoint extends the one seen before at size {self.extends}"
        if self.witnesses:
            text += f"; cosigned by {', '.join(self.witnesses)}"
        return text


def log_verifier(public_key_pem: bytes, origin: str) -> note.Verifier:
    try:
        key = load_public_key(public_key_pem)
    except ValueError as exc:
        reason = str(exc).split(".")[0]
        raise AuditError(
            f"the public key is not an Ed25519 public key PEM ({reason})", EXIT_USAGE
        ) from None
    return note.Verifier(origin, note.raw_public(key))


def _open(text: str, public_key_pem: bytes, origin: str | None) -> tuple[note.Note, note.TreeHead]:
    """Check a checkpoint note against the log key (named by the note's own origin)."""
    try:
        claimed = note.parse_checkpoint(note.parse_note(text).text).origin
        return note.open_checkpoint(text, log_verifier(public_key_pem, claimed), origin)
    except note.NoteError as exc:
        raise VerifyFailure(exc.kind, str(exc)) from None


def check_consistency(
    previous: str, proof_b64: Sequence[str], head: note.TreeHead, public_key_pem: bytes
) -> int:
    """Prove the checkpoint `head` extends `previous` (same log, same key); its old size."""
    _, old = _open(previous, public_key_pem, head.origin)
    proof = [unb64(h, "a consistency proof hash") for h in proof_b64]
    try:
        merkle.verify_consistency(old.size, head.size, old.root, head.root, proof)
    except merkle.ProofError as exc:
        raise VerifyFailure("inconsistent", str(exc)) from None
    return old.size


def verify_bundle(
    raw: bytes,
    public_key_pem: bytes,
    *,
    previous: str | None = None,
    origin: str | None = None,
    witnesses: Sequence[note.Verifier] = (),
    quorum: int = 0,
) -> ProofReport:
    report = ProofReport()
    try:
        _verify_into(report, raw, public_key_pem, previous, origin, list(witnesses), quorum)
    except VerifyFailure as exc:
        report.ok, report.kind, report.message = False, exc.kind, str(exc)
        return report
    report.ok = True
    return report


def _load(raw: bytes) -> dict[str, Any]:
    try:
        bundle = json.loads(raw)
    except ValueError as exc:
        raise VerifyFailure("malformed", f"the bundle is not JSON (truncated?): {exc}") from None
    if not isinstance(bundle, dict) or bundle.get("format") != FORMAT:
        raise VerifyFailure("malformed", "the file is not a Lighthouse proof bundle")
    if bundle.get("version") != VERSION:
        raise VerifyFailure("malformed", f"bundle version {bundle.get('version')} is unknown")
    if not isinstance(bundle.get("entries"), list) or not bundle["entries"]:
        raise VerifyFailure("malformed", "the bundle holds no records")
    if not isinstance(bundle.get("checkpoint"), str):
        raise VerifyFailure("malformed", "the bundle has no checkpoint")
    return bundle


def _verify_into(
    report: ProofReport,
    raw: bytes,
    public_key_pem: bytes,
    previous: str | None,
    origin: str | None,
    witnesses: list[note.Verifier],
    quorum: int,
) -> None:
    bundle = _load(raw)
    signed, head = _open(bundle["checkpoint"], public_key_pem, origin)
    report.origin, report.size, report.root = head.origin, head.size, b64(head.root)
    for number, entry in enumerate(bundle["entries"], start=1):
        report.records.append(_check_entry(number, entry, bundle["checkpoint"], head))
    good, bad = note.cosigned_by(signed, witnesses)
    report.witnesses = good
    if bad:
        raise VerifyFailure("bad_cosignature", f"the cosignature of {bad[0]} does not verify")
    if len(good) < quorum:
        raise VerifyFailure(
            "witness_quorum",
            f"{len(good)} of the {len(witnesses)} witnesses given cosigned the checkpoint; "
            f"{quorum} required",
        )
    if previous is not None:
        section = bundle.get("consistency")
        if not isinstance(section, dict) or not isinstance(section.get("proof"), list):
            raise VerifyFailure(
                "no_consistency_proof",
                "the bundle carries no consistency proof (make it with `audit prove --previous`)",
            )
        if section.get("previous", "").strip() != previous.strip():
            raise VerifyFailure(
                "no_consistency_proof",
                "the bundle's consistency proof starts from another checkpoint than the one given",
            )
        report.extends = check_consistency(previous, section["proof"], head, public_key_pem)


def _check_entry(number: int, entry: Any, checkpoint: str, head: note.TreeHead) -> int:
    if not isinstance(entry, dict):
        raise VerifyFailure("malformed", f"entry {number} is not an object")
    try:
        record = msgspec.convert(entry.get("record"), Record)
    except msgspec.ValidationError as exc:
        raise VerifyFailure("malformed", f"entry {number}'s record is damaged: {exc}") from None
    index, proof, embedded = parse_tlog_proof(str(entry.get("proof", "")))
    if embedded != checkpoint:
        raise VerifyFailure("malformed", f"entry {number}'s proof is for another checkpoint")
    if index != record.position - 1:
        raise VerifyFailure(
            "not_included",
            f"record at position {record.position} comes with a proof for index {index}",
        )
    leaf = merkle.leaf_hash(record_bytes(record))
    try:
        merkle.verify_inclusion(leaf, index, head.size, proof, head.root)
    except merkle.ProofError as exc:
        raise VerifyFailure(
            "not_included",
            f"record at position {record.position} is not in the signed log "
            f"(altered record or proof): {exc}",
        ) from None
    return record.position


# -- HTTP ---------------------------------------------------------------------------------


def _int_param(request: web.Request, name: str, low: int) -> int:
    try:
        value = int(request.query[name])
    except KeyError:
        raise ValueError(f"{name}: required") from None
    except ValueError:
        raise ValueError(f"{name}: must be an integer") from None
    if value < low:
        raise ValueError(f"{name}: must be at least {low}")
    return value


def _bad(exc: ValueError, status: int = 400) -> web.Response:
    message = str(exc)
    return web.json_response(
        {"error": "invalid_request", "field": message.split(":", 1)[0], "message": message},
        status=status,
    )


def add_routes(app: web.Application, bridge_of: Callable[[web.Request], Bridge]) -> None:
    """`/admin/proof/inclusion`, `/admin/proof/consistency`, `/admin/tlog/checkpoint`,
    `POST /admin/tlog/cosignature` (admin bearer, like every `/admin/` route)."""

    async def latest(store: Any, size: int | None) -> TreeCheckpoint | None:
        if not hasattr(store, "tree_checkpoints"):  # a backend without the Merkle tree
            raise web.HTTPNotImplemented(
                text=json.dumps(
                    {"error": "not_implemented", "message": NO_TREE.format(type(store).__name__)}
                ),
                content_type="application/json",
            )
        found = await store.tree_checkpoints(size)
        return found[-1] if found else None

    async def checkpoint(request: web.Request) -> web.Response:
        store = bridge_of(request).store
        try:
            size = _int_param(request, "size", 1) if "size" in request.query else None
        except ValueError as exc:
            return _bad(exc)
        cp = await latest(store, size)
        if cp is None:
            return web.json_response(
                {"error": "not_found", "message": "no signed checkpoint at that size"}, status=404
            )
        return web.json_response(
            {"size": cp.size, "note": cp.note, "origin": origin_of(store.store_id)}
        )

    async def inclusion(request: web.Request) -> web.Response:
        store = bridge_of(request).store
        try:
            if "position" in request.query:
                index = _int_param(request, "position", 1) - 1
            else:
                index = _int_param(request, "index", 0)
            size = _int_param(request, "size", 1) if "size" in request.query else None
            cp = await latest(store, size)
            if cp is None:
                raise ValueError("size: no signed checkpoint at that size")
            proof = await inclusion_proof(store, index, cp.size)
        except (ValueError, merkle.ProofError) as exc:
            return _bad(ValueError(f"index: {exc}") if isinstance(exc, merkle.ProofError) else exc)
        return web.json_response(
            {
                "index": index,
                "size": cp.size,
                "proof": [b64(h) for h in proof],
                "tlog_proof": render_tlog_proof(index, proof, cp.note),
            }
        )

    async def consistency(request: web.Request) -> web.Response:
        store = bridge_of(request).store
        try:
            old, new = _int_param(request, "from", 0), _int_param(request, "to", 0)
            cp = await latest(store, None)
            if new > (cp.size if cp else 0):
                raise ValueError(
                    f"to: the latest signed checkpoint has size {cp.size if cp else 0}"
                )
            proof = await consistency_proof(store, old, new)
        except (ValueError, merkle.ProofError) as exc:
            return _bad(ValueError(f"from: {exc}") if isinstance(exc, merkle.ProofError) else exc)
        return web.json_response({"from": old, "to": new, "proof": [b64(h) for h in proof]})

    async def cosignature(request: web.Request) -> web.Response:
        store = bridge_of(request).store
        try:
            body = json.loads(await request.read() or b"{}")
            size, line = int(body["size"]), str(body["cosignature"])
            sig = note.parse_signature_line(line.rstrip("\n"))
            if len(sig.data) != 8 + 64:
                raise ValueError("not an Ed25519 tlog-cosignature/v1 (timestamp + signature)")
        except (ValueError, KeyError, TypeError, note.NoteError) as exc:
            return _bad(ValueError(f"body: {exc}"))
        cp = await latest(store, size)
        if cp is None:
            return _bad(ValueError(f"size: no signed checkpoint at size {size}"))
        await store.add_cosignature(size, sig.name, sig.line())
        return web.json_response({"stored": True, "size": size, "witness": sig.name})

    async def sign_now(request: web.Request) -> web.Response:
        """Sign a checkpoint of the current head now (witnesses and tests need not wait)."""
        store = bridge_of(request).store
        await store.checkpoint()
        cp = await latest(store, None)
        if cp is None:
            return web.json_response(
                {"error": "not_found", "message": "the log is empty"}, status=404
            )
        return web.json_response({"size": cp.size, "note": cp.note})

    app.router.add_get("/admin/tlog/checkpoint", checkpoint)
    app.router.add_post("/admin/tlog/checkpoint", sign_now)
    app.router.add_get("/admin/proof/inclusion", inclusion)
    app.router.add_get("/admin/proof/consistency", consistency)
    app.router.add_post("/admin/tlog/cosignature", cosignature)


# -- command line -------------------------------------------------------------------------


def _read(path_text: str, what: str) -> bytes:
    path = Path(path_text)
    if not path.is_file():
        raise AuditError(f"no {what} file at {path}", EXIT_USAGE)
    return path.read_bytes()


@_guarded
def cmd_prove(args: argparse.Namespace) -> int:
    if args.request is None and args.position is None:
        raise AuditError("give --request ID or --position N", EXIT_USAGE)
    if args.position is not None:
        query = AuditQuery(from_position=args.position, to_position=args.position, limit=1)
    else:
        query = AuditQuery(request_id=args.request, limit=MAX_RECORDS)
    previous = _read(args.previous, "previous checkpoint").decode() if args.previous else None

    async def run() -> dict[str, Any]:
        source = await open_source(args)
        try:
            records = [r async for r in iterate(source, query)]
            if not records:
                raise AuditError("no event matches; nothing to prove")
            return await build_bundle(records, prover_for(source), previous)
        finally:
            await source.close()

    bundle = asyncio.run(run())
    out = Path(args.out)
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text(json.dumps(bundle, indent=1) + "\n")
    tmp.replace(out)
    print(f"wrote a proof of {len(bundle['entries'])} record(s) to {out}")
    return EXIT_OK


def witness_keys(paths: Sequence[str]) -> list[note.Verifier]:
    out = []
    for p in paths:
        try:
            out.append(note.Verifier.from_vkey(_read(p, "witness key").decode()))
        except note.NoteError as exc:
            raise AuditError(f"{p}: {exc}", EXIT_USAGE) from None
    return out


@_guarded
def cmd_verify_proof(args: argparse.Namespace) -> int:
    raw = _read(args.file, "proof bundle")
    pem = _read(args.public_key, "public key")
    previous = _read(args.previous, "previous checkpoint").decode() if args.previous else None
    witnesses = witness_keys(args.witness or ())
    if args.witnesses_required > len(witnesses):
        raise AuditError(
            f"--witnesses-required {args.witnesses_required} exceeds the "
            f"{len(witnesses)} --witness keys given",
            EXIT_USAGE,
        )
    report = verify_bundle(
        raw,
        pem,
        previous=previous,
        origin=args.origin,
        witnesses=witnesses,
        quorum=args.witnesses_required,
    )
    print(json.dumps(report.to_json(), indent=2) if args.json else report.describe())
    return EXIT_OK if report.ok else EXIT_FAIL


def add_audit_commands(asub: Any) -> None:
    """`audit prove` and `audit verify-proof` (added to `lighthouse audit`)."""
    prove = asub.add_parser("prove", help="write a proof bundle for one request or position")
    prove.add_argument(
        "--db", help="store file (default: the running bridge, else ./lighthouse.db)"
    )
    prove.add_argument("--request", metavar="ID")
    prove.add_argument("--position", type=int, metavar="N")
    prove.add_argument("--previous", metavar="CHECKPOINT", help="also prove it extends this one")
    prove.add_argument("--out", required=True, metavar="FILE")
    prove.set_defaults(func=cmd_prove)

    verify = asub.add_parser("verify-proof", help="check a proof bundle offline")
    verify.add_argument("file")
    verify.add_argument("--public-key", required=True, metavar="PEM")
    verify.add_argument("--previous", metavar="CHECKPOINT", help="a checkpoint seen before")
    verify.add_argument("--origin", help="require this log origin (lighthouse/<store id>)")
    verify.add_argument("--witness", action="append", metavar="VKEY", help="witness key file")
    verify.add_argument("--witnesses-required", type=int, default=0, metavar="N")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=cmd_verify_proof)


__all__ = ["add_audit_commands", "add_routes", "build_bundle", "verify_bundle"]
