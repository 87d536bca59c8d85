"""`ask` round trip through a real bridge: throughput, latency, errors, server memory.

Everything is real: `lighthouse serve` runs as its own process on a loopback port with its
durable SQLite store (default `synchronous=FULL`); every client is the official MCP SDK
`Client` over Streamable HTTP, every request RFC 9421-signed (`security.LighthouseAuth`,
as `bridge.client.connect` does). Load goes to 127.0.0.1 only, is bounded in client count
and time, and the benchmark stops everything it started.

Cells (each: warm-up, then a fixed measurement window; asks completing inside the window
count):

- `ours-elicitation`  N pairs; asker A loops `ask(B)`; answerer B is connected with an
  elicitation callback (the push arrives on its standalone GET stream) and, like every
  answerer here, also long-polls its mailbox (`wait_for_messages` → `respond`), so requests
  that fall back are answered (and counted as wrong-path errors).
- `ours-legacy`       N pairs; B connects without an elicitation callback, so the bridge
  routes to the mailbox; B loops `wait_for_messages` → `respond`.
- `bare`              N pairs against `benchmarks/_bare_relay.py`: a minimal SDK
  `MCPServer` under uvicorn that relays `elicit_form` between two sessions, no auth, no
  store. `ratio` = ours asks/s ÷ bare asks/s at the same pair count.
- `…@N:Rrps`          open loop: the same N pairs, but together offering only R asks/s
  (`--rate`), each pair on a fixed schedule with a random phase. Latency counts from the
  scheduled start, so an ask that had to wait for the previous one counts that wait
  (no coordinated omission). The closed-loop cells measure capacity, and their latency
  is mostly queueing (N asks always outstanding); these measure latency at a load the
  bridge can carry.
- `idle+…`            the two `ours` cells again at `--idle-pairs` pairs while
  `--idle` further agents hold initialized sessions (with their standalone GET stream)
  and do nothing; server RSS before and after connecting them gives bytes per session.

Errors are errors: any exception, any `is_error` result, any status other than
`accepted`, an answer on the wrong path, and any ask still unanswered `--grace` seconds
after the window closed. Clients run in `--workers` child processes (this module with
`--worker`). Each pair (and each group of 50 idle agents) uses its own loopback source
address (127.1.x.y / 127.2.x.y) so the bridge's per-address pre-auth limiter (500/s,
burst 1000, not settable from the command line) sees one address per simulated host;
`--one-address` puts every client on 127.0.0.1 instead.

    python benchmarks/ask_roundtrip.py --quick
    python benchmarks/ask_roundtrip.py                       # 100 and 1000 pairs, 10,000 idle
    python benchmarks/ask_roundtrip.py --pairs 100 --duration 10 --idle 2000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._procs import Worker as _ProcWorker  # noqa: E402
from benchmarks._procs import chunks, register_agents, wait_http  # noqa: E402
from benchmarks._procs import cpu_s as _cpu_s  # noqa: E402
from benchmarks._procs import rss_kb as _rss_kb  # noqa: E402
from benchmarks._procs import runq_wait_s as _runq_wait_s  # noqa: E402
from benchmarks._report import format_table, machine_info, percentile, write_json  # noqa: E402

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
}
ANSWER = {"answer": "42"}
RESULTS = REPO / "benchmarks" / "results" / "ask_roundtrip.json"
IDLE_PER_ADDRESS = 50
ASK_TIMEOUT_S = 30.0


# ============================================================================ client side
# (runs in the worker processes)


def _source_for_pair(i: int) -> str:
    return f"127.1.{i // 250}.{i % 250 + 1}"


def _source_for_idle(j: int) -> str:
    k = j // IDLE_PER_ADDRESS
    return f"127.2.{k // 250}.{k % 250 + 1}"


class Clients:
    """SDK clients sharing one connection pool per source address (auth stays per client)."""

    def __init__(self, url: str) -> None:
        import httpx2

        self.httpx2 = httpx2
        self.url = url
        self.transports: dict[str, Any] = {}

    def transport(self, source: str) -> Any:
        t = self.transports.get(source)
        if t is None:
            t = self.transports[source] = self.httpx2.AsyncHTTPTransport(
                local_address=None if source == "127.0.0.1" else source,
                limits=self.httpx2.Limits(
                    max_connections=None, max_keepalive_connections=64, keepalive_expiry=30
                ),
            )
        return t

    def client(self, agent: dict[str, str] | None, source: str, **kwargs: Any) -> Any:
        from mcp.client import Client
        from mcp.client.streamable_http import streamable_http_client

        from security import LighthouseAuth

        auth = LighthouseAuth(agent["key_id"], agent["secret"]) if agent else None
        http = self.httpx2.AsyncClient(
            transport=self.transport(source),
            auth=auth,
            timeout=self.httpx2.Timeout(30.0, read=3900.0),
            trust_env=False,
        )
        return Client(streamable_http_client(self.url, http_client=http), mode="legacy", **kwargs)

    async def close(self) -> None:
        for t in self.transports.values():
            with contextlib.suppress(Exception):
                await t.aclose()


_EXAMPLES: dict[str, str] = {}  # first message seen per error name (this worker)


def _error_name(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]  # name what actually failed, not the task group around it
    text = str(exc)
    m = re.search(r"\b(4\d\d|5\d\d)\b", text)
    name = type(exc).__name__ + (f":{m.group(1)}" if m else "")
    if name not in _EXAMPLES:  # the whole story of the first one goes to the worker's log
        _EXAMPLES[name] = text[:300]
        traceback.print_exception(exc, file=sys.stderr)
    return name


async def _answer(ctx: Any, params: Any) -> Any:
    from mcp_types import ElicitResult

    return ElicitResult(action="accept", content=dict(ANSWER))


class PairStats:
    def __init__(self) -> None:
        self.latencies_ms: list[float] = []
        self.ok = 0
        self.errors: Counter[str] = Counter()
        self.warmup_asks = 0
        self.connect_errors: Counter[str] = Counter()
        self.answerer_errors: Counter[str] = Counter()
        self.connected = 0


async def _legacy_answerer(b: Any, stats: PairStats, stop: asyncio.Event) -> None:
    """wait_for_messages → respond, until told to stop."""
    while not stop.is_set():
        try:
            r = await b.call_tool("wait_for_messages", {"timeout_s": 25, "max": 10})
            if r.is_error:
                stats.answerer_errors["wait_is_error"] += 1
                await asyncio.sleep(0.05)
                continue
            for m in (r.structured_content or {}).get("messages", []):
                if m.get("kind") != "request":
                    continue
                rr = await b.call_tool(
                    "respond",
                    {"request_id": m["request_id"], "action": "accept", "content": ANSWER},
                )
                if rr.is_error:
                    stats.answerer_errors["respond_is_error"] += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            stats.answerer_errors[_error_name(exc)] += 1
            await asyncio.sleep(0.05)


async def _run_pair(
    clients: Clients,
    kind: str,
    pair: dict[str, Any],
    stats: PairStats,
    connect_sem: asyncio.Semaphore,
    ready: Any,
    go: asyncio.Future[float],
    cfg: dict[str, Any],
) -> None:
    bare = kind == "bare"
    path = "legacy" if kind == "ours-legacy" else "elicitation"
    source = pair["source"]
    b_kwargs = {} if kind == "ours-legacy" else {"elicitation_callback": _answer}
    stop = asyncio.Event()
    signalled = False
    try:
        # Enter and leave every SDK client in this one task (anyio cancel scopes require it).
        async with contextlib.AsyncExitStack() as stack:
            async with connect_sem:
                b = await stack.enter_async_context(
                    clients.client(None if bare else pair["answerer"], source, **b_kwargs)
                )
            if bare:
                await b.call_tool("register", {"name": pair["answerer"]["name"]})
            async with connect_sem:
                a = await stack.enter_async_context(
                    clients.client(None if bare else pair["asker"], source)
                )
            stats.connected += 1
            signalled = True
            ready()
            # Every answerer of ours also reads its mailbox, as a robust agent does: what falls
            # back (e.g. the guard switching elicitation off) is still answered.
            waiter = None if bare else asyncio.create_task(_legacy_answerer(b, stats, stop))
            t0 = await go
            measure_from = t0 + cfg["warmup_s"]
            end = measure_from + cfg["duration_s"]
            hard_end = end + cfg["grace_s"]
            delay = t0 - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            args = {"to": pair["answerer"]["name"], "message": "meaning of life?", "schema": SCHEMA}
            if not bare:
                args["timeout_s"] = ASK_TIMEOUT_S
            interval = cfg.get("interval_s")
            next_at = t0 + random.random() * interval if interval else 0.0
            while time.time() < end:
                if interval:
                    await asyncio.sleep(max(0.0, next_at - time.time()))
                    started = time.perf_counter() - max(0.0, time.time() - next_at)
                    next_at += interval
                else:
                    started = time.perf_counter()
                err: str | None = None
                try:
                    async with asyncio.timeout(max(0.1, hard_end - time.time())):
                        r = await a.call_tool("ask", args)
                    sc = r.structured_content or {}
                    if r.is_error:
                        err = "is_error"
                    elif sc.get("status") != "accepted":
                        err = f"status:{sc.get('status')}"
                    elif sc.get("path") != path:
                        err = f"wrong_path:{sc.get('path')}"
                    elif sc.get("content") != ANSWER:
                        err = "wrong_content"
                except TimeoutError:
                    err = "unfinished_after_grace"
                except Exception as exc:
                    err = _error_name(exc)
                done = time.time()
                latency_ms = (time.perf_counter() - started) * 1000
                if done < measure_from:
                    stats.warmup_asks += 1
                elif err is not None:
                    stats.errors[err] += 1
                elif done <= end:
                    stats.ok += 1
                    stats.latencies_ms.append(latency_ms)
                if err == "unfinished_after_grace":
                    break
                if err is not None and done < end:
                    await asyncio.sleep(0.01)  # no hot loop on a failing pair
            stop.set()
            if waiter is not None:  # wake its pending wait, so it returns and sees `stop`
                wake = {"to": pair["answerer"]["name"], "content": "stop"}
                await a.call_tool("send_message", wake)
                await asyncio.wait_for(waiter, 30)
            # leaving the stack sends DELETE for both sessions (terminate_on_close)
    except Exception as exc:
        if not signalled:
            stats.connect_errors[_error_name(exc)] += 1
            ready()
        else:
            stats.errors["teardown:" + _error_name(exc)] += 1


async def _idle_agent(
    clients: Clients,
    agent: dict[str, Any],
    sem: asyncio.Semaphore,
    counts: Counter[str],
    ready: Any,
    stop: asyncio.Event,
) -> None:
    try:
        async with contextlib.AsyncExitStack() as stack:
            async with sem:
                await stack.enter_async_context(clients.client(agent, agent["source"]))
            counts["connected"] += 1
            ready()
            await stop.wait()
    except Exception as exc:
        counts["error:" + _error_name(exc)] += 1
        ready()


async def _worker_main(spec: dict[str, Any]) -> None:
    import logging

    logging.basicConfig(level=logging.CRITICAL)
    loop = asyncio.get_running_loop()
    clients = Clients(spec["url"])
    out = sys.stdout

    def emit(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    async def readline() -> str:
        return (await loop.run_in_executor(None, sys.stdin.readline)).strip()

    if spec["role"] == "idle":
        agents = spec["agents"]
        counts: Counter[str] = Counter()
        pending = len(agents)
        all_ready = asyncio.Event()

        def ready() -> None:
            nonlocal pending
            pending -= 1
            if pending == 0:
                all_ready.set()

        stop = asyncio.Event()
        sem = asyncio.Semaphore(spec["connect_concurrency"])
        t = time.perf_counter()
        tasks = [
            asyncio.create_task(_idle_agent(clients, a, sem, counts, ready, stop)) for a in agents
        ]
        if not agents:
            all_ready.set()
        await all_ready.wait()
        emit(
            {
                "event": "ready",
                "counts": dict(counts),
                "error_examples": _EXAMPLES,
                "connect_s": time.perf_counter() - t,
                "rss_kb": _rss_kb(os.getpid()),
            }
        )
        await readline()  # "stop"
        emit({"event": "stopping"})
        del tasks
        os._exit(0)  # the sessions die with their connections; the server is stopped next

    stats = PairStats()
    pairs = spec["pairs"]
    pending = len(pairs)
    all_ready = asyncio.Event()

    def ready_pair() -> None:
        nonlocal pending
        pending -= 1
        if pending == 0:
            all_ready.set()

    go: asyncio.Future[float] = loop.create_future()
    sem = asyncio.Semaphore(spec["connect_concurrency"])
    t = time.perf_counter()
    tasks = [
        asyncio.create_task(_run_pair(clients, spec["kind"], p, stats, sem, ready_pair, go, spec))
        for p in pairs
    ]
    await all_ready.wait()
    emit(
        {
            "event": "ready",
            "connected": stats.connected,
            "connect_errors": dict(stats.connect_errors),
            "connect_s": time.perf_counter() - t,
        }
    )
    line = await readline()
    go.set_result(float(line.split()[1]))
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.wait(tasks, timeout=spec["warmup_s"] + spec["duration_s"] + spec["grace_s"] + 60)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    for task in tasks:
        task.cancel()
    await clients.close()
    emit(
        {
            "event": "result",
            "ok": stats.ok,
            "latencies_ms": stats.latencies_ms,
            "errors": dict(stats.errors),
            "answerer_errors": dict(stats.answerer_errors),
            "connect_errors": dict(stats.connect_errors),
            "warmup_asks": stats.warmup_asks,
            "connected": stats.connected,
            "cpu_s": (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime),
            "error_examples": _EXAMPLES,
        }
    )


def worker_entry() -> None:
    spec = json.loads(sys.stdin.readline())
    asyncio.run(_worker_main(spec))


# ============================================================================ orchestrator


def Worker(spec: dict[str, Any], log_path: Path) -> _ProcWorker:
    """A client process running this module's `--worker` side."""
    return _ProcWorker(Path(__file__).resolve(), spec, log_path)


def _flags(base_url: str, token: str, set_on: bool = False) -> dict[str, Any] | None:
    req = urllib.request.Request(
        base_url + "/feature_flags",
        data=json.dumps(
            {"elicitation_enabled": True, "rollout_percent": 100, "force": True}
        ).encode()
        if set_on
        else None,
        method="POST" if set_on else "GET",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())
    except OSError as exc:
        return {"error": str(exc)}


def _metrics_of_interest(base_url: str) -> dict[str, float]:
    try:
        with urllib.request.urlopen(base_url + "/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if (
            line.startswith(("lighthouse_rate_limited", "lighthouse_auth_rejections"))
            and not line.startswith("#")
            and "_created" not in line
        ):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def warmup_for(args: argparse.Namespace, pairs: int) -> float:
    return max(args.warmup, pairs / 100)


def run_cell(
    name: str,
    kind: str,
    url: str,
    server_pid: int,
    pairs: list[dict[str, Any]],
    args: argparse.Namespace,
    logdir: Path,
    base_url: str | None,
    token: str | None = None,
    rate: float | None = None,
) -> dict[str, Any]:
    print(f"  cell {name}: {len(pairs)} pairs …", flush=True)
    warmup = warmup_for(args, len(pairs))
    metrics_before = _metrics_of_interest(base_url) if base_url else {}
    flags_before = None
    if base_url and token:
        flags_before = _flags(base_url, token)
        if not (flags_before or {}).get("elicitation_enabled", True):
            print(f"    elicitation was off ({flags_before}); turning it back on", flush=True)
            flags_before = _flags(base_url, token, set_on=True)
    workers = [
        Worker(
            {
                "role": "pairs",
                "kind": kind,
                "url": url,
                "pairs": chunk,
                "warmup_s": warmup,
                "duration_s": args.duration,
                "grace_s": args.grace,
                "connect_concurrency": args.connect_concurrency,
                "interval_s": len(pairs) / rate if rate else None,
            },
            logdir / f"worker-{name}-{i}.log",
        )
        for i, chunk in enumerate(chunks(pairs, args.workers))
    ]
    ready = [w.read(args.connect_timeout) for w in workers]
    connect_s = max(r["connect_s"] for r in ready)
    rss_start = _rss_kb(server_pid)
    t0 = time.time() + 0.5
    for w in workers:
        w.send(f"go {t0}")
    measure_from, end = t0 + warmup, t0 + warmup + args.duration
    rss_peak = rss_start or 0
    cpu_from = cpu_to = runq_from = runq_to = None
    while time.time() < end + 0.5:
        now = time.time()
        if cpu_from is None and now >= measure_from:
            cpu_from, runq_from = _cpu_s(server_pid), _runq_wait_s(server_pid)
        if cpu_to is None and now >= end:
            cpu_to, runq_to = _cpu_s(server_pid), _runq_wait_s(server_pid)
        rss_peak = max(rss_peak, _rss_kb(server_pid) or 0)
        time.sleep(min(0.25, max(0.01, (measure_from if cpu_from is None else end) - now)))
    rss_end = _rss_kb(server_pid)
    results = [w.read(warmup + args.duration + args.grace + 120) for w in workers]
    for w in workers:
        w.finish()
    latencies = sorted(x for r in results for x in r["latencies_ms"])
    errors: Counter[str] = Counter()
    answerer_errors: Counter[str] = Counter()
    connect_errors: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
        answerer_errors.update(r["answerer_errors"])
        connect_errors.update(r["connect_errors"])
    ok = sum(r["ok"] for r in results)
    metrics_after = _metrics_of_interest(base_url) if base_url else {}
    limiter = {
        k: v - metrics_before.get(k, 0.0)
        for k, v in metrics_after.items()
        if v - metrics_before.get(k, 0.0)
    }
    cell = {
        "cell": name,
        "kind": kind,
        "pairs": len(pairs),
        "offered_asks_per_s": rate,
        "connected_pairs": sum(r["connected"] for r in results),
        "connect_s": round(connect_s, 2),
        "duration_s": args.duration,
        "warmup_s": warmup,
        "ok": ok,
        "errors": sum(errors.values()) + sum(connect_errors.values()),
        "error_kinds": dict(errors),
        "connect_errors": dict(connect_errors),
        "answerer_errors": dict(answerer_errors),
        "error_examples": {k: v for r in results for k, v in r["error_examples"].items()},
        "asks_per_s": round(ok / args.duration, 1),
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "max_ms": latencies[-1] if latencies else None,
        "server_rss_kb_start": rss_start,
        "server_rss_kb_peak": rss_peak,
        "server_rss_kb_end": rss_end,
        "server_cpu_pct": round(100 * (cpu_to - cpu_from) / args.duration, 1)
        if cpu_from is not None and cpu_to is not None
        else None,
        "server_runqueue_wait_pct": round(100 * (runq_to - runq_from) / args.duration, 1)
        if runq_from is not None and runq_to is not None
        else None,
        "server_cpu_ms_per_ask": round(1000 * (cpu_to - cpu_from) / ok, 2)
        if cpu_from is not None and cpu_to is not None and ok
        else None,
        "client_cpu_pct": round(
            100 * sum(r["cpu_s"] for r in results) / (warmup + args.duration), 1
        ),
        "rejections_during_cell": limiter,
        "flags_before": flags_before,
        "flags_after": _flags(base_url, token) if base_url and token else None,
        "loadavg_after": list(os.getloadavg()),
    }
    print(
        f"    {cell['asks_per_s']} asks/s, p50 {_fmt(cell['p50_ms'])} ms, "
        f"p99 {_fmt(cell['p99_ms'])} ms, errors {cell['errors']}, "
        f"server cpu {cell['server_cpu_pct']}% (runqueue wait "
        f"{cell['server_runqueue_wait_pct']}%), rss {rss_end} kB",
        flush=True,
    )
    fa = cell["flags_after"] or {}
    if base_url and token and not fa.get("elicitation_enabled", True):
        print(f"    elicitation was switched OFF during the cell: {fa}", flush=True)
    return cell


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--pairs",
        type=int,
        nargs="+",
        default=[100, 1000],
        help="pair counts to measure (default 100 1000)",
    )
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per cell")
    p.add_argument(
        "--warmup",
        type=float,
        default=3.0,
        help="warm-up seconds per cell (at least pairs/100 s, so every pair of a "
        "large cell has finished its first asks before the window opens)",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=ASK_TIMEOUT_S + 5,
        help="seconds after the window before an unanswered ask counts as an "
        "error (default: the ask timeout + 5 s)",
    )
    p.add_argument(
        "--idle",
        type=int,
        default=9800,
        help="idle sessions (default 9,800: the SDK caps a server at 10,000 "
        "sessions and the idle cells add 2 x --idle-pairs)",
    )
    p.add_argument("--idle-pairs", type=int, default=100)
    p.add_argument(
        "--rate",
        type=float,
        default=100.0,
        help="offered asks/s of the open-loop cells (elicitation and bare, at each pair "
        "count; 0 skips them)",
    )
    p.add_argument("--workers", type=int, default=2, help="client processes for pair cells")
    p.add_argument("--idle-workers", type=int, default=4, help="client processes for idle")
    p.add_argument(
        "--connect-concurrency", type=int, default=32, help="concurrent session set-ups per worker"
    )
    p.add_argument("--connect-timeout", type=float, default=600.0)
    p.add_argument(
        "--one-address",
        action="store_true",
        help="all clients on 127.0.0.1 (shows the per-address limiter)",
    )
    p.add_argument("--no-bare", action="store_true", help="skip the bare relay cells")
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    p.add_argument(
        "--guard-p99-ms",
        type=float,
        default=1000.0,
        help="the bridge's auto-rollback p99 threshold (raise it to measure an overloaded "
        "elicitation path instead of watching the guard switch it off)",
    )
    p.add_argument(
        "--profile-cell",
        nargs="*",
        default=[],
        help="run py-spy record on the server during these cells (e.g. "
        "ours-legacy@100); the speedscope JSON lands in the temp directory",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--quick", action="store_true", help="10 pairs, 3 s cells, 200 idle sessions (a smoke run)"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.pairs, args.duration, args.warmup, args.grace = [10], 3.0, 1.0, 10.0
        args.idle, args.idle_pairs = 200, 10

    from tests.harness import BridgeProcess, free_port

    workdir = Path(tempfile.mkdtemp(prefix="ask-roundtrip-"))
    logdir = workdir / "logs"
    logdir.mkdir()
    serve_args = (
        "--rate",
        "100000",
        "--burst",
        "100000",
        "--guard-p99-ms",
        str(args.guard_p99_ms),
        # Every simulated agent connects from 127.0.0.1: the per-address connection cap
        # (default 256, a defence against one host exhausting descriptors) would reset
        # them. A real deployment has one address per host, or a proxy that is exempt.
        "--max-connections-per-address",
        "1000000",
    )
    bridge = BridgeProcess(workdir, extra_args=serve_args)
    bare_proc: subprocess.Popen[Any] | None = None
    cells: list[dict[str, Any]] = []
    idle_info: dict[str, Any] = {}
    started = time.time()
    try:
        bridge.start()
        assert bridge.proc is not None
        server_pid = bridge.proc.pid
        print(
            f"bridge pid {server_pid} on {bridge.url} (store {bridge.db}, synchronous=FULL)",
            flush=True,
        )
        bare_port = free_port()
        bare_url = f"http://127.0.0.1:{bare_port}/mcp"
        if not args.no_bare:
            bare_proc = subprocess.Popen(
                [
                    sys.executable,
                    str(REPO / "benchmarks" / "_bare_relay.py"),
                    "--port",
                    str(bare_port),
                ],
                stdout=open(logdir / "bare.log", "w"),  # noqa: SIM115
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
            wait_http(f"http://127.0.0.1:{bare_port}/", bare_proc)
            print(f"bare relay pid {bare_proc.pid} on {bare_url}", flush=True)

        max_pairs = max([*args.pairs, args.idle_pairs])
        t = time.perf_counter()
        names = [f"ask{i}" for i in range(max_pairs)] + [f"ans{i}" for i in range(max_pairs)]
        names += [f"idle{j}" for j in range(args.idle)]
        creds = register_agents(bridge.url, bridge.admin_token, names)
        print(f"registered {len(creds)} agents in {time.perf_counter() - t:.1f} s", flush=True)

        def pair_list(n: int) -> list[dict[str, Any]]:
            return [
                {
                    "asker": creds[f"ask{i}"],
                    "answerer": creds[f"ans{i}"],
                    "source": "127.0.0.1" if args.one_address else _source_for_pair(i),
                }
                for i in range(n)
            ]

        def profile(cell_name: str, n_pairs: int) -> subprocess.Popen[Any] | None:
            if cell_name not in args.profile_cell:
                return None
            spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            out = workdir / f"profile-{cell_name}.json"
            print(f"    py-spy → {out}", flush=True)
            return subprocess.Popen(
                [
                    spy,
                    "record",
                    "-p",
                    str(server_pid),
                    "-d",
                    str(int(warmup_for(args, n_pairs) + args.duration + 8)),
                    "-o",
                    str(out),
                    "--format",
                    "speedscope",
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=open(logdir / "py-spy.log", "w"),
            )

        for n in args.pairs:
            print(f"{n} pairs", flush=True)
            plan = [
                ("ours-elicitation", bridge.mcp_url, server_pid, bridge.url),
                ("ours-legacy", bridge.mcp_url, server_pid, bridge.url),
            ]
            if bare_proc is not None:
                plan.append(("bare", bare_url, bare_proc.pid, None))
            if args.rate and n >= 10:  # a lone pair at that rate would only measure queueing
                plan += [(kind, *rest, args.rate) for kind, *rest in plan if kind != "ours-legacy"]
            for kind, url, pid, base, *rate in plan:
                name = f"{kind}@{n}" + (f":{rate[0]:g}rps" if rate else "")
                spy = profile(name, n)
                cell = run_cell(
                    name,
                    kind,
                    url,
                    pid,
                    pair_list(n),
                    args,
                    logdir,
                    base,
                    bridge.admin_token,
                    *rate,
                )
                if spy is not None:
                    spy.wait(60)
                cells.append(cell)

        if args.idle > 0:
            print(f"idle: connecting {args.idle} sessions …", flush=True)
            time.sleep(1.0)
            rss_before = _rss_kb(server_pid)
            cpu_before = _cpu_s(server_pid)
            idle_agents = [
                {
                    **creds[f"idle{j}"],
                    "source": "127.0.0.1" if args.one_address else _source_for_idle(j),
                }
                for j in range(args.idle)
            ]
            t = time.perf_counter()
            idle_workers = [
                Worker(
                    {
                        "role": "idle",
                        "url": bridge.mcp_url,
                        "agents": chunk,
                        "connect_concurrency": args.connect_concurrency,
                    },
                    logdir / f"idle-{i}.log",
                )
                for i, chunk in enumerate(chunks(idle_agents, args.idle_workers))
            ]
            readies = [w.read(args.connect_timeout) for w in idle_workers]
            connect_s = time.perf_counter() - t
            cpu_after = _cpu_s(server_pid)
            counts: Counter[str] = Counter()
            for r in readies:
                counts.update(r["counts"])
            time.sleep(2.0)
            rss_after = _rss_kb(server_pid)
            connected = counts.get("connected", 0)
            health = bridge.health()
            idle_info = {
                "requested": args.idle,
                "connected": connected,
                "errors": {k: v for k, v in counts.items() if k != "connected"},
                "error_examples": {k: v for r in readies for k, v in r["error_examples"].items()},
                "connect_s": round(connect_s, 1),
                "server_rss_kb_before": rss_before,
                "server_rss_kb_after": rss_after,
                "server_rss_kb_per_session": round((rss_after - rss_before) / connected, 1)
                if connected and rss_after and rss_before
                else None,
                "projected_rss_mb_at_10000": round(
                    (rss_before + (rss_after - rss_before) / connected * 10_000) / 1024, 1
                )
                if connected and rss_after and rss_before
                else None,
                "server_cpu_ms_per_session_setup": round(
                    1000 * (cpu_after - cpu_before) / connected, 2
                )
                if connected and cpu_after is not None and cpu_before is not None
                else None,
                "client_worker_rss_kb": [r.get("rss_kb") for r in readies],
                "health_sessions": health.get("sessions"),
            }
            print(
                f"  {connected} idle sessions in {connect_s:.1f} s; server RSS "
                f"{rss_before} → {rss_after} kB "
                f"({idle_info['server_rss_kb_per_session']} kB/session); errors "
                f"{idle_info['errors']}",
                flush=True,
            )
            try:
                for kind in ("ours-elicitation", "ours-legacy"):
                    name = f"idle+{kind}@{args.idle_pairs}"
                    spy = profile(name, args.idle_pairs)
                    cells.append(
                        run_cell(
                            name,
                            kind,
                            bridge.mcp_url,
                            server_pid,
                            pair_list(args.idle_pairs),
                            args,
                            logdir,
                            bridge.url,
                            bridge.admin_token,
                        )
                    )
                    if spy is not None:
                        spy.wait(60)
                idle_info["server_rss_kb_after_cells"] = _rss_kb(server_pid)
            finally:
                for w in idle_workers:
                    with contextlib.suppress(OSError):
                        w.send("stop")
                    w.finish()
    finally:
        if bare_proc is not None and bare_proc.poll() is None:
            bare_proc.terminate()
            try:
                bare_proc.wait(15)
            except subprocess.TimeoutExpired:
                bare_proc.kill()
        if bridge.proc is not None:
            proc = bridge.proc
            try:
                code = bridge.stop(timeout=30)
                print(f"bridge exited with {code}", flush=True)
            except subprocess.TimeoutExpired:
                print("bridge did not exit within 30 s of SIGTERM; killing it", flush=True)
                proc.kill()
                proc.wait(10)

    # Throughput ratios compare closed-loop cells only (an open-loop cell's rate is given).
    bare_by_pairs = {
        c["pairs"]: c["asks_per_s"]
        for c in cells
        if c["kind"] == "bare" and not c["offered_asks_per_s"]
    }
    for c in cells:
        bare = None if c["offered_asks_per_s"] else bare_by_pairs.get(c["pairs"])
        c["ratio_to_bare"] = (
            round(c["asks_per_s"] / bare, 2) if c["kind"] != "bare" and bare else None
        )
    headers = [
        "cell",
        "pairs",
        "asks/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "ok",
        "errors",
        "ratio",
        "srv cpu%",
        "srv ms/ask",
        "cli cpu%",
        "srv RSS MB",
    ]
    rows = [
        [
            c["cell"],
            c["pairs"],
            c["asks_per_s"],
            _fmt(c["p50_ms"]),
            _fmt(c["p95_ms"]),
            _fmt(c["p99_ms"]),
            _fmt(c["max_ms"], 1),
            c["ok"],
            c["errors"],
            _fmt(c["ratio_to_bare"]),
            c["server_cpu_pct"],
            _fmt(c["server_cpu_ms_per_ask"]),
            c["client_cpu_pct"],
            _fmt((c["server_rss_kb_peak"] or 0) / 1024, 1),
        ]
        for c in cells
    ]
    print()
    print(format_table(headers, rows))
    if idle_info:
        print(
            f"\nidle sessions: {idle_info['connected']}/{idle_info['requested']} connected "
            f"in {idle_info['connect_s']} s; server RSS {idle_info['server_rss_kb_before']} → "
            f"{idle_info['server_rss_kb_after']} kB = {idle_info['server_rss_kb_per_session']} "
            f"kB/session; projected {idle_info['projected_rss_mb_at_10000']} MB at 10,000; "
            f"errors {idle_info['errors']}"
        )
    for c in cells:
        if c["errors"] or c["answerer_errors"] or c["rejections_during_cell"]:
            print(
                f"  {c['cell']}: errors {c['error_kinds']} connect {c['connect_errors']} "
                f"answerer {c['answerer_errors']} rejections {c['rejections_during_cell']}"
            )
            for name, text in c["error_examples"].items():
                print(f"    {name}: {text}")
    targets = _targets(cells, idle_info)
    print(
        "\ntargets: "
        + "; ".join(
            f"{k}: {'PASS' if v['pass'] else 'FAIL'} ({v['value']})" for k, v in targets.items()
        )
    )
    payload = {
        "benchmark": "ask_roundtrip",
        "machine": machine_info(
            ["lighthouse-bridge", "mcp", "httpx2", "aiohttp", "uvicorn"], repo=REPO
        ),
        "config": {
            "pairs": args.pairs,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "grace_s": args.grace,
            "idle": args.idle,
            "idle_pairs": args.idle_pairs,
            "workers": args.workers,
            "idle_workers": args.idle_workers,
            "one_address": args.one_address,
            "quick": args.quick,
            "serve_args": list(serve_args),
            "synchronous": "FULL",
            "ask_timeout_s": ASK_TIMEOUT_S,
        },
        "cells": cells,
        "idle": idle_info,
        "targets": targets,
        "wall_s": round(time.time() - started, 1),
    }
    write_json(args.out, payload)
    print(f"wrote {args.out}")
    if args.keep:
        print(f"work directory kept: {workdir}")
    else:
        for f in workdir.glob("profile-*.json"):
            shutil.copy(f, Path(tempfile.gettempdir()) / f.name)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _targets(cells: list[dict[str, Any]], idle: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in cells:
        if c["kind"] == "bare" or c["cell"].startswith("idle+"):
            continue
        tag = c["cell"]
        if c["offered_asks_per_s"]:  # latency targets: judged where latency is not queueing
            if c["pairs"] != 100:
                continue
            out[f"{tag} p50<=3ms"] = {
                "value": c["p50_ms"],
                "pass": c["p50_ms"] is not None and c["p50_ms"] <= 3,
            }
            out[f"{tag} p99<=15ms"] = {
                "value": c["p99_ms"],
                "pass": c["p99_ms"] is not None and c["p99_ms"] <= 15,
            }
            continue
        out[f"{tag} >=2000 asks/s"] = {"value": c["asks_per_s"], "pass": c["asks_per_s"] >= 2000}
        if c.get("ratio_to_bare") is not None:
            out[f"{tag} >=0.8x bare"] = {
                "value": c["ratio_to_bare"],
                "pass": c["ratio_to_bare"] >= 0.8,
            }
    if idle.get("projected_rss_mb_at_10000") is not None:
        out["10000 idle <=2GB RSS"] = {
            "value": idle["projected_rss_mb_at_10000"],
            "pass": idle["projected_rss_mb_at_10000"] <= 2048,
        }
    return out


if __name__ == "__main__":
    if "--worker" in sys.argv[1:]:
        worker_entry()
    else:
        sys.exit(main())
