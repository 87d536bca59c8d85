"""Client-side signing: an ``httpx2.Auth`` for the MCP SDK and an aiohttp middleware.

Both use :func:`security.signatures.sign_request`, the same profile code the server
verifies with. The ``http-message-signatures`` package is not used here, because its
client integrations take fixed signing options: one nonce for every request (so every
request after the first would be a replay) and one component list (ours depends on the
request: ``@query`` only with a query, ``mcp-session-id`` only once the SDK has a
session). The package is the independent reference in the interop tests instead.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Generator

import aiohttp
import httpx2
from yarl import URL

from security.keys import decode_secret
from security.signatures import sign_request

__all__ = ["LighthouseAuth", "signing_middleware"]


class LighthouseAuth(httpx2.Auth):
    """Signs every request (``Mcp-Session-Id`` and body digest included).

    Use with the SDK::

        auth = LighthouseAuth(key_id, secret)
        async with httpx2.AsyncClient(auth=auth) as http, \\
                streamable_http_client(url, http_client=http) as (read, write, *_):
            ...

    The body is needed for the digest, so streamed request bodies are read first
    (``requires_request_body``); the SDK's JSON-RPC posts are small.
    """

    requires_request_body = True

    def __init__(
        self,
        key_id: str,
        secret: str | bytes,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.key_id = key_id
        self._secret = secret if isinstance(secret, bytes) else decode_secret(secret)
        self._clock = clock

    def _sign(self, request: httpx2.Request) -> None:
        raw = request.url.raw_path.decode("ascii")
        path, _, query = raw.partition("?")
        created = int(self._clock()) if self._clock is not None else None
        request.headers.update(
            sign_request(
                request.method,
                path,
                query,
                request.headers,
                request.content,
                self.key_id,
                self._secret,
                created=created,
            )
        )

    def auth_flow(
        self, request: httpx2.Request
    ) -> Generator[httpx2.Request, httpx2.Response, None]:
        self._sign(request)
        yield request

    async def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        self._sign(request)
        yield request


def signing_middleware(key_id: str, secret: str | bytes) -> aiohttp.ClientMiddlewareType:
    """An aiohttp client middleware (``ClientSession(middlewares=[...])``) that signs
    each request, retries and redirects included (each attempt gets a fresh nonce)."""
    key = secret if isinstance(secret, bytes) else decode_secret(secret)

    async def middleware(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        payload = request.body
        if payload is None:
            body = b""
        elif isinstance(payload, bytes | bytearray):
            body = bytes(payload)
        else:  # an aiohttp Payload; as_bytes() buffers it (the digest needs every byte)
            body = await payload.as_bytes()
        url: URL = request.url
        for name in ("Signature-Input", "Signature", "Content-Digest"):
            request.headers.popall(name, None)
        request.headers.update(
            sign_request(
                request.method,
                url.raw_path,
                url.raw_query_string,
                request.headers,
                body,
                key_id,
                key,
            )
        )
        return await handler(request)

    return middleware
