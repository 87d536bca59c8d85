"""The bridge's single path to the event store: append, then update every projection.

Projections are applied in-process right after the append is durable, so the code that
appended reads its own write at once; at start-up the same `apply` functions replay the
whole log, which is what makes the in-memory state a projection and not a second truth.

When several bridges share one store (PostgreSQL), `start_following` also applies what the
*other* bridges append: a subscription from the watermark, woken by the store's NOTIFY and
polling, so a flag change, key rotation or revocation made on one bridge reaches every
bridge's projections within about a second (the store's poll interval bounds it when a
notification is lost).

With a `Sealer`, contents are encrypted here on the way in and opened on the way out
(bridge/sealing.py): the store only ever sees ciphertext, and projections only plaintext.
The associated data names the record's stream version, which the store assigns; the Log
therefore tracks each stream's version as it applies facts and appends sealed events with
that expected version, re-sealing on the (rare) conflict when the caller asked for none.
Each fact says whether its contents were sealed (`Fact.sealed`): when an AgentForgotten
fact is applied, locally or followed, projections replace what that agent sealed by
``[erased]`` — the state a replay after the forget would rebuild.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec

from events import ANY_VERSION, EventStore, NewEvent, Record, StoreError, WrongExpectedVersion

from .domain import AGENT_FORGOTTEN, Fact
from .sealing import Sealer, content_fields, is_sealed

log = logging.getLogger(__name__)
_FOLLOW_RETRY_S = 0.5
_SEAL_ATTEMPTS = 8
_TRACKED_STREAMS = 200_000  # past this the version table restarts (a guess costs a retry)


class Projection(Protocol):
    def apply(self, fact: Fact) -> None: ...


class Log:
    """Appends through the store and feeds each new fact to the projections exactly once."""

    _REPLAY_PAGE = 5000

    def __init__(
        self,
        store: EventStore,
        projections: Sequence[Projection],
        sealer: Sealer | None = None,
    ) -> None:
        self.store = store
        self.sealer = sealer
        self._projections = ([sealer] if sealer is not None else []) + list(projections)
        self._versions: dict[str, int] = {}  # stream -> last version known or reserved
        self._watermark = 0  # every position <= watermark has been applied
        self._above: set[int] = set()
        self._follower: asyncio.Task[None] | None = None
        # Called with each fact the follower applied (another bridge's append, or one of
        # ours it saw first): how a bridge reacts to work routed to it by its peers.
        self.on_followed: list[Callable[[Fact], None]] = []

    @property
    def applied(self) -> int:
        """Every position up to this one is reflected in the projections."""
        return self._watermark

    def start_following(self) -> None:
        """Apply other processes' appends as they commit (shared stores only)."""
        if self._follower is None:
            self._follower = asyncio.create_task(self._follow(), name="lighthouse-log-follow")

    async def stop_following(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None

    async def _follow(self) -> None:
        while True:
            try:
                async for r in self.store.subscribe(self._watermark + 1):
                    if self.sealer is not None:
                        await self.sealer.load_keys_to_open((r,))
                    fact = self._apply_record(r)
                    if fact is not None:
                        for observer in self.on_followed:
                            try:
                                observer(fact)
                            except Exception:  # one observer's bug must not stop following
                                log.exception("observer of followed facts failed")
                return  # the store closed
            except StoreError as exc:  # e.g. the database is unreachable: catch up later
                log.warning("following the shared log paused: %s", exc)
                await asyncio.sleep(_FOLLOW_RETRY_S)

    async def catch_up(self, timeout_s: float = 2.0) -> None:
        """Wait (bounded) until every position up to the store's head is applied here: after
        a conflict, the fact that won is then in the projections."""
        head = (await self.store.head()).position
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._watermark < head and loop.time() < deadline:
            await asyncio.sleep(0.005)

    async def replay(self) -> int:
        """Rebuild every projection from the whole log; returns the number of facts."""
        position, count = 1, 0
        if self.sealer is not None:  # erased keys known before any record is opened
            forgets = await self.store.read_all(1, limit=None, types=[AGENT_FORGOTTEN])
            self.sealer.prime(r.data for r in forgets)
        while True:
            page = await self.store.read_all(position, limit=self._REPLAY_PAGE)
            for r in page:
                self._apply_record(r)
            count += len(page)
            if len(page) < self._REPLAY_PAGE:
                return count
            position = page[-1].position + 1

    async def read_stream(self, stream: str) -> list[Record]:
        """One stream's records with their contents opened (what projections would see)."""
        records = await self.store.read_stream(stream)
        if self.sealer is None:
            return records
        await self.sealer.load_keys_to_open(records)
        return [msgspec.structs.replace(r, data=self.sealer.open_record(r)) for r in records]

    def _apply_record(self, r: Record) -> Fact | None:
        """Open, track and apply one stored record; the fact, or None if applied already."""
        self._track(r.stream, r.version)
        if r.position <= self._watermark or r.position in self._above:
            return None  # our own append coming back through the subscription: no decrypt
        data = r.data if self.sealer is None else self.sealer.open_record(r)
        fact = Fact(r.position, r.stream, r.type, data, r.actor, r.time, is_sealed(r.data))
        return fact if self._apply(fact) else None

    def _track(self, stream: str, version: int) -> None:
        if version > self._versions.get(stream, 0):
            if len(self._versions) >= _TRACKED_STREAMS:
                self._versions.clear()
            self._versions[stream] = version

    async def append(
        self, stream: str, events: Sequence[NewEvent], expected_version: int = ANY_VERSION
    ) -> list[int]:
        sealed = self.sealer is not None and self.sealer.wants(events)
        if sealed:
            positions = await self._append_sealed(stream, events, expected_version)
        else:
            positions = await self._submit(stream, events, expected_version, expected_version)
        for position, event in zip(positions, events, strict=True):
            held = sealed and bool(content_fields(event.type, event.data))
            self._apply(
                Fact(position, stream, event.type, event.data, event.actor, event.time, held)
            )
        return positions

    async def _submit(
        self, stream: str, events: Sequence[NewEvent], expected: int, base: int | None
    ) -> list[int]:
        """Append, reserving the stream's versions before the first await so concurrent
        appends of this process chain onto each other in the order they were queued."""
        if base == ANY_VERSION:
            base = self._versions.get(stream)
        if base is not None:
            self._versions[stream] = base + len(events)
        try:
            return await self.store.append(stream, events, expected)
        except BaseException:
            self._versions.pop(stream, None)  # unknown again: the next guess may retry
            raise

    async def _append_sealed(
        self, stream: str, events: Sequence[NewEvent], expected_version: int
    ) -> list[int]:
        assert self.sealer is not None
        base = expected_version if expected_version != ANY_VERSION else None
        await self.sealer.load_keys_to_seal(events)
        for _ in range(_SEAL_ATTEMPTS):
            guess = base if base is not None else self._versions.get(stream, 0)
            sealed = [self.sealer.seal(stream, guess + i + 1, e) for i, e in enumerate(events)]
            try:
                return await self._submit(stream, sealed, guess, guess)
            except WrongExpectedVersion as exc:
                if base is not None:
                    raise  # the caller's own expectation failed: its conflict to handle
                self._versions[stream] = exc.actual  # the truth at that moment: re-seal
        raise WrongExpectedVersion(stream, ANY_VERSION, self._versions.get(stream, -1))

    async def append_events(
        self,
        stream: str,
        actor: str,
        events: Sequence[tuple[str, dict]],
        expected_version: int = ANY_VERSION,
    ) -> list[int]:
        """Append several (type, data) facts by one actor atomically."""
        batch = [NewEvent(type=t, data=d, actor=actor) for t, d in events]
        return await self.append(stream, batch, expected_version)

    async def record(self, stream: str, type_: str, data: dict, actor: str = "bridge") -> int:
        """Append one event with no concurrency expectation; returns its position."""
        event = NewEvent(type=type_, data=data, actor=actor)
        return (await self.append(stream, [event]))[0]

    def _apply(self, fact: Fact) -> bool:
        if fact.position <= self._watermark or fact.position in self._above:
            return False  # an idempotent retry handed back positions already applied
        for projection in self._projections:
            projection.apply(fact)
        self._above.add(fact.position)
        while self._watermark + 1 in self._above:
            self._watermark += 1
            self._above.remove(self._watermark)
        return True
