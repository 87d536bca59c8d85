"""Which store, nonce store, per-agent rate limiter and secret vault a bridge runs on.

Kept out of `app.py` so composition stays one line per choice:

| settings                 | store      | nonces                  | agent limit | secret vault |
|--------------------------|------------|-------------------------|-------------|--------------|
| (default)                | SQLite     | SQLite file (`.nonces`) | in memory   | the store file |
| `database_url`           | PostgreSQL | PostgreSQL `lh_nonces`  | per bridge  | PG `key_vault` |
| `database_url`+`redis_url` | PostgreSQL | Redis `SET NX PXAT`   | Redis GCRA  | PG `key_vault` |

The master key that wraps the vault's rows is always a file in the key dir, never in a
database.

A `redis_url` without a `database_url` shares nonces and limits between bridges that each
keep their own SQLite store (useful only for tests and odd set-ups, but consistent).
"""

from __future__ import annotations

from collections.abc import Collection

from events import GroupCommitStore, SqliteEventStore
from security import (
    GCRARateLimiter,
    NonceStore,
    RateLimiter,
    SecretVault,
    SQLiteNonceStore,
    SQLiteSecretVault,
    vault_row_count,
)

from .config import Settings


def store_label(settings: Settings) -> str:
    """Where the log lives, for start-up lines: the URL without its password."""
    if settings.database_url:
        from events.postgres import redact

        return redact(settings.database_url)
    return str(settings.db)


async def open_store(settings: Settings, *, readonly: bool = False) -> GroupCommitStore:
    config = settings.store_config(readonly=readonly)
    if config.url:
        from events.postgres import PostgresEventStore

        return await PostgresEventStore.open(config)
    return await SqliteEventStore.open(config)


def open_vault(
    settings: Settings,
    *,
    fresh_install: bool = False,
    initialize: bool = True,
    never_import: Collection[str] = (),
) -> SecretVault:
    """The secret vault, its master key checked against it (a wrong key raises
    `MasterKeyError` here, before anything is served or written).

    SQLite: a new master key only on *fresh_install* or while the vault holds no row.
    PostgreSQL: see `security.pgvault` — `initialize` lets this process initialize an
    empty shared vault and import the local SQLite vault of an earlier release (`db`),
    except *never_import* (keys a recorded forget destroyed); read-only commands pass
    False and are refused by an uninitialized vault."""
    vault: SecretVault
    if settings.database_url:
        from security.pgvault import PostgresSecretVault

        vault = PostgresSecretVault.open(
            settings.database_url,
            settings.master_key_file,
            fresh_install=initialize,
            initialize=initialize,
            legacy_db=settings.db,
            never_import=never_import,
        )
    else:
        first = fresh_install or not vault_row_count(settings.db)
        vault = SQLiteSecretVault.open(
            settings.db, settings.master_key_file, fresh_install=first and initialize
        )
    try:
        vault.check()
    except BaseException:
        vault.close()
        raise
    return vault


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
