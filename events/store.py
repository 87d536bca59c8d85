"""The store's interface and the group-commit writer every backend shares.

Backends implement a handful of primitives (`_commit`, `_read`, `_write_checkpoint`, …);
everything above them — batching concurrent appends into one transaction, resolving each
caller's future only after the batch is durable, checkpoint cadence, live subscriptions —
lives here once, so a new backend is "done" when it passes the conformance suite.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .chain import ChainKey, CheckpointFile, CheckpointSigner
from .errors import StoreClosed, StoreError
from .model import ANY_VERSION, GENESIS_HASH, Checkpoint, NewEvent, Record


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where a store lives and how hard it tries to keep what it was given.

    `key_dir` holds the chain key and checkpoint signing key; `checkpoint_file` the signed
    checkpoints. Both default to siblings of the database so a fresh install needs no
    setup, and both can be pointed elsewhere (another disk, a mounted secret).
    """

    path: Path
    url: str | None = None
    """A `postgresql://` URL: the log lives in that database (events/postgres.py). `path`
    then only names where the key dir and checkpoint file default to."""
    key_dir: Path | None = None
    checkpoint_file: Path | None = None
    synchronous: str = "FULL"
    checkpoint_every: int = 1000
    checkpoint_interval: float = 10.0
    max_batch: int = 2000
    readonly: bool = False
    accept_damage: bool = False
    """Open for writing although positions were cut from the tail (`repair --accept-damage`).
    New events continue after the highest position ever allocated — never reusing one — and
    chain onto the last surviving record; verify keeps reporting the gap."""

    @property
    def keys(self) -> Path:
        return self.key_dir or self.path.with_name(self.path.name + ".keys")

    @property
    def checkpoints(self) -> Path:
        return self.checkpoint_file or self.path.with_name(self.path.name + ".checkpoints")

    @property
    def chain_key_file(self) -> Path:
        return self.keys / "chain.key"

    @property
    def signing_key_file(self) -> Path:
        return self.keys / "checkpoint.key"


@dataclass(slots=True)
class Head:
    """The last record's place and hashes: what the next append chains onto."""

    position: int = 0
    hash: str = GENESIS_HASH
    digest: str = GENESIS_HASH


@dataclass(slots=True)
class PendingAppend:
    stream: str
    events: Sequence[NewEvent]
    expected_version: int
    future: asyncio.Future[list[int]] = field(repr=False)


class EventStore(abc.ABC):
    """An append-only, hash-chained log of events with optimistic concurrency per stream."""

    store_id: str

    @abc.abstractmethod
    async def append(
        self, stream: str, events: Sequence[NewEvent], expected_version: int = ANY_VERSION
    ) -> list[int]:
        """Append atomically; return the positions. Raises WrongExpectedVersion, EventIdConflict."""

    @abc.abstractmethod
    async def read_stream(
        self, stream: str, from_version: int = 1, limit: int | None = None
    ) -> list[Record]: ...

    @abc.abstractmethod
    async def read_all(
        self,
        from_position: int = 1,
        limit: int | None = 1000,
        types: Collection[str] | None = None,
        to_position: int | None = None,
    ) -> list[Record]:
        """Records with from_position <= position <= to_position (inclusive), in order."""

    @abc.abstractmethod
    async def head(self) -> Head: ...

    @abc.abstractmethod
    async def checkpoints(self) -> list[Checkpoint]: ...

    @abc.abstractmethod
    def subscribe(self, from_position: int = 1) -> AsyncIterator[Record]:
        """History from `from_position`, then live appends, with no gap and no duplicate."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def key_fingerprint(self) -> str | None:
        """The chain key fingerprint recorded at creation, when the backend keeps one."""
        return None

    async def allocated(self) -> int:
        """The highest position ever handed out (a cut tail leaves it above the head)."""
        return (await self.head()).position

    async def __aenter__(self) -> EventStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class GroupCommitStore(EventStore):
    """Batches concurrent appends into one transaction on one writer.

    Callers never await the database themselves: they queue a `PendingAppend` and wait on
    its future, which the writer task resolves once the transaction holding it has
    committed durably. While one batch commits, the next accumulates, so throughput grows
    with concurrency instead of paying one fsync per append.
    """

    _SUBSCRIBE_PAGE = 500

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self._head = Head()
        self._pending: list[PendingAppend] = []
        self._wakeup = asyncio.Event()
        self._appended: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._closed = False
        self._chain_key: ChainKey | None = None
        self._signer: CheckpointSigner | None = None
        self._checkpoint_file = CheckpointFile(config.checkpoints)
        self._last_checkpoint_size = 0
        self._last_checkpoint_time = time.monotonic()
        self.commit_observer: Callable[[int, float], None] | None = None
        """Called after each group commit with (events, seconds): metrics hook."""

    # -- primitives a backend provides ---------------------------------------------------

    @abc.abstractmethod
    async def _commit(self, batch: list[PendingAppend]) -> list[list[int] | StoreError]:
        """Write the whole batch in one transaction; one result per request, in order.

        Must advance `self._head` only after a successful commit.
        """

    @abc.abstractmethod
    async def _store_checkpoint(self, checkpoint: Checkpoint) -> None: ...

    @abc.abstractmethod
    async def _close_backend(self) -> None: ...

    # -- writer ----------------------------------------------------------------------------

    def _start_writer(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="lighthouse-store-writer")
        if self.config.checkpoint_interval > 0:
            self._ticker = asyncio.create_task(self._tick(), name="lighthouse-checkpoints")

    async def append(
        self, stream: str, events: Sequence[NewEvent], expected_version: int = ANY_VERSION
    ) -> list[int]:
        if self._closed or self._writer is None:
            raise StoreClosed("the event store is closed or read-only")
        if not events:
            return []
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._pending.append(PendingAppend(stream, events, expected_version, future))
        self._wakeup.set()
        return await future

    async def _write_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._pending:
                if self._closed:
                    return
                continue
            batch = self._pending[: self.config.max_batch]
            del self._pending[: len(batch)]
            if self._pending:
                self._wakeup.set()
            started = time.perf_counter()
            try:
                results = await self._commit(batch)
            except StoreError as exc:
                results = [exc] * len(batch)
            if self.commit_observer is not None:
                events = sum(len(req.events) for req in batch)
                self.commit_observer(events, time.perf_counter() - started)
            for req, result in zip(batch, results, strict=True):
                if req.future.done():
                    continue
                if isinstance(result, StoreError):
                    req.future.set_exception(result)
                else:
                    req.future.set_result(result)
            self._notify_appended()
            if self._head.position - self._last_checkpoint_size >= self.config.checkpoint_every:
                await self._checkpoint_now()

    def _notify_appended(self) -> None:
        if self._appended is not None and not self._appended.done():
            self._appended.set_result(None)
        self._appended = None

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.config.checkpoint_interval)
            if time.monotonic() - self._last_checkpoint_time >= self.config.checkpoint_interval:
                await self._checkpoint_now()

    async def _checkpoint_now(self) -> Checkpoint | None:
        """Sign the current (durable) head and store it in the database and the file."""
        head = self._head
        if head.position <= self._last_checkpoint_size or self._signer is None:
            return None
        checkpoint = self._signer.sign(
            Checkpoint(
                store_id=self.store_id,
                size=head.position,
                head_hash=head.hash,
                head_digest=head.digest,
                time=time.time(),
            )
        )
        await self._store_checkpoint(checkpoint)
        await asyncio.to_thread(self._checkpoint_file.append, checkpoint)
        self._last_checkpoint_size = head.position
        self._last_checkpoint_time = time.monotonic()
        return checkpoint

    async def checkpoint(self) -> Checkpoint | None:
        """Force a checkpoint of the current head (no-op when nothing new was appended)."""
        return await self._checkpoint_now()

    # -- reading ---------------------------------------------------------------------------

    async def head(self) -> Head:
        return Head(self._head.position, self._head.hash, self._head.digest)

    async def _wait_beyond(self, position: int) -> None:
        """Return once the head reaches `position` (or the store closes)."""
        while self._head.position < position and not self._closed:
            if self._writer is None:  # read-only: another process writes; poll.
                await asyncio.sleep(0.2)
                await self._refresh_head()
                continue
            if self._appended is None:
                self._appended = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._appended)

    async def _refresh_head(self) -> None:
        """Read-only stores learn about other processes' appends by re-reading the head."""

    async def subscribe(self, from_position: int = 1) -> AsyncIterator[Record]:
        position = max(1, from_position)
        while not self._closed:
            page = await self.read_all(position, limit=self._SUBSCRIBE_PAGE)
            for record in page:
                yield record
            if page:
                position = page[-1].position + 1
            if len(page) < self._SUBSCRIBE_PAGE:
                await self._wait_beyond(position)

    # -- lifecycle -------------------------------------------------------------------------

    async def close(self) -> None:
        """Flush queued appends, write a final checkpoint, release the store."""
        if self._closed:
            return
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._writer is not None:
            self._wakeup.set()
            await self._writer
            await self._checkpoint_now()
        self._notify_appended()
        await self._close_backend()
