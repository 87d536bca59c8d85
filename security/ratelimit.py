"""Per-agent (and per-client-address) rate limiting with GCRA.

Why GCRA and not a library: the maintained Python options do not fit. ``limits``
offers fixed / moving / sliding *window* strategies, which express "N per period" but not
"50/s sustained with a burst of 100", read the wall clock themselves (no injected clock,
so tests would sleep), and its memory storage expires keys with a timer thread.
``aiolimiter`` is a client-side leaky bucket you ``await`` on: it delays instead of
rejecting, has no per-key buckets and gives no retry-after. GCRA is ~20 lines, keeps one
float per key and yields exactly what the headers need.

GCRA in one paragraph: each key has a theoretical arrival time ``tat``. A request at
``now`` is allowed if ``max(tat, now) + T - burst*T <= now`` (``T = 1/rate``); then
``tat`` advances by ``T``. A key whose ``tat <= now`` is indistinguishable from a fresh
one, so idle buckets can be dropped without changing any decision: that is how memory
stays bounded.

The interface (:class:`RateLimiter`) is async so a shared backend (Redis with a Lua
GCRA script) can replace the in-memory one.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable

import msgspec

__all__ = ["GCRARateLimiter", "RateDecision", "RateLimiter", "address_rate_limiter"]

_EPS = 1e-9


class RateDecision(msgspec.Struct, frozen=True):
    """Outcome of one request against a limit.

    ``limit`` is the burst (the most requests allowed at once), ``remaining`` how many
    more would be allowed right now, ``reset`` seconds until the bucket is full again,
    ``retry_after`` seconds until a denied request would be allowed (0 when allowed).
    """

    allowed: bool
    limit: int
    remaining: int
    reset: float
    retry_after: float = 0.0

    def headers(self) -> dict[str, str]:
        """``RateLimit-Limit/Remaining/Reset`` (IETF httpapi ratelimit-headers draft) and,
        when denied, ``Retry-After`` (RFC 9110: whole seconds, rounded up, at least 1)."""
        out = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset - _EPS)),
        }
        if not self.allowed:
            out["Retry-After"] = str(max(1, math.ceil(self.retry_after - _EPS)))
        return out


class RateLimiter(ABC):
    """Decides whether the request identified by ``key`` may proceed now."""

    @abstractmethod
    async def hit(self, key: str, cost: int = 1) -> RateDecision:
        """Count a request (if allowed) and return the decision."""

    async def close(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release resources (a shared backend's connection); the default does nothing."""


class GCRARateLimiter(RateLimiter):
    """In-memory GCRA. Defaults: 50 requests/s sustained, burst 100 (DESIGN.md).

    ``clock`` must be monotonic. At most ``max_keys`` buckets are kept: idle buckets
    (full again) are dropped every ``sweep_every`` seconds; if still over the cap, the
    least recently used bucket is dropped, which can only make the limiter more lenient
    for that key, never block a well-behaved one.
    """

    def __init__(
        self,
        rate: float = 50.0,
        burst: int = 100,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
        sweep_every: float = 10.0,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._t = 1.0 / rate
        self._tau = burst * self._t
        self._clock = clock
        self._max_keys = max_keys
        self._sweep_every = sweep_every
        self._next_sweep = clock() + sweep_every
        self._tat: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tat)

    def hit_now(self, key: str, cost: int = 1) -> RateDecision:
        """Synchronous form of :meth:`hit` (the in-memory limiter never waits)."""
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        tats = self._tat
        tat = max(tats.get(key, now), now)
        new_tat = tat + cost * self._t
        allow_at = new_tat - self._tau
        if allow_at > now + _EPS:
            remaining = math.floor((now + self._tau - tat) / self._t + _EPS)
            return RateDecision(False, self.burst, max(0, remaining), tat - now, allow_at - now)
        tats[key] = new_tat
        tats.move_to_end(key)
        if len(tats) > self._max_keys:
            self._sweep(now)
            while len(tats) > self._max_keys:
                tats.popitem(last=False)
        remaining = math.floor((now + self._tau - new_tat) / self._t + _EPS)
        return RateDecision(True, self.burst, max(0, remaining), new_tat - now)

    async def hit(self, key: str, cost: int = 1) -> RateDecision:
        return self.hit_now(key, cost)

    def _sweep(self, now: float) -> None:
        for key in [k for k, tat in self._tat.items() if tat <= now]:
            del self._tat[key]
        self._next_sweep = now + self._sweep_every


def address_rate_limiter(
    rate: float = 200.0,
    burst: int = 400,
    *,
    clock: Callable[[], float] = time.monotonic,
    max_keys: int = 50_000,
) -> GCRARateLimiter:
    """A cheap limiter keyed by client address, meant to run *before* signature
    verification so unauthenticated floods cost one dict lookup each. Its limits are
    looser than the per-agent ones: several agents may share an address (NAT, one host)."""
    return GCRARateLimiter(rate, burst, clock=clock, max_keys=max_keys)
