"""The MCP face of the bridge: the SDK's server, our tools, and session tracking.

The official SDK does all protocol work; this module only turns tool calls into router and
mailbox operations and keeps `Presence` in step with the SDK's sessions. The caller's
identity always comes from the verified signature (placed in the ASGI scope by the auth
middleware), never from tool arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from mcp.server._otel import OpenTelemetryMiddleware
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver import Context, MCPServer, RequestStateSecurity
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import (
    CallToolResult,
    ElicitRequest,
    ElicitRequestFormParams,
    InputRequiredResult,
    TextContent,
)

from .domain import (
    MAILBOX_ACKNOWLEDGED,
    MESSAGE_DELIVERED,
    REQUEST_DELIVERED,
    SESSION_CLOSED,
    SESSION_OPENED,
    mailbox_stream,
    message_stream,
    request_stream,
    session_stream,
)
from .log import Log
from .mailbox import Mailboxes, MailItem
from .metrics import Metrics
from .routing import AnswerRefused, Router, refusal_text
from .sessions import MODERN_PROTOCOL, LiveSession, Presence

AGENT_SCOPE_KEY = "lighthouse.agent"


def agent_of(ctx: Context) -> str:
    request = ctx.request_context.request
    agent = request.scope.get(AGENT_SCOPE_KEY) if request is not None else None
    if not agent:  # the auth middleware guarantees it; refuse rather than guess
        raise ToolError("unauthenticated")
    return agent


def scope_for(agent: str) -> dict[str, Any]:
    """ASGI scope entries for an authenticated agent (the SDK binds sessions to `user`)."""
    token = AccessToken(token="signed-request", client_id=agent, scopes=["agent"])
    return {AGENT_SCOPE_KEY: agent, "user": AuthenticatedUser(token)}


def _result(payload: dict[str, Any]) -> CallToolResult:
    import json

    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(payload))],
        structured_content=payload,
    )


class McpHost:
    """Builds the MCPServer and owns the glue between SDK callbacks and bridge state."""

    def __init__(
        self,
        log: Log,
        router: Router,
        mailboxes: Mailboxes,
        presence: Presence,
        metrics: Metrics,
        *,
        request_state_key: bytes,
        max_wait_s: float = 25.0,
        max_sessions: int = 10_000,
    ) -> None:
        self.log = log
        self.router = router
        self.mailboxes = mailboxes
        self.presence = presence
        self.metrics = metrics
        self.max_wait_s = max_wait_s
        router.wake = mailboxes.wake
        self.server = MCPServer(
            "lighthouse",
            instructions="Coordination bridge: ask other agents questions, answer theirs.",
            request_state_security=RequestStateSecurity(
                keys=[request_state_key],
                ttl=router.max_timeout_s + 120,
                bind_principal=lambda rc: (
                    rc.request.scope.get(AGENT_SCOPE_KEY) if rc.request is not None else None
                ),
            ),
            middleware=[self._track_sessions],
        )
        self.server.streamable_http_app(
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            json_response=True,
            max_sessions=max_sessions,
        )
        # The SDK's OpenTelemetry middleware opens a span per message even with no tracer
        # installed (~5 % of server CPU under load); the SDK documents dropping it.
        self.server.middleware[:] = [
            m for m in self.server.middleware if not isinstance(m, OpenTelemetryMiddleware)
        ]
        self.session_manager = self.server.session_manager
        self._register_tools()

    # -- sessions -------------------------------------------------------------------------

    async def _track_sessions(self, ctx: Any, call_next: Callable[..., Any]) -> Any:
        result = await call_next(ctx)
        if ctx.method == "notifications/initialized" and ctx.request is not None:
            await self._session_opened(ctx)
        return result

    async def _session_opened(self, ctx: Any) -> None:
        agent = ctx.request.scope.get(AGENT_SCOPE_KEY)
        session_id = ctx.request.headers.get("mcp-session-id")
        if not agent or not session_id:
            return
        caps = ctx.session.client_capabilities
        protocol = ctx.request.headers.get("mcp-protocol-version", "2025-06-18")
        live = LiveSession(
            session_id, agent, protocol, bool(caps and caps.elicitation), ctx.session
        )
        self.presence.open(live)
        self.metrics.sessions.labels(protocol).inc()
        connection = ctx.session._connection
        connection.exit_stack.push_async_callback(self._session_closed, live)
        await self.log.record(
            session_stream(session_id),
            SESSION_OPENED,
            {
                "agent": agent,
                "session_id": session_id,
                "protocol": protocol,
                "elicitation": live.elicitation,
            },
            actor=agent,
        )

    async def _session_closed(self, live: LiveSession) -> None:
        if self.presence.close(live.session_id) is None:
            return
        self.metrics.sessions.labels(live.protocol).dec()
        await self.log.record(
            session_stream(live.session_id),
            SESSION_CLOSED,
            {
                "agent": live.agent,
                "session_id": live.session_id,
            },
            actor=live.agent,
        )
        await self.router.session_gone(live.session_id)

    # -- tools ----------------------------------------------------------------------------

    def _register_tools(self) -> None:
        tool = self.server.tool

        @tool(
            description="Ask another agent (NAME, role:NAME or capability:NAME) a question; "
            "`schema` is a flat JSON schema for the answer form. Give your own `request_id` "
            "(1-64 of A-Z a-z 0-9 _ -) to re-attach with the same call after a lost "
            "connection; `wait: false` returns at once with status pending."
        )
        async def ask(
            to: str,
            message: str,
            schema: dict[str, Any],
            ctx: Context,
            timeout_s: float | None = None,
            request_id: str | None = None,
            wait: bool = True,
        ) -> dict[str, Any]:
            caller = agent_of(ctx)
            return await self._call(
                "ask",
                self.router.ask(
                    caller, to, message, schema, timeout_s, request_id=request_id, wait=wait
                ),
            )

        @tool(
            description="Status, path and answer of a request you asked or were asked; "
            "`wait_s` (<= 25) long-polls until it changes."
        )
        async def get_request(request_id: str, ctx: Context, wait_s: float = 0) -> dict[str, Any]:
            caller = agent_of(ctx)
            return await self._call(
                "get_request", self.router.get_request(caller, request_id, wait_s)
            )

        @tool(description="Long-poll for messages and requests addressed to you.")
        async def wait_for_messages(
            ctx: Context,
            timeout_s: float = 25.0,
            max: int = 10,
            ack: list[str] | None = None,
        ) -> CallToolResult | InputRequiredResult:
            return await self._call("wait_for_messages", self._wait(ctx, timeout_s, max, ack))

        @tool(description="Send a message to an agent (or role:/capability: to every match).")
        async def send_message(to: str, content: str, ctx: Context) -> dict[str, Any]:
            return await self._call("send_message", self._send(ctx, to, content))

        @tool(description="Answer a request delivered by wait_for_messages.")
        async def respond(
            request_id: str, action: str, ctx: Context, content: dict[str, Any] | None = None
        ) -> dict[str, Any]:
            return await self._call("respond", self._respond(ctx, request_id, action, content))

        @tool(description="Agents known to the bridge, their roles and whether they are online.")
        async def list_agents(ctx: Context) -> dict[str, Any]:
            agent_of(ctx)
            return await self._call("list_agents", self._list_agents())

    async def _call(self, tool: str, work: Any) -> Any:
        try:
            result = await work
        except ToolError:
            self.metrics.tool_calls.labels(tool, "refused").inc()
            raise
        except Exception as exc:
            text = refusal_text(exc)
            if text is not None:  # a refusal or an unavailable store, said clearly
                self.metrics.tool_calls.labels(tool, "refused").inc()
                raise ToolError(text) from None
            self.metrics.tool_calls.labels(tool, "error").inc()
            raise
        self.metrics.tool_calls.labels(tool, "ok").inc()
        return result

    async def _respond(
        self, ctx: Context, request_id: str, action: str, content: dict[str, Any] | None
    ) -> dict[str, Any]:
        agent = agent_of(ctx)
        result = await self.router.answer(request_id, agent, action, content, "legacy")
        return {"request_id": request_id, "status": result["status"]}

    async def _send(self, ctx: Context, to: str, content: str) -> dict[str, Any]:
        return await self.router.send_message(agent_of(ctx), to, content)

    async def _list_agents(self) -> dict[str, Any]:
        return {
            "agents": [
                {
                    "name": a.agent,
                    "roles": a.roles,
                    "capabilities": a.capabilities,
                    "online": self.presence.online(a.agent),
                    "elicitation": self.presence.elicitation_capable(a.agent),
                }
                for a in sorted(self.router.registry.agents.values(), key=lambda a: a.agent)
                if not a.revoked
            ]
        }

    # -- wait_for_messages ------------------------------------------------------------------

    async def _wait(
        self, ctx: Context, timeout_s: float, max_items: int, ack: list[str] | None
    ) -> CallToolResult | InputRequiredResult:
        agent = agent_of(ctx)
        if not isinstance(max_items, int) or not 1 <= max_items <= 100:
            raise ToolError("max: must be an integer from 1 to 100")
        if not isinstance(timeout_s, int | float) or timeout_s < 0:
            raise ToolError("timeout_s: must be a number >= 0")
        modern = ctx.protocol_version == MODERN_PROTOCOL
        caps = ctx.client_capabilities
        elicits = bool(caps and caps.elicitation)
        session_key = (ctx.headers or {}).get("mcp-session-id") or f"modern:{agent}"
        answered = await self._take_input_responses(ctx, agent) if modern else []
        await self._acknowledge(agent, session_key, ack)
        deadline = time.monotonic() + min(float(timeout_s), self.max_wait_s)
        with self._waiting(agent, modern, elicits):
            while True:
                if modern and elicits:
                    offers = self.router.offers_for(agent, max_items)
                    if offers:
                        await self.router.mark_offered(offers)
                        return InputRequiredResult(
                            input_requests={
                                r.request_id: ElicitRequest(
                                    params=ElicitRequestFormParams(
                                        message=r.message, requested_schema=r.schema
                                    )
                                )
                                for r in offers
                            },
                            request_state=",".join(r.request_id for r in offers),
                        )
                items = self.mailboxes.pending(agent, max_items)
                if items:
                    await self._hand_out(agent, session_key, items)
                    return _result({"messages": [i.payload for i in items], "answered": answered})
                remaining = deadline - time.monotonic()
                if remaining <= 0 or answered:
                    return _result({"messages": [], "answered": answered})
                await self.mailboxes.wait_for_change(agent, remaining)

    @contextlib.contextmanager
    def _waiting(self, agent: str, modern: bool, elicits: bool) -> Any:
        """A 2026-07-28 client is reachable only while it holds a wait call."""
        if not modern:
            yield
            return
        client = self.presence.seen_modern(agent, elicits)
        client.waiting += 1
        try:
            yield
        finally:
            client.waiting -= 1
            client.last_seen = time.time()

    async def _take_input_responses(self, ctx: Context, agent: str) -> list[dict[str, Any]]:
        """A retried 2026-07-28 call carries answers to the requests it was handed."""
        responses = ctx.input_responses or {}
        outcomes = []
        for request_id, response in responses.items():
            action = getattr(response, "action", None)
            content = getattr(response, "content", None)
            try:
                result = await self.router.answer(
                    request_id, agent, str(action), content, "elicitation"
                )
                outcomes.append({"request_id": request_id, "status": result["status"]})
            except AnswerRefused as refused:
                outcomes.append({"request_id": request_id, "refused": refused.reason})
        return outcomes

    async def _acknowledge(self, agent: str, session_key: str, ack: list[str] | None) -> None:
        try:
            data = self.mailboxes.acknowledgement(agent, session_key, ack)
        except ValueError as exc:
            raise ToolError(str(exc)) from None
        if data is not None:
            await self.log.record(mailbox_stream(agent), MAILBOX_ACKNOWLEDGED, data, actor=agent)

    async def _hand_out(self, agent: str, session_key: str, items: list[MailItem]) -> None:
        await asyncio.gather(
            *(
                self.log.record(
                    message_stream(i.item_id) if i.kind == "message" else request_stream(i.item_id),
                    MESSAGE_DELIVERED if i.kind == "message" else REQUEST_DELIVERED,
                    {
                        "item": i.item_id,
                        "to": agent,
                        "session_id": session_key,
                        "path": "legacy",
                        **(
                            {"message_id": i.item_id}
                            if i.kind == "message"
                            else {"request_id": i.item_id}
                        ),
                    },
                    actor="bridge",
                )
                for i in items
            )
        )
