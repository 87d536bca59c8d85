"""Operator commands for contents at rest: check them, count clear text, rotate the master key.

`lighthouse contents check` opens every sealed record of a store file with the vault's
keys and reports, by position, each one that does not open (moved, tampered, key row
missing) without stopping at the first; erased contents (`agents forget`) are counted, not
reported. `lighthouse keys rotate-master` re-wraps every key in the vault under a new
master key; no event is touched, because events are sealed under data keys.

Both work on the store directly (like `verify`): the store file, or with `--database-url`
the shared PostgreSQL store and its vault; they read the same vault and master key file a
bridge on that store uses. On PostgreSQL, `rotate-master` refuses while any bridge of the
store is alive (its heartbeat in `lh_nodes`): every bridge must stop, and then carry the
new key file, because a bridge still running holds the old key.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from events import EventStore
from security import DataKeys, load_master_key

from .backends import open_store, open_vault
from .config import Settings
from .domain import AGENT_FORGOTTEN
from .sealing import CONTENT_FIELDS, ERASED, OpenFailure, Sealer, clear_contents, is_sealed

_PAGE = 2000


@dataclass
class ContentReport:
    records: int = 0
    sealed: int = 0
    erased: int = 0
    clear: int = 0
    """Content fields still in clear text (events written before encryption)."""
    failures: list[OpenFailure] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "sealed": self.sealed,
            "erased": self.erased,
            "clear_text_contents": self.clear,
            "failures": [
                {"position": f.position, "stream": f.stream, "type": f.type, "reason": f.reason}
                for f in self.failures
            ],
        }


async def scan_contents(store: EventStore, sealer: Sealer | None) -> ContentReport:
    """Every record once, in order; with a sealer, every sealed content is opened too."""
    report = ContentReport()
    if sealer is not None:
        forgets = await store.read_all(1, limit=None, types=[AGENT_FORGOTTEN])
        sealer.prime(r.data for r in forgets)
    position = 1
    types = list(CONTENT_FIELDS)
    while True:
        page = await store.read_all(position, limit=_PAGE)
        for r in page:
            report.records += 1
            if r.type not in types:
                continue
            if is_sealed(r.data):
                report.sealed += 1
                if sealer is not None:
                    opened = sealer.open_record(r)
                    fields = r.data["sealed"].get("fields") or []
                    if fields and all(opened.get(f) == ERASED for f in fields):
                        report.erased += 1
            else:
                report.clear += clear_contents(r.type, r.data)
        if len(page) < _PAGE:
            break
        position = page[-1].position + 1
    if sealer is not None:
        report.failures = list(sealer.failures)
    return report


def count_clear_contents(settings: Settings) -> ContentReport:
    """For `migrate`: how much of the log is still clear text (no key needed)."""

    async def run() -> ContentReport:
        store = await open_store(settings, readonly=True)
        try:
            return await scan_contents(store, None)
        finally:
            await store.close()

    return asyncio.run(run())


def _settings(args: argparse.Namespace) -> Settings:
    """The store and key dir the command names; a store that is not there is refused."""
    from .cli_common import EXIT_UNAVAILABLE, CliError, _database_url, _db

    settings = Settings(
        db=_db(args),
        database_url=_database_url(args),
        key_dir=Path(args.key_dir) if args.key_dir else None,
    )
    if settings.database_url is None and not settings.db.exists():
        raise CliError(f"no store at {settings.db}", EXIT_UNAVAILABLE)
    return settings


def cmd_contents_check(args: argparse.Namespace) -> int:
    from .cli_common import EXIT_FAIL, EXIT_OK

    settings = _settings(args)
    vault = open_vault(settings, initialize=False)

    async def run() -> ContentReport:
        store = await open_store(settings, readonly=True)
        try:
            return await scan_contents(store, Sealer(store.store_id, DataKeys(vault)))
        finally:
            await store.close()

    try:
        report = asyncio.run(run())
    finally:
        vault.close()
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(
            f"{report.records} events: {report.sealed} sealed contents "
            f"({report.erased} erased), {report.clear} clear-text content field(s), "
            f"{len(report.failures)} that do not open"
        )
        for f in report.failures[:50]:
            print(f"  position {f.position} ({f.type} in {f.stream}): {f.reason}")
    return EXIT_FAIL if report.failures else EXIT_OK


def cmd_rotate_master(args: argparse.Namespace) -> int:
    """New key written beside the old one first, the vault re-wrapped in one transaction,
    then the new file moved over the old: at every step one file opens the vault."""
    from events.chain import write_secret_file

    from .cli_common import EXIT_OK, CliError, _server_up

    if _server_up():
        raise CliError("a bridge is running: stop it before rotating the master key")
    settings = _settings(args)
    if settings.database_url:
        from .nodes import live_nodes

        alive = asyncio.run(live_nodes(settings.database_url))
        if alive:
            raise CliError(
                f"bridges of this store are running ({', '.join(alive)}): stop every one "
                "before rotating the master key"
            )
    key_file = settings.master_key_file
    if not key_file.exists():
        raise CliError(f"master key file {key_file} not found")
    vault = open_vault(settings, initialize=False)
    staged = key_file.with_name(key_file.name + ".new")
    try:
        if staged.exists():
            staged_key = load_master_key(staged)
        else:
            staged_key = os.urandom(32)
            write_secret_file(staged, base64.b64encode(staged_key) + b"\n")
        rewrapped = vault.rewrap(staged_key)
    finally:
        vault.close()
    os.replace(staged, key_file)
    print(f"re-wrapped {rewrapped} key(s) under a new master key in {key_file}; no event changed")
    if settings.database_url:
        print(f"copy {key_file} to every bridge of this store before starting them")
    return EXIT_OK


def add_commands(subparsers: Any) -> None:
    c = subparsers.add_parser("contents", help="check encrypted contents of the log")
    csub = c.add_subparsers(dest="contents_command", required=True)
    check = csub.add_parser("check", help="open every sealed content; report failures")
    k = subparsers.add_parser("keys", help="manage the master key")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    rotate = ksub.add_parser("rotate-master", help="re-wrap the vault under a new master key")
    for sp in (check, rotate):
        sp.add_argument("--db", help="store file (default ./lighthouse.db)")
        sp.add_argument(
            "--database-url",
            metavar="URL",
            help="the shared PostgreSQL store and vault (or LIGHTHOUSE_DATABASE_URL)",
        )
        sp.add_argument("--key-dir", help="key dir (default: beside --db)")
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=cmd_contents_check)
    rotate.set_defaults(func=cmd_rotate_master)
