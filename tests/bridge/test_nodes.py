"""bridge.nodes: heartbeats in PostgreSQL, ages by the database clock."""

from __future__ import annotations

import asyncio

from bridge import nodes as nodes_mod
from bridge.nodes import PostgresNodes, SoloNodes, live_nodes
from tests.pgtools import drop_created, fresh_database


def test_solo_knows_only_itself() -> None:
    solo = SoloNodes("a")
    assert solo.alive("a") and solo.alive(None) and not solo.alive("b")
    assert solo.peers() == [] and solo.live() == ["a"]


def test_no_bridge_ever_ran_no_live_nodes() -> None:
    url = fresh_database("nodes")
    try:
        assert asyncio.run(live_nodes(url)) == []
    finally:
        drop_created()


def test_peers_see_each_other_and_a_clean_stop_at_once() -> None:
    url = fresh_database("nodes")

    async def run() -> None:
        a, b = PostgresNodes("a", url), PostgresNodes("b", url)
        await a.start(lambda: 7, "http://a")
        await b.start(lambda: 9, "http://b")
        await a._beat(7, "http://a")  # a's first beat ran before b existed
        assert a.alive("b") and b.alive("a")
        [peer] = a.peers()
        assert peer["node"] == "b" and peer["applied"] == 9 and peer["alive"]
        await b.close()  # deletes its row
        await a._beat(7, "http://a")
        assert not a.alive("b") and a.peers() == []
        await a.close()

    try:
        asyncio.run(run())
    finally:
        drop_created()


def test_a_peer_that_stops_beating_turns_stale() -> None:
    url = fresh_database("nodes")

    async def run() -> None:
        a, b = PostgresNodes("a", url), PostgresNodes("b", url)
        await a.start(lambda: 0, "http://a")
        await b.start(lambda: 0, "http://b")
        assert b._task is not None
        b._task.cancel()  # b "dies": no more beats, its row stays
        await a._beat(0, "http://a")
        assert a.alive("b") and a.live() == b.live() == ["a", "b"]
        assert await live_nodes(url) == ["a", "b"]  # what `repair` reads, not being a bridge
        a._fetched_at -= nodes_mod.STALE_S + 1  # as if STALE_S passed since the last read
        assert not a.alive("b") and a.peers()[0]["alive"] is False and a.live() == ["a"]
        async with b._pool.acquire() as conn:  # by the database clock: b's beat is old
            await conn.execute(
                "UPDATE lh_nodes SET last_seen = now() - make_interval(secs => $1)"
                " WHERE node = 'b'",
                nodes_mod.STALE_S + 1,
            )
        assert await live_nodes(url) == ["a"]
        await a.close()
        await b._pool.close()

    try:
        asyncio.run(run())
    finally:
        drop_created()
