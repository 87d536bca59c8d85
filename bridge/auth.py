"""aiohttp middlewares that put the security checks in front of `/mcp` and the admin API.

Order for agents, cheapest first so floods cost little: Origin/Host → per-address limit →
body size → signature (parse, key, skew, MAC, digest, then nonce) → session binding →
per-agent limit. Every refusal is a JSON body naming the reason, an event and a metric;
nothing reaches a tool unless all of them passed.
"""

from __future__ import annotations

import ipaddress
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from events import StoreError
from security import RequestView

from .domain import ADMIN_AUTH_FAILED, AUTH_REJECTED, RATE_LIMITED, SECURITY_STREAM
from .unavailable import as_store_error, unavailable, unavailable_response

if TYPE_CHECKING:
    from .app import Bridge

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
AGENT = web.RequestKey("lighthouse_agent", str)
log = logging.getLogger("lighthouse.security")


def client_address(request: web.Request, trusted_proxies: tuple[str, ...]) -> str:
    """The socket peer, or the first untrusted hop of X-Forwarded-For from a trusted proxy."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    address = str(peer[0]) if peer else "unknown"
    if not trusted_proxies or not _trusted(address, trusted_proxies):
        return address
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted_proxies):
            return hop
    return address


def _trusted(address: str, proxies: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(p, strict=False) for p in proxies)


def _refuse(
    status: int, reason: str, headers: dict[str, str] | None = None, error: str = "unauthorized"
) -> web.Response:
    return web.json_response({"error": error, "reason": reason}, status=status, headers=headers)


async def _record(bridge: Bridge, type_: str, data: dict[str, Any]) -> None:
    try:
        await bridge.log.record(
            SECURITY_STREAM, type_, data, actor=data.get("agent") or "anonymous"
        )
    except Exception:  # a store failure must not turn a refusal into a 500
        log.exception("could not record %s", type_)


def agent_auth(bridge_of: Callable[[web.Request], Bridge]) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != "/mcp":
            return await handler(request)
        bridge = bridge_of(request)
        refusal = await _check_agent(bridge, request)
        if refusal is not None:
            return refusal
        return await handler(request)

    return middleware


async def _check_agent(bridge: Bridge, request: web.Request) -> web.Response | None:
    s = bridge.settings
    remote = client_address(request, s.trusted_proxies)
    base = {"remote": remote, "method": request.method, "path": request.path}
    origin = bridge.origin.check(request.host, request.headers.get("Origin"))
    if origin is not None:
        return await _reject(bridge, origin.status, origin.reason, base, error="forbidden")
    if len(request.headers.getall("Mcp-Session-Id", ())) > 1:
        # One session per request: layers that pick the first or the last of several
        # headers would disagree about which session (and whose) the request acts in.
        return await _reject(bridge, 400, "duplicate_session_header", base, error="bad_request")
    by_address = await bridge.address_limiter.hit(remote)
    if not by_address.allowed:
        bridge.metrics.rate_limited.labels("address").inc()
        await _record(
            bridge,
            RATE_LIMITED,
            {**base, "scope": "address", "agent": None, "retry_after": by_address.retry_after},
        )
        return _refuse(429, "rate_limited", by_address.headers(), error="too_many_requests")
    if (request.content_length or 0) > s.max_body_bytes:
        return await _reject(bridge, 413, "body_too_large", base, error="too_large")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return await _reject(bridge, 413, "body_too_large", base, error="too_large")
    view = RequestView(
        request.method,
        request.rel_url.raw_path,
        request.rel_url.raw_query_string,
        request.headers,
        body,
    )
    try:
        verdict = await bridge.verifier.verify(view)
    except Exception as exc:  # the nonce store failed: 503 with its reason, not a 500
        error = as_store_error(exc, "nonce store")
        if error is None:
            raise
        bridge.store.state.failed("nonce_store", error, hold_s=10.0)
        return unavailable_response(error)
    bridge.store.state.succeeded("nonce_store")
    if not hasattr(verdict, "nonce"):  # a Rejection
        data = {**base, "agent": verdict.agent, "key_id": verdict.key_id}
        return await _reject(
            bridge, verdict.status, verdict.reason.value, data, public=verdict.public_reason
        )
    agent = verdict.agent
    session_id = request.headers.get("mcp-session-id")
    if session_id is not None:
        owner = bridge.presence.owner(session_id)
        if owner is not None and owner != agent:
            data = {**base, "agent": agent, "key_id": verdict.key_id, "session_owner": owner}
            return await _reject(bridge, 401, "session_hijack", data)
    by_agent = await bridge.agent_limiter.hit(agent)
    if not by_agent.allowed:
        bridge.metrics.rate_limited.labels("agent").inc()
        await _record(
            bridge,
            RATE_LIMITED,
            {**base, "scope": "agent", "agent": agent, "retry_after": by_agent.retry_after},
        )
        return _refuse(429, "rate_limited", by_agent.headers(), error="too_many_requests")
    request[AGENT] = agent
    return None


async def _reject(
    bridge: Bridge,
    status: int,
    reason: str,
    data: dict[str, Any],
    *,
    public: str | None = None,
    error: str = "unauthorized",
) -> web.Response:
    bridge.metrics.auth_rejections.labels(reason).inc()
    await _record(
        bridge,
        AUTH_REJECTED,
        {"agent": None, "key_id": None, **data, "reason": reason, "status": status},
    )
    log.info(
        "rejected %s %s from %s: %s",
        data.get("method"),
        data.get("path"),
        data.get("remote"),
        reason,
    )
    return _refuse(status, public or reason, error=error)


def admin_auth(bridge_of: Callable[[web.Request], Bridge]) -> Any:
    """Bearer token on `/feature_flags` and `/admin/…`; agent keys never grant these."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not (request.path == "/feature_flags" or request.path.startswith("/admin/")):
            return await handler(request)
        bridge = bridge_of(request)
        remote = client_address(request, bridge.settings.trusted_proxies)
        origin = bridge.origin.check(request.host, request.headers.get("Origin"))
        if origin is not None:
            bridge.metrics.admin_auth_failures.inc()
            await _record(
                bridge,
                ADMIN_AUTH_FAILED,
                {"remote": remote, "reason": origin.reason, "path": request.path, "agent": None},
            )
            return _refuse(origin.status, origin.reason, error="forbidden")
        result = bridge.admin.check(remote, request.headers.get("Authorization"))
        if not result.ok:
            bridge.metrics.admin_auth_failures.inc()
            if result.reason != "throttled":  # a blocked client cannot flood the log
                await _record(
                    bridge,
                    ADMIN_AUTH_FAILED,
                    {
                        "remote": remote,
                        "reason": result.reason,
                        "path": request.path,
                        "agent": None,
                    },
                )
            headers = (
                {"Retry-After": str(int(result.retry_after) + 1)} if result.retry_after else None
            )
            return _refuse(result.status, result.reason or "invalid_token", headers)
        try:
            return await handler(request)
        except (StoreError, sqlite3.Error) as exc:  # the store (or the vault beside it)
            error = as_store_error(exc, "admin request")
            if error is None or not unavailable(error):
                raise
            return unavailable_response(error, detail=True)

    return middleware
