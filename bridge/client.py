"""Connect an agent to a bridge with the official MCP SDK, every request signed.

async with connect(url, key_id, secret, elicitation_callback=answer) as client:
    result = await client.call_tool("ask", {...})

Behind a balancer (deploy/haproxy.cfg), a 2025-era session lives on one bridge. When that
bridge dies, the session's next request reaches another bridge, which answers 404 for the
unknown session; the MCP spec says the client must then start a new session, and the SDK
(2.3) does not: it fails that call and every later one with "session not found". So
`connect` returns a `Connection` that does, visibly (a warning naming both sessions, and
`reconnects` counts them):

* a 404 for the session — on a call, or on the GET stream an idle agent is waiting on for
  pushes — opens a new session at once (through the balancer: a live bridge). A call that
  got the 404 never reached a bridge holding its session, so nothing of it happened there:
  it is sent again on the new session, whatever the tool.
* a call cut off mid-way (the balancer's 502 when the bridge died under it) may or may not
  have taken effect. The session is probed; if it is gone, a new one is opened and the call
  is sent again only if repeating it cannot do anything twice (`RETRY_SAFE`): reading
  tools, `wait_for_messages` (an item handed out is acknowledged only by the same session's
  next call, so the new session is given it again) and `ask`, which always carries a
  `request_id` (one is chosen here when the caller gave none) so the repeat re-attaches to
  the request already recorded instead of asking twice. Any other call raises
  `CallInterrupted`: look before repeating it (`get_request`, the mailbox).

Each call is sent again at most once. 2026-07-28 clients are sessionless (any bridge serves
each request); only the second rule applies to them, without a new session.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import anyio
import httpx2
from anyio.abc import TaskGroup, TaskStatus
from mcp import MCPError
from mcp.client import Client
from mcp.client._transport import TransportStreams
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CONNECTION_CLOSED, CallToolResult

from security import LighthouseAuth

from .mcp.protocol import SESSION_HEADER
from .mcp.wire import INTERNAL_ERROR, INVALID_REQUEST, SESSION_NOT_FOUND

log = logging.getLogger(__name__)

# What the SDK client's post task raises when a JSON response to a call still pending at
# exit arrives after the session stopped reading (the bridge answers POSTs with JSON).
_TEARDOWN_RACE = (anyio.BrokenResourceError, anyio.ClosedResourceError)
# Tools whose repeat after an unknown outcome does nothing twice (see the module docstring).
RETRY_SAFE: Final = frozenset({"ask", "get_request", "wait_for_messages", "list_agents"})
PROBE_TIMEOUT_S: Final = 10.0  # a dead bridge leaves a balancer's rotation well within it
PROBE_AGAIN_S: Final = 0.5


class CallInterrupted(Exception):
    """The bridge serving `tool` went away while it ran: it may or may not have taken
    effect. The connection is usable again (a new session where there are sessions);
    check before repeating the call."""

    def __init__(self, tool: str) -> None:
        super().__init__(
            f"{tool}: the bridge serving this call went away during it, so it may or may "
            "not have taken effect; the connection is usable again — check (get_request, "
            "wait_for_messages) before repeating it"
        )
        self.tool = tool


def connect(
    url: str,
    key_id: str,
    secret: str,
    *,
    mode: str = "legacy",
    read_timeout_s: float = 3900.0,
    **client_kwargs: Any,
) -> Connection:
    """An SDK client whose HTTP requests carry our RFC 9421 signature, renewed when the
    bridge holding its session dies (module docstring).

    `mode="legacy"` speaks 2025-11-25 (server push); `mode="2026-07-28"` is the single
    exchange protocol. The read timeout must outlast the longest `ask` the agent makes or
    answers, since a pending elicitation counts against it.
    """

    def make(on_response: Callable[[httpx2.Response], Any]) -> Client:
        http = httpx2.AsyncClient(
            auth=LighthouseAuth(key_id, secret),
            timeout=httpx2.Timeout(30.0, read=read_timeout_s),
            event_hooks={"response": [on_response]},
        )
        return Client(_transport(url, http), mode=mode, **client_kwargs)

    return Connection(make, sessions=mode == "legacy")


class Connection:
    """An SDK `Client` that starts a new session when its bridge is gone.

    Everything but `call_tool` is the current client's (`list_tools`, `session`, …)."""

    def __init__(
        self, make: Callable[[Callable[[httpx2.Response], Any]], Client], *, sessions: bool
    ) -> None:
        self._make = make
        self._sessions = sessions  # 2025-era: a session to lose; 2026-07-28: none
        self._client: Client | None = None
        self._stop = anyio.Event()
        self._generation = 0
        self._dead: set[int] = set()  # generations whose client lost its connection
        self._checking: set[int] = set()  # generations whose session is being looked at
        self._lock = anyio.Lock()
        self._closing = False
        self._stack: contextlib.AsyncExitStack | None = None
        self._tasks: TaskGroup | None = None
        self.session_id: str | None = None
        self.reconnects = 0

    async def __aenter__(self) -> Connection:
        async with contextlib.AsyncExitStack() as stack:
            self._tasks = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(self._stop_current)  # runs before the task group is left
            await self._open()
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        self._closing = True
        assert self._stack is not None
        return await self._stack.__aexit__(*exc)

    def _stop_current(self) -> None:
        self._closing = True
        self._stop.set()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or self._client is None:
            raise AttributeError(name)
        return getattr(self._client, name)

    # -- one client per session -----------------------------------------------------------

    async def _open(self) -> None:
        """Start a client (a new session) in its own task, which holds it until told to
        stop: the SDK's task groups must be left by the task that entered them, and a
        renewal may be started by any call."""
        generation, stop = self._generation + 1, anyio.Event()
        client = self._make(lambda response: self._seen(generation, response))
        assert self._tasks is not None
        await self._tasks.start(self._hold, client, stop, generation)
        self._client, self._stop, self._generation = client, stop, generation

    async def _hold(
        self,
        client: Client,
        stop: anyio.Event,
        generation: int,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        started = False
        try:
            async with client:
                task_status.started()
                started = True
                await stop.wait()
        except Exception as exc:
            if not started:
                raise  # it never opened: the caller of `_open` gets why
            if stop.is_set() or generation != self._generation:
                log.debug("retired MCP client ended with an error", exc_info=True)
            elif _connection_lost(exc):
                # e.g. the balancer dropped the connection when the bridge behind it died
                log.warning("connection of MCP client %d lost: %s", generation, exc)
                self._dead.add(generation)
                assert self._tasks is not None
                self._tasks.start_soon(self._renew_quietly, generation)
            else:
                raise  # anything else fails loudly, as a bare SDK client would

    async def _seen(self, generation: int, response: httpx2.Response) -> None:
        """Every HTTP response of the client of `generation`: note its session id; renew
        at a 404 for the session (a call, or the GET stream of an idle agent), and look
        at the session when its GET stream — the agent's only line for pushes — meets a
        balancer's 5xx (its bridge died; the SDK gives the stream up after two tries)."""
        sid = response.headers.get(SESSION_HEADER)
        if sid and generation >= self._generation:  # the current client, or one opening
            self.session_id = sid
        request = response.request
        if self._closing or not request.headers.get(SESSION_HEADER):
            return
        assert self._tasks is not None
        if response.status_code == 404 and request.method != "DELETE":  # DELETE: a goodbye
            self._tasks.start_soon(self._renew_quietly, generation)
        elif response.status_code >= 500 and request.method == "GET":
            self._tasks.start_soon(self._check_quietly, generation)

    async def _renew(self, generation: int) -> None:
        """A new session in place of the one of `generation` (once, whoever asks first)."""
        async with self._lock:
            if generation != self._generation or self._closing:
                return
            old, self.session_id = self.session_id, None
            self._stop.set()  # the old client leaves in its own task
            try:
                await self._open()
            except BaseException:
                self.session_id = old
                raise
            self.reconnects += 1
            log.warning(
                "MCP session %s is gone (its bridge stopped?): new session %s",
                old,
                self.session_id,
            )

    async def _renew_quietly(self, generation: int) -> None:
        """A renewal nobody waits for: if no bridge takes it now, the next call tries."""
        try:
            await self._renew(generation)
        except Exception as exc:
            log.warning("could not open a new MCP session yet: %s", exc)

    async def _check_quietly(self, generation: int) -> None:
        """Renew if the session of `generation` turns out to be gone (one check at a time)."""
        if generation != self._generation or generation in self._checking:
            return
        self._checking.add(generation)
        try:
            assert self._client is not None
            if await self._unusable(self._client, generation):
                await self._renew_quietly(generation)
        finally:
            self._checking.discard(generation)

    async def _unusable(self, client: Client, generation: int) -> bool:
        """Whether the client of `generation` cannot go on: its connection died, or (with
        a session) the bridges no longer know its session. A ping asks them; while only
        the balancer answers (5xx: the bridge is dead but not yet out of its rotation),
        it asks again, for up to `PROBE_TIMEOUT_S`."""
        if generation in self._dead:
            return True
        if not self._sessions:
            return False
        with anyio.move_on_after(PROBE_TIMEOUT_S):
            while generation not in self._dead:
                try:
                    await client.session.send_ping()
                    return False
                except MCPError as exc:
                    if _session_lost(exc):
                        return True
                    if not _cut_off(exc):
                        return False  # a bridge holding the session answered
                except Exception:  # no answer at all: the session cannot be used either
                    return True
                await anyio.sleep(PROBE_AGAIN_S)
        return True

    # -- calls ----------------------------------------------------------------------------

    async def call_tool(
        self, name: str, arguments: dict[str, Any] | None = None, **kwargs: Any
    ) -> CallToolResult:
        if self._client is None:
            raise RuntimeError("Connection must be used within an async context manager")
        arguments = dict(arguments or {})
        if name == "ask" and "request_id" not in arguments:
            arguments["request_id"] = uuid.uuid4().hex  # a repeat re-attaches, never re-asks
        generation, client = self._generation, self._client
        try:
            return await client.call_tool(name, arguments, **kwargs)
        except MCPError as exc:
            if self._sessions and _session_lost(exc):  # it never ran: send it again
                await self._renew(generation)
            elif generation != self._generation or _cut_off(exc):
                await self._after_cut(name, generation, client, exc)
            else:
                raise
        except Exception as exc:
            if generation == self._generation and generation not in self._dead:
                raise
            await self._after_cut(name, generation, client, exc)  # its client went away
        assert self._client is not None
        return await self._client.call_tool(name, arguments, **kwargs)

    async def _after_cut(self, name: str, generation: int, client: Client, exc: Exception) -> None:
        """A call that may have run when its bridge or connection went away: renew if the
        client cannot go on; return if the call is safe to send again, raise otherwise."""
        if generation == self._generation:
            if await self._unusable(client, generation):
                await self._renew(generation)
            elif self._sessions:
                raise exc  # the session lives: the error is the call's own
        if name not in RETRY_SAFE:
            raise CallInterrupted(name) from exc


def _session_lost(exc: MCPError) -> bool:
    """A 404 for the session: the bridge's own error, or the SDK's stand-in for a 404
    whose body is not JSON-RPC (a proxy in between)."""
    return exc.code == SESSION_NOT_FOUND or (
        exc.code == INVALID_REQUEST and exc.message == "Session terminated"
    )


def _connection_lost(exc: BaseException) -> bool:
    """Whether a client's failure is its HTTP connection's (every leaf a transport error)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_connection_lost(e) for e in exc.exceptions)
    return isinstance(exc, httpx2.TransportError | OSError)


def _cut_off(exc: MCPError) -> bool:
    """A call that ended without the bridge's answer: the connection closed under it (the
    balancer dropped it, or the bridge died), or the SDK's stand-in for a non-JSON error
    response — what a balancer sends (502, 503) when the bridge behind it died."""
    if exc.code == CONNECTION_CLOSED:
        return True
    return exc.code == INTERNAL_ERROR and exc.message == "Server returned an error response"


@contextlib.asynccontextmanager
async def _transport(url: str, http: httpx2.AsyncClient) -> AsyncIterator[TransportStreams]:
    """The SDK transport, minus its teardown race: leaving a client while a call is still
    pending makes the SDK's post task fail to hand over the call's late response, and that
    error would surface from `async with` although nothing was lost (the call had already
    been abandoned). Only an exception group made entirely of that error is dropped. The
    HTTP client is ours, so it is closed here (the SDK leaves a client it was given open)."""
    try:
        async with http, streamable_http_client(url, http_client=http) as streams:
            yield streams
    except BaseExceptionGroup as group:
        _, rest = group.split(_TEARDOWN_RACE)
        if rest is not None:
            raise rest from None
