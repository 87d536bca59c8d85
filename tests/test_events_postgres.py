"""The PostgreSQL backend: the shared conformance suite, each test in a fresh database,
plus what only a shared server shows (several stores on one log, migrations, damage)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from events import EventStore, NewEvent, StoreConfig, StoreDamaged, StoreError, StoreReadOnly
from events.postgres import PostgresEventStore, migrate
from tests.conformance.store_suite import EventStoreConformance
from tests.pgtools import drop_created, fresh_database


@pytest.fixture(scope="module", autouse=True)
def _drop_databases() -> Iterator[None]:
    yield
    drop_created()


class TestPostgresConformance(EventStoreConformance):
    def make_config(self, tmp_path: Path, **overrides: object) -> StoreConfig:
        return StoreConfig(
            path=tmp_path / "pg",
            url=fresh_database("conf"),
            **overrides,  # type: ignore[arg-type]
        )

    async def open_store(self, config: StoreConfig) -> EventStore:
        return await PostgresEventStore.open(config)

    async def tamper(self, config: StoreConfig, *statements: str) -> None:
        assert config.url is not None
        conn = await asyncpg.connect(config.url)
        try:
            for table in ("events", "checkpoints", "merkle_nodes", "tlog_checkpoints"):
                await conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()


_suite = TestPostgresConformance()


def ev(i: int) -> NewEvent:
    return NewEvent(type="T", data={"i": i}, actor="a")


async def test_two_stores_on_one_database_keep_one_chain(tmp_path: Path) -> None:
    config = _suite.make_config(tmp_path)
    a = await PostgresEventStore.open(config)
    b = await PostgresEventStore.open(config)
    try:

        async def writer(store: PostgresEventStore, w: int) -> list[list[int]]:
            return [await store.append(f"w{w}", [ev(i), ev(i)]) for i in range(25)]

        results = await asyncio.gather(*(writer(a if w % 2 else b, w) for w in range(20)))
        positions = sorted(p for per in results for batch in per for p in batch)
        assert positions == list(range(1, 1001))
        for per in results:
            for batch in per:
                assert batch[1] == batch[0] + 1
        # Optimistic concurrency holds across the two processes' writers.
        await a.append("shared", [ev(0)], expected_version=0)
        outcomes = await asyncio.gather(
            *(s.append("shared", [ev(i)], expected_version=1) for s in (a, b) for i in range(5)),
            return_exceptions=True,
        )
        assert sum(isinstance(o, list) for o in outcomes) == 1
        # An idempotent retry through the *other* store returns the original positions.
        event = ev(99)
        first = await a.append("retry", [event])
        assert await b.append("retry", [event]) == first
        report = await _suite.verify(a, config)
        assert report.ok, report.problems
        assert report.records_checked == 1000 + 2 + 1
    finally:
        await a.close()
        await b.close()


async def test_subscriber_follows_appends_of_another_store(tmp_path: Path) -> None:
    config = _suite.make_config(tmp_path)
    writer = await PostgresEventStore.open(config)
    follower = await PostgresEventStore.open(config)
    try:
        seen: list[int] = []

        async def follow() -> None:
            async for record in follower.subscribe():
                seen.append(record.position)
                if record.position == 100:
                    return

        task = asyncio.create_task(follow())
        await asyncio.gather(*(writer.append(f"s{i % 5}", [ev(i)]) for i in range(100)))
        await asyncio.wait_for(task, timeout=10)
        assert seen == list(range(1, 101))
    finally:
        await writer.close()
        await follower.close()


async def test_subscriber_falls_back_to_polling_without_notify(tmp_path: Path) -> None:
    config = _suite.make_config(tmp_path)
    writer = await PostgresEventStore.open(config)
    follower = await PostgresEventStore.open(config)
    try:
        follower._on_notify = lambda *_a: None  # type: ignore[method-assign]  # NOTIFY lost
        got = asyncio.Event()

        async def follow() -> None:
            async for record in follower.subscribe():
                if record.position == 3:
                    got.set()
                    return

        task = asyncio.create_task(follow())
        await asyncio.sleep(0.2)
        for i in range(3):
            await writer.append("s", [ev(i)])
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(got.wait(), timeout=5)
        assert loop.time() - started < 1.0 + follower.poll_interval
        await task
    finally:
        await writer.close()
        await follower.close()


async def test_checkpoints_signed_once_per_size_by_racing_stores(tmp_path: Path) -> None:
    config = _suite.make_config(tmp_path, checkpoint_interval=0)
    stores = [await PostgresEventStore.open(config) for _ in range(3)]
    try:
        await stores[0].append("s", [ev(i) for i in range(5)])
        made = await asyncio.gather(*(s.checkpoint() for s in stores for _ in range(3)))
        signed = [cp for cp in made if cp is not None]
        assert len(signed) == 1 and signed[0].size == 5
        assert [cp.size for cp in await stores[1].checkpoints()] == [5]
    finally:
        for store in stores:
            await store.close()


async def test_migrations_apply_once_under_concurrency_and_refuse_newer(tmp_path: Path) -> None:
    url = fresh_database("mig")
    results = await asyncio.gather(*(migrate(url) for _ in range(3)))
    assert sorted(results) == [[], [], [1, 2, 3, 4]]
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("INSERT INTO schema_version VALUES (999, 'future', 0)")
    finally:
        await conn.close()
    with pytest.raises(StoreError, match="newer than this release"):
        await migrate(url)


async def test_triggers_refuse_update_delete_truncate(tmp_path: Path) -> None:
    config = _suite.make_config(tmp_path)
    store = await PostgresEventStore.open(config)
    await store.append("s", [ev(1)])
    await store.close()
    assert config.url is not None
    conn = await asyncpg.connect(config.url)
    try:
        for statement in (
            "UPDATE events SET actor = 'mallory'",
            "DELETE FROM events",
            "TRUNCATE events",
            "DELETE FROM checkpoints",
        ):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(statement)
    finally:
        await conn.close()


async def test_cut_tail_refuses_writer_and_verify_reports_it(tmp_path: Path) -> None:
    config = _suite.make_config(tmp_path)
    store = await PostgresEventStore.open(config)
    for i in range(10):
        await store.append("s", [ev(i)])
    await store.close()
    assert config.url is not None
    conn = await asyncpg.connect(config.url)
    try:
        await conn.execute("ALTER TABLE events DISABLE TRIGGER USER")
        await conn.execute("DELETE FROM events WHERE position > 8")
    finally:
        await conn.close()
    with pytest.raises(StoreDamaged, match="damaged") as info:
        await PostgresEventStore.open(config)
    assert info.value.kind == "truncated" and info.value.reason == "store_damaged"
    reader = await PostgresEventStore.open(
        StoreConfig(path=config.path, url=config.url, readonly=True)
    )
    try:
        report = await _suite.verify(reader, config)
    finally:
        await reader.close()
    assert report.first is not None and report.first.kind == "truncated"


async def test_read_only_database_is_named_as_such(tmp_path: Path) -> None:
    config = _suite.make_config(tmp_path)
    store = await PostgresEventStore.open(config)
    await store.append("s", [ev(1)])
    await store.close()
    assert config.url is not None
    name = config.url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(config.url)
    try:
        await conn.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    finally:
        await conn.close()
    with pytest.raises(StoreReadOnly) as info:
        await PostgresEventStore.open(config)
    assert info.value.reason == "store_read_only" and info.value.retryable


async def test_the_merkle_tree_is_one_tree_across_two_stores_and_proves(tmp_path: Path) -> None:
    """Two bridges on one database append in turns; each reloads the tree when the other
    moved the head, so the stored tree is the RFC 6962 tree of the one log."""
    from events import merkle, note
    from events.tlog import consistency_proof, inclusion_proof, leaf_of, tree_root

    config = _suite.make_config(tmp_path, checkpoint_interval=0)
    a = await PostgresEventStore.open(config)
    b = await PostgresEventStore.open(config)
    try:
        for i in range(40):
            await (a if i % 3 else b).append(f"s{i % 4}", [ev(i), ev(i + 1000)])
        records = await a.read_all(1, limit=None)
        leaves = [leaf_of(r) for r in records]
        root = merkle.root_from_leaves(leaves)
        assert await tree_root(a, 80) == root == await tree_root(b, 80)
        for index in (0, 15, 16, 47, 79):
            proof = await inclusion_proof(b, index, 80)
            merkle.verify_inclusion(leaves[index], index, 80, proof, root)
        old = merkle.root_from_leaves(leaves[:33])
        merkle.verify_consistency(33, 80, old, root, await consistency_proof(a, 33, 80))
        await a.checkpoint()
        [cp] = await b.tree_checkpoints()  # signed by a over the tree as a last saw it
        head = note.parse_checkpoint(note.parse_note(cp.note).text)
        assert 0 < head.size <= 80 and head.root == await tree_root(b, head.size)
    finally:
        await a.close()
        await b.close()
    reopened = await PostgresEventStore.open(config)  # the tree is loaded, not rebuilt wrong
    try:
        await reopened.append("s9", [ev(9)])
        records = await reopened.read_all(1, limit=None)
        want = merkle.root_from_leaves([leaf_of(r) for r in records])
        assert await tree_root(reopened, 81) == want
    finally:
        await reopened.close()
