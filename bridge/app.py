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
import signal
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
from .auth import AGENT, admin_auth, agent_auth, flush_refusals, host_guard, refusal_flusher
from .backends import agent_rate_limiter, open_nonces, open_store, store_label
from .config import Settings
from .connections import limit_connections
from .discovery import remove_discovery, write_discovery
from .domain import (
    FLAG_CHANGED,
    FLAGS_STREAM,
    NONCE_STORE_CREATED,
    SECURITY_STREAM,
    SESSION_CLOSED,
    session_stream,
)
from .flags import Flags
from .guard import Guard
from .log import Log
from .mailbox import Mailboxes
from .mcp import McpEndpoint, SessionTable, StateSealer
from .mcp.state import LocalUsedStates, SharedUsedStates, UsedStates
from .metrics import Metrics
from .nodes import PostgresNodes, SoloNodes
from .observability import EventLogger
from .refusals import RefusalLedger
from .routing import Limits, Requests, Router
from .sessions import Presence
from .tools import AgentTools

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
    endpoint: McpEndpoint | None = None
    guard: Guard | None = None
    nodes: SoloNodes | None = None

    async def close(self) -> None:
        """Close everything, each step whatever the previous one raised: the store (and
        its writer lock) must be released even when a stop goes wrong."""
        try:
            if self.nodes is not None:
                await self.nodes.close()
            await self.log.stop_following()
            await self.router.close()
        finally:
            try:
                await self.nonces.close()
                await self.agent_limiter.close()
                self.vault.close()
            finally:
                await self.store.close()


def _load_or_create_key(path: Path, *, fresh: bool) -> bytes:
    if path.exists():
        raw = path.read_bytes().strip()
        try:
            key = base64.b64decode(raw + b"=" * (-len(raw) % 4), altchars=b"-_", validate=True)
        except ValueError:
            key = b""
        if len(key) != 32:  # never use a damaged key, never silently replace it
            raise RuntimeError(
                f"key file {path} is damaged (not 32 bytes of base64url); restore it from backup"
            )
        return key
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
    node = settings.node
    nodes = PostgresNodes(node, settings.database_url) if settings.database_url else SoloNodes(node)
    requests, presence, metrics = Requests(), Presence(node, nodes.alive), Metrics()
    store.commit_observer = metrics.observe_commit
    store.state.observer = metrics.observe_store_failure
    event_logger = EventLogger()
    event_log = Log(
        store, [RegistryProjection(registry), flags, requests, mailboxes, presence, event_logger]
    )
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
        nodes=nodes,
    )
    event_log.on_followed.append(router.on_followed)
    nodes.on_tick = router.check_peers
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
        origin=origin_policy(
            settings.host,
            settings.port,
            extra_hosts=settings.allowed_hosts,
            extra_origins=settings.allowed_origins,
        ),
        refusals=RefusalLedger(settings.refusal_window_s, settings.refusal_burst),
        nodes=nodes,
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
    return app


def _bridge_ctx(settings: Settings) -> Any:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        bridge = await open_bridge(settings)
        flusher: asyncio.Task[None] | None = None
        endpoint: McpEndpoint | None = None
        try:  # any step below that fails (or a SIGTERM meanwhile) still closes the bridge
            request_state_key = _load_or_create_key(settings.keys / "request_state.key", fresh=True)
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
                    request_state_key, ttl_s=settings.request_state_ttl_s, used=_used_states(bridge)
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
    head = await bridge.store.head()
    store_health = bridge.store.health()
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


_CLOSE_TIMEOUT_S = 0.25
_CLOSE_RESERVE_S = 1.5  # 2 x the close timeout, the store's final checkpoint, process exit


def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then stop as a drain (`stop_gracefully`)."""
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve(settings))
    except KeyboardInterrupt:
        pass
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
