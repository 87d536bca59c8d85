"""The shapes of the log: what callers append and what the store hands back.

Events are facts, so both shapes are frozen msgspec Structs. `canonical()` is the one
encoding every hash is computed over; it is deterministic (sorted keys, shortest float
repr), so the same record always produces the same bytes on any machine.
"""

from __future__ import annotations

import os
import threading
import time as _time
from collections.abc import Sequence
from typing import Any, Final

import msgspec

ANY_VERSION: Final = -2
"""`expected_version` value that skips the optimistic-concurrency check."""
NO_STREAM: Final = 0
"""`expected_version` value asserting the stream does not exist yet (versions start at 1)."""

GENESIS_HASH: Final = "0" * 64


class _RandomPool:
    """Bytes from the OS CSPRNG, drawn 2.5 kB at a time: one `getrandom` per 256 event ids
    instead of one per id (the syscall was most of an id's cost on the append path)."""

    SIZE = 10 * 256

    def __init__(self) -> None:
        self.pool = b""
        self.offset = 0
        self.lock = threading.Lock()  # ids are made on the loop and in worker threads

    def reset(self) -> None:
        self.pool, self.offset, self.lock = b"", 0, threading.Lock()

    def take10(self) -> bytes:
        with self.lock:
            offset = self.offset
            if offset + 10 > len(self.pool):
                self.pool, offset = os.urandom(self.SIZE), 0
            self.offset = offset + 10
            return self.pool[offset : offset + 10]


_random = _RandomPool()
os.register_at_fork(after_in_child=_random.reset)  # a child must not reuse our bytes


def _new_event_id() -> str:
    """A UUIDv7 (RFC 9562): time-ordered, so the event_id index is appended to, not
    scattered — random UUID4 ids made every commit rewrite many index pages. Formatted
    by hand: `str(uuid.UUID(int=...))` cost more than the rest of the id."""
    ms = _time.time_ns() // 1_000_000
    rand = int.from_bytes(_random.take10(), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 68) << 64
    value |= 0b10 << 62 | (rand & ((1 << 62) - 1))
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class NewEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event a caller wants appended. Resending the same object is an idempotent retry."""

    type: str
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    actor: str = "system"
    event_id: str = msgspec.field(default_factory=_new_event_id)
    time: float = msgspec.field(default_factory=_time.time)


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """A stored event, bound to its place in the log by `position` and the hash chain.

    `hash` is the HMAC chain (needs the secret chain key); `digest` is a public SHA-256
    chain over the same bytes, which lets an auditor holding only the checkpoint public key
    check an export.
    """

    position: int
    stream: str
    version: int
    event_id: str
    type: str
    time: float
    actor: str
    data: dict[str, Any]
    prev_hash: str
    hash: str
    digest: str


RawRow = tuple[int, str, int, str, str, float, str, bytes, str, str, str]
"""A record exactly as stored: (position, stream, version, event_id, type, time, actor,
data bytes, prev_hash, hash, digest). A tuple, not a Struct: verify walks millions."""


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """A signed statement "the log of store `store_id` had `size` events ending in `head_hash`".

    Kept in the database and in a file outside it: a tail cut from the database cannot
    remove the checkpoints that were already copied out.
    """

    store_id: str
    size: int
    head_hash: str
    head_digest: str
    time: float
    signature: str = ""


_encoder = msgspec.json.Encoder(order="sorted")
_data_decoder = msgspec.json.Decoder(dict[str, Any])


def record_from_row(row: Sequence[Any]) -> Record:
    """A stored row in `events` column order (position … digest), data as canonical JSON."""
    return Record(
        position=row[0],
        stream=row[1],
        version=row[2],
        event_id=row[3],
        type=row[4],
        time=row[5],
        actor=row[6],
        data=_data_decoder.decode(row[7]),
        prev_hash=row[8],
        hash=row[9],
        digest=row[10],
    )


def encode_data(data: dict[str, Any]) -> bytes:
    """Canonical JSON of an event's data: what the database stores and the hash covers."""
    return _encoder.encode(data)


def canonical(
    *,
    position: int,
    stream: str,
    version: int,
    event_id: str,
    type: str,
    time: float,
    actor: str,
    data_json: bytes,
) -> bytes:
    """The bytes a record's hash covers: every field but the hashes, in a fixed order."""
    head = _encoder.encode([position, stream, version, event_id, type, time, actor])
    return head[:-1] + b"," + data_json + b"]"


def checkpoint_payload(cp: Checkpoint) -> bytes:
    """The bytes a checkpoint signature covers."""
    return _encoder.encode([cp.store_id, cp.size, cp.head_hash, cp.head_digest, cp.time])


def record_bytes(record: Record) -> bytes:
    """The canonical bytes of a stored record, recomputed from its fields (for verifiers)."""
    return canonical(
        position=record.position,
        stream=record.stream,
        version=record.version,
        event_id=record.event_id,
        type=record.type,
        time=record.time,
        actor=record.actor,
        data_json=encode_data(record.data),
    )
