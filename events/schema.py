"""Versioned schema files, applied in order, each recorded with its version.

Files live in the `migrations` package as `<backend>/NNNN_name.sql`. A database stamped
with a version this release does not know was written by a newer release: refuse it
rather than run code that misreads it.
"""

from __future__ import annotations

import sqlite3
import time
from importlib import resources

from .errors import SchemaError


class Migration:
    __slots__ = ("name", "sql", "version")

    def __init__(self, version: int, name: str, sql: str) -> None:
        self.version = version
        self.name = name
        self.sql = sql


def migrations_for(backend: str) -> list[Migration]:
    folder = resources.files("migrations") / backend
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text()))
    return sorted(found, key=lambda m: m.version)


def _current_version(conn: sqlite3.Connection) -> int:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version "
        "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return row[0] or 0


def migrate_sqlite(conn: sqlite3.Connection) -> list[int]:
    """Apply pending migrations; return the versions applied (empty when up to date)."""
    known = migrations_for("sqlite")
    current = _current_version(conn)
    latest = known[-1].version if known else 0
    if current > latest:
        raise SchemaError(
            f"database schema version {current} is newer than this release supports "
            f"({latest}); upgrade lighthouse-bridge before opening it"
        )
    applied = []
    for m in known:
        if m.version <= current:
            continue
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _statements(m.sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                (m.version, m.name, time.time()),
            )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise SchemaError(f"migration {m.version} ({m.name}) failed: {exc}") from None
        applied.append(m.version)
    return applied


def schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name='schema_version'"
    ).fetchone()
    if row is None:
        return 0
    return conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0


def _statements(sql: str) -> list[str]:
    """Split a script into statements; `complete_statement` keeps trigger bodies whole."""
    out: list[str] = []
    buf = ""
    for line in sql.splitlines(keepends=True):
        if not buf and line.lstrip().startswith("--"):
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
