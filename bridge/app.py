"""Composition: one `Bridge` holding every subsystem, and the aiohttp app that serves it.

`open_bridge` builds the state in dependency order (store → projections replayed from the
log → security → router → MCP host); `create_app` wires it to one port. Each resource is
opened in a cleanup context so a failed start closes what it opened.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from aiohttp import web

from events import GroupCommitStore
from events.chain import write_secret_file
from security import (
    AdminAuth,
    KeyRegistry,
    NonceStore,
    OriginPolicy,
    RateLimiter,
    SignatureVerifier,
    SQLiteSecretVault,
    address_rate_limiter,
    key_lookup,
    load_or_create_admin_token,
    origin_policy,
)

from .agents import AgentService, RegistryProjection
from .asgi import CLIENT_GONE, ASGIHandler, asgi_handler, run_in_cleanup_ctx
from .auth import AGENT, admin_auth, agent_auth, flush_refusals, host_guard, refusal_flusher
from .backends import agent_rate_limiter, open_nonces, open_store, store_label
from .config import Settings
from .connections import limit_connections
from .discovery import remove_discovery, write_discovery
from .domain import FLAG_CHANGED, FLAGS_STREAM, NONCE_STORE_CREATED, SECURITY_STREAM
from .flags import Flags
from .guard import Guard
from .log import Log
from .mailbox import Mailboxes
from .mcp_host import McpHost, scope_for
from .metrics import Metrics
from .observability import EventLogger
from .refusals import RefusalLedger
from .routing import Limits, Requests, Router
from .sessions import Presence

log = logging.getLogger("lighthouse")


def package_version() -> str:
    try:
        return version("lighthouse-bridge")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass
class Bridge:
    settings: Settings
    store: GroupCommitStore
    log: Log
    registry: KeyRegistry
    flags: Flags
    mailboxes: Mailboxes
    requests: Requests
    presence: Presence
    metrics: Metrics
    router: Router
    agents: AgentService
    vault: SQLiteSecretVault
    nonces: NonceStore
    verifier: SignatureVerifier
    agent_limiter: RateLimiter
    address_limiter: RateLimiter
    admin: AdminAuth
    origin: OriginPolicy
    refusals: RefusalLedger
    host: McpHost | None = None
    mcp_handler: ASGIHandler | None = None
    guard: Guard | None = None

    async def close(self) -> None:
        await self.log.stop_following()
        await self.router.close()
        await self.nonces.close()
        await self.agent_limiter.close()
        self.vault.close()
        await self.store.close()


def _load_or_create_key(path: Path, *, fresh: bool) -> bytes:
    if path.exists():
        raw = path.read_bytes().strip()
        return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    if not fresh:
        raise RuntimeError(f"key file {path} is missing for an existing store; restore it")
    key = os.urandom(32)
    write_secret_file(path, base64.urlsafe_b64encode(key).rstrip(b"=") + b"\n")
    return key


async def open_bridge(settings: Settings) -> Bridge:
    """Open the store, replay the log into every projection, and build the security stack."""
    fresh = not settings.db.exists()
    store = await open_store(settings)
    try:
        return await _assemble(settings, store, fresh)
    except BaseException:
        await store.close()
        raise


async def _assemble(settings: Settings, store: GroupCommitStore, fresh: bool) -> Bridge:
    registry, flags, mailboxes = KeyRegistry(), Flags(), Mailboxes()
    requests, presence, metrics = Requests(), Presence(), Metrics()
    store.commit_observer = metrics.observe_commit
    event_logger = EventLogger()
    event_log = Log(store, [RegistryProjection(registry), flags, requests, mailboxes, event_logger])
    replayed = await event_log.replay()
    event_logger.live = True  # one JSON log line per new fact of interest, not the history
    if settings.database_url:  # other bridges append too: keep the projections current
        event_log.start_following()
    vault = SQLiteSecretVault.open(
        settings.db, settings.master_key_file, fresh_install=fresh or not registry.agents
    )
    nonces = await open_nonces(settings, fresh_install=fresh or not registry.agents)
    verifier = SignatureVerifier(key_lookup(registry, vault), nonces, skew=int(settings.skew_s))
    token, _ = load_or_create_admin_token(
        settings.admin_token_file, {"LIGHTHOUSE_ADMIN_TOKEN": settings.admin_token or ""}
    )
    router = Router(
        event_log,
        requests,
        registry,
        presence,
        flags,
        metrics,
        default_timeout_s=settings.default_timeout_s,
        max_timeout_s=settings.max_timeout_s,
        limits=Limits(
            max_content_bytes=settings.max_content_bytes,
            max_open_per_caller=settings.max_open_per_caller,
            max_open_per_recipient=settings.max_open_per_recipient,
            max_fanout=settings.max_fanout,
        ),
    )
    bridge = Bridge(
        settings=settings,
        store=store,
        log=event_log,
        registry=registry,
        flags=flags,
        mailboxes=mailboxes,
        requests=requests,
        presence=presence,
        metrics=metrics,
        router=router,
        agents=AgentService(event_log, registry, vault, settings.key_grace_s),
        vault=vault,
        nonces=nonces,
        verifier=verifier,
        agent_limiter=agent_rate_limiter(settings),
        address_limiter=address_rate_limiter(settings.ip_rate_per_s, settings.ip_burst),
        admin=AdminAuth(token),
        origin=origin_policy(settings.host, settings.port, extra_origins=settings.allowed_origins),
        refusals=RefusalLedger(settings.refusal_window_s, settings.refusal_burst),
    )
    if nonces.created_new and nonces.born_at > 0:
        await _record_new_nonce_store(bridge)
    bridge.guard = router.elicitation_observer = Guard(
        event_log,
        flags,
        metrics,
        max_error_rate=settings.guard_error_rate,
        max_p99_ms=settings.guard_p99_ms,
        min_samples=settings.guard_min_samples,
        window_s=settings.guard_window_s,
    )
    if not settings.elicitation_default and flags.state.elicitation_enabled:
        await event_log.append_events(
            FLAGS_STREAM,
            "serve",
            [
                (
                    FLAG_CHANGED,
                    {
                        "old": flags.state.to_dict(),
                        "new": {**flags.state.to_dict(), "elicitation_enabled": False},
                        "reason": "started with --no-elicitation",
                    },
                )
            ],
            expected_version=flags.version,
        )
    log.info(
        "store %s opened: %d events replayed, %d agents",
        store_label(settings),
        replayed,
        len(registry.agents),
    )
    return bridge


async def _record_new_nonce_store(bridge: Bridge) -> None:
    """A new nonce store cannot know the nonces its predecessor saw: requests signed before
    its birth are refused (`predates_nonce_store`) until they are stale anyway, and the
    operator is told, because a lost nonce file on an existing store is an incident."""
    nonces = bridge.nonces
    data = {
        "path": str(bridge.settings.nonce_db),
        "born_at": nonces.born_at,
        "reason": "nonce store missing for a store with registered agents",
    }
    await bridge.log.record(SECURITY_STREAM, NONCE_STORE_CREATED, data, actor="bridge")
    log.warning(
        "nonce store %s was missing and has been recreated: requests signed before now "
        "are refused (a captured request cannot be replayed)",
        bridge.settings.nonce_db,
    )


BRIDGE = web.AppKey("bridge", Bridge)


def create_app(settings: Settings) -> web.Application:
    from .admin import add_admin_routes
    from .console import add_console_routes

    def bridge_of(request: web.Request) -> Bridge:
        return request.app[BRIDGE]

    app = web.Application(
        middlewares=[host_guard(bridge_of), agent_auth(bridge_of), admin_auth(bridge_of)],
        client_max_size=settings.max_body_bytes,
    )
    app.cleanup_ctx.append(_bridge_ctx(settings))
    app.router.add_route("*", "/mcp", _mcp)
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    add_admin_routes(app, bridge_of)
    add_console_routes(app, bridge_of)
    from .cli import _extensions

    for add_routes in _extensions("add_routes"):
        add_routes(app, bridge_of)
    app.on_shutdown.append(_on_shutdown)
    return app


def _bridge_ctx(settings: Settings) -> Any:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        bridge = await open_bridge(settings)
        request_state_key = _load_or_create_key(settings.keys / "request_state.key", fresh=True)
        bridge.host = McpHost(
            bridge.log,
            bridge.router,
            bridge.mailboxes,
            bridge.presence,
            bridge.metrics,
            request_state_key=request_state_key,
            max_wait_s=settings.max_wait_s,
            max_sessions=settings.max_sessions,
        )
        bridge.mcp_handler = asgi_handler(
            _watch_sessions(bridge.host.session_manager.handle_request, bridge),
            scope_extras=lambda request: scope_for(request[AGENT]),
        )
        app[BRIDGE] = bridge
        flusher = asyncio.create_task(refusal_flusher(bridge), name="refusal-flusher")
        moved = await bridge.router.adopt_open_requests()
        if moved:
            log.info("moved %d elicitations of the previous run to the legacy path", moved)
        bridge.router.spawn(
            bridge.mailboxes.expire_forever(bridge.log, settings.message_retention_s)
        )
        async for _ in run_in_cleanup_ctx(bridge.host.session_manager.run)(app):
            try:
                yield
            finally:
                await bridge.router.close()
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        await flush_refusals(bridge, final=True)
        await bridge.close()

    return ctx


def _watch_sessions(inner: Any, bridge: Bridge) -> Any:
    """ASGI layer: bind new session ids to their agent and count open GET streams."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        # The first value, as aiohttp and the SDK (Starlette) read it.
        raw_sid = next((v for k, v in scope["headers"] if k == b"mcp-session-id"), b"")
        sid = raw_sid.decode() or None
        agent = scope.get("lighthouse.agent")

        async def watch_send(message: Any) -> None:
            if message["type"] == "http.response.start" and sid is None and agent:
                new = dict(message.get("headers", [])).get(b"mcp-session-id")
                if new and message["status"] < 400:
                    bridge.presence.claim(new.decode(), agent)
            await send(message)

        streaming = scope["method"] == "GET" and sid is not None
        ending = bridge.presence.get(sid) if scope["method"] == "DELETE" else None
        if ending is not None:
            ending.ending = True
        if streaming:
            bridge.presence.stream_opened(sid)
        try:
            await inner(scope, receive, watch_send)
        finally:
            if streaming:
                bridge.presence.stream_closed(sid)
                if scope["extensions"][CLIENT_GONE].is_set():
                    await bridge.router.stream_lost(sid)

    return app


async def _mcp(request: web.Request) -> web.StreamResponse:
    bridge = request.app[BRIDGE]
    assert bridge.mcp_handler is not None
    return await bridge.mcp_handler.handle(request)


async def _health(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    head = await bridge.store.head()
    return web.json_response(
        {
            "status": "draining" if bridge.router.draining else "ok",
            "version": package_version(),
            # Overrides and who changed what are behind the admin API (`/feature_flags`).
            "flags": bridge.flags.public(),
            "store": {
                "position": head.position,
                "head_hash": head.hash,
                "store_id": bridge.store.store_id,
            },
            "sessions": bridge.presence.counts(),
            "open_requests": len(bridge.requests.open),
        }
    )


async def _metrics(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    state = bridge.flags.state
    bridge.metrics.elicitation_enabled.set(1 if state.elicitation_enabled else 0)
    bridge.metrics.rollout_percent.set(state.rollout_percent)
    return web.Response(
        body=bridge.metrics.render(), headers={"Content-Type": bridge.metrics.content_type}
    )


async def _on_shutdown(app: web.Application) -> None:
    """Stop routing to elicitation, let asks in flight finish (up to the grace period),
    then end the streams still open; the store is flushed by the cleanup context."""
    bridge = app.get(BRIDGE)
    if bridge is None or bridge.mcp_handler is None:
        return
    bridge.router.draining = True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bridge.settings.shutdown_grace_s / 2
    while bridge.router.waiting_callers() and loop.time() < deadline:
        await asyncio.sleep(0.05)
    await bridge.mcp_handler.on_shutdown(app)


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (a dependency except on Windows): the bridge is bound by
    its event loop, and uvloop takes ~10-25 % off the server CPU per ask."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM; then stop accepting, finish in-flight calls, flush.

    `web.run_app`, spelled out, for one reason: the per-address connection cap needs the
    runner's server before the listening socket opens (`connections.limit_connections`).
    """
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve(settings))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        main.cancel()
        with contextlib.suppress(asyncio.CancelledError, web.GracefulExit):
            loop.run_until_complete(main)
        _cancel_all(loop)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _serve(settings: Settings) -> None:
    runner = web.AppRunner(
        create_app(settings),
        handle_signals=True,
        access_log=None,
        shutdown_timeout=settings.shutdown_grace_s,
        # aiohttp closes a connection whose next request (the first one included) has not
        # fully arrived within this: the header deadline (and the keep-alive idle time).
        keepalive_timeout=settings.header_timeout_s,
        # After a refusal sent before the body was read, aiohttp reads and discards the rest
        # so the client sees the answer: for 2 s, not its default 10 (a slow body's hold).
        lingering_time=2.0,
    )
    await runner.setup()
    try:
        metrics = runner.app[BRIDGE].metrics
        assert runner.server is not None
        limit_connections(
            runner.server,
            settings.max_connections_per_address,
            exempt=settings.trusted_proxies,
            on_refused=lambda _: metrics.connections_refused.inc(),
        )
        # aiohttp's default accept queue (128) overflowed with 1,000 agents connecting at
        # once (kernel ListenOverflows), and dropped handshakes surfaced as reset POSTs
        # that killed SDK client sessions. uvicorn uses 2048; the kernel caps it at somaxconn.
        await web.TCPSite(runner, settings.host, settings.port, backlog=4096).start()
        with contextlib.suppress(OSError):  # the CLI finds the token without it too (--db)
            write_discovery(settings.port, settings.db, settings.admin_token_file)
        print(
            f"lighthouse serving on http://{settings.host}:{settings.port} "
            f"(store {store_label(settings)})",
            flush=True,
        )
        while True:
            await asyncio.sleep(3600)
    finally:
        remove_discovery(settings.port)
        await runner.cleanup()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
