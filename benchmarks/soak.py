"""Soak: does a real bridge's memory (RSS) and fd count stay flat under steady `ask` load?

`lighthouse serve` runs as its own process (durable SQLite store, signatures on); asker /
answerer pairs of official SDK clients keep `ask`s going at a fixed offered rate, half the
pairs answering by elicitation (push on the GET stream), half through the mailbox
(`wait_for_messages` → `respond`). Every ask gets a fresh request id, so a bridge that kept
every closed id would grow linearly. Every `--interval` seconds the bridge's VmRSS, open
fds and CPU time are sampled from /proc; the slope of RSS (MiB/min) and fds (per min) is a
least-squares fit over the samples after the warm-up (the first 20 % of the run, at least
30 s). Errors are counted as errors (any exception, `is_error`, a status other than
accepted). A short `--duration` is a smoke test; the slope means something from ~10 min.

`--peer PATH` runs a second bridge from another source tree (e.g. the previous release's
checkout) under the same load at the same time, so both see the same machine noise; its
row is printed beside ours.

    python benchmarks/soak.py                      # 10 minutes, 4 pairs, 20 asks/s
    python benchmarks/soak.py --duration 60        # smoke test
    python benchmarks/soak.py --peer ../old-checkout
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import format_table, machine_info, write_json  # noqa: E402
from tests.harness import SCHEMA, BridgeProcess  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def slope_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value), in value per minute."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    if var == 0:
        return None
    return 60 * sum((t - mx) * (v - my) for t, v in points) / var


class Counts:
    def __init__(self) -> None:
        self.ok = 0
        self.errors = 0
        self.first_error: str | None = None

    def error(self, what: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or what


async def _answer_mail(client: Any, stop: asyncio.Event, counts: Counts) -> None:
    while not stop.is_set():
        try:
            got = await client.call_tool("wait_for_messages", {"timeout_s": 1, "max": 20})
            for item in (got.structured_content or {}).get("messages", []):
                if item.get("kind") != "request":
                    continue
                done = await client.call_tool(
                    "respond",
                    {
                        "request_id": item["request_id"],
                        "action": "accept",
                        "content": {"answer": "ok"},
                    },
                )
                if done.is_error:
                    counts.error(f"respond: {done.content}")
        except Exception as exc:
            counts.error(f"wait_for_messages: {exc!r}")
            await asyncio.sleep(0.5)


async def _pair(
    b: BridgeProcess, n: int, interval: float, stop: asyncio.Event, counts: Counts
) -> None:
    async def answer(ctx: Any, params: Any) -> Any:
        from mcp_types import ElicitResult

        return ElicitResult(action="accept", content={"answer": "ok"})

    elicits = n % 2 == 0
    kwargs = {"elicitation_callback": answer} if elicits else {}
    async with b.client(f"answerer{n}", **kwargs) as answerer, b.client(f"asker{n}") as asker:
        mail = asyncio.create_task(_answer_mail(answerer, stop, counts))
        next_at = time.monotonic() + interval * (n / 8)
        while not stop.is_set():
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            try:
                result = await asker.call_tool(
                    "ask",
                    {
                        "to": f"answerer{n}",
                        "message": "soak",
                        "schema": SCHEMA,
                        "timeout_s": 30,
                    },
                )
            except Exception as exc:
                counts.error(f"ask: {exc!r}")
                continue
            out = result.structured_content or {}
            if result.is_error or out.get("status") != "accepted":
                counts.error(f"ask: {result.content}")
            else:
                counts.ok += 1
        mail.cancel()
        with contextlib.suppress(BaseException):
            await mail


@contextlib.contextmanager
def _code_from(tree: Path | None) -> Any:
    """Processes started inside run `bridge` from `tree` (None: this checkout)."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(tree or ROOT)
    try:
        yield
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old


def prepare(args: argparse.Namespace, workdir: Path, tree: Path | None) -> BridgeProcess:
    """Register the agents and start the bridge (blocking: done before any load runs)."""
    b = BridgeProcess(workdir)
    with _code_from(tree):
        for n in range(args.pairs):
            b.add_agent(f"asker{n}")
            b.add_agent(f"answerer{n}")
        b.start()
    return b


async def run(args: argparse.Namespace, b: BridgeProcess, tree: Path | None) -> dict[str, Any]:
    assert b.proc is not None
    pid = b.proc.pid
    counts = Counts()
    stop = asyncio.Event()
    interval = args.pairs / args.rate
    pairs = [asyncio.create_task(_pair(b, n, interval, stop, counts)) for n in range(args.pairs)]
    samples: list[dict[str, float]] = []
    started = time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < args.duration:
            samples.append(
                {
                    "t": round(elapsed, 1),
                    "rss_kib": _rss_kib(pid),
                    "fds": _fds(pid),
                    "cpu_s": _cpu_s(pid),
                    "asks_ok": counts.ok,
                    "errors": counts.errors,
                }
            )
            if args.verbose:
                print(samples[-1], flush=True)
            await asyncio.sleep(args.interval)
    finally:
        stop.set()
        await asyncio.gather(*pairs, return_exceptions=True)
    warm = max(30.0, 0.2 * args.duration)
    steady = [s for s in samples if s["t"] >= warm] or samples
    first, last = steady[0], steady[-1]
    span = last["t"] - first["t"]
    asks = last["asks_ok"] - first["asks_ok"]
    cpu = last["cpu_s"] - first["cpu_s"]
    return {
        "bridge": "ours" if tree is None else f"peer {tree}",
        "summary": {
            "duration_s": round(samples[-1]["t"], 1) if samples else 0,
            "steady_from_s": warm,
            "asks_ok": counts.ok,
            "errors": counts.errors,
            "first_error": counts.first_error,
            "asks_per_s": round(asks / span, 1) if span else None,
            "server_cpu_ms_per_ask": round(1000 * cpu / asks, 2) if asks else None,
            "rss_start_mib": round(first["rss_kib"] / 1024, 1),
            "rss_end_mib": round(last["rss_kib"] / 1024, 1),
            "rss_slope_mib_per_min": _round(
                slope_per_min([(s["t"], s["rss_kib"] / 1024) for s in steady])
            ),
            "fds_start": first["fds"],
            "fds_end": last["fds"],
            "fds_slope_per_min": _round(slope_per_min([(s["t"], s["fds"]) for s in steady])),
        },
        "samples": samples,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--rate", type=float, default=20.0, help="offered asks/s, per bridge")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--peer", type=Path, help="another source tree, soaked alongside")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/soak.json")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()

    trees = [None] + ([args.peer.resolve()] if args.peer else [])
    with contextlib.ExitStack() as stack:
        bridges = []
        for tree in trees:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lh-soak-")))
            b = prepare(args, workdir, tree)
            stack.callback(lambda b=b: b.proc is not None and b.stop())
            bridges.append(b)

        async def together() -> list[dict[str, Any]]:
            return list(
                await asyncio.gather(
                    *(run(args, b, t) for b, t in zip(bridges, trees, strict=True))
                )
            )

        results = asyncio.run(together())
    keys = [k for k in results[0]["summary"] if k != "first_error"]
    print(
        format_table(
            ["metric", *(r["bridge"] for r in results)],
            [[k, *(r["summary"][k] for r in results)] for k in keys],
        )
    )
    for r in results:
        if r["summary"]["first_error"]:
            print(f"{r['bridge']}: first error: {r['summary']['first_error']}")
    payload = {
        "benchmark": "soak",
        "machine": machine_info(["mcp", "aiohttp", "msgspec"], ROOT),
        "params": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "runs": results,
    }
    write_json(args.out, payload)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
