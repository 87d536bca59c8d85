"""Replay protection: remember each (key id, nonce) for as long as its signature could
still pass the ``created`` skew check, and no longer.

A signature created at ``c`` is accepted until ``c + window``; after that the skew check
rejects it as stale, so the store may forget the nonce at exactly that time. That bounds
memory by (request rate x window) whatever the attacker does, because the verifier claims
a nonce only after the MAC and digest were verified.

Nonces are stored as an unkeyed 16-byte BLAKE2b digest of ``key_id`` and ``nonce``: fixed
size per entry, and the raw nonce never lands on disk or in a log.

Backends share one small async interface (:class:`NonceStore`) so a shared one (Redis
``SET NX EX``) can replace them when several bridge processes serve the same agents.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

__all__ = ["InMemoryNonceStore", "NonceStore", "SQLiteNonceStore"]

_ROWS_PER_STATEMENT = 200  # 2 variables a row + 1: well under SQLite's variable limit
_CLAIM_SQL: dict[int, str] = {}


def _rows(db: sqlite3.Connection, sql: str, params: list[object]) -> list[tuple[bytes]]:
    """All rows of a statement: a RETURNING statement commits (autocommit) only once
    every row has been stepped through."""
    return db.execute(sql, params).fetchall()


def _nonce_key(key_id: str, nonce: str) -> bytes:
    return hashlib.blake2b(
        key_id.encode("utf-8", "surrogatepass") + b"\x00" + nonce.encode("utf-8", "surrogatepass"),
        digest_size=16,
    ).digest()


class NonceStore(ABC):
    """Claim a nonce once. ``window`` is how long after ``created`` a nonce is kept; it
    must be at least the verifier's skew."""

    window: float
    # Unix time the store began remembering nonces. A request signed earlier may carry a
    # nonce that a lost predecessor store had seen, so the verifier refuses it. 0 means
    # "no known gap" (a store that predates this field, or one per process by design).
    born_at: float = 0.0
    created_new: bool = False

    @abstractmethod
    async def claim(self, key_id: str, nonce: str, created: int, now: float) -> bool:
        """True the first time (key_id, nonce) is seen within the window, atomically."""

    async def close(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release resources; the default does nothing."""


class InMemoryNonceStore(NonceStore):
    """Per-process store: a dict for lookups plus a heap ordered by expiry for purging."""

    def __init__(self, window: float = 300.0) -> None:
        self.window = window
        self._expiry: dict[bytes, float] = {}
        self._heap: list[tuple[float, bytes]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def _purge(self, now: float) -> None:
        heap, expiry = self._heap, self._expiry
        while heap and heap[0][0] < now:
            at, key = heapq.heappop(heap)
            if expiry.get(key) == at:
                del expiry[key]

    async def claim(self, key_id: str, nonce: str, created: int, now: float) -> bool:
        self._purge(now)
        key = _nonce_key(key_id, nonce)
        if key in self._expiry:
            return False
        expires = created + self.window
        self._expiry[key] = expires
        heapq.heappush(self._heap, (expires, key))
        return True


class SQLiteNonceStore(NonceStore):
    """Survives restarts: a replay right after a restart is still refused.

    Uses its own small SQLite file (not the event store): WAL with ``synchronous=NORMAL``,
    so a commit is a WAL append with no fsync. Claims made in the same event-loop turn
    share one transaction (group commit, run on the loop at the end of the turn: no
    thread hop, which would cost more than the write); each claim's answer is its own
    row's outcome, and a claim returns only after its transaction committed. A process
    crash loses nothing (the WAL is in the OS cache); a power loss may lose the last
    claims, at most one window's worth of replay exposure. Several processes may share
    the file: the primary key makes claims atomic.

    Expired rows are purged every ``purge_every`` seconds by a full scan. There is
    deliberately no index on ``expires``: it made every claim ~40% slower (a second
    B-tree page per commit) and made the purge slower too (measured: 200k rows, deleting
    10%: 35 ms without the index, 109 ms with it; 50k rows: 7 ms vs 22 ms).
    """

    def __init__(
        self,
        path: str | Path,
        window: float = 300.0,
        *,
        purge_every: float = 30.0,
        clock: Callable[[], float] = time.time,
        fresh_install: bool = False,
    ) -> None:
        self.window = window
        self._purge_every = purge_every
        self._next_purge = 0.0
        self._was_existing = Path(path).exists() and Path(path).stat().st_size > 0
        self._db = sqlite3.connect(str(path), isolation_level=None, timeout=5.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS nonces ("
            " key BLOB PRIMARY KEY, expires REAL NOT NULL) WITHOUT ROWID"
        )
        # On a fresh install no signed request can predate the store: no gap to close.
        self.born_at, self.created_new = self._birth(0.0 if fresh_install else clock())
        # The claims of this loop turn: key -> (expires, now, answer).
        self._batch: dict[bytes, tuple[float, float, asyncio.Future[bool]]] = {}

    def __len__(self) -> int:
        return self._db.execute("SELECT count(*) FROM nonces").fetchone()[0]

    def _birth(self, now: float) -> tuple[float, bool]:
        """The store's birth time, and whether it was born just now.

        A store without a birth row that already has the nonces table is a store of an
        older version (it has been remembering nonces all along): born at 0. A database
        with neither was just created, which is exactly when a lost nonce file would
        silently reopen the replay window.
        """
        db = self._db
        db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value REAL NOT NULL)")
        row = db.execute("SELECT value FROM meta WHERE name = 'born_at'").fetchone()
        if row is not None:
            return float(row[0]), False
        has_nonces = db.execute("SELECT 1 FROM nonces LIMIT 1").fetchone() is not None
        born, new = (0.0, False) if has_nonces or self._was_existing else (now, True)
        db.execute("INSERT OR IGNORE INTO meta(name, value) VALUES ('born_at', ?)", (born,))
        return float(db.execute("SELECT value FROM meta WHERE name = 'born_at'").fetchone()[0]), new

    def purge(self, now: float) -> int:
        """Delete expired rows; returns how many."""
        cur = self._db.execute("DELETE FROM nonces WHERE expires < ?", (now,))
        self._next_purge = now + self._purge_every
        return cur.rowcount

    async def claim(self, key_id: str, nonce: str, created: int, now: float) -> bool:
        key = _nonce_key(key_id, nonce)
        if key in self._batch:  # the same nonce twice in one turn: only one can win
            return False
        loop = asyncio.get_running_loop()
        if not self._batch:
            loop.call_soon(self._commit_batch)
        answer = loop.create_future()
        self._batch[key] = (created + self.window, now, answer)
        return await answer

    def _commit_batch(self) -> None:
        batch, self._batch = self._batch, {}
        db = self._db
        try:
            # The oldest claim time of the turn decides which stored rows count as
            # expired: never a reuse the claim made alone would have refused.
            now = min(n for _, n, _ in batch.values())
            if now >= self._next_purge:
                self.purge(now)
            won = self._insert(list(batch.items()), now)
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            for _, _, answer in batch.values():
                if not answer.done():
                    answer.set_exception(exc)
            return
        for key, (_, _, answer) in batch.items():
            if not answer.done():  # its request may have been cancelled meanwhile
                answer.set_result(key in won)

    def _insert(
        self, claims: list[tuple[bytes, tuple[float, float, asyncio.Future[bool]]]], now: float
    ) -> set[bytes]:
        """Insert the turn's claims in one statement (its own autocommit transaction, so
        one WAL commit and no BEGIN/COMMIT round trips); the keys it wrote are the claims
        that won. An expired row for the same key may still be there between purges: a
        nonce may be reused once its old signature can no longer pass the skew check."""
        won: set[bytes] = set()
        for start in range(0, len(claims), _ROWS_PER_STATEMENT):
            chunk = claims[start : start + _ROWS_PER_STATEMENT]
            sql = _CLAIM_SQL.get(len(chunk))
            if sql is None:
                sql = _CLAIM_SQL[len(chunk)] = (
                    "INSERT INTO nonces(key, expires) VALUES "
                    + ",".join(["(?, ?)"] * len(chunk))
                    + " ON CONFLICT(key) DO UPDATE SET expires = excluded.expires"
                    " WHERE nonces.expires < ? RETURNING key"
                )
            params: list[object] = []
            for key, (expires, _, _) in chunk:
                params += (key, expires)
            params.append(now)
            won.update(row[0] for row in _rows(self._db, sql, params))
        return won

    async def close(self) -> None:
        self._db.close()
