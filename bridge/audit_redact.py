"""Redacted exports: the log for auditors who must not see what agents said — not even as
ciphertext — still checked offline with the checkpoint public key alone.

A record *has contents* when it holds a sealed envelope or clear content fields
(`bridge.sealing`). A redacted export (`lighthouse audit export --redact`) writes such a
record as `lighthouse audit --redact` shows it — every clear field (type, actor, stream,
request id, recipients, times, which content fields there were and their size), no
content, no nonce, no ciphertext — plus a ``redaction`` object: the digest the record
chains onto (``prev_digest``), its Merkle ``leaf``, and an Ed25519 ``signature`` by the
store's checkpoint key over (label, prev_digest, digest, leaf, the canonical bytes of the
record as shown). Records without contents are written whole, as in any export.

Why a signature rather than a commitment the verifier recomputes: the public digest chain
and the tree leaf hash each record's canonical bytes whole, its contents as stored
(ciphertext) included. Without those bytes nobody can recompute a redacted record's digest
or leaf, so nothing short of the bytes could show that its clear fields are the ones
hashed; the exporter has to vouch for that, and signs what it vouches for.

What `verify-export` proves of a redacted export:

- every record without contents, exactly as for a full export (its digest recomputed);
- that each redacted record sits at its position in the signed log with the digest and
  leaf shown: the next record's recomputed digest covers that digest, so changing it breaks
  the chain up to a signed checkpoint; the leaves (attested ones included) hash to the
  signed tree root; no record was added, dropped or reordered;
- that the clear fields of each redacted record, and the digest it links to, are what the
  exporter signed: a field altered after export, a line moved, or a statement taken from
  another record fails, naming the position.

What it does not prove:

- that a redacted record's clear fields are the ones written at the time. That rests on
  the signature of whoever held the checkpoint key when exporting, not on recomputation: a
  key holder could sign altered clear fields. A full export (or `lighthouse verify`) of the
  same range proves them, and its digests must equal this one's;
- anything about the contents beyond their field names and size — by design;
- for records written before contents were encrypted (clear contents in the store): their
  contents are left out too, but the digest and leaf shown hash those contents together
  with fields the auditor sees, so a short or guessable content can be confirmed by trying
  guesses. Sealed contents cannot: those hashes cover ciphertext under a data key the
  auditor does not have.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from events import Record
from events.chain import CheckpointSigner, statement_signature_ok
from events.errors import KeyMismatch, MissingKey
from events.model import GENESIS_HASH, record_bytes
from events.tlog import leaf_of

from .sealing import content_fields, is_sealed, redacted

_LABEL: Final = "lighthouse redacted record v1"
_encode = msgspec.json.Encoder().encode


class RedactionError(ValueError):
    """A redacted export cannot be made here (no signing key, a record missing)."""


class Redaction(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the exporter attests of a record it shows without its contents."""

    prev_digest: str
    leaf: str  # base64 Merkle leaf hash of the record as stored
    signature: str  # base64 Ed25519, CheckpointSigner.sign_statement


class RedactedRecord(Record, frozen=True, kw_only=True):
    """A record with contents as a redacted export holds it: clear fields, attestation."""

    redaction: Redaction


class _Reader(Protocol):
    async def read_all(self, from_position: int = 1, limit: int | None = 1000) -> list[Record]: ...


def has_contents(r: Record) -> bool:
    """Contents (or their ciphertext) in this record: what a redacted export leaves out."""
    return is_sealed(r.data) or bool(content_fields(r.type, r.data))


def statement(shown: Record, prev_digest: str, leaf: str) -> bytes:
    """The bytes signed for one redacted record: where it links, what it hashes to, and
    every field shown (the record's canonical bytes with its redacted data)."""
    return _encode([_LABEL, prev_digest, shown.digest, leaf, msgspec.Raw(record_bytes(shown))])


def load_signer(key_file: Path) -> CheckpointSigner:
    try:
        return CheckpointSigner.load(key_file, create=False)
    except MissingKey:
        problem = "is missing"
    except (KeyMismatch, ValueError) as exc:
        problem = f"is not usable ({exc})"
    except OSError as exc:
        problem = f"cannot be read ({exc.strerror})"
    raise RedactionError(
        f"a redacted export is signed with the store's checkpoint key, and {key_file} "
        f"{problem}: run it where that key is, or through the running bridge"
    )


def attest(record: Record, prev_digest: str, signer: CheckpointSigner) -> RedactedRecord:
    shown = msgspec.structs.replace(record, data=redacted(record.type, record.data))
    leaf = base64.b64encode(leaf_of(record)).decode()
    signature = signer.sign_statement(statement(shown, prev_digest, leaf))
    return RedactedRecord(
        **msgspec.structs.asdict(shown), redaction=Redaction(prev_digest, leaf, signature)
    )


async def redact_page(
    store: _Reader, signer: CheckpointSigner, records: Sequence[Record]
) -> list[Record]:
    """`records` with each one holding contents replaced by its attested redaction."""
    out: list[Record] = []
    previous: Record | None = None
    for r in records:
        out.append(
            attest(r, await _prev_digest(store, r, previous), signer) if has_contents(r) else r
        )
        previous = r
    return out


async def _prev_digest(store: _Reader, r: Record, previous: Record | None) -> str:
    if previous is not None and previous.position == r.position - 1:
        return previous.digest
    if r.position <= 1:
        return GENESIS_HASH
    before = await store.read_all(r.position - 1, limit=1)
    if not before or before[0].position != r.position - 1:
        raise RedactionError(
            f"position {r.position - 1} is missing from the store; run `lighthouse verify`"
        )
    return before[0].digest


def from_json(event: dict[str, Any]) -> Record:
    """A record as the admin API hands it out, redacted ones with their attestation."""
    return msgspec.convert(event, RedactedRecord if "redaction" in event else Record)


def attestation_problem(
    shown: Record, raw: object, prev_digest: str | None, key: Ed25519PublicKey
) -> str | None:
    """Why a redacted line does not verify, or None. `prev_digest` is the digest the
    verifier recomputed for the record before; None takes the attested one (an inclusion
    export, whose leaf its proof pins in the tree instead)."""
    try:
        redaction = msgspec.convert(raw, Redaction)
    except msgspec.ValidationError as exc:
        return f"its redaction is malformed ({exc})"
    if has_contents(shown):
        return "holds contents although marked redacted"
    prev = redaction.prev_digest if prev_digest is None else prev_digest
    if not statement_signature_ok(statement(shown, prev, redaction.leaf), redaction.signature, key):
        return (
            "its clear fields, digest, leaf or link are not what the exporter signed "
            "(altered after export, moved, or signed with another key)"
        )
    return None


def line_leaf(record: Record, extra: dict[str, Any]) -> bytes:
    """The Merkle leaf of an export line: recomputed, or the attested one when redacted
    (an unusable one yields a leaf that matches nothing)."""
    raw = extra.get("redaction")
    if raw is None:
        return leaf_of(record)
    leaf = raw.get("leaf") if isinstance(raw, dict) else None
    try:
        return base64.b64decode(leaf, validate=True) if isinstance(leaf, str) else b""
    except (binascii.Error, ValueError):
        return b""
