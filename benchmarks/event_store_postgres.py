"""Durable appends on PostgreSQL: PostgresEventStore vs eventsourcing's PostgreSQL recorder.

Cells (each appender is a closed loop: append one event, wait until it is durable, repeat,
always to its own stream; every cell gets a fresh database on the same server):

* ``ours``            — 100 appenders as coroutines in one process (one group-commit writer)
* ``ours-2proc`` / ``ours-3proc`` — the same 100 appenders *per process* in 2 or 3
  separate processes (`tests.pg_appender`) sharing one log: what several bridges get
* ``eventsourcing-pool1``   — `PostgresApplicationRecorder`, 100 threads, stock
  datastore (`pool_size=1`): how it runs out of the box
* ``eventsourcing-pool100`` — the same with a connection per thread (`pool_size=100`):
  its best case for 100 concurrent writers

Both sides commit with PostgreSQL's default `synchronous_commit=on` (durable). CPU is
reported per event for the client process(es) and for the PostgreSQL backends serving
the cell's database (read from /proc by the database name in their process title; the
shared WAL writer and checkpointer are not included). Errors are counted, and the row
count is checked against acknowledged appends.

    python -m benchmarks.event_store_postgres            # 5 s cells
    python -m benchmarks.event_store_postgres --quick    # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import msgspec

from benchmarks._report import format_table, machine_info, write_json
from benchmarks.event_store import make_payload
from events import NewEvent, StoreConfig
from events.postgres import PostgresEventStore

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "event_store_postgres.json"
ADMIN_URL = os.environ.get("LIGHTHOUSE_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
TARGET_RATIO = 5.0
_CLK = os.sysconf("SC_CLK_TCK")


def _db_url(name: str) -> str:
    return urlsplit(ADMIN_URL)._replace(path="/" + name).geturl()


async def _create_db(name: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        await conn.close()


async def _drop_db(name: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _rows(url: str, table: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


class _Sampler:
    """Backends come and go during a cell: sample their CPU often, keep each pid's max."""

    def __init__(self, dbname: str) -> None:
        self.dbname = dbname
        self._seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    title = f.read().replace(b"\0", b" ")
                if not title.startswith(b"postgres:") or f" {self.dbname} ".encode() not in title:
                    continue
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                cpu = (int(fields[11]) + int(fields[12])) / _CLK
                self._seen[int(pid)] = max(self._seen.get(int(pid), 0.0), cpu)
            except (OSError, IndexError, ValueError):
                continue

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def __enter__(self) -> _Sampler:
        self._sample()
        self._base = dict(self._seen)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def cpu(self) -> float:
        return sum(v - self._base.get(pid, 0.0) for pid, v in self._seen.items())


def _cell(
    system: str, events: int, seconds: float, errors: Counter[str], client_cpu: float, pg: float
) -> dict[str, Any]:
    return {
        "system": system,
        "events": events,
        "seconds": seconds,
        "ev_per_s": events / seconds if seconds else 0.0,
        "errors": dict(errors),
        "client_cpu_us_per_event": 1e6 * client_cpu / events if events else None,
        "pg_backend_cpu_us_per_event": 1e6 * pg / events if events else None,
    }


# -- ours, one process -------------------------------------------------------------------------


async def _ours(url: str, key_dir: Path, appenders: int, payload: dict, warmup: float, secs: float):
    store = await PostgresEventStore.open(StoreConfig(path=key_dir, url=url, key_dir=key_dir))
    errors: Counter[str] = Counter()
    counted = 0
    ok_total = 0
    stop = False
    t0 = time.perf_counter()
    start, end = t0 + warmup, t0 + warmup + secs

    async def appender(i: int) -> None:
        nonlocal counted, ok_total
        seq = 0
        while not stop:
            event = NewEvent(type="BenchEvent", data={**payload, "seq": seq}, actor="bench")
            try:
                await store.append(f"bench-{i}", [event])
            except Exception as exc:
                errors[type(exc).__name__] += 1
                await asyncio.sleep(0.001)
                continue
            ok_total += 1
            seq += 1
            if start <= time.perf_counter() < end:
                counted += 1

    tasks = [asyncio.create_task(appender(i)) for i in range(appenders)]
    await asyncio.sleep(warmup)
    cpu0 = time.process_time()
    await asyncio.sleep(max(0.0, end - time.perf_counter()))
    cpu = time.process_time() - cpu0
    stop = True
    await asyncio.gather(*tasks)
    await store.close()
    return counted, ok_total, errors, cpu


# -- ours, several processes ---------------------------------------------------------------------


def _ours_procs(url: str, key_dir: Path, procs: int, appenders: int, secs: float):
    start_at = time.time() + 3.0  # all processes open first, then start in one millisecond
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.pg_appender",
                url,
                str(key_dir),
                "--events",
                "0",
                "--seconds",
                str(secs),
                "--concurrency",
                str(appenders),
                "--start-at",
                f"{start_at:.3f}",
                "--tag",
                f"p{i}",
                "--quiet",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        for i in range(procs)
    ]
    summaries = []
    errors: Counter[str] = Counter()
    for child in children:
        out, err = child.communicate(timeout=secs + 120)
        if child.returncode != 0:
            errors[f"process exit {child.returncode}"] += 1
            print(err[-2000:], file=sys.stderr)
            continue
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    appended = sum(s["appended"] for s in summaries)
    errors["StoreError"] += sum(s["errors"] for s in summaries)
    errors = +errors
    cpu = sum(s["cpu_seconds"] for s in summaries)
    wall = max((s["seconds"] for s in summaries), default=secs)
    return appended, errors, cpu, wall


# -- eventsourcing ---------------------------------------------------------------------------------


def _theirs(url: str, threads: int, pool_size: int, payload: dict, warmup: float, secs: float):
    from eventsourcing.persistence import StoredEvent
    from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

    parts = urlsplit(url)
    datastore = PostgresDatastore(
        dbname=parts.path.lstrip("/"),
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        user=parts.username or "postgres",
        password=parts.password or "",
        pool_size=pool_size,
        max_overflow=0,
        max_waiting=0,
    )
    recorder = PostgresApplicationRecorder(datastore)
    recorder.create_table()
    encode = msgspec.json.Encoder(order="sorted").encode
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    counted = [0]
    ok_total = [0]
    stop = threading.Event()
    t0 = time.perf_counter()
    start, end = t0 + warmup, t0 + warmup + secs

    def appender() -> None:
        originator = uuid.uuid4()
        version = 1
        mine = total = 0
        while not stop.is_set():
            event = StoredEvent(
                originator_id=originator,
                originator_version=version,
                topic="benchmarks:BenchEvent",
                state=encode({**payload, "seq": version}),
            )
            try:
                recorder.insert_events([event])
            except Exception as exc:
                with lock:
                    errors[type(exc).__name__] += 1
                time.sleep(0.001)
                continue
            version += 1
            total += 1
            if start <= time.perf_counter() < end:
                mine += 1
        with lock:
            counted[0] += mine
            ok_total[0] += total

    workers = [threading.Thread(target=appender, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    time.sleep(warmup)
    cpu0 = time.process_time()
    time.sleep(max(0.0, end - time.perf_counter()))
    cpu = time.process_time() - cpu0
    stop.set()
    for w in workers:
        w.join()
    datastore.close()
    return counted[0], ok_total[0], errors, cpu


# -- driver ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--appenders", type=int, default=100)
    parser.add_argument("--event-bytes", type=int, default=800)
    parser.add_argument(
        "--systems",
        nargs="+",
        default=[
            "ours",
            "ours-2proc",
            "ours-3proc",
            "eventsourcing-pool1",
            "eventsourcing-pool100",
        ],
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    secs = args.seconds or (1.0 if args.quick else 5.0)
    payload = make_payload(args.event_bytes)
    info = machine_info(["asyncpg", "eventsourcing", "psycopg"], repo=REPO)
    print(
        f"# event_store_postgres: {args.appenders} appenders, {secs:g} s/cell, "
        f"{args.event_bytes}-byte events, {info['cpu_count']} CPUs, "
        f"load {info['loadavg_1_5_15']}",
        flush=True,
    )
    cells: list[dict[str, Any]] = []
    for system in args.systems:
        name = f"lh_bench_{uuid.uuid4().hex[:10]}"
        asyncio.run(_create_db(name))
        url = _db_url(name)
        try:
            with tempfile.TemporaryDirectory(prefix="lh-pg-bench-") as tmp, _Sampler(name) as pg:
                key_dir = Path(tmp) / "keys"
                table = "events"
                if system == "ours":
                    counted, ok_total, errors, cpu = asyncio.run(
                        _ours(url, key_dir, args.appenders, payload, args.warmup, secs)
                    )
                    window = secs
                elif system.startswith("ours-"):
                    procs = int(system.split("-")[1].removesuffix("proc"))
                    # identity and keys first, as the first bridge would create them
                    asyncio.run(_ours(url, key_dir, 1, payload, 0.0, 0.1))
                    before = asyncio.run(_rows(url, "events"))
                    counted, errors, cpu, window = _ours_procs(
                        url, key_dir, procs, args.appenders, secs
                    )
                    ok_total = counted + before
                else:
                    pool = int(system.removeprefix("eventsourcing-pool"))
                    table = "stored_events"
                    counted, ok_total, errors, cpu = _theirs(
                        url, args.appenders, pool, payload, args.warmup, secs
                    )
                    window = secs
            rows = asyncio.run(_rows(url, table))
            if rows != ok_total:
                errors["row_count_mismatch"] += abs(rows - ok_total)
            cell = _cell(system, counted, window, errors, cpu, pg.cpu)
            cell["rows_in_db"] = rows
        finally:
            asyncio.run(_drop_db(name))
        cells.append(cell)
        print(
            f"  {system:<22} {cell['ev_per_s']:>9,.0f} ev/s  "
            f"client {cell['client_cpu_us_per_event'] or 0:,.0f} µs/ev  "
            f"pg {cell['pg_backend_cpu_us_per_event'] or 0:,.0f} µs/ev  errors {cell['errors']}",
            flush=True,
        )

    by = {c["system"]: c for c in cells}
    best_theirs = max(
        (c for c in cells if c["system"].startswith("eventsourcing")),
        key=lambda c: c["ev_per_s"],
        default=None,
    )
    rows_out = []
    for c in cells:
        ratio = (
            c["ev_per_s"] / best_theirs["ev_per_s"]
            if best_theirs and best_theirs["ev_per_s"] and c["system"].startswith("ours")
            else None
        )
        rows_out.append(
            [
                c["system"],
                f"{c['ev_per_s']:,.0f}",
                "-" if ratio is None else f"{ratio:.1f}x",
                f"{c['client_cpu_us_per_event'] or 0:,.0f}",
                f"{c['pg_backend_cpu_us_per_event'] or 0:,.0f}",
                sum(c["errors"].values()),
            ]
        )
    print()
    print(
        format_table(
            [
                "system",
                "ev/s",
                "vs best eventsourcing",
                "client CPU µs/ev",
                "PG CPU µs/ev",
                "errors",
            ],
            rows_out,
        )
    )
    target: dict[str, Any] = {"min_ratio": TARGET_RATIO}
    if "ours" in by and best_theirs and best_theirs["ev_per_s"]:
        target["ratio"] = by["ours"]["ev_per_s"] / best_theirs["ev_per_s"]
        target["against"] = best_theirs["system"]
        target["ratio_met"] = target["ratio"] >= TARGET_RATIO
        print(
            f"\ntarget: {target['ratio']:.1f}x {best_theirs['system']} vs {TARGET_RATIO:g}x -> "
            + ("met" if target["ratio_met"] else "NOT met")
        )
    total_errors = sum(sum(c["errors"].values()) for c in cells)
    info["loadavg_end"] = machine_info().get("loadavg_1_5_15")
    write_json(
        args.out,
        {
            "benchmark": "event_store_postgres",
            "command": " ".join(
                ["python", "-m", "benchmarks.event_store_postgres", *(argv or sys.argv[1:])]
            ),
            "machine": info,
            "params": {
                "seconds": secs,
                "warmup": args.warmup,
                "appenders": args.appenders,
                "event_data_json_bytes": args.event_bytes,
                "server": ADMIN_URL,
            },
            "target": target,
            "cells": cells,
        },
    )
    print(f"\nwrote {args.out}")
    return 1 if total_errors else 0


if __name__ == "__main__":
    sys.exit(main())
