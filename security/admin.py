"""Admin bearer tokens for ``/admin/…`` and ``/feature_flags``.

The server keeps only the SHA-256 of the token (the token has 256 bits of entropy, so a
plain hash cannot be brute-forced and a slow KDF would only slow every admin call).
The plaintext lives in the environment (``LIGHTHOUSE_ADMIN_TOKEN``) or in a file readable
by its owner only, which ``serve`` creates on first start and the CLI reads.

Wrong tokens are throttled per client address so an exposed admin port cannot be used to
guess tokens online (it could not succeed anyway, but it would burn CPU). The throttle
never applies to the right token: an operator sharing an address with a guesser (NAT, the
same host, a cross-site page in their browser) can still pull the kill switch.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from pathlib import Path

import msgspec

__all__ = [
    "ADMIN_TOKEN_ENV",
    "AdminAuth",
    "AdminAuthResult",
    "AdminToken",
    "AdminTokenError",
    "FailureThrottle",
    "bearer_token",
    "generate_admin_token",
    "hash_admin_token",
    "load_or_create_admin_token",
]

ADMIN_TOKEN_ENV = "LIGHTHOUSE_ADMIN_TOKEN"
TOKEN_PREFIX = "lh_admin_"


class AdminTokenError(Exception):
    """The admin token file is unusable (unsafe permissions, empty)."""


def generate_admin_token() -> str:
    """``lh_admin_`` + 32 random bytes, base64url without padding."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_admin_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class AdminToken(msgspec.Struct, frozen=True):
    """The token's hash (what the server keeps) and where the token came from:
    ``env``, ``file`` or ``created`` (a new file was written)."""

    digest: bytes
    source: str
    path: str | None = None


def load_or_create_admin_token(
    path: str | Path, environ: Mapping[str, str] | None = None
) -> tuple[AdminToken, str]:
    """Return ``(AdminToken, plaintext)``. The environment wins; else the file at *path*
    is read (it must not be group/other accessible); else a new token is written there
    with mode 0600 (O_EXCL, so two starting servers cannot both create one)."""
    env = os.environ if environ is None else environ
    configured = env.get(ADMIN_TOKEN_ENV)
    if configured:
        return AdminToken(hash_admin_token(configured), "env"), configured
    path = Path(path)
    if path.exists():
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise AdminTokenError(f"{path} must be readable by its owner only (chmod 600)")
        token = path.read_text().strip()
        if not token:
            raise AdminTokenError(f"{path} is empty")
        return AdminToken(hash_admin_token(token), "file", str(path)), token
    token = generate_admin_token()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (token + "\n").encode())
    finally:
        os.close(fd)
    return AdminToken(hash_admin_token(token), "created", str(path)), token


def bearer_token(authorization: str | None) -> str | None:
    """The token from an ``Authorization: Bearer <token>`` header, else None."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class FailureThrottle:
    """After ``max_failures`` failures within ``window`` seconds an address is blocked
    for ``block_for`` seconds. Memory is bounded by ``max_addresses`` (LRU)."""

    def __init__(
        self,
        max_failures: int = 5,
        window: float = 60.0,
        block_for: float = 300.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = 10_000,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.block_for = block_for
        self._clock = clock
        self._max = max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._blocked: dict[str, float] = {}

    def retry_after(self, address: str) -> float | None:
        """Seconds until *address* may try again, or None if it is not blocked."""
        until = self._blocked.get(address)
        if until is None:
            return None
        now = self._clock()
        if now >= until:
            del self._blocked[address]
            return None
        return until - now

    def record_failure(self, address: str) -> float | None:
        """Count a failure; returns the block duration if this failure triggered one."""
        now = self._clock()
        times = self._failures.get(address)
        if times is None:
            times = self._failures[address] = deque()
        self._failures.move_to_end(address)
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(self._failures) > self._max:
            self._failures.popitem(last=False)
        if len(times) >= self.max_failures:
            self._blocked[address] = now + self.block_for
            self._failures.pop(address, None)
            if len(self._blocked) > self._max:
                self._blocked = {a: t for a, t in self._blocked.items() if t > now}
            return self.block_for
        return None

    def record_success(self, address: str) -> None:
        self._failures.pop(address, None)


class AdminAuthResult(msgspec.Struct, frozen=True):
    ok: bool
    status: int = 200
    reason: str | None = None  # missing_token | invalid_token | throttled
    retry_after: float | None = None


class AdminAuth:
    """Checks ``Authorization`` headers against the configured token hash."""

    def __init__(self, token: AdminToken, throttle: FailureThrottle | None = None) -> None:
        self._digest = token.digest
        self.throttle = throttle or FailureThrottle()

    def check(self, address: str, authorization: str | None) -> AdminAuthResult:
        """A valid token is always accepted, even from a throttled address: the throttle
        exists to slow guessing, and must not lock the operator out of the kill switch
        while someone else (or a cross-site page) fails from the same address. Only a
        wrong token counts as a failure; no token at all is refused without counting."""
        token = bearer_token(authorization)
        if token is None:
            return AdminAuthResult(False, 401, "missing_token")
        if hmac.compare_digest(hash_admin_token(token), self._digest):
            return AdminAuthResult(True)
        wait = self.throttle.retry_after(address)
        if wait is not None:
            return AdminAuthResult(False, 429, "throttled", wait)
        blocked = self.throttle.record_failure(address)
        return AdminAuthResult(False, 401, "invalid_token", blocked)
