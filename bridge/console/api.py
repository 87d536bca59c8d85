"""`/admin/console/…`: the few admin endpoints the console needs beyond the CLI's.

Each gathers in one call what a screen shows (the overview polls every few seconds), or
adds a step the CLI does not have: a flag change's preview, a runbook step's record, a
live-store verify and an export download. All sit under `/admin/`, so `auth.admin_auth`
guards them like the rest of the admin API (bearer token or console session + CSRF).
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from ..admin import _bad, _json_body, admin_actor
from ..audit import SECURITY_TYPES, AuditQuery, StoreSource, iterate, parse_time, security_report
from ..domain import OPS_STREAM, RUNBOOK_STEP
from ..flags import FlagError, parse_change, routes_to_elicitation

if TYPE_CHECKING:
    from ..core import Bridge

RUNBOOK_STEPS = (
    "kill_switch",
    "drain",
    "confirm_legacy",
    "repair_dry_run",
    "repair_apply",
    "verify",
)
"""The runsheet's rollback procedure, in order: what a recorded step may be called."""
_MAX_SUMMARY, _MAX_DETAIL_BYTES, _SHOWN_IN_FLIGHT = 500, 16_384, 50
_COUNTERS = {
    "lighthouse_asks": "asks",
    "lighthouse_elicitations": "elicitations",
    "lighthouse_fallbacks": "fallbacks",
    "lighthouse_auth_rejections": "auth_rejections",
    "lighthouse_rate_limited": "rate_limited",
    "lighthouse_admin_auth_failures": "admin_auth_failures",
}


def metrics_snapshot(registry: Any) -> dict[str, Any]:
    """Counter totals by their one chart label, and the ask latency histogram per path.

    Totals, not rates: the page keeps the previous snapshots and charts the differences,
    which is what Prometheus' `rate()` and `histogram_quantile()` do over a scrape window.
    """
    out: dict[str, Any] = {name: {} for name in _COUNTERS.values()}
    latency: dict[str, dict[str, Any]] = {}
    for family in registry.collect():
        name = _COUNTERS.get(family.name)
        for sample in family.samples:
            if name is not None and sample.name.endswith("_total"):
                labels = sample.labels
                key = next(iter(labels.values()), "all") if len(labels) <= 1 else labels["path"]
                out[name][key] = out[name].get(key, 0) + sample.value
            elif family.name == "lighthouse_ask_latency_seconds":
                path = sample.labels.get("path", "")
                entry = latency.setdefault(path, {"le": [], "counts": [], "count": 0})
                if sample.name.endswith("_bucket"):
                    bound = float(sample.labels["le"])  # +Inf is not JSON: null
                    entry["le"].append(bound if math.isfinite(bound) else None)
                    entry["counts"].append(sample.value)
                elif sample.name.endswith("_count"):
                    entry["count"] = sample.value
    out["latency"] = latency
    return out


def _in_flight(bridge: Bridge) -> list[dict[str, Any]]:
    now = time.time()
    return [
        {
            "request_id": r.request_id,
            "caller": r.caller,
            "recipient": r.recipient,
            "age_s": round(max(0.0, now - r.created_at), 1),
        }
        for r in bridge.router.in_flight()
    ]


def flag_preview(bridge: Bridge, body: Any) -> dict[str, Any]:
    """What a change would do: fields old → new, which agents move, what force stops.

    Raises `FlagError` exactly as `POST /feature_flags` would for the same body.
    """
    old = bridge.flags.state
    new = parse_change(body, old)
    reason = body.get("reason", "") if isinstance(body, dict) else ""
    if new.force and not str(reason).strip():
        raise FlagError("reason", "a forced kill switch needs a reason (it is recorded)")
    old_d, new_d = old.to_dict(), new.to_dict()
    changes = [
        {"field": k, "old": old_d[k], "new": new_d[k]}
        for k in ("elicitation_enabled", "rollout_percent", "overrides", "force")
        if old_d[k] != new_d[k]
    ]
    names = sorted(bridge.registry.agents)
    before = {a for a in names if routes_to_elicitation(old, a)}
    after = {a for a in names if routes_to_elicitation(new, a)}
    in_flight = len(bridge.router.in_flight())
    effects = []
    if not changes:
        effects.append("Nothing changes: the flags already have these values.")
    if before - after:
        effects.append(f"{len(before - after)} agent(s) stop receiving asks by elicitation.")
    if after - before:
        effects.append(f"{len(after - before)} agent(s) start receiving asks by elicitation.")
    if new.force and in_flight:
        effects.append(f"{in_flight} elicitation(s) in flight are moved to the legacy mailbox now.")
    elif in_flight and before - after:
        effects.append(f"{in_flight} elicitation(s) in flight finish on their current path.")
    return {
        "version": bridge.flags.version,
        "changes": changes,
        "agents_total": len(names),
        "elicitation_before": len(before),
        "elicitation_after": len(after),
        "to_legacy": sorted(before - after),
        "to_elicitation": sorted(after - before),
        "in_flight": in_flight,
        "effects": effects,
    }


class _RunbookStep(msgspec.Struct, forbid_unknown_fields=True):
    step: str
    ok: bool
    summary: str
    detail: dict[str, Any] = {}


def add_api_routes(app: web.Application, bridge_of: Callable[[web.Request], Bridge]) -> None:
    node = f"{socket.gethostname()} (pid {os.getpid()})"
    try:
        version = metadata.version("lighthouse-bridge")
    except metadata.PackageNotFoundError:
        version = "0+unknown"

    async def overview(request: web.Request) -> web.Response:
        bridge = bridge_of(request)
        head = await bridge.store.head()
        checkpoints = await bridge.store.checkpoints()
        last = max(checkpoints, key=lambda cp: cp.size, default=None)
        in_flight = _in_flight(bridge)
        return web.json_response(
            {
                "time": time.time(),
                "status": "draining" if bridge.router.draining else "ok",
                "version": version,
                "node": node,
                "store": {
                    "position": head.position,
                    "head_hash": head.hash,
                    "store_id": bridge.store.store_id,
                    "last_checkpoint": None
                    if last is None
                    else {"size": last.size, "time": last.time},
                },
                "sessions": bridge.presence.counts(),
                "open_requests": len(bridge.requests.open),
                "in_flight": {"count": len(in_flight), "shown": in_flight[:_SHOWN_IN_FLIGHT]},
                "draining": bridge.router.draining,
                "flags": bridge.flags.describe(),
                "guard": bridge.guard.describe() if bridge.guard else None,
                "metrics": metrics_snapshot(bridge.metrics.registry),
            },
            headers={"Cache-Control": "no-store"},
        )

    async def preview(request: web.Request) -> web.Response:
        body = await _json_body(request)
        try:
            return web.json_response(flag_preview(bridge_of(request), body))
        except FlagError as exc:
            return _bad(exc.field, str(exc))

    async def runbook(request: web.Request) -> web.Response:
        raw = await request.read()
        if len(raw) > _MAX_DETAIL_BYTES:
            return _bad("detail", f"the step record must be under {_MAX_DETAIL_BYTES} bytes")
        try:
            step = msgspec.json.decode(raw or b"{}", type=_RunbookStep)
        except msgspec.DecodeError as exc:
            return _bad("body", str(exc))
        if step.step not in RUNBOOK_STEPS:
            return _bad("step", f"must be one of {', '.join(RUNBOOK_STEPS)}")
        if not step.summary.strip() or len(step.summary) > _MAX_SUMMARY:
            return _bad("summary", f"must be 1-{_MAX_SUMMARY} characters")
        data = msgspec.to_builtins(step)
        position = await bridge_of(request).log.record(
            OPS_STREAM, RUNBOOK_STEP, data, actor=admin_actor(request)
        )
        return web.json_response({"position": position, **data}, status=201)

    async def security(request: web.Request) -> web.Response:
        since_text = request.query.get("since")
        try:
            since = parse_time(since_text, "since") if since_text else None
        except ValueError as exc:
            return _bad("since", str(exc))
        source = StoreSource(bridge_of(request).store, bridge_of(request).store.config)
        query = AuditQuery(types=SECURITY_TYPES, since=since)
        records = [r async for r in iterate(source, query)]
        return web.json_response(security_report(records, since))

    async def verify(request: web.Request) -> web.Response:
        from ..repair import check_chain

        store = bridge_of(request).store
        report = await check_chain(store, store.config, live=True)
        return web.json_response(msgspec.to_builtins(report))

    async def export(request: web.Request) -> web.StreamResponse:
        from ..audit import AuditError
        from ..audit_export import write_export

        try:
            query = AuditQuery.from_params(request.query, lambda k: request.query.getall(k, []))
        except ValueError as exc:
            return _bad(str(exc).split(":", 1)[0], str(exc))
        store = bridge_of(request).store
        # Sign the head first: an export proves its records against a signed checkpoint,
        # and the periodic one may not cover a request made seconds ago (a 404 otherwise).
        await store.checkpoint()
        with tempfile.TemporaryDirectory(prefix="lighthouse-export-") as tmp:
            out = Path(tmp) / "export.jsonl"
            try:
                await write_export(
                    StoreSource(store, store.config), replace(query, limit=None), out
                )
            except AuditError as exc:
                return _bad("filters", str(exc), status=404)
            name = f"lighthouse-audit-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.jsonl"
            response = web.StreamResponse(
                headers={
                    "Content-Type": "application/x-ndjson",
                    "Content-Disposition": f'attachment; filename="{name}"',
                    "Cache-Control": "no-store",
                }
            )
            await response.prepare(request)
            with out.open("rb") as fh:
                while chunk := await asyncio.to_thread(fh.read, 1 << 16):
                    await response.write(chunk)
            await response.write_eof()
            return response

    app.router.add_get("/admin/console/overview", overview)
    app.router.add_post("/admin/console/flag-preview", preview)
    app.router.add_post("/admin/console/runbook", runbook)
    app.router.add_get("/admin/console/security", security)
    app.router.add_get("/admin/console/verify", verify)
    app.router.add_get("/admin/console/export", export)
