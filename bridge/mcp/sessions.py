"""Sessions of the 2025 eras: who owns them, their GET stream, and requests we push.

A session belongs to the agent whose verified request created it, for its whole life. It
has at most one standalone GET stream; server→client requests (`elicitation/create`,
`ping`) are written to that stream and their responses, which arrive as POSTs, are
matched to the waiting caller by JSON-RPC id. A session that loses its stream fails the
pushes still waiting on it (the client can no longer answer them on that stream), and a
session that ends fails them as gone. Per-agent and total caps keep one agent from taking
every slot; idle sessions (no stream, no call, no request for `idle_timeout_s`) expire.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

from .protocol import elicitation_params, elicits_forms
from .wire import Message, RequestId, server_request

# What a stream's outbox carries besides messages: end the stream (server side), the
# sweeper saw its client go, or the stream has been silent too long (a keep-alive).
END_STREAM = b""
CLIENT_GONE = b"\x00"
KEEP_ALIVE = b"\x01"


class Outbox:
    """What waits to be written on one SSE stream, and the one task writing it.

    A queue of its own rather than `asyncio.Queue`: a stream has exactly one reader, and
    ten thousand idle GET streams each holding a Queue (two deques, an Event, a timeout
    handle per wait) cost memory and a timer each; here an idle stream is one small object
    and keep-alives come from the endpoint's sweeper (`last_write`)."""

    __slots__ = ("_items", "_waiter", "last_write")

    def __init__(self) -> None:
        self._items: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self.last_write = time.monotonic()

    def put_nowait(self, item: bytes) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get_all(self) -> list[bytes]:
        """Everything queued (at least one item), oldest first."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        items, self._items = self._items, []
        return items


class PushFailed(Exception):
    """A server→client request that will get no answer. `gone`: the session ended (its
    client left), as opposed to its stream or transport failing under a live session."""

    def __init__(self, message: str, *, gone: bool) -> None:
        super().__init__(message)
        self.gone = gone


@dataclass(frozen=True, slots=True)
class ElicitOutcome:
    action: str
    content: Any


class Session:
    """One 2025-era session. Kept small: thousands of idle agents each hold one."""

    __slots__ = (
        "_next_id",
        "agent",
        "capabilities",
        "client_info",
        "created",
        "ending",
        "id",
        "in_flight",
        "initialized",
        "last_seen",
        "pending",
        "stream",
        "version",
    )

    def __init__(self, session_id: str, agent: str, version: str, capabilities: Any) -> None:
        self.id = session_id
        self.agent = agent
        self.version = version
        self.capabilities = capabilities if isinstance(capabilities, dict) else {}
        self.client_info: Any = None
        self.initialized = False
        self.ending = False
        self.created = self.last_seen = time.monotonic()
        self.stream: Outbox | None = None
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.in_flight: dict[RequestId, asyncio.Task[Any]] = {}
        self._next_id = 0

    @property
    def elicitation(self) -> bool:
        return elicits_forms(self.capabilities)

    def touch(self) -> None:
        self.last_seen = time.monotonic()

    # -- server → client ------------------------------------------------------------------

    async def request(self, method: str, params: dict[str, Any]) -> Any:
        """Push a request on the GET stream and wait for the client's result."""
        if self.ending:
            raise PushFailed("the session has ended", gone=True)
        if self.stream is None:
            raise PushFailed("the session has no open GET stream", gone=False)
        self._next_id += 1
        request_id = self._next_id
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        self.stream.put_nowait(server_request(request_id, method, params))
        try:
            return await future
        finally:
            self.pending.pop(request_id, None)

    async def elicit_form(self, message: str, schema: dict[str, Any]) -> ElicitOutcome:
        result = await self.request(
            "elicitation/create", elicitation_params(self.version, message, schema)
        )
        if not isinstance(result, dict):
            raise PushFailed("the client answered elicitation/create with a non-object", gone=False)
        return ElicitOutcome(str(result.get("action")), result.get("content"))

    async def ping(self) -> None:
        await self.request("ping", {})

    def answered(self, message: Message) -> bool:
        """A POSTed response to one of our requests; False when nothing waits for it."""
        request_id = message.request_id
        future = self.pending.get(request_id) if isinstance(request_id, int) else None
        if future is None or future.done():
            return False
        if message.error is not msgspec.UNSET:
            error = message.error if isinstance(message.error, dict) else {}
            code = error.get("code")
            # -32000 "Connection closed": the client is leaving and abandons what it holds.
            future.set_exception(
                PushFailed(f"client error {code}: {error.get('message')}", gone=code == -32000)
            )
        else:
            future.set_result(message.result)
        return True

    def fail_pending(self, reason: str, *, gone: bool) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_exception(PushFailed(reason, gone=gone))


class SessionLimit(Exception):
    """No new session for this agent (its cap) or for anyone (the total cap)."""

    def __init__(self, message: str, *, per_agent: bool) -> None:
        super().__init__(message)
        self.per_agent = per_agent


class SessionTable:
    """Every live session, by id and by agent."""

    def __init__(
        self,
        *,
        per_agent: int = 32,
        total: int = 10_000,
        idle_timeout_s: float = 900.0,
        init_timeout_s: float = 60.0,
        prefix: str = "",
    ) -> None:
        self.per_agent = per_agent
        self.total = total
        self.idle_timeout_s = idle_timeout_s
        self.init_timeout_s = init_timeout_s
        self.prefix = prefix
        self._sessions: dict[str, Session] = {}
        self._by_agent: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def create(self, agent: str, version: str, capabilities: Any) -> Session:
        held = self._by_agent.get(agent, 0)
        if held >= self.per_agent:
            raise SessionLimit(
                f"agent {agent!r} already holds {held} sessions (the limit per agent): end one "
                "with DELETE or let an idle one expire",
                per_agent=True,
            )
        if len(self._sessions) >= self.total:
            raise SessionLimit("the bridge holds its maximum number of sessions", per_agent=False)
        # Visible ASCII, unguessable; the prefix names this bridge for sticky routing.
        session = Session(self.prefix + secrets.token_urlsafe(24), agent, version, capabilities)
        self._sessions[session.id] = session
        self._by_agent[agent] = held + 1
        return session

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def remove(self, session_id: str) -> Session | None:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            left = self._by_agent.get(session.agent, 1) - 1
            if left > 0:
                self._by_agent[session.agent] = left
            else:
                self._by_agent.pop(session.agent, None)
        return session

    def expired(self, now: float | None = None) -> list[Session]:
        """Sessions to end: idle past the timeout, or never initialized in time. A session
        with an open stream or a call in flight is in use, whatever its age."""
        now = time.monotonic() if now is None else now
        out = []
        for s in self._sessions.values():
            if s.stream is not None or s.in_flight:
                continue
            limit = self.idle_timeout_s if s.initialized else self.init_timeout_s
            if now - s.last_seen > limit:
                out.append(s)
        return out
