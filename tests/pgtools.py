"""Fresh PostgreSQL databases for tests: one per test, so parallel runs never collide.

The server is the machine's (CI's) PostgreSQL at LIGHTHOUSE_TEST_PG_URL (default
postgresql://postgres@127.0.0.1:5432/test, trust auth). Databases are created from
template0 and dropped when the test session ends.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ADMIN_URL = os.environ.get("LIGHTHOUSE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
_created: list[str] = []


def url_for(database: str, base: str = ADMIN_URL) -> str:
    return urlunsplit(urlsplit(base)._replace(path="/" + database))


def _in_thread(coro_factory: object) -> None:
    """Run a coroutine to completion on a private loop (callers may be inside one)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(coro_factory())  # type: ignore[operator]
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def fresh_database(label: str = "t") -> str:
    """Create an empty database and return its URL."""
    name = f"lh_pg_{label}_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        conn = await asyncpg.connect(ADMIN_URL)
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        finally:
            await conn.close()

    _in_thread(create)
    _created.append(name)
    return url_for(name)


def drop_created() -> None:
    async def drop() -> None:
        conn = await asyncpg.connect(ADMIN_URL)
        try:
            while _created:
                name = _created.pop()
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    if _created:
        _in_thread(drop)
