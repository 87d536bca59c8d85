"""Durable append throughput: Lighthouse's SqliteEventStore vs eventsourcing's SQLite recorder.

Workloads (each appender is a closed loop: append, wait for the durable result, repeat,
always to its own stream):

* ``1x1``    — 1 appender, 1 event per append
* ``10x1``   — 10 concurrent appenders, 1 event per append
* ``100x1``  — 100 concurrent appenders, 1 event per append
* ``1x100``  — 1 appender, batches of 100 events per append

Ours runs the appenders as coroutines on one event loop (the store group-commits them).
eventsourcing's recorder is synchronous, so N appenders are N threads sharing one
``SQLiteApplicationRecorder`` — how a user would get concurrency out of it. Both use a
fresh WAL database file per cell, on a real disk, at the same ``PRAGMA synchronous``.

Every cell runs a warm-up, then a fixed measuring window; throughput counts the events
whose append completed inside the window. Errors are counted by exception type, and after
each cell the row count in the database is checked against the appends that succeeded.

The ``log`` and ``log-sealed`` systems measure what encryption at rest costs an ask: each
append is a typical ``RequestCreated`` (a new request stream, expected version 0) through
the bridge's `Log`, without and with the `Sealer` (AES-256-GCM under the asker's data key,
bound to store/stream/version/event id). Their cells also report process CPU per append,
and the summary prints the sealed cell's CPU overhead beside its unsealed peer.

    python -m benchmarks.event_store            # ~3 s per cell, FULL and NORMAL
    python -m benchmarks.event_store --quick    # smoke run
    python -m benchmarks.event_store --systems log log-sealed --sync FULL
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from benchmarks._report import filesystem_of, format_table, machine_info, percentile, write_json
from events import NewEvent, SqliteEventStore, StoreConfig

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "event_store.json"
EVENT_TYPE = "BenchEvent"
TARGET_EVS = 25_000.0
TARGET_RATIO = 5.0
SYNC_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


@dataclass(frozen=True)
class Workload:
    name: str
    appenders: int
    batch: int

    @property
    def label(self) -> str:
        what = "event" if self.batch == 1 else f"batch of {self.batch}"
        return f"{self.appenders} appender{'s' if self.appenders > 1 else ''} x {what}"


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("1x1", 1, 1),
        Workload("10x1", 10, 1),
        Workload("100x1", 100, 1),
        Workload("1x100", 1, 100),
    )
}


@dataclass
class CellResult:
    system: str
    workload: str
    synchronous: str
    appenders: int
    batch: int
    window_s: float
    events: int = 0
    appends: int = 0
    ev_per_s: float = 0.0
    latency_ms: dict[str, float | None] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    ok_events_total: int = 0
    rows_in_db: int | None = None
    cpu_us_per_append: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


class _Stats:
    """Per-appender counters; merged after the cell (no shared lock in the hot loop)."""

    __slots__ = ("appends", "errors", "events", "latencies", "ok_events_total")

    def __init__(self) -> None:
        self.events = 0
        self.appends = 0
        self.ok_events_total = 0
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()

    def record(self, started: float, done: float, n: int, start: float, end: float) -> None:
        self.ok_events_total += n
        if start <= done < end:
            self.events += n
            self.appends += 1
            self.latencies.append(done - started)


def _finish(result: CellResult, stats: Sequence[_Stats]) -> CellResult:
    lat = sorted(x for s in stats for x in s.latencies)
    errors: Counter[str] = Counter()
    for s in stats:
        errors.update(s.errors)
    result.events = sum(s.events for s in stats)
    result.appends = sum(s.appends for s in stats)
    result.ok_events_total = sum(s.ok_events_total for s in stats)
    result.ev_per_s = result.events / result.window_s
    result.errors = dict(errors)

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 3)

    result.latency_ms = {
        "p50": ms(percentile(lat, 50)),
        "p90": ms(percentile(lat, 90)),
        "p99": ms(percentile(lat, 99)),
        "max": ms(lat[-1] if lat else None),
        "mean": ms(sum(lat) / len(lat) if lat else None),
    }
    if result.rows_in_db is not None and result.rows_in_db != result.ok_events_total:
        key = "row_count_mismatch"
        result.errors[key] = result.errors.get(key, 0) + abs(
            result.rows_in_db - result.ok_events_total
        )
    return result


def make_payload(size: int) -> dict[str, Any]:
    """Event data whose canonical JSON (with a 6-digit `seq`) is `size` bytes."""
    data: dict[str, Any] = {
        "agent": "agent-0042",
        "args": {"limit": 10, "query": "lighthouse bench"},
        "seq": 100_000,
        "session": "3f6c1a52-5d0b-4a8e-9a8f-0d6f2c1b7e11",
        "text": "",
        "tool": "search",
    }
    filler = "lorem ipsum dolor sit amet "
    pad = size - len(msgspec.json.encode(data, order="sorted"))
    data["text"] = (filler * (pad // len(filler) + 1))[: max(0, pad)]
    return data


def _count_rows(db: Path, table: str) -> int | None:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return None


def _journal_mode(db: Path) -> str | None:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return None


# -- ours ------------------------------------------------------------------------------------


def ask_created(seq: int, asker: str) -> dict[str, Any]:
    """A typical RequestCreated: a two-sentence question and a small answer schema."""
    return {
        "request_id": uuid.uuid4().hex,
        "from": asker,
        "to": "reviewer",
        "recipient": "reviewer",
        "message": f"Please review change #{seq}: does the retry loop in the uploader back off "
        "exponentially, and is the maximum wait bounded? Answer yes/no with a reason.",
        "schema": {
            "type": "object",
            "properties": {"approved": {"type": "boolean"}, "reason": {"type": "string"}},
            "required": ["approved"],
        },
        "timeout_s": 60.0,
        "deadline": time.time() + 60.0,
    }


def _bridge_log(store: SqliteEventStore, db: Path, sealed: bool) -> tuple[Any, Any]:
    from bridge.log import Log
    from bridge.sealing import Sealer
    from security import DataKeys, SQLiteSecretVault

    if not sealed:
        return Log(store, []), None
    vault = SQLiteSecretVault(db, os.urandom(32))
    return Log(store, [], sealer=Sealer(store.store_id, DataKeys(vault))), vault


async def _ours_cell(
    cell_dir: Path,
    sync: str,
    w: Workload,
    payload: dict[str, Any],
    warmup: float,
    seconds: float,
    system: str = "ours",
) -> CellResult:
    db = cell_dir / "bench.db"
    store = await SqliteEventStore.open(StoreConfig(path=db, synchronous=sync))
    result = CellResult(system, w.name, sync, w.appenders, w.batch, seconds)
    via_log = system in ("log", "log-sealed")
    log, vault = _bridge_log(store, db, system == "log-sealed") if via_log else (None, None)
    # Effective setting on the writer connection (private attribute: best effort only).
    wconn = getattr(store, "_wconn", None)
    effective = None
    if isinstance(wconn, sqlite3.Connection):
        effective = SYNC_NAMES.get(wconn.execute("PRAGMA synchronous").fetchone()[0])
    result.settings = {
        "synchronous_requested": sync,
        "synchronous_effective": effective,
        "journal_mode": _journal_mode(db),
        "store_config": {
            "max_batch": store.config.max_batch,
            "checkpoint_every": store.config.checkpoint_every,
            "checkpoint_interval": store.config.checkpoint_interval,
        },
    }

    stats = [_Stats() for _ in range(w.appenders)]
    stop = False
    t0 = time.perf_counter()
    start, end = t0 + warmup, t0 + warmup + seconds
    cpu: list[float] = []

    async def appender(i: int) -> None:
        st = stats[i]
        stream = f"bench-{i}"
        seq = 0
        while not stop:
            if via_log:
                asker = f"agent-{i % 20}"
                events = [
                    NewEvent(type="RequestCreated", data=ask_created(seq + k, asker), actor=asker)
                    for k in range(w.batch)
                ]
            else:
                events = [
                    NewEvent(type=EVENT_TYPE, data={**payload, "seq": seq + k}, actor="bench")
                    for k in range(w.batch)
                ]
            started = time.perf_counter()
            try:
                if log is not None:
                    await log.append(f"request-{i}-{seq}", events, expected_version=0)
                else:
                    await store.append(stream, events)
            except Exception as exc:
                st.errors[type(exc).__name__] += 1
                await asyncio.sleep(0.001)  # never spin without yielding
                continue
            st.record(started, time.perf_counter(), w.batch, start, end)
            seq += w.batch

    tasks = [asyncio.create_task(appender(i)) for i in range(w.appenders)]
    try:
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        cpu.append(time.process_time())
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        cpu.append(time.process_time())
    finally:
        stop = True
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for o in outcomes:
            if isinstance(o, BaseException):
                stats[0].errors[f"appender crashed: {type(o).__name__}"] += 1
        await store.close()
        if vault is not None:
            vault.close()
    result.rows_in_db = _count_rows(db, "events")
    result = _finish(result, stats)
    if len(cpu) == 2 and result.appends:
        result.cpu_us_per_append = round((cpu[1] - cpu[0]) / result.appends * 1e6, 1)
    return result


# -- eventsourcing ---------------------------------------------------------------------------


def _theirs_cell(
    cell_dir: Path, sync: str, w: Workload, payload: dict[str, Any], warmup: float, seconds: float
) -> CellResult:
    from eventsourcing.persistence import StoredEvent
    from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

    db = cell_dir / "bench.db"
    datastore = SQLiteDatastore(str(db))  # stock settings: pool_size=5, pool_timeout=5 s
    # eventsourcing never issues PRAGMA synchronous, so its connections run at SQLite's
    # compiled-in default. Only when the cell asks for something else do we set it on each
    # new pooled connection, so both stores are compared at the same durability.
    probe = sqlite3.connect(":memory:")
    default = SYNC_NAMES.get(probe.execute("PRAGMA synchronous").fetchone()[0])
    probe.close()
    patched = default != sync
    if patched:
        pool = datastore.pool
        create: Callable[[], Any] = pool._create_connection

        def create_with_sync() -> Any:
            conn = create()
            conn._sqlite_conn.execute(f"PRAGMA synchronous={sync}")
            return conn

        pool._create_connection = create_with_sync  # type: ignore[method-assign]
    recorder = SQLiteApplicationRecorder(datastore)
    recorder.create_table()
    result = CellResult("eventsourcing", w.name, sync, w.appenders, w.batch, seconds)

    encode = msgspec.json.Encoder(order="sorted").encode
    topic = f"benchmarks.event_store:{EVENT_TYPE}"
    stats = [_Stats() for _ in range(w.appenders)]
    stop = threading.Event()
    t0 = time.perf_counter()
    start, end = t0 + warmup, t0 + warmup + seconds

    def appender(i: int) -> None:
        st = stats[i]
        originator = uuid.uuid4()
        version = 1
        while not stop.is_set():
            events = [
                StoredEvent(
                    originator_id=originator,
                    originator_version=version + k,
                    topic=topic,
                    state=encode({**payload, "seq": version + k}),
                )
                for k in range(w.batch)
            ]
            started = time.perf_counter()
            try:
                recorder.insert_events(events)
            except Exception as exc:
                st.errors[type(exc).__name__] += 1
                time.sleep(0.001)
                continue
            st.record(started, time.perf_counter(), w.batch, start, end)
            version += w.batch

    threads = [
        threading.Thread(target=appender, args=(i,), name=f"es-appender-{i}", daemon=True)
        for i in range(w.appenders)
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(max(0.0, end - time.perf_counter()))
    finally:
        stop.set()
        for t in threads:
            t.join()
    with datastore.transaction(commit=False) as c:
        c.execute("PRAGMA synchronous")
        effective = SYNC_NAMES.get(c.fetchone()[0])
    result.settings = {
        "synchronous_requested": sync,
        "synchronous_default": default,
        "synchronous_set_by_benchmark": patched,
        "synchronous_effective": effective,
        "journal_mode": _journal_mode(db),
        "recorder": "eventsourcing.sqlite.SQLiteApplicationRecorder",
        "datastore": "SQLiteDatastore(db_name=<file>) with defaults "
        "(pool_size=5, max_overflow=10, pool_timeout=5.0, lock_timeout=5)",
        "transaction": "BEGIN (deferred) ... COMMIT per insert_events; pool serialises writers",
    }
    datastore.close()
    result.rows_in_db = _count_rows(db, "stored_events")
    return _finish(result, stats)


# -- driver ----------------------------------------------------------------------------------


def _temp_root(requested: Path | None) -> Path:
    """A directory on a real disk: `--tmpdir`, else the system temp dir unless it is in RAM."""
    if requested is not None:
        root = requested
    else:
        root = Path(tempfile.gettempdir())
        if filesystem_of(root)[1] in {"tmpfs", "ramfs"}:
            root = REPO
    root.mkdir(parents=True, exist_ok=True)
    return root


def _fmt_rate(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=None, help="measuring window per cell (default 3)"
    )
    parser.add_argument(
        "--warmup", type=float, default=None, help="warm-up before each window (default 0.5)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 0.5 s cells, 0.2 s warm-up by default"
    )
    parser.add_argument(
        "--sync", nargs="+", default=["FULL", "NORMAL"], type=str.upper, choices=SYNC_NAMES.values()
    )
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument(
        "--systems",
        nargs="+",
        default=["ours", "eventsourcing", "log", "log-sealed"],
        choices=["ours", "eventsourcing", "log", "log-sealed"],
    )
    parser.add_argument("--event-bytes", type=int, default=800, help="JSON size of event data")
    parser.add_argument("--tmpdir", type=Path, default=None, help="where the databases go")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = 0.5 if args.quick else 3.0
    if args.warmup is None:
        args.warmup = 0.2 if args.quick else 0.5

    payload = make_payload(args.event_bytes)
    payload_bytes = len(msgspec.json.encode(payload, order="sorted"))
    root = _temp_root(args.tmpdir)
    mount, fstype = filesystem_of(root)
    info = machine_info(["eventsourcing", "msgspec", "aiosqlite"], repo=REPO)
    print(
        f"# event_store benchmark: {args.seconds:g} s/cell after {args.warmup:g} s warm-up, "
        f"{payload_bytes}-byte events, databases under {root} ({fstype} on {mount})\n"
        f"# python {info['python']}, sqlite {info['sqlite']}, {info['cpu_count']} CPUs, "
        f"load {info['loadavg_1_5_15']}",
        flush=True,
    )

    results: list[CellResult] = []
    with tempfile.TemporaryDirectory(prefix="lighthouse-bench-", dir=root) as tmp:
        for sync in args.sync:
            for name in args.workloads:
                w = WORKLOADS[name]
                for system in args.systems:
                    cell_dir = Path(tmp) / f"{system}-{sync}-{name}"
                    cell_dir.mkdir()
                    gc.collect()
                    if system != "eventsourcing":
                        r = asyncio.run(
                            _ours_cell(
                                cell_dir, sync, w, payload, args.warmup, args.seconds, system
                            )
                        )
                    else:
                        r = _theirs_cell(cell_dir, sync, w, payload, args.warmup, args.seconds)
                    shutil.rmtree(cell_dir, ignore_errors=True)
                    results.append(r)
                    err = f", errors {r.errors}" if r.errors else ""
                    print(
                        f"  {system:<13} {sync:<6} {w.label:<26} {_fmt_rate(r.ev_per_s):>9} ev/s"
                        f"  p50 {_fmt_ms(r.latency_ms['p50'])} ms"
                        f"  p99 {_fmt_ms(r.latency_ms['p99'])} ms"
                        f"  cpu {r.cpu_us_per_append if r.cpu_us_per_append else '-'} us/append"
                        f"{err}",
                        flush=True,
                    )

    by_key = {(r.system, r.synchronous, r.workload): r for r in results}
    rows: list[list[object]] = []
    comparisons: list[dict[str, Any]] = []
    for sync in args.sync:
        for name in args.workloads:
            ours = by_key.get(("ours", sync, name))
            theirs = by_key.get(("eventsourcing", sync, name))
            ratio = (
                ours.ev_per_s / theirs.ev_per_s if ours and theirs and theirs.ev_per_s > 0 else None
            )
            comparisons.append(
                {
                    "workload": name,
                    "synchronous": sync,
                    "ours_ev_per_s": ours.ev_per_s if ours else None,
                    "eventsourcing_ev_per_s": theirs.ev_per_s if theirs else None,
                    "ratio": ratio,
                }
            )
            rows.append(
                [
                    f"{WORKLOADS[name].label}",
                    sync,
                    _fmt_rate(ours.ev_per_s if ours else None),
                    _fmt_rate(theirs.ev_per_s if theirs else None),
                    "-" if ratio is None else f"{ratio:.2f}x",
                    _fmt_ms(ours.latency_ms["p50"] if ours else None),
                    _fmt_ms(ours.latency_ms["p99"] if ours else None),
                    f"{ours.error_count if ours else '-'}/{theirs.error_count if theirs else '-'}",
                ]
            )
    headers = [
        "workload",
        "sync",
        "ours ev/s",
        "eventsourcing ev/s",
        "ratio",
        "ours p50 ms",
        "ours p99 ms",
        "errors ours/es",
    ]
    print()
    print(format_table(headers, rows))

    target: dict[str, Any] = {"min_ev_per_s": TARGET_EVS, "min_ratio": TARGET_RATIO}
    key = ("FULL", "100x1")
    ours_t = by_key.get(("ours", *key))
    theirs_t = by_key.get(("eventsourcing", *key))
    if ours_t is not None:
        target["ours_ev_per_s"] = ours_t.ev_per_s
        target["ev_per_s_met"] = ours_t.ev_per_s >= TARGET_EVS
        line = f"\ntarget (100 appenders x 1 event, FULL): {ours_t.ev_per_s:,.0f} ev/s vs "
        line += f"{TARGET_EVS:,.0f} -> {'met' if target['ev_per_s_met'] else 'NOT met'}"
        if theirs_t is not None and theirs_t.ev_per_s > 0:
            target["ratio"] = ours_t.ev_per_s / theirs_t.ev_per_s
            target["ratio_met"] = target["ratio"] >= TARGET_RATIO
            line += f"; {target['ratio']:.2f}x eventsourcing vs {TARGET_RATIO:g}x -> "
            line += "met" if target["ratio_met"] else "NOT met"
        print(line)
    sealing = _sealing_costs(by_key, args.sync, args.workloads)
    seal_cost = None
    if "log-sealed" in args.systems:
        with tempfile.TemporaryDirectory(prefix="lighthouse-seal-", dir=root) as tmp:
            seal_cost = seal_cost_us(Path(tmp))
        print(
            f"\nsealing one RequestCreated alone: {seal_cost['seal_us']} us CPU to seal, "
            f"{seal_cost['open_us']} us to open (replay)"
        )
    if sealing:
        print()
        print(
            format_table(
                [
                    "workload",
                    "sync",
                    "log cpu us/append",
                    "sealed cpu us/append",
                    "cpu +%",
                    "log ev/s",
                    "sealed ev/s",
                ],
                [
                    [
                        c["workload"],
                        c["synchronous"],
                        c["log_cpu_us"],
                        c["sealed_cpu_us"],
                        f"{c['cpu_overhead_pct']:+.1f}%",
                        _fmt_rate(c["log_ev_per_s"]),
                        _fmt_rate(c["sealed_ev_per_s"]),
                    ]
                    for c in sealing
                ],
            )
        )
    total_errors = sum(r.error_count for r in results)
    if total_errors:
        print(f"\n{total_errors} errors recorded; see 'errors' per cell in {args.out}")

    info["loadavg_end"] = machine_info().get("loadavg_1_5_15")
    write_json(
        args.out,
        {
            "benchmark": "event_store",
            "command": " ".join(
                [Path(sys.executable).name, "-m", "benchmarks.event_store", *(argv or sys.argv[1:])]
            ),
            "machine": info,
            "params": {
                "seconds": args.seconds,
                "warmup": args.warmup,
                "quick": args.quick,
                "event_data_json_bytes": payload_bytes,
                "tmp_root": str(root),
                "tmp_filesystem": {"mount": mount, "type": fstype},
                "workloads": {n: asdict(WORKLOADS[n]) for n in args.workloads},
            },
            "comparisons": comparisons,
            "sealing": sealing,
            "seal_cost": seal_cost,
            "target": target,
            "cells": [asdict(r) for r in results],
        },
    )
    print(f"\nwrote {args.out}")
    return 1 if total_errors else 0


def seal_cost_us(tmp: Path, n: int = 3000) -> dict[str, float]:
    """CPU of sealing and of opening one typical RequestCreated, measured alone (no I/O):
    the part of the sealed cells' overhead that load on the machine cannot blur."""
    from bridge.sealing import Sealer
    from security import DataKeys, SQLiteSecretVault

    vault = SQLiteSecretVault(tmp / "seal-cost.db", os.urandom(32))
    try:
        sealer = Sealer("bench-store", DataKeys(vault))
        events = [
            NewEvent(type="RequestCreated", data=ask_created(i, "agent-1"), actor="agent-1")
            for i in range(n)
        ]
        sealer.seal("request-x", 1, events[0])  # the data key is made outside the timing
        t0 = time.process_time()
        sealed = [sealer.seal("request-x", 1, e) for e in events]
        t1 = time.process_time()
        for e in sealed:
            sealer.open(1, "request-x", 1, e.event_id, e.type, e.data)
        t2 = time.process_time()
    finally:
        vault.close()
    return {"seal_us": round((t1 - t0) / n * 1e6, 2), "open_us": round((t2 - t1) / n * 1e6, 2)}


def _sealing_costs(
    by_key: dict[tuple[str, str, str], CellResult], syncs: list[str], workloads: list[str]
) -> list[dict[str, Any]]:
    """Per workload, the sealed Log cell's CPU per append beside the unsealed one's."""
    out = []
    for sync in syncs:
        for name in workloads:
            plain, sealed = by_key.get(("log", sync, name)), by_key.get(("log-sealed", sync, name))
            if not (plain and sealed and plain.cpu_us_per_append and sealed.cpu_us_per_append):
                continue
            out.append(
                {
                    "workload": name,
                    "synchronous": sync,
                    "log_cpu_us": plain.cpu_us_per_append,
                    "sealed_cpu_us": sealed.cpu_us_per_append,
                    "cpu_overhead_pct": 100
                    * (sealed.cpu_us_per_append / plain.cpu_us_per_append - 1),
                    "log_ev_per_s": plain.ev_per_s,
                    "sealed_ev_per_s": sealed.ev_per_s,
                }
            )
    return out


if __name__ == "__main__":
    sys.exit(main())
