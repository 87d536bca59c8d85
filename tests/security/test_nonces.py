"""One behavioural suite for every NonceStore backend (subclasses supply the factory)."""

import asyncio
import sqlite3
from pathlib import Path

import pytest

from security.nonces import InMemoryNonceStore, NonceStore, SQLiteNonceStore

T0 = 1_800_000_000


class NonceStoreSuite:
    """Inherited by each backend's test class; a new backend is done when it passes."""

    @pytest.fixture
    def store(self, tmp_path) -> NonceStore:
        raise NotImplementedError

    async def test_first_claim_wins_second_loses(self, store):
        assert await store.claim("k1", "n1", T0, T0)
        assert not await store.claim("k1", "n1", T0, T0 + 1)

    async def test_nonces_are_per_key(self, store):
        assert await store.claim("k1", "n1", T0, T0)
        assert await store.claim("k2", "n1", T0, T0)

    async def test_no_ambiguity_between_key_and_nonce(self, store):
        assert await store.claim("a", "bc", T0, T0)
        assert await store.claim("ab", "c", T0, T0)

    async def test_replay_refused_until_window_end(self, store):
        assert await store.claim("k", "n", T0, T0)
        assert not await store.claim("k", "n", T0, T0 + store.window)  # still in window
        # After created + window the skew check refuses the old signature anyway, so the
        # store may forget the nonce and accept it again with a new `created`.
        assert await store.claim("k", "n", T0 + 400, T0 + store.window + 1)

    async def test_concurrent_claims_one_winner_per_nonce(self, store):
        # Claims racing in the same loop turn (a replay sent alongside the original).
        nonces = [f"n{i % 50}" for i in range(200)]
        won = await asyncio.gather(*(store.claim("k", n, T0, T0) for n in nonces))
        assert sum(won) == 50
        assert {n for n, w in zip(nonces, won, strict=True) if w} == set(nonces)
        assert not any(await asyncio.gather(*(store.claim("k", n, T0, T0) for n in nonces)))

    async def test_memory_bounded_by_window(self, store):
        for i in range(500):
            assert await store.claim("k", f"n{i}", T0, T0)
        assert len(store) == 500
        # Much later, one claim purges everything that expired.
        assert await store.claim("k", "late", T0 + 10_000, T0 + 10_000)
        assert len(store) == 1


class TestInMemoryNonceStore(NonceStoreSuite):
    @pytest.fixture
    def store(self, tmp_path):
        return InMemoryNonceStore(window=300)

    async def test_entries_expire_in_created_order_even_if_claimed_out_of_order(self):
        store = InMemoryNonceStore(window=100)
        await store.claim("k", "late", T0 + 50, T0)
        await store.claim("k", "early", T0 - 50, T0)
        await store.claim("k", "x", T0, T0 + 60)  # early expired at T0+50
        assert len(store) == 2
        assert not await store.claim("k", "late", T0 + 50, T0 + 60)


class TestSQLiteNonceStore(NonceStoreSuite):
    @pytest.fixture
    async def store(self, tmp_path):
        # purge_every=0: purge on every claim, so the bounded-memory test is exact.
        s = SQLiteNonceStore(tmp_path / "nonces.db", window=300, purge_every=0)
        yield s
        await s.close()

    async def test_replay_after_restart_is_refused(self, tmp_path):
        path = tmp_path / "nonces.db"
        first = SQLiteNonceStore(path, window=300)
        assert await first.claim("k", "n-before-crash", T0, T0)
        await first.close()  # simulated restart: a new process opens the same file
        second = SQLiteNonceStore(path, window=300)
        assert not await second.claim("k", "n-before-crash", T0, T0 + 5)
        assert await second.claim("k", "fresh", T0, T0 + 5)
        await second.close()

    async def test_replay_refused_without_clean_close(self, tmp_path):
        # No close(): the row must already be committed when claim() returns.
        path = tmp_path / "nonces.db"
        first = SQLiteNonceStore(path, window=300)
        assert await first.claim("k", "n", T0, T0)
        other = SQLiteNonceStore(path, window=300)
        assert not await other.claim("k", "n", T0, T0 + 1)
        await other.close()
        await first.close()

    async def test_raw_nonces_are_not_stored(self, tmp_path):
        path = tmp_path / "nonces.db"
        store = SQLiteNonceStore(path, window=300)
        await store.claim("k_visible", "super-secret-nonce-value", T0, T0)
        await store.close()
        raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
        assert b"super-secret-nonce-value" not in raw
        assert b"k_visible" not in raw
        rows = sqlite3.connect(path).execute("SELECT length(key) FROM nonces").fetchall()
        assert rows == [(16,)]

    async def test_a_failed_commit_fails_every_claim_of_its_turn(self, tmp_path):
        path = tmp_path / "n.db"
        store = SQLiteNonceStore(path, window=300)
        blocker = sqlite3.connect(path, timeout=0)
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        store._db.execute("PRAGMA busy_timeout = 0")
        claims = await asyncio.gather(
            store.claim("k", "a", T0, T0), store.claim("k", "b", T0, T0), return_exceptions=True
        )
        assert all(isinstance(c, sqlite3.OperationalError) for c in claims)
        blocker.rollback()
        assert await store.claim("k", "a", T0, T0)  # nothing half-written: "a" is still free
        await store.close()

    async def test_periodic_purge(self, tmp_path):
        store = SQLiteNonceStore(tmp_path / "n.db", window=10, purge_every=60)
        for i in range(20):
            await store.claim("k", f"n{i}", T0, T0)
        await store.claim("k", "a", T0 + 30, T0 + 30)  # before next purge: rows stay
        assert len(store) == 21
        await store.claim("k", "b", T0 + 61, T0 + 61)  # purge due: only "b" is live
        assert len(store) == 1
        await store.close()


def test_a_new_store_is_born_now_and_keeps_its_birth(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    first = SQLiteNonceStore(path, window=300, clock=lambda: 1000.5)
    assert (first.born_at, first.created_new) == (1000.5, True)
    first._db.close()
    again = SQLiteNonceStore(path, window=300, clock=lambda: 5000.0)
    assert (again.born_at, again.created_new) == (1000.5, False)
    again._db.close()


def test_a_fresh_install_has_no_gap(tmp_path: Path) -> None:
    store = SQLiteNonceStore(tmp_path / "n.db", window=300, fresh_install=True)
    assert store.born_at == 0.0
    store._db.close()


def test_a_store_of_an_older_version_is_not_new(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE nonces (key BLOB PRIMARY KEY, expires REAL NOT NULL) WITHOUT ROWID")
    db.commit()
    db.close()
    store = SQLiteNonceStore(path, window=300, clock=lambda: 9999.0)
    assert (store.born_at, store.created_new) == (0.0, False)
    store._db.close()
