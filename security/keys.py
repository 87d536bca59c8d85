"""Agent keys: secret generation, secrets encrypted at rest, and the key-state projection.

Three separate concerns, on purpose:

* **Secrets** are made here (:func:`generate_secret`) and handed to the operator once.
  The HMAC key is the 32 decoded bytes.
* **Storage**: the server must keep the secret (HMAC is symmetric), so it is kept
  encrypted under a master key that lives in a file *outside* the database
  (:class:`SecretVault`: :class:`SQLiteSecretVault` for one bridge, ``security.pgvault``
  for bridges sharing PostgreSQL). AES-GCM with the key id as associated data means a row
  copied onto another key id fails to decrypt instead of handing out the wrong secret.
* **Lifecycle** (issued, rotated with a grace period, revoked) is event-sourced by the
  bridge; :class:`KeyRegistry` is the pure projection of those events. Events never carry
  secret material, so the log can be exported to auditors.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import sqlite3
import stat
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from enum import StrEnum
from pathlib import Path
from typing import Any

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from security.signatures import KeyLookup, ResolvedKey

__all__ = [
    "AgentInfo",
    "KeyRegistry",
    "KeyState",
    "KeyStatus",
    "MasterKeyError",
    "SQLiteSecretVault",
    "SecretNotLoaded",
    "SecretVault",
    "VaultError",
    "decode_secret",
    "generate_secret",
    "key_lookup",
    "load_master_key",
    "new_key_id",
    "vault_row_count",
]

SECRET_BYTES = 32


def generate_secret() -> str:
    """32 random bytes as base64url without padding: what ``agents add`` prints."""
    return base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).rstrip(b"=").decode()


def decode_secret(secret: str) -> bytes:
    """The HMAC key (raw bytes) from a printed secret. Raises ``ValueError`` if malformed."""
    try:
        raw = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("secret is not base64url") from exc
    if len(raw) != SECRET_BYTES:
        raise ValueError("secret must decode to 32 bytes")
    return raw


def new_key_id() -> str:
    """A random key id (``k_`` + 16 hex). Not derived from the secret, so publishing key
    ids in events and logs reveals nothing about it."""
    return "k_" + secrets.token_hex(8)


# --------------------------------------------------------------------------------------
# Master key and vault
# --------------------------------------------------------------------------------------


class VaultError(Exception):
    """A secret could not be stored or recovered."""


class MasterKeyError(VaultError):
    """The master key file is missing, malformed or readable by others."""


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_private(path: Path) -> bytes:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise MasterKeyError(f"{path} must be readable by its owner only (chmod 600)")
    return path.read_bytes()


def load_master_key(path: str | Path, *, create: bool = False) -> bytes:
    """Read the 256-bit master key from *path* (base64 text, mode 0600).

    With ``create=True`` and no file, a new key is generated and written (O_EXCL, 0600).
    Without it a missing file is an error: silently generating a new key would make every
    stored secret unreadable.
    """
    path = Path(path)
    if not path.exists():
        if not create:
            raise MasterKeyError(f"master key file {path} not found")
        key = AESGCM.generate_key(bit_length=256)
        _write_private(path, base64.b64encode(key) + b"\n")
        return key
    try:
        key = base64.b64decode(_read_private(path).strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MasterKeyError(f"{path} is not a base64 master key") from exc
    if len(key) != 32:
        raise MasterKeyError(f"{path} must hold a 256-bit key")
    return key


Rewrap = Callable[[str, bytes, bytes], tuple[bytes, bytes]]
"""(key id, nonce, ciphertext) under the old master key -> (nonce, ciphertext) under the new."""


def _wrap(aead: AESGCM, key_id: str, secret: bytes) -> tuple[bytes, bytes]:
    nonce = secrets.token_bytes(12)
    return nonce, aead.encrypt(nonce, secret, key_id.encode())


class SecretVault(ABC):
    """Where agent secrets and content data keys live, each wrapped by the master key.

    One interface whatever the backend. A row is AES-256-GCM under the master key with the
    key id as associated data, so a row copied onto another key id fails to decrypt instead
    of handing out the wrong secret. A secret is cached in memory after its first use (the
    verifier looks one up on every request); writes are rare (an agent added or rotated, an
    agent's first content, forget). A backend supplies only the row storage below.
    """

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise MasterKeyError("master key must be 32 bytes")
        self._aead = AESGCM(master_key)
        self._cache: dict[str, bytes] = {}

    # -- row storage, one implementation per backend ---------------------------------------

    @abstractmethod
    def _insert(self, key_id: str, nonce: bytes, ciphertext: bytes) -> bool:
        """Add one wrapped row; False (nothing written) when the key id has one already."""

    @abstractmethod
    def _fetch(self, key_id: str) -> tuple[bytes, bytes] | None:
        """(nonce, ciphertext) of one key id, or None."""

    @abstractmethod
    def _remove(self, key_id: str) -> None: ...

    @abstractmethod
    def _ids(self, prefix: str) -> list[str]:
        """Key ids starting with *prefix*, oldest first."""

    @abstractmethod
    def wrapped_rows(self) -> list[tuple[str, bytes, bytes]]:
        """(key id, nonce, ciphertext) of every row, still wrapped (for checks and moves)."""

    @abstractmethod
    def _rewrap_rows(self, rewrap: Rewrap, new: AESGCM) -> int:
        """Replace every row by ``rewrap(key_id, nonce, ciphertext)`` in one transaction
        (nothing changes if it raises); *new* wraps whatever else the backend keeps."""

    @abstractmethod
    def close(self) -> None: ...

    # -- the interface ---------------------------------------------------------------------

    def put(self, key_id: str, secret: bytes) -> None:
        """Store *secret* for *key_id*; refuses to overwrite an existing key id."""
        if not self._insert(key_id, *_wrap(self._aead, key_id, secret)):
            raise VaultError(f"key id {key_id} already has a secret")
        self._cache[key_id] = secret

    def put_if_absent(self, key_id: str, secret: bytes) -> bytes:
        """Store *secret* unless *key_id* has one; the stored secret either way. For a key
        several processes may make at once: the first insert wins, the others read it."""
        if self._insert(key_id, *_wrap(self._aead, key_id, secret)):
            self._cache[key_id] = secret
            return secret
        stored = self.get(key_id)
        if stored is None:  # inserted and deleted between our two statements
            raise VaultError(f"key id {key_id} vanished while it was being created")
        return stored

    remote = False
    """A backend across the network (PostgreSQL), not a local file: see `needs_io`."""

    def needs_io(self, key_id: str) -> bool:
        """Whether `get` would make a round trip to a remote backend (not cached there): an
        async caller reads such a secret in a worker thread first, so no round trip runs on
        its event loop. A local file answers in microseconds and stays on the caller's
        thread (SQLite's connection belongs to the thread that opened it)."""
        return self.remote and key_id not in self._cache

    def get(self, key_id: str) -> bytes | None:
        """The secret, or None when the key id has none."""
        cached = self._cache.get(key_id)
        if cached is not None:
            return cached
        row = self._fetch(key_id)
        if row is None:
            return None
        try:
            secret = self._aead.decrypt(row[0], row[1], key_id.encode())
        except InvalidTag as exc:
            raise VaultError(
                f"secret of {key_id} does not decrypt: wrong master key or tampered row"
            ) from exc
        self._cache[key_id] = secret
        return secret

    def delete(self, key_id: str) -> None:
        """Destroy a secret (a forgotten agent's data key)."""
        self._remove(key_id)
        self._cache.pop(key_id, None)

    def key_ids(self, prefix: str = "") -> list[str]:
        """Stored key ids starting with *prefix*, oldest first (ids only, never secrets)."""
        return self._ids(prefix)

    def forget_cached(self, key_ids: Iterable[str]) -> None:
        """Drop cached secrets another process destroyed: the next `get` asks the backend."""
        for key_id in key_ids:
            self._cache.pop(key_id, None)

    def check(self) -> int:
        """Open every stored row once; raises MasterKeyError if the master key is not the
        one they were wrapped with. Run at start-up so a wrong key file stops the bridge
        with a clear message instead of failing on the first signed request."""
        rows = self.wrapped_rows()
        for key_id, nonce, ciphertext in rows:
            try:
                self._aead.decrypt(nonce, ciphertext, key_id.encode())
            except InvalidTag:
                raise MasterKeyError(
                    f"the master key does not open the vault ({len(rows)} wrapped key(s), "
                    f"first failure {key_id}): wrong key file or tampered vault; restore "
                    "the key file the store was created with"
                ) from None
        return len(rows)

    def rewrap(self, new_master_key: bytes) -> int:
        """Re-encrypt every stored secret under *new_master_key* in one transaction.

        Events are untouched: they hold ciphertext under data keys, and only the wrapping
        of those keys changes. Returns how many rows were re-wrapped."""
        if len(new_master_key) != 32:
            raise MasterKeyError("master key must be 32 bytes")
        new = AESGCM(new_master_key)

        def rewrap(key_id: str, nonce: bytes, ciphertext: bytes) -> tuple[bytes, bytes]:
            try:
                secret = self._aead.decrypt(nonce, ciphertext, key_id.encode())
            except InvalidTag:
                raise VaultError(f"{key_id} does not decrypt; nothing re-wrapped") from None
            return _wrap(new, key_id, secret)

        count = self._rewrap_rows(rewrap, new)
        self._aead = new
        return count


class SQLiteSecretVault(SecretVault):
    """Secrets in table ``key_vault`` of the given SQLite file (normally the main store),
    over a connection of its own: the vault of a single bridge."""

    def __init__(self, db_path: str | Path, master_key: bytes) -> None:
        super().__init__(master_key)
        self._db = sqlite3.connect(str(db_path), isolation_level=None, timeout=5.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS key_vault ("
            " key_id TEXT PRIMARY KEY, nonce BLOB NOT NULL, ciphertext BLOB NOT NULL,"
            " created REAL NOT NULL)"
        )

    @classmethod
    def open(
        cls, db_path: str | Path, key_file: str | Path, *, fresh_install: bool = False
    ) -> SQLiteSecretVault:
        """Open the vault, creating the master key file only on a fresh install.

        A missing key file while the vault already holds rows is refused with a clear
        error: those secrets were encrypted under the lost key.
        """
        key_file = Path(key_file)
        if not key_file.exists():
            rows = vault_row_count(db_path)
            if rows:
                raise MasterKeyError(
                    f"master key file {key_file} is missing but the vault holds {rows} "
                    "encrypted secret(s); restore the key file (it is never regenerated)"
                )
            if not fresh_install:
                raise MasterKeyError(f"master key file {key_file} not found")
        return cls(db_path, load_master_key(key_file, create=fresh_install))

    def _insert(self, key_id: str, nonce: bytes, ciphertext: bytes) -> bool:
        try:
            self._db.execute(
                "INSERT INTO key_vault(key_id, nonce, ciphertext, created) VALUES (?,?,?,?)",
                (key_id, nonce, ciphertext, time.time()),
            )
        except sqlite3.IntegrityError:
            return False
        return True

    def _fetch(self, key_id: str) -> tuple[bytes, bytes] | None:
        return self._db.execute(
            "SELECT nonce, ciphertext FROM key_vault WHERE key_id = ?", (key_id,)
        ).fetchone()

    def _remove(self, key_id: str) -> None:
        self._db.execute("DELETE FROM key_vault WHERE key_id = ?", (key_id,))

    def _ids(self, prefix: str) -> list[str]:
        rows = self._db.execute(
            "SELECT key_id FROM key_vault WHERE substr(key_id, 1, ?) = ? ORDER BY created",
            (len(prefix), prefix),
        ).fetchall()
        return [r[0] for r in rows]

    def wrapped_rows(self) -> list[tuple[str, bytes, bytes]]:
        return self._db.execute("SELECT key_id, nonce, ciphertext FROM key_vault").fetchall()

    def _rewrap_rows(self, rewrap: Rewrap, new: AESGCM) -> int:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            updates = [(*rewrap(*row), row[0]) for row in self.wrapped_rows()]
            self._db.executemany(
                "UPDATE key_vault SET nonce = ?, ciphertext = ? WHERE key_id = ?", updates
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return len(updates)

    def close(self) -> None:
        self._db.close()


def vault_row_count(db_path: str | Path) -> int:
    """Rows in the vault of *db_path* without a master key (0 when there is none yet)."""
    if not Path(db_path).exists():
        return 0
    db = sqlite3.connect(str(db_path))
    try:
        exists = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='key_vault'"
        ).fetchone()
        return db.execute("SELECT count(*) FROM key_vault").fetchone()[0] if exists else 0
    finally:
        db.close()


# --------------------------------------------------------------------------------------
# Key lifecycle projection
# --------------------------------------------------------------------------------------


class KeyState(StrEnum):
    ACTIVE = "active"
    GRACE = "grace"  # rotated out, still accepted until grace_until
    EXPIRED = "expired"  # rotated out, grace period over
    REVOKED = "revoked"
    UNKNOWN = "unknown"


class KeyStatus(msgspec.Struct, frozen=True):
    agent: str | None
    state: KeyState


class AgentInfo(msgspec.Struct):
    agent: str
    roles: list[str] = msgspec.field(default_factory=list)
    capabilities: list[str] = msgspec.field(default_factory=list)
    revoked: bool = False
    key_ids: list[str] = msgspec.field(default_factory=list)


class _Key(msgspec.Struct):
    agent: str
    issued_at: float | None
    grace_until: float | None = None
    revoked: bool = False


class _AgentRegistered(msgspec.Struct):
    agent: str
    roles: list[str] = []
    capabilities: list[str] = []


class _AgentKeyIssued(msgspec.Struct):
    agent: str
    key_id: str
    issued_at: float


class _AgentKeyRotated(msgspec.Struct):
    agent: str
    old_key_id: str
    new_key_id: str
    grace_until: float


class _AgentRevoked(msgspec.Struct):
    agent: str
    at: float


class KeyRegistry:
    """Pure projection of agent/key events: which key ids are usable, for whom.

    Feed it every event in log order with :meth:`apply`; unrelated event types are
    ignored, malformed data of known types raises ``msgspec.ValidationError``.
    """

    EVENT_TYPES = frozenset(
        {"AgentRegistered", "AgentKeyIssued", "AgentKeyRotated", "AgentRevoked"}
    )

    def __init__(self) -> None:
        self.agents: dict[str, AgentInfo] = {}
        self._keys: dict[str, _Key] = {}

    def apply(self, event_type: str, data: dict[str, Any]) -> None:
        if event_type == "AgentRegistered":
            e = msgspec.convert(data, _AgentRegistered)
            info = self.agents.get(e.agent)
            if info is None:
                self.agents[e.agent] = AgentInfo(e.agent, list(e.roles), list(e.capabilities))
            else:  # re-registration updates roles and lifts a revocation (old keys stay dead)
                info.roles, info.capabilities = list(e.roles), list(e.capabilities)
                info.revoked = False
        elif event_type == "AgentKeyIssued":
            e2 = msgspec.convert(data, _AgentKeyIssued)
            self._issue(e2.agent, e2.key_id, e2.issued_at)
        elif event_type == "AgentKeyRotated":
            e3 = msgspec.convert(data, _AgentKeyRotated)
            old = self._keys.get(e3.old_key_id)
            if old is not None and old.agent == e3.agent:
                old.grace_until = e3.grace_until
            if e3.new_key_id not in self._keys:
                self._issue(e3.agent, e3.new_key_id, None)
        elif event_type == "AgentRevoked":
            e4 = msgspec.convert(data, _AgentRevoked)
            info = self.agents.get(e4.agent)
            if info is not None:
                info.revoked = True
                for key_id in info.key_ids:
                    self._keys[key_id].revoked = True

    def _issue(self, agent: str, key_id: str, issued_at: float | None) -> None:
        info = self.agents.setdefault(agent, AgentInfo(agent))
        self._keys[key_id] = _Key(agent, issued_at)
        info.key_ids.append(key_id)

    def lookup(self, key_id: str, now: float) -> KeyStatus:
        key = self._keys.get(key_id)
        if key is None:
            return KeyStatus(None, KeyState.UNKNOWN)
        if key.revoked:
            return KeyStatus(key.agent, KeyState.REVOKED)
        if key.grace_until is None:
            return KeyStatus(key.agent, KeyState.ACTIVE)
        if now <= key.grace_until:
            return KeyStatus(key.agent, KeyState.GRACE)
        return KeyStatus(key.agent, KeyState.EXPIRED)

    def active_key_ids(self, agent: str) -> list[str]:
        info = self.agents.get(agent)
        if info is None:
            return []
        keys = self._keys
        return [k for k in info.key_ids if not keys[k].revoked and keys[k].grace_until is None]


class SecretNotLoaded(Exception):
    """A live key's secret is not in memory yet: load it (`SecretVault.get`, off the
    event loop) and check again. Raised by a `key_lookup(..., cached_only=True)`."""

    def __init__(self, key_id: str) -> None:
        super().__init__(key_id)
        self.key_id = key_id


def key_lookup(
    registry: KeyRegistry,
    vault: SecretVault,
    clock: Callable[[], float] = time.time,
    *,
    cached_only: bool = False,
) -> KeyLookup:
    """Glue for :class:`security.signatures.SignatureVerifier`: key state from the
    projection, secret from the vault. A key with no secret counts as unknown.

    `cached_only`: never ask a remote vault's backend, raise :class:`SecretNotLoaded`
    instead. A server's verifier runs on its event loop, where a round trip to a shared vault
    (PostgreSQL) would stall every request; the header check is pure, so the server
    loads the secret in a thread and runs it again."""

    def lookup(key_id: str) -> ResolvedKey | None:
        status = registry.lookup(key_id, clock())
        if status.agent is None:
            return None
        if status.state in (KeyState.REVOKED, KeyState.EXPIRED):
            # No vault access for dead keys; the verifier refuses them by state.
            return ResolvedKey(status.agent, b"", status.state.value)
        if cached_only and vault.needs_io(key_id):
            raise SecretNotLoaded(key_id)
        secret = vault.get(key_id)
        if secret is None:
            return None
        return ResolvedKey(status.agent, secret, status.state.value)

    return lookup
