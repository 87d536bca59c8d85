"""Consistency repair: check the log, rebuild state from it, close what a crash left open.

A crash (or a rollback) can leave requests with no terminal fact: an elicitation whose
session died with the process, a mailbox request nobody will time out, sessions the log
still shows as open. Repair never rewrites history; it appends compensating facts, each
with `expected_version` set to the stream version it looked at, so a concurrent writer
(the running bridge answering or timing out the same request) makes the append fail
instead of closing a request twice. A damaged chain stops everything unless an operator
explicitly accepts the damage, which is itself recorded.

The work is split so a dry run, a refusal and a clean store touch nothing: `plan_repair`
only reads; `run_repair` applies a plan through a `Log`. The CLI plans on a read-only
open and takes the writer lock only when there is something to write; the admin route
does the same inside the running bridge, where open requests the router still owns (an
asker waiting in this process) are claimed the way the router claims them.

Several bridges on one PostgreSQL store: repair reads their heartbeats (`lh_nodes`, aged by
the database clock) and leaves to each live bridge what it holds — requests it asked
(their deadline timers are its own), pushes on its sessions, the sessions themselves —
reporting them as `live_bridge` with the bridge's node id. Only a dead bridge's work is
resolved, and with expected versions, so a live bridge closing the same request at that
moment makes repair's append fail, never both.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import msgspec

from events import (
    EventStore,
    SqliteEventStore,
    StoreConfig,
    StoreError,
    VerifyReport,
    WrongExpectedVersion,
    verify_with_config,
)

from .display import printable_lines
from .domain import (
    DAMAGE_ACCEPTED,
    OPS_STREAM,
    REPAIR_COMPLETED,
    REQUEST_EXPIRED,
    REQUEST_FELL_BACK,
    REQUEST_ROUTED,
    SESSION_CLOSED,
    SESSION_OPENED,
    STATUS_BY_TERMINAL,
    TERMINAL_TYPES,
    Fact,
    request_stream,
    session_stream,
)

if TYPE_CHECKING:  # kept out of import time: every `lighthouse` command imports this module
    from aiohttp import web

    from security import KeyRegistry

    from .core import Bridge
    from .flags import Flags
    from .log import Log
    from .mailbox import Mailboxes
    from .routing import OpenRequest, Requests

Action = Literal["fall_back", "expire", "pending", "in_flight", "live_bridge", "skipped"]
Progress = Callable[[str, int, int], None]

ACTOR: Final = "repair"
_PAGE: Final = 5000
# verify can race a live writer: a checkpoint signed after its scan looks like damage
_RACY_KINDS: Final = frozenset({"checkpoint_mismatch", "truncated"})
_VERIFY_ATTEMPTS: Final = 3


# -- report shapes -----------------------------------------------------------------------


class ProblemInfo(msgspec.Struct, frozen=True):
    position: int
    kind: str
    detail: str


class Resolution(msgspec.Struct, frozen=True, kw_only=True):
    """What repair did (or, on a dry run, would do) about one open request."""

    request_id: str
    recipient: str
    path: str | None
    action: Action
    reason: str
    deadline: float
    applied: bool = False
    node: str | None = None  # `live_bridge`: the live bridge that holds it


class StateCounts(msgspec.Struct, frozen=True, kw_only=True):
    """The projections rebuilt from the log, as they stood before repair acted."""

    events_replayed: int
    head: int
    agents: int
    revoked_agents: int
    open_requests: int
    mailbox_items: int
    open_sessions: int
    flag_version: int


class RepairReport(msgspec.Struct, kw_only=True):
    status: Literal["clean", "repaired", "would_repair", "refused"]
    dry_run: bool
    chain_ok: bool
    records_checked: int = 0
    last_checkpoint: int = 0
    problems: list[ProblemInfo] = []
    damage: Literal["none", "refused", "would_accept", "accepted", "previously_accepted"] = "none"
    state: StateCounts | None = None
    requests: list[Resolution] = []
    sessions_closed: list[str] = []
    drift: list[str] = []
    head_before: int = 0
    head_after: int = 0
    appended: int = 0
    live_bridges: list[str] = []  # other bridges alive on the store (their work is theirs)

    def ids(self, action: Action) -> list[str]:
        return [r.request_id for r in self.requests if r.action == action]

    def counts(self) -> dict[str, int]:
        actions: tuple[Action, ...] = (
            "fall_back",
            "expire",
            "pending",
            "in_flight",
            "live_bridge",
            "skipped",
        )
        return {a: len(self.ids(a)) for a in actions} | {
            "sessions_closed": len(self.sessions_closed)
        }


# -- rebuilding state from the log --------------------------------------------------------


class _Sessions:
    """Projection: sessions the log shows as opened and never closed."""

    def __init__(self) -> None:
        self.open: dict[str, tuple[str, int]] = {}  # session id -> (agent, position)

    def apply(self, fact: Fact) -> None:
        if fact.type == SESSION_OPENED:
            self.open[fact.data["session_id"]] = (fact.data["agent"], fact.position)
        elif fact.type == SESSION_CLOSED:
            self.open.pop(fact.data["session_id"], None)


class _Damage:
    """Projection: every verify problem an operator has already accepted.

    An accepted cut tail also covers what it causes later: the cut positions stay a gap
    (the store never reuses a position), and checkpoints signed over them mismatch.
    """

    def __init__(self) -> None:
        self.accepted: set[tuple[Any, ...]] = set()
        self.cuts: list[tuple[int, int]] = []  # (last surviving position, highest lost)

    def apply(self, fact: Fact) -> None:
        if fact.type == DAMAGE_ACCEPTED:
            for p in fact.data.get("problems", []):
                self.accepted.add(_damage_key(p["kind"], p["position"]))
            cut = fact.data.get("cut")
            if cut:
                self.cuts.append((cut["after"], cut["through"]))

    def covers(self, kind: str, position: int) -> bool:
        if _damage_key(kind, position) in self.accepted:
            return True
        if kind == "missing":  # the store never reuses the cut positions: they stay a gap
            return any(position == a + 1 for a, _ in self.cuts)
        return kind == "checkpoint_mismatch" and any(a < position <= t for a, t in self.cuts)


def _damage_key(kind: str, position: int) -> tuple[Any, ...]:
    """A cut tail's reported position moves as the log grows again; its kind does not."""
    return (kind,) if kind == "truncated" else (kind, position)


@dataclasses.dataclass
class Snapshot:
    """Fresh projections replayed from positions 1..head, independent of any live state."""

    head: int
    events: int
    registry: KeyRegistry
    flags: Flags
    requests: Requests
    mailboxes: Mailboxes
    sessions: _Sessions
    damage: _Damage

    def counts(self) -> StateCounts:
        agents = self.registry.agents
        return StateCounts(
            events_replayed=self.events,
            head=self.head,
            agents=len(agents),
            revoked_agents=sum(1 for a in agents.values() if a.revoked),
            open_requests=len(self.requests.open),
            mailbox_items=sum(len(self.mailboxes.box(a).items) for a in agents),
            open_sessions=len(self.sessions.open),
            flag_version=self.flags.version,
        )


async def rebuild(store: EventStore, progress: Progress | None = None) -> Snapshot:
    """Replay the log up to the current head into new projections.

    Bounded by the head read at the start, so a live bridge appending meanwhile cannot
    make the replay chase the tail.
    """
    from security import KeyRegistry

    from .agents import RegistryProjection
    from .flags import Flags
    from .mailbox import Mailboxes
    from .routing import Requests
    from .sealing import keyless

    head = (await store.head()).position
    snap = Snapshot(
        head, 0, KeyRegistry(), Flags(), Requests(), Mailboxes(), _Sessions(), _Damage()
    )
    projections = [
        RegistryProjection(snap.registry),
        snap.flags,
        snap.requests,
        snap.mailboxes,
        snap.sessions,
        snap.damage,
    ]
    position = 1
    while position <= head:
        page = await store.read_all(position, limit=_PAGE, to_position=head)
        if not page:
            break
        for r in page:
            fact = Fact(r.position, r.stream, r.type, keyless(r.type, r.data), r.actor, r.time)
            for projection in projections:
                projection.apply(fact)
        snap.events += len(page)
        position = page[-1].position + 1
        if progress is not None:
            progress("replaying", snap.events, head)
    return snap


# -- planning -----------------------------------------------------------------------------


@dataclasses.dataclass
class Plan:
    """What repair found; `requests`/`sessions` carry the stream version each was read at."""

    verify: VerifyReport
    damage: str
    snapshot: Snapshot | None = None
    requests: list[tuple[Resolution, int]] = dataclasses.field(default_factory=list)
    sessions: list[tuple[str, str, int]] = dataclasses.field(default_factory=list)
    drift: list[str] = dataclasses.field(default_factory=list)
    peers: frozenset[str] = frozenset()  # other bridges alive on the store
    cut: tuple[int, int] | None = None  # a cut tail: (last surviving, highest lost position)

    @property
    def refused(self) -> bool:
        return self.damage == "refused"

    @property
    def writes(self) -> bool:
        """Whether applying this plan appends anything (so the second run is a no-op)."""
        return (
            self.damage in ("would_accept", "accepted")
            or any(r.action in ("fall_back", "expire") for r, _ in self.requests)
            or bool(self.sessions)
        )


async def check_chain(
    store: EventStore, config: StoreConfig, *, live: bool, progress: Progress | None = None
) -> VerifyReport:
    """`verify_with_config`, retried when a live writer may have caused a false alarm."""
    shown = None if progress is None else (lambda done, total: progress("verifying", done, total))
    report = await verify_with_config(store, config, progress=shown)
    for _ in range(_VERIFY_ATTEMPTS - 1):
        if report.ok or not live or any(p.kind not in _RACY_KINDS for p in report.problems):
            break
        report = await verify_with_config(store, config, progress=shown)
    return report


async def plan_repair(
    store: EventStore,
    config: StoreConfig,
    *,
    accept_damage: bool = False,
    bridge: Bridge | None = None,
    session_boundary: int | None = None,
    now: float | None = None,
    progress: Progress | None = None,
) -> Plan:
    """Read the store and decide; appends nothing.

    `bridge` is the running bridge when repair runs inside it: its router's live requests
    and its connected sessions are not orphans. `session_boundary` is the last position
    written by an earlier process (sessions opened after it belong to this one); ``None``
    means every open session in the log is stale (the store is not being served).
    """
    report = await check_chain(store, config, live=bridge is not None, progress=progress)
    snap = await rebuild(store, progress)
    damage = _damage_decision(report, snap, accept_damage)
    plan = Plan(report, damage, snap, cut=await _cut_extent(store, config, report))
    if plan.refused:
        return plan
    clock = now if now is not None else time.time()
    registry = bridge.registry if bridge is not None else snap.registry
    plan.peers = await _live_peers(bridge, config)
    for req in sorted(snap.requests.open.values(), key=lambda r: r.created_at):
        plan.requests.append(await _plan_request(store, req, registry, bridge, plan.peers, clock))
    plan.sessions = await _stale_sessions(store, snap, bridge, session_boundary, plan.peers)
    if bridge is not None:
        plan.drift = _drift(snap, bridge.requests)
    return plan


async def _cut_extent(
    store: EventStore, config: StoreConfig, report: VerifyReport
) -> tuple[int, int] | None:
    """How far a cut tail reached: positions ever allocated or covered by a checkpoint."""
    if not any(p.kind == "truncated" for p in report.problems):
        return None
    from events import CheckpointFile

    sizes = [cp.size for cp in await store.checkpoints()]
    sizes += [cp.size for cp in CheckpointFile(config.checkpoints).read()]
    return report.size, max([await store.allocated(), *sizes])


def _damage_decision(report: VerifyReport, snap: Snapshot, accept: bool) -> str:
    if report.ok:
        return "none"
    if all(snap.damage.covers(p.kind, p.position) for p in report.problems):
        return "previously_accepted"
    return "would_accept" if accept else "refused"


async def _live_peers(bridge: Bridge | None, config: StoreConfig) -> frozenset[str]:
    """The other bridges alive on this store now (heartbeats in `lh_nodes`, judged by the
    database clock): what they hold — the asks they took, their pushes, their sessions —
    is theirs to close, not an orphan. Inside a bridge, its own view of its peers."""
    if bridge is not None:
        if bridge.nodes is None:
            return frozenset()
        return frozenset(n for n in bridge.nodes.live() if n != bridge.router.node)
    if config.url:
        from .nodes import live_nodes

        return frozenset(await live_nodes(config.url))
    return frozenset()


async def _plan_request(
    store: EventStore,
    req: OpenRequest,
    registry: KeyRegistry,
    bridge: Bridge | None,
    peers: frozenset[str],
    now: float,
) -> tuple[Resolution, int]:
    """Decide one open request from its own stream (the truth at this moment)."""
    records = await store.read_stream(request_stream(req.request_id))
    version = records[-1].version if records else 0
    routed = [r for r in records if r.type in (REQUEST_ROUTED, REQUEST_FELL_BACK)]
    path = routed[-1].data.get("path") if routed else None
    live = bridge.requests.open.get(req.request_id) if bridge is not None else None

    def decide(action: Action, reason: str, node: str | None = None) -> tuple[Resolution, int]:
        resolution = Resolution(
            request_id=req.request_id,
            recipient=req.recipient,
            path=path,
            action=action,
            reason=reason,
            deadline=req.deadline,
            node=node,
        )
        return resolution, version

    if any(r.type in TERMINAL_TYPES for r in records):
        return decide("skipped", "closed_meanwhile")
    if live is not None and live.closing:
        return decide("skipped", "being_answered")
    pusher = routed[-1].data.get("node") if path == "elicitation" else None
    if pusher in peers:
        return decide("live_bridge", "pushed_by_live_bridge", pusher)
    asker = records[0].data.get("node") if records else None
    if asker in peers:  # its deadline timer and its pusher's fate are that bridge's
        return decide("live_bridge", "asked_on_live_bridge", asker)
    if req.deadline <= now:
        return decide("expire", "deadline_passed")
    if path == "elicitation" and live is not None and live.answer is not None:
        return decide("in_flight", "owned_by_running_bridge")
    info = registry.agents.get(req.recipient)
    if info is None or info.revoked:
        return decide("expire", "recipient_unknown" if info is None else "recipient_revoked")
    if path == "legacy":
        return decide("pending", "in_mailbox")
    return decide("fall_back", "orphaned_elicitation" if path else "never_routed")


async def _stale_sessions(
    store: EventStore,
    snap: Snapshot,
    bridge: Bridge | None,
    boundary: int | None,
    peers: frozenset[str],
) -> list[tuple[str, str, int]]:
    """Sessions the log shows open that no process holds any more: (id, agent, version)."""
    if bridge is not None and boundary is None:
        return []  # cannot tell this process's sessions from a predecessor's
    stale = []
    for session_id, (agent, position) in sorted(snap.sessions.open.items()):
        if boundary is not None and position > boundary:
            continue
        if bridge is not None and bridge.presence.get(session_id) is not None:
            continue
        if session_id.partition(".")[0] in peers:
            continue  # held by another bridge that is alive
        records = await store.read_stream(session_stream(session_id))
        if any(r.type == SESSION_CLOSED for r in records):
            continue
        stale.append((session_id, agent, records[-1].version if records else 0))
    return stale


def _drift(snap: Snapshot, live: Requests) -> list[str]:
    """Requests whose live state contradicts the log replayed up to the snapshot head.

    Only checks that stay valid while the bridge keeps appending: live state may be ahead
    of the snapshot, never behind it.
    """
    found = []
    for request_id in snap.requests.open:
        # (live.closed is bounded, but a request closed after the snapshot is among the
        # most recent closes the index keeps)
        if request_id not in live.open and request_id not in live.closed:
            found.append(f"{request_id}: open in the log, unknown to the running bridge")
    for request_id, req in live.open.items():
        if req.position <= snap.head and request_id not in snap.requests.open:
            found.append(f"{request_id}: closed in the log, open in the running bridge")
    return found


# -- applying -----------------------------------------------------------------------------


async def run_repair(
    plan: Plan,
    log: Log | None,
    *,
    dry_run: bool = False,
    bridge: Bridge | None = None,
    actor: str = ACTOR,
) -> RepairReport:
    """Apply `plan` through `log` and say what happened; a dry run only reports.

    `log` may be ``None`` when nothing is to be written (dry run, refusal, clean store).
    """
    report = _report(plan, dry_run)
    if dry_run or plan.refused or not plan.writes:
        return report
    assert log is not None, "a plan that writes needs a log"
    if plan.damage == "would_accept":
        await _accept_damage(log, plan, actor)
        report.damage = "accepted"
        report.appended += 1
    report.requests = [
        await _resolve(log, resolution, version, bridge, actor)
        for resolution, version in plan.requests
    ]
    report.sessions_closed = [
        sid
        for sid, agent, version in plan.sessions
        if await _close_session(log, sid, agent, version, actor)
    ]
    report.appended += len(report.sessions_closed) + sum(r.applied for r in report.requests)
    changed = report.appended > 0
    if changed:
        await log.record(OPS_STREAM, REPAIR_COMPLETED, _completed(report), actor=actor)
        report.appended += 1
    report.head_after = (await log.store.head()).position  # a live bridge may add its own
    report.status = "repaired" if changed else "clean"
    return report


def _report(plan: Plan, dry_run: bool) -> RepairReport:
    v, snap = plan.verify, plan.snapshot
    head = snap.head if snap is not None else v.size
    status = "refused" if plan.refused else ("would_repair" if plan.writes else "clean")
    return RepairReport(
        status=status,
        dry_run=dry_run,
        chain_ok=v.ok,
        records_checked=v.records_checked,
        last_checkpoint=v.last_checkpoint,
        problems=[ProblemInfo(p.position, p.kind, p.detail) for p in v.problems],
        damage=plan.damage,  # type: ignore[arg-type]
        state=snap.counts() if snap is not None else None,
        requests=[r for r, _ in plan.requests],
        sessions_closed=[sid for sid, _, _ in plan.sessions],
        drift=plan.drift,
        head_before=head,
        head_after=head,
        live_bridges=sorted(plan.peers),
    )


async def _accept_damage(log: Log, plan: Plan, actor: str) -> None:
    verify = plan.verify
    data: dict[str, Any] = {
        "problems": [msgspec.to_builtins(p) for p in verify.problems],
        "size": verify.size,
        "last_checkpoint": verify.last_checkpoint,
    }
    if plan.cut is not None:
        data["cut"] = {"after": plan.cut[0], "through": plan.cut[1]}
    await log.record(OPS_STREAM, DAMAGE_ACCEPTED, data, actor=actor)


async def _resolve(
    log: Log, res: Resolution, version: int, bridge: Bridge | None, actor: str
) -> Resolution:
    """Append the one fact that resolves `res`, unless someone else resolved it first."""
    if res.action not in ("fall_back", "expire"):
        return res
    live = bridge.requests.open.get(res.request_id) if bridge is not None else None
    expiring = res.action == "expire"
    if live is not None:
        if live.closing:
            return msgspec.structs.replace(res, action="skipped", reason="being_answered")
        if expiring:
            live.closing = True  # the router's claim: its timer and late answers now refuse
    if expiring:
        fact = (REQUEST_EXPIRED, {"request_id": res.request_id, "reason": res.reason})
    else:
        data = {"request_id": res.request_id, "recipient": res.recipient, "path": "legacy"}
        fact = (REQUEST_FELL_BACK, data | {"cause": "repair"})
    try:
        await log.append_events(
            request_stream(res.request_id), actor, [fact], expected_version=version
        )
    except WrongExpectedVersion:
        if live is not None and expiring:
            live.closing = False
        return msgspec.structs.replace(res, action="skipped", reason="changed_meanwhile")
    if live is not None and expiring:
        _settle(live)
    return msgspec.structs.replace(res, applied=True)


def _settle(req: OpenRequest) -> None:
    """An asker still waiting in this process gets the timeout the log now records."""
    if req.delivery is not None and not req.delivery.done():
        req.delivery.cancel()
    if req.answer is not None and not req.answer.done():
        req.answer.set_result(
            {
                "request_id": req.request_id,
                "status": STATUS_BY_TERMINAL[REQUEST_EXPIRED],
                "content": None,
                "path": req.path,
            }
        )


async def _close_session(log: Log, session_id: str, agent: str, version: int, actor: str) -> bool:
    try:
        await log.append_events(
            session_stream(session_id),
            actor,
            [(SESSION_CLOSED, {"agent": agent, "session_id": session_id, "reason": "repair"})],
            expected_version=version,
        )
    except WrongExpectedVersion:
        return False
    return True


def _completed(report: RepairReport) -> dict[str, Any]:
    applied = [r for r in report.requests if r.applied]
    return {
        "counts": report.counts(),
        "fell_back": [r.request_id for r in applied if r.action == "fall_back"],
        "expired": [r.request_id for r in applied if r.action == "expire"],
        "sessions_closed": report.sessions_closed,
        "damage": report.damage,
    }


# -- entry points -------------------------------------------------------------------------


async def repair_bridge(
    bridge: Bridge,
    *,
    dry_run: bool = False,
    accept_damage: bool = False,
    session_boundary: int | None = None,
    actor: str = ACTOR,
) -> RepairReport:
    """Repair the store a running bridge serves, through its own log and router."""
    plan = await plan_repair(
        bridge.store,
        bridge.store.config,
        accept_damage=accept_damage,
        bridge=bridge,
        session_boundary=session_boundary,
    )
    return await run_repair(plan, bridge.log, dry_run=dry_run, bridge=bridge, actor=actor)


async def repair_store(
    config: StoreConfig,
    *,
    dry_run: bool = False,
    accept_damage: bool = False,
    actor: str = ACTOR,
    progress: Progress | None = None,
) -> RepairReport:
    """Repair a store no bridge is serving.

    Plans on a read-only open, so a dry run, a refused damaged store and a clean store are
    left exactly as they were (a writable open would sign a new checkpoint on close). Only
    when there is something to write does it take the writer lock — and then plans again,
    since another writer may have run in between.
    """
    readonly = dataclasses.replace(config, readonly=True)
    store = await _open_store(readonly)
    try:
        plan = await plan_repair(store, readonly, accept_damage=accept_damage, progress=progress)
    finally:
        await store.close()
    if dry_run or plan.refused or not plan.writes:
        return await run_repair(plan, None, dry_run=dry_run, actor=actor)
    store = await _open_writer(config, damaged=not plan.verify.ok)
    try:
        plan = await plan_repair(store, config, accept_damage=accept_damage, progress=progress)
        from .log import Log

        return await run_repair(plan, Log(store, []), actor=actor)
    finally:
        await store.close()


async def _open_store(config: StoreConfig) -> Any:
    """SQLite, or the PostgreSQL store when the config has a URL (`--database-url`)."""
    if config.url:
        from events.postgres import PostgresEventStore

        return await PostgresEventStore.open(config)
    return await SqliteEventStore.open(config)


async def _open_writer(config: StoreConfig, *, damaged: bool) -> Any:
    """The writable store; a store whose tail was cut needs the store's consent to open."""
    try:
        return await _open_store(config)
    except StoreError as exc:
        if not damaged or exc.reason != "store_damaged":
            raise
        if "accept_damage" not in {f.name for f in dataclasses.fields(StoreConfig)}:
            raise StoreError(
                f"{exc} — accepting a cut tail needs StoreConfig(accept_damage=True), which "
                "this version of the event store does not offer; nothing was changed"
            ) from None
        return await SqliteEventStore.open(dataclasses.replace(config, accept_damage=True))  # type: ignore[call-arg]


# -- HTTP: POST /admin/repair --------------------------------------------------------------


class _RepairBody(msgspec.Struct, forbid_unknown_fields=True):
    dry_run: bool = False
    accept_damage: bool = False


def add_routes(app: web.Application, bridge_of: Callable[[web.Request], Bridge]) -> None:
    """`POST /admin/repair {"dry_run": bool, "accept_damage": bool}` (admin bearer)."""
    from aiohttp import web

    boundary: dict[str, int] = {}  # filled once the bridge has started

    async def remember_boundary(app: web.Application) -> None:
        # runs after the bridge's cleanup context opened the store and adopted old requests
        from .core import BRIDGE

        bridge = app.get(BRIDGE)
        if bridge is not None:
            boundary["position"] = (await bridge.store.head()).position

    async def post_repair(request: web.Request) -> web.Response:
        from .admin import admin_actor

        raw = await request.read()
        try:
            body = msgspec.json.decode(raw or b"{}", type=_RepairBody)
        except msgspec.DecodeError as exc:
            return web.json_response(
                {"error": "invalid_request", "field": "body", "message": str(exc)}, status=400
            )
        report = await repair_bridge(
            bridge_of(request),
            dry_run=body.dry_run,
            accept_damage=body.accept_damage,
            session_boundary=boundary.get("position"),
            actor=admin_actor(request),
        )
        status = 409 if report.status == "refused" else 200
        return web.json_response(msgspec.to_builtins(report), status=status)

    app.on_startup.append(remember_boundary)
    app.router.add_post("/admin/repair", post_repair)


# -- CLI: lighthouse repair ---------------------------------------------------------------


def add_commands(subparsers: Any) -> None:
    r = subparsers.add_parser(
        "repair", help="verify, rebuild state from the log, resolve requests left open"
    )
    r.add_argument("--db", help="store file (default ./lighthouse.db)")
    r.add_argument(
        "--database-url",
        metavar="URL",
        help="repair the PostgreSQL store (or LIGHTHOUSE_DATABASE_URL) directly; what bridges "
        "alive on it hold (by their heartbeats) is left to them and reported",
    )
    r.add_argument("--key-dir", help="the store's key dir (default beside --db)")
    r.add_argument(
        "--dry-run", action="store_true", help="report what would be done; append nothing"
    )
    r.add_argument("--json", action="store_true", help="print the report as JSON")
    r.add_argument(
        "--accept-damage",
        action="store_true",
        help="proceed on a chain that fails verification, recording DamageAccepted",
    )
    r.set_defaults(func=cmd_repair)


def cmd_repair(args: argparse.Namespace) -> int:
    """Through the running bridge when one serves the store, else on the file (`--db`) or
    the PostgreSQL store (`--database-url`, which names the store and so goes direct).

    Errors are printed and returned here rather than raised as `cli.CliError`: run as
    `python -m bridge.cli`, that module is `__main__` and its `CliError` is another class.
    """
    from .cli_common import EXIT_FAIL, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, _db, _use_server
    from .config import env_database_url

    db = _db(args)
    try:
        url = getattr(args, "database_url", None) or env_database_url()
        if url and not url.startswith(("postgresql://", "postgres://")):
            raise _Failed("--database-url must be a postgresql:// URL", EXIT_USAGE)
        if _use_server(args) and not getattr(args, "database_url", None):
            report, where = _via_server(args, db), "the running bridge"
        elif url:
            report, where = _direct(args, db, url), "the PostgreSQL store"
        elif not db.exists():
            raise _Failed(f"no store at {db}", EXIT_UNAVAILABLE)
        else:
            report, where = _direct(args, db), str(db)
    except _Failed as exc:
        print(f"lighthouse: {exc}", file=sys.stderr)
        return exc.code
    if args.json:
        print(json.dumps(msgspec.to_builtins(report) | {"counts": report.counts()}))
    else:
        print(printable_lines(render(report, where)))
    return EXIT_FAIL if report.status == "refused" else EXIT_OK


class _Failed(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _direct(args: argparse.Namespace, db: Path, url: str | None = None) -> RepairReport:
    from .config import Settings

    key_dir = Path(args.key_dir) if getattr(args, "key_dir", None) else None
    progress = _terminal_progress() if sys.stderr.isatty() else None
    try:
        return asyncio.run(
            repair_store(
                Settings(db=db, database_url=url, key_dir=key_dir).store_config(),
                dry_run=args.dry_run,
                accept_damage=args.accept_damage,
                actor="cli",
                progress=progress,
            )
        )
    finally:
        if progress is not None:
            print("\r\033[K", end="", file=sys.stderr, flush=True)


def _via_server(args: argparse.Namespace, db: Path) -> RepairReport:
    from .cli_common import _http

    body = {"dry_run": args.dry_run, "accept_damage": args.accept_damage}
    status, payload = _http("POST", "/admin/repair", body, db, timeout=600)
    if status not in (200, 409) or not isinstance(payload, dict) or "status" not in payload:
        detail = payload.get("message") if isinstance(payload, dict) else payload
        raise _Failed(f"POST /admin/repair failed with HTTP {status}: {detail}")
    return msgspec.convert(payload, RepairReport)


def _terminal_progress() -> Progress:
    def show(stage: str, done: int, total: int) -> None:
        pct = 100 * done // total if total else 100
        print(f"\r\033[K{stage}: {done}/{total} ({pct}%)", end="", file=sys.stderr, flush=True)

    return show


_LABELS: Final[dict[str, str]] = {
    "fall_back": "re-routed to legacy",
    "expire": "expired",
    "pending": "pending, in mailbox",
    "in_flight": "in flight (running bridge)",
    "live_bridge": "left to a live bridge",
    "skipped": "skipped (changed meanwhile)",
}


def _left(r: Resolution) -> str:
    """For a request left open: who holds it, how long until its deadline."""
    if r.action not in ("pending", "in_flight", "live_bridge"):
        return ""
    held = f"owned by live bridge {r.node}, " if r.node else ""
    return f"  ({held}deadline in {max(0, round(r.deadline - time.time()))} s)"


def render(report: RepairReport, where: str) -> str:
    """The human table: what was found, what was (or would be) done, with request ids."""
    verb = "would be " if report.dry_run else ""
    lines = [f"repair of {where}" + (" (dry run: nothing appended)" if report.dry_run else "")]
    if report.chain_ok:
        lines.append(
            f"  chain            OK, {report.records_checked} events, "
            f"last checkpoint covers {report.last_checkpoint}"
        )
    else:
        lines.append(
            f"  chain            DAMAGED ({len(report.problems)} problems), {report.damage}"
        )
        lines += [f"    at {p.position}: {p.kind}: {p.detail}" for p in report.problems[:10]]
    s = report.state
    if report.live_bridges:
        lines.append(
            f"  live bridges     {', '.join(report.live_bridges)} (what they hold is theirs)"
        )
    if s is not None:
        lines.append(
            f"  rebuilt          {s.events_replayed} events replayed, {s.agents} agents "
            f"({s.revoked_agents} revoked), {s.open_requests} open requests, "
            f"{s.mailbox_items} mailbox items, {s.open_sessions} open sessions, "
            f"flags v{s.flag_version}"
        )
    if report.status == "refused":
        lines.append("  result           refused: nothing changed; a chain that fails verification")
        lines.append("                   needs --accept-damage (recorded as DamageAccepted)")
        return "\n".join(lines)
    for action, label in _LABELS.items():
        found = [r for r in report.requests if r.action == action]
        if action in ("fall_back", "expire") and report.dry_run:
            label = f"{verb}{label}"
        lines.append(f"  {label:<32} {len(found)}")
        lines += [f"    {r.request_id}  {r.recipient}  {r.reason}{_left(r)}" for r in found]
    lines.append(f"  {verb + 'closed stale sessions':<32} {len(report.sessions_closed)}")
    lines += [f"    {sid}" for sid in report.sessions_closed]
    lines += [f"  drift: {d}" for d in report.drift]
    lines.append(
        f"  result           {report.status}: {report.appended} events appended "
        f"(head {report.head_before} -> {report.head_after})"
    )
    return "\n".join(lines)


__all__ = [
    "Plan",
    "RepairReport",
    "Resolution",
    "Snapshot",
    "StateCounts",
    "add_commands",
    "add_routes",
    "plan_repair",
    "rebuild",
    "render",
    "repair_bridge",
    "repair_store",
    "run_repair",
]
