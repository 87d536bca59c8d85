"""Streamable HTTP on aiohttp: one handler for POST, GET and DELETE on `/mcp`.

The caller's agent is already verified (the auth middleware in front); this module turns
HTTP requests into protocol steps (`protocol`, `wire`), runs tool calls through the
application's `ToolHost`, and keeps each session's GET stream. POST responses are JSON
bodies: SDK clients keep their connections alive for those, while an SSE response costs
them a fresh connection per call; pushes therefore travel on the GET stream only.

Aiohttp does not cancel a handler whose client went away, so one sweeper task checks the
transports of all open GET streams (a task per stream would cost a wake-up each): a
stream whose client is gone is closed at once and its pending pushes fail, which is how
the bridge learns to fall back to the mailbox. The same sweep sends the keep-alive of a
stream that has been silent for `KEEPALIVE_S` (no timer per stream or per event), and
a stream's writer sends everything queued for it in one write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any, ClassVar

import msgspec
from aiohttp import web

from .protocol import (
    META_SERVER_INFO,
    MODERN_VERSIONS,
    PROTOCOL_VERSION_HEADER,
    REMOVED_IN_MODERN,
    SESSION_HEADER,
    SESSION_VERSIONS,
    SUPPORTED_VERSIONS,
    Envelope,
    check_session_version,
    duplicated_routing_header,
    is_modern_request,
    modern_envelope,
    negotiate,
    tool_error,
    tool_result,
    unsupported,
)
from .sessions import (
    CLIENT_GONE,
    END_STREAM,
    KEEP_ALIVE,
    Outbox,
    Session,
    SessionLimit,
    SessionTable,
)
from .state import StateRejected, StateSealer
from .tools import InputRequired, SessionHooks, ToolCall, ToolError, ToolHost
from .wire import (
    HEADER_MISMATCH,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    REQUEST_CANCELLED,
    SESSION_NOT_FOUND,
    Message,
    ProtocolError,
    RequestId,
    decode_message,
    encode,
    error_message,
    result_message,
)

log = logging.getLogger("lighthouse.mcp")

KEEPALIVE_S = 15.0  # Node clients drop an SSE stream that stays silent much longer
SWEEP_S = 0.5
STREAM_GRACE_S = 1.0  # how long a lost stream waits for its session's DELETE
_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}
_JSON = "application/json"
META_SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"
_LIST_CHANGES = ("toolsListChanged", "promptsListChanged", "resourcesListChanged")


def _json(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=body, status=status, content_type=_JSON, headers=headers)


class McpEndpoint:
    """The `/mcp` endpoint for all three protocol eras."""

    def __init__(
        self,
        tools: ToolHost,
        hooks: SessionHooks,
        sessions: SessionTable,
        sealer: StateSealer,
        *,
        server_name: str,
        server_version: str,
        instructions: str,
        list_ttl_ms: int = 300_000,
    ) -> None:
        self.tools = tools
        self.hooks = hooks
        self.sessions = sessions
        self.sealer = sealer
        self.instructions = instructions
        self.list_ttl_ms = list_ttl_ms
        self.server_info = {"name": server_name, "version": server_version}
        # Prompts and resources are declared (and listed empty) because clients and the
        # conformance suite probe them; the bridge offers its work as tools.
        self.capabilities = {
            "tools": {"listChanged": False},
            "prompts": {"listChanged": False},
            "resources": {"listChanged": False, "subscribe": False},
        }
        self._tools = {spec.name: spec for spec in tools.specs}
        self._tool_list = [spec.describe() for spec in tools.specs]
        # Every open SSE stream (GET streams and listen streams): its request, for the
        # sweeper, and the queue its handler writes from.
        self._streams: dict[int, tuple[web.Request, Outbox]] = {}
        self._listening: dict[str, int] = {}  # agent -> open subscriptions/listen streams
        self._sweeper: asyncio.Task[None] | None = None
        self.closing = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def close(self) -> None:
        """End every stream and session (the bridge is stopping)."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for session in self.sessions:
            await self._end(session, "shutdown")

    def end_streams(self) -> None:
        """Close every open stream (clients reconnect elsewhere); sessions stay."""
        for _, outbox in list(self._streams.values()):
            outbox.put_nowait(END_STREAM)

    async def _sweep(self) -> None:
        next_idle_check = 0.0
        while True:
            await asyncio.sleep(SWEEP_S)
            now = time.monotonic()
            quiet_since = now - (KEEPALIVE_S - 2 * SWEEP_S)  # sent within KEEPALIVE_S
            for request, outbox in list(self._streams.values()):
                transport = request.transport
                if transport is None or transport.is_closing():
                    outbox.put_nowait(CLIENT_GONE)
                elif outbox.last_write <= quiet_since:
                    outbox.last_write = now  # one keep-alive per quiet period
                    outbox.put_nowait(KEEP_ALIVE)
            if now >= next_idle_check:
                next_idle_check = now + 5.0
                for session in self.sessions.expired(now):
                    log.info("session %s of %s expired", session.id, session.agent)
                    await self._end(session, "expired")

    async def _pump(
        self, request: web.Request, response: web.StreamResponse, outbox: Outbox
    ) -> bool:
        """Write what arrives in `outbox` as SSE events (all that is waiting in one
        write), with keep-alive comments, until the stream is ended (False) or its client
        is gone (True)."""
        self._streams[id(outbox)] = (request, outbox)
        try:
            while True:
                chunk: list[bytes] = []
                for data in await outbox.get_all():
                    if data == END_STREAM:
                        if chunk:
                            await response.write(b"".join(chunk))
                        return False
                    if data == CLIENT_GONE:
                        return True
                    if data == KEEP_ALIVE:
                        chunk.append(b": keep-alive\n\n")
                    else:
                        chunk += (b"event: message\ndata: ", data, b"\n\n")
                outbox.last_write = time.monotonic()
                await response.write(b"".join(chunk))
        except (ConnectionError, RuntimeError):  # aiohttp's ClientConnectionResetError too
            return True
        finally:
            self._streams.pop(id(outbox), None)

    # -- HTTP ------------------------------------------------------------------------------

    async def handle(self, request: web.Request, agent: str) -> web.StreamResponse:
        try:
            if request.method == "POST":
                return await self._post(request, agent)
            if request.method == "GET":
                return await self._get(request, agent)
            if request.method == "DELETE":
                return await self._delete(request, agent)
            raise ProtocolError(
                INVALID_REQUEST,
                f"{request.method} is not used by MCP: POST messages, GET a session's stream, "
                "DELETE a session",
                status=405,
                headers={"Allow": "GET, POST, DELETE"},
            )
        except ProtocolError as exc:
            return self._refuse(None, exc)

    def _refuse(self, request_id: RequestId | None, exc: ProtocolError) -> web.Response:
        self.hooks.protocol_error(exc.code)
        return _json(
            error_message(request_id, exc.code, exc.message, exc.data), exc.status, exc.headers
        )

    async def _post(self, request: web.Request, agent: str) -> web.StreamResponse:
        accept = request.headers.get("Accept", "")
        if _JSON not in accept and "*/*" not in accept and "application/*" not in accept:
            raise ProtocolError(INVALID_REQUEST, "Accept must include application/json", status=406)
        if request.content_type != _JSON:
            raise ProtocolError(
                INVALID_REQUEST, "Content-Type must be application/json", status=415
            )
        message = decode_message(await request.read())
        version_header = request.headers.get(PROTOCOL_VERSION_HEADER)
        session_id = request.headers.get(SESSION_HEADER)
        try:
            if session_id is not None:
                return await self._session_post(request, agent, session_id, version_header, message)
            if not is_modern_request(version_header):
                if message.is_request and message.method == "initialize":
                    return await self._initialize(agent, message)
                raise ProtocolError(
                    INVALID_REQUEST,
                    f"missing {SESSION_HEADER}: send initialize first (protocol "
                    f"{', '.join(SESSION_VERSIONS)}) or make 2026-07-28 requests "
                    f"(MCP-Protocol-Version: {MODERN_VERSIONS[0]} and params._meta)",
                )
            return await self._modern_post(request, agent, message)
        except ProtocolError as exc:
            return self._refuse(message.request_id, exc)

    # -- 2025 eras -------------------------------------------------------------------------

    async def _initialize(self, agent: str, message: Message) -> web.Response:
        params = message.args
        if self.closing:
            raise ProtocolError(
                INVALID_REQUEST,
                "the bridge is shutting down: retry",
                status=503,
                headers={"Retry-After": "1"},
            )
        version = negotiate(params.get("protocolVersion"))
        try:
            session = self.sessions.create(agent, version, params.get("capabilities"))
        except SessionLimit as limit:
            raise ProtocolError(
                INVALID_REQUEST,
                str(limit),
                status=429 if limit.per_agent else 503,
                headers={"Retry-After": "30"},
            ) from None
        session.client_info = params.get("clientInfo")
        await self.hooks.session_opened(session)
        result = {
            "protocolVersion": version,
            "capabilities": self.capabilities,
            "serverInfo": self.server_info,
            "instructions": self.instructions,
        }
        return _json(
            result_message(message.request_id, result), headers={SESSION_HEADER: session.id}
        )

    def _session(self, session_id: str, agent: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None or session.agent != agent:
            raise ProtocolError(
                SESSION_NOT_FOUND,
                "session not found (ended or expired): initialize a new session",
            )
        return session

    async def _session_post(
        self,
        request: web.Request,
        agent: str,
        session_id: str,
        version_header: str | None,
        message: Message,
    ) -> web.StreamResponse:
        session = self._session(session_id, agent)
        check_session_version(version_header, session.version)
        session.touch()
        headers = {SESSION_HEADER: session.id}
        if message.is_response:
            if not session.answered(message):
                log.info("response to unknown or settled request %r on %s", message.id, session.id)
            return web.Response(status=202, headers=headers)
        if message.is_notification:
            self._notified(session, message)
            return web.Response(status=202, headers=headers)
        request_id = message.request_id
        assert request_id is not None
        if message.method == "initialize":
            raise ProtocolError(INVALID_REQUEST, "this session is already initialized")
        if request_id in session.in_flight:
            raise ProtocolError(
                INVALID_REQUEST,
                f"request id {request_id!r} is already in flight on this session: use a new id",
            )
        work = asyncio.ensure_future(self._session_method(session, agent, message))
        session.in_flight[request_id] = work
        try:
            result = await work
        except asyncio.CancelledError:
            if not work.cancelled():  # we, not the client, are being cancelled
                work.cancel()
                raise
            result = None
        finally:
            session.in_flight.pop(request_id, None)
            session.touch()
        if result is None:
            return _json(
                error_message(request_id, REQUEST_CANCELLED, "cancelled by the client"),
                200,
                headers,
            )
        return _json(result_message(request_id, result), headers=headers)

    def _notified(self, session: Session, message: Message) -> None:
        if message.method == "notifications/initialized":
            session.initialized = True
        elif message.method == "notifications/cancelled":
            target = message.args.get("requestId")
            work = session.in_flight.get(target) if isinstance(target, int | str) else None
            if work is not None:
                work.cancel()

    async def _session_method(
        self, session: Session, agent: str, message: Message
    ) -> dict[str, Any]:
        method = message.method
        if method == "ping":
            return {}
        listed = self._listing(method, message.args)
        if listed is not None:
            return listed
        if method == "tools/call":
            call = self._tool_call(agent, message.args, session.version, session.elicitation)
            call.session = session
            outcome = await self._run(call)
            if isinstance(outcome, InputRequired):  # a tool must not ask this of a session
                raise ProtocolError(INTERNAL_ERROR, "input-required result on a session")
            return outcome
        raise ProtocolError(
            METHOD_NOT_FOUND,
            f"method {method!r} not found: this server offers ping, tools/list, tools/call "
            "and (empty) prompt and resource listings",
        )

    _LISTS: ClassVar[dict[str, str]] = {
        "prompts/list": "prompts",
        "resources/list": "resources",
        "resources/templates/list": "resourceTemplates",
    }

    def _listing(self, method: str | None, params: dict[str, Any]) -> dict[str, Any] | None:
        """Methods both eras share: the tool list, the empty prompt and resource lists, and
        not-found answers for reads (-32602 with the URI, SEP-2164). None: not one of them."""
        if method == "tools/list":
            return {"tools": self._tool_list}
        key = self._LISTS.get(method or "")
        if key is not None:
            return {key: []}
        if method == "resources/read":
            uri = params.get("uri")
            raise ProtocolError(INVALID_PARAMS, f"resource not found: {uri!r}", data={"uri": uri})
        if method == "prompts/get":
            raise ProtocolError(INVALID_PARAMS, f"prompt not found: {params.get('name')!r}")
        return None

    # -- GET stream and DELETE -------------------------------------------------------------

    def _stream_request(self, request: web.Request, agent: str) -> Session:
        if is_modern_request(request.headers.get(PROTOCOL_VERSION_HEADER)):
            raise ProtocolError(
                INVALID_REQUEST,
                f"{request.method} is not used in protocol 2026-07-28: every request is a POST",
                status=405,
                headers={"Allow": "POST"},
            )
        session_id = request.headers.get(SESSION_HEADER)
        if session_id is None:
            raise ProtocolError(
                INVALID_REQUEST, f"{request.method} needs the {SESSION_HEADER} of a session"
            )
        session = self._session(session_id, agent)
        check_session_version(request.headers.get(PROTOCOL_VERSION_HEADER), session.version)
        return session

    async def _get(self, request: web.Request, agent: str) -> web.StreamResponse:
        session = self._stream_request(request, agent)
        if "text/event-stream" not in request.headers.get("Accept", ""):
            raise ProtocolError(
                INVALID_REQUEST, "Accept must include text/event-stream", status=406
            )
        if session.stream is not None:
            raise ProtocolError(
                INVALID_REQUEST, "this session's GET stream is already open", status=409
            )
        outbox = Outbox()
        session.stream = outbox
        session.touch()
        response = web.StreamResponse(headers={**_SSE_HEADERS, SESSION_HEADER: session.id})
        client_gone = True
        self.hooks.stream_opened(session)
        try:
            await response.prepare(request)
            await response.write(b": stream open\n\n")
            client_gone = await self._pump(request, response, outbox)
        except (ConnectionError, RuntimeError):
            client_gone = True
        finally:
            session.stream = None
            session.touch()
            if client_gone and not session.ending:
                # Clients that leave on purpose often drop the stream just before their
                # DELETE: wait for it briefly, so that reads as the session ending and
                # only a client that really vanished reads as a transport failure.
                await asyncio.sleep(STREAM_GRACE_S)
            if not session.ending:
                session.fail_pending("the session's GET stream closed", gone=False)
            await self.hooks.stream_closed(session, client_gone=client_gone and not session.ending)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await response.write_eof()
        return response

    async def _delete(self, request: web.Request, agent: str) -> web.StreamResponse:
        session = self._stream_request(request, agent)
        await self._end(session, "deleted")
        return web.Response(status=200, headers={SESSION_HEADER: session.id})

    async def _end(self, session: Session, reason: str) -> None:
        if self.sessions.remove(session.id) is None:
            return
        session.ending = True
        session.fail_pending(f"the session ended ({reason})", gone=True)
        if session.stream is not None:
            session.stream.put_nowait(END_STREAM)
        for work in list(session.in_flight.values()):
            work.cancel()
        await self.hooks.session_closed(session, reason)

    # -- 2026-07-28 ------------------------------------------------------------------------

    async def _modern_post(
        self, request: web.Request, agent: str, message: Message
    ) -> web.StreamResponse:
        duplicated = duplicated_routing_header(request.headers)
        if duplicated is not None:
            raise ProtocolError(HEADER_MISMATCH, f"{duplicated} header appears more than once")
        if message.is_response:
            raise ProtocolError(
                INVALID_REQUEST,
                "protocol 2026-07-28 has no server-to-client requests to answer",
            )
        if message.is_notification:
            requested = request.headers.get(PROTOCOL_VERSION_HEADER)
            if requested not in MODERN_VERSIONS:
                raise unsupported(requested)
            return web.Response(status=202)
        envelope = modern_envelope(message, request.headers)
        method = message.method
        if method == "server/discover":
            result: dict[str, Any] = {
                "supportedVersions": list(SUPPORTED_VERSIONS),
                "capabilities": self.capabilities,
                "instructions": self.instructions,
                "ttlMs": self.list_ttl_ms,
                "cacheScope": "public",
            }
        elif (listed := self._listing(method, message.args)) is not None:
            result = {**listed, "ttlMs": self.list_ttl_ms, "cacheScope": "public"}
        elif method == "tools/call":
            result = await self._modern_call(agent, message, envelope)
        elif method == "subscriptions/listen":
            return await self._listen(request, agent, message)
        elif method in REMOVED_IN_MODERN:
            raise ProtocolError(
                METHOD_NOT_FOUND,
                f"method {method!r} does not exist in protocol {envelope.version}",
            )
        else:
            raise ProtocolError(
                METHOD_NOT_FOUND,
                f"method {method!r} not found: this server offers server/discover, tools/list, "
                "tools/call and (empty) prompt and resource listings",
            )
        result.setdefault("resultType", "complete")
        result["_meta"] = {META_SERVER_INFO: self.server_info}
        return _json(result_message(message.request_id, result))

    async def _listen(
        self, request: web.Request, agent: str, message: Message
    ) -> web.StreamResponse:
        """A `subscriptions/listen` stream: acknowledged with the list-change kinds we
        honour, then held open. Our lists never change, so nothing more is sent until it
        ends: a final result when the bridge stops, nothing when the client leaves."""
        if "text/event-stream" not in request.headers.get("Accept", ""):
            raise ProtocolError(
                INVALID_REQUEST, "subscriptions/listen answers with text/event-stream", status=406
            )
        wanted = message.args.get("notifications", {})
        if not isinstance(wanted, dict):
            raise ProtocolError(INVALID_PARAMS, "notifications must be an object of flags")
        held = self._listening.get(agent, 0)
        if held >= self.sessions.per_agent:
            raise ProtocolError(
                INVALID_REQUEST,
                f"agent {agent!r} already holds {held} listen streams: close one",
                status=429,
            )
        honored = {k: True for k in _LIST_CHANGES if wanted.get(k) is True}
        meta = {META_SUBSCRIPTION_ID: message.request_id}
        ack = {
            "jsonrpc": "2.0",
            "method": "notifications/subscriptions/acknowledged",
            "params": {"notifications": honored, "_meta": meta},
        }
        response = web.StreamResponse(headers=_SSE_HEADERS)
        outbox = Outbox()
        outbox.put_nowait(encode(ack))
        self._listening[agent] = held + 1
        try:
            await response.prepare(request)
            if not await self._pump(request, response, outbox):
                final = {
                    "resultType": "complete",
                    "_meta": {**meta, META_SERVER_INFO: self.server_info},
                }
                await response.write(
                    b"event: message\ndata: " + result_message(message.request_id, final) + b"\n\n"
                )
        except (ConnectionError, RuntimeError):  # the client left: a listen stream just ends
            return response
        finally:
            left = self._listening.get(agent, 1) - 1
            if left > 0:
                self._listening[agent] = left
            else:
                self._listening.pop(agent, None)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await response.write_eof()
        return response

    async def _modern_call(
        self, agent: str, message: Message, envelope: Envelope
    ) -> dict[str, Any]:
        params = message.args
        call = self._tool_call(agent, params, envelope.version, envelope.elicitation)
        token = params.get("requestState")
        responses = params.get("inputResponses")
        if responses is not None and not isinstance(responses, dict):
            raise ProtocolError(INVALID_PARAMS, "inputResponses must be an object")
        if token is not None:
            try:
                call.state = await self.sealer.open(token, agent, call.name, call.arguments)
            except StateRejected as rejected:
                await self.hooks.refused(agent, f"request_state_{rejected.reason}", call.name)
                raise ProtocolError(
                    INVALID_PARAMS,
                    f"requestState rejected ({rejected.reason}): retry the call without it",
                ) from None
            call.input_responses = responses or {}
        elif responses:
            raise ProtocolError(
                INVALID_PARAMS, "inputResponses must come with the requestState they answer"
            )
        outcome = await self._run(call)
        if isinstance(outcome, InputRequired):
            return {
                "resultType": "input_required",
                "inputRequests": outcome.requests,
                "requestState": self.sealer.seal(agent, call.name, call.arguments, outcome.state),
            }
        return outcome

    # -- tools -----------------------------------------------------------------------------

    def _tool_call(
        self, agent: str, params: dict[str, Any], version: str, elicitation: bool
    ) -> ToolCall:
        name = params.get("name")
        if not isinstance(name, str):
            raise ProtocolError(INVALID_PARAMS, "tools/call needs params.name, a string")
        arguments = params.get("arguments")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise ProtocolError(INVALID_PARAMS, "tools/call params.arguments must be an object")
        return ToolCall(agent, name, arguments, version, elicitation)

    async def _run(self, call: ToolCall) -> dict[str, Any] | InputRequired:
        if call.name not in self._tools:
            # An `isError` result, as the official SDK answers (clients and the conformance
            # suite expect it): the model reads it and can pick another tool.
            return tool_error(f"Unknown tool: {call.name} (tools/list names the tools)")
        try:
            outcome = await self.tools.call(call)
        except ToolError as exc:
            return tool_error(str(exc))
        except asyncio.CancelledError:
            raise
        except Exception:
            ref = uuid.uuid4().hex[:12]
            log.exception("tool %s failed (ref %s)", call.name, ref)
            return tool_error(f"internal error in {call.name} (ref {ref} in the log)")
        if isinstance(outcome, InputRequired):
            return outcome
        return tool_result(outcome, msgspec.json.encode(outcome).decode())
