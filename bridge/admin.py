"""The admin API (`/feature_flags`, `/admin/…`): what operators and the CLI call.

Admin bearer auth is enforced by `auth.admin_auth` before any handler here runs. Every
body is validated strictly — unknown keys and bad values get a 400 naming the field, and
nothing is changed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from events import WrongExpectedVersion

from .agents import AgentError
from .auth import OPERATOR
from .domain import DRAIN_FINISHED, DRAIN_STARTED, FLAG_CHANGED, FLAGS_STREAM, OPS_STREAM
from .flags import FlagError, parse_change

if TYPE_CHECKING:
    from .core import Bridge

BridgeOf = Callable[[web.Request], "Bridge"]


def _bad(field: str, message: str, status: int = 400) -> web.Response:
    return web.json_response(
        {"error": "invalid_request", "field": field, "message": message}, status=status
    )


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "invalid_json", "field": "body", "message": str(exc)}),
            content_type="application/json",
        ) from None


def admin_actor(request: web.Request) -> str:
    """The console's signed-in operator, else the CLI's self-declared operator name."""
    if OPERATOR in request:
        return request[OPERATOR]
    return request.headers.get("X-Lighthouse-Operator", "admin")[:64] or "admin"


def add_admin_routes(app: web.Application, bridge_of: BridgeOf) -> None:
    async def get_flags(request: web.Request) -> web.Response:
        bridge = bridge_of(request)
        return web.json_response(
            bridge.flags.describe(), headers={"ETag": str(bridge.flags.version)}
        )

    async def post_flags(request: web.Request) -> web.Response:
        bridge = bridge_of(request)
        body = await _json_body(request)
        flags = bridge.flags
        if_match = request.headers.get("If-Match")
        if if_match is not None and if_match.strip('"') != str(flags.version):
            return _bad("If-Match", f"flags are at version {flags.version}", status=409)
        try:
            new = parse_change(body, flags.state)
        except FlagError as exc:
            return _bad(exc.field, str(exc))
        data = {
            "old": flags.state.to_dict(),
            "new": new.to_dict(),
            "reason": body.get("reason", ""),
        }
        try:
            await bridge.log.append_events(
                FLAGS_STREAM,
                admin_actor(request),
                [(FLAG_CHANGED, data)],
                expected_version=flags.version,
            )
        except WrongExpectedVersion as exc:
            return _bad("If-Match", f"flags are at version {exc.actual}", status=409)
        return web.json_response(flags.describe(), headers={"ETag": str(flags.version)})

    async def list_agents(request: web.Request) -> web.Response:
        return web.json_response({"agents": bridge_of(request).agents.list()})

    async def add_agent(request: web.Request) -> web.Response:
        body = await _json_body(request)
        try:
            spec = msgspec.convert(body, _AgentSpec)
        except msgspec.ValidationError as exc:
            return _bad("body", str(exc))
        return await _agent_op(
            bridge_of(request).agents.add(
                spec.name, spec.roles, spec.capabilities, admin_actor(request)
            ),
            status=201,
        )

    async def rotate(request: web.Request) -> web.Response:
        return await _agent_op(
            bridge_of(request).agents.rotate(request.match_info["name"], admin_actor(request))
        )

    async def revoke(request: web.Request) -> web.Response:
        return await _agent_op(
            bridge_of(request).agents.revoke(request.match_info["name"], admin_actor(request))
        )

    async def drain(request: web.Request) -> web.Response:
        body = await _json_body(request)
        timeout = body.get("timeout", 30) if isinstance(body, dict) else None
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 <= timeout <= 3600
        ):
            return _bad("timeout", "must be a number of seconds from 0 to 3600")
        return web.json_response(
            await run_drain(bridge_of(request), float(timeout), admin_actor(request))
        )

    async def resume(request: web.Request) -> web.Response:
        bridge = bridge_of(request)
        bridge.router.draining = False
        return web.json_response({"draining": False})

    app.router.add_get("/feature_flags", get_flags)
    app.router.add_post("/feature_flags", post_flags)
    app.router.add_get("/admin/agents", list_agents)
    app.router.add_post("/admin/agents", add_agent)
    app.router.add_post("/admin/agents/{name}/rotate", rotate)
    app.router.add_post("/admin/agents/{name}/revoke", revoke)
    app.router.add_post("/admin/drain", drain)
    app.router.add_post("/admin/resume", resume)


class _AgentSpec(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    roles: list[str] = []
    capabilities: list[str] = []


async def _agent_op(work: Any, status: int = 200) -> web.Response:
    try:
        result = await work
    except AgentError as exc:
        return web.json_response({"error": "agent_error", "message": str(exc)}, status=409)
    return web.json_response(result, status=status)


async def run_drain(bridge: Bridge, timeout: float, actor: str) -> dict[str, Any]:
    """Stop new elicitations, give in-flight ones `timeout` seconds, then move the rest."""
    router = bridge.router
    router.draining = True
    in_flight = len(router.in_flight())
    await bridge.log.record(
        OPS_STREAM, DRAIN_STARTED, {"timeout": timeout, "in_flight": in_flight}, actor=actor
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while router.in_flight() and loop.time() < deadline:
        await asyncio.sleep(0.05)
    finished = in_flight - len(router.in_flight())
    moved = await router.fall_back_all("drain")
    report = {
        "in_flight_at_start": in_flight,
        "finished": max(0, finished),
        "moved_to_legacy": moved,
        "draining": True,
    }
    await bridge.log.record(OPS_STREAM, DRAIN_FINISHED, report, actor=actor)
    return report
