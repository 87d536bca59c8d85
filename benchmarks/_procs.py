"""Process plumbing shared by the load benchmarks: /proc readings, client worker processes,
agent registration through the admin API.

A benchmark's client side runs in child processes (the benchmark module itself, started
with ``--worker``) that talk JSON lines over stdin/stdout, so the orchestrator's own work
never lands on the server's or the clients' CPU figures.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int | None:
    """Resident set size of `pid` in kB (VmRSS), None if it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of `pid` (all its threads) from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def runq_wait_s(pid: int) -> float | None:
    """Seconds the main thread spent runnable but waiting for a CPU (/proc/PID/schedstat)."""
    try:
        with open(f"/proc/{pid}/schedstat", encoding="ascii") as fh:
            return int(fh.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def chunks(items: list[Any], n: int) -> list[list[Any]]:
    """`items` dealt round-robin into at most `n` non-empty lists."""
    n = max(1, min(n, len(items)))
    return [items[i::n] for i in range(n)]


class Worker:
    """A client child process: `script --worker`, fed one JSON spec line, then commands."""

    def __init__(self, script: Path, spec: dict[str, Any], log_path: Path) -> None:
        self.log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, str(script), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=script.resolve().parents[1],
        )
        self.send(json.dumps(spec))

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            fut = ex.submit(self.proc.stdout.readline)
            try:
                line = fut.result(timeout)
            except concurrent.futures.TimeoutError:
                self.kill()
                raise RuntimeError(f"worker {self.proc.pid} silent for {timeout} s") from None
        if not line:
            raise RuntimeError(f"worker {self.proc.pid} exited (see {self.log.name})")
        return json.loads(line)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.log.close()

    def finish(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(30)
        self.kill()


def register_agents(
    base_url: str, token: str, names: list[str], threads: int = 16
) -> dict[str, dict[str, str]]:
    """Register `names` through `POST /admin/agents`; name -> {name, key_id, secret}."""

    def add(name: str) -> tuple[str, dict[str, str]]:
        req = urllib.request.Request(
            base_url + "/admin/agents",
            data=json.dumps({"name": name}).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            d = json.loads(r.read())
        return name, {"name": d["agent"], "key_id": d["key_id"], "secret": d["secret"]}

    with concurrent.futures.ThreadPoolExecutor(threads) as ex:
        return dict(ex.map(add, names))


def wait_http(url: str, proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    """Until `url` answers at all (any HTTP status); raise if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} process exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout} s")
