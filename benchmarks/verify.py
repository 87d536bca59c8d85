"""`lighthouse verify` throughput on a 1M-event store, pinned to one core, beside two peers.

Rows (same store file, same process, pinned to one CPU with `sched_setaffinity`):

* ``sqlite SELECT (floor)`` — `SELECT` every column of every row with the stdlib driver
  and do nothing with it: no verifier that reads the rows can beat this.
* ``naive re-encode (peer)`` — what verify did before: decode each record into a Struct,
  re-encode its data canonically, then HMAC + SHA-256 (it hashed a re-encoding, so byte
  edits that decode the same passed).
* ``verify: chain walk`` — ours, hashing the stored bytes and checking canonical
  encoding (`verify_store` on a store whose integrity check is skipped).
* ``verify: integrity + index checks`` — SQLite's `PRAGMA integrity_check` and the
  index-vs-table totals alone.
* ``lighthouse verify (total)`` — the full `verify_with_config`, what the CLI runs.

Each row reports events/s over wall time and CPU seconds per million events (process CPU,
all threads). Every row must see every event — a row that checked fewer, or reported a
problem on the untouched store, is an error, not a result.

    python -m benchmarks.verify                 # 1M events (store cached in --store)
    python -m benchmarks.verify --events 100000 # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sqlite3
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchmarks._report import filesystem_of, format_table, machine_info, write_json
from events import NewEvent, SqliteEventStore, StoreConfig, verify_with_config
from events.chain import ChainKey, CheckpointFile, load_public_key
from events.model import encode_data, record_bytes
from events.verify import verify_store

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "verify.json"
TARGET_EVS = 300_000.0


async def build_store(path: Path, events: int) -> None:
    """A store of `events` events shaped like the bridge's (ids, agents, short texts)."""
    config = StoreConfig(path=path, synchronous="OFF", checkpoint_every=100_000)
    store = await SqliteEventStore.open(config)
    try:
        batch = 500
        for start in range(0, events, batch):
            n = min(batch, events - start)
            stream = f"request-{start // batch % 2000}"
            await store.append(
                stream,
                [
                    NewEvent(
                        type=("RequestCreated", "RequestAnswered", "MessageSent")[i % 3],
                        actor=f"agent-{(start + i) % 97}",
                        data={
                            "request_id": str(uuid.UUID(int=start + i)),
                            "to": f"agent-{(start + i) % 89}",
                            "text": f"event {start + i}: please review the change to module {i}",
                            "timeout_s": 30.0,
                        },
                    )
                    for i in range(n)
                ],
            )
    finally:
        await store.close()


def _cpu() -> float:
    return time.process_time()


async def _timed(fn: Callable[[], Awaitable[int]]) -> tuple[int, float, float]:
    wall, cpu = time.perf_counter(), _cpu()
    count = await fn()
    return count, time.perf_counter() - wall, _cpu() - cpu


def select_floor(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        count = 0
        cursor = conn.execute(
            "SELECT position, stream, version, event_id, type, time, actor, data, "
            "prev_hash, hash, digest FROM events ORDER BY position"
        )
        while rows := cursor.fetchmany(5000):
            count += len(rows)
        return count
    finally:
        conn.close()


async def naive_reencode(store: SqliteEventStore, key: ChainKey) -> int:
    """The pre-fix verify loop: decode to Records, re-encode, hash (no canonical check)."""
    count, position, digest = 0, 1, "0" * 64
    while page := await store.read_all(position, limit=5000):
        for record in page:
            body = record_bytes(record)
            if key.link(body, record.prev_hash) != record.hash:
                raise AssertionError(f"naive peer: hash mismatch at {record.position}")
            if hashlib.sha256(body + bytes.fromhex(digest)).hexdigest() != record.digest:
                raise AssertionError(f"naive peer: digest mismatch at {record.position}")
            digest = record.digest
        count += len(page)
        position = page[-1].position + 1
    encode_data({})  # keep the import honest: the peer re-encodes through the same encoder
    return count


class _NoIntegrity:
    """The store with its backend integrity check switched off: the chain walk alone."""

    def __init__(self, store: SqliteEventStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def integrity_problems(self) -> list[tuple[int, str, str]]:
        return []


async def run(args: argparse.Namespace) -> dict[str, Any]:
    path = Path(args.store)
    if not path.exists() or args.rebuild:
        for suffix in ("", "-wal", "-shm", ".checkpoints", ".lock"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        print(f"building a {args.events:,}-event store at {path} …", file=sys.stderr)
        started = time.perf_counter()
        await build_store(path, args.events)
        print(f"built in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    config = StoreConfig(path=path)
    ro = StoreConfig(path=path, readonly=True)
    key = ChainKey.load(config.chain_key_file, create=False)
    public = load_public_key(config.signing_key_file.with_suffix(".pub").read_bytes())
    rows: list[dict[str, Any]] = []
    errors: list[str] = []

    async def measure(name: str, fn: Callable[[], Awaitable[int]], expect: int | None) -> None:
        best: tuple[int, float, float] | None = None
        for _ in range(args.repeat):
            try:
                result = await _timed(fn)
            except Exception as exc:  # counted, never hidden
                errors.append(f"{name}: {type(exc).__name__}: {exc}")
                return
            if best is None or result[1] < best[1]:
                best = result
        assert best is not None
        count, wall, cpu = best
        if expect is not None and count != expect:
            errors.append(f"{name}: saw {count} events, expected {expect}")
        rows.append(
            {
                "name": name,
                "events": count,
                "wall_s": round(wall, 3),
                "events_per_s": round(count / wall) if count else None,
                "cpu_s_per_million": round(cpu / max(count, 1) * 1e6, 3) if count else None,
            }
        )

    store = await SqliteEventStore.open(ro)
    try:
        total = (await store.head()).position

        async def floor() -> int:
            return select_floor(path)

        async def peer() -> int:
            return await naive_reencode(store, key)

        async def walk() -> int:
            report = await verify_store(
                _NoIntegrity(store),  # type: ignore[arg-type]
                chain_key=key,
                public_key=public,
                file_checkpoints=CheckpointFile(config.checkpoints).read(),
            )
            if not report.ok:
                errors.append(f"chain walk reported problems: {report.problems[:3]}")
            return report.records_checked

        async def integrity() -> int:
            problems = await store.integrity_problems()
            if problems:
                errors.append(f"integrity check reported problems: {problems[:3]}")
            return total

        async def full() -> int:
            report = await verify_with_config(store, config)
            if not report.ok:
                errors.append(f"verify reported problems: {report.problems[:3]}")
            return report.records_checked

        await measure("sqlite SELECT (floor)", floor, total)
        await measure("naive re-encode (peer)", peer, total)
        await measure("verify: chain walk", walk, total)
        await measure("verify: integrity + index checks", integrity, total)
        await measure("lighthouse verify (total)", full, total)
    finally:
        await store.close()
    return {
        "benchmark": "verify",
        "events": total,
        "target_events_per_s": TARGET_EVS,
        "store_bytes": path.stat().st_size,
        "filesystem": filesystem_of(path),
        "pinned_cpu": args.cpu,
        "repeat": args.repeat,
        "rows": rows,
        "errors": errors,
        "machine": machine_info(["msgspec", "aiosqlite"], REPO),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--store", default=str(REPO / "benchmarks" / "results" / "verify-store.db"))
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached store")
    p.add_argument("--repeat", type=int, default=2, help="runs per row; the fastest is kept")
    p.add_argument("--cpu", type=int, default=0, help="CPU to pin to (one core)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    payload = asyncio.run(run(args))
    print(
        format_table(
            ["row", "events", "wall s", "events/s", "CPU s / 1M events"],
            [
                [r["name"], r["events"], r["wall_s"], r["events_per_s"], r["cpu_s_per_million"]]
                for r in payload["rows"]
            ],
        )
    )
    print(f"target: {TARGET_EVS:,.0f} events/s for `lighthouse verify` on one core")
    for error in payload["errors"]:
        print(f"ERROR: {error}")
    write_json(Path(args.out), payload)
    print(f"wrote {args.out}")
    return 1 if payload["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
