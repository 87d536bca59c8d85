"""Connect an agent to a bridge with the official MCP SDK, every request signed.

async with connect(url, key_id, secret, elicitation_callback=answer) as client:
    result = await client.call_tool("ask", {...})
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx2
from mcp.client import Client
from mcp.client._transport import TransportStreams
from mcp.client.streamable_http import streamable_http_client

from security import LighthouseAuth

# What the SDK client's post task raises when a JSON response to a call still pending at
# exit arrives after the session stopped reading (the bridge answers POSTs with JSON).
_TEARDOWN_RACE = (anyio.BrokenResourceError, anyio.ClosedResourceError)


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
    return Client(_transport(url, http), mode=mode, **client_kwargs)


@contextlib.asynccontextmanager
async def _transport(url: str, http: httpx2.AsyncClient) -> AsyncIterator[TransportStreams]:
    """The SDK transport, minus its teardown race: leaving a client while a call is still
    pending makes the SDK's post task fail to hand over the call's late response, and that
    error would surface from `async with` although nothing was lost (the call had already
    been abandoned). Only an exception group made entirely of that error is dropped."""
    try:
        async with streamable_http_client(url, http_client=http) as streams:
            yield streams
    except BaseExceptionGroup as group:
        _, rest = group.split(_TEARDOWN_RACE)
        if rest is not None:
            raise rest from None
