"""Our MCP server: Streamable HTTP for protocols 2025-06-18, 2025-11-25 and 2026-07-28.

`wire` (JSON-RPC messages), `protocol` (the era rules, no I/O), `sessions` (sessions, GET
streams, server→client requests), `state` (sealed single-use requestState), `tools` (what
the application provides) and `server` (the aiohttp transport). Nothing here knows about
routing, mailboxes or the event store.
"""

from .server import McpEndpoint
from .sessions import ElicitOutcome, PushFailed, Session, SessionTable
from .state import StateSealer
from .tools import InputRequired, SessionHooks, ToolCall, ToolError, ToolHost, ToolSpec

__all__ = [
    "ElicitOutcome",
    "InputRequired",
    "McpEndpoint",
    "PushFailed",
    "Session",
    "SessionHooks",
    "SessionTable",
    "StateSealer",
    "ToolCall",
    "ToolError",
    "ToolHost",
    "ToolSpec",
]
