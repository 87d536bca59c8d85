"""Which store, nonce store and per-agent rate limiter a bridge runs on, from its settings.

Kept out of `app.py` so composition stays one line per choice:

| settings                         | store      | nonces                | agent rate limit |
|----------------------------------|------------|-----------------------|------------------|
| (default)                        | SQLite     | SQLite file (`.nonces`) | in memory      |
| `database_url`                   | PostgreSQL | PostgreSQL `lh_nonces`  | in memory (per bridge) |
| `database_url` + `redis_url`     | PostgreSQL | Redis `SET NX PXAT`     | Redis GCRA (shared) |

A `redis_url` without a `database_url` shares nonces and limits between bridges that each
keep their own SQLite store (useful only for tests and odd set-ups, but consistent).
"""

from __future__ import annotations

from events import GroupCommitStore, SqliteEventStore
from security import GCRARateLimiter, NonceStore, RateLimiter, SQLiteNonceStore

from .config import Settings


def store_label(settings: Settings) -> str:
    """Where the log lives, for start-up lines: the URL without its password."""
    if settings.database_url:
        from events.postgres import redact

        return redact(settings.database_url)
    return str(settings.db)


async def open_store(settings: Settings) -> GroupCommitStore:
    config = settings.store_config()
    if config.url:
        from events.postgres import PostgresEventStore

        return await PostgresEventStore.open(config)
    return await SqliteEventStore.open(config)


async def open_nonces(settings: Settings, *, fresh_install: bool = False) -> NonceStore:
    """The nonce store; *fresh_install* (no agents yet) means no signed request can predate
    it, so a SQLite store born now refuses nothing (see `NonceStore.born_at`). The shared
    backends do not record a birth yet: losing Redis's keys is not detected."""
    window = settings.skew_s + 60
    if settings.redis_url:
        from security.shared import RedisNonceStore

        return RedisNonceStore.from_url(
            settings.redis_url, window, prefix=settings.redis_prefix + "nonce:"
        )
    if settings.database_url:
        from security.shared import PostgresNonceStore

        return await PostgresNonceStore.open(settings.database_url, window)
    from events.sqlite import create_private

    create_private(settings.nonce_db)  # 0600 whatever the umask, like the store itself
    return SQLiteNonceStore(settings.nonce_db, window=window, fresh_install=fresh_install)


def agent_rate_limiter(settings: Settings) -> RateLimiter:
    if settings.redis_url:
        from security.shared import RedisRateLimiter

        return RedisRateLimiter.from_url(
            settings.redis_url,
            settings.rate_per_s,
            settings.burst,
            prefix=settings.redis_prefix + "rate:",
        )
    return GCRARateLimiter(settings.rate_per_s, settings.burst)
