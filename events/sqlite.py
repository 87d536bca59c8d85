"""SQLite backend: one writer thread doing whole transactions, aiosqlite for readers.

Every awaited aiosqlite call costs a thread hop (~80 µs), so the writer does not use it:
a batch of appends is one function call on a dedicated thread that owns the write
connection — idempotency lookup, version checks, hashing and inserts all happen inside a
single BEGIN IMMEDIATE … COMMIT. Readers use aiosqlite on their own connection (WAL lets
them read while the writer commits).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import sqlite3
import sys
import time
import uuid
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiosqlite

from .chain import ChainKey, CheckpointSigner
from .errors import (
    KeyMismatch,
    OperationalError,
    SchemaError,
    StoreBusy,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreLocked,
    StoreReadOnly,
    os_store_error,
)
from .model import Checkpoint, Record, record_from_row
from .schema import migrate_sqlite, schema_version
from .staging import stage_request
from .store import GroupCommitStore, Head, PendingAppend, StoreConfig

_COLUMNS = "position, stream, version, event_id, type, time, actor, data, prev_hash, hash, digest"
_INSERT = f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_SYNC_MODES = {"OFF", "NORMAL", "FULL", "EXTRA"}
_VERSION_CACHE_LIMIT = 100_000
_WAL_CHECKPOINT_S = 0.5
_WAL_AUTOCHECKPOINT_PAGES = 20_000
log = logging.getLogger(__name__)


# Primary result codes (https://sqlite.org/rescode.html) and the error each becomes.
_BY_CODE: dict[int, type[OperationalError]] = {
    5: StoreBusy,  # SQLITE_BUSY
    6: StoreBusy,  # SQLITE_LOCKED
    8: StoreReadOnly,  # SQLITE_READONLY
    11: StoreCorrupt,  # SQLITE_CORRUPT
    13: StoreFull,  # SQLITE_FULL
    26: StoreCorrupt,  # SQLITE_NOTADB
}


def store_error(exc: BaseException, doing: str) -> OperationalError:
    """The `StoreError` a driver or OS error becomes: its class names the cause.

    SQLite reports a full disk as SQLITE_FULL but also, from some VFS paths, as a bare
    I/O error; the message is the fallback when the result code is not specific.
    """
    cls: type[OperationalError] = OperationalError
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        cls = _BY_CODE.get(code & 0xFF, OperationalError) if code is not None else cls
        text = str(exc).lower()
        if cls is OperationalError:
            if "disk is full" in text or "no space" in text:
                cls = StoreFull
            elif "readonly" in text or "read-only" in text:
                cls = StoreReadOnly
            elif "malformed" in text or "not a database" in text:
                cls = StoreCorrupt
            elif "locked" in text or "busy" in text:
                cls = StoreBusy
    elif isinstance(exc, OSError):
        return os_store_error(exc, doing)
    return cls(f"{doing}: {exc}")


class _NeedsLookup(Exception):
    """Internal: the optimistic write of a batch must be redone with the id lookup."""


class _WriterLock:
    """An exclusive advisory lock beside the database, naming its holder.

    The OS drops the lock when the process dies, so a crashed bridge never leaves a stale
    lock behind; the holder description is only there to make the refusal useful.
    """

    def __init__(self, db_path: Path) -> None:
        self.path = db_path.with_name(db_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreLocked(
                f"store {self.path.with_suffix('')} is already open for writing by {holder}; "
                "stop that process or use its admin API"
            ) from None
        os.ftruncate(fd, 0)
        cmd = " ".join(os.path.basename(a) for a in sys.argv[:3])
        holder = f"pid {os.getpid()} on {socket.gethostname()} ({cmd}) since {time.ctime()}"
        os.pwrite(fd, holder.encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def open_sqlite(
    path: Path, synchronous: str = "FULL", readonly: bool = False
) -> sqlite3.Connection:
    """A raw connection with the pragmas every Lighthouse connection needs."""
    if synchronous.upper() not in _SYNC_MODES:
        raise ValueError(f"synchronous must be one of {sorted(_SYNC_MODES)}, not {synchronous!r}")
    if readonly:
        if not path.exists():
            raise OperationalError(f"no store at {path}")
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        # A safety net only: the store checkpoints the WAL in the background.
        conn.execute(f"PRAGMA wal_autocheckpoint={_WAL_AUTOCHECKPOINT_PAGES}")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


class SqliteEventStore(GroupCommitStore):
    """The embedded default store (`./lighthouse.db`)."""

    def __init__(self, config: StoreConfig) -> None:
        super().__init__(config)
        self._lock = _WriterLock(config.path)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lighthouse-sqlite")
        self._wconn: sqlite3.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._versions: dict[str, int] = {}
        self._wal_task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, config: StoreConfig) -> SqliteEventStore:
        store = cls(config)
        try:
            if config.readonly:
                await store._open_readonly()
            else:
                await store._open_writer()
        except BaseException:
            await store._close_backend()
            raise
        return store

    # -- opening ---------------------------------------------------------------------------

    async def _open_writer(self) -> None:
        self._lock.acquire()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._prepare_writer)
        await self._open_reader()
        self._start_writer()
        self._wal_task = asyncio.create_task(self._checkpoint_wal(), name="lighthouse-wal")

    async def _checkpoint_wal(self) -> None:
        """Copy the WAL into the database off the commit path.

        SQLite's automatic checkpoint runs inside whichever COMMIT crosses the threshold,
        stalling that batch (and every appender waiting on it); a passive checkpoint on
        its own connection and thread every half second keeps commits short instead.
        """
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lighthouse-wal")
        conn = await loop.run_in_executor(
            pool, open_sqlite, self.config.path, self.config.synchronous
        )
        try:
            while True:
                await asyncio.sleep(_WAL_CHECKPOINT_S)
                await loop.run_in_executor(pool, conn.execute, "PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:  # the writer's own autocheckpoint is the fallback
            log.warning("background WAL checkpoint stopped: %s", exc)
        finally:
            await asyncio.shield(loop.run_in_executor(pool, conn.close))
            pool.shutdown(wait=False)

    def _prepare_writer(self) -> None:
        try:
            conn = open_sqlite(self.config.path, self.config.synchronous)
            self._wconn = conn
            migrate_sqlite(conn)
            meta = dict(conn.execute("SELECT key, value FROM store_meta").fetchall())
            fresh = "store_id" not in meta
            if fresh and conn.execute("SELECT 1 FROM events LIMIT 1").fetchone():
                raise KeyMismatch("store holds events but no identity; refusing to open")
            self._chain_key = ChainKey.load(self.config.chain_key_file, create=fresh)
            self._signer = CheckpointSigner.load(self.config.signing_key_file, create=fresh)
            if fresh:
                meta = {
                    "store_id": str(uuid.uuid4()),
                    "chain_key_fingerprint": self._chain_key.fingerprint(),
                    "created_at": repr(time.time()),
                }
                conn.executemany(
                    "INSERT INTO store_meta (key, value) VALUES (?, ?)", list(meta.items())
                )
            elif meta["chain_key_fingerprint"] != self._chain_key.fingerprint():
                raise KeyMismatch(
                    f"chain key {self.config.chain_key_file} is not the key store "
                    f"{meta['store_id']} was created with; refusing to open "
                    "(restore the original key file)"
                )
            self.store_id = meta["store_id"]
            self._head = self._load_head(conn)
            row = conn.execute("SELECT max(size) FROM checkpoints").fetchone()
            self._last_checkpoint_size = row[0] or 0
        except sqlite3.Error as exc:
            raise store_error(exc, f"cannot open store {self.config.path}") from None

    def _load_head(self, conn: sqlite3.Connection) -> Head:
        row = conn.execute(
            "SELECT position, hash, digest FROM events ORDER BY position DESC LIMIT 1"
        ).fetchone()
        seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
        if row is None and not seq:
            return Head()
        last = row[0] if row else 0
        if seq and seq[0] > last and not self.config.accept_damage:
            raise StoreError(
                f"store {self.config.path} is damaged: positions {last + 1}..{seq[0]} were "
                "removed from the tail; run `lighthouse verify` and `lighthouse repair`"
            )
        allocated = max(last, seq[0] if seq else 0)
        if row is None:
            return Head(allocated)
        return Head(allocated, row[1], row[2])

    async def _open_reader(self) -> None:
        uri = f"file:{self.config.path}?mode=ro"
        self._reader = await aiosqlite.connect(uri, uri=True, isolation_level=None)
        await self._reader.execute("PRAGMA busy_timeout=5000")

    async def _open_readonly(self) -> None:
        if not self.config.path.exists():
            raise OperationalError(f"no store at {self.config.path}")
        await self._open_reader()
        assert self._reader is not None
        try:
            if schema_version_ro(self.config.path) == 0:
                raise SchemaError(f"{self.config.path} is not a Lighthouse store (no schema)")
            rows = await self._reader.execute_fetchall("SELECT key, value FROM store_meta")
            self.store_id = dict(rows).get("store_id", "")
            await self._refresh_head()
        except sqlite3.Error as exc:
            raise store_error(exc, f"cannot read store {self.config.path}") from None

    async def _refresh_head(self) -> None:
        assert self._reader is not None
        rows = await self._reader.execute_fetchall(
            "SELECT position, hash, digest FROM events ORDER BY position DESC LIMIT 1"
        )
        if rows:
            self._head = Head(*rows[0])

    # -- writing ---------------------------------------------------------------------------

    async def _commit(self, batch: list[PendingAppend]) -> list[list[int] | StoreError]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._commit_sync, batch)

    def _commit_sync(self, batch: list[PendingAppend]) -> list[list[int] | StoreError]:
        """One transaction for the whole batch.

        Event ids are fresh in the common case, so the batch is first written without
        looking them up; when the UNIQUE index catches a reused id, or any request fails
        (a retry can look like a version conflict), the batch is redone with the lookup
        that tells an idempotent retry from a conflict.
        """
        with contextlib.suppress(sqlite3.IntegrityError, _NeedsLookup):
            return self._write_batch(batch, lookup=False)
        try:
            return self._write_batch(batch, lookup=True)
        except sqlite3.Error as exc:
            return [store_error(exc, "append failed, nothing written")] * len(batch)

    def _write_batch(
        self, batch: list[PendingAppend], *, lookup: bool
    ) -> list[list[int] | StoreError]:
        conn = self._wconn
        assert conn is not None
        head = Head(self._head.position, self._head.hash, self._head.digest)
        versions: dict[str, int] = {}
        rows: list[tuple[Any, ...]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            known = self._known_ids(conn, batch) if lookup else {}
            results = [self._stage(conn, req, head, versions, known, rows) for req in batch]
            if not lookup and any(isinstance(r, StoreError) for r in results):
                raise _NeedsLookup
            conn.executemany(_INSERT, rows)
            conn.execute("COMMIT")
        except (sqlite3.IntegrityError, _NeedsLookup):
            conn.execute("ROLLBACK")
            raise
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return [store_error(exc, "append failed, nothing written")] * len(batch)
        self._head = head
        if len(self._versions) + len(versions) > _VERSION_CACHE_LIMIT:
            self._versions.clear()
        self._versions.update(versions)
        return results

    def _known_ids(
        self, conn: sqlite3.Connection, batch: list[PendingAppend]
    ) -> dict[str, tuple[Any, ...]]:
        """Stored events whose ids this batch reuses, for idempotent retries — one query."""
        ids = [e.event_id for req in batch for e in req.events]
        found: dict[str, tuple[Any, ...]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(
                f"SELECT event_id, position, stream, type, actor, data FROM events "
                f"WHERE event_id IN ({marks})",
                chunk,
            ):
                found[row[0]] = row[1:]
        return found

    def _stream_version(self, conn: sqlite3.Connection, stream: str, staged: dict[str, int]) -> int:
        if stream in staged:
            return staged[stream]
        if stream in self._versions:
            return self._versions[stream]
        row = conn.execute("SELECT max(version) FROM events WHERE stream = ?", (stream,)).fetchone()
        return row[0] or 0

    def _stage(
        self,
        conn: sqlite3.Connection,
        req: PendingAppend,
        head: Head,
        versions: dict[str, int],
        known: dict[str, tuple[Any, ...]],
        rows: list[tuple[Any, ...]],
    ) -> list[int] | StoreError:
        """Check one request and add its rows to the transaction; never raise for the caller."""
        assert self._chain_key is not None
        return stage_request(
            req,
            head,
            lambda stream: self._stream_version(conn, stream, versions),
            self._chain_key,
            versions,
            known,
            rows,
        )

    async def _store_checkpoint(self, checkpoint: Checkpoint) -> None:
        def insert() -> None:
            assert self._wconn is not None
            self._wconn.execute(
                "INSERT OR IGNORE INTO checkpoints "
                "(size, store_id, head_hash, head_digest, time, signature) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    checkpoint.size,
                    checkpoint.store_id,
                    checkpoint.head_hash,
                    checkpoint.head_digest,
                    checkpoint.time,
                    checkpoint.signature,
                ),
            )

        await asyncio.get_running_loop().run_in_executor(self._thread, insert)

    # -- reading ---------------------------------------------------------------------------

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Record]:
        if self._reader is None:
            raise OperationalError("store is closed")
        try:
            rows = await self._reader.execute_fetchall(sql, params)
        except sqlite3.Error as exc:
            raise store_error(exc, "read failed") from None
        return [record_from_row(r) for r in rows]

    async def read_stream(
        self, stream: str, from_version: int = 1, limit: int | None = None
    ) -> list[Record]:
        return await self._fetch(
            f"SELECT {_COLUMNS} FROM events WHERE stream = ? AND version >= ? "
            "ORDER BY version LIMIT ?",
            (stream, from_version, -1 if limit is None else limit),
        )

    async def read_all(
        self,
        from_position: int = 1,
        limit: int | None = 1000,
        types: Collection[str] | None = None,
        to_position: int | None = None,
    ) -> list[Record]:
        where = ["position >= ?"]
        params: list[Any] = [from_position]
        if to_position is not None:
            where.append("position <= ?")
            params.append(to_position)
        if types:
            where.append(f"type IN ({','.join('?' * len(types))})")
            params.extend(types)
        params.append(-1 if limit is None else limit)
        return await self._fetch(
            f"SELECT {_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY position LIMIT ?",
            params,
        )

    async def checkpoints(self) -> list[Checkpoint]:
        if self._reader is None:
            raise OperationalError("store is closed")
        rows = await self._reader.execute_fetchall(
            "SELECT store_id, size, head_hash, head_digest, time, signature "
            "FROM checkpoints ORDER BY size"
        )
        return [
            Checkpoint(
                store_id=r[0],
                size=r[1],
                head_hash=r[2],
                head_digest=r[3],
                time=r[4],
                signature=r[5],
            )
            for r in rows
        ]

    async def key_fingerprint(self) -> str | None:
        if self._reader is None:
            raise OperationalError("store is closed")
        rows = await self._reader.execute_fetchall(
            "SELECT value FROM store_meta WHERE key = 'chain_key_fingerprint'"
        )
        return rows[0][0] if rows else None

    async def allocated(self) -> int:
        if self._reader is None:
            raise OperationalError("store is closed")
        rows = await self._reader.execute_fetchall(
            "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'events'"
        )
        return max(rows[0][0], self._head.position)

    # -- closing ---------------------------------------------------------------------------

    async def _close_backend(self) -> None:
        if self._wal_task is not None:
            self._wal_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._wal_task
            self._wal_task = None
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        if self._wconn is not None:
            conn, self._wconn = self._wconn, None
            await asyncio.get_running_loop().run_in_executor(self._thread, conn.close)
        self._thread.shutdown(wait=True)
        self._lock.release()


def schema_version_ro(path: Path) -> int:
    conn = open_sqlite(path, readonly=True)
    try:
        return schema_version(conn)
    finally:
        conn.close()


def migrate(path: Path) -> list[int]:
    """`lighthouse migrate` on a store file (takes the writer lock while it works)."""
    lock = _WriterLock(path)
    lock.acquire()
    try:
        conn = open_sqlite(path)
        try:
            return migrate_sqlite(conn)
        finally:
            conn.close()
    finally:
        lock.release()


__all__ = ["SqliteEventStore", "migrate", "open_sqlite"]
