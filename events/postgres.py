"""PostgreSQL backend (asyncpg): several bridge processes append to one log.

How the log stays one log with N writers
----------------------------------------
Each process keeps the group-commit writer of `GroupCommitStore`: its concurrent appends
become one transaction on one dedicated connection. Batches from *different* processes
serialize on one row, `lh_head` (last position, HMAC hash, public digest):

    BEGIN
    SELECT position, hash, digest FROM lh_head WHERE id = 1 FOR UPDATE   -- wait our turn
    … stream versions / event ids looked up, rows chained onto that head …
    INSERT INTO events … ; UPDATE lh_head … ; pg_notify(…)               -- one statement
    COMMIT                                                               -- releases the row

Why this and not the alternatives (the issue's measurements on this machine, confirmed by
`benchmarks/event_store.py --postgres`):

* a `bigserial` position with concurrent writers lets commits finish out of sequence
  order, so a reader tailing by position skipped 6-9 % of rows. Here a position is
  allocated only while holding the head row, and PostgreSQL releases row locks after the
  commit became visible, so batch k+1 cannot be visible before batch k: *a reader that has
  seen position p has seen every position below p*, and catch-up by position is safe.
* `LOCK TABLE … EXCLUSIVE` per single-event transaction topped out near 800/s; group
  commit through one connection (100 rows a transaction) did 17-29k rows/s, and the head
  row compare-and-set per batch cost nothing measurable. The lock is held for one batch
  (a few round trips), not one event, so N processes share the commit rate.
* an elected sequencer would add a network hop per append and a failover protocol; the
  head row needs neither, and a writer that dies mid-commit simply has its transaction
  rolled back by the server, releasing the row with nothing written.

The chain cannot fork: the next record's `prev_hash` is always the hash read from the
locked head row, `position` is the primary key, and the head row moves in the same
transaction as the rows. Stream versions are cached per process and trusted only when
the head read under the lock is the head this process last wrote (nobody appended in
between); otherwise they are re-read under the lock.

Checkpoints: any process holding the signing key may sign, but only under the
transaction-scoped advisory lock `_LOCK_CHECKPOINT` (the writer role for checkpoints), and
it signs the head row read inside that transaction; `size` is the primary key. So a size
is signed once, for the one head that size has.

Following other processes: each commit runs `pg_notify('lighthouse_events', position)`
(delivered only on commit). Subscribers wake on it, catch up by position, and also poll the
head every `poll_interval` seconds, because a listening connection can die silently.

Keys stay outside the database (see `StoreConfig`): every bridge on one store needs the
same key dir contents (chain key, checkpoint key), copied or mounted; a bridge whose chain
key differs is refused by the fingerprint in `store_meta`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Collection, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

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
    StoreReadOnly,
    StoreUnavailable,
)
from .model import Checkpoint, Record, record_from_row
from .schema import migrations_for
from .staging import Known, stage_request
from .store import GroupCommitStore, Head, PendingAppend, StoreConfig
from .tlog import TreeCheckpoint, leaf_of

log = logging.getLogger(__name__)

CHANNEL = "lighthouse_events"
_LOCK_MIGRATE = 0x4C48_0001  # advisory lock keys ("LH")
_LOCK_IDENTITY = 0x4C48_0002
_LOCK_CHECKPOINT = 0x4C48_0003
_CONNECT_TIMEOUT = 5.0
_COMMAND_TIMEOUT = 15.0
_VERSION_CACHE_LIMIT = 100_000
_COLUMNS = "position, stream, version, event_id, type, time, actor, data, prev_hash, hash, digest"
_INSERT_CHECKPOINT = (
    "INSERT INTO checkpoints (size, store_id, head_hash, head_digest, time, signature) "
    "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (size) DO NOTHING"
)
_LOCK_HEAD = "SELECT position, hash, digest FROM lh_head WHERE id = 1 FOR UPDATE"
_INSERT_NODES = (
    "INSERT INTO merkle_nodes (level, idx, hash) "
    "SELECT * FROM unnest($1::integer[], $2::bigint[], $3::bytea[]) ON CONFLICT DO NOTHING"
)
_WRITE = f"""
WITH ins AS (
    INSERT INTO events ({_COLUMNS})
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                         $6::float8[], $7::text[], $8::bytea[], $9::text[], $10::text[],
                         $11::text[])
), upd AS (
    UPDATE lh_head SET position = $12, hash = $13, digest = $14 WHERE id = 1
), nodes AS (
    INSERT INTO merkle_nodes (level, idx, hash)
    SELECT * FROM unnest($15::integer[], $16::bigint[], $17::bytea[]) ON CONFLICT DO NOTHING
)
SELECT pg_notify('{CHANNEL}', $12::bigint::text)
"""

# What a broken or unreachable server looks like through asyncpg (TimeoutError and
# ConnectionError are OSErrors).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
)


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def unavailable(exc: BaseException, doing: str) -> StoreUnavailable:
    detail = str(exc) or type(exc).__name__
    return StoreUnavailable(f"PostgreSQL unavailable while {doing}: {detail}")


# SQLSTATE (https://www.postgresql.org/docs/current/errcodes-appendix.html) -> cause.
_BY_SQLSTATE: dict[str, type[OperationalError]] = {
    "53100": StoreFull,  # disk_full
    "53200": StoreBusy,  # out_of_memory
    "53300": StoreBusy,  # too_many_connections
    "55P03": StoreBusy,  # lock_not_available
    "40P01": StoreBusy,  # deadlock_detected
    "57014": StoreBusy,  # query_canceled (statement_timeout)
    "25006": StoreReadOnly,  # read_only_sql_transaction (a standby, or a read-only database)
    "42501": StoreReadOnly,  # insufficient_privilege
    "XX001": StoreCorrupt,  # data_corrupted
    "XX002": StoreCorrupt,  # index_corrupted
}


def pg_store_error(exc: asyncpg.PostgresError, doing: str) -> OperationalError:
    """The `StoreError` a server-side error becomes: its class names the cause."""
    cls = _BY_SQLSTATE.get(getattr(exc, "sqlstate", "") or "", OperationalError)
    return cls(f"{doing}: {exc}")


class _NeedsLookup(Exception):
    """Internal: the optimistic write of a batch must be redone with the id lookup."""


async def connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url, timeout=_CONNECT_TIMEOUT, command_timeout=_COMMAND_TIMEOUT)


async def migrate_connection(conn: asyncpg.Connection) -> list[int]:
    """Apply pending migrations in one transaction under an advisory lock, so bridges
    starting at once apply each migration exactly once; returns the versions applied."""
    known = migrations_for("postgres")
    latest = known[-1].version if known else 0
    applied: list[int] = []
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_MIGRATE)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY,"
                " name text NOT NULL, applied_at double precision NOT NULL)"
            )
            current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
            if current > latest:
                raise SchemaError(
                    f"database schema version {current} is newer than this release supports "
                    f"({latest}); upgrade lighthouse-bridge before opening it"
                )
            for m in known:
                if m.version <= current:
                    continue
                try:
                    await conn.execute(m.sql)
                except asyncpg.PostgresError as exc:
                    raise SchemaError(f"migration {m.version} ({m.name}) failed: {exc}") from None
                await conn.execute(
                    "INSERT INTO schema_version (version, name, applied_at) VALUES ($1, $2, $3)",
                    m.version,
                    m.name,
                    time.time(),
                )
                applied.append(m.version)
    except CONNECTION_ERRORS as exc:
        raise unavailable(exc, "migrating") from None
    return applied


async def migrate(url: str) -> list[int]:
    """`lighthouse migrate --database-url URL`."""
    try:
        conn = await connect(url)
    except CONNECTION_ERRORS as exc:
        raise unavailable(exc, f"connecting to {redact(url)}") from None
    try:
        return await migrate_connection(conn)
    finally:
        await conn.close()


class PostgresEventStore(GroupCommitStore):
    """The shared store for several bridges (`lighthouse serve --database-url …`)."""

    poll_interval = 0.5
    """Seconds between head polls while following: the bound on how late a subscriber
    learns of another process's append when NOTIFY is lost."""

    def __init__(self, config: StoreConfig) -> None:
        if not config.url:
            raise ValueError("PostgresEventStore needs StoreConfig.url")
        super().__init__(config)
        self._url = config.url
        self._wconn: asyncpg.Connection | None = None
        self._pool: asyncpg.Pool | None = None
        self._versions: dict[str, int] = {}
        self._versions_at = -1  # the head position at which `_versions` was exact
        self._listener: asyncio.Task[None] | None = None
        self._tree_disabled = False
        self.store_id = ""

    @classmethod
    async def open(cls, config: StoreConfig) -> PostgresEventStore:
        store = cls(config)
        try:
            await store._open()
        except CONNECTION_ERRORS as exc:
            await store._close_backend()
            raise unavailable(exc, f"opening {redact(store._url)}") from None
        except asyncpg.PostgresError as exc:
            await store._close_backend()
            raise pg_store_error(exc, f"cannot open store {redact(store._url)}") from None
        except BaseException:
            await store._close_backend()
            raise
        return store

    # -- opening ---------------------------------------------------------------------------

    async def _open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._url,
            min_size=1,
            max_size=4,
            timeout=_CONNECT_TIMEOUT,
            command_timeout=_COMMAND_TIMEOUT,
        )
        if self.config.readonly:
            async with self._pool.acquire() as conn:
                exists = await conn.fetchval("SELECT to_regclass('store_meta') IS NOT NULL")
                if not exists:
                    raise SchemaError(f"{redact(self._url)} holds no Lighthouse store (no schema)")
                self.store_id = (
                    await conn.fetchval("SELECT value FROM store_meta WHERE key = 'store_id'") or ""
                )
            await self._refresh_head()
            return
        self._wconn = conn = await connect(self._url)
        await migrate_connection(conn)
        await self._claim_identity(conn)
        self._head = await self._load_head(conn)
        self._last_checkpoint_size = await conn.fetchval(
            "SELECT coalesce(max(size), 0) FROM checkpoints"
        )
        await self._open_tree(conn)
        self._start_writer()

    async def _claim_identity(self, conn: asyncpg.Connection) -> None:
        """Create the store's identity and keys once; check the chain key otherwise.

        Serialized by an advisory lock: bridges starting at once on a fresh database must
        not each create an identity (the second sees the first's and checks its key).
        """
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_IDENTITY)
            meta = dict(await conn.fetch("SELECT key, value FROM store_meta"))
            fresh = "store_id" not in meta
            if fresh and await conn.fetchval("SELECT EXISTS (SELECT 1 FROM events)"):
                raise KeyMismatch("store holds events but no identity; refusing to open")
            self._chain_key = ChainKey.load(self.config.chain_key_file, create=fresh)
            self._signer = CheckpointSigner.load(self.config.signing_key_file, create=fresh)
            if fresh:
                meta = {
                    "store_id": str(uuid.uuid4()),
                    "chain_key_fingerprint": self._chain_key.fingerprint(),
                    "created_at": repr(time.time()),
                }
                await conn.executemany(
                    "INSERT INTO store_meta (key, value) VALUES ($1, $2)", list(meta.items())
                )
            elif meta["chain_key_fingerprint"] != self._chain_key.fingerprint():
                raise KeyMismatch(
                    f"chain key {self.config.chain_key_file} is not the key store "
                    f"{meta['store_id']} was created with; refusing to open "
                    "(copy the key dir of the first bridge to this one)"
                )
        self.store_id = meta["store_id"]

    async def _load_head(self, conn: asyncpg.Connection) -> Head:
        """The head row, after checking it against the last stored record."""
        async with conn.transaction():
            row = await conn.fetchrow(_LOCK_HEAD)
            last = await conn.fetchrow(
                "SELECT position, hash, digest FROM events ORDER BY position DESC LIMIT 1"
            )
            last_position = last[0] if last else 0
            if last_position == row[0]:
                return Head(row[0], row[1], row[2])
            if last_position > row[0] or not self.config.accept_damage:
                raise StoreDamaged(
                    f"store {redact(self._url)} is damaged: the head row says {row[0]} events, "
                    f"the last stored is {last_position}; run `lighthouse verify` and "
                    "`lighthouse repair`",
                    kind="truncated",
                )
            # accept_damage: continue after the highest position ever allocated, chained
            # onto the last surviving record (verify keeps reporting the gap).
            head = Head(row[0], *(last[1:] if last else (Head().hash, Head().digest)))
            await conn.execute(
                "UPDATE lh_head SET hash = $1, digest = $2 WHERE id = 1", head.hash, head.digest
            )
            return head

    # -- writing ---------------------------------------------------------------------------

    async def _writer_connection(self) -> asyncpg.Connection:
        if self._wconn is None or self._wconn.is_closed():
            self._wconn = await connect(self._url)
        return self._wconn

    def _drop_writer(self) -> None:
        if self._wconn is not None:
            self._wconn.terminate()
            self._wconn = None

    async def _commit(self, batch: list[PendingAppend]) -> list[list[int] | StoreError]:
        try:
            try:
                return await self._write_batch(batch, lookup=False)
            except (asyncpg.UniqueViolationError, _NeedsLookup):
                return await self._write_batch(batch, lookup=True)
        except CONNECTION_ERRORS as exc:
            # The server rolls back a transaction whose connection broke; if COMMIT itself
            # was in flight the outcome is unknown, and a retry with the same event ids is
            # answered idempotently.
            self._drop_writer()
            return [unavailable(exc, "appending (retry with the same event ids)")] * len(batch)
        except asyncpg.PostgresError as exc:
            return [pg_store_error(exc, "append failed, nothing written")] * len(batch)
        except Exception as exc:  # never let the writer task die: fail this batch only
            log.exception("append batch failed unexpectedly")
            self._drop_writer()
            return [OperationalError(f"append failed, nothing written: {exc}")] * len(batch)

    async def _write_batch(
        self, batch: list[PendingAppend], *, lookup: bool
    ) -> list[list[int] | StoreError]:
        assert self._chain_key is not None
        conn = await self._writer_connection()
        versions: dict[str, int] = {}
        rows: list[tuple[Any, ...]] = []
        leaves: list[bytes] = []
        async with conn.transaction():
            row = await conn.fetchrow(_LOCK_HEAD)
            head = Head(row[0], row[1], row[2])
            if head.position != self._versions_at:
                self._versions.clear()  # another process appended since our last batch
            known = await self._known_ids(conn, batch) if lookup else {}
            stored = await self._stored_versions(conn, batch)
            results = [
                stage_request(
                    req,
                    head,
                    lambda s: stored.get(s, 0),
                    self._chain_key,
                    versions,
                    known,
                    rows,
                    leaves,
                )
                for req in batch
            ]
            if not lookup and any(isinstance(r, StoreError) for r in results):
                raise _NeedsLookup
            if rows:
                # the Merkle nodes go in the same statement: no extra round trip per batch
                frontier, nodes = await self._grow_tree(conn, row[0], leaves)
                node_columns = tuple(zip(*nodes, strict=True)) or ([], [], [])
                await conn.execute(
                    _WRITE, *zip(*rows, strict=True), *_head_args(head), *node_columns
                )
        if rows:
            self._frontier = frontier
        if head.position >= self._head.position:  # a NOTIFY may already have moved it on
            self._head = head
        self._versions_at = head.position
        if len(self._versions) + len(stored) + len(versions) > _VERSION_CACHE_LIMIT:
            self._versions.clear()
        self._versions.update(stored)
        self._versions.update(versions)
        return results

    async def _open_tree(self, conn: asyncpg.Connection) -> None:
        """Load (or, for a store that predates it, build) the tree at the head."""
        self._last_tree_size = await conn.fetchval(
            "SELECT coalesce(max(size), 0) FROM tlog_checkpoints"
        )
        try:
            async with conn.transaction():
                row = await conn.fetchrow(_LOCK_HEAD)
                self._frontier = await self._load_frontier(conn, row[0])
        except StoreDamaged as exc:
            self._tree_disabled = True
            log.warning("store keeps no Merkle tree (damaged: %s); run `lighthouse verify`", exc)

    async def _grow_tree(
        self, conn: asyncpg.Connection, size: int, leaves: list[bytes]
    ) -> tuple[merkle.Frontier | None, list[tuple[int, int, bytes]]]:
        """The Merkle hook, inside the batch's transaction (which holds the head row): the
        tree after the batch and the nodes to store with its rows.

        Another bridge may have appended since this one's last batch: then the frontier
        is reloaded for the locked head from the stored nodes and the last partial tile.
        """
        if self._tree_disabled:
            return None, []
        frontier = self._frontier
        if frontier is None or frontier.size != size:
            frontier = await self._load_frontier(conn, size)
        frontier = frontier.copy()
        return frontier, frontier.extend(leaves)

    async def _load_frontier(self, conn: asyncpg.Connection, size: int) -> merkle.Frontier:
        tile = 1 << merkle.STORED_LEVEL
        aligned = size - size % tile
        keys = merkle.Frontier.nodes_for(aligned)
        found = {
            (r[0], r[1]): r[2]
            for r in await conn.fetch(
                "SELECT level, idx, hash FROM merkle_nodes WHERE (level, idx) IN "
                "(SELECT * FROM unnest($1::integer[], $2::bigint[]))",
                [k[0] for k in keys],
                [k[1] for k in keys],
            )
        }
        if len(found) < len(keys):
            return await self._build_tree(conn, size)
        frontier = merkle.Frontier(aligned, [found[k] for k in keys])
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM events WHERE position > $1 AND position <= $2 "
            "ORDER BY position",
            aligned,
            size,
        )
        frontier.extend([leaf_of(record_from_row(r)) for r in rows])
        if frontier.size != size:
            raise StoreDamaged(f"positions {aligned + 1}..{size} are missing", kind="missing")
        return frontier

    async def _build_tree(self, conn: asyncpg.Connection, size: int) -> merkle.Frontier:
        """The whole tree from the records: a store written before the tree existed."""
        frontier, position = merkle.Frontier(), 1
        while position <= size:
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM events WHERE position >= $1 AND position <= $2 "
                "ORDER BY position LIMIT 5000",
                position,
                size,
            )
            if not rows or rows[0][0] != frontier.size + 1:
                raise StoreDamaged(f"position {frontier.size + 1} is missing", kind="missing")
            nodes = frontier.extend([leaf_of(record_from_row(r)) for r in rows])
            if nodes:
                await conn.execute(_INSERT_NODES, *zip(*nodes, strict=True))
            position = rows[-1][0] + 1
        return frontier

    async def _stored_versions(
        self, conn: asyncpg.Connection, batch: list[PendingAppend]
    ) -> dict[str, int]:
        """Current version of every stream the batch touches: cache, then one query."""
        wanted = {req.stream for req in batch}
        found = {s: self._versions[s] for s in wanted if s in self._versions}
        missing = [s for s in wanted if s not in found]
        if missing:
            for stream, version in await conn.fetch(
                "SELECT stream, max(version) FROM events WHERE stream = ANY($1::text[]) "
                "GROUP BY stream",
                missing,
            ):
                found[stream] = version
            found.update((s, 0) for s in missing if s not in found)
        return found

    async def _known_ids(self, conn: asyncpg.Connection, batch: list[PendingAppend]) -> Known:
        """Stored events whose ids this batch reuses, for idempotent retries — one query."""
        ids = [e.event_id for req in batch for e in req.events]
        return {
            r[0]: (r[1], r[2], r[3], r[4], bytes(r[5]))
            for r in await conn.fetch(
                "SELECT event_id, position, stream, type, actor, data FROM events "
                "WHERE event_id = ANY($1::text[])",
                ids,
            )
        }

    async def _store_checkpoint(self, checkpoint: Checkpoint) -> None:
        await self._run("storing a checkpoint", _INSERT_CHECKPOINT, *_checkpoint_args(checkpoint))

    async def _checkpoint_now(self) -> Checkpoint | None:
        """Sign the database's head, if this process wins the checkpoint role right now.

        The role is a transaction-scoped advisory lock: whoever holds it reads the head row
        and the last signed size inside that transaction, so two processes never sign one
        size, and a size is signed only for the head it has.
        """
        if self._signer is None or self._pool is None:
            return None
        try:
            async with (
                self._pool.acquire(timeout=_CONNECT_TIMEOUT) as conn,
                conn.transaction(),
            ):
                if not await conn.fetchval(
                    "SELECT pg_try_advisory_xact_lock($1)", _LOCK_CHECKPOINT
                ):
                    return None  # another bridge is signing this head
                row = await conn.fetchrow(
                    "SELECT h.position, h.hash, h.digest, "
                    "(SELECT coalesce(max(size), 0) FROM checkpoints) "
                    "FROM lh_head h WHERE h.id = 1"
                )
                self._last_checkpoint_size = row[3]
                if row[0] <= row[3]:
                    return None
                checkpoint = self._signer.sign(
                    Checkpoint(
                        store_id=self.store_id,
                        size=row[0],
                        head_hash=row[1],
                        head_digest=row[2],
                        time=time.time(),
                    )
                )
                await conn.execute(_INSERT_CHECKPOINT, *_checkpoint_args(checkpoint))
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            log.warning("checkpoint not written (retried at the next cadence): %s", exc)
            return None
        await asyncio.to_thread(self._checkpoint_file.append, checkpoint)
        self._last_checkpoint_size = checkpoint.size
        self._last_checkpoint_time = time.monotonic()
        try:
            await self._sign_tree_head()
        except StoreError as exc:
            log.warning("tree checkpoint not written (retried at the next cadence): %s", exc)
        return checkpoint

    # -- reading ---------------------------------------------------------------------------

    async def _run(self, doing: str, sql: str, *args: Any) -> list[asyncpg.Record]:
        """One statement on a pooled connection, its failures turned into StoreErrors."""
        if self._pool is None:
            raise OperationalError("store is closed")
        try:
            async with self._pool.acquire(timeout=_CONNECT_TIMEOUT) as conn:
                return await conn.fetch(sql, *args)
        except CONNECTION_ERRORS as exc:
            raise unavailable(exc, doing) from None
        except asyncpg.PostgresError as exc:
            raise pg_store_error(exc, f"{doing} failed") from None

    async def tree_nodes(self, keys: Collection[merkle.Node]) -> dict[merkle.Node, bytes]:
        """Stored Merkle nodes by (level, index): one query for a whole proof."""
        keys = list(keys)
        rows = await self._run(
            "reading the Merkle tree",
            "SELECT level, idx, hash FROM merkle_nodes WHERE (level, idx) IN "
            "(SELECT * FROM unnest($1::integer[], $2::bigint[]))",
            [k[0] for k in keys],
            [k[1] for k in keys],
        )
        return {(r[0], r[1]): bytes(r[2]) for r in rows}

    async def tree_checkpoints(self, size: int | None = None) -> list[TreeCheckpoint]:
        """Signed checkpoint notes (all, or the one at `size`), with stored cosignatures."""
        notes = await self._run(
            "reading tree checkpoints",
            "SELECT size, note FROM tlog_checkpoints WHERE $1::bigint IS NULL OR size = $1 "
            "ORDER BY size",
            size,
        )
        cosigs: dict[int, list[str]] = {}
        for r in await self._run(
            "reading cosignatures",
            "SELECT size, line FROM tlog_cosignatures WHERE $1::bigint IS NULL OR size = $1 "
            "ORDER BY time",
            size,
        ):
            cosigs.setdefault(r[0], []).append(r[1])
        return [TreeCheckpoint(r[0], r[1] + "".join(cosigs.get(r[0], []))) for r in notes]

    async def _store_tree_checkpoint(self, cp: TreeCheckpoint) -> None:
        await self._run(
            "storing a tree checkpoint",
            "INSERT INTO tlog_checkpoints (size, note) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            cp.size,
            cp.note,
        )

    async def add_cosignature(self, size: int, witness: str, line: str) -> None:
        """Keep a witness's cosignature line of the checkpoint at `size` (latest per witness)."""
        await self._run(
            "storing a cosignature",
            "INSERT INTO tlog_cosignatures (size, witness, line, time) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (size, witness) DO UPDATE SET line = EXCLUDED.line, time = EXCLUDED.time",
            size,
            witness,
            line,
            time.time(),
        )

    async def read_stream(
        self, stream: str, from_version: int = 1, limit: int | None = None
    ) -> list[Record]:
        rows = await self._run(
            "reading a stream",
            f"SELECT {_COLUMNS} FROM events WHERE stream = $1 AND version >= $2 "
            "ORDER BY version LIMIT $3",
            stream,
            from_version,
            limit,
        )
        return [record_from_row(r) for r in rows]

    async def read_all(
        self,
        from_position: int = 1,
        limit: int | None = 1000,
        types: Collection[str] | None = None,
        to_position: int | None = None,
    ) -> list[Record]:
        where = ["position >= $1"]
        params: list[Any] = [from_position]
        if to_position is not None:
            params.append(to_position)
            where.append(f"position <= ${len(params)}")
        if types:
            params.append(list(types))
            where.append(f"type = ANY(${len(params)}::text[])")
        params.append(limit)
        rows = await self._run(
            "reading the log",
            f"SELECT {_COLUMNS} FROM events WHERE {' AND '.join(where)} "
            f"ORDER BY position LIMIT ${len(params)}",
            *params,
        )
        return [record_from_row(r) for r in rows]

    async def head(self) -> Head:
        """The database's head (all processes' appends), not only this process's."""
        await self._refresh_head()
        return Head(self._head.position, self._head.hash, self._head.digest)

    async def _refresh_head(self) -> None:
        rows = await self._run(
            "reading the head", "SELECT position, hash, digest FROM lh_head WHERE id = 1"
        )
        if rows and rows[0][0] >= self._head.position:
            self._head = Head(rows[0][0], rows[0][1], rows[0][2])

    async def checkpoints(self) -> list[Checkpoint]:
        rows = await self._run(
            "reading checkpoints",
            "SELECT store_id, size, head_hash, head_digest, time, signature "
            "FROM checkpoints ORDER BY size",
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
        rows = await self._run(
            "reading the store identity",
            "SELECT value FROM store_meta WHERE key = 'chain_key_fingerprint'",
        )
        return rows[0][0] if rows else None

    async def allocated(self) -> int:
        """Positions are allocated only by committing the head row, so it is the maximum."""
        return (await self.head()).position

    # -- following other processes -----------------------------------------------------------

    async def _wait_beyond(self, position: int) -> None:
        """Return once the head reaches `position`: woken by local commits and NOTIFY,
        and re-reading the head every `poll_interval` in case a notification was lost."""
        if self._listener is None and not self._closed:
            self._listener = asyncio.create_task(self._listen(), name="lighthouse-pg-listen")
        while self._head.position < position and not self._closed:
            if self._appended is None:
                self._appended = asyncio.get_running_loop().create_future()
            # `asyncio.wait`, not `wait_for(shield(…))`: on Python 3.11 wait_for drops a
            # cancellation that arrives as the future completes (a commit of our own right
            # before `stop_following`), and the follower would never stop.
            await asyncio.wait([self._appended], timeout=self.poll_interval)
            with contextlib.suppress(StoreUnavailable):  # keep polling until it is back
                await self._refresh_head()

    async def _listen(self) -> None:
        """Keep one LISTEN connection up; reconnect after it drops (the poll covers gaps)."""
        while not self._closed:
            conn: asyncpg.Connection | None = None
            try:
                conn = await connect(self._url)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._on_notify)
                self._notify_appended()  # re-check what happened while not listening
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), 10.0)
                    if not lost.is_set():
                        await conn.fetchval("SELECT 1")  # a silently dead link shows here
            except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
                log.debug("LISTEN connection lost: %s", exc)
            finally:
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(1.0)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        with contextlib.suppress(ValueError):
            position = int(payload)
            if position > self._head.position:
                self._head = Head(position, self._head.hash, self._head.digest)
        self._notify_appended()

    # -- closing ---------------------------------------------------------------------------

    async def _close_backend(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._wconn is not None:
            conn, self._wconn = self._wconn, None
            try:
                await asyncio.wait_for(conn.close(), 2.0)
            except (*CONNECTION_ERRORS, TimeoutError):
                conn.terminate()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), 2.0)
            except (*CONNECTION_ERRORS, TimeoutError):
                pool.terminate()


def _checkpoint_args(cp: Checkpoint) -> Sequence[Any]:
    return (cp.size, cp.store_id, cp.head_hash, cp.head_digest, cp.time, cp.signature)


def _head_args(head: Head) -> Sequence[Any]:
    return (head.position, head.hash, head.digest)


__all__ = ["CHANNEL", "PostgresEventStore", "migrate", "redact"]
