"""A small, correct ASGI-over-aiohttp adapter for hosting the MCP SDK on the bridge's port.

Why our own: ``aiohttp-asgi`` 0.7.1 answers every ``receive()`` after the body at once, and
the SDK's SSE code (``sse_starlette``'s disconnect listener, the 2026-07-28 entry's
``watch_disconnect``) loops on ``receive()`` until it sees ``http.disconnect``, so the
process spins at 100% CPU.  Here ``receive()`` hands out the body, then *blocks* until the
client goes away, the response is complete, or the application shuts down.

aiohttp has no public "client disconnected" callback, so disconnects are detected by
a cheap transport check every ``poll_interval`` seconds, by a failed write, and by the
``on_shutdown`` hook (so open SSE streams end before aiohttp's shutdown timeout). One task
checks every open call per sweep: a task per call cost 10,000 idle GET streams 20,000
wakeups a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

__all__ = [
    "CLIENT_GONE",
    "ASGIApp",
    "ASGIHandler",
    "asgi_handler",
    "lifespan_cleanup_ctx",
    "run_in_cleanup_ctx",
]

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
ScopeExtras = Callable[[web.Request], Mapping[str, Any]]

CLIENT_GONE = "lighthouse.client_gone"
"""Scope extension: an asyncio.Event set when the client disconnects (not when the
response merely completes), so the app can tell a vanished peer from a finished call."""
_SKIP_HEADERS = frozenset({b"transfer-encoding"})  # aiohttp frames the body itself


class ASGIHandler:
    """aiohttp handler running one ASGI HTTP call per request; build it with `asgi_handler`."""

    def __init__(
        self, app: ASGIApp, root_path: str, scope_extras: ScopeExtras | None, poll_interval: float
    ) -> None:
        self.app = app
        self.root_path = root_path
        self.scope_extras = scope_extras
        self.poll_interval = poll_interval
        # Per in-flight call: its "disconnected" event -> (request, its "client gone" event).
        self._open: dict[asyncio.Event, tuple[web.Request, asyncio.Event]] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def on_shutdown(self, _app: web.Application) -> None:
        """For ``app.on_shutdown``: end every open stream before aiohttp's shutdown timeout."""
        for event in list(self._open):
            event.set()

    def _track(
        self, request: web.Request, disconnected: asyncio.Event, gone: asyncio.Event
    ) -> None:
        self._open[disconnected] = (request, gone)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep())

    async def _sweep(self) -> None:
        """Poll the sockets of all open calls; ends when none is left (`_track` restarts it)."""
        while self._open:
            await asyncio.sleep(self.poll_interval)
            for disconnected, (request, gone) in list(self._open.items()):
                transport = request.transport
                if transport is None or transport.is_closing():
                    gone.set()
                    disconnected.set()

    def scope_for(self, request: web.Request) -> Scope:
        """The ASGI HTTP scope for ``request`` (header names lowercased, raw bytes kept)."""
        transport = request.transport

        def peer(name: str) -> tuple[str, int] | None:
            info = transport.get_extra_info(name) if transport is not None else None
            return (
                (str(info[0]), int(info[1])) if isinstance(info, tuple) and len(info) >= 2 else None
            )

        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": f"{request.version.major}.{request.version.minor}",
            "method": request.method,
            "scheme": request.scheme,
            "path": request.path,
            "raw_path": request.rel_url.raw_path.encode("latin-1"),
            "query_string": request.rel_url.raw_query_string.encode("latin-1"),
            "root_path": self.root_path,
            "headers": [(k.lower(), v) for k, v in request.raw_headers],
            "client": peer("peername"),
            "server": peer("sockname"),
            "state": {},
            "extensions": {},
        }
        if self.scope_extras is not None:
            scope.update(self.scope_extras(request))
        return scope

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp handler (a bound coroutine method: aiohttp takes it without wrapping)."""
        disconnected = asyncio.Event()  # set: client gone, response complete, or shutdown
        client_gone = asyncio.Event()  # set only when the client itself went away
        self._track(request, disconnected, client_gone)
        body_lock = asyncio.Lock()
        body_done = False
        finished = False
        response: web.StreamResponse | None = None
        start: Message | None = None

        async def receive() -> Message:
            nonlocal body_done
            async with body_lock:  # aiohttp allows one reader at a time
                if not body_done and not disconnected.is_set():
                    # read() is cached by aiohttp: a middleware that already read the body
                    # (to verify its digest) and the app see the same bytes.
                    try:
                        body = await request.read()
                    except (ConnectionError, asyncio.IncompleteReadError):
                        client_gone.set()
                        disconnected.set()
                        return {"type": "http.disconnect"}
                    body_done = True
                    return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()  # blocks until the client goes away: the point of this module
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal response, start, finished
            if message["type"] == "http.response.start":
                start = message
                return
            if (
                message["type"] != "http.response.body"
                or start is None
                or finished
                or disconnected.is_set()
            ):
                return  # ASGI 2.3: sends after a disconnect are ignored
            body: bytes = message.get("body", b"")
            more = bool(message.get("more_body", False))
            try:
                if response is None:
                    headers: CIMultiDict[str] = CIMultiDict()
                    for k, v in start.get("headers", []):
                        if k.lower() not in _SKIP_HEADERS:
                            headers.add(k.decode("latin-1"), v.decode("latin-1"))
                    response = web.StreamResponse(status=int(start["status"]), headers=headers)
                    if not more and "content-length" not in headers:
                        response.content_length = len(body)
                    await response.prepare(request)  # SSE: headers go out now, body is chunked
                if body:
                    await response.write(body)  # straight to the socket, drained: no buffering
                if not more:
                    finished = True
                    await response.write_eof()
                    disconnected.set()  # ASGI: receive() after the response => http.disconnect
            except (ConnectionError, RuntimeError):
                client_gone.set()
                disconnected.set()

        try:
            scope = self.scope_for(request)
            scope["extensions"][CLIENT_GONE] = client_gone
            await self.app(scope, receive, send)
        except Exception:
            logger.exception("ASGI application raised for %s %s", request.method, request.path)
        finally:
            disconnected.set()
            self._open.pop(disconnected, None)
        if response is None:  # the app failed or returned without answering
            return web.Response(status=500, text="Internal Server Error")
        if not finished:  # a stream cut short (app error, disconnect): close it properly
            with contextlib.suppress(ConnectionError, RuntimeError):
                await response.write_eof()
        return response


def asgi_handler(
    app: ASGIApp,
    *,
    root_path: str = "",
    scope_extras: ScopeExtras | None = None,
    poll_interval: float = 0.5,
) -> ASGIHandler:
    """Return an `ASGIHandler` for an ASGI app: ``app.router.add_route("*", "/mcp", h.handle)``.

    Also append ``h.on_shutdown`` to ``app.on_shutdown``. ``scope_extras(request)`` is merged
    into the scope last; the bridge passes the identity its auth middleware established
    (``{"user": AuthenticatedUser(...)}`` binds SDK sessions to it; tools read it back
    from ``ctx.request_context.request.scope``).
    """
    return ASGIHandler(app, root_path, scope_extras, poll_interval)


def run_in_cleanup_ctx(
    factory: Callable[[], contextlib.AbstractAsyncContextManager[Any]],
) -> Callable[[web.Application], AsyncIterator[None]]:
    """Wrap an async context manager (e.g. ``session_manager.run``) for ``app.cleanup_ctx``.

    The context is entered and exited in one dedicated task: anyio task groups and cancel
    scopes (the SDK's session manager has both) must exit in the task that entered them,
    and aiohttp (or a test fixture) may run startup and cleanup in different tasks.
    """

    async def ctx(_app: web.Application) -> AsyncIterator[None]:
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        stop = asyncio.Event()

        async def owner() -> None:
            try:
                async with factory():
                    started.set_result(None)
                    await stop.wait()
            except BaseException as exc:
                if not started.done():
                    started.set_exception(exc)
                raise

        task = asyncio.create_task(owner())
        await started
        try:
            yield
        finally:
            stop.set()
            await task

    return ctx


def lifespan_cleanup_ctx(app: ASGIApp) -> Callable[[web.Application], AsyncIterator[None]]:
    """Run an ASGI app's ``lifespan`` protocol (startup/shutdown) from ``app.cleanup_ctx``."""

    @contextlib.asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        outbox: asyncio.Queue[Message] = asyncio.Queue()
        scope: Scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": {},
        }

        async def send(message: Message) -> None:
            await outbox.put(message)

        task = asyncio.create_task(app(scope, inbox.get, send))
        ended = {"type": "lifespan.ended", "message": "lifespan task ended"}
        task.add_done_callback(lambda _t: outbox.put_nowait(ended))  # never wait forever
        await inbox.put({"type": "lifespan.startup"})
        reply = await outbox.get()
        if reply["type"] != "lifespan.startup.complete":
            raise RuntimeError(
                f"ASGI lifespan startup failed: {reply.get('message', reply['type'])}"
            )
        try:
            yield
        finally:
            await inbox.put({"type": "lifespan.shutdown"})
            await outbox.get()
            with contextlib.suppress(Exception):  # the app's error was reported via lifespan.*
                await task

    return run_in_cleanup_ctx(lifespan)
