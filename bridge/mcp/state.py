"""Sealed, single-use `requestState` for 2026-07-28 input-required results.

The client echoes `requestState` back on its retried call; the spec says to treat it as
attacker-controlled. We seal it with AES-256-GCM under a key of ours, binding the verified
agent, the tool call it came from (name and arguments) and an expiry, and we remember each
state's id until it expires so a second use is refused — single use is enforced here, on
the server, not trusted to the client. Every refusal names its reason, so it can be
recorded and counted.

Where the used ids live is `UsedStates`: `LocalUsedStates` (this process's memory) for one
bridge, `SharedUsedStates` over the deployment's shared nonce store (Redis `SET NX`, or
PostgreSQL `lh_nonces`) when several bridges serve one system — a 2026-07-28 client's
retry may land on any bridge, and a state used on bridge A must be refused on bridge B.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import time
from typing import Any, Protocol

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_PREFIX = "lh1."
_AAD = b"lighthouse requestState v1"


class StateRejected(Exception):
    """`reason`: malformed, tampered, foreign, wrong_call, expired or replayed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Sealed(msgspec.Struct, array_like=True):
    jti: str
    agent: str
    call: str
    exp: float
    payload: dict[str, Any]


_encoder = msgspec.json.Encoder(order="sorted")
_decoder = msgspec.json.Decoder(_Sealed)


def call_digest(tool: str, arguments: dict[str, Any]) -> str:
    """What binds a state to the call it came from: the tool and its exact arguments."""
    return hashlib.sha256(tool.encode() + b"\0" + _encoder.encode(arguments)).hexdigest()[:32]


class UsedStates(Protocol):
    async def use(self, jti: str, expires: float) -> bool:
        """True the first time `jti` is used (remembered until `expires`), atomically."""
        ...


class LocalUsedStates:
    """One process's memory: enough for a single bridge."""

    def __init__(self) -> None:
        self._used: dict[str, float] = {}  # jti -> expiry, until it expires
        self._purge_at = 1024

    async def use(self, jti: str, expires: float) -> bool:
        if jti in self._used:
            return False
        self._forget_expired(time.time())
        self._used[jti] = expires
        return True

    def _forget_expired(self, now: float) -> None:
        if len(self._used) < self._purge_at:
            return
        for jti in [j for j, exp in self._used.items() if exp < now]:
            del self._used[jti]
        self._purge_at = max(1024, 2 * len(self._used))


class SharedUsedStates:
    """Used ids in the shared nonce store (any `security.NonceStore`: its `claim` is the
    same atomic first-use test). Keyed apart from agents' nonces by a key id no agent can
    have; `created` is chosen so the store keeps the id until the state's own expiry."""

    _KEY_ID = "lighthouse:requestState"

    def __init__(self, nonces: Any) -> None:
        self._nonces = nonces

    async def use(self, jti: str, expires: float) -> bool:
        created = math.ceil(expires - self._nonces.window)
        return bool(await self._nonces.claim(self._KEY_ID, jti, created, time.time()))


class StateSealer:
    def __init__(self, key: bytes, *, ttl_s: float = 900.0, used: UsedStates | None = None) -> None:
        self._aead = AESGCM(hashlib.sha256(b"lighthouse requestState key\0" + key).digest())
        self.ttl_s = ttl_s
        self._used = used or LocalUsedStates()

    def seal(
        self, agent: str, tool: str, arguments: dict[str, Any], payload: dict[str, Any]
    ) -> str:
        sealed = _Sealed(
            base64.urlsafe_b64encode(os.urandom(12)).decode(),
            agent,
            call_digest(tool, arguments),
            time.time() + self.ttl_s,
            payload,
        )
        nonce = os.urandom(12)
        box = self._aead.encrypt(nonce, _encoder.encode(sealed), _AAD)
        return _PREFIX + base64.urlsafe_b64encode(nonce + box).rstrip(b"=").decode()

    async def open(
        self, token: object, agent: str, tool: str, arguments: dict[str, Any]
    ) -> dict[str, Any]:
        """The payload of a state minted for this agent and call, once; else StateRejected."""
        if not isinstance(token, str) or not token.startswith(_PREFIX) or len(token) > 65536:
            raise StateRejected("malformed")
        raw = token[len(_PREFIX) :]
        try:
            blob = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        except ValueError:
            raise StateRejected("malformed") from None
        if len(blob) < 12 + 16:
            raise StateRejected("malformed")
        try:
            sealed = _decoder.decode(self._aead.decrypt(blob[:12], blob[12:], _AAD))
        except (InvalidTag, msgspec.DecodeError):
            raise StateRejected("tampered") from None
        now = time.time()
        if sealed.agent != agent:
            raise StateRejected("foreign")
        if sealed.call != call_digest(tool, arguments):
            raise StateRejected("wrong_call")
        if sealed.exp < now:
            raise StateRejected("expired")
        if not await self._used.use(sealed.jti, sealed.exp):
            raise StateRejected("replayed")
        return sealed.payload
