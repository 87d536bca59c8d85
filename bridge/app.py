"""The aiohttp app that serves a `Bridge` (bridge.core) on one port, and its lifecycle.

`create_app` wires the routes each feature brings (MCP, admin, audit, repair, proofs, the
console); the bridge is opened in a cleanup context so a failed start closes what it
opened; `serve` runs it until a signal and stops it as a drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from events import Head, StoreError

from .auth import AGENT, admin_auth, agent_auth, flush_refusals, host_guard, refusal_flusher
from .backends import store_label
from .config import Settings
from .connections import limit_connections
from .core import BRIDGE, Bridge, open_bridge, package_version, request_state_key
from .discovery import remove_discovery, write_discovery
from .domain import SESSION_CLOSED, session_stream
from .mcp import McpEndpoint, SessionTable, StateSealer
from .mcp.state import LocalUsedStates, SharedUsedStates, UsedStates
from .tools import AgentTools

log = logging.getLogger("lighthouse")

__all__ = ["BRIDGE", "Bridge", "create_app", "open_bridge", "package_version", "serve"]


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
    from . import audit, repair, tlog  # features bring their own routes

    for feature in (repair, audit, tlog):
        feature.add_routes(app, bridge_of)
    return app


def _bridge_ctx(settings: Settings) -> Any:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        bridge = await open_bridge(settings)
        flusher: asyncio.Task[None] | None = None
        endpoint: McpEndpoint | None = None
        try:  # any step below that fails (or a SIGTERM meanwhile) still closes the bridge
            state_key = request_state_key(bridge.vault, settings.keys / "request_state.key")
            tools = AgentTools(
                bridge.log,
                bridge.router,
                bridge.mailboxes,
                bridge.presence,
                bridge.metrics,
                max_wait_s=settings.max_wait_s,
            )
            endpoint = bridge.endpoint = McpEndpoint(
                tools,
                tools,
                SessionTable(
                    prefix=settings.node + ".",  # the balancer's key (deploy/) to this bridge
                    per_agent=settings.max_sessions_per_agent,
                    total=settings.max_sessions,
                    idle_timeout_s=settings.session_idle_timeout_s,
                    # a session that never sent `initialized` is given a minute at most
                    init_timeout_s=min(60.0, settings.session_idle_timeout_s),
                ),
                StateSealer(
                    state_key, ttl_s=settings.request_state_ttl_s, used=_used_states(bridge)
                ),
                server_name="lighthouse",
                server_version=package_version(),
                instructions="Coordination bridge: ask other agents questions, answer theirs.",
            )
            app[BRIDGE] = bridge
            flusher = asyncio.create_task(refusal_flusher(bridge), name="refusal-flusher")
            assert bridge.nodes is not None
            await bridge.nodes.start(
                lambda: bridge.log.applied, f"http://{settings.host}:{settings.port}"
            )
            await _close_orphan_sessions(bridge)
            moved = await bridge.router.adopt_open_requests()
            if moved:
                log.info("moved %d elicitations of the previous run to the legacy path", moved)
            bridge.router.spawn(
                bridge.mailboxes.expire_forever(bridge.log, settings.message_retention_s)
            )
            endpoint.start()
            yield
        finally:
            if endpoint is not None:
                await endpoint.close()
            await bridge.router.close()
            if flusher is not None and not flusher.done():
                flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flusher
            if flusher is not None:
                await flush_refusals(bridge, final=True)
            await bridge.close()

    return ctx


def _used_states(bridge: Bridge) -> UsedStates:
    """Shared when bridges share a store: a 2026-07-28 retry may reach any of them."""
    if bridge.settings.database_url or bridge.settings.redis_url:
        return SharedUsedStates(bridge.nonces)
    return LocalUsedStates()


async def _close_orphan_sessions(bridge: Bridge) -> None:
    """Sessions the log says are open on this node died with its previous run (a kill or
    a crash): record them closed, so no bridge routes to them any longer."""
    for orphan in bridge.presence.orphans():
        await bridge.log.record(
            session_stream(orphan.session_id),
            SESSION_CLOSED,
            {"agent": orphan.agent, "session_id": orphan.session_id, "reason": "bridge_restart"},
            actor="bridge",
        )


async def _mcp(request: web.Request) -> web.StreamResponse:
    bridge = request.app[BRIDGE]
    assert bridge.endpoint is not None
    return await bridge.endpoint.handle(request, request[AGENT])


async def _health(request: web.Request) -> web.Response:
    """`status` is `degraded` (with the store's cause) while the store fails, `draining`
    during a stop, else `ok`; still 200, so a load balancer keeps it while it recovers."""
    bridge = request.app[BRIDGE]
    store_health = bridge.store.health()
    try:
        head = await bridge.store.head()
    except StoreError as exc:  # a shared store out of reach: say so, do not fail /health
        head = Head(bridge.log.applied, "", "")
        store_health = {**store_health, "status": "degraded", "reason": exc.reason}
    status = "ok"
    if store_health["status"] != "ok":
        status = "degraded"
    if bridge.router.draining:
        status = "draining"
    return web.json_response(
        {
            "status": status,
            "reason": store_health["reason"],
            "version": package_version(),
            # Overrides and who changed what are behind the admin API (`/feature_flags`).
            "flags": bridge.flags.public(),
            "store": {
                "position": head.position,
                "head_hash": head.hash,
                "store_id": bridge.store.store_id,
                **store_health,
            },
            "sessions": bridge.presence.counts(),
            "open_requests": len(bridge.requests.open),
            "node": {
                "id": bridge.settings.node,
                # positions committed (by any bridge) not yet applied to this one's state
                "behind_head": max(0, head.position - bridge.log.applied),
                "peers": bridge.nodes.peers() if bridge.nodes is not None else [],
                "remote_sessions": bridge.presence.remote_counts(),
                # 2026-07-28 agents other bridges saw waiting within the window
                "remote_modern": bridge.presence.remote_modern_counts(),
            },
        }
    )


async def _metrics(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    state = bridge.flags.state
    bridge.metrics.elicitation_enabled.set(1 if state.elicitation_enabled else 0)
    bridge.metrics.rollout_percent.set(state.rollout_percent)
    bridge.metrics.store_degraded.set(1 if bridge.store.state.degraded else 0)
    wal = getattr(bridge.store, "wal", None)  # SQLite only
    if wal is not None:
        bridge.metrics.store_wal_frames.set(wal.wal_frames)
    return web.Response(
        body=bridge.metrics.render(), headers={"Content-Type": bridge.metrics.content_type}
    )


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (a dependency except on Windows): the bridge is bound by
    its event loop, and uvloop takes ~10-25 % off the server CPU per ask."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


_GC_GEN0_THRESHOLD = 20_000


def _settle_gc() -> None:
    """Move everything built at start-up (modules, projections, the app) out of the
    collector's reach and collect the young generation less often: a request allocates a
    few hundred short-lived containers, and with the default threshold (700) the cyclic
    collector ran several times per ask (measured: ~4 % of server CPU). Reference
    counting still frees nearly everything at once; cycles wait a little longer."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(_GC_GEN0_THRESHOLD, gen1, gen2)


_CLOSE_TIMEOUT_S = 0.25
_CLOSE_RESERVE_S = 1.5  # 2 x the close timeout, the store's final checkpoint, process exit


def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then stop as a drain (`stop_gracefully`)."""
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    try:
        # Our own handlers take SIGINT/SIGTERM once serving; a Ctrl-C during start-up is
        # still Python's KeyboardInterrupt, and the cleanup below is all it needs.
        with contextlib.suppress(KeyboardInterrupt):
            loop.run_until_complete(_serve(settings))
    finally:
        _cancel_all(loop)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _serve(settings: Settings) -> None:
    """aiohttp's `run_app` closes the listener and idle keep-alive connections before its
    shutdown hooks run, so no answer could reach a stopping bridge. We hold the signal
    ourselves: the bridge drains while it still serves, and only then closes. (Spelled
    out also because the per-address connection cap needs the runner's server before the
    listening socket opens: `connections.limit_connections`.)"""
    runner = web.AppRunner(
        create_app(settings),
        handle_signals=False,
        access_log=None,
        # What is left after the drain (callers still waiting, woken long polls) gets a
        # short shutdown timeout; aiohttp spends it twice (requests, then connections).
        shutdown_timeout=_CLOSE_TIMEOUT_S,
        # aiohttp closes a connection whose next request (the first one included) has not
        # fully arrived within this: the header deadline (and the keep-alive idle time).
        keepalive_timeout=settings.header_timeout_s,
        # After a refusal sent before the body was read, aiohttp reads and discards the rest
        # so the client sees the answer: for 2 s, not its default 10 (a slow body's hold).
        lingering_time=2.0,
    )
    await runner.setup()
    try:
        bridge = runner.app[BRIDGE]
        assert runner.server is not None
        limit_connections(
            runner.server,
            settings.max_connections_per_address,
            exempt=settings.trusted_proxies,
            on_refused=lambda _: bridge.metrics.connections_refused.inc(),
        )
        # aiohttp's default accept queue (128) overflowed with 1,000 agents connecting at
        # once (kernel ListenOverflows), and dropped handshakes surfaced as reset POSTs
        # that killed SDK client sessions. uvicorn uses 2048; the kernel caps it at somaxconn.
        await web.TCPSite(runner, settings.host, settings.port, backlog=4096).start()
        _settle_gc()
        with contextlib.suppress(OSError):  # the CLI finds the token without it too (--db)
            write_discovery(settings.port, settings.db, settings.admin_token_file)
        print(
            f"lighthouse serving on http://{settings.host}:{settings.port} "
            f"(store {store_label(settings)})",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await stop_gracefully(bridge, settings.shutdown_grace_s)
    finally:
        remove_discovery(settings.port)
        await runner.cleanup()


async def stop_gracefully(bridge: Bridge, grace_s: float) -> dict[str, int]:
    """A stop is a drain. New asks and sessions are refused (retryable), answers keep
    arriving; in-flight elicitations get half the grace, then move to the mailbox; asks
    whose callers still wait get the rest of it. Leaves `_CLOSE_RESERVE_S` for closing, so the
    process exits within the grace (Kubernetes kills at its end)."""
    from .admin import run_drain

    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0.0, grace_s - _CLOSE_RESERVE_S)
    router = bridge.router
    router.stopping = True
    assert bridge.endpoint is not None
    bridge.endpoint.closing = True
    waiting = router.waiting_callers()
    drained = await run_drain(bridge, max(0.0, (deadline - loop.time()) / 2), "shutdown")
    while router.waiting_callers() and loop.time() < deadline:
        await asyncio.sleep(0.05)
    report = {
        "asks_waiting_at_stop": waiting,
        "elicitations_finished": drained["finished"],
        "moved_to_mailbox": drained["moved_to_legacy"],
        "asks_still_waiting": router.waiting_callers(),
        "requests_left_open": len(bridge.requests.open),
    }
    log.warning(
        "stopped after drain: %(elicitations_finished)d elicitations finished, "
        "%(moved_to_mailbox)d moved to the mailbox, %(asks_still_waiting)d asks still "
        "waiting (their callers can re-attach), %(requests_left_open)d requests left open",
        report,
    )
    bridge.endpoint.end_streams()
    bridge.mailboxes.wake_all()
    return report


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
