"""bridge.nodes: heartbeats in PostgreSQL, ages by the database clock; the 2026-07-28
agents each bridge saw, shared on the same tick."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from bridge import nodes as nodes_mod
from bridge.nodes import PostgresNodes, SoloNodes, live_nodes
from bridge.sessions import SHARE_EVERY_S, Presence
from events.postgres import migrate
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
        await migrate(url)
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
        await migrate(url)
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


def test_modern_agents_seen_on_one_bridge_are_reachable_from_the_other() -> None:
    url = fresh_database("nodes")

    async def run() -> None:
        await migrate(url)
        a, b = PostgresNodes("a", url), PostgresNodes("b", url)
        clock = [time.time()]
        a.presence = Presence("a", a.alive, clock=lambda: clock[0])
        b.presence = Presence("b", b.alive)
        await a.start(lambda: 0, "http://a")
        await b.start(lambda: 0, "http://b")
        await a._beat(0, "http://a")
        a.presence.seen_modern("x", True).waiting += 1
        a.presence.left_wait(a.presence.seen_modern("y", True))
        clock[0] += 40.0  # y left its wait 40 s ago; x still waits
        await a._share_modern()
        await b._share_modern()
        assert b.presence.remote_modern_reachable("x") and b.presence.online("y")
        assert not a.presence.remote_modern_reachable("x")  # a's own rows are not remote
        [y_age] = [age for agent, age in await _rows(url) if agent == "y"]
        assert 39.5 < y_age < 41.0  # the age a saw, by the database clock
        written = await _rows(url, "updated_at")
        clock[0] += 1.0
        await a._share_modern()  # nothing due within SHARE_EVERY_S: no row rewritten
        assert await _rows(url, "updated_at") == written
        clock[0] += SHARE_EVERY_S
        await a._share_modern()  # x waits on: refreshed; y has nothing new
        rewritten = dict(await _rows(url, "updated_at"))
        assert rewritten["x"] > dict(written)["x"] and rewritten["y"] == dict(written)["y"]
        await b._share_modern()  # read since its last read: x only
        assert b.presence.remote_modern_counts() == {"a": 2}
        await a.close()  # a clean stop takes a's rows with its heartbeat
        await b._beat(0, "http://b")
        assert not b.presence.online("x") and await _rows(url) == []
        await b.close()

    try:
        asyncio.run(run())
    finally:
        drop_created()


async def _rows(url: str, column: str = "extract(epoch FROM now() - seen_at)") -> list:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(f"SELECT agent, {column} FROM lh_modern_presence ORDER BY agent")
    finally:
        await conn.close()
    return [(r[0], r[1]) for r in rows]
