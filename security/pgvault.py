"""The secret vault in PostgreSQL: every bridge of a shared store reads the same keys.

Bridges on different machines share the event log, so they must share what the log's
facts refer to: an agent added or rotated on one bridge signs in on every other, and a data
key destroyed by `agents forget` is gone for all of them. Rows are wrapped exactly as in the
SQLite vault (AES-256-GCM under the master key, the key id as associated data); the master
key stays a file outside the database, and every bridge carries the same one.

Why a synchronous driver (psycopg 3) and not asyncpg like the event store: the vault's
interface is synchronous and is called from synchronous code — the signature verifier's key
lookup and the sealing stage on append. Secrets are cached in memory after their first use
and writes are rare (an agent added or rotated, an agent's first content, a forget), so the
database is asked on a cache miss only, a few times per agent over a bridge's life. Making
the interface asynchronous would thread `await` through the verifier and the sealer for
those few calls. The bridge never lets a miss run on its event loop: it asks
`SecretVault.needs_io` and reads what is not cached in a worker thread, bounded in time
(`bridge/vault_io.py`), so a database that stops answering delays the requests that need
an unread secret, not every request. Here the one connection is used by one thread at a
time (a lock, given up after `_LOCK_WAIT_S`: a call stuck on a dead link does not pile up
threads behind it); it has short connect and statement timeouts, TCP keepalives and a TCP
user timeout (a link that silently drops fails in seconds, not at the kernel's 15-minute
retransmission limit), and after a failed connection the vault answers `VaultUnavailable`
at once for `_BACKOFF_S` instead of stalling every request on a dead server.
`VaultUnavailable` is both a `VaultError` and the store's `StoreUnavailable`, so callers
answer it as they answer the store being out of reach: 503 with a reason.

Initialization, under an advisory lock so bridges starting at once take turns:

* An uninitialized vault gets a **key check** row — an AES-GCM tag over a constant under
  the master key — from the first bridge. A bridge whose master key differs is refused even
  while the vault holds no secret yet, so two bridges starting together on a fresh database
  with different new keys cannot both win; a bridge creates a master key file only when it
  is the one initializing an empty vault, never beside a vault another bridge initialized.
* Rows of the local SQLite vault (where bridges of the previous release kept secrets) are
  imported once: those the database lacks, minus keys a recorded `AgentForgotten` destroyed
  (a stale file must not bring an erased key back). They must open under the same master
  key, or nothing is imported. They are then deleted from the local file, so no copy of a
  key outlives its destruction in the shared vault.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from events.errors import StoreUnavailable

from .keys import (
    MasterKeyError,
    Rewrap,
    SecretVault,
    SQLiteSecretVault,
    VaultError,
    load_master_key,
    vault_row_count,
)

__all__ = ["ImportReport", "PostgresSecretVault", "VaultUnavailable"]

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT_S = 3  # libpq's connect_timeout: whole seconds
_STATEMENT_TIMEOUT_MS = 5000
_BACKOFF_S = 1.0
_LOCK_WAIT_S = 5.0
_TCP_USER_TIMEOUT_MS = 10_000  # unacknowledged data for this long: the link is dead
_LOCK_VAULT = 0x4C48_0004  # advisory lock key ("LH"), beside events/postgres.py's
_CHECK_AD = b"lighthouse key vault check v1"
_NOT_INITIALIZED = (
    "the PostgreSQL vault is not initialized yet: start a bridge of this release on the "
    "database once (it initializes the vault and imports local secrets)"
)
T = TypeVar("T")


class VaultUnavailable(VaultError, StoreUnavailable):
    """The vault's database cannot be reached (or failed) now; nothing changed, retry."""


@dataclass(frozen=True)
class ImportReport:
    """What initialization moved from the local SQLite vault (ids only, never secrets)."""

    source: str
    local: list[str]
    """Every key id the local file held (all removed from it afterwards)."""
    imported: list[str]
    """Those inserted; the others were in the database already or destroyed by a forget."""


def _key_check(aead: AESGCM) -> tuple[bytes, bytes]:
    nonce = secrets.token_bytes(12)
    return nonce, aead.encrypt(nonce, b"", _CHECK_AD)


class PostgresSecretVault(SecretVault):
    """Wrapped rows in table `key_vault` (migrations/postgres/0003) over one connection."""

    remote = True

    def __init__(self, url: str, conn: psycopg.Connection[Any], master_key: bytes) -> None:
        super().__init__(master_key)
        self._url = url
        self._conn: psycopg.Connection[Any] | None = conn
        self._down_until = 0.0
        self._down_reason = ""
        self._lock = threading.RLock()  # one thread at a time on the connection
        self.imported: ImportReport | None = None

    @classmethod
    def open(
        cls,
        url: str,
        key_file: str | Path,
        *,
        fresh_install: bool = False,
        initialize: bool = True,
        legacy_db: Path | None = None,
        never_import: Collection[str] = (),
    ) -> PostgresSecretVault:
        """Open the shared vault and check the master key against it.

        With `initialize`, an uninitialized vault is initialized with this bridge's master
        key (a new one only with `fresh_install`, and only while neither the vault nor
        *legacy_db* holds a secret), and *legacy_db*'s rows are imported except the key ids
        in *never_import* — all in one transaction, so a key that does not open the local
        rows initializes nothing. Without it (read-only commands) an uninitialized vault is
        refused.
        """
        key_file = Path(key_file)
        local = vault_row_count(legacy_db) if initialize and legacy_db is not None else 0
        try:
            conn = _connect(url)
        except psycopg.Error as exc:
            raise VaultUnavailable(f"PostgreSQL vault unavailable: {exc}") from None
        legacy: SQLiteSecretVault | None = None
        imported: ImportReport | None = None
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_VAULT,))
                check, rows = _vault_state(conn, initialize)
                _require_key_file(key_file, check is not None, rows, local, fresh_install)
                master = load_master_key(key_file, create=not key_file.exists())
                vault = cls(url, conn, master)
                vault._adopt(conn, check, rows)
                if local:
                    assert legacy_db is not None
                    legacy = SQLiteSecretVault(legacy_db, master)
                    imported = vault._import(conn, legacy, legacy_db, frozenset(never_import))
            if legacy is not None and imported is not None:  # committed: local copies go
                vault.imported = imported
                _empty_local(legacy, imported)
        except psycopg.Error as exc:
            conn.close()
            raise VaultUnavailable(f"PostgreSQL vault unavailable while opening: {exc}") from None
        except BaseException:
            conn.close()
            raise
        finally:
            if legacy is not None:
                legacy.close()
        return vault

    def _adopt(
        self, conn: psycopg.Connection[Any], check: tuple[bytes, bytes] | None, rows: int
    ) -> None:
        """Check this master key against the vault, or make it the vault's key."""
        if check is not None:
            self._verify_check(check[0], check[1], rows)
            return
        if rows:  # rows without a check row: adopt the key only if it opens them
            SecretVault.check(self)
        conn.execute(
            "INSERT INTO key_vault_check (id, nonce, tag, created) VALUES (1, %s, %s, %s)",
            (*_key_check(self._aead), time.time()),
        )

    def _verify_check(self, nonce: bytes, tag: bytes, rows: int) -> None:
        try:
            self._aead.decrypt(nonce, tag, _CHECK_AD)
        except InvalidTag:
            raise MasterKeyError(
                f"the master key does not open the vault (the PostgreSQL vault's key check "
                f"fails; {rows} wrapped key(s)): this is not the master key the vault was "
                "initialized with; copy master.key from a bridge of this store"
            ) from None

    def _import(
        self,
        conn: psycopg.Connection[Any],
        legacy: SQLiteSecretVault,
        legacy_db: Path,
        never_import: frozenset[str],
    ) -> ImportReport:
        """Insert the local vault's rows the database lacks (inside the caller's
        transaction); every local row must open under this master key first."""
        try:
            legacy.check()
        except MasterKeyError as exc:
            raise MasterKeyError(
                f"the local vault {legacy_db} (secrets of an earlier release) does not open "
                f"under this master key; nothing imported: {exc}"
            ) from None
        local = legacy.wrapped_rows()
        wanted = [r for r in local if r[0] not in never_import]
        inserted = (
            conn.execute(
                "INSERT INTO key_vault (key_id, nonce, ciphertext, created) "
                "SELECT k, n, c, %s FROM unnest(%s::text[], %s::bytea[], %s::bytea[]) "
                "AS r(k, n, c) ON CONFLICT (key_id) DO NOTHING RETURNING key_id",
                (time.time(), *(list(column) for column in zip(*wanted, strict=True))),
            ).fetchall()
            if wanted
            else []
        )
        return ImportReport(str(legacy_db), [r[0] for r in local], sorted(r[0] for r in inserted))

    # -- connection ------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = _connect(self._url)
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _call(
        self, doing: str, work: Callable[[psycopg.Connection[Any]], T], *, retry: bool = True
    ) -> T:
        """Run *work* on the connection. A connection that was idle may have died with a
        server restart, so with `retry` it is replaced once; failures are
        `VaultUnavailable`, and for `_BACKOFF_S` after one the vault does not even try."""
        if not self._lock.acquire(timeout=_LOCK_WAIT_S):
            raise VaultUnavailable(
                f"PostgreSQL vault unavailable while {doing}: an earlier call has not "
                f"returned in {_LOCK_WAIT_S:g} s"
            )
        try:
            return self._call_locked(doing, work, retry)
        finally:
            self._lock.release()

    def _call_locked(
        self, doing: str, work: Callable[[psycopg.Connection[Any]], T], retry: bool
    ) -> T:
        if time.monotonic() < self._down_until:
            raise VaultUnavailable(
                f"PostgreSQL vault unavailable while {doing}: {self._down_reason}"
            )
        reused = self._conn is not None and not self._conn.closed
        attempts = 2 if retry and reused else 1
        while True:
            attempts -= 1
            try:
                return work(self._connection())
            except psycopg.OperationalError as exc:
                self._drop()
                if not attempts:
                    self._down_until = time.monotonic() + _BACKOFF_S
                    self._down_reason = str(exc).strip() or type(exc).__name__
                    raise VaultUnavailable(
                        f"PostgreSQL vault unavailable while {doing}: {self._down_reason}"
                    ) from None
            except psycopg.Error as exc:
                raise VaultUnavailable(f"PostgreSQL vault failed while {doing}: {exc}") from None

    # -- row storage -----------------------------------------------------------------------

    def _insert(self, key_id: str, nonce: bytes, ciphertext: bytes) -> bool:
        # Not retried on a fresh connection: a lost reply may hide a committed insert, and
        # the retry would then be refused as a duplicate. The caller retries with a new id.
        def work(conn: psycopg.Connection[Any]) -> bool:
            cur = conn.execute(
                "INSERT INTO key_vault (key_id, nonce, ciphertext, created) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (key_id) DO NOTHING",
                (key_id, nonce, ciphertext, time.time()),
            )
            return cur.rowcount == 1

        return self._call("storing a secret", work, retry=False)

    def _fetch(self, key_id: str) -> tuple[bytes, bytes] | None:
        return self._call(
            "reading a secret",
            lambda conn: conn.execute(
                "SELECT nonce, ciphertext FROM key_vault WHERE key_id = %s", (key_id,)
            ).fetchone(),
        )

    def _remove(self, key_id: str) -> None:
        self._call(
            "destroying a secret",
            lambda conn: conn.execute("DELETE FROM key_vault WHERE key_id = %s", (key_id,)),
        )

    def _ids(self, prefix: str) -> list[str]:
        rows = self._call(
            "listing key ids",
            lambda conn: conn.execute(
                "SELECT key_id FROM key_vault WHERE starts_with(key_id, %s) "
                "ORDER BY created, key_id",
                (prefix,),
            ).fetchall(),
        )
        return [r[0] for r in rows]

    def wrapped_rows(self) -> list[tuple[str, bytes, bytes]]:
        return self._call(
            "reading the vault",
            lambda conn: conn.execute("SELECT key_id, nonce, ciphertext FROM key_vault").fetchall(),
        )

    def _rewrap_rows(self, rewrap: Rewrap, new: AESGCM) -> int:
        def work(conn: psycopg.Connection[Any]) -> int:
            with conn.transaction():
                rows = conn.execute(
                    "SELECT key_id, nonce, ciphertext FROM key_vault FOR UPDATE"
                ).fetchall()
                updates = [(*rewrap(*row), row[0]) for row in rows]
                with conn.cursor() as cur:
                    cur.executemany(
                        "UPDATE key_vault SET nonce = %s, ciphertext = %s WHERE key_id = %s",
                        updates,
                    )
                conn.execute(
                    "UPDATE key_vault_check SET nonce = %s, tag = %s WHERE id = 1",
                    _key_check(new),
                )
            return len(updates)

        # Not retried either: a lost COMMIT reply would leave rows under the new key.
        return self._call("re-wrapping the vault", work, retry=False)

    def check(self) -> int:
        """The key check row, then every wrapped row (see `SecretVault.check`)."""
        row = self._call(
            "checking the master key",
            lambda conn: conn.execute(
                "SELECT nonce, tag, (SELECT count(*) FROM key_vault) FROM key_vault_check"
            ).fetchone(),
        )
        if row is None:
            raise VaultError(_NOT_INITIALIZED)
        self._verify_check(*row)
        return super().check()

    def close(self) -> None:
        self._drop()


def _vault_state(
    conn: psycopg.Connection[Any], initialize: bool
) -> tuple[tuple[bytes, bytes] | None, int]:
    """(key check row or None, number of wrapped rows), refusing a vault that cannot be
    opened: no table (migrations not applied), or not initialized for a read-only open."""
    if conn.execute("SELECT to_regclass('key_vault_check')").fetchone()[0] is None:
        if not initialize:
            raise VaultError(_NOT_INITIALIZED)
        raise VaultError(
            "the database has no key vault table: run `lighthouse migrate --database-url …` "
            "(serve applies migrations when it opens the store)"
        )
    check = conn.execute("SELECT nonce, tag FROM key_vault_check WHERE id = 1").fetchone()
    if check is None and not initialize:
        raise VaultError(_NOT_INITIALIZED)
    return check, conn.execute("SELECT count(*) FROM key_vault").fetchone()[0]


def _require_key_file(
    key_file: Path, initialized: bool, rows: int, local: int, fresh_install: bool
) -> None:
    """A missing master key file may be created only by the bridge that initializes an
    empty vault: never beside secrets wrapped under the lost key, never beside a vault
    another bridge initialized (its key is the one)."""
    if key_file.exists():
        return
    if initialized or rows:
        raise MasterKeyError(
            f"master key file {key_file} is missing but the PostgreSQL vault is initialized "
            f"({rows} encrypted secret(s)); copy master.key from a bridge of this store "
            "(it is never regenerated)"
        )
    if local:
        raise MasterKeyError(
            f"master key file {key_file} is missing but the local vault holds {local} "
            "encrypted secret(s) to import; restore the key file (it is never regenerated)"
        )
    if not fresh_install:
        raise MasterKeyError(f"master key file {key_file} not found")


def _empty_local(legacy: SQLiteSecretVault, report: ImportReport) -> None:
    """After the import committed: delete every local row, so no copy of a key outlives
    its destruction in the shared vault, and say what moved (ids and counts only)."""
    try:
        for key_id in report.local:
            legacy.delete(key_id)
    except Exception as exc:
        log.warning(
            "secrets were imported into PostgreSQL but could not be removed from the local "
            "vault %s (%s): delete its key_vault rows by hand",
            report.source,
            exc,
        )
    log.warning(
        "moved %d wrapped secret(s) from the local vault %s into the PostgreSQL vault "
        "(%d local row(s) not imported: present already or erased); removed them locally",
        len(report.imported),
        report.source,
        len(report.local) - len(report.imported),
    )


def _connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(
        url,
        autocommit=True,
        connect_timeout=_CONNECT_TIMEOUT_S,
        options=f"-c statement_timeout={_STATEMENT_TIMEOUT_MS}",
        keepalives=1,
        keepalives_idle=5,
        keepalives_interval=2,
        keepalives_count=3,
        tcp_user_timeout=_TCP_USER_TIMEOUT_MS,
    )
