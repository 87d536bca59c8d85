"""The store as a transparency log: proofs and signed tree heads over any backend.

A backend only has to (1) feed each committed leaf to a `merkle.Frontier` and store the
nodes it completes at `STORED_LEVEL` and above in the same transaction, and (2) answer
`tree_nodes(keys)`. Everything else — which nodes a proof needs, rehashing the low levels
from the records, assembling RFC 9162 proofs — is here, written once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import msgspec

import events.merkle as merkle

from .model import Record, record_bytes
from .note import Note, NoteSigner, TreeHead

ORIGIN_PREFIX = "lighthouse/"


def origin_of(store_id: str) -> str:
    """The checkpoint origin line (and log key name) naming one store."""
    return ORIGIN_PREFIX + store_id


def leaf_of(record: Record) -> bytes:
    """The record's Merkle leaf: over the same canonical bytes the hash chain covers."""
    return merkle.leaf_hash(record_bytes(record))


class TreeSource(Protocol):
    """What proof generation reads: records by position and stored tree nodes."""

    async def read_all(
        self, from_position: int = 1, limit: int | None = 1000, *a: object, **kw: object
    ) -> list[Record]: ...

    async def tree_nodes(self, keys: Iterable[merkle.Node]) -> dict[merkle.Node, bytes]: ...


async def range_hashes(source: TreeSource, ranges: Sequence[merkle.Range]) -> list[bytes]:
    nodes, tiles = merkle.plan(ranges)
    stored = await source.tree_nodes(nodes) if nodes else {}
    leaves: dict[int, bytes] = {}
    tile = 1 << merkle.STORED_LEVEL
    for t in sorted(tiles):
        for record in await source.read_all(t * tile + 1, limit=tile):
            leaves[record.position - 1] = leaf_of(record)
    return merkle.range_hashes(ranges, stored, leaves)


async def tree_root(source: TreeSource, size: int) -> bytes:
    return (await range_hashes(source, [(0, size)]))[0] if size else merkle.EMPTY_ROOT


async def inclusion_proof(source: TreeSource, index: int, size: int) -> list[bytes]:
    return await range_hashes(source, merkle.inclusion_ranges(index, size))


async def consistency_proof(source: TreeSource, old: int, new: int) -> list[bytes]:
    return await range_hashes(source, merkle.consistency_ranges(old, new))


def sign_tree_head(signer: NoteSigner, head: TreeHead) -> str:
    """A C2SP checkpoint note for `head`, signed by the log key."""
    text = head.text()
    return Note(text, (signer.sign(text),)).render()


class TreeCheckpoint(msgspec.Struct, frozen=True):
    size: int
    note: str


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(TreeCheckpoint)


class TreeCheckpointFile:
    """Append-only JSON-lines copy of the signed notes, outside the database (like
    `CheckpointFile`): a database rolled back cannot take the notes already written."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, cp: TreeCheckpoint) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, _encoder.encode(cp) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> list[TreeCheckpoint]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_bytes().splitlines():
            try:
                out.append(_decoder.decode(line))
            except msgspec.DecodeError:  # a torn last line after a crash
                continue
        return out


def tree_checkpoint_path(checkpoints: Path) -> Path:
    return checkpoints.with_name(checkpoints.name + ".tlog")
