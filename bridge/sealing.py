"""The encoding stage between the bridge and the store: contents sealed on append, opened
when facts are read back.

Which fields are *contents* is decided here, once, per event type; every other field —
types, actors, streams, request ids, paths, causes, times — stays in clear so the audit can
follow a request without a key. A sealed event's data keeps its clear fields and replaces
the contents with one envelope::

    "sealed": {"v": 1, "key": "dk:alice:…", "fields": ["message", "schema"],
               "size": 812, "nonce": "…", "ct": "…"}

The associated data binds the ciphertext to store id, stream, version, event id, type and
key id, and the hash chain covers the envelope as stored, so `lighthouse verify` and export
verification need no content key. Events written before this stage existed carry no
envelope and are handed on as they are.

The key is the data key of the event's actor (the agent who wrote the content). When that
key was destroyed by `agents forget`, contents read as ``[erased]``; when a record does not
open for any other reason (moved, tampered, key row missing), it is reported by position
and its contents read as ``[unreadable]`` — the other records are unaffected. A shared
vault that cannot be reached is no verdict on a record: its `StoreError` goes up (the log
follower retries from the same position; an append answers 503), nothing is marked.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from events import NewEvent, StoreError
from security.content import DataKeys, OpenError
from security.keys import VaultError

from .domain import (
    AGENT_FORGOTTEN,
    ANSWER_REJECTED,
    MESSAGE_SENT,
    REQUEST_ANSWERED,
    REQUEST_CREATED,
)
from .vault_io import off_loop

log = logging.getLogger(__name__)

CONTENT_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    REQUEST_CREATED: ("message", "schema"),
    REQUEST_ANSWERED: ("content",),
    MESSAGE_SENT: ("content",),
    ANSWER_REJECTED: ("content",),
}
"""Per event type, the fields that hold what agents said (everything else stays clear)."""
ENVELOPE: Final = "sealed"
ERASED: Final = "[erased]"
UNREADABLE: Final = "[unreadable]"
_VERSION: Final = 1

_encode = msgspec.json.Encoder(order="sorted").encode
_decode = msgspec.json.Decoder(dict[str, Any]).decode


class SealError(Exception):
    """A content could not be encrypted: the append fails, nothing is written in clear."""


@dataclass(frozen=True, slots=True)
class OpenFailure:
    position: int
    stream: str
    type: str
    reason: str


def content_fields(type_: str, data: dict[str, Any]) -> tuple[str, ...]:
    """The content fields present (and not None) in one event's data."""
    fields = CONTENT_FIELDS.get(type_)
    if not fields or ENVELOPE in data:
        return ()
    return tuple(f for f in fields if data.get(f) is not None)


def is_sealed(data: dict[str, Any]) -> bool:
    envelope = data.get(ENVELOPE)
    return isinstance(envelope, dict) and envelope.get("v") == _VERSION


def clear_contents(type_: str, data: dict[str, Any]) -> int:
    """How many content fields of this stored event are in clear (for `migrate`)."""
    return len(content_fields(type_, data))


SEALED: Final = "[sealed]"


def keyless(type_: str, data: dict[str, Any]) -> dict[str, Any]:
    """The data as a reader without content keys sees it: sealed contents read ``[sealed]``.

    For tools that rebuild projections from the log but never need what was said (repair):
    the projections find every field they expect, and no key is required."""
    if not is_sealed(data):
        return data
    fields = data[ENVELOPE].get("fields") or []
    out = {k: v for k, v in data.items() if k != ENVELOPE}
    out.update(dict.fromkeys(fields if isinstance(fields, list) else [], SEALED))
    return out


def erased(type_: str, data: dict[str, Any]) -> dict[str, Any]:
    """A sealed fact's data as it reads once its author's keys are destroyed: what a
    replay after `agents forget` gives, for projections that hold the fact already."""
    fields = [f for f in CONTENT_FIELDS.get(type_, ()) if data.get(f) is not None]
    return {**data, **dict.fromkeys(fields, ERASED)} if fields else data


def redacted(type_: str, data: dict[str, Any]) -> dict[str, Any]:
    """The data with contents left out (sealed or clear): sizes and clear fields remain."""
    if is_sealed(data):
        envelope = data[ENVELOPE]
        out = {k: v for k, v in data.items() if k != ENVELOPE}
        out[ENVELOPE] = {"fields": envelope.get("fields"), "size": envelope.get("size")}
        return out
    fields = content_fields(type_, data)
    if not fields:
        return data
    out = {k: v for k, v in data.items() if k not in fields}
    out["redacted"] = {"fields": list(fields), "size": len(_encode({f: data[f] for f in fields}))}
    return out


def _associated(
    store_id: str,
    stream: str,
    version: int,
    event_id: str,
    type_: str,
    key_id: str,
    fields: Iterable[str],
) -> bytes:
    return _encode(
        ["lh-content", _VERSION, store_id, stream, version, event_id, type_, key_id, list(fields)]
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class Sealer:
    """Seals contents for one store and opens them again; a projection of forget events.

    `forgotten` must hold every destroyed key id *before* replay opens anything (see
    :meth:`prime`), so an erased record is told apart from one that was tampered with.
    """

    def __init__(
        self,
        store_id: str,
        keys: DataKeys,
        *,
        on_seal_failure: Callable[[], None] = lambda: None,
        on_open_failure: Callable[[OpenFailure], None] = lambda failure: None,
    ) -> None:
        self.store_id = store_id
        self.keys = keys
        self.forgotten: set[str] = set()
        self.forgotten_agents: set[str] = set()
        self.failures: list[OpenFailure] = []
        self._on_seal_failure = on_seal_failure
        self._on_open_failure = on_open_failure

    # -- the forget projection ----------------------------------------------------------

    def prime(self, forget_events: Iterable[dict[str, Any]]) -> None:
        for data in forget_events:
            self._forgot(data)

    def apply(self, fact: Any) -> None:
        if fact.type == AGENT_FORGOTTEN:
            self._forgot(fact.data)

    def _forgot(self, data: dict[str, Any]) -> None:
        ids = [k for k in data.get("key_ids", []) if isinstance(k, str)]
        self.forgotten.update(ids)
        self.forgotten_agents.add(str(data.get("agent")))
        self.keys.forget_cached(ids)

    # -- sealing ------------------------------------------------------------------------

    @staticmethod
    def wants(events: Iterable[NewEvent]) -> bool:
        return any(content_fields(e.type, e.data) for e in events)

    async def load_keys_to_seal(self, events: Iterable[NewEvent]) -> None:
        """Read (or make) the data keys `seal` will need off the event loop (`vault_io`):
        the authors' first content on this bridge may be a round trip to a shared vault."""
        keys = self.keys
        for agent in {e.actor for e in events if content_fields(e.type, e.data)}:
            if not keys.ready_for(agent):
                await off_loop(functools.partial(keys.for_agent, agent), "making a data key")

    async def load_keys_to_open(self, records: Iterable[Any]) -> None:
        """Read the data keys `open_record` will need off the event loop. A key that does
        not open here is left for `open`, which reports that record and goes on."""
        keys = self.keys
        for r in records:
            if not is_sealed(r.data):
                continue
            key_id = r.data[ENVELOPE].get("key")
            if isinstance(key_id, str) and key_id not in self.forgotten and not keys.ready(key_id):
                with contextlib.suppress(VaultError):
                    await off_loop(functools.partial(keys.cipher, key_id), "reading a data key")

    def seal(self, stream: str, version: int, event: NewEvent) -> NewEvent:
        """The event as it is stored: contents replaced by their envelope."""
        fields = content_fields(event.type, event.data)
        if not fields:
            return event
        try:
            key_id, cipher = self.keys.for_agent(event.actor)
            plaintext = _encode({f: event.data[f] for f in fields})
            associated = _associated(
                self.store_id, stream, version, event.event_id, event.type, key_id, fields
            )
            nonce, ciphertext = cipher.seal(plaintext, associated)
        except StoreError:  # a shared vault out of reach: the store's 503, retry later
            raise
        except Exception as exc:  # whatever broke (vault, key, encoding): nothing in clear
            self._on_seal_failure()
            raise SealError(f"cannot encrypt the contents of a {event.type}: {exc}") from None
        data = {k: v for k, v in event.data.items() if k not in fields}
        data[ENVELOPE] = {
            "v": _VERSION,
            "key": key_id,
            "fields": list(fields),
            "size": len(plaintext),
            "nonce": _b64(nonce),
            "ct": _b64(ciphertext),
        }
        return NewEvent(
            type=event.type,
            data=data,
            actor=event.actor,
            event_id=event.event_id,
            time=event.time,
        )

    # -- opening ------------------------------------------------------------------------

    def open(
        self,
        position: int,
        stream: str,
        version: int,
        event_id: str,
        type_: str,
        data: dict[str, Any],
    ) -> dict[str, Any]:
        """The data with its contents back in clear (or ``[erased]``/``[unreadable]``)."""
        if not is_sealed(data):
            return data
        envelope = data[ENVELOPE]
        fields = envelope.get("fields") or []
        out = {k: v for k, v in data.items() if k != ENVELOPE}
        key_id = envelope.get("key")
        try:
            if not isinstance(key_id, str) or not isinstance(fields, list):
                raise OpenError("malformed envelope")
            if key_id in self.forgotten:  # before the vault: another bridge may be
                out.update(dict.fromkeys(fields, ERASED))  # about to delete the key row
                return out
            cipher = self.keys.cipher(key_id)
            if cipher is None:
                raise OpenError(f"data key {key_id} is not in the vault")
            associated = _associated(
                self.store_id, stream, version, event_id, type_, key_id, fields
            )
            plaintext = cipher.open(
                base64.b64decode(envelope["nonce"]), base64.b64decode(envelope["ct"]), associated
            )
            opened = _decode(plaintext)
        except StoreError:  # a shared vault out of reach is no verdict on this record
            raise
        except (OpenError, VaultError, KeyError, ValueError, TypeError, msgspec.DecodeError) as exc:
            failure = OpenFailure(position, stream, type_, str(exc) or type(exc).__name__)
            self.failures.append(failure)
            self._on_open_failure(failure)
            log.warning("record at position %d (%s) does not open: %s", position, type_, exc)
            out.update(dict.fromkeys(fields if isinstance(fields, list) else [], UNREADABLE))
            return out
        out.update(opened)
        return out

    def open_record(self, r: Any) -> dict[str, Any]:
        return self.open(r.position, r.stream, r.version, r.event_id, r.type, r.data)
