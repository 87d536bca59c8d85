"""Shared replay protection and rate limits against the real Redis and PostgreSQL.

"Another bridge" is another OS process here: it claims or spends through its own client,
and this process must see the effect.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from security.shared import PostgresNonceStore, RedisNonceStore, RedisRateLimiter
from tests.pgtools import drop_created, fresh_database

REDIS_URL = os.environ.get("LIGHTHOUSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module", autouse=True)
def _drop_databases() -> Iterator[None]:
    yield
    drop_created()


@pytest.fixture
def prefix() -> str:
    return f"lh-test-{uuid.uuid4().hex[:10]}:"


@pytest.fixture
async def redis_client(prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    keys = [k async for k in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def _in_other_process(code: str) -> str:
    """Run `code` (async body using `store`/`limiter` it builds) in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": ROOT},
        check=True,
    )
    return result.stdout.strip()


async def test_redis_nonce_claimed_in_one_process_is_refused_in_another(prefix: str) -> None:
    created = int(time.time())
    other = _in_other_process(
        "import asyncio, time\n"
        "from security.shared import RedisNonceStore\n"
        "async def main():\n"
        f"    s = RedisNonceStore.from_url({REDIS_URL!r}, 300, prefix={prefix + 'n:'!r})\n"
        f"    print(await s.claim('k1', 'nonce-1', {created}, time.time()))\n"
        "    await s.close()\n"
        "asyncio.run(main())\n"
    )
    assert other == "True"
    store = RedisNonceStore.from_url(REDIS_URL, 300, prefix=prefix + "n:")
    try:
        assert not await store.claim("k1", "nonce-1", created, time.time())
        assert await store.claim("k2", "nonce-1", created, time.time())  # other key id
        assert not await store.claim("k2", "nonce-1", created, time.time())
    finally:
        await store.close()


async def test_redis_nonce_forgotten_after_window(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    store = RedisNonceStore(redis_client, window=1.0, prefix=prefix)
    created = int(time.time())
    assert await store.claim("k", "n", created, time.time())
    ttl = await redis_client.pttl(
        next(iter([k async for k in redis_client.scan_iter(prefix + "*")]))
    )
    assert 0 < ttl <= 2000
    assert not await store.claim("k", "n", created - 10, time.time())  # stale: refused


async def test_redis_gcra_one_limit_across_processes(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    # burst 10 at one token per 20 s: another process spends 6, so only 4 are left here
    # (slow enough that the seconds a loaded machine takes between the two refill nothing).
    other = _in_other_process(
        "import asyncio\n"
        "from security.shared import RedisRateLimiter\n"
        "async def main():\n"
        f"    lim = RedisRateLimiter.from_url({REDIS_URL!r}, 0.05, 10, prefix={prefix!r})\n"
        "    print(sum([(await lim.hit('agent-a')).allowed for _ in range(6)]))\n"
        "    await lim.close()\n"
        "asyncio.run(main())\n"
    )
    assert other == "6"
    limiter = RedisRateLimiter(redis_client, 0.05, 10, prefix=prefix)
    decisions = [await limiter.hit("agent-a") for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 4 + [False] * 2
    assert decisions[0].remaining == 3 and decisions[3].remaining == 0
    denied = decisions[-1]
    assert 0 < denied.retry_after <= 20.0
    assert denied.headers()["Retry-After"] == str(math.ceil(denied.retry_after))
    assert (await limiter.hit("agent-b")).allowed  # buckets are per key


async def test_redis_gcra_refills_at_the_rate(redis_client: aioredis.Redis, prefix: str) -> None:
    limiter = RedisRateLimiter(redis_client, 20.0, 2, prefix=prefix)
    assert [(await limiter.hit("a")).allowed for _ in range(3)] == [True, True, False]
    time.sleep(0.06)  # > one period (50 ms)
    assert (await limiter.hit("a")).allowed


async def test_postgres_nonce_claimed_in_one_process_is_refused_in_another() -> None:
    url = fresh_database("nonce")
    created = int(time.time())
    other = _in_other_process(
        "import asyncio, time\n"
        "from security.shared import PostgresNonceStore\n"
        "async def main():\n"
        f"    s = await PostgresNonceStore.open({url!r}, 300)\n"
        f"    print(await s.claim('k1', 'nonce-1', {created}, time.time()))\n"
        "    await s.close()\n"
        "asyncio.run(main())\n"
    )
    assert other == "True"
    store = await PostgresNonceStore.open(url, 300)
    try:
        import asyncio

        now = time.time()
        # One turn: the replay, a fresh nonce and the fresh nonce twice.
        results = await asyncio.gather(
            store.claim("k1", "nonce-1", created, now),
            store.claim("k1", "nonce-2", created, now),
            store.claim("k1", "nonce-2", created, now),
        )
        assert results == [False, True, False]
    finally:
        await store.close()


async def test_postgres_nonce_reusable_after_expiry() -> None:
    url = fresh_database("nonce")
    store = await PostgresNonceStore.open(url, 1.0)
    try:
        assert await store.claim("k", "n", 100, 100.5)
        assert not await store.claim("k", "n", 100, 100.9)
        assert await store.claim("k", "n", 102, 102.0)  # old row expired at 101
    finally:
        await store.close()
