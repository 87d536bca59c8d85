"""The bare peer for `ask_roundtrip.py`: what a user would hand-roll without Lighthouse.

A minimal official-SDK `MCPServer` under uvicorn that relays one elicitation between two
SDK clients. No authentication, no signatures, no rate limits, no event store, no
fallback, no timeouts beyond the SDK's own:

- the answerer calls tool `register(name)` once; the server keeps that session object;
- the asker calls tool `ask(to, message, schema)`; the server sends `elicitation/create`
  (form mode) to the registered session with `ServerSession.elicit_form` and returns the
  answer as `{"status": action, "content": content, "path": "elicitation"}`.

The push goes over the answerer's standalone GET stream (the SDK client opens it after
`initialize`), which is what the simplest hand-rolled relay gets.

    python benchmarks/_bare_relay.py --port 8799 [--json-response]

uvicorn runs on uvloop when it is installed (`loop="auto"`), as the bridge does.
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings

DEFAULT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
}

STATUS = {"accept": "accepted", "decline": "declined", "cancel": "cancelled"}


def build_server() -> MCPServer:
    server = MCPServer("bare-relay")
    sessions: dict[str, Any] = {}

    @server.tool(description="Register this session as the answerer for `name`.")
    async def register(name: str, ctx: Context) -> dict[str, Any]:
        sessions[name] = ctx.session
        return {"registered": name}

    @server.tool(description="Relay a question to a registered answerer by elicitation.")
    async def ask(
        to: str, message: str, ctx: Context, schema: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        session = sessions.get(to)
        if session is None:
            raise ToolError(f"to: no session registered as {to!r}")
        result = await session.elicit_form(message, schema or DEFAULT_SCHEMA)
        return {"status": STATUS[result.action], "content": result.content, "path": "elicitation"}

    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8799)
    parser.add_argument(
        "--json-response",
        action="store_true",
        help="answer POSTs with a JSON body instead of an SSE stream (what the bridge does)",
    )
    args = parser.parse_args(argv)
    server = build_server()
    app = server.streamable_http_app(
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        max_sessions=None,
        json_response=args.json_response,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
