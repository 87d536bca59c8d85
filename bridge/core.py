"""The bridge's state: every subsystem in one `Bridge`, opened in dependency order.

`open_bridge` builds it (store → projections replayed from the log → security → router);
`bridge.app` serves it on one port, and every feature that needs it (admin routes, audit,
repair, the console) imports the type from here, so none of them imports the app.
"""

from __future__ import annotations

import base64
import logging
import os
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Final

from aiohttp import web

from events import GroupCommitStore
from security import (
    AdminAuth,
    DataKeys,
    KeyRegistry,
    NonceStore,
    OriginPolicy,
    RateLimiter,
    SecretVault,
    SignatureVerifier,
    address_rate_limiter,
    key_lookup,
    load_or_create_admin_token,
    origin_policy,
    vault_row_count,
)

from .agents import AgentService, RegistryProjection
from .backends import agent_rate_limiter, open_nonces, open_store, open_vault, store_label
from .config import Settings
from .domain import (
    AGENT_FORGOTTEN,
    FLAG_CHANGED,
    FLAGS_STREAM,
    NONCE_STORE_CREATED,
    SECURITY_STREAM,
    VAULT_IMPORTED,
)
from .flags import Flags
from .guard import Guard
from .log import Log
from .mailbox import Mailboxes
from .mcp import McpEndpoint
from .metrics import Metrics
from .nodes import PostgresNodes, SoloNodes
from .observability import EventLogger
from .refusals import RefusalLedger
from .routing import Limits, Requests, Router
from .sealing import OpenFailure, Sealer
from .sessions import Presence

if TYPE_CHECKING:  # imported by the PostgreSQL vault only: SQLite needs no psycopg
    from security.pgvault import ImportReport

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
    vault: SecretVault
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


REQUEST_STATE_KEY_ID: Final = "rs:request_state"


def request_state_key(vault: SecretVault, legacy_file: Path) -> bytes:
    """The key that seals 2026-07-28 `requestState`: one per store, kept in the vault.

    Wrapped by the master key like every secret there, so every bridge of a shared store
    seals and opens with the same key without one more file to copy, and a retry may land
    on any bridge. Made once, by whichever bridge needs it first (the vault's insert decides
    a race). Earlier releases kept it in `request_state.key` beside the store: that key is
    taken over once, so states in flight across an upgrade stay valid; a damaged file is
    refused, never replaced.
    """
    key = vault.get(REQUEST_STATE_KEY_ID)
    if key is not None:
        return key
    made = _read_key_file(legacy_file) if legacy_file.exists() else os.urandom(32)
    return vault.put_if_absent(REQUEST_STATE_KEY_ID, made)


def _read_key_file(path: Path) -> bytes:
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


async def open_bridge(settings: Settings) -> Bridge:
    """Open the store, replay the log into every projection, and build the security stack."""
    fresh = not settings.db.exists()
    store = await open_store(settings)
    try:
        return await _assemble(settings, store, fresh)
    except BaseException:
        await store.close()
        raise


def content_sealer(store_id: str, vault: SecretVault, metrics: Metrics) -> Sealer:
    """The encoding stage for this store, its faults counted for the alert rules."""

    def opened_badly(failure: OpenFailure) -> None:
        metrics.decryption_failures.labels(failure.type).inc()

    return Sealer(
        store_id,
        DataKeys(vault),
        on_seal_failure=metrics.encryption_failures.inc,
        on_open_failure=opened_badly,
    )


async def _assemble(settings: Settings, store: GroupCommitStore, fresh: bool) -> Bridge:
    registry, flags, mailboxes = KeyRegistry(), Flags(), Mailboxes()
    node = settings.node
    nodes = PostgresNodes(node, settings.database_url) if settings.database_url else SoloNodes(node)
    requests, presence, metrics = Requests(), Presence(node, nodes.alive), Metrics()
    store.commit_observer = metrics.observe_commit
    store.state.observer = metrics.observe_store_failure
    event_logger = EventLogger()
    # The vault opens before replay: sealed contents are opened as the log is replayed. A
    # vault with rows is never given a new master key, and a wrong key stops start-up here.
    vault = open_vault(
        settings, fresh_install=fresh, never_import=await _imports_refused(settings, store)
    )
    try:
        sealer = content_sealer(store.store_id, vault, metrics)
    except BaseException:
        vault.close()
        raise
    event_log = Log(
        store,
        [RegistryProjection(registry), flags, requests, mailboxes, presence, event_logger],
        sealer=sealer,
    )
    try:
        replayed = await event_log.replay()
    except BaseException:
        vault.close()
        raise
    event_logger.live = True  # one JSON log line per new fact of interest, not the history
    if settings.database_url:  # other bridges append too: keep the projections current
        event_log.start_following()
    nonces = await open_nonces(settings, fresh_install=fresh or not registry.agents)
    verifier = SignatureVerifier(
        key_lookup(registry, vault, cached_only=True), nonces, skew=int(settings.skew_s)
    )
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
    nodes.presence = presence
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
    imported = getattr(vault, "imported", None)  # a shared vault's import of a local one
    if imported is not None:
        await _record_vault_import(bridge, imported)
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


async def _imports_refused(settings: Settings, store: GroupCommitStore) -> frozenset[str]:
    """Key ids a shared vault must never take from a local vault file: those a recorded
    forget destroyed (a stale copy must not bring erased contents back). Read only when
    there is a local vault to import from."""
    if not settings.database_url or not vault_row_count(settings.db):
        return frozenset()
    forgets = await store.read_all(1, limit=None, types=[AGENT_FORGOTTEN])
    return frozenset(k for r in forgets for k in r.data.get("key_ids", []) if isinstance(k, str))


async def _record_vault_import(bridge: Bridge, report: ImportReport) -> None:
    """Secrets that moved from a local vault file into the shared one: an operator must be
    able to tell from the log when, from where and which key ids (never the secrets)."""
    data = {
        "source": report.source,
        "imported_key_ids": report.imported,
        "skipped": len(report.local) - len(report.imported),
        "node": bridge.settings.node,
    }
    await bridge.log.record(SECURITY_STREAM, VAULT_IMPORTED, data, actor="bridge")


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
