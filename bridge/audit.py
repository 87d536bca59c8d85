"""The security team's view of the log: query, security report, export and offline verify.

Everything here only reads. The same filters work on a running bridge (through
`GET /admin/events`, so the auditor needs no file access) and on a store file opened
read-only beside the running bridge; both are an `EventSource`, so the query, the report
and the export are written once. The export format and its verification live in
`audit_export.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import sys
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
from aiohttp import web

from events import (
    Checkpoint,
    CheckpointFile,
    CheckpointSigner,
    Record,
    SqliteEventStore,
    StoreConfig,
    StoreError,
)

from .audit_redact import RedactionError, from_json, load_signer, redact_page
from .display import printable
from .domain import (
    ADMIN_AUTH_FAILED,
    AUTH_REJECTED,
    CONTENTS_READ,
    FLAG_CHANGED,
    OPS_STREAM,
    RATE_LIMITED,
    request_stream,
)
from .refusals import refusal_count
from .sealing import content_fields, is_sealed, redacted

if TYPE_CHECKING:
    from .core import Bridge

AGENT_FIELDS = ("from", "to", "recipient", "recipients", "by", "agent")
"""Data fields that name an agent: an agent filter matches these as well as the actor."""
SECURITY_TYPES = (AUTH_REJECTED, RATE_LIMITED, ADMIN_AUTH_FAILED, FLAG_CHANGED)
DEFAULT_API_LIMIT, MAX_API_LIMIT = 1000, 10_000
_SCAN_PAGE = 2000
EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


class AuditError(Exception):
    """A failure the CLI reports as one line (bad input, unreachable bridge, bad file)."""

    def __init__(self, message: str, code: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.code = code


# -- filters -----------------------------------------------------------------------------


def parse_time(text: str | float, name: str = "time") -> float:
    """Unix seconds or ISO-8601 (a naive time is UTC: audit logs cross time zones)."""
    if isinstance(text, int | float):
        return float(text)
    with contextlib.suppress(ValueError):
        return float(text)
    raw = text.strip()
    if raw.endswith(("Z", "z")):
        raw = raw[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"{name}: {text!r} is neither ISO-8601 nor unix seconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _names(value: Any) -> Iterable[Any]:
    return value if isinstance(value, list) else (value,)


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Which events an auditor wants; positions and limit page, the rest select."""

    agent: str | None = None
    types: tuple[str, ...] = ()
    stream: str | None = None
    request_id: str | None = None
    since: float | None = None
    until: float | None = None
    from_position: int = 1
    to_position: int | None = None
    limit: int | None = None

    def selects(self, r: Record) -> bool:
        """The content filters only (no positions): what an export's verifier re-applies."""
        if self.types and r.type not in self.types:
            return False
        if self.stream is not None and r.stream != self.stream:
            return False
        if self.request_id is not None and not (
            r.data.get("request_id") == self.request_id
            or r.stream == request_stream(self.request_id)
        ):
            return False
        if self.since is not None and r.time < self.since:
            return False
        if self.until is not None and r.time > self.until:
            return False
        return self.agent is None or self.names_agent(r)

    def names_agent(self, r: Record) -> bool:
        if r.actor == self.agent:
            return True
        return any(self.agent in _names(r.data.get(k)) for k in AGENT_FIELDS)

    def matches(self, r: Record) -> bool:
        if r.position < self.from_position:
            return False
        if self.to_position is not None and r.position > self.to_position:
            return False
        return self.selects(r)

    @property
    def filtered(self) -> bool:
        return self.selector() != {}

    def selector(self) -> dict[str, Any]:
        """The content filters as JSON (positions and limit excluded)."""
        out: dict[str, Any] = {
            "agent": self.agent,
            "types": list(self.types) or None,
            "stream": self.stream,
            "request_id": self.request_id,
            "since": self.since,
            "until": self.until,
        }
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_selector(cls, selector: Mapping[str, Any]) -> AuditQuery:
        return cls(
            agent=selector.get("agent"),
            types=tuple(selector.get("types") or ()),
            stream=selector.get("stream"),
            request_id=selector.get("request_id"),
            since=selector.get("since"),
            until=selector.get("until"),
        )

    def to_params(self) -> list[tuple[str, str]]:
        """Query-string form, the inverse of `from_params`."""
        params: list[tuple[str, str]] = [("type", t) for t in self.types]
        for key, value in (
            ("agent", self.agent),
            ("stream", self.stream),
            ("request", self.request_id),
            ("since", self.since),
            ("until", self.until),
            ("from_position", self.from_position),
            ("to_position", self.to_position),
            ("limit", self.limit),
        ):
            if value is not None:
                params.append((key, str(value)))
        return params

    @classmethod
    def from_params(
        cls, params: Mapping[str, Any], getall: Callable[[str], list[str]]
    ) -> AuditQuery:
        """Build from `/admin/events` query parameters; raises ValueError naming the field."""

        def integer(name: str, low: int) -> int | None:
            if name not in params:
                return None
            try:
                value = int(params[name])
            except ValueError:
                raise ValueError(f"{name}: must be an integer") from None
            if value < low:
                raise ValueError(f"{name}: must be at least {low}")
            return value

        since, until = params.get("since"), params.get("until")
        return cls(
            agent=params.get("agent") or None,
            types=tuple(t for t in getall("type") if t),
            stream=params.get("stream") or None,
            request_id=params.get("request") or params.get("request_id") or None,
            since=parse_time(since, "since") if since else None,
            until=parse_time(until, "until") if until else None,
            from_position=integer("from_position", 1) or 1,
            to_position=integer("to_position", 1),
            limit=integer("limit", 1),
        )


@dataclass(slots=True)
class Page:
    events: list[Record]
    next_position: int | None
    head: int = 0


# -- sources -----------------------------------------------------------------------------


class EventSource(Protocol):
    """Where audit reads from: a store file or a running bridge."""

    async def page(self, query: AuditQuery) -> Page: ...

    async def redacted_page(self, query: AuditQuery) -> Page:
        """The same page with every record holding contents redacted and attested
        (`bridge.audit_redact`): what a redacted export writes."""
        ...

    async def checkpoints(self) -> list[Checkpoint]: ...

    async def head(self) -> int: ...

    async def close(self) -> None: ...


async def query_store(store: SqliteEventStore, query: AuditQuery) -> Page:
    """One page of matches; the type filter runs in SQL, the others while scanning."""
    limit = query.limit or DEFAULT_API_LIMIT
    found: list[Record] = []
    position = query.from_position
    while True:
        batch = await store.read_all(
            position, limit=_SCAN_PAGE, types=query.types or None, to_position=query.to_position
        )
        for record in batch:
            if query.selects(record):
                found.append(record)
                if len(found) >= limit:
                    return Page(found, record.position + 1, (await store.head()).position)
        if len(batch) < _SCAN_PAGE:
            return Page(found, None, (await store.head()).position)
        position = batch[-1].position + 1


@dataclass
class StoreSource:
    """A store file opened read-only: works beside a running bridge, never takes the lock."""

    store: SqliteEventStore
    config: StoreConfig

    @classmethod
    async def open(cls, db: Path) -> StoreSource:
        if not db.exists():
            raise AuditError(f"no store at {db}", EXIT_UNAVAILABLE)
        config = StoreConfig(path=db, readonly=True)
        return cls(await SqliteEventStore.open(config), config)

    async def page(self, query: AuditQuery) -> Page:
        return await query_store(self.store, query)

    async def redacted_page(self, query: AuditQuery) -> Page:
        """Attested with the checkpoint key beside the store file (the exporter's)."""
        page = await query_store(self.store, query)
        page.events = await redact_page(self.store, self._signer, page.events)
        return page

    @functools.cached_property
    def _signer(self) -> CheckpointSigner:
        return load_signer(self.config.signing_key_file)

    async def checkpoints(self) -> list[Checkpoint]:
        """Signed checkpoints from the database and from the file kept outside it."""
        found = await self.store.checkpoints()
        found += CheckpointFile(self.config.checkpoints).read()
        return _unique(found)

    async def head(self) -> int:
        return (await self.store.head()).position

    async def close(self) -> None:
        await self.store.close()


def _unique(checkpoints: Iterable[Checkpoint]) -> list[Checkpoint]:
    seen: dict[tuple[int, str], Checkpoint] = {}
    for cp in checkpoints:
        seen.setdefault((cp.size, cp.signature), cp)
    return sorted(seen.values(), key=lambda cp: cp.size)


@dataclass
class HttpSource:
    """A running bridge's admin API (`GET /admin/events`, `GET /admin/checkpoints`)."""

    db: Path
    _head: int = field(default=0)
    contents: str = "stored"
    """stored (ciphertext as in the log), open (recorded as a ContentsRead) or redact."""

    def _get(self, path: str, params: list[tuple[str, str]] | None = None) -> Any:
        return self._call("GET", path, params)

    def _call(self, method: str, path: str, params: list[tuple[str, str]] | None = None) -> Any:
        from .cli_common import _http

        query = "?" + urllib.parse.urlencode(params) if params else ""
        status, payload = _http(method, path + query, None, self.db, timeout=120)
        if status >= 400:
            detail = (
                payload.get("message") or payload.get("reason")
                if isinstance(payload, dict)
                else payload
            )
            raise AuditError(f"{method} {path} failed with HTTP {status}: {detail}")
        return payload

    async def sign_head(self) -> None:
        """Have the bridge sign its head now, so an export proves records made seconds ago
        instead of stopping at the periodic checkpoint (an empty log has none to sign)."""
        try:
            await asyncio.to_thread(self._call, "POST", "/admin/tlog/checkpoint")
        except AuditError:
            if await self.head():
                raise

    async def page(self, query: AuditQuery) -> Page:
        return await self._page([*query.to_params(), ("contents", self.contents)])

    async def redacted_page(self, query: AuditQuery) -> Page:
        """Attested by the bridge, which holds the checkpoint key."""
        return await self._page([*query.to_params(), ("contents", "redact"), ("attest", "true")])

    async def _page(self, params: list[tuple[str, str]]) -> Page:
        payload = await asyncio.to_thread(self._get, "/admin/events", params)
        events = [from_json(e) for e in payload["events"]]
        self._head = payload.get("head", 0)
        return Page(events, payload.get("next_position"), self._head)

    async def checkpoints(self) -> list[Checkpoint]:
        payload = await asyncio.to_thread(self._get, "/admin/checkpoints")
        return _unique(msgspec.convert(payload["checkpoints"], list[Checkpoint]))

    async def head(self) -> int:
        payload = await asyncio.to_thread(self._get, "/health")
        return int(payload["store"]["position"])

    async def close(self) -> None:
        return None


async def iterate(
    source: EventSource, query: AuditQuery, page_size: int = _SCAN_PAGE, *, redact: bool = False
) -> Any:
    """Every match of `query` in position order, fetched page by page (`redact`: records
    with contents redacted and attested, as a redacted export writes them)."""
    remaining = query.limit
    current = replace(query, limit=page_size)
    fetch = source.redacted_page if redact else source.page
    while True:
        if remaining is not None:
            current = replace(current, limit=min(page_size, remaining))
        page = await fetch(current)
        for record in page.events:
            yield record
        if remaining is not None:
            remaining -= len(page.events)
            if remaining <= 0:
                return
        if page.next_position is None:
            return
        current = replace(current, from_position=page.next_position)


# -- security report ---------------------------------------------------------------------


def _tally(records: Iterable[Record], key: Callable[[Record], Any]) -> dict[str, int]:
    """Refusals per value of `key`, each record weighted by how many it stands for (an
    aggregated refusal counts its `count`: see `refusals.RefusalLedger`)."""
    counts: Counter[str] = Counter()
    for r in records:
        value = key(r)
        counts["(unknown)" if value is None else str(value)] += refusal_count(r.data)
    return dict(counts.most_common())


def _total(records: Iterable[Record]) -> int:
    return sum(refusal_count(r.data) for r in records)


def security_report(records: Iterable[Record], since: float | None = None) -> dict[str, Any]:
    """What a security reviewer asks first: who was refused, why, and who changed flags."""
    rejected, limited, admin, flags = [], [], [], []
    for r in records:
        {AUTH_REJECTED: rejected, RATE_LIMITED: limited, ADMIN_AUTH_FAILED: admin}.get(
            r.type, flags if r.type == FLAG_CHANGED else []
        ).append(r)
    replays = [r for r in rejected if r.data.get("reason") == "replayed_nonce"]
    pairs: Counter[tuple[Any, Any]] = Counter()
    for r in rejected:
        pairs[(r.data.get("reason"), r.data.get("agent"))] += refusal_count(r.data)

    def data(name: str) -> Callable[[Record], Any]:
        return lambda r: r.data.get(name)

    return {
        "since": since,
        "auth_rejections": {
            "total": _total(rejected),
            "by_reason": _tally(rejected, data("reason")),
            "by_agent": _tally(rejected, data("agent")),
            "by_reason_and_agent": [
                {"reason": reason, "agent": agent, "count": n}
                for (reason, agent), n in pairs.most_common()
            ],
        },
        "replays": {
            "total": _total(replays),
            "by_agent": _tally(replays, data("agent")),
            "by_remote": _tally(replays, data("remote")),
        },
        "rate_limited": {
            "total": _total(limited),
            "by_scope": _tally(limited, data("scope")),
            "by_agent": _tally(limited, data("agent")),
        },
        "admin_auth_failures": {
            "total": _total(admin),
            "by_reason": _tally(admin, data("reason")),
            "by_remote": _tally(admin, data("remote")),
        },
        "flag_changes": [
            {
                "position": r.position,
                "time": iso(r.time),
                "actor": r.actor,
                "reason": r.data.get("reason", ""),
                "old": r.data.get("old"),
                "new": r.data.get("new"),
            }
            for r in flags
        ],
    }


def format_security(report: dict[str, Any]) -> str:
    """The report as text; every name in it came from a request, so each is `printable`."""
    p = printable
    lines = [f"security report since {iso(report['since']) if report['since'] else 'the start'}"]
    a = report["auth_rejections"]
    lines.append(f"auth rejections: {a['total']}")
    lines += [
        f"  {p(row['reason']):<24} {p(row['agent'] or '(unknown)'):<20} {row['count']:>6}"
        for row in a["by_reason_and_agent"]
    ]
    rp = report["replays"]
    lines.append(f"replay attempts (replayed_nonce): {rp['total']}")
    lines += [f"  {p(agent):<45} {n:>6}" for agent, n in rp["by_agent"].items()]
    rl = report["rate_limited"]
    lines.append(f"rate-limit hits: {rl['total']}")
    lines += [f"  scope {p(scope):<39} {n:>6}" for scope, n in rl["by_scope"].items()]
    lines += [f"  agent {p(agent):<39} {n:>6}" for agent, n in rl["by_agent"].items()]
    ad = report["admin_auth_failures"]
    lines.append(f"failed admin logins: {ad['total']}")
    lines += [f"  {p(reason):<45} {n:>6}" for reason, n in ad["by_reason"].items()]
    lines += [f"  from {p(remote):<40} {n:>6}" for remote, n in ad["by_remote"].items()]
    lines.append(f"flag changes: {len(report['flag_changes'])}")
    for fc in report["flag_changes"]:
        new = fc["new"] or {}
        lines.append(
            f"  {fc['time']} by {p(fc['actor'])}: enabled={new.get('elicitation_enabled')} "
            f"rollout={new.get('rollout_percent')} reason={p(repr(fc['reason']))}"
        )
    return "\n".join(lines)


# -- presentation ------------------------------------------------------------------------


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def replace_data(r: Record, data: dict[str, Any]) -> Record:
    return msgspec.structs.replace(r, data=data)


def record_json(r: Record) -> dict[str, Any]:
    return msgspec.to_builtins(r)


def _summary(r: Record) -> str:
    keys = ("request_id", *AGENT_FIELDS, "reason", "cause", "path", "status", "scope", "count")
    parts = [
        f"{k}={printable(r.data[k])}"
        for k in keys
        if r.data.get(k) not in (None, "", []) and (k != "count" or r.data.get("aggregated"))
    ]
    return " ".join(parts)[:160]


TABLE_HEADER = f"{'POSITION':>8}  {'TIME':<24}  {'TYPE':<20}  {'ACTOR':<12}  {'STREAM':<28}  DETAIL"


def table_row(r: Record) -> str:
    """One line per event, whatever the event holds: every stored value is `printable`
    (a refused request's path is chosen by whoever sent it)."""
    stream = printable(r.stream)
    stream = stream if len(stream) <= 28 else stream[:27] + "…"
    return (
        f"{r.position:>8}  {iso(r.time):<24}  {printable(r.type):<20}  "
        f"{printable(r.actor):<12}  {stream:<28}  {_summary(r)}"
    )


def progress_printer(label: str) -> Callable[[int, int], None] | None:
    """A one-line progress counter on a terminal's stderr; nothing when piped."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        pct = 100 * done // total if total else 100
        print(f"\r{label}: {done}/{total} ({pct}%)", end="", file=sys.stderr, flush=True)

    return show


# -- HTTP --------------------------------------------------------------------------------


async def _open_contents(
    bridge: Bridge,
    request: web.Request,
    query: AuditQuery,
    records: list[Record],
    events: list[dict[str, Any]],
) -> None:
    """Contents in clear for an operator, and the read recorded before they are sent."""
    from .admin import admin_actor

    sealer = bridge.log.sealer
    read = [
        (e, r)
        for e, r in zip(events, records, strict=True)
        if is_sealed(r.data) or content_fields(r.type, r.data)
    ]
    if not read:
        return
    await bridge.log.record(
        OPS_STREAM,
        CONTENTS_READ,
        {
            "by": admin_actor(request),
            "count": len(read),
            "positions": [r.position for _, r in read][:1000],
            "query": query.selector(),
        },
        actor=admin_actor(request),
    )
    if sealer is not None:
        await sealer.load_keys_to_open(r for _, r in read)
    for e, r in read:
        e["data"] = sealer.open_record(r) if sealer is not None else r.data


def _invalid(field_name: str, message: str) -> web.Response:
    return web.json_response(
        {"error": "invalid_request", "field": field_name, "message": message}, status=400
    )


def add_routes(app: web.Application, bridge_of: Callable[[web.Request], Bridge]) -> None:
    """`/admin/events`, `/admin/checkpoints`, `/admin/checkpoint-key` (admin bearer)."""

    async def events(request: web.Request) -> web.Response:
        """`contents=redact&attest=true`: records with contents redacted and attested with
        the checkpoint key (`bridge.audit_redact`), for `audit export --redact`."""
        try:
            query = AuditQuery.from_params(request.query, lambda k: request.query.getall(k, []))
        except ValueError as exc:
            return _invalid(str(exc).split(":", 1)[0], str(exc))
        query = replace(query, limit=min(query.limit or DEFAULT_API_LIMIT, MAX_API_LIMIT))
        mode = request.query.get("contents", "stored")
        if mode not in ("stored", "open", "redact"):
            return _invalid("contents", "contents: stored, open or redact")
        attest = request.query.get("attest", "false")
        if attest not in ("true", "false") or (attest == "true" and mode != "redact"):
            return _invalid("attest", "attest: true or false, and true only with contents=redact")
        bridge = bridge_of(request)
        page = await query_store(bridge.store, query)
        if attest == "true":
            try:
                signer = load_signer(bridge.store.config.signing_key_file)
                page.events = await redact_page(bridge.store, signer, page.events)
            except RedactionError as exc:
                return web.json_response(
                    {"error": "redaction_failed", "message": str(exc)}, status=500
                )
        events = [record_json(r) for r in page.events]
        if mode == "redact" and attest == "false":
            for e, r in zip(events, page.events, strict=True):
                e["data"] = redacted(r.type, r.data)
        elif mode == "open":
            await _open_contents(bridge, request, query, page.events, events)
        return web.json_response(
            {
                "events": events,
                "next_position": page.next_position,
                "head": page.head,
            }
        )

    async def checkpoints(request: web.Request) -> web.Response:
        store = bridge_of(request).store
        found = await store.checkpoints() + CheckpointFile(store.config.checkpoints).read()
        return web.json_response({"checkpoints": [msgspec.to_builtins(c) for c in _unique(found)]})

    async def checkpoint_key(request: web.Request) -> web.Response:
        store = bridge_of(request).store
        pem = store.config.signing_key_file.with_suffix(".pub").read_text()
        return web.Response(text=pem, content_type="application/x-pem-file")

    app.router.add_get("/admin/events", events)
    app.router.add_get("/admin/checkpoints", checkpoints)
    app.router.add_get("/admin/checkpoint-key", checkpoint_key)


# -- command line ------------------------------------------------------------------------


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """One line on stderr and an exit code for every expected failure, never a traceback.

    The CLI's own handler cannot be relied on: under `python -m bridge.cli` this module
    imports a second copy of `bridge.cli`, whose `CliError` the running `main` does not know.
    """

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except BrokenPipeError:  # `lighthouse audit | head`: the reader has all it wants
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return EXIT_OK
        except AuditError as exc:
            print(f"lighthouse: {exc}", file=sys.stderr)
            return exc.code
        except (StoreError, OSError, ValueError, msgspec.ValidationError) as exc:
            print(f"lighthouse: {exc}", file=sys.stderr)
            return EXIT_FAIL

    return run


def _db_path(args: argparse.Namespace) -> Path:
    return Path(args.db) if args.db else Path("lighthouse.db")


def _via_server(args: argparse.Namespace) -> bool:
    from .cli_common import _server_up

    return args.db is None and _server_up()


async def open_source(args: argparse.Namespace) -> EventSource:
    """The running bridge when one answers and no --db was given, else the store file."""
    if await asyncio.to_thread(_via_server, args):
        return HttpSource(_db_path(args))
    return await StoreSource.open(_db_path(args))


def query_from_args(args: argparse.Namespace) -> AuditQuery:
    return AuditQuery(
        agent=args.agent,
        types=tuple(args.type or ()),
        stream=args.stream,
        request_id=args.request,
        since=parse_time(args.since, "--since") if args.since else None,
        until=parse_time(args.until, "--until") if args.until else None,
        from_position=args.from_position,
        to_position=args.to_position,
        limit=getattr(args, "limit", None),
    )
