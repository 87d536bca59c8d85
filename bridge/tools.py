"""The bridge's MCP tools and its view of sessions, on our own MCP endpoint.

Tool calls become router and mailbox operations; session events keep `Presence` and the
log in step. The caller's identity is always the verified agent of the request (the
endpoint takes it from the signature check), never a tool argument. Arguments are checked
here, at the boundary, and a bad one is a `ToolError` naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from events import StoreError

from .domain import (
    AUTH_REJECTED,
    MAILBOX_ACKNOWLEDGED,
    MESSAGE_DELIVERED,
    REQUEST_DELIVERED,
    SECURITY_STREAM,
    SESSION_CLOSED,
    SESSION_OPENED,
    mailbox_stream,
    message_stream,
    request_stream,
    session_stream,
)
from .log import Log
from .mailbox import Mailboxes, MailItem
from .mcp import InputRequired, Session, ToolCall, ToolError, ToolSpec
from .metrics import Metrics
from .routing import AnswerRefused, AskError, Router, refusal_text
from .sessions import LiveSession, Presence

_STRING = {"type": "string"}
_OBJECT = {"type": "object", "additionalProperties": True}
_RESULT = {"type": "object", "additionalProperties": True}

SPECS = [
    ToolSpec(
        "ask",
        "Ask another agent (NAME, role:NAME or capability:NAME) a question; `schema` is a "
        "flat JSON schema for the answer form. Give your own `request_id` (1-64 of "
        "A-Z a-z 0-9 _ -) to re-attach with the same call after a lost connection; "
        "`wait: false` returns at once with status pending.",
        {
            "type": "object",
            "properties": {
                "to": _STRING,
                "message": _STRING,
                "schema": _OBJECT,
                "timeout_s": {"type": ["number", "null"], "default": None},
                "request_id": {"type": ["string", "null"], "default": None},
                "wait": {"type": "boolean", "default": True},
            },
            "required": ["to", "message", "schema"],
        },
        _RESULT,
    ),
    ToolSpec(
        "get_request",
        "Status, path and answer of a request you asked or were asked; `wait_s` (<= 25) "
        "long-polls until it changes.",
        {
            "type": "object",
            "properties": {
                "request_id": _STRING,
                "wait_s": {"type": "number", "default": 0, "minimum": 0, "maximum": 25},
            },
            "required": ["request_id"],
        },
        _RESULT,
    ),
    ToolSpec(
        "wait_for_messages",
        "Long-poll for messages and requests addressed to you.",
        {
            "type": "object",
            "properties": {
                "timeout_s": {"type": "number", "default": 25.0},
                "max": {"type": "integer", "default": 10, "minimum": 1, "maximum": 100},
                "ack": {"type": ["array", "null"], "items": _STRING, "default": None},
            },
        },
    ),
    ToolSpec(
        "send_message",
        "Send a message to an agent (or role:/capability: to every match).",
        {
            "type": "object",
            "properties": {"to": _STRING, "content": _STRING},
            "required": ["to", "content"],
        },
        _RESULT,
    ),
    ToolSpec(
        "respond",
        "Answer a request delivered by wait_for_messages.",
        {
            "type": "object",
            "properties": {
                "request_id": _STRING,
                "action": {"type": "string", "enum": ["accept", "decline", "cancel"]},
                "content": {"type": ["object", "null"], "default": None},
            },
            "required": ["request_id", "action"],
        },
        _RESULT,
    ),
    ToolSpec(
        "list_agents",
        "Agents known to the bridge, their roles and whether they are online.",
        {"type": "object", "properties": {}},
        _RESULT,
    ),
]


def _arg(args: dict[str, Any], name: str, kinds: type | tuple[type, ...], default: Any) -> Any:
    value = args.get(name, default)
    if value is None and default is None:
        return None
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _as_tuple(kinds)):
        raise ToolError(f"{name}: must be {_kind_name(kinds)}")
    return value


def _as_tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _kind_name(kinds: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        dict: "an object",
        int: "an integer",
        float: "a number",
        list: "a list",
    }
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kinds))


_NUMBER = (int, float)


class AgentTools:
    """`ToolHost` and `SessionHooks` for the MCP endpoint."""

    specs = SPECS

    def __init__(
        self,
        log: Log,
        router: Router,
        mailboxes: Mailboxes,
        presence: Presence,
        metrics: Metrics,
        *,
        max_wait_s: float = 25.0,
        record_refusal: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None,
    ) -> None:
        self.log = log
        self.router = router
        self.mailboxes = mailboxes
        self.presence = presence
        self.metrics = metrics
        self.max_wait_s = max_wait_s
        self._record_refusal = record_refusal
        router.wake = mailboxes.wake
        self._handlers: dict[str, Callable[[ToolCall], Awaitable[Any]]] = {
            "ask": self._ask,
            "wait_for_messages": self._wait,
            "get_request": self._get_request,
            "send_message": self._send,
            "respond": self._respond,
            "list_agents": self._list_agents,
        }

    async def call(self, call: ToolCall) -> dict[str, Any] | InputRequired:
        try:
            result = await self._handlers[call.name](call)
        except ToolError:
            self.metrics.tool_calls.labels(call.name, "refused").inc()
            raise
        except (AskError, AnswerRefused, StoreError) as exc:
            # a refusal, or an unavailable store, said clearly (wording: bridge.routing)
            self.metrics.tool_calls.labels(call.name, "refused").inc()
            raise ToolError(str(refusal_text(exc))) from None
        except Exception:
            self.metrics.tool_calls.labels(call.name, "error").inc()
            raise
        self.metrics.tool_calls.labels(call.name, "ok").inc()
        return result

    # -- session hooks ---------------------------------------------------------------------

    async def session_opened(self, session: Session) -> None:
        live = LiveSession(session.id, session.agent, session.version, session.elicitation, session)
        self.presence.open(live)
        self.metrics.sessions.labels(session.version).inc()
        await self.log.record(
            session_stream(session.id),
            SESSION_OPENED,
            {
                "agent": session.agent,
                "session_id": session.id,
                "protocol": session.version,
                "elicitation": session.elicitation,
                "node": self.presence.node,  # where its stream lives: who may push to it
            },
            actor=session.agent,
        )

    async def session_closed(self, session: Session, reason: str) -> None:
        live = self.presence.get(session.id)
        if live is not None:
            live.ending = True
        if self.presence.close(session.id) is None:
            return
        self.metrics.sessions.labels(session.version).dec()
        with contextlib.suppress(StoreError):  # a closing session must not fail its DELETE
            await self.log.record(
                session_stream(session.id),
                SESSION_CLOSED,
                {"agent": session.agent, "session_id": session.id, "reason": reason},
                actor=session.agent,
            )
        await self.router.session_gone(session.id)

    def stream_opened(self, session: Session) -> None:
        self.presence.stream_opened(session.id)

    async def stream_closed(self, session: Session, *, client_gone: bool) -> None:
        self.presence.stream_closed(session.id)
        if client_gone:
            await self.router.stream_lost(session.id)

    async def refused(self, agent: str, reason: str, detail: str) -> None:
        self.metrics.auth_rejections.labels(reason).inc()
        data = {"agent": agent, "reason": reason, "tool": detail, "status": 400}
        if self._record_refusal is not None:
            await self._record_refusal(AUTH_REJECTED, data)
        else:
            with contextlib.suppress(StoreError):
                await self.log.record(SECURITY_STREAM, AUTH_REJECTED, data, actor=agent)

    def protocol_error(self, code: int) -> None:
        self.metrics.mcp_errors.labels(str(code)).inc()

    # -- tools -----------------------------------------------------------------------------

    async def _ask(self, call: ToolCall) -> dict[str, Any]:
        a = call.arguments
        to = _arg(a, "to", str, "")
        message = _arg(a, "message", str, "")
        schema = _arg(a, "schema", dict, {})
        timeout_s = _arg(a, "timeout_s", _NUMBER, None)
        request_id = _arg(a, "request_id", str, None)
        wait = _arg(a, "wait", bool, True)
        return await self.router.ask(
            call.agent, to, message, schema, timeout_s, request_id=request_id, wait=wait
        )

    async def _get_request(self, call: ToolCall) -> dict[str, Any]:
        a = call.arguments
        request_id = _arg(a, "request_id", str, "")
        wait_s = _arg(a, "wait_s", _NUMBER, 0)
        return await self.router.get_request(call.agent, request_id, wait_s)

    async def _respond(self, call: ToolCall) -> dict[str, Any]:
        a = call.arguments
        request_id = _arg(a, "request_id", str, "")
        action = _arg(a, "action", str, "")
        content = _arg(a, "content", dict, None)
        result = await self.router.answer(request_id, call.agent, action, content, "legacy")
        return {"request_id": request_id, "status": result["status"]}

    async def _send(self, call: ToolCall) -> dict[str, Any]:
        to = _arg(call.arguments, "to", str, "")
        content = _arg(call.arguments, "content", str, "")
        return await self.router.send_message(call.agent, to, content)

    async def _list_agents(self, call: ToolCall) -> dict[str, Any]:
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

    # -- wait_for_messages -----------------------------------------------------------------

    async def _wait(self, call: ToolCall) -> dict[str, Any] | InputRequired:
        agent = call.agent
        a = call.arguments
        timeout_s = _arg(a, "timeout_s", _NUMBER, 25.0)
        max_items = _arg(a, "max", int, 10)
        ack = _arg(a, "ack", list, None)
        if not 1 <= max_items <= 100:
            raise ToolError("max: must be an integer from 1 to 100")
        if timeout_s < 0:
            raise ToolError("timeout_s: must be a number >= 0")
        if ack is not None and not all(isinstance(i, str) for i in ack):
            raise ToolError("ack: must be a list of item ids (strings)")
        modern = call.modern
        elicits = call.elicitation
        answered = await self._take_input_responses(call) if modern else []
        await self._acknowledge(agent, call.session_key, ack)
        deadline = time.monotonic() + min(float(timeout_s), self.max_wait_s)
        with self._waiting(agent, modern, elicits):
            while True:
                if modern and elicits:
                    offers = self.router.offers_for(agent, max_items)
                    if offers:
                        await self.router.mark_offered(offers)
                        return InputRequired(
                            {
                                r.request_id: {
                                    "method": "elicitation/create",
                                    "params": {
                                        "mode": "form",
                                        "message": r.message,
                                        "requestedSchema": r.schema,
                                    },
                                }
                                for r in offers
                            },
                            {"offered": [r.request_id for r in offers]},
                        )
                items = self.mailboxes.pending(agent, max_items)
                if items:
                    await self._hand_out(agent, call.session_key, items)
                    return {"messages": [i.payload for i in items], "answered": answered}
                remaining = deadline - time.monotonic()
                if remaining <= 0 or answered or self.router.stopping:
                    return {"messages": [], "answered": answered}
                await self.mailboxes.wait_for_change(agent, remaining)

    @contextlib.contextmanager
    def _waiting(self, agent: str, modern: bool, elicits: bool) -> Iterator[None]:
        """A 2026-07-28 client is reachable only while it holds a wait call."""
        if not modern:
            yield
            return
        client = self.presence.seen_modern(agent, elicits)
        client.waiting += 1
        try:
            yield
        finally:
            self.presence.left_wait(client)

    async def _take_input_responses(self, call: ToolCall) -> list[dict[str, Any]]:
        """A retried 2026-07-28 call answers the requests its sealed state offered."""
        offered = set((call.state or {}).get("offered", ()))
        outcomes = []
        for request_id, response in call.input_responses.items():
            if request_id not in offered:
                outcomes.append({"request_id": request_id, "refused": "not_offered"})
                continue
            response = response if isinstance(response, dict) else {}
            try:
                result = await self.router.answer(
                    request_id,
                    call.agent,
                    str(response.get("action")),
                    response.get("content"),
                    "elicitation",
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
