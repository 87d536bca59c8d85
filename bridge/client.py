"""Connect an agent to a bridge with the official MCP SDK, every request signed.

async with connect(url, key_id, secret, elicitation_callback=answer) as client:
    result = await client.call_tool("ask", {...})
"""

from __future__ import annotations

from typing import Any

import httpx2
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from security import LighthouseAuth


def connect(
    url: str,
    key_id: str,
    secret: str,
    *,
    mode: str = "legacy",
    read_timeout_s: float = 3900.0,
    **client_kwargs: Any,
) -> Client:
    """An SDK `Client` whose HTTP requests carry our RFC 9421 signature.

    `mode="legacy"` speaks 2025-11-25 (server push); `mode="2026-07-28"` is the single
    exchange protocol. The read timeout must outlast the longest `ask` the agent makes or
    answers, since a pending elicitation counts against it.
    """
    http = httpx2.AsyncClient(
        auth=LighthouseAuth(key_id, secret),
        timeout=httpx2.Timeout(30.0, read=read_timeout_s),
    )
    return Client(streamable_http_client(url, http_client=http), mode=mode, **client_kwargs)
