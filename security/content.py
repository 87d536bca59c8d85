"""Event contents encrypted at rest: per-agent data keys and the AEAD that seals contents.

Two small pieces, kept apart from routing on purpose (``security/`` knows no event types):

* :class:`DataKeys` holds one 256-bit data key per agent, wrapped by the master key in the
  secret vault (the same table, under ``dk:<agent>:<id>`` key ids). Destroying an agent's
  key is how its contents are erased from an append-only log (crypto-shredding): the
  ciphertext stays where it is, in the hash chain, and can never be read again.
* :class:`ContentCipher` seals bytes with AES-256-GCM under such a key. The caller binds the
  ciphertext to its place (store id, stream, version, event id) through the associated
  data, so a ciphertext copied onto another record fails to open.

The nonce is synthetic — HMAC-SHA256 of the associated data and the plaintext under a key
derived from the data key, cut to 96 bits. The same event sealed twice gives the same
bytes (an idempotent retry of an append stays a retry), and two different plaintexts never
share a nonce under one key, which plain GCM could not survive.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .keys import SecretVault

__all__ = ["ContentCipher", "DataKeys", "OpenError"]

_KEY_PREFIX = "dk:"
_NONCE_LABEL = b"lighthouse content nonce v1"


class OpenError(Exception):
    """A sealed content could not be opened: wrong place, tampered bytes or no key."""


class ContentCipher:
    """AES-256-GCM with a synthetic nonce, under one data key."""

    __slots__ = ("_aead", "_nonce_key")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a data key is 32 bytes")
        self._aead = AESGCM(key)
        self._nonce_key = hmac.new(key, _NONCE_LABEL, hashlib.sha256).digest()

    def seal(self, plaintext: bytes, associated: bytes) -> tuple[bytes, bytes]:
        """(nonce, ciphertext with tag)."""
        mac = hmac.new(self._nonce_key, len(associated).to_bytes(4, "big"), hashlib.sha256)
        mac.update(associated)
        mac.update(plaintext)
        nonce = mac.digest()[:12]
        return nonce, self._aead.encrypt(nonce, plaintext, associated)

    def open(self, nonce: bytes, ciphertext: bytes, associated: bytes) -> bytes:
        try:
            return self._aead.decrypt(nonce, ciphertext, associated)
        except InvalidTag:
            raise OpenError("does not decrypt here (moved, tampered or wrong key)") from None


class DataKeys:
    """One data key per agent, wrapped in the vault; ciphers cached in memory.

    Key ids carry a random part, so an agent registered again after being forgotten gets a
    new key and its old contents stay erased. Keys are never logged or put in events; only
    their ids are.

    The vault may be shared by several bridges: a key another bridge made is found on the
    first miss (the vault is asked), and a key another bridge destroyed is dropped here when
    its `AgentForgotten` fact is followed (:meth:`forget_cached`) and never used again, even
    while that bridge has not deleted the row yet.
    """

    def __init__(self, vault: SecretVault) -> None:
        self._vault = vault
        self._current: dict[str, str] = {}  # agent -> key id
        self._ciphers: dict[str, ContentCipher] = {}
        self._destroyed: set[str] = set()  # key ids recorded as forgotten
        self._lock = threading.Lock()
        for key_id in vault.key_ids(_KEY_PREFIX):
            self._current.setdefault(_agent_of(key_id), key_id)

    @staticmethod
    def is_data_key(key_id: str) -> bool:
        return key_id.startswith(_KEY_PREFIX)

    def for_agent(self, agent: str) -> tuple[str, ContentCipher]:
        """The agent's key id and cipher, making the key on the agent's first content."""
        key_id = self._current.get(agent)
        if key_id is None:
            with self._lock:
                key_id = self._current.get(agent)
                if key_id is None:
                    key_id = self._current[agent] = self._find_or_make(agent)
        cipher = self.cipher(key_id)
        if cipher is None:
            raise OpenError(f"data key {key_id} is gone from the vault")
        return key_id, cipher

    def _find_or_make(self, agent: str) -> str:
        """A live key another process made for *agent* (shared vault), else a new one."""
        for key_id in self.key_ids(agent):
            if key_id not in self._destroyed:
                return key_id
        key_id = f"{_KEY_PREFIX}{agent}:{secrets.token_hex(8)}"
        self._vault.put(key_id, AESGCM.generate_key(bit_length=256))
        return key_id

    def ready(self, key_id: str) -> bool:
        """Whether `cipher(key_id)` answers without a round trip to a remote vault (a
        cipher made, a key known destroyed, or a local vault)."""
        return key_id in self._ciphers or key_id in self._destroyed or not self._vault.remote

    def ready_for(self, agent: str) -> bool:
        """Whether `for_agent(agent)` answers without a round trip to a remote vault."""
        if not self._vault.remote:
            return True
        key_id = self._current.get(agent)
        return key_id is not None and key_id in self._ciphers

    def cipher(self, key_id: str) -> ContentCipher | None:
        """The cipher of a key id, or None when the key was destroyed (or never existed)."""
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            if key_id in self._destroyed:
                return None
            key = self._vault.get(key_id)
            if key is None:
                return None
            cipher = self._ciphers[key_id] = ContentCipher(key)
        return cipher

    def key_ids(self, agent: str) -> list[str]:
        return self._vault.key_ids(f"{_KEY_PREFIX}{agent}:")

    def destroy(self, key_ids: list[str]) -> list[str]:
        """Delete these data keys from the vault and the cache; returns their ids.

        Exactly the ids the forget fact names: a key made meanwhile (by another bridge, for
        content written after the forget was decided) is not erased by a fact that does
        not name it."""
        with self._lock:
            self.forget_cached(key_ids)
            for key_id in key_ids:
                self._vault.delete(key_id)
        return list(key_ids)

    def forget_cached(self, key_ids: list[str]) -> None:
        """Never use these keys again (seen through a recorded forget, this process's or
        another's): ciphers and cached secrets dropped, the agent's next content gets a
        new key."""
        self._destroyed.update(key_ids)
        self._vault.forget_cached(key_ids)
        for key_id in key_ids:
            self._ciphers.pop(key_id, None)
        for agent, key_id in list(self._current.items()):
            if key_id in key_ids:
                del self._current[agent]


def _agent_of(key_id: str) -> str:
    return key_id[len(_KEY_PREFIX) :].rpartition(":")[0]
