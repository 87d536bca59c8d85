"""Connection limits in front of everything: a client that only opens sockets (and never
authenticates) must not be able to use up the server's file descriptors.

aiohttp has no per-address limit, so one is kept here from the server's own connection
hooks (`web.Server.connection_made` / `connection_lost`, which every `RequestHandler`
calls): a connection beyond ``max_per_address`` from one address is aborted at once (RST,
its descriptor freed), before a byte of it is parsed. Addresses of trusted proxies are
exempt: behind a proxy every client shares its address, and the proxy limits per client
(see the README's reverse-proxy section). Header deadlines are aiohttp's own
``keepalive_timeout`` (it closes a connection whose next request has not fully arrived in
time, the first one included); body deadlines are in `auth.read_body`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web

__all__ = ["limit_connections"]

log = logging.getLogger("lighthouse.security")


def limit_connections(
    server: web.Server,
    max_per_address: int,
    *,
    exempt: tuple[str, ...] = (),
    on_refused: Callable[[str], None] | None = None,
) -> Counter[str]:
    """Install the per-address cap on *server*; returns the live per-address counts."""
    open_by_address: Counter[str] = Counter()
    counted: dict[Any, str] = {}
    networks = [ipaddress.ip_network(p, strict=False) for p in exempt]
    made, lost = server.connection_made, server.connection_lost

    def is_exempt(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in n for n in networks)

    def connection_made(handler: Any, transport: asyncio.Transport) -> None:
        made(handler, transport)
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if peer else "unknown"
        if is_exempt(address):
            return
        if open_by_address[address] >= max_per_address:
            if on_refused is not None:
                on_refused(address)
            transport.abort()
            return
        open_by_address[address] += 1
        counted[handler] = address

    def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
        address = counted.pop(handler, None)
        if address is not None:
            open_by_address[address] -= 1
            if open_by_address[address] <= 0:
                del open_by_address[address]
        lost(handler, exc)

    server.connection_made = connection_made  # type: ignore[method-assign]
    server.connection_lost = connection_lost  # type: ignore[method-assign]
    return open_by_address
