"""`lighthouse audit …`: the security team's commands on top of `bridge.audit`.

Queries, the security report, the public key, exports (`bridge.audit_export`) and proofs
(`bridge.tlog`). A separate module from the audit library so that the library's users
(exports, proofs, the witness, the console) never import the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from events import StoreConfig

from .audit import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    SECURITY_TYPES,
    TABLE_HEADER,
    AuditError,
    AuditQuery,
    HttpSource,
    _db_path,
    _guarded,
    _via_server,
    format_security,
    iterate,
    open_source,
    parse_time,
    progress_printer,
    query_from_args,
    record_json,
    replace_data,
    security_report,
    table_row,
)
from .display import printable_lines
from .sealing import redacted


@_guarded
def cmd_audit(args: argparse.Namespace) -> int:
    query = query_from_args(args)

    async def run() -> None:
        source = await open_source(args)
        if args.contents and not isinstance(source, HttpSource):
            await source.close()
            raise AuditError("--contents needs the running bridge: every content read is recorded")
        if isinstance(source, HttpSource):
            source.contents = "open" if args.contents else "redact" if args.redact else "stored"
        try:
            records = iterate(source, query)
            if args.format == "jsonl":
                async for r in records:
                    if args.redact:  # also for a store file read directly
                        r = replace_data(r, redacted(r.type, r.data))
                    sys.stdout.write(json.dumps(record_json(r), separators=(",", ":")) + "\n")
            else:
                print(TABLE_HEADER)
                async for r in records:
                    if args.redact:
                        r = replace_data(r, redacted(r.type, r.data))
                    print(table_row(r))
        finally:
            await source.close()

    asyncio.run(run())
    return EXIT_OK


@_guarded
def cmd_security(args: argparse.Namespace) -> int:
    since = parse_time(args.since, "--since") if args.since else None
    query = AuditQuery(types=SECURITY_TYPES, since=since)

    async def run() -> dict[str, Any]:
        source = await open_source(args)
        try:
            return security_report([r async for r in iterate(source, query)], since)
        finally:
            await source.close()

    report = asyncio.run(run())
    print(json.dumps(report, indent=2) if args.format == "json" else format_security(report))
    return EXIT_OK


@_guarded
def cmd_pubkey(args: argparse.Namespace) -> int:
    if _via_server(args):
        pem = _fetch_text("/admin/checkpoint-key", _db_path(args))
    else:
        path = StoreConfig(path=_db_path(args)).signing_key_file.with_suffix(".pub")
        if not path.exists():
            raise AuditError(f"no checkpoint public key at {path}", EXIT_UNAVAILABLE)
        pem = path.read_text()
    sys.stdout.write(pem)
    return EXIT_OK


def _fetch_text(path: str, db: Path) -> str:
    import urllib.error
    import urllib.request

    from .cli_common import _admin_token, _token_hint
    from .config import env_url

    request = urllib.request.Request(env_url() + path)
    token = _admin_token(db)
    if token.value:
        request.add_header("Authorization", f"Bearer {token.value}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read().decode()
    except urllib.error.HTTPError as exc:
        hint = f"; {_token_hint(token)}" if exc.code == 401 else ""
        raise AuditError(f"GET {path} failed with HTTP {exc.code}{hint}") from None


@_guarded
def cmd_export(args: argparse.Namespace) -> int:
    from .audit_export import write_export

    query = replace(query_from_args(args), limit=None)
    out = Path(args.out)
    previous = Path(args.previous).read_text() if args.previous else None

    async def run() -> Any:
        source = await open_source(args)
        if isinstance(source, HttpSource):
            await source.sign_head()
            if args.redact:
                source.contents = "redact"  # no content crosses the wire, not even ciphertext
        try:
            return await write_export(
                source,
                query,
                out,
                progress_printer("exporting"),
                contiguous=args.contiguous,
                previous=previous,
                redact=args.redact,
            )
        finally:
            await source.close()

    summary = asyncio.run(run())
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(summary.describe())
    return EXIT_OK


@_guarded
def cmd_verify_export(args: argparse.Namespace) -> int:
    from .audit_export import verify_export

    export, key = Path(args.file), Path(args.public_key)
    if not export.is_file():
        raise AuditError(f"no export file at {export}", EXIT_USAGE)
    if not key.is_file():
        raise AuditError(f"no public key file at {key}", EXIT_USAGE)
    previous = Path(args.previous).read_text() if args.previous else None
    report = verify_export(export, key.read_bytes(), progress_printer("verifying"), previous)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(
        json.dumps(report.to_json(), indent=2) if args.json else printable_lines(report.describe())
    )
    return EXIT_OK if report.ok else EXIT_FAIL


def _add_filters(sp: argparse.ArgumentParser, *, limit: bool) -> None:
    sp.add_argument("--db", help="store file (default: the running bridge, else ./lighthouse.db)")
    sp.add_argument("--agent", help="actor, or named in data (from/to/recipient/by/agent)")
    sp.add_argument("--type", action="append", metavar="TYPE", help="event type (repeatable)")
    sp.add_argument("--stream")
    sp.add_argument("--request", metavar="ID", help="request id")
    sp.add_argument("--since", metavar="TIME", help="ISO-8601 or unix seconds")
    sp.add_argument("--until", metavar="TIME", help="ISO-8601 or unix seconds (inclusive)")
    sp.add_argument("--from-position", type=int, default=1, metavar="N")
    sp.add_argument("--to-position", type=int, metavar="M")
    if limit:
        sp.add_argument("--limit", type=int, metavar="N", help="at most N events")


def add_commands(sub: Any) -> None:
    """`lighthouse audit [filters]` and its subcommands export, verify-export, pubkey, security."""
    audit = sub.add_parser("audit", help="query, export and verify the event log")
    _add_filters(audit, limit=True)
    audit.add_argument("--format", choices=["table", "jsonl"], default="table")
    shown = audit.add_mutually_exclusive_group()
    shown.add_argument(
        "--contents",
        action="store_true",
        help="show contents in clear (running bridge only; each read is recorded)",
    )
    shown.add_argument(
        "--redact", action="store_true", help="leave contents out (sizes and fields only)"
    )
    audit.set_defaults(func=cmd_audit)
    asub = audit.add_subparsers(dest="audit_command")

    export = asub.add_parser("export", help="write a verifiable JSONL export")
    _add_filters(export, limit=False)
    export.add_argument("--out", required=True, metavar="FILE")
    export.add_argument(
        "--contiguous",
        action="store_true",
        help="filtered: every record in the range (proves completeness, reveals the others)",
    )
    export.add_argument("--previous", metavar="CHECKPOINT", help="prove it extends this one")
    export.add_argument(
        "--redact",
        action="store_true",
        help="leave contents out, ciphertext too: each such record's clear fields, digest "
        "and tree leaf are signed with the checkpoint key instead (verify-export checks "
        "them; it cannot recompute them without the contents)",
    )
    export.set_defaults(func=cmd_export)

    verify = asub.add_parser("verify-export", help="verify an export offline")
    verify.add_argument("file")
    verify.add_argument("--public-key", required=True, metavar="PEM")
    verify.add_argument("--previous", metavar="CHECKPOINT", help="a checkpoint seen before")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=cmd_verify_export)

    from .tlog import add_audit_commands

    add_audit_commands(asub)

    pubkey = asub.add_parser("pubkey", help="print the checkpoint public key (PEM)")
    pubkey.add_argument("--db")
    pubkey.set_defaults(func=cmd_pubkey)

    security = asub.add_parser("security", help="rejections, replays, rate limits, flag changes")
    security.add_argument("--db")
    security.add_argument("--since", metavar="TIME")
    security.add_argument("--format", choices=["table", "json"], default="table")
    security.set_defaults(func=cmd_security)
