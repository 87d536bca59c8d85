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
import shutil
import socket
import sqlite3
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec

import events.merkle as merkle

from .chain import ChainKey, CheckpointSigner
from .errors import (
    KeyMismatch,
    OperationalError,
    SchemaError,
    StoreBusy,
    StoreCorrupt,
    StoreDamaged,
    StoreError,
    StoreFull,
    StoreLocked,
    StoreReadOnly,
    os_store_error,
)
from .model import Checkpoint, RawRow, Record, record_from_row
from .schema import migrate_sqlite, schema_version
from .staging import stage_request
from .store import GroupCommitStore, Head, PendingAppend, StoreConfig
from .tlog import TreeCheckpoint, leaf_of

_COLUMNS = "position, stream, version, event_id, type, time, actor, data, prev_hash, hash, digest"
_INSERT = f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_NODE = "INSERT INTO merkle_nodes (level, idx, hash) VALUES (?, ?, ?)"
_SYNC_MODES = {"OFF", "NORMAL", "FULL", "EXTRA"}
_VERSION_CACHE_LIMIT = 100_000
_WAL_CHECKPOINT_S = 0.5
_WAL_BACKOFF_MAX_S = 30.0
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


_data_decoder = msgspec.json.Decoder(dict[str, Any])


def _decodes(data: bytes | str) -> bool:
    try:
        _data_decoder.decode(data)
    except msgspec.DecodeError:
        return False
    return True


def _passive_checkpoint(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """(busy, WAL frames, frames checkpointed), as `PRAGMA wal_checkpoint` reports them."""
    return conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()


# Totals per index key, read once through the index and once from the table: a lookup by
# type, stream or event_id that misses or invents a row changes its group's totals.
_INDEX_TOTALS = {
    "events_type_position": (
        "SELECT type, count(*), sum(position) FROM events {} WHERE type >= '' GROUP BY type"
    ),
    "sqlite_autoindex_events_1": (
        "SELECT count(*), sum(position), sum(length(event_id)) FROM events {} WHERE event_id >= ''"
    ),
    "sqlite_autoindex_events_2": (
        "SELECT count(*), sum(position), sum(version), sum(length(stream)) FROM events {} "
        "WHERE stream >= ''"
    ),
}


def _index_difference(index: str, via_index: list[Any], via_table: list[Any]) -> str:
    if index == "events_type_position":
        a = {r[0]: r[1] for r in via_index}
        b = {r[0]: r[1] for r in via_table}
        diffs = [
            f"{t!r}: {a.get(t, 0)} via index, {b.get(t, 0)} in table"
            for t in sorted(set(a) | set(b), key=str)
            if a.get(t) != b.get(t)
        ]
        return (
            f"index {index} disagrees with the table ({'; '.join(diffs[:5]) or 'positions differ'})"
        )
    return f"index {index} disagrees with the table: {via_index} via index, {via_table} in table"


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
        _private_dirs(self.path.parent)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreReadOnly(
                f"cannot create the writer lock {self.path} ({exc.strerror}): the store's "
                "directory must be writable for a writer — `lighthouse verify` can still read it"
            ) from None
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


def create_private(path: Path) -> None:
    """Create `path` (and missing parent directories) readable by its owner only.

    SQLite creates `-wal` and `-shm` with the database file's mode, so a database
    created 0600 keeps all three private whatever the umask; existing files are left as
    they are (an operator may have chosen their mode).
    """
    if path.exists():
        return
    _private_dirs(path.parent)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))


def _private_dirs(directory: Path) -> None:
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o700)
            os.chmod(d, 0o700)  # mkdir's mode is filtered by the umask


def _require_writable(path: Path) -> None:
    """Refuse a database file the process cannot write: SQLite would silently open it
    read-only and every append would fail later, one request at a time."""
    try:
        os.close(os.open(path, os.O_RDWR))
    except OSError as exc:
        raise StoreReadOnly(
            f"store {path} is not writable ({exc.strerror}); a writer needs read-write "
            "access to the file and its directory (check permissions, `chattr`, the "
            "mount) — `lighthouse verify` can still read it"
        ) from None


def _ro_uri(path: Path, *, immutable: bool = False) -> str:
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    return uri + "&immutable=1" if immutable else uri


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
            _ro_uri(path), uri=True, isolation_level=None, check_same_thread=False
        )
    else:
        create_private(path)
        _require_writable(path)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        # A safety net only: the store checkpoints the WAL in the background.
        conn.execute(f"PRAGMA wal_autocheckpoint={_WAL_AUTOCHECKPOINT_PAGES}")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


class WalCheckpointState:
    """What the background WAL checkpointer did last, for `/health` and metrics."""

    def __init__(self) -> None:
        self.running = False
        self.last_ok: float | None = None
        self.wal_frames = 0
        self.errors = 0
        self.retry_in: float | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "last_ok": self.last_ok,
            "wal_frames": self.wal_frames,
            "errors": self.errors,
            "retry_in_s": self.retry_in,
        }


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
        self.wal = WalCheckpointState()
        self._copy_dir: tempfile.TemporaryDirectory[str] | None = None

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
        await self._sign_tree_head()

    async def _checkpoint_wal(self) -> None:
        """Copy the WAL into the database off the commit path.

        SQLite's automatic checkpoint runs inside whichever COMMIT crosses the threshold,
        stalling that batch (and every appender waiting on it); a passive checkpoint on
        its own connection and thread every half second keeps commits short instead.
        A failure (a full disk, an I/O error) is retried with backoff up to 30 s and shown
        in `/health` — never the end of checkpointing, or the WAL would grow without bound.
        """
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lighthouse-wal")
        conn: sqlite3.Connection | None = None
        delay = _WAL_CHECKPOINT_S
        self.wal.running = True
        try:
            while True:
                await asyncio.sleep(delay)
                try:
                    if conn is None:
                        conn = await loop.run_in_executor(
                            pool, open_sqlite, self.config.path, self.config.synchronous
                        )
                    row = await loop.run_in_executor(pool, _passive_checkpoint, conn)
                except (sqlite3.Error, OSError, StoreError) as exc:
                    error = (
                        exc if isinstance(exc, StoreError) else store_error(exc, "WAL checkpoint")
                    )
                    self.wal.errors += 1
                    delay = min(delay * 2, _WAL_BACKOFF_MAX_S)
                    self.wal.retry_in = delay
                    self.state.failed("wal_checkpoint", error)
                    continue
                self.wal.wal_frames, self.wal.last_ok, self.wal.retry_in = row[1], time.time(), None
                self.state.succeeded("wal_checkpoint")
                delay = _WAL_CHECKPOINT_S
        finally:
            self.wal.running = False
            if conn is not None:
                await asyncio.shield(loop.run_in_executor(pool, conn.close))
            pool.shutdown(wait=False)

    def health(self) -> dict[str, Any]:
        return {**super().health(), "wal_checkpoint": self.wal.describe()}

    async def _probe(self) -> None:
        def write() -> None:
            conn = self._wconn
            if conn is None:
                raise OperationalError("store is closed")
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "INSERT INTO store_meta (key, value) VALUES ('health_probe', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (repr(time.time()),),
                )
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                raise store_error(exc, "store write probe failed") from None

        await asyncio.get_running_loop().run_in_executor(self._thread, write)

    async def _mark_checkpoint_file(self) -> None:
        def write() -> None:
            assert self._wconn is not None
            self._wconn.execute(
                "INSERT OR IGNORE INTO store_meta (key, value) VALUES ('checkpoint_file', ?)",
                (str(self.config.checkpoints),),
            )

        try:
            await asyncio.get_running_loop().run_in_executor(self._thread, write)
        except sqlite3.Error as exc:
            raise store_error(exc, "cannot record the checkpoint file") from None

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
            self._frontier = self._load_frontier(conn)
            row = conn.execute("SELECT max(size) FROM tlog_checkpoints").fetchone()
            self._last_tree_size = row[0] or 0
            self._checkpoint_file_marked = "checkpoint_file" in meta
            expected = self._checkpoint_file_marked or self._last_checkpoint_size > 0
            start = self._outside_checkpoints_check(self._head.position, expected)
            if start > self._head.position:  # accepted cut: continue past every covered one
                self._head = Head(start, self._head.hash, self._head.digest)
        except sqlite3.Error as exc:
            raise store_error(exc, f"cannot open store {self.config.path}") from None

    def _load_frontier(self, conn: sqlite3.Connection) -> merkle.Frontier | None:
        """The tree's right edge at the head; builds the missing nodes of a store that
        predates the tree (or a tail after a crash-free but tree-less write) once."""
        size = self._head.position
        tile = 1 << merkle.STORED_LEVEL
        (built,) = conn.execute(
            "SELECT count(*) FROM merkle_nodes WHERE level = ?", (merkle.STORED_LEVEL,)
        ).fetchone()
        start = min(built * tile, size - size % tile)
        try:
            frontier = merkle.Frontier(
                start, self._node_hashes(conn, merkle.Frontier.nodes_for(start))
            )
        except StoreError:  # nodes missing in the middle: rebuild the whole tree
            start, frontier = 0, merkle.Frontier()
        pending: list[tuple[int, int, bytes]] = []
        position = start + 1
        while position <= size:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM events WHERE position >= ? ORDER BY position LIMIT 5000",
                (position,),
            ).fetchall()
            if not rows:
                break
            for row in rows:
                record = record_from_row(row)
                if record.position != frontier.size + 1:
                    log.warning(
                        "store %s is damaged (position %d is missing): it keeps no Merkle "
                        "tree and signs no tree checkpoints; run `lighthouse verify`",
                        self.config.path,
                        frontier.size + 1,
                    )
                    return None
                done = frontier.append(leaf_of(record))
                pending += [n for n in done if n[0] >= merkle.STORED_LEVEL]
            position = rows[-1][0] + 1
        if pending:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT OR IGNORE INTO merkle_nodes (level, idx, hash) VALUES (?, ?, ?)", pending
            )
            conn.execute("COMMIT")
        return frontier

    @staticmethod
    def _node_hashes(conn: sqlite3.Connection, nodes: list[merkle.Node]) -> list[bytes]:
        """Stored hashes of `nodes` (all at or above the stored level), in order."""
        out = []
        for level, index in nodes:
            row = conn.execute(
                "SELECT hash FROM merkle_nodes WHERE level = ? AND idx = ?", (level, index)
            ).fetchone()
            if row is None:
                raise StoreError(f"Merkle tree node {level}/{index} is missing")
            out.append(row[0])
        return out

    def _load_head(self, conn: sqlite3.Connection) -> Head:
        row = conn.execute(
            "SELECT position, hash, digest FROM events ORDER BY position DESC LIMIT 1"
        ).fetchone()
        seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
        if row is None and not seq:
            return Head()
        last = row[0] if row else 0
        if seq and seq[0] > last and not self.config.accept_damage:
            raise StoreDamaged(
                f"store {self.config.path} is damaged: positions {last + 1}..{seq[0]} were "
                "removed from the tail; run `lighthouse verify` and `lighthouse repair`",
                kind="truncated",
            )
        allocated = max(last, seq[0] if seq else 0)
        if row is None:
            return Head(allocated)
        return Head(allocated, row[1], row[2])

    async def _open_reader(self, uri: str | None = None) -> None:
        connection = aiosqlite.connect(
            uri or _ro_uri(self.config.path), uri=True, isolation_level=None
        )
        # aiosqlite's worker thread is not daemonic: a close that never comes (a failed
        # start, a hung stop) would keep the interpreter alive after main returns.
        connection._thread.daemon = True
        self._reader = await connection
        await self._reader.execute("PRAGMA busy_timeout=5000")

    async def _open_readonly(self) -> None:
        path = self.config.path
        if not path.exists():
            raise OperationalError(f"no store at {path}")
        try:
            schema = schema_version_ro(path)
            uri = _ro_uri(path)
        except sqlite3.OperationalError as exc:
            if "unable to open" not in str(exc):
                raise store_error(exc, f"cannot read store {path}") from None
            uri, schema = self._readonly_fallback()
        if schema == 0:
            raise SchemaError(f"{path} is not a Lighthouse store (no schema)")
        await self._open_reader(uri)
        assert self._reader is not None
        try:
            rows = await self._reader.execute_fetchall("SELECT key, value FROM store_meta")
            self.store_id = dict(rows).get("store_id", "")
            await self._refresh_head()
        except sqlite3.Error as exc:
            raise store_error(exc, f"cannot read store {path}") from None

    def _readonly_fallback(self) -> tuple[str, int]:
        """Open a WAL store in a directory this process cannot write (a mounted backup, an
        evidence copy): SQLite needs to create `-shm` beside it for a plain read-only open.

        Without a WAL to read, the file is opened immutable; with one, the database and
        its WAL are copied to a private temporary directory and the copy is read, since
        an immutable open ignores the WAL (and the events in it).
        """
        path = self.config.path
        wal = path.with_name(path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            self._copy_dir = tempfile.TemporaryDirectory(prefix="lighthouse-verify-")
            copy = Path(self._copy_dir.name) / path.name
            shutil.copyfile(path, copy)
            shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
            log.info("store %s is in a read-only directory; reading a copy with its WAL", path)
            return _ro_uri(copy), schema_version_ro(copy)
        uri = _ro_uri(path, immutable=True)
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        try:
            return uri, schema_version(conn)
        finally:
            conn.close()

    async def checkpoint_file_expected(self) -> bool:
        if self._reader is None:
            raise OperationalError("store is closed")
        rows = await self._reader.execute_fetchall(
            "SELECT 1 FROM store_meta WHERE key = 'checkpoint_file' "
            "UNION ALL SELECT 1 FROM checkpoints LIMIT 1"
        )
        return bool(rows)

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
        try:
            with contextlib.suppress(sqlite3.IntegrityError, _NeedsLookup):
                return self._write_batch(batch, lookup=False)
            return self._write_batch(batch, lookup=True)
        except sqlite3.Error as exc:  # also a ROLLBACK that failed on a full disk
            return [store_error(exc, "append failed, nothing written")] * len(batch)

    def _write_batch(
        self, batch: list[PendingAppend], *, lookup: bool
    ) -> list[list[int] | StoreError]:
        conn = self._wconn
        assert conn is not None
        head = Head(self._head.position, self._head.hash, self._head.digest)
        versions: dict[str, int] = {}
        rows: list[tuple[Any, ...]] = []
        leaves: list[bytes] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            known = self._known_ids(conn, batch) if lookup else {}
            results = [self._stage(conn, req, head, versions, known, rows, leaves) for req in batch]
            if not lookup and any(isinstance(r, StoreError) for r in results):
                raise _NeedsLookup
            conn.executemany(_INSERT, rows)
            frontier = self._grow_tree(conn, leaves)
            conn.execute("COMMIT")
        except (sqlite3.IntegrityError, _NeedsLookup):
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            return [store_error(exc, "append failed, nothing written")] * len(batch)
        self._head = head
        self._frontier = frontier
        if len(self._versions) + len(versions) > _VERSION_CACHE_LIMIT:
            self._versions.clear()
        self._versions.update(versions)
        return results

    def _grow_tree(self, conn: sqlite3.Connection, leaves: list[bytes]) -> merkle.Frontier | None:
        """The Merkle hook: the batch's leaves onto a copy of the tree, its new nodes stored
        in the batch's transaction (the copy is published only after the commit)."""
        if self._frontier is None or self._frontier.size != self._head.position:
            return None  # a damaged store opened with accept_damage keeps no tree
        frontier = self._frontier.copy()
        nodes = frontier.extend(leaves)
        if nodes:
            conn.executemany(_INSERT_NODE, nodes)
        return frontier

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
        leaves: list[bytes],
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
            leaves,
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

        try:
            await asyncio.get_running_loop().run_in_executor(self._thread, insert)
        except sqlite3.Error as exc:
            raise store_error(exc, "cannot store a checkpoint") from None

    # -- reading ---------------------------------------------------------------------------

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Record]:
        if self._reader is None:
            raise OperationalError("store is closed")
        try:
            rows = await self._reader.execute_fetchall(sql, params)
        except sqlite3.Error as exc:
            raise store_error(exc, "read failed") from None
        try:
            return [record_from_row(r) for r in rows]
        except msgspec.DecodeError as exc:  # a damaged page: name the record, not the byte
            bad = next(r[0] for r in rows if not _decodes(r[7]))
            raise StoreCorrupt(
                f"record at position {bad} cannot be decoded ({exc}); run `lighthouse verify`"
            ) from None

    async def read_raw(self, from_position: int = 1, limit: int = 1000) -> list[RawRow]:
        if self._reader is None:
            raise OperationalError("store is closed")
        try:
            rows = await self._reader.execute_fetchall(
                f"SELECT {_COLUMNS} FROM events WHERE position >= ? ORDER BY position LIMIT ?",
                (from_position, limit),
            )
        except sqlite3.Error as exc:
            raise store_error(exc, f"read from position {from_position} failed") from None
        return rows  # type: ignore[return-value]

    async def integrity_problems(self) -> list[tuple[int, str, str]]:
        """SQLite's own check of every page and index, then each index against the table.

        `PRAGMA integrity_check` finds malformed pages and index entries that disagree with
        their rows; the per-index totals below (read from the index alone, then from the
        table alone) show in the report which lookups would drop or invent events.
        """
        if self._reader is None:
            raise OperationalError("store is closed")
        problems: list[tuple[int, str, str]] = []
        try:
            rows = await self._reader.execute_fetchall("PRAGMA integrity_check(100)")
        except sqlite3.Error as exc:
            return [(0, "integrity", f"SQLite integrity check could not run: {exc}")]
        problems += [
            (0, "integrity", f"SQLite integrity check: {r[0]}") for r in rows if r[0] != "ok"
        ]
        for index, query in _INDEX_TOTALS.items():
            try:
                via_index = await self._reader.execute_fetchall(query.format(f"INDEXED BY {index}"))
                via_table = await self._reader.execute_fetchall(query.format("NOT INDEXED"))
            except sqlite3.Error as exc:
                problems.append((0, "index_mismatch", f"index {index} cannot be read: {exc}"))
                continue
            if via_index != via_table:
                problems.append(
                    (0, "index_mismatch", _index_difference(index, via_index, via_table))
                )
        return problems

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

    # -- transparency log ----------------------------------------------------------------

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        if self._reader is None:
            raise OperationalError("store is closed")
        try:
            return list(await self._reader.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise store_error(exc, "read failed") from None

    async def tree_nodes(self, keys: Collection[merkle.Node]) -> dict[merkle.Node, bytes]:
        """Stored Merkle nodes by (level, index): one query for a whole proof."""
        keys = list(keys)
        found: dict[merkle.Node, bytes] = {}
        for start in range(0, len(keys), 200):
            chunk = keys[start : start + 200]
            # OR of equalities: SQLite searches the primary key once per term (a row-value
            # IN (VALUES …) scans the whole table).
            where = " OR ".join("(level = ? AND idx = ?)" for _ in chunk)
            flat = [v for key in chunk for v in key]
            for level, idx, h in await self._rows(
                f"SELECT level, idx, hash FROM merkle_nodes WHERE {where}", flat
            ):
                found[(level, idx)] = h
        return found

    async def tree_checkpoints(self, size: int | None = None) -> list[TreeCheckpoint]:
        """Signed checkpoint notes (all, or the one at `size`), with stored cosignatures."""
        where, params = ("WHERE size = ?", (size,)) if size is not None else ("", ())
        notes = await self._rows(
            f"SELECT size, note FROM tlog_checkpoints {where} ORDER BY size", params
        )
        cosigs: dict[int, list[str]] = {}
        for n, line in await self._rows(
            f"SELECT size, line FROM tlog_cosignatures {where} ORDER BY time", params
        ):
            cosigs.setdefault(n, []).append(line)
        return [TreeCheckpoint(n, note + "".join(cosigs.get(n, []))) for n, note in notes]

    async def _store_tree_checkpoint(self, cp: TreeCheckpoint) -> None:
        await self._write(
            "INSERT OR IGNORE INTO tlog_checkpoints (size, note) VALUES (?, ?)", (cp.size, cp.note)
        )

    async def add_cosignature(self, size: int, witness: str, line: str) -> None:
        """Keep a witness's cosignature line of the checkpoint at `size` (latest per witness)."""
        await self._write(
            "INSERT OR REPLACE INTO tlog_cosignatures (size, witness, line, time) "
            "VALUES (?, ?, ?, ?)",
            (size, witness, line, time.time()),
        )

    async def _write(self, sql: str, params: Sequence[Any]) -> None:
        def run() -> None:
            if self._wconn is None:
                raise OperationalError("the store is read-only")
            try:
                self._wconn.execute(sql, params)
            except sqlite3.Error as exc:
                raise store_error(exc, "write failed") from None

        await asyncio.get_running_loop().run_in_executor(self._thread, run)

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
            reader, self._reader = self._reader, None
            with contextlib.suppress(sqlite3.Error):
                await reader.close()
        try:
            if self._wconn is not None:
                conn, self._wconn = self._wconn, None
                await asyncio.get_running_loop().run_in_executor(self._thread, conn.close)
        finally:
            self._thread.shutdown(wait=True)
            self._lock.release()
            if self._copy_dir is not None:
                self._copy_dir.cleanup()
                self._copy_dir = None


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
