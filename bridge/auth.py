"""aiohttp middlewares that put the security checks in front of `/mcp` and the admin API.

Order for agents, cheapest first so floods cost little: Origin/Host → per-address limit →
body size → signature (parse, key, skew, MAC, digest, then nonce) → session binding →
per-agent limit. Every refusal is a JSON body naming the reason, an event and a metric;
nothing reaches a tool unless all of them passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from events import NewEvent, StoreError
from security import (
    ConsoleSession,
    ConsoleSessions,
    Reason,
    Rejection,
    RequestView,
    SecretNotLoaded,
    VaultError,
    bearer_token,
)

from .domain import ADMIN_AUTH_FAILED, AUTH_REJECTED, RATE_LIMITED, SECURITY_STREAM
from .unavailable import as_store_error, unavailable, unavailable_response
from .vault_io import off_loop

if TYPE_CHECKING:
    from .core import Bridge

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
AGENT = web.RequestKey("lighthouse_agent", str)
OPERATOR = web.RequestKey("lighthouse_operator", str)
"""Who made an admin call through the console (`console:<name>`), set by `admin_auth`."""
CONSOLE_SESSIONS = web.AppKey("console_sessions", ConsoleSessions)
CONSOLE_COOKIE = "lh_console"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
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


_MAX_PATH = 256  # a refused request's path is attacker-chosen: keep a bounded prefix


async def _record(
    bridge: Bridge, type_: str, source: str, reason: str, data: dict[str, Any]
) -> None:
    """Record a refusal within the write budget (`refusals.RefusalLedger`): the first ones
    of a window individually, the rest as one aggregated fact when the window ends."""
    path = data.get("path")
    if isinstance(path, str) and len(path) > _MAX_PATH:
        data = {**data, "path": path[:_MAX_PATH], "path_truncated": True}
    if not bridge.refusals.note(type_, source, reason, data):
        return
    try:
        await bridge.log.record(
            SECURITY_STREAM, type_, data, actor=data.get("agent") or "anonymous"
        )
    except Exception:  # a store failure must not turn a refusal into a 500
        log.exception("could not record %s", type_)


async def flush_refusals(bridge: Bridge, *, final: bool = False) -> int:
    """Write the aggregated facts of the windows that ended; returns how many."""
    summaries = bridge.refusals.due(final=final)
    if not summaries:
        return 0
    events = [
        NewEvent(type=s.type, data=s.data, actor=s.data.get("agent") or "anonymous")
        for s in summaries
    ]
    try:
        await bridge.log.append(SECURITY_STREAM, events)
    except Exception:
        log.exception("could not record %d aggregated refusals", len(events))
        return 0
    return len(events)


async def refusal_flusher(bridge: Bridge) -> None:
    """Runs for the bridge's lifetime: writes each window's aggregates when it ends."""
    while True:
        await asyncio.sleep(max(0.05, bridge.refusals.next_boundary() - time.time()))
        await flush_refusals(bridge)


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


class _BodyTooSlow(Exception):
    """The body did not arrive at the minimum rate (a slow-body attack holds a
    connection and a buffer for as long as the server waits)."""


async def read_body(request: web.Request, *, min_rate: float, grace_s: float) -> bytes:
    """`request.read()` (so handlers read the cached bytes) with a deadline that moves
    with the bytes received: after ``grace_s`` the body must keep arriving at
    ``min_rate`` bytes/s on average. Raises `_BodyTooSlow` when it does not."""
    content = request.content
    if content.is_eof() or (
        request.content_length is not None and content.total_bytes >= request.content_length
    ):
        return await request.read()  # already buffered (the common case): no watchdog
    loop = asyncio.get_running_loop()
    started = loop.time()
    reading = asyncio.ensure_future(request.read())
    try:
        while True:
            received = request.content.total_bytes
            left = started + grace_s + received / min_rate - loop.time()
            if left <= 0:
                raise _BodyTooSlow
            done, _ = await asyncio.wait({reading}, timeout=min(left, 1.0))
            if done:
                return reading.result()
    finally:
        if not reading.done():
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reading


def _has_body(request: web.Request) -> bool:
    return (
        bool(request.content_length)
        or "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    )


async def _check_agent(bridge: Bridge, request: web.Request) -> web.StreamResponse | None:
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
            remote,
            "address",
            {**base, "scope": "address", "agent": None, "retry_after": by_address.retry_after},
        )
        return _unread(
            _refuse(429, "rate_limited", by_address.headers(), error="too_many_requests")
        )
    if (request.content_length or 0) > s.max_body_bytes:
        return await _reject(bridge, 413, "body_too_large", base, error="too_large")
    head = RequestView(
        request.method, request.rel_url.raw_path, request.rel_url.raw_query_string, request.headers
    )
    # The signature covers the digest header, not the body: a forged or unsigned request
    # is refused before the server waits for a single byte of its body.
    try:
        headed = await _check_headers(bridge, head, _has_body(request))
    except StoreError as exc:  # a shared vault out of reach (key lookup): 503, not a 500
        return _backend_failed(bridge, "secret_vault", exc)
    except VaultError as exc:  # the row is there but does not decrypt: damage, not the caller
        log.error("secret vault: %s", exc)  # names the key id, never a secret
        return web.json_response(
            {"error": "internal", "reason": "secret_vault_damaged"}, status=500
        )
    bridge.store.state.succeeded("secret_vault")
    if isinstance(headed, Rejection):
        return await _reject_signature(bridge, headed, base)
    try:
        body = await read_body(request, min_rate=s.body_min_rate, grace_s=s.body_grace_s)
    except web.HTTPRequestEntityTooLarge:
        return await _reject(bridge, 413, "body_too_large", base, error="too_large")
    except _BodyTooSlow:
        return await _reject(bridge, 408, "body_too_slow", base, error="request_timeout")
    view = RequestView(head.method, head.path, head.query, head.headers, body)
    verdict: Any = bridge.verifier.check_body(headed, view)
    if not isinstance(verdict, Rejection):
        try:
            verdict = await bridge.verifier.claim(verdict)
        except Exception as exc:  # the nonce store failed: 503 with its reason, not a 500
            error = as_store_error(exc, "nonce store")
            if error is None:
                raise
            return _backend_failed(bridge, "nonce_store", error)
        bridge.store.state.succeeded("nonce_store")
    if isinstance(verdict, Rejection):
        return await _reject_signature(bridge, verdict, base)
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
            agent,
            "agent",
            {**base, "scope": "agent", "agent": agent, "retry_after": by_agent.retry_after},
        )
        return _refuse(429, "rate_limited", by_agent.headers(), error="too_many_requests")
    request[AGENT] = agent
    return None


async def _check_headers(bridge: Bridge, head: RequestView, has_body: bool) -> Any:
    """The verifier's header check, which looks up cached secrets only: a secret read for
    the first time comes from the vault in a worker thread (`vault_io`), then the (pure)
    check runs again. A live key whose row is missing from the vault is refused as the
    verifier refuses a key without a secret (checking again would only ask again)."""
    try:
        return bridge.verifier.check_headers(head, has_body=has_body)
    except SecretNotLoaded as missing:
        key_id = missing.key_id
    if await off_loop(lambda: bridge.vault.get(key_id), "reading an agent's key") is None:
        return Rejection(Reason.UNKNOWN_KEY, 401, None, key_id)
    return bridge.verifier.check_headers(head, has_body=has_body)


def _backend_failed(bridge: Bridge, component: str, error: StoreError) -> web.Response:
    """A shared backend of the checks failed: shown on /health until a request succeeds
    (or 10 s pass), and the client told to retry."""
    bridge.store.state.failed(component, error, hold_s=10.0)
    return unavailable_response(error)


def _unread(response: web.Response) -> web.Response:
    """Close the connection after a refusal sent before the body was read: otherwise the
    server would go on reading (and waiting for) a body it has already refused."""
    response.force_close()
    return response


async def _reject_signature(
    bridge: Bridge, verdict: Rejection, base: dict[str, Any]
) -> web.Response:
    data = {**base, "agent": verdict.agent, "key_id": verdict.key_id}
    return await _reject(
        bridge, verdict.status, verdict.reason.value, data, public=verdict.public_reason
    )


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
        str(data.get("remote")),
        reason,
        {"agent": None, "key_id": None, **data, "reason": reason, "status": status},
    )
    log.debug(
        "rejected %r %r from %s: %s",
        data.get("method"),
        data.get("path"),
        data.get("remote"),
        reason,
    )
    return _unread(_refuse(status, public or reason, error=error))


def _is_admin_path(path: str) -> bool:
    return path == "/feature_flags" or path.startswith("/admin/")


def console_session(request: web.Request) -> ConsoleSession | None:
    """The console session named by the request's cookie, if it is live."""
    sessions = request.app.get(CONSOLE_SESSIONS)
    return None if sessions is None else sessions.get(request.cookies.get(CONSOLE_COOKIE))


def _console_refusal(request: web.Request, session: ConsoleSession) -> str | None:
    """Why a console call may not proceed: a state-changing one needs Origin and CSRF."""
    if request.method in _SAFE_METHODS:
        return None
    if request.headers.get("Origin") is None:  # browsers send it on every POST/DELETE
        return "missing_origin"
    if not ConsoleSessions.csrf_ok(session, request.headers.get(CSRF_HEADER)):
        return "csrf_failed"
    return None


def admin_auth(bridge_of: Callable[[web.Request], Bridge]) -> Any:
    """Bearer token on `/feature_flags` and `/admin/…`; agent keys never grant these.

    A valid token is always accepted, even from an address that is throttled: the kill
    switch must work during the incident it exists for. Only wrong tokens count towards
    the throttle (a 256-bit token cannot be guessed anyway; the throttle only keeps a
    guesser from burning CPU), and requests without any token — a cross-site `<img>` —
    are refused without counting. Every failure is recorded within the refusal budget.

    A console session cookie (see `bridge.console`) stands in for the token when no
    `Authorization` header is sent; a state-changing call must then also carry the
    session's CSRF token and an Origin (which `bridge.origin` has already checked).
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not _is_admin_path(request.path):
            return await handler(request)
        bridge = bridge_of(request)
        remote = client_address(request, bridge.settings.trusted_proxies)
        origin = bridge.origin.check(request.host, request.headers.get("Origin"))
        if origin is not None:
            return await refuse_admin(bridge, remote, request.path, origin.reason, 403)
        session = None if "Authorization" in request.headers else console_session(request)
        if session is not None:
            refused = _console_refusal(request, session)
            if refused is not None:
                return await refuse_admin(bridge, remote, request.path, refused, 403)
            request[OPERATOR] = f"console:{session.operator}"
            return await _admin_handler(handler, request)
        result = bridge.admin.check(remote, request.headers.get("Authorization"))
        if not result.ok:
            return await refuse_admin(
                bridge,
                remote,
                request.path,
                result.reason or "invalid_token",
                result.status,
                result.retry_after,
            )
        return await _admin_handler(handler, request)

    return middleware


async def _admin_handler(handler: Handler, request: web.Request) -> web.StreamResponse:
    """An admin route whose store (or the vault beside it) fails answers JSON 503."""
    try:
        return await handler(request)
    except (StoreError, sqlite3.Error) as exc:
        error = as_store_error(exc, "admin request")
        if error is None or not unavailable(error):
            raise
        return unavailable_response(error, detail=True)


async def refuse_admin(
    bridge: Bridge,
    remote: str,
    path: str,
    reason: str,
    status: int,
    retry_after: float | None = None,
) -> web.Response:
    """Count, record (within the refusal budget) and refuse a failed admin authentication;
    the console's sign-in uses it too, so its failures look like any admin failure."""
    bridge.metrics.admin_auth_failures.inc()
    data = {"remote": remote, "reason": reason, "path": path, "agent": None}
    await _record(bridge, ADMIN_AUTH_FAILED, remote, reason, data)
    headers = {"Retry-After": str(int(retry_after) + 1)} if retry_after else None
    error = "forbidden" if status == 403 else "unauthorized"
    if status == 429:
        error = "too_many_requests"
    return _unread(_refuse(status, reason, headers, error=error))


def host_guard(bridge_of: Callable[[web.Request], Bridge]) -> Any:
    """The Host/Origin check on every other route (`/health`, `/metrics`, unknown paths):
    a DNS-rebinding page must not read them either. `/metrics` is for the loopback
    interface only unless the operator set a metrics token, then for its bearer only."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/mcp" or _is_admin_path(request.path):
            return await handler(request)  # checked (and recorded) by their own middleware
        bridge = bridge_of(request)
        remote = client_address(request, bridge.settings.trusted_proxies)
        base = {"remote": remote, "method": request.method, "path": request.path}
        origin = bridge.origin.check(request.host, request.headers.get("Origin"))
        if origin is not None:
            return await _reject(bridge, origin.status, origin.reason, base, error="forbidden")
        if request.path == "/metrics":
            reason = metrics_refusal(
                remote, request.headers.get("Authorization"), bridge.settings.metrics_token
            )
            if reason is not None:
                return await _reject(bridge, 403 if reason == "not_loopback" else 401, reason, base)
        return await handler(request)

    return middleware


def metrics_refusal(remote: str, authorization: str | None, token: str | None) -> str | None:
    """Why a `/metrics` scrape is refused, or None. Metrics name agents and show load:
    with no token they are served to loopback clients only (a scraper on the host or a
    sidecar); with a token, to its bearer from anywhere (and only to it)."""
    if token:
        offered = bearer_token(authorization)
        if offered is None:
            return "missing_token"
        if not hmac.compare_digest(offered.encode(), token.encode()):
            return "invalid_token"
        return None
    try:
        loopback = ipaddress.ip_address(remote).is_loopback
    except ValueError:
        loopback = False
    return None if loopback else "not_loopback"
