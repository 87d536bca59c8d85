"""HTTP answers for a store that cannot serve now: JSON 503 with a reason and Retry-After.

A full disk or a read-only mount is the service's fault, not the client's, and it passes:
clients get a stable `reason` (`store_full`, `store_read_only`, …) to act on and a hint
when to retry, instead of a plain-text 500; `/health` shows the same cause.
"""

from __future__ import annotations

import math
import sqlite3

from aiohttp import web

from events import StoreError, StoreUnavailable, unavailable
from events.sqlite import store_error


def as_store_error(exc: BaseException, doing: str) -> StoreError | None:
    """The classified store error behind `exc`, or None when it is not a store failure:
    SQLite's errors by their cause; a shared store (PostgreSQL, Redis) that cannot be
    reached, or answers with a server error, as `store_unavailable` or its SQLSTATE cause."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, sqlite3.Error):
        return store_error(exc, doing)
    if isinstance(exc, OSError | TimeoutError):  # refused, reset, timed out
        return StoreUnavailable(f"{doing}: {exc or type(exc).__name__}")
    module = type(exc).__module__.split(".")[0]
    if module == "asyncpg":  # optional backends: imported only when one raised
        import asyncpg

        from events.postgres import pg_store_error

        if isinstance(exc, asyncpg.PostgresError):
            return pg_store_error(exc, doing)
        return StoreUnavailable(f"{doing}: {exc or type(exc).__name__}")
    if module == "redis":
        return StoreUnavailable(f"{doing}: {exc or type(exc).__name__}")
    return None


def unavailable_response(error: StoreError, *, detail: bool = False) -> web.Response:
    """503 naming the reason; the message (file paths) only for authenticated callers."""
    retry = max(1, math.ceil(error.retry_after or 5))
    body: dict[str, object] = {"error": "unavailable", "reason": error.reason, "retry_after": retry}
    if detail:
        body["message"] = str(error)
    return web.json_response(body, status=503, headers={"Retry-After": str(retry)})


__all__ = ["as_store_error", "unavailable", "unavailable_response"]
