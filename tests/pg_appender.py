"""A separate appending process for the multi-process PostgreSQL tests and benchmark.

    python -m tests.pg_appender URL KEY_DIR --events N --concurrency C --start-at T
                                [--seconds S --quiet]

Opens its own `PostgresEventStore` on the shared database, waits until wall-clock time T
(so several processes start appending in the same millisecond), appends N events from C
concurrent tasks (N <= 0: until killed, or for S seconds with `--seconds`), and prints
one JSON line per acknowledged append — `{"id": event_id, "pos": position}` — flushed,
so a parent that kills it with SIGKILL knows exactly which appends were acknowledged.
The last line is a summary (with the process's own CPU seconds, for the benchmark).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from events import NewEvent, StoreConfig, StoreError
from events.postgres import PostgresEventStore


async def main(args: argparse.Namespace) -> None:
    config = StoreConfig(
        path=Path(args.key_dir).with_suffix(""),
        url=args.url,
        key_dir=Path(args.key_dir),
        checkpoint_every=args.checkpoint_every,
    )
    store = await PostgresEventStore.open(config)
    out = sys.stdout
    delay = args.start_at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    counter = iter(range(10**12))
    errors = 0
    started = time.perf_counter()
    cpu_started = time.process_time()
    stop_at = started + args.seconds if args.seconds > 0 else float("inf")

    async def worker(w: int) -> int:
        nonlocal errors
        done = 0
        while (args.events <= 0 or next(counter) < args.events) and time.perf_counter() < stop_at:
            event = NewEvent(type="Load", data={"w": w, "tag": args.tag}, actor=args.tag)
            try:
                [position] = await store.append(f"{args.tag}-{w % 20}", [event])
            except StoreError:
                errors += 1
                continue
            if not args.quiet:
                out.write(json.dumps({"id": event.event_id, "pos": position}) + "\n")
                out.flush()
            done += 1
        return done

    counts = await asyncio.gather(*(worker(w) for w in range(args.concurrency)))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    await store.close()
    summary = {
        "summary": True,
        "appended": sum(counts),
        "errors": errors,
        "seconds": elapsed,
        "cpu_seconds": cpu,
    }
    out.write(json.dumps(summary) + "\n")
    out.flush()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("key_dir")
    p.add_argument("--events", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--start-at", type=float, default=0.0)
    p.add_argument("--tag", default="p")
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=0.0)
    p.add_argument("--quiet", action="store_true")
    asyncio.run(main(p.parse_args()))
