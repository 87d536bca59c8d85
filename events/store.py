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
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .chain import ChainKey, CheckpointFile, CheckpointSigner, checkpoint_signature_ok
from .errors import (
    OperationalError,
    StoreClosed,
    StoreDamaged,
    StoreError,
    os_store_error,
    unavailable,
)
from .merkle import Frontier
from .model import ANY_VERSION, GENESIS_HASH, Checkpoint, NewEvent, RawRow, Record, encode_data
from .note import TreeHead
from .tlog import (
    TreeCheckpoint,
    TreeCheckpointFile,
    origin_of,
    sign_tree_head,
    tree_checkpoint_path,
)

log = logging.getLogger(__name__)
_PROBE_FIRST_S = 0.5
_PROBE_MAX_S = 10.0


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
class Failure:
    """The store's current failure (a component failing since `since`), for `/health`."""

    component: str
    error: StoreError
    since: float
    count: int = 1
    until: float | None = None
    """For a part without its own retry loop: when, with no new failure, to stop
    reporting it (monotonic clock); `None` = until that part succeeds."""

    def describe(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "reason": self.error.reason,
            "detail": str(self.error),
            "since": self.since,
            "failures": self.count,
            "retry_after": self.error.retry_after,
        }


class HealthState:
    """Which parts of a store are failing now; each part clears itself on its next success.

    A part is a background job or path (`append`, `checkpoint`, `wal_checkpoint`, …). The
    store is `degraded` while any part fails, so `/health` can say why without the caller
    having to catch the error that first showed it.
    """

    def __init__(self) -> None:
        self.failures: dict[str, Failure] = {}
        self.observer: Callable[[str, str], None] | None = None
        """Called with (component, reason) on every failure: the metrics hook."""

    def failed(self, component: str, error: StoreError, *, hold_s: float | None = None) -> None:
        """Record a failure; `hold_s` makes it lapse after that long without another one
        (for parts that only learn of a recovery from the next request that uses them)."""
        current = self.failures.get(component)
        if current is None or current.error.reason != error.reason:
            log.warning("event store %s failing (%s): %s", component, error.reason, error)
            current = self.failures[component] = Failure(component, error, time.time())
        else:
            current.error, current.count = error, current.count + 1
        current.until = None if hold_s is None else time.monotonic() + hold_s
        if self.observer is not None:
            self.observer(component, error.reason)

    def succeeded(self, component: str) -> None:
        failure = self.failures.pop(component, None)
        if failure is not None:
            log.warning(
                "event store %s recovered after %d failures (%s)",
                component,
                failure.count,
                failure.error.reason,
            )

    def _lapse(self) -> None:
        now = time.monotonic()
        for name in [n for n, f in self.failures.items() if f.until is not None and f.until < now]:
            del self.failures[name]

    @property
    def degraded(self) -> bool:
        self._lapse()
        return bool(self.failures)

    def first(self) -> Failure | None:
        self._lapse()
        return min(self.failures.values(), key=lambda f: f.since, default=None)

    def describe(self) -> dict[str, Any]:
        first = self.first()
        return {
            "status": "degraded" if first else "ok",
            "reason": first.error.reason if first else None,
            "retry_after": first.error.retry_after if first else None,
            "failing": [f.describe() for f in self.failures.values()],
        }


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

    async def read_raw(self, from_position: int = 1, limit: int = 1000) -> list[RawRow]:
        """Records as stored: `data` is the exact bytes the backend holds (see `RawRow`).

        Verify hashes these bytes, never a re-encoding. This fallback re-encodes the decoded
        data, which hides byte-level edits: a backend that stores the bytes overrides it.
        """
        return [
            (
                r.position,
                r.stream,
                r.version,
                r.event_id,
                r.type,
                r.time,
                r.actor,
                encode_data(r.data),
                r.prev_hash,
                r.hash,
                r.digest,
            )
            for r in await self.read_all(from_position, limit=limit)
        ]

    async def integrity_problems(self) -> list[tuple[int, str, str]]:
        """The backend's own consistency check: (position or 0, kind, detail) per finding.

        Catches what walking the chain cannot see, such as an index that disagrees with its
        table (lookups by type or stream silently missing events).
        """
        return []

    async def checkpoint_file_expected(self) -> bool:
        """Whether this store has ever written its checkpoint file (its loss is damage)."""
        return bool(await self.checkpoints())

    def health(self) -> dict[str, Any]:
        """`{"status": "ok" | "degraded", "reason": …, "failing": […]}` for `/health`."""
        return HealthState().describe()

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
        self._checkpoint_file_marked = False
        self._frontier: Frontier | None = None
        """The Merkle tree's right edge as of the last commit (replaced, never mutated)."""
        self._last_tree_size = 0
        self.commit_observer: Callable[[int, float], None] | None = None
        """Called after each group commit with (events, seconds): metrics hook."""
        self.state = HealthState()
        self._probe_task: asyncio.Task[None] | None = None

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

    async def _probe(self) -> None:
        """A tiny durable write outside the log (raises StoreError): while appends fail,
        it tells when the store accepts writes again without waiting for real traffic."""

    async def _mark_checkpoint_file(self) -> None:
        """Record in the store that its checkpoint file exists (so losing it is damage)."""

    def health(self) -> dict[str, Any]:
        return self.state.describe()

    # -- damage a writer must not write over ------------------------------------------------

    def _outside_checkpoints_check(self, allocated: int, file_expected: bool) -> int:
        """Compare the store with the checkpoint file kept outside it; return the position
        new events must start after.

        A signed checkpoint larger than anything the store ever allocated proves a cut tail
        (the WAL truncated, a backup restored); a missing file the store has written is lost
        evidence. Either refuses a writer unless `accept_damage`, and then the next position
        is past every covered one, so no position a signed checkpoint covers is ever reused.
        """
        path = self.config.checkpoints
        if not path.exists():
            if file_expected and not self.config.accept_damage:
                raise StoreDamaged(
                    f"checkpoint file {path} is missing, but store {self.config.path} has "
                    "written signed checkpoints to it: restore it (or pass its location), or "
                    "run `lighthouse repair --accept-damage` to continue without it",
                    kind="checkpoint_file_missing",
                )
            return allocated
        assert self._signer is not None
        public = self._signer.public_key()
        covered = max(
            (
                cp.size
                for cp in CheckpointFile(path).read()
                if cp.store_id == self.store_id and checkpoint_signature_ok(cp, public)
            ),
            default=0,
        )
        if covered > allocated and not self.config.accept_damage:
            raise StoreDamaged(
                f"store {self.config.path} is damaged: a signed checkpoint in {path} covers "
                f"{covered} events but the store ends at {allocated} (positions "
                f"{allocated + 1}..{covered} were cut); run `lighthouse verify`, then "
                "`lighthouse repair --accept-damage` to continue after them",
                kind="truncated",
            )
        return max(allocated, covered)

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
            except Exception as exc:  # the writer must outlive any one batch
                log.exception("event store commit failed unexpectedly")
                results = [OperationalError(f"append failed, nothing written: {exc}")] * len(batch)
            self._observe(results)
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
                await self._checkpoint_safely()

    def _observe(self, results: Sequence[list[int] | StoreError]) -> None:
        """Track whether appends work: any success clears `append`, an outage sets it."""
        failure = next((r for r in results if unavailable(r)), None)
        if failure is not None:
            assert isinstance(failure, StoreError)
            self.state.failed("append", failure)
            self._start_probe()
        elif any(not isinstance(r, StoreError) for r in results):
            self.state.succeeded("append")

    def _start_probe(self) -> None:
        if self._probe_task is None or self._probe_task.done():
            self._probe_task = asyncio.create_task(self._probe_loop(), name="lighthouse-probe")

    async def _probe_loop(self) -> None:
        """While appends fail, probe with backoff; stop once the store writes again."""
        delay = _PROBE_FIRST_S
        while "append" in self.state.failures and not self._closed:
            await asyncio.sleep(delay)
            if "append" not in self.state.failures:
                return
            try:
                await self._probe()
            except StoreError as exc:
                if unavailable(exc):
                    self.state.failed("append", exc)
                delay = min(delay * 2, _PROBE_MAX_S)
                continue
            self.state.succeeded("append")

    async def _checkpoint_safely(self) -> None:
        """A checkpoint that cannot be written now is retried later, never fatal: the log
        itself is durable, and the writer must keep serving appends."""
        try:
            await self._checkpoint_now()
        except StoreError as exc:
            self.state.failed("checkpoint", exc)
        else:
            self.state.succeeded("checkpoint")

    def _notify_appended(self) -> None:
        if self._appended is not None and not self._appended.done():
            self._appended.set_result(None)
        self._appended = None

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.config.checkpoint_interval)
            if time.monotonic() - self._last_checkpoint_time >= self.config.checkpoint_interval:
                await self._checkpoint_safely()

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
        try:
            await asyncio.to_thread(self._checkpoint_file.append, checkpoint)
        except OSError as exc:
            raise os_store_error(exc, f"cannot append to {self._checkpoint_file.path}") from None
        if not self._checkpoint_file_marked:
            await self._mark_checkpoint_file()
            self._checkpoint_file_marked = True
        await self._sign_tree_head()
        self._last_checkpoint_size = head.position
        self._last_checkpoint_time = time.monotonic()
        return checkpoint

    async def _sign_tree_head(self) -> None:
        """Beside the chain checkpoint, a C2SP checkpoint note over the Merkle root."""
        frontier = self._frontier
        if frontier is None or self._signer is None or frontier.size <= self._last_tree_size:
            return
        origin = origin_of(self.store_id)
        head = TreeHead(origin, frontier.size, frontier.root())
        cp = TreeCheckpoint(head.size, sign_tree_head(self._signer.note_signer(origin), head))
        await self._store_tree_checkpoint(cp)
        path = tree_checkpoint_path(self.config.checkpoints)
        await asyncio.to_thread(TreeCheckpointFile(path).append, cp)
        self._last_tree_size = head.size

    @abc.abstractmethod
    async def _store_tree_checkpoint(self, cp: TreeCheckpoint) -> None:
        """Store one signed tree note beside the tree (every backend keeps the tree)."""

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
        """Flush queued appends, write a final checkpoint, release the store.

        The backend is closed (and the writer lock released) whatever the flush or the
        final checkpoint raise: a store that failed to close cleanly must not stay held.
        """
        if self._closed:
            return
        self._closed = True
        try:
            for task in (self._ticker, self._probe_task):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if self._writer is not None:
                self._wakeup.set()
                await self._writer
                await self._checkpoint_now()
        except StoreError as exc:
            log.error("final checkpoint not written (%s): %s", exc.reason, exc)
        finally:
            for req in self._pending:
                if not req.future.done():
                    req.future.set_exception(StoreClosed("the event store closed"))
            self._pending.clear()
            self._notify_appended()
            await self._close_backend()
