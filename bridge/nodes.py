"""Which bridges of one store are alive: a heartbeat table, not facts in the log.

Every bridge on a shared PostgreSQL store upserts its row in `lh_nodes` once a second and
reads everyone's age in the same round trip. A row, not a `NodeHeartbeat` fact: a fact a
second per bridge would put 86,400 events a day per bridge into the signed chain (every
one hashed, checkpointed and replayed at each start) to carry state nobody needs
afterwards — who was alive at 03:12 yesterday is not an audit question, whose session a
request was pushed to is, and that stays in the log (`RequestRouted.node`,
`SessionOpened.node`). Ages are computed by the database clock (`now() - last_seen`), so
the bridges' clocks never decide whether a peer is gone.

A bridge that stops cleanly deletes its row (its peers see it gone at once); one that dies
stops beating and is `gone` after `STALE_S`. While this bridge cannot reach the database
its cached ages keep growing, so its peers turn stale too — the safe direction: a push
that cannot be confirmed is moved to the mailbox, never lost.

The same tick carries the 2026-07-28 agents each bridge saw waiting (`lh_modern_presence`,
`Presence.modern_due`): one statement upserts those due and reads the rows peers wrote
since the previous read — a sessionless agent is reachable for elicitation wherever it
waits, and its waits leave no fact in the log.

A single SQLite bridge has no peers: `SoloNodes` says only this node is alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .sessions import MODERN_SEEN_S

if TYPE_CHECKING:
    from .sessions import Presence

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
STALE_S = 5.0  # five missed beats: long enough for a GC pause or a slow commit
# A peer's presence row committed this long after its statement began is still read.
READ_SLACK_S = 2.0

_SHARE_MODERN = (
    "WITH seen AS (INSERT INTO lh_modern_presence (agent, node, elicitation, seen_at)"
    " SELECT agent, $1, elicitation, now() - make_interval(secs => age)"
    " FROM unnest($2::text[], $3::boolean[], $4::float8[]) AS t(agent, elicitation, age)"
    " ON CONFLICT (agent, node) DO UPDATE SET elicitation = excluded.elicitation,"
    " seen_at = excluded.seen_at, updated_at = now())"
    " SELECT agent, node, elicitation, extract(epoch FROM now() - seen_at) AS age,"
    " now() AS at FROM lh_modern_presence"
    " WHERE node <> $1 AND seen_at > now() - make_interval(secs => $5)"
    " AND ($6::timestamptz IS NULL OR updated_at > $6 - make_interval(secs => $7))"
)


class SoloNodes:
    """One bridge on its own store: nobody else is alive, nothing to beat."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.on_tick: Callable[[], None] = lambda: None
        self.presence: Presence | None = None  # whose 2026-07-28 agents are shared

    def alive(self, node: str | None) -> bool:
        return node is None or node == self.node

    def peers(self) -> list[dict[str, Any]]:
        return []

    def live(self) -> list[str]:
        """Every bridge alive now, this one included, in node order: the order in which
        live bridges take over a dead peer's work, so that one of them does it first."""
        return [self.node]

    async def start(self, applied: Callable[[], int], url: str) -> None:
        return None

    async def close(self) -> None:
        return None


class PostgresNodes(SoloNodes):
    """Heartbeats in table `lh_nodes` of the shared database."""

    def __init__(self, node: str, database_url: str) -> None:
        super().__init__(node)
        self._url = database_url
        self._pool: Any = None
        self._task: asyncio.Task[None] | None = None
        self._ages: dict[str, dict[str, Any]] = {}
        self._fetched_at = time.monotonic()
        self._modern_read_at: datetime | None = None  # the database's now() at the last read

    async def start(self, applied: Callable[[], int], url: str) -> None:
        import asyncpg

        self._pool = await asyncpg.create_pool(
            self._url, min_size=1, max_size=1, timeout=5, command_timeout=5
        )
        async with self._pool.acquire() as conn:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS lh_nodes (node text PRIMARY KEY, url text NOT NULL,"
                " started_at timestamptz NOT NULL DEFAULT now(),"
                " last_seen timestamptz NOT NULL DEFAULT now(), applied bigint NOT NULL)"
            )
            # what a previous run of this node shared died with it; stale rows help nobody
            await conn.execute(
                "DELETE FROM lh_modern_presence WHERE node = $1"
                " OR seen_at < now() - make_interval(secs => $2)",
                self.node,
                MODERN_SEEN_S,
            )
        await self._beat(applied(), url, started=True)
        self._task = asyncio.create_task(self._run(applied, url), name="lighthouse-heartbeat")

    async def _run(self, applied: Callable[[], int], url: str) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await self._beat(applied(), url)
                await self._share_modern()
            except Exception as exc:  # the database is away: ages keep growing meanwhile
                log.warning("heartbeat failed: %s", exc)
            try:
                self.on_tick()
            except Exception:
                log.exception("heartbeat observer failed")

    async def _beat(self, applied: int, url: str, *, started: bool = False) -> None:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "WITH beat AS (INSERT INTO lh_nodes (node, url, applied) VALUES ($1, $2, $3)"
                " ON CONFLICT (node) DO UPDATE SET url = excluded.url,"
                " applied = excluded.applied, last_seen = now()"
                + (", started_at = now()" if started else "")
                + " RETURNING node)"
                " SELECT node, url, applied, extract(epoch FROM now() - last_seen) AS age,"
                " extract(epoch FROM now() - started_at) AS up FROM lh_nodes"
                " WHERE node <> $1",
                self.node,
                url,
                applied,
            )
        self._ages = {
            r["node"]: {"url": r["url"], "applied": r["applied"], "age": r["age"], "up": r["up"]}
            for r in rows
        }
        self._fetched_at = time.monotonic()

    async def _share_modern(self) -> None:
        """Write the modern agents due and read the peers' rows written since the last
        read (less `READ_SLACK_S`), in one statement."""
        if self.presence is None:
            return
        due = self.presence.modern_due()
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                _SHARE_MODERN,
                self.node,
                [d.agent for d in due],
                [d.elicitation for d in due],
                [d.age for d in due],
                MODERN_SEEN_S,
                self._modern_read_at,
                READ_SLACK_S,
            )
        self.presence.modern_shared(due)
        if rows:
            self._modern_read_at = rows[0]["at"]
        self.presence.remote_modern_seen(
            [(r["agent"], r["node"], r["elicitation"], float(r["age"])) for r in rows]
        )

    def _age(self, row: dict[str, Any]) -> float:
        return float(row["age"]) + (time.monotonic() - self._fetched_at)

    def alive(self, node: str | None) -> bool:
        if node is None or node == self.node:
            return True
        row = self._ages.get(node)
        return row is not None and self._age(row) < STALE_S

    def live(self) -> list[str]:
        return sorted([self.node, *(n for n in self._ages if self.alive(n))])

    def peers(self) -> list[dict[str, Any]]:
        return [
            {
                "node": node,
                "url": row["url"],
                "last_seen_s": round(self._age(row), 3),
                "applied": row["applied"],
                "alive": self._age(row) < STALE_S,
            }
            for node, row in sorted(self._ages.items())
        ]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pool is not None:
            with contextlib.suppress(Exception):  # a clean stop: peers see us gone at once
                async with self._pool.acquire() as conn:
                    await conn.execute(
                        "WITH modern AS (DELETE FROM lh_modern_presence WHERE node = $1)"
                        " DELETE FROM lh_nodes WHERE node = $1",
                        self.node,
                    )
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.close(), 2.0)


async def live_nodes(database_url: str) -> list[str]:
    """The bridges alive on the store at `database_url` now, by the database clock, for a
    process that is not a bridge itself: a command that must run alone, or `lighthouse
    repair --database-url` leaving live bridges their work. Empty when no bridge ever ran
    there (no table yet)."""
    import asyncpg

    conn = await asyncpg.connect(database_url, timeout=5, command_timeout=5)
    try:
        if await conn.fetchval("SELECT to_regclass('lh_nodes')") is None:
            return []
        rows = await conn.fetch(
            "SELECT node FROM lh_nodes WHERE now() - last_seen < make_interval(secs => $1)"
            " ORDER BY node",
            STALE_S,
        )
    finally:
        await conn.close()
    return [r["node"] for r in rows]
