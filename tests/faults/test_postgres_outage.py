"""PostgreSQL unreachable for a few seconds: clear errors, nothing half-written, recovery.

The store talks to PostgreSQL through a `TcpProxy` this test cuts and restores (the shared
server keeps running for everyone else).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from events import NewEvent, StoreConfig, StoreUnavailable
from events.postgres import PostgresEventStore
from tests.conformance.store_suite import EventStoreConformance
from tests.faults.tcp_proxy import TcpProxy
from tests.pgtools import drop_created, fresh_database


@pytest.fixture(scope="module", autouse=True)
def _drop_databases() -> Iterator[None]:
    yield
    drop_created()


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}"))


def ev(i: int) -> NewEvent:
    return NewEvent(type="T", data={"i": i}, actor="a")


async def test_outage_gives_clear_errors_writes_nothing_half_and_recovers(
    tmp_path: Path,
) -> None:
    direct = fresh_database("outage")
    target = urlsplit(direct)
    proxy = await TcpProxy(target.hostname or "127.0.0.1", target.port or 5432).start()
    config = StoreConfig(path=tmp_path / "s", url=_via(direct, proxy.port))
    store = await PostgresEventStore.open(config)
    try:
        for i in range(10):
            await store.append("before", [ev(i)])
        # A big batch in flight when the link is cut: all of it or none of it.
        big = asyncio.create_task(store.append("big", [ev(i) for i in range(5000)]))
        await asyncio.sleep(0.02)
        await proxy.cut()
        big_result = await asyncio.gather(big, return_exceptions=True)
        assert isinstance(big_result[0], list | StoreUnavailable), big_result
        # While it is down: every call fails fast with a reason, no hang, no traceback text.
        outcomes = await asyncio.wait_for(
            asyncio.gather(
                *(store.append("during", [ev(i)]) for i in range(20)),
                store.read_all(),
                return_exceptions=True,
            ),
            timeout=20,
        )
        assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
        error = outcomes[0]
        assert isinstance(error, StoreUnavailable)
        assert error.reason == "store_unavailable"
        assert "PostgreSQL unavailable while appending" in str(error)
        await asyncio.sleep(2)
        await proxy.restore()
        # Recovers by itself: the writer and the pool reconnect on the next call.
        positions = await asyncio.wait_for(store.append("after", [ev(1), ev(2)]), timeout=20)
        records = await store.read_all(limit=None)
        assert [r.position for r in records] == list(range(1, len(records) + 1))
        big_count = sum(r.stream == "big" for r in records)
        assert big_count in (0, 5000)
        if isinstance(big_result[0], list):  # acknowledged: all of it is there
            assert big_count == 5000
        assert not any(r.stream == "during" for r in records)
        assert positions == [len(records) - 1, len(records)]
        report = await EventStoreConformance().verify(store, config)
        assert report.ok, report.problems
    finally:
        await store.close()
        await proxy.close()


async def test_start_while_unreachable_is_a_clear_error(tmp_path: Path) -> None:
    proxy = await TcpProxy("127.0.0.1", 5432).start()
    port = proxy.port
    await proxy.cut()
    url = f"postgresql://postgres@127.0.0.1:{port}/nothing"
    with pytest.raises(StoreUnavailable, match="PostgreSQL unavailable while opening"):
        await PostgresEventStore.open(StoreConfig(path=tmp_path / "s", url=url))
