"""The operators' and auditors' web console, served by the bridge itself at `/console`.

Why no framework: the console is five screens of forms, tables and a few line charts
over an admin API that already exists. Plain HTML, one stylesheet and a handful of
vanilla ES modules (no build step, no bundler, no npm tree to audit) do that in ~1,500
lines a reviewer can read in one sitting, load instantly from the package with no CDN,
and keep working in an air-gapped data centre. Charts are hand-drawn SVG (a few dozen
lines) rather than a charting library, because the figures are simple series with a
threshold line. Native `<dialog>` gives keyboard-safe confirmations; semantic elements
and labels give accessibility without an ARIA widget kit. The strict Content-Security-
Policy (`script-src 'self'`, no inline code) is only easy because nothing is generated.

Security model: sign-in trades the admin token for an HttpOnly, SameSite=Strict session
cookie (`security.console`), so the token never sits in the browser. `auth.admin_auth`
accepts that cookie in place of the bearer token; state-changing calls must also carry
the session's CSRF token and an allowed Origin. Failed sign-ins go through the same
`AdminAuth` throttle and are recorded as `AdminAuthFailed`, like any admin failure.

Everything the console shows or changes goes through the admin API (`/feature_flags`,
`/admin/…`), plus a few read-mostly endpoints under `/admin/console/` (see `api.py`)
that gather what the screens need in one call.
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from security import ConsoleSessions

from ..auth import (
    CONSOLE_COOKIE,
    CONSOLE_SESSIONS,
    client_address,
    console_session,
    refuse_admin,
)
from ..domain import CONSOLE_SIGNED_IN, CONSOLE_SIGNED_OUT, SECURITY_STREAM
from .api import add_api_routes

if TYPE_CHECKING:
    from ..core import Bridge

__all__ = ["add_console_routes"]

STATIC = Path(__file__).parent / "static"
_MAX_TOKEN, _MAX_OPERATOR = 512, 48
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


def _load_assets() -> dict[str, tuple[bytes, str]]:
    """Every shipped file, read once: the URL space is exactly this set (no path joins)."""
    assets = {}
    for path in sorted(STATIC.rglob("*")):
        if path.is_file():
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if path.suffix == ".js":
                kind = "text/javascript"
            assets[path.relative_to(STATIC).as_posix()] = (path.read_bytes(), kind)
    return assets


def _error(status: int, error: str, message: str) -> web.Response:
    return web.json_response({"error": error, "message": message}, status=status)


def add_console_routes(app: web.Application, bridge_of: Callable[[web.Request], Bridge]) -> None:
    """`/console` (the page and its assets), `/console/session`, and `/admin/console/…`."""
    sessions = app[CONSOLE_SESSIONS] = ConsoleSessions()
    assets = _load_assets()

    async def asset(request: web.Request) -> web.Response:
        found = assets.get(request.match_info.get("name", "index.html"))
        if found is None:
            raise web.HTTPNotFound(text="no such console file")
        body, kind = found
        return web.Response(body=body, content_type=kind, headers=_PAGE_HEADERS)

    async def to_page(request: web.Request) -> web.Response:
        raise web.HTTPFound("/console/")

    def origin_refusal(request: web.Request, bridge: Bridge) -> str | None:
        rejection = bridge.origin.check(request.host, request.headers.get("Origin"))
        if rejection is not None:
            return rejection.reason
        if request.headers.get("Origin") is None:  # every browser sends one on POST/DELETE
            return "missing_origin"
        return None

    async def sign_in(request: web.Request) -> web.Response:
        bridge = bridge_of(request)
        remote = client_address(request, bridge.settings.trusted_proxies)
        refused = origin_refusal(request, bridge)
        if refused is not None:
            return await refuse_admin(bridge, remote, request.path, refused, 403)
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError:
            return _error(400, "invalid_json", "the body must be a JSON object")
        if not isinstance(body, dict):
            return _error(400, "invalid_request", "the body must be a JSON object")
        token, operator = body.get("token"), body.get("operator") or "operator"
        if not isinstance(token, str) or not 0 < len(token) <= _MAX_TOKEN:
            token = ""
        if not isinstance(operator, str) or not _valid_operator(operator):
            return _error(
                400,
                "invalid_request",
                f"operator: 1-{_MAX_OPERATOR} letters, digits, '.', '_', '-' or '@'",
            )
        result = bridge.admin.check(remote, f"Bearer {token}" if token else None)
        if not result.ok:
            reason = result.reason or "invalid_token"
            path = request.path
            return await refuse_admin(
                bridge, remote, path, reason, result.status, result.retry_after
            )
        cookie, session = sessions.open(operator)
        await bridge.log.record(
            SECURITY_STREAM,
            CONSOLE_SIGNED_IN,
            {"operator": operator, "remote": remote},
            actor=f"console:{operator}",
        )
        response = web.json_response(
            {
                "operator": operator,
                "csrf": session.csrf,
                "expires_in": sessions.expires_in(session),
            }
        )
        response.set_cookie(
            CONSOLE_COOKIE,
            cookie,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
            path="/",
            max_age=int(sessions.max_age_s),
        )
        return response

    async def whoami(request: web.Request) -> web.Response:
        session = console_session(request)
        if session is None:
            return _error(401, "unauthorized", "not signed in, or the session expired")
        return web.json_response(
            {
                "operator": session.operator,
                "csrf": session.csrf,
                "expires_in": sessions.expires_in(session),
            },
            headers={"Cache-Control": "no-store"},
        )

    async def sign_out(request: web.Request) -> web.Response:
        bridge = bridge_of(request)
        session = console_session(request)
        if session is None:
            return _error(401, "unauthorized", "not signed in")
        refused = origin_refusal(request, bridge)
        if refused is None and not sessions.csrf_ok(session, request.headers.get("X-CSRF-Token")):
            refused = "csrf_failed"
        if refused is not None:
            remote = client_address(request, bridge.settings.trusted_proxies)
            return await refuse_admin(bridge, remote, request.path, refused, 403)
        sessions.close(request.cookies.get(CONSOLE_COOKIE))
        await bridge.log.record(
            SECURITY_STREAM,
            CONSOLE_SIGNED_OUT,
            {"operator": session.operator},
            actor=f"console:{session.operator}",
        )
        response = web.json_response({"signed_out": True})
        response.del_cookie(CONSOLE_COOKIE, path="/")
        return response

    app.router.add_get("/console", to_page)
    app.router.add_get("/console/", asset)
    app.router.add_get("/console/static/{name:.+}", asset)
    app.router.add_post("/console/session", sign_in)
    app.router.add_get("/console/session", whoami)
    app.router.add_delete("/console/session", sign_out)
    add_api_routes(app, bridge_of)


def _valid_operator(name: str) -> bool:
    return 0 < len(name) <= _MAX_OPERATOR and all(c.isalnum() or c in "._-@" for c in name)
