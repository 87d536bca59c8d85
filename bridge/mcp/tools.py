"""What the endpoint needs from the application: tools to call and session events.

The protocol package knows nothing of routing or the store; the bridge implements
`ToolHost` (tool specs and calls) and `SessionHooks` (sessions and streams opening and
closing, refusals worth recording) and hands them to the endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .sessions import Session


class ToolError(Exception):
    """A tool call that failed in a way the caller can act on: answered as an `isError`
    result carrying this message (never a stack trace)."""


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None = None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "inputSchema": self.input_schema,
        }
        if self.output_schema is not None:
            out["outputSchema"] = self.output_schema
        return out


@dataclass(slots=True)
class ToolCall:
    """One verified call: the agent comes from the request signature, never the body."""

    agent: str
    name: str
    arguments: dict[str, Any]
    version: str
    elicitation: bool  # the client declared form elicitation
    session: Session | None = None  # 2025 eras
    input_responses: dict[str, Any] = field(default_factory=dict)  # 2026-07-28 retry
    state: dict[str, Any] | None = None  # the verified requestState payload

    @property
    def modern(self) -> bool:
        return self.session is None

    @property
    def session_key(self) -> str:
        """Where mailbox hand-outs are acknowledged: the session, or the modern agent."""
        return self.session.id if self.session is not None else f"modern:{self.agent}"


@dataclass(frozen=True, slots=True)
class InputRequired:
    """A 2026-07-28 tool's request for client input: `requests` keyed by the ids the
    client answers under, `state` sealed into `requestState` by the endpoint."""

    requests: dict[str, dict[str, Any]]
    state: dict[str, Any]


class ToolHost(Protocol):
    specs: list[ToolSpec]

    async def call(self, call: ToolCall) -> dict[str, Any] | InputRequired: ...


class SessionHooks(Protocol):
    async def session_opened(self, session: Session) -> None: ...

    async def session_closed(self, session: Session, reason: str) -> None: ...

    def stream_opened(self, session: Session) -> None: ...

    async def stream_closed(self, session: Session, *, client_gone: bool) -> None: ...

    async def refused(self, agent: str, reason: str, detail: str) -> None: ...

    def protocol_error(self, code: int) -> None: ...
