"""`lighthouse`: the command line for operators and security teams.

Commands that change the store go through the running bridge's admin API when one answers
at LIGHTHOUSE_URL, and open the store file directly (taking its writer lock) when none
does. Errors are one clear line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .cli_common import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CliError,
    _admin_call,
    _database_url,
    _db,
    _server_up,
    _use_server,
)
from .config import (
    Settings,
    env_admin_token,
    env_checkpoint_file,
    env_redis_url,
    valid_node_id,
)
from .display import printable, table
from .observability import configure_logging

# Imports of the store, the server and the MCP SDK happen inside the commands that use
# them: `lighthouse --help` and `flags show` against a running bridge stay well under
# 0.3 s instead of ~1 s of imports before anything happens.

# -- direct store access -----------------------------------------------------------------


async def _with_bridge(settings: Settings, work: Callable[[Any], Awaitable[Any]]) -> Any:
    from .core import open_bridge

    bridge = await open_bridge(settings)
    try:
        return await work(bridge)
    finally:
        await bridge.close()


def _direct(settings: Settings, work: Callable[[Any], Awaitable[Any]]) -> Any:
    """Open the store as a bridge would (without serving) and run *work* on it: the store
    file with its writer lock, or the shared PostgreSQL store beside running bridges."""
    import asyncio

    return asyncio.run(_with_bridge(settings, work))


# -- commands ----------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from events import StoreError

    from .app import serve

    try:
        _serve(args, serve)
    except StoreError as exc:  # a damaged, read-only or locked store: say so and exit 1
        raise CliError(f"cannot serve: {exc}") from None
    except (CliError, OSError, ValueError, KeyboardInterrupt):
        raise
    except Exception as exc:  # any failed start or stop: the cause, a non-zero exit
        logging.getLogger("lighthouse").debug("serve failed", exc_info=True)
        raise CliError(f"serve failed: {type(exc).__name__}: {exc}") from None
    return EXIT_OK


def _serve(args: argparse.Namespace, serve: Callable[[Settings], None]) -> None:
    serve(
        Settings(
            host=args.host,
            port=args.port,
            db=_db(args),
            database_url=_database_url(args),
            redis_url=args.redis_url or env_redis_url(),
            redis_prefix=args.redis_prefix,
            key_dir=Path(args.key_dir) if args.key_dir else None,
            node_id=_node_id(args.node_id),
            synchronous=args.synchronous,
            admin_token=env_admin_token(),
            elicitation_default=not args.no_elicitation,
            rate_per_s=args.rate,
            burst=args.burst,
            key_grace_s=args.key_grace,
            ip_rate_per_s=args.ip_rate,
            ip_burst=args.ip_burst,
            max_sessions=args.max_sessions,
            max_sessions_per_agent=args.max_sessions_per_agent,
            session_idle_timeout_s=args.session_idle_timeout,
            shutdown_grace_s=args.shutdown_grace,
            guard_error_rate=args.guard_error_rate,
            guard_p99_ms=args.guard_p99_ms,
            guard_min_samples=args.guard_min_samples,
            trusted_proxies=tuple(args.trusted_proxy),
            allowed_origins=tuple(args.allowed_origin),
            allowed_hosts=tuple(args.allowed_host),
            max_content_bytes=args.max_content_bytes,
            max_open_per_caller=args.max_open_per_caller,
            max_open_per_recipient=args.max_open_per_recipient,
            max_fanout=args.max_fanout,
            message_retention_s=args.message_retention,
            refusal_window_s=args.refusal_window,
            refusal_burst=args.refusal_burst,
            max_connections_per_address=args.max_connections_per_address,
            header_timeout_s=args.header_timeout,
            body_min_rate=args.body_min_rate,
            metrics_token=_metrics_token(args.metrics_token_file),
            checkpoint_file=Path(args.checkpoint_file) if args.checkpoint_file else None,
        )
    )


def _node_id(node: str | None) -> str | None:
    if node is not None and not valid_node_id(node):
        raise CliError("--node-id must be 1-48 of A-Z a-z 0-9 _ -", EXIT_USAGE)
    return node


def _metrics_token(path: str | None) -> str | None:
    """From LIGHTHOUSE_METRICS_TOKEN or a file: a secret never goes on the command line."""
    if path:
        token = Path(path).read_text().strip()
        if not token:
            raise CliError(f"--metrics-token-file {path} is empty", EXIT_USAGE)
        return token
    return os.environ.get("LIGHTHOUSE_METRICS_TOKEN") or None


def cmd_migrate(args: argparse.Namespace) -> int:
    from events.sqlite import migrate as migrate_store

    url = _database_url(args)
    if url:  # safe beside running bridges: migrations take an advisory lock
        import asyncio

        from events.postgres import migrate as migrate_postgres

        applied = asyncio.run(migrate_postgres(url))
    elif _use_server(args):
        print("the running bridge applied migrations at start-up; nothing to do")
        return EXIT_OK
    else:
        applied = migrate_store(_db(args))
    print(f"applied migrations {applied}" if applied else "schema is up to date")
    from .contents import count_clear_contents

    clear = count_clear_contents(Settings(db=_db(args), database_url=url)).clear
    print(
        f"{clear} content field(s) written before encryption remain in clear text "
        "(the log is not rewritten; `agents forget` cannot erase those)"
        if clear
        else "no clear-text contents: every stored content is encrypted"
    )
    return EXIT_OK


def cmd_agents(args: argparse.Namespace) -> int:
    op, name = args.agents_command, getattr(args, "name", None)
    url = _database_url(args)
    if args.database_url is None and _use_server(args):  # an explicit store: work on it
        db = _db(args)
        if op == "add":
            body = {"name": name, "roles": args.role, "capabilities": args.capability}
            result = _admin_call("POST", "/admin/agents", body, db)
        elif op == "list":
            result = _admin_call("GET", "/admin/agents", None, db)
        elif op == "forget":
            body = {"reason": args.reason, "force": args.force}
            result = _admin_call("POST", f"/admin/agents/{name}/forget", body, db)
        else:
            action = "rotate" if op == "rotate-key" else "revoke"
            result = _admin_call("POST", f"/admin/agents/{name}/{action}", {}, db)
    else:

        async def work(bridge: Any) -> Any:
            from .admin import forget_agent

            agents = bridge.agents
            if op == "forget":
                return await forget_agent(bridge, name, args.reason, "cli", force=args.force)
            if op == "add":
                return await agents.add(name, args.role, args.capability, "cli")
            if op == "list":
                return {"agents": agents.list()}
            if op == "rotate-key":
                return await agents.rotate(name, "cli")
            return await agents.revoke(name, "cli")

        from .agents import AgentError

        try:
            settings = Settings(
                db=_db(args),
                database_url=url,
                key_dir=Path(args.key_dir) if args.key_dir else None,
            )
            result = _direct(settings, work)
        except AgentError as exc:
            raise CliError(str(exc)) from None
    if op == "list" and not args.json:
        print(_agents_table(result["agents"]))
    else:  # `add` prints the secret once, as JSON a script (or a person) can keep
        print(json.dumps(result, indent=None if op == "add" else 2))
    return EXIT_OK


def _agents_table(agents: list[dict[str, Any]]) -> str:
    if not agents:
        return "no agents registered"
    return table(
        ("agent", "roles", "capabilities", "status", "active keys"),
        [
            (
                a["agent"],
                ",".join(a["roles"]) or "-",
                ",".join(a["capabilities"]) or "-",
                "revoked" if a["revoked"] else "active",
                ",".join(a["active_key_ids"]) or "-",
            )
            for a in agents
        ],
    )


def _flags_table(flags: dict[str, Any]) -> str:
    changed_at = flags.get("changed_at")
    rows: list[tuple[str, Any]] = [
        ("elicitation", "enabled" if flags.get("elicitation_enabled") else "DISABLED"),
        ("rollout", f"{flags.get('rollout_percent')}%"),
        ("version", flags.get("version")),
        ("changed by", flags.get("changed_by")),
        ("changed at", _iso(changed_at) if isinstance(changed_at, int | float) else changed_at),
    ]
    rows += [
        (f"override {agent}", "on" if on else "off")
        for agent, on in sorted((flags.get("overrides") or {}).items())
    ]
    return table(("flag", "value"), rows)


def _iso(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _print_flags(flags: Any, as_json: bool) -> int:
    print(json.dumps(flags, indent=2) if as_json else _flags_table(flags))
    return EXIT_OK


def cmd_flags(args: argparse.Namespace) -> int:
    db = _db(args)
    if args.flags_command == "show":
        if _use_server(args):
            return _print_flags(_admin_call("GET", "/feature_flags", None, db), args.json)
        return _direct(
            Settings(db=db), lambda b: _print_async(_print_flags, b.flags.describe(), args.json)
        )
    change = _flag_change(args)
    headers = {"If-Match": str(args.if_version)} if args.if_version is not None else None
    if _use_server(args):
        flags = _admin_call("POST", "/feature_flags", change, db, headers=headers)
        return _print_flags(flags, args.json)
    raise CliError(
        "no bridge answers at LIGHTHOUSE_URL; start `lighthouse serve` to change "
        "flags (changes apply to the running bridge at once)",
        EXIT_UNAVAILABLE,
    )


async def _print_async(show: Callable[..., int], *args: Any) -> int:
    return show(*args)


def _flag_change(args: argparse.Namespace) -> dict[str, Any]:
    change: dict[str, Any] = {}
    if args.enable:
        change["elicitation_enabled"] = True
    if args.disable:
        change["elicitation_enabled"] = False
    if args.rollout is not None:
        change["rollout_percent"] = args.rollout
    if args.force:
        change["force"] = True
    overrides: dict[str, bool | None] = {}
    for spec in args.override or []:
        agent, _, value = spec.partition("=")
        mapping = {"on": True, "true": True, "off": False, "false": False, "clear": None}
        if not agent or value.lower() not in mapping:
            raise CliError(f"--override {spec!r}: use AGENT=on|off|clear", EXIT_USAGE)
        overrides[agent] = mapping[value.lower()]
    if overrides:
        change["overrides"] = overrides
    if args.reason:
        change["reason"] = args.reason
    if not change:
        raise CliError("flags set: nothing to change (see --help)", EXIT_USAGE)
    return change


def cmd_drain(args: argparse.Namespace) -> int:
    if not _server_up():
        raise CliError(
            "no bridge answers at LIGHTHOUSE_URL; nothing is in flight to drain", EXIT_UNAVAILABLE
        )
    if sys.stderr.isatty():
        print(
            f"draining: waiting up to {args.timeout:g}s for in-flight elicitations…",
            file=sys.stderr,
        )
    result = _admin_call(
        "POST", "/admin/drain", {"timeout": args.timeout}, _db(args), timeout=args.timeout + 30
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        labels = {
            "in_flight_at_start": "in flight at start",
            "finished": "finished",
            "moved_to_legacy": "moved to legacy",
            "draining": "draining",
        }
        print(table(("drain", "value"), [(labels.get(k, k), v) for k, v in result.items()]))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    import asyncio

    from events import StoreConfig, verify_with_config

    db = _db(args)
    url = _database_url(args)
    if url is None and not db.exists():
        raise CliError(f"no store at {db}", EXIT_UNAVAILABLE)
    config = StoreConfig(
        path=db,
        url=url,
        key_dir=Path(args.key_dir) if args.key_dir else None,
        readonly=True,
        checkpoint_file=Path(args.checkpoint) if args.checkpoint else env_checkpoint_file(),
    )
    pem = Path(args.public_key).read_bytes() if args.public_key else None
    progress = _progress("verifying") if args.progress or sys.stderr.isatty() else None

    async def run() -> Any:
        store = await _open_readonly(config)
        try:
            return await verify_with_config(store, config, public_key_pem=pem, progress=progress)
        finally:
            await store.close()

    report = asyncio.run(run())
    if progress is not None:
        print(file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "size": report.size,
                    "records_checked": report.records_checked,
                    "checkpoints_checked": report.checkpoints_checked,
                    "last_checkpoint": report.last_checkpoint,
                    "tree_nodes_checked": report.tree_nodes_checked,
                    "tree_notes_checked": report.tree_notes_checked,
                    "problems": [
                        {"position": p.position, "kind": p.kind, "detail": p.detail}
                        for p in report.problems
                    ],
                }
            )
        )
    elif report.ok:
        print(
            f"OK: {report.records_checked} events, chain intact, "
            f"{report.checkpoints_checked} signed checkpoints hold "
            f"(last covers {report.last_checkpoint}), Merkle tree "
            f"({report.tree_nodes_checked} stored nodes) and "
            f"{report.tree_notes_checked} signed tree notes hold"
        )
    else:
        first = report.first
        assert first is not None
        print(printable(f"FAILED at position {first.position}: {first.kind}: {first.detail}"))
        for p in report.problems[1:10]:
            print(printable(f"  also at {p.position}: {p.kind}: {p.detail}"))
    return EXIT_OK if report.ok else EXIT_FAIL


async def _open_readonly(config: Any) -> Any:
    if config.url:
        from events.postgres import PostgresEventStore

        return await PostgresEventStore.open(config)
    from events import SqliteEventStore

    return await SqliteEventStore.open(config)


def _progress(label: str) -> Callable[[int, int], None]:
    """A one-line progress display on stderr (redrawn at most 10 times a second)."""
    import time

    started = last = time.monotonic()

    def show(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < 0.1 and done < total:
            return
        last = now
        pct = 100 * done // total if total else 100
        rate = done / max(now - started, 1e-9)
        print(
            f"\r{label}: {done}/{total} ({pct}%, {rate:,.0f}/s)",
            end="",
            file=sys.stderr,
            flush=True,
        )

    return show


# -- parser ------------------------------------------------------------------------------


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lighthouse", description=__doc__.splitlines()[0])
    p.add_argument("--log-level", default=os.environ.get("LIGHTHOUSE_LOG_LEVEL", "WARNING"))
    sub = p.add_subparsers(dest="command", required=True)

    def with_db(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--db", help="store file (default ./lighthouse.db)")
        return sp

    def with_url(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument(
            "--database-url",
            metavar="URL",
            help="postgresql://… store shared by several bridges (or LIGHTHOUSE_DATABASE_URL, "
            "which keeps a password out of the process list)",
        )
        sp.add_argument(
            "--key-dir",
            help="chain/checkpoint/admin keys (default: beside --db, ./lighthouse.db.keys); "
            "every bridge of one store needs the same contents",
        )
        return sp

    s = with_url(with_db(sub.add_parser("serve", help="run the bridge")))
    s.add_argument(
        "--redis-url",
        metavar="URL",
        help="share nonces and rate limits between bridges (or LIGHTHOUSE_REDIS_URL)",
    )
    s.add_argument(
        "--redis-prefix",
        default="lighthouse:",
        help="key prefix in Redis (one per deployment sharing the server)",
    )
    s.add_argument(
        "--node-id",
        help="this bridge's name among bridges sharing one store; starts its session ids "
        "(default HOST-PORT, stable across restarts)",
    )
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--synchronous", default="FULL", choices=["NORMAL", "FULL", "EXTRA"])
    s.add_argument("--rate", type=float, default=50.0, help="requests/s per agent")
    s.add_argument("--burst", type=int, default=100, help="burst per agent")
    s.add_argument(
        "--key-grace",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="how long a rotated-out key stays valid (default 3600)",
    )
    s.add_argument(
        "--ip-rate",
        type=float,
        default=500.0,
        help="requests/s per client address, checked before signatures",
    )
    s.add_argument("--ip-burst", type=int, default=1000, help="burst per client address")
    s.add_argument(
        "--max-sessions",
        type=int,
        default=10_000,
        help="concurrent MCP sessions (2025 protocol) the bridge keeps",
    )
    s.add_argument(
        "--max-sessions-per-agent",
        type=int,
        default=32,
        help="concurrent MCP sessions one agent may hold (default 32)",
    )
    s.add_argument(
        "--shutdown-grace",
        type=float,
        default=10.0,
        metavar="S",
        help="on SIGTERM, drain for up to S seconds, then exit (default 10; keep it below "
        "the orchestrator's kill timeout)",
    )
    s.add_argument(
        "--session-idle-timeout",
        type=float,
        default=900.0,
        metavar="S",
        help="end a session with no stream, call or request for S seconds (default 900)",
    )
    s.add_argument(
        "--guard-error-rate",
        type=float,
        default=0.05,
        metavar="FRACTION",
        help="auto-rollback when the elicitation error rate exceeds this",
    )
    s.add_argument(
        "--guard-p99-ms",
        type=float,
        default=1000.0,
        help="auto-rollback when the elicitation p99 exceeds this",
    )
    s.add_argument(
        "--guard-min-samples",
        type=int,
        default=20,
        help="elicitations in the window before the guard may act",
    )
    s.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="CIDR",
        help="honour X-Forwarded-For from these proxies (repeatable)",
    )
    s.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="Host header allowed besides the bound address (repeatable): the name clients "
        "use for a load balancer in front (one name for every bridge behind it)",
    )
    s.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="browser Origin allowed besides the bound host (repeatable)",
    )
    s.add_argument(
        "--max-content-bytes",
        type=int,
        default=64 * 1024,
        metavar="BYTES",
        help="largest message, question (with its schema) or answer (default 65536)",
    )
    s.add_argument(
        "--max-open-per-caller",
        type=int,
        default=256,
        metavar="N",
        help="open requests one agent may have asked (default 256)",
    )
    s.add_argument(
        "--max-open-per-recipient",
        type=int,
        default=1024,
        metavar="N",
        help="open requests waiting on one agent (default 1024)",
    )
    s.add_argument(
        "--max-fanout",
        type=int,
        default=64,
        metavar="N",
        help="recipients one role:/capability: message may reach (default 64)",
    )
    s.add_argument(
        "--message-retention",
        type=float,
        default=7 * 86400.0,
        metavar="SECONDS",
        help="unacknowledged messages expire (recorded) after this (default 7 days)",
    )
    s.add_argument(
        "--refusal-window",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="refusals beyond --refusal-burst per source and reason in this window are "
        "recorded as one aggregated event (default 60)",
    )
    s.add_argument(
        "--refusal-burst",
        type=int,
        default=5,
        help="refusals per source and reason recorded one by one per window (default 5)",
    )
    s.add_argument(
        "--max-connections-per-address",
        type=int,
        default=256,
        help="open connections one client address may hold (default 256)",
    )
    s.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a connection must send a request's headers within this (default 10)",
    )
    s.add_argument(
        "--body-min-rate",
        type=float,
        default=1024.0,
        metavar="BYTES_PER_S",
        help="after a 5 s grace a request body must arrive at least this fast (default 1024)",
    )
    s.add_argument(
        "--metrics-token-file",
        metavar="FILE",
        help="serve /metrics to the bearer of this token from anywhere (also "
        "LIGHTHOUSE_METRICS_TOKEN); without one, /metrics answers loopback clients only",
    )
    s.add_argument(
        "--checkpoint-file",
        metavar="PATH",
        help="signed checkpoint file; keep it on another disk or host "
        "(default: $LIGHTHOUSE_CHECKPOINT_FILE, else beside the store)",
    )
    s.add_argument(
        "--no-elicitation",
        action="store_true",
        help="start with elicitation off (until a flag change)",
    )
    s.set_defaults(func=cmd_serve)

    with_url(with_db(sub.add_parser("migrate", help="apply schema migrations"))).set_defaults(
        func=cmd_migrate
    )

    a = sub.add_parser("agents", help="register agents and manage their keys")
    asub = a.add_subparsers(dest="agents_command", required=True)

    def agent_store(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """`--db` or `--database-url` (then the shared store and vault, beside running
        bridges); without either, through the bridge at LIGHTHOUSE_URL when one answers."""
        return with_url(with_db(sp))

    add = agent_store(asub.add_parser("add", help="register an agent; prints its secret once"))
    add.add_argument("name")
    add.add_argument("--role", action="append", default=[])
    add.add_argument("--capability", action="append", default=[])
    agent_store(asub.add_parser("list")).add_argument(
        "--json", action="store_true", help="JSON instead of a table"
    )
    for name in ("rotate-key", "revoke"):
        agent_store(asub.add_parser(name)).add_argument("name")
    fg = agent_store(asub.add_parser("forget", help="erase an agent's contents (destroys its key)"))
    fg.add_argument("name")
    fg.add_argument("--reason", required=True, help="recorded with the erasure")
    fg.add_argument("--force", action="store_true", help="even while it has open requests")
    a.set_defaults(func=cmd_agents)

    f = sub.add_parser("flags", help="show or change the elicitation flag")
    fsub = f.add_subparsers(dest="flags_command", required=True)
    with_db(fsub.add_parser("show")).add_argument(
        "--json", action="store_true", help="JSON instead of a table"
    )
    fs = with_db(fsub.add_parser("set"))
    fs.add_argument("--json", action="store_true", help="print the new state as JSON")
    onoff = fs.add_mutually_exclusive_group()
    onoff.add_argument("--enable", action="store_true", help="elicitation on")
    onoff.add_argument("--disable", action="store_true", help="elicitation off (kill switch)")
    fs.add_argument("--rollout", type=int, metavar="PERCENT")
    fs.add_argument("--override", action="append", metavar="AGENT=on|off|clear")
    fs.add_argument(
        "--force",
        action="store_true",
        help="also move in-flight elicitations to the legacy path now",
    )
    fs.add_argument("--reason", help="recorded with the change")
    fs.add_argument("--if-version", type=int, help="refuse if flags changed since VERSION")
    f.set_defaults(func=cmd_flags)

    d = with_db(sub.add_parser("drain", help="finish or move in-flight elicitations"))
    d.add_argument("--timeout", type=float, default=30.0)
    d.add_argument("--json", action="store_true", help="JSON instead of a table")
    d.set_defaults(func=cmd_drain)

    v = with_url(
        with_db(sub.add_parser("verify", help="check the hash chain and signed checkpoints"))
    )
    v.add_argument(
        "--checkpoint",
        help="checkpoint file (default: $LIGHTHOUSE_CHECKPOINT_FILE, else beside the store)",
    )
    v.add_argument("--public-key", help="checkpoint public key PEM (default: from the key dir)")
    v.add_argument("--json", action="store_true")
    v.add_argument(
        "--progress",
        action="store_true",
        help="show progress on stderr (default: only when stderr is a terminal)",
    )
    v.set_defaults(func=cmd_verify)
    chosen = _command_in(sys.argv[1:] if argv is None else argv)
    chosen_module = _EXTENSION_COMMANDS.get(chosen or "", (None, ""))[0]
    if chosen_module is not None:  # only the module of the command that runs is imported
        importlib.import_module(chosen_module).add_commands(sub)
    for command, (module, help_text) in _EXTENSION_COMMANDS.items():
        if module != chosen_module:
            sub.add_parser(command, help=help_text, add_help=False)
    return p


# Subsystems that bring their own commands: command -> (module, help in `lighthouse -h`).
_EXTENSION_COMMANDS: dict[str, tuple[str, str]] = {
    "repair": ("bridge.repair", "verify, rebuild state from the log, resolve requests left open"),
    "audit": ("bridge.audit_cli", "query, export and verify the event log"),
    "mcp": ("bridge.gateway", "stdio MCP gateway for hosts that cannot sign requests"),
    "contents": ("bridge.contents", "check encrypted contents (by position)"),
    "keys": ("bridge.contents", "manage the master key (rotate-master)"),
    "witness": ("bridge.witness", "cosign a log's checkpoints only while they stay consistent"),
}


def _command_in(argv: list[str]) -> str | None:
    """The subcommand *argv* names (the first word that is not an option or its value)."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    configure_logging(args.log_level)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"lighthouse: {exc}", file=sys.stderr)
        return exc.code
    except (OSError, ValueError) as exc:
        print(f"lighthouse: {printable(exc)}", file=sys.stderr)
        return EXIT_FAIL
    except Exception as exc:
        from security import VaultError

        if isinstance(exc, VaultError):  # missing or wrong master key: refuse, clearly
            print(f"lighthouse: {printable(exc)}", file=sys.stderr)
            return EXIT_FAIL
        from events import StoreError

        if not isinstance(exc, StoreError):
            raise
        print(f"lighthouse: {printable(exc)}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # `python -m bridge.cli`: run the imported module, so extension
    # modules and this one share one `CliError` class (not a second copy in `__main__`).
    from bridge.cli import main as _main

    sys.exit(_main())
