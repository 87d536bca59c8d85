"""Browser sessions for the operators' console: what the admin token is exchanged for.

A browser must not keep the admin token (any script on the page could read it from
storage), so sign-in trades it for a random session id held in an HttpOnly cookie, plus a
CSRF token the page keeps in memory and echoes in a header on every state-changing call.
The cookie proves "this browser signed in", the header proves "this page made the call"
(another site can make the browser send the cookie, but cannot read the token).

Sessions are short-lived (idle and absolute limits) and kept in memory only: a restart
signs everyone out, which is the safe direction. The server stores the SHA-256 of each
session id, never the id itself, so a memory dump does not yield live cookies. Pure
logic over strings and a clock; the bridge decides where cookies and headers come from.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

import msgspec

__all__ = ["ConsoleSession", "ConsoleSessions"]


class ConsoleSession(msgspec.Struct, kw_only=True):
    operator: str
    csrf: str
    created: float
    last_seen: float


def _digest(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).digest()


class ConsoleSessions:
    """Open, look up and close console sessions; the oldest are dropped past ``max_sessions``."""

    def __init__(
        self,
        *,
        idle_s: float = 900.0,
        max_age_s: float = 4 * 3600.0,
        max_sessions: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_s = idle_s
        self.max_age_s = max_age_s
        self._max = max_sessions
        self._clock = clock
        self._sessions: OrderedDict[bytes, ConsoleSession] = OrderedDict()

    def open(self, operator: str) -> tuple[str, ConsoleSession]:
        """A new session: returns the cookie value (shown to the browser once) and its state."""
        now = self._clock()
        session_id = secrets.token_urlsafe(32)
        session = ConsoleSession(
            operator=operator, csrf=secrets.token_urlsafe(32), created=now, last_seen=now
        )
        self._sessions[_digest(session_id)] = session
        while len(self._sessions) > self._max:
            self._sessions.popitem(last=False)
        return session_id, session

    def get(self, session_id: str | None) -> ConsoleSession | None:
        """The live session for a cookie value (and mark it used), or None."""
        if not session_id:
            return None
        key = _digest(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self._clock()
        if now - session.last_seen > self.idle_s or now - session.created > self.max_age_s:
            del self._sessions[key]
            return None
        session.last_seen = now
        return session

    def expires_in(self, session: ConsoleSession) -> float:
        """Seconds until the session ends if it stays idle."""
        now = self._clock()
        ends = min(session.last_seen + self.idle_s, session.created + self.max_age_s)
        return max(0.0, ends - now)

    @staticmethod
    def csrf_ok(session: ConsoleSession, header: str | None) -> bool:
        return header is not None and hmac.compare_digest(
            header.encode("utf-8", "surrogatepass"), session.csrf.encode()
        )

    def close(self, session_id: str | None) -> bool:
        if not session_id:
            return False
        return self._sessions.pop(_digest(session_id), None) is not None

    def __len__(self) -> int:
        return len(self._sessions)
