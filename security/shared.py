"""Replay protection and rate limits shared by several bridge processes.

One bridge keeps nonces and GCRA buckets in its own memory or file; N bridges behind a
load balancer must share them, or a nonce used on bridge A replays on bridge B and every
agent gets N times its limit. Same interfaces as `security.nonces` / `security.ratelimit`:

* `RedisNonceStore`: `SET key 1 NX PXAT expiry` — one atomic round trip per claim; Redis
  forgets the key when the signature could no longer pass the skew check anyway.
* `RedisRateLimiter`: GCRA in a Lua script that reads Redis `TIME`, so the bridges'
  clocks never enter a decision; the script runs atomically on the server.
* `PostgresNonceStore`: for a PostgreSQL deployment without Redis — an `INSERT … ON
  CONFLICT DO UPDATE … WHERE expired` on the primary key, claims of one event-loop turn in
  one statement (a claim costs a commit, which is why Redis is preferred when given).

None of these keep a local copy: the shared server is the one truth, so a claim fails
closed (raises) when it cannot be reached rather than silently admitting a replay.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from security.nonces import NonceStore, _nonce_key
from security.ratelimit import _EPS, RateDecision, RateLimiter

__all__ = ["PostgresNonceStore", "RedisNonceStore", "RedisRateLimiter"]

# KEYS[1] bucket; ARGV: period T (µs), tau = burst*T (µs), cost. Times in integer µs
# from Redis TIME; returns {allowed, tat_after - now, allow_at - now} in µs.
_GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local period = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + cost * period
local allow_at = new_tat - tau
if allow_at > now then
  return {0, tat - now, allow_at - now}
end
-- %.0f: an exact integer (tostring would print 16-digit µs in exponent form)
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX',
  string.format('%.0f', math.ceil((new_tat - now) / 1000) + 1))
return {1, new_tat - now, 0}
"""


class RedisNonceStore(NonceStore):
    """Claims in Redis under `prefix`; one `SET NX PXAT` per claim."""

    def __init__(self, client: Any, window: float = 300.0, *, prefix: str = "lh:nonce:") -> None:
        self.window = window
        self._redis = client
        self._prefix = prefix.encode()

    @classmethod
    def from_url(cls, url: str, window: float = 300.0, *, prefix: str = "lh:nonce:") -> Any:
        import redis.asyncio as aioredis

        return cls(aioredis.Redis.from_url(url), window, prefix=prefix)

    async def claim(self, key_id: str, nonce: str, created: int, now: float) -> bool:
        expires_ms = math.ceil((created + self.window) * 1000)
        if expires_ms <= now * 1000:
            return False  # already outside the window: the skew check refuses it anyway
        key = self._prefix + _nonce_key(key_id, nonce).hex().encode()
        return bool(await self._redis.set(key, b"1", nx=True, pxat=expires_ms))

    async def close(self) -> None:
        await self._redis.aclose()


class RedisRateLimiter(RateLimiter):
    """GCRA buckets in Redis: one limit per key across every bridge."""

    def __init__(
        self, client: Any, rate: float = 50.0, burst: int = 100, *, prefix: str = "lh:rate:"
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._period_us = max(1, round(1_000_000 / rate))
        self._tau_us = burst * self._period_us
        self._redis = client
        self._prefix = prefix
        self._script = client.register_script(_GCRA_LUA)

    @classmethod
    def from_url(
        cls, url: str, rate: float = 50.0, burst: int = 100, *, prefix: str = "lh:rate:"
    ) -> RedisRateLimiter:
        import redis.asyncio as aioredis

        return cls(aioredis.Redis.from_url(url), rate, burst, prefix=prefix)

    async def hit(self, key: str, cost: int = 1) -> RateDecision:
        allowed, ahead_us, wait_us = await self._script(
            keys=[self._prefix + key], args=[self._period_us, self._tau_us, cost]
        )
        period = self._period_us
        if not allowed:
            remaining = math.floor((self._tau_us - ahead_us) / period + _EPS)
            return RateDecision(False, self.burst, max(0, remaining), ahead_us / 1e6, wait_us / 1e6)
        remaining = math.floor((self._tau_us - ahead_us) / period + _EPS)
        return RateDecision(True, self.burst, max(0, remaining), ahead_us / 1e6)

    async def close(self) -> None:
        await self._redis.aclose()


class PostgresNonceStore(NonceStore):
    """Claims in table `lh_nonces` of the bridges' PostgreSQL database.

    Claims made in one event-loop turn go to the server as one statement (`unnest`), each
    answered by whether its own row was inserted (or revived after expiry); expired rows
    are deleted every `purge_every` seconds.
    """

    def __init__(self, pool: Any, window: float = 300.0, *, purge_every: float = 30.0) -> None:
        self.window = window
        self._pool = pool
        self._purge_every = purge_every
        self._next_purge = 0.0
        self._batch: dict[bytes, tuple[float, float, asyncio.Future[bool]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, url: str, window: float = 300.0) -> PostgresNonceStore:
        import asyncpg

        pool = await asyncpg.create_pool(url, min_size=1, max_size=4, timeout=5, command_timeout=15)
        async with pool.acquire() as conn:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS lh_nonces ("
                " key bytea PRIMARY KEY, expires double precision NOT NULL)"
            )
        return cls(pool, window)

    async def claim(self, key_id: str, nonce: str, created: int, now: float) -> bool:
        key = _nonce_key(key_id, nonce)
        if key in self._batch:  # the same nonce twice in one turn: only one can win
            return False
        loop = asyncio.get_running_loop()
        if not self._batch:
            loop.call_soon(self._flush)
        answer: asyncio.Future[bool] = loop.create_future()
        self._batch[key] = (created + self.window, now, answer)
        return await answer

    def _flush(self) -> None:
        batch, self._batch = self._batch, {}
        task = asyncio.get_running_loop().create_task(self._commit(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _commit(self, batch: dict[bytes, tuple[float, float, asyncio.Future[bool]]]) -> None:
        now = max(claimed_at for _, claimed_at, _ in batch.values())
        keys = list(batch)
        try:
            async with self._pool.acquire() as conn:
                if now >= self._next_purge:
                    self._next_purge = now + self._purge_every
                    await conn.execute("DELETE FROM lh_nonces WHERE expires < $1", now)
                won = {
                    bytes(r[0])
                    for r in await conn.fetch(
                        "INSERT INTO lh_nonces (key, expires) "
                        "SELECT * FROM unnest($1::bytea[], $2::float8[]) "
                        "ON CONFLICT (key) DO UPDATE SET expires = excluded.expires "
                        "WHERE lh_nonces.expires < $3 RETURNING key",
                        keys,
                        [batch[k][0] for k in keys],
                        now,
                    )
                }
        except Exception as exc:  # fail closed: the verifier answers 503, never admits
            for _, _, answer in batch.values():
                if not answer.done():
                    answer.set_exception(exc)
            return
        for key, (_, _, answer) in batch.items():
            if not answer.done():
                answer.set_result(key in won)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._pool.close()
