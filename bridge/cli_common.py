"""What every command that talks to a bridge or a store shares: exit codes, the one error
type, the admin token lookup and the admin API client.

Kept apart from `bridge.cli` so features that bring their own commands (audit, repair,
proofs, the witness) use these without importing the command line itself.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .config import Settings, env_admin_token, env_database_url, env_url

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.code = code


# -- talking to a running bridge ---------------------------------------------------------


class _Token:
    """The admin token the CLI will send, and where it came from (for error messages)."""

    def __init__(self, value: str | None, source: str, tried: list[str]) -> None:
        self.value, self.source, self.tried = value, source, tried


def _admin_token(db: Path) -> _Token:
    """LIGHTHOUSE_ADMIN_TOKEN; else the token file of the bridge answering at
    LIGHTHOUSE_URL (its discovery file names it, whatever the working directory); else
    the one beside *db*."""
    token = env_admin_token()
    if token:
        return _Token(token, "LIGHTHOUSE_ADMIN_TOKEN", [])
    from .discovery import read_discovery

    candidates = []
    running = read_discovery(env_url())
    if running and running.get("admin_token_file"):
        candidates.append(Path(running["admin_token_file"]))
    candidates.append(Settings(db=db).admin_token_file)
    tried = []
    for path in dict.fromkeys(candidates):
        tried.append(str(path))
        try:
            value = path.read_text().strip()
        except OSError:
            continue
        if value:
            return _Token(value, str(path), tried)
    return _Token(None, "none", tried)


def _http(
    method: str,
    path: str,
    body: Any,
    db: Path,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    url = env_url() + path
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    token = _admin_token(db)
    if token.value:
        request.add_header("Authorization", f"Bearer {token.value}")
    for k, v in (headers or {}).items():
        request.add_header(k, v)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            payload = json.loads(exc.read() or b"null")
        except ValueError:
            payload = None
        if exc.code == 401 and isinstance(payload, dict):
            payload = {**payload, "token": _token_hint(token)}
        return exc.code, payload


def _token_hint(token: _Token) -> str:
    if token.value is None:
        tried = ", ".join(token.tried) or "no file"
        return f"no admin token found (tried {tried}; or set LIGHTHOUSE_ADMIN_TOKEN)"
    return f"the token from {token.source} was not accepted"


def _server_up() -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(env_url() + "/health", timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _admin_call(method: str, path: str, body: Any, db: Path, **kw: Any) -> Any:
    status, payload = _http(method, path, body, db, **kw)
    if status >= 400:
        detail = (
            payload.get("message") or payload.get("reason") if isinstance(payload, dict) else None
        )
        hint = payload.get("token") if isinstance(payload, dict) else None
        message = f"{method} {path} failed with HTTP {status}: {detail or payload}"
        raise CliError(message + (f"; {hint}" if hint else ""))
    return payload


def _use_server(args: argparse.Namespace) -> bool:
    return args.db is None and _server_up()


def _db(args: argparse.Namespace) -> Path:
    return Path(args.db) if args.db else Path("lighthouse.db")


def _database_url(args: argparse.Namespace) -> str | None:
    url = getattr(args, "database_url", None) or env_database_url()
    if url and not url.startswith(("postgresql://", "postgres://")):
        raise CliError("--database-url must be a postgresql:// URL", EXIT_USAGE)
    return url
