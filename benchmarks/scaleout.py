"""`ask` on 1, 2 and 3 bridges sharing one PostgreSQL store, behind HAProxy.

The light load generator's clients (`benchmarks/light_load.py`: hand-rolled signed HTTP,
the SDK's wire) drive `push` (2025-11-25 elicitation over the GET stream) and `legacy`
(mailbox) pairs through HAProxy running `deploy/haproxy.cfg` as shipped (its server list
cut to N). Each agent's session sticks to the bridge HAProxy gave it, so with N bridges a
pair's asker and answerer sit on different bridges about (N-1)/N of the time: those asks
cross bridges through the log (RequestRouted.node → the answerer's bridge pushes → its
terminal fact reaches the asker's bridge through its follower).

Per cell: asks/s, server CPU per ask summed over every bridge process (HAProxy's CPU beside
it, not in it), and PostgreSQL transactions per ask (`pg_stat_database.xact_commit` delta
of the store's database over the measured window — every transaction: group commits,
follower reads, heartbeats; PostgreSQL flushes these counters about once a second, so
expect ±1 s of transactions of error on the window). The peer in the same run: one bridge
on its embedded SQLite store, clients connected to it directly.

    python benchmarks/scaleout.py                       # 1, 2, 3 bridges, 40 pairs, 8 s
    python benchmarks/scaleout.py --bridges 1 3 --pairs 100 --duration 15
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._procs import cpu_s, register_agents, rss_kb, runq_wait_s  # noqa: E402
from benchmarks._report import format_table, machine_info, write_json  # noqa: E402
from benchmarks.light_load import Server, _source_for_pair, run_cell  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "scaleout.json"
REDIS_URL = os.environ.get("LIGHTHOUSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class Bridges(Server):
    """N bridge processes seen as one server: CPU, run-queue wait and RSS are sums. Each
    CPU sample also samples the store's transaction counter (run_cell samples CPU exactly
    at the start and the end of the measured window)."""

    def __init__(self, label: str, url: str, pids: list[int], database: str | None) -> None:
        super().__init__(label, url, pids[0], bare=False)
        self.pids = pids
        self.database = database
        self.commit_samples: list[int] = []
        self.haproxy_pid: int | None = None
        self.haproxy_samples: list[float] = []

    def cpu(self) -> float | None:
        if self.database is not None:
            self.commit_samples.append(xact_commits(self.database))
        if self.haproxy_pid is not None:
            self.haproxy_samples.append(cpu_s(self.haproxy_pid) or 0.0)
        return sum(cpu_s(p) or 0.0 for p in self.pids)

    def runq(self) -> float | None:
        return sum(runq_wait_s(p) or 0.0 for p in self.pids)

    def rss(self) -> int | None:
        return sum(rss_kb(p) or 0 for p in self.pids)


def xact_commits(database: str) -> int:
    import asyncpg

    from tests.pgtools import ADMIN_URL

    async def read() -> int:
        conn = await asyncpg.connect(ADMIN_URL)
        try:
            return int(
                await conn.fetchval(
                    "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", database
                )
            )
        finally:
            await conn.close()

    return asyncio.run(read())


def haproxy_config(n: int) -> str:
    """deploy/haproxy.cfg with only the first n server lines."""
    lines = (REPO / "deploy" / "haproxy.cfg").read_text().splitlines()
    keep = [
        line
        for line in lines
        if not line.strip().startswith("server b") or int(line.split()[1][1:]) <= n
    ]
    return "\n".join(keep) + "\n"


def run_setup(n: int, args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    """One deployment: n bridges on a fresh database (n = 0: the SQLite peer)."""
    from tests.harness import BridgeProcess, free_port
    from tests.pgtools import fresh_database

    workdir = root / f"bridges-{n}"
    logdir = workdir / "logs"
    logdir.mkdir(parents=True)
    limits = (
        *("--rate", "1000000", "--burst", "1000000"),
        *("--ip-rate", "1000000", "--ip-burst", "1000000"),
        *("--guard-p99-ms", "60000"),
    )
    lb_port = free_port()
    database = None
    if n:
        url = fresh_database("bench")
        database = url.rsplit("/", 1)[1]
        shared = (
            *("--database-url", url, "--redis-url", REDIS_URL),
            *("--redis-prefix", f"lh-bench-{os.getpid()}-{n}:"),
            *("--allowed-host", f"127.0.0.1:{lb_port}"),
        )
        bridges = [
            BridgeProcess(workdir, extra_args=(*limits, *shared, "--node-id", f"b{i}"))
            for i in range(1, n + 1)
        ]
    else:
        bridges = [BridgeProcess(workdir, extra_args=limits)]
    haproxy: subprocess.Popen[bytes] | None = None
    cells: list[dict[str, Any]] = []
    try:
        for b in bridges:
            b.start()
        if n:
            (workdir / "haproxy.cfg").write_text(haproxy_config(n))
            env = {
                **os.environ,
                "LH_LISTEN": f"127.0.0.1:{lb_port}",
                "LH_PUBLIC_HOST": f"127.0.0.1:{lb_port}",
                **{f"LH_BRIDGE_{i}": f"127.0.0.1:{b.port}" for i, b in enumerate(bridges, 1)},
            }
            with open(logdir / "haproxy.log", "ab") as log:
                haproxy = subprocess.Popen(
                    ["haproxy", "-db", "-f", str(workdir / "haproxy.cfg")],
                    env=env,
                    stdout=log,
                    stderr=log,
                )
            url_of = f"http://127.0.0.1:{lb_port}/mcp"
            label = f"{n} bridge{'s' if n > 1 else ''} (PostgreSQL, HAProxy)"
        else:
            url_of = bridges[0].mcp_url
            label = "1 bridge (SQLite, direct)"
        pids = [b.proc.pid for b in bridges if b.proc is not None]
        server = Bridges(label, url_of, pids, database)
        server.haproxy_pid = haproxy.pid if haproxy is not None else None
        names = [
            f"sc-{k}-{r}{i}" for k in args.cells for r in ("ask", "ans") for i in range(args.pairs)
        ]
        creds = register_agents(bridges[0].url, bridges[0].admin_token, names)
        _wait_caught_up(bridges, len(names))
        if haproxy is not None:
            _wait_lb(lb_port, n)
        for kind in args.cells:
            pairs = [
                {
                    "asker": creds[f"sc-{kind}-ask{i}"],
                    "answerer": creds[f"sc-{kind}-ans{i}"],
                    "source": _source_for_pair(i),
                }
                for i in range(args.pairs)
            ]
            server.commit_samples.clear()
            server.haproxy_samples.clear()
            cell = run_cell(f"{kind}@{args.pairs}", kind, server, pairs, args, logdir)
            cell["bridges"] = n or 1
            cell["store"] = "postgresql" if n else "sqlite"
            done = cell["ok"] + cell["late"]
            if len(server.commit_samples) >= 2 and done:
                delta = server.commit_samples[-1] - server.commit_samples[-2]
                cell["pg_xact_commits"] = delta
                cell["pg_commits_per_ask"] = round(delta / done, 3)
            if len(server.haproxy_samples) >= 2 and done:
                cpu = server.haproxy_samples[-1] - server.haproxy_samples[-2]
                cell["haproxy_cpu_ms_per_ask"] = round(1000 * cpu / done, 3)
            cells.append(cell)
    finally:
        if haproxy is not None:
            haproxy.kill()
            haproxy.wait(10)
        for b in bridges:
            if b.proc is not None:
                proc = b.proc
                try:
                    b.stop(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
    return cells


def _wait_caught_up(bridges: list[Any], agents: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(b.health()["node"]["behind_head"] == 0 for b in bridges):
            _, listed = bridges[-1].admin("GET", "/admin/agents")
            if len(listed["agents"]) >= agents:
                return
        time.sleep(0.2)
    raise RuntimeError("bridges did not catch up with the log")


def _wait_lb(port: int, n: int, timeout: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    time.sleep(2.5)  # every server passes its health checks (rise 2, inter 1s)
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("HAProxy did not come up")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bridges", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3])
    p.add_argument("--cells", nargs="+", default=["push", "legacy"], choices=["push", "legacy"])
    p.add_argument("--pairs", type=int, default=40)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--grace", type=float, default=10.0)
    p.add_argument("--late-ms", type=float, default=100.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--connect-concurrency", type=int, default=64)
    p.add_argument("--connect-timeout", type=float, default=120.0)
    p.add_argument("--no-peer", action="store_true", help="skip the one-bridge SQLite peer")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    args.profile = []  # run_cell's profiler hook: off
    if shutil.which("haproxy") is None:
        p.error("haproxy is not installed (apt-get install haproxy)")
    from tests.pgtools import drop_created

    root = Path(tempfile.mkdtemp(prefix="scaleout-bench-"))
    cells: list[dict[str, Any]] = []
    try:
        for n in ([] if args.no_peer else [0]) + args.bridges:
            cells.extend(run_setup(n, args, root))
    finally:
        drop_created()
        shutil.rmtree(root, ignore_errors=True)
    headers = ["cell", "deployment", "asks/s", "p50 ms", "p99 ms", "errors"]
    headers += ["srv ms/ask", "srv cpu%", "haproxy ms/ask", "pg commits/ask"]
    rows = [
        [
            c["cell"],
            c["server"],
            c["asks_per_s"],
            c["p50_ms"],
            c["p99_ms"],
            c["errors"],
            c["server_cpu_ms_per_ask"],
            c["server_cpu_pct"],
            c.get("haproxy_cpu_ms_per_ask"),
            c.get("pg_commits_per_ask"),
        ]
        for c in cells
    ]
    print(format_table(headers, rows))
    write_json(
        args.out,
        {
            "benchmark": "scaleout",
            "machine": machine_info(
                ["lighthouse-bridge", "aiohttp", "asyncpg", "uvloop"], repo=REPO
            ),
            "config": {
                "bridges": args.bridges,
                "cells": args.cells,
                "pairs": args.pairs,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "peer": not args.no_peer,
            },
            "cells": cells,
        },
    )
    print(f"wrote {args.out}")
    return 1 if any(c["errors"] for c in cells) else 0


if __name__ == "__main__":
    raise SystemExit(main())
