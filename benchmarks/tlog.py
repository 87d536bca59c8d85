"""Transparency-log costs: appending with the Merkle tree, and proving one event.

1. Append: the SQLite store with its Merkle hook against the same store with the hook
   switched off (`_grow_tree` returning no tree: no node rows, no frontier), interleaved
   round by round so both see the same machine load. Closed-loop appenders, durable
   commits (`synchronous=FULL`), fresh database per cell.
2. Proving at N events (default 1,000,000): per event, the inclusion proof read from the
   store (stored nodes + one 16-record tile), its verification as an outsider does it
   (leaf from the record's canonical bytes, RFC 9162 path), a whole one-record bundle
   (`audit prove --position` / `verify-proof`, with the Ed25519 checkpoint signature), and
   consistency proofs between random sizes. The peer is what proving one event cost
   before the tree: a contiguous export from that event to the checkpoint, verified —
   measured here for an event `--peer-span` records before the head.

Wall time and process CPU time are both reported (the store's work runs in this process).

    python -m benchmarks.tlog                  # 1M events (~minutes to build)
    python -m benchmarks.tlog --quick          # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._report import format_table, machine_info, percentile, write_json
from bridge.audit import AuditQuery, StoreSource
from bridge.audit_export import verify_export, write_export
from bridge.tlog import StoreProver, build_bundle, verify_bundle
from events import NewEvent, SqliteEventStore, StoreConfig, merkle
from events.tlog import consistency_proof, inclusion_proof, leaf_of

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "tlog.json"
PAYLOAD = {"agent": "agent-0042", "request_id": "r-000000", "text": "lorem ipsum " * 12}


class TreelessStore(SqliteEventStore):
    """The peer: the same store with the Merkle hook off (what appending cost before)."""

    def _grow_tree(self, conn: sqlite3.Connection, leaves: list[bytes]) -> None:
        return None


# -- 1. append ----------------------------------------------------------------------------


async def _append_cell(
    cls: type[SqliteEventStore], db: Path, appenders: int, batch: int, seconds: float
) -> dict[str, Any]:
    store = await cls.open(StoreConfig(path=db, checkpoint_interval=0, checkpoint_every=10**9))
    errors = 0
    counted = 0
    stop = False

    async def appender(i: int) -> None:
        nonlocal errors, counted, stop
        n = 0
        while not stop:
            events = [NewEvent(type="Bench", data={**PAYLOAD, "seq": n + k}) for k in range(batch)]
            try:
                await store.append(f"s{i}", events)
                counted += batch
            except Exception:  # counted, not hidden: a benchmark error is a result
                errors += 1
            n += batch

    warm = [asyncio.create_task(appender(i)) for i in range(appenders)]
    await asyncio.sleep(0.5)
    counted = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    done, cpu = counted, time.process_time() - cpu0
    wall = time.perf_counter() - t0
    stop = True
    await asyncio.gather(*warm)
    rows = None
    if cls is SqliteEventStore:
        rows = (await store.tree_nodes([(merkle.STORED_LEVEL, 0)])).get((merkle.STORED_LEVEL, 0))
    await store.close()
    return {
        "ev_per_s": done / wall,
        "cpu_us_per_event": 1e6 * cpu / max(done, 1),
        "errors": errors,
        "tree_built": rows is not None if cls is SqliteEventStore else None,
    }


async def bench_append(root: Path, seconds: float, rounds: int) -> list[dict[str, Any]]:
    out = []
    for appenders, batch in ((1, 1), (100, 1), (1, 100)):
        runs: dict[str, list[dict[str, Any]]] = {"with tree": [], "without tree": []}
        for r in range(rounds):
            order = [SqliteEventStore, TreelessStore]
            if r % 2:
                order.reverse()
            for cls in order:
                cell = root / f"append-{appenders}x{batch}-{r}-{cls.__name__}"
                cell.mkdir()
                name = "with tree" if cls is SqliteEventStore else "without tree"
                runs[name].append(await _append_cell(cls, cell / "a.db", appenders, batch, seconds))
                shutil.rmtree(cell)
        row: dict[str, Any] = {"workload": f"{appenders}x{batch}"}
        for name, cells in runs.items():
            row[name] = {
                "ev_per_s": sum(c["ev_per_s"] for c in cells) / len(cells),
                "cpu_us_per_event": sum(c["cpu_us_per_event"] for c in cells) / len(cells),
                "errors": sum(c["errors"] for c in cells),
                "rounds": [round(c["ev_per_s"]) for c in cells],
            }
        row["throughput_change_pct"] = 100 * (
            row["with tree"]["ev_per_s"] / row["without tree"]["ev_per_s"] - 1
        )
        out.append(row)
    return out


# -- 2. proving ---------------------------------------------------------------------------


async def build_store(db: Path, n: int) -> float:
    store = await SqliteEventStore.open(
        StoreConfig(path=db, synchronous="NORMAL", checkpoint_interval=0, checkpoint_every=10**9)
    )
    t0 = time.perf_counter()
    batch = 1000
    for start in range(0, n, batch):
        events = [
            NewEvent(type="Bench", data={**PAYLOAD, "request_id": f"r-{i:06d}"})
            for i in range(start, min(n, start + batch))
        ]
        await store.append(f"s{start // batch % 64}", events)
    await store.checkpoint()
    await store.close()
    return time.perf_counter() - t0


def _stats(samples: list[float]) -> dict[str, float | None]:
    s = sorted(samples)
    mean = sum(s) / len(s) if s else None
    return {
        "mean_us": None if mean is None else round(mean * 1e6, 1),
        "p50_us": None if not s else round(percentile(s, 50) * 1e6, 1),  # type: ignore[operator]
        "p99_us": None if not s else round(percentile(s, 99) * 1e6, 1),  # type: ignore[operator]
    }


async def bench_proofs(db: Path, n: int, samples: int, peer_span: int) -> dict[str, Any]:
    source = await StoreSource.open(db)
    store = source.store
    rng = random.Random(14)
    errors = 0
    cp = await StoreProver(store).checkpoint()
    size = cp.size
    pem = (db.parent / (db.name + ".keys") / "checkpoint.pub").read_bytes()
    from events import note

    head = note.parse_checkpoint(note.parse_note(cp.note).text)
    gen, ver, cpu_gen, cpu_ver = [], [], 0.0, 0.0
    for _ in range(samples):
        p = rng.randint(1, size)
        c0, t0 = time.process_time(), time.perf_counter()
        proof = await inclusion_proof(store, p - 1, size)
        [record] = await store.read_all(p, limit=1)
        t1, c1 = time.perf_counter(), time.process_time()
        try:
            merkle.verify_inclusion(leaf_of(record), p - 1, size, proof, head.root)
        except merkle.ProofError:
            errors += 1
        t2, c2 = time.perf_counter(), time.process_time()
        gen.append(t1 - t0)
        ver.append(t2 - t1)
        cpu_gen += c1 - c0
        cpu_ver += c2 - c1
    cgen, cver = [], []
    for _ in range(samples // 4):
        a, b = sorted(rng.sample(range(1, size + 1), 2))
        t0 = time.perf_counter()
        cproof = await consistency_proof(store, a, b)
        old_root = (await merkle_root(store, a), await merkle_root(store, b))
        t1 = time.perf_counter()
        try:
            merkle.verify_consistency(a, b, old_root[0], old_root[1], cproof)
        except merkle.ProofError:
            errors += 1
        cgen.append(t1 - t0)
        cver.append(time.perf_counter() - t1)
    bundle_gen, bundle_ver = [], []
    for _ in range(max(1, samples // 10)):
        p = rng.randint(1, size)
        t0 = time.perf_counter()
        [record] = await store.read_all(p, limit=1)
        bundle = await build_bundle([record], StoreProver(store))
        raw = json.dumps(bundle).encode()
        t1 = time.perf_counter()
        report = verify_bundle(raw, pem)
        errors += not report.ok
        bundle_gen.append(t1 - t0)
        bundle_ver.append(time.perf_counter() - t1)
    # the peer: prove one event `peer_span` records before the head with a contiguous export
    out = db.parent / "peer-export.jsonl"
    first = max(1, size - peer_span + 1)
    t0 = time.perf_counter()
    await write_export(source, AuditQuery(from_position=first), out)
    t1 = time.perf_counter()
    peer_report = verify_export(out, pem)
    t2 = time.perf_counter()
    errors += not peer_report.ok
    peer_bytes = out.stat().st_size
    await source.close()
    return {
        "events": n,
        "checkpoint_size": size,
        "samples": samples,
        "errors": errors,
        "inclusion_generate": _stats(gen),
        "inclusion_verify": _stats(ver),
        "inclusion_cpu_us": {
            "generate": round(1e6 * cpu_gen / samples, 1),
            "verify": round(1e6 * cpu_ver / samples, 1),
        },
        "consistency_generate_with_roots": _stats(cgen),
        "consistency_verify": _stats(cver),
        "bundle_generate": _stats(bundle_gen),
        "bundle_verify_with_signature": _stats(bundle_ver),
        "bundle_bytes": len(raw),
        "peer_contiguous_export": {
            "records": peer_report.records,
            "export_s": round(t1 - t0, 3),
            "verify_s": round(t2 - t1, 3),
            "bytes": peer_bytes,
        },
    }


async def merkle_root(store: Any, size: int) -> bytes:
    from events.tlog import tree_root

    return await tree_root(store, size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--peer-span", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-append", action="store_true")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    if args.quick:
        args.events, args.samples, args.seconds, args.rounds, args.peer_span = (
            20_000,
            200,
            1.0,
            1,
            5_000,
        )
    root = Path(tempfile.mkdtemp(prefix="lh-tlog-bench-", dir=REPO / "benchmarks"))
    try:
        append = (
            [] if args.skip_append else asyncio.run(bench_append(root, args.seconds, args.rounds))
        )
        db = root / "million.db"
        build_s = asyncio.run(build_store(db, args.events))
        proofs = asyncio.run(bench_proofs(db, args.events, args.samples, args.peer_span))
        proofs["build_s"] = round(build_s, 1)
        node_rows = sqlite3.connect(db).execute("SELECT count(*) FROM merkle_nodes").fetchone()[0]
        proofs["merkle_node_rows"] = node_rows
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if append:
        print("append with the Merkle tree vs without (same store, hook off), synchronous=FULL")
        print(
            format_table(
                [
                    "workload",
                    "with ev/s",
                    "without ev/s",
                    "change",
                    "cpu µs/ev with",
                    "without",
                    "errors",
                ],
                [
                    [
                        r["workload"],
                        f"{r['with tree']['ev_per_s']:,.0f}",
                        f"{r['without tree']['ev_per_s']:,.0f}",
                        f"{r['throughput_change_pct']:+.1f}%",
                        f"{r['with tree']['cpu_us_per_event']:.1f}",
                        f"{r['without tree']['cpu_us_per_event']:.1f}",
                        r["with tree"]["errors"] + r["without tree"]["errors"],
                    ]
                    for r in append
                ],
            )
        )
    p = proofs
    rows, built = p["merkle_node_rows"], p["build_s"]
    print(f"\nproofs at {p['events']:,} events ({rows:,} node rows; built in {built} s)")
    print(
        format_table(
            ["operation", "mean µs", "p50 µs", "p99 µs"],
            [
                [name, p[key]["mean_us"], p[key]["p50_us"], p[key]["p99_us"]]
                for name, key in (
                    ("inclusion proof, generate", "inclusion_generate"),
                    ("inclusion proof, verify", "inclusion_verify"),
                    ("consistency proof + 2 roots, generate", "consistency_generate_with_roots"),
                    ("consistency proof, verify", "consistency_verify"),
                    ("1-record bundle, generate", "bundle_generate"),
                    ("1-record bundle, verify (+Ed25519)", "bundle_verify_with_signature"),
                )
            ],
        )
    )
    peer = p["peer_contiguous_export"]
    print(
        f"inclusion CPU µs/event: generate {p['inclusion_cpu_us']['generate']}, verify "
        f"{p['inclusion_cpu_us']['verify']}; bundle {p['bundle_bytes']} bytes; errors {p['errors']}"
    )
    print(
        f"peer (before the tree): prove an event {peer['records']:,} records before the head "
        f"with a contiguous export: export {peer['export_s']} s + verify {peer['verify_s']} s, "
        f"{peer['bytes']:,} bytes"
    )
    write_json(
        args.out,
        {
            "machine": machine_info(repo=REPO),
            "args": vars(args) | {"out": str(args.out)},
            "append": append,
            "proofs": proofs,
        },
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
