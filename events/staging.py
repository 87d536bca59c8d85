"""Checking one append request and turning it into chained rows: shared by every backend.

A backend's transaction decides *where* the batch goes (its head, its stored versions and
event ids); what a request means — an idempotent retry, a version conflict, a reused id,
or new rows linked onto the head — is decided here once, so SQLite and PostgreSQL cannot
drift apart on the rules the conformance suite checks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .chain import ChainKey, public_link
from .errors import EventIdConflict, StoreError, WrongExpectedVersion
from .merkle import leaf_hash
from .model import ANY_VERSION, canonical, encode_data
from .store import Head, PendingAppend

Known = dict[str, tuple[Any, ...]]
"""event_id -> (position, stream, type, actor, data_json) of stored or staged events."""


def stage_request(
    req: PendingAppend,
    head: Head,
    current_version: Callable[[str], int],
    chain_key: ChainKey,
    versions: dict[str, int],
    known: Known,
    rows: list[tuple[Any, ...]],
    leaves: list[bytes] | None = None,
) -> list[int] | StoreError:
    """Check one request and add its rows (column order of `events`); never raise.

    With `leaves`, each row's RFC 6962 Merkle leaf hash is collected too (over the same
    canonical bytes as the chains) for a backend that keeps the tree.

    `head` and `versions` advance as rows are staged, so the next request of the same
    batch chains onto this one; nothing is written until the backend commits `rows`.
    """
    encoded = [encode_data(e.data) for e in req.events]
    replay = replayed_positions(req, encoded, known)
    if replay is not None:
        return replay
    current = versions[req.stream] if req.stream in versions else current_version(req.stream)
    if req.expected_version != ANY_VERSION and req.expected_version != current:
        return WrongExpectedVersion(req.stream, req.expected_version, current)
    clash = reused_id(req, known)
    if clash is not None:
        return EventIdConflict(clash)
    positions = []
    for offset, (event, data_json) in enumerate(zip(req.events, encoded, strict=True)):
        position, version = head.position + 1, current + offset + 1
        body = canonical(
            position=position,
            stream=req.stream,
            version=version,
            event_id=event.event_id,
            type=event.type,
            time=event.time,
            actor=event.actor,
            data_json=data_json,
        )
        hash_ = chain_key.link(body, head.hash)
        digest = public_link(body, head.digest)
        if leaves is not None:
            leaves.append(leaf_hash(body))
        rows.append(
            (
                position,
                req.stream,
                version,
                event.event_id,
                event.type,
                event.time,
                event.actor,
                data_json,
                head.hash,
                hash_,
                digest,
            )
        )
        known[event.event_id] = (position, req.stream, event.type, event.actor, data_json)
        head.position, head.hash, head.digest = position, hash_, digest
        positions.append(position)
    versions[req.stream] = current + len(req.events)
    return positions


def replayed_positions(
    req: PendingAppend, encoded: list[bytes], known: Known
) -> list[int] | StoreError | None:
    """Original positions when every event of the request is already stored identically."""
    first = req.events[0].event_id
    if first not in known:
        return None
    positions = []
    for event, data_json in zip(req.events, encoded, strict=True):
        stored = known.get(event.event_id)
        if stored is None or stored[1:] != (req.stream, event.type, event.actor, data_json):
            return EventIdConflict(event.event_id)
        positions.append(stored[0])
    return positions


def reused_id(req: PendingAppend, known: Known) -> str | None:
    """An event id of the request that is stored already or repeated within it."""
    seen: set[str] = set()
    for event in req.events:
        if event.event_id in known or event.event_id in seen:
            return event.event_id
        seen.add(event.event_id)
    return None
