"""A signing reverse proxy, so clients that cannot sign (the conformance suite, the MCP
Inspector) can be pointed at a bridge that requires RFC 9421 signatures.

Every request is signed with one agent's key by our own signer
(:func:`security.signatures.sign_request`: label ``lh``, ``Content-Digest``,
``mcp-session-id`` when present), then forwarded; the response streams back chunk by
chunk, so an SSE stream reaches the client event by event, not when it ends.

The proxy must not hide what the judges test: ``Host``, ``Origin`` and every ``Mcp-*`` /
``MCP-Protocol-Version`` header pass through unchanged, except that a ``Host`` or
``Origin`` naming the proxy itself (a loopback name on the proxy's port) is rewritten to
the same name on the bridge's port. A rebound ``Host: evil.example`` or a foreign
``Origin`` therefore still reaches the bridge as sent, and the bridge's own 403 is what
the suite sees.

Run standalone (prints the proxy URL, serves until interrupted)::

    LH_SECRET=... python -m tests.judges.signing_proxy --upstream http://127.0.0.1:8765 \\
        --key-id k_0123456789abcdef
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Self
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from security.keys import decode_secret
from security.signatures import sign_request

__all__ = ["ProxiedRequest", "SigningProxy"]

# RFC 9110 §7.6.1 hop-by-hop fields, plus the ones the proxy recomputes for its own hop.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)
# Whatever the client sent here is replaced by the proxy's own signature.
_SIGNATURE_FIELDS = frozenset({"signature", "signature-input", "content-digest"})
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "[::1]"})


@dataclass(frozen=True, slots=True)
class ProxiedRequest:
    """One forwarded exchange, for tests to assert on (what the bridge saw and said)."""

    method: str
    path: str
    host: str | None
    origin: str | None
    protocol_version: str | None
    mcp_method: str | None
    rpc_method: str | None  # `method` of a JSON-RPC request or notification body
    status: int


@dataclass
class SigningProxy:
    """Listens on a free loopback port and forwards to ``upstream`` (``http://host:port``)."""

    upstream: str
    key_id: str
    secret: str | bytes
    host: str = "127.0.0.1"
    port: int = 0
    log: list[ProxiedRequest] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.upstream)
        if parts.scheme != "http" or not parts.hostname or parts.port is None:
            raise ValueError(f"upstream must be http://host:port, got {self.upstream!r}")
        self._upstream_port = parts.port
        self._upstream_base = f"{parts.scheme}://{parts.netloc}"
        self._key = self.secret if isinstance(self.secret, bytes) else decode_secret(self.secret)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def mcp_url(self) -> str:
        return self.url + "/mcp"

    async def start(self) -> Self:
        # No overall timeout: a GET stream legitimately stays open for the whole test.
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        # A client hanging up cancels its handler, which closes the upstream request:
        # the bridge sees the disconnect as it would without the proxy (a GET stream
        # the judge dropped must not stay open on the bridge).
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=2.0,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[union-attr]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _rewrite_host(self, value: str) -> str:
        """``name:proxyport`` (a loopback name) becomes ``name:upstreamport``; else as is."""
        name, sep, port = value.rpartition(":")
        if sep and name.lower() in _LOOPBACK and port == str(self.port):
            return f"{name}:{self._upstream_port}"
        return value

    def _rewrite_origin(self, value: str) -> str:
        scheme, sep, netloc = value.partition("://")
        if not sep or "/" in netloc:
            return value
        rewritten = self._rewrite_host(netloc)
        return value if rewritten == netloc else f"{scheme}://{rewritten}"

    def _outgoing_headers(self, request: web.Request, body: bytes) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in request.headers.items():
            lower = name.lower()
            if lower in _HOP_BY_HOP or lower in _SIGNATURE_FIELDS:
                continue
            if lower == "host":
                value = self._rewrite_host(value)
            elif lower == "origin":
                value = self._rewrite_origin(value)
            headers.add(name, value)
        headers.update(
            sign_request(
                request.method,
                request.rel_url.raw_path,
                request.rel_url.raw_query_string,
                headers,
                body,
                self.key_id,
                self._key,
            )
        )
        return headers

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = self._outgoing_headers(request, body)
        try:
            upstream = await self._session.request(
                request.method,
                self._upstream_base + request.rel_url.raw_path_qs,
                headers=headers,
                data=body if body else None,
                allow_redirects=False,
                # Send exactly the client's fields: no added User-Agent, Accept or
                # Accept-Encoding (a missing Accept is something the judges test).
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        except aiohttp.ClientError as exc:
            return web.json_response(
                {"error": "bad_gateway", "reason": f"bridge unreachable: {exc}"}, status=502
            )
        async with upstream:
            self.log.append(
                ProxiedRequest(
                    request.method,
                    request.rel_url.raw_path,
                    headers.get("Host"),
                    headers.get("Origin"),
                    headers.get("MCP-Protocol-Version"),
                    headers.get("Mcp-Method"),
                    _rpc_method(body),
                    upstream.status,
                )
            )
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    response.headers.add(name, value)
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            # The client or the bridge may hang up mid-stream (a test closing its GET
            # stream): nothing is left to tell anyone, so that ends the exchange quietly.
            with contextlib.suppress(ConnectionResetError, aiohttp.ClientError):
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            return response


def _rpc_method(body: bytes) -> str | None:
    try:
        message = json.loads(body) if body else None
    except ValueError:
        return None
    method = message.get("method") if isinstance(message, dict) else None
    return method if isinstance(method, str) else None


async def _serve(args: argparse.Namespace) -> None:
    secret = os.environ.get(args.secret_env)
    if not secret:
        sys.exit(f"error: set {args.secret_env} to the agent's secret")
    async with SigningProxy(args.upstream, args.key_id, secret, port=args.port) as proxy:
        print(proxy.mcp_url, flush=True)
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="bridge base URL, http://host:port")
    parser.add_argument("--key-id", required=True)
    parser.add_argument("--secret-env", default="LH_SECRET", help="variable holding the secret")
    parser.add_argument("--port", type=int, default=0)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
