"""A real bridge in a real process, for end-to-end tests and benchmarks.

`BridgeProcess` registers agents with the CLI (directly on the store, before the server
starts), runs `lighthouse serve` on a free loopback port, and waits for `/health`.
Clients connect with the official SDK through `bridge.client.connect`, signed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from bridge.client import connect
from events import Record, SqliteEventStore, StoreConfig

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lighthouse(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"lighthouse {' '.join(args)} failed: {result.stderr}")
    return result


@dataclass
class Agent:
    name: str
    key_id: str
    secret: str


@dataclass
class BridgeProcess:
    workdir: Path
    port: int = field(default_factory=free_port)
    extra_args: tuple[str, ...] = ()
    module: str = "bridge.cli"
    """What `python -m` runs: the CLI, or a benchmark's wrapper of it."""
    proc: subprocess.Popen[str] | None = None
    agents: dict[str, Agent] = field(default_factory=dict)

    @property
    def db(self) -> Path:
        return self.workdir / "lighthouse.db"

    @property
    def log_path(self) -> Path:
        return self.workdir / "bridge.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mcp_url(self) -> str:
        return self.url + "/mcp"

    @property
    def env(self) -> dict[str, str]:
        return {"LIGHTHOUSE_URL": self.url}

    @property
    def admin_token(self) -> str:
        return (self.workdir / "lighthouse.db.keys" / "admin.token").read_text().strip()

    def add_agent(self, name: str, *options: str) -> Agent:
        """Register an agent (directly on the store when stopped, via the API when running)."""
        db_args = ("--db", str(self.db)) if self.proc is None else ()
        out = lighthouse("agents", "add", name, *options, *db_args, cwd=self.workdir, env=self.env)
        data = json.loads(out.stdout)
        agent = self.agents[name] = Agent(data["agent"], data["key_id"], data["secret"])
        return agent

    def start(self) -> BridgeProcess:
        # Output goes to a file, not a pipe: a pipe nobody reads fills up and blocks the
        # server on its next log line.
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    self.module,
                    "serve",
                    "--port",
                    str(self.port),
                    "--db",
                    str(self.db),
                    *self.extra_args,
                ],
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"bridge exited: {self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("bridge did not become healthy in 30 s")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # never leave a bridge running behind a failed test
            self.proc.wait(10)
            raise
        finally:
            self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def client(self, name: str, **kwargs: Any) -> Any:
        agent = self.agents[name]
        return connect(self.mcp_url, agent.key_id, agent.secret, **kwargs)

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
            return json.loads(r.read())

    def admin(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.admin_token}")
        req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")


async def read_events(
    db: Path, types: list[str] | None = None, *, opened: bool = True
) -> list[Record]:
    """Every event in the store (read-only open, works beside the running bridge).

    With `opened` (the default) sealed contents come back in clear, opened with the
    store's vault and master key as the bridge would; `opened=False` gives them as stored.
    """
    store = await SqliteEventStore.open(StoreConfig(path=db, readonly=True))
    try:
        records = await store.read_all(1, limit=None, types=types)
        key_file = db.with_name(db.name + ".keys") / "master.key"
        if not opened or not key_file.exists():
            return records
        from bridge.sealing import Sealer
        from security import DataKeys, SQLiteSecretVault, load_master_key

        vault = SQLiteSecretVault(db, load_master_key(key_file))
        try:
            sealer = Sealer(store.store_id, DataKeys(vault))
            forgets = await store.read_all(1, limit=None, types=["AgentForgotten"])
            sealer.prime(r.data for r in forgets)
            return [msgspec.structs.replace(r, data=sealer.open_record(r)) for r in records]
        finally:
            vault.close()
    finally:
        await store.close()


async def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await asyncio.sleep(interval)
    raise AssertionError("condition not met in time")


@contextlib.contextmanager
def running_bridge(
    workdir: Path, agents: dict[str, tuple[str, ...]], extra_args: tuple[str, ...] = ()
) -> Iterator[BridgeProcess]:
    """A started bridge with `agents` (name -> `agents add` options), stopped afterwards."""
    bridge = BridgeProcess(workdir, extra_args=extra_args)
    for name, options in agents.items():
        bridge.add_agent(name, *options)
    bridge.start()
    try:
        yield bridge
    finally:
        if bridge.proc is not None:
            bridge.stop()


async def answer_next_request(client: Any, answer: str, timeout_s: float = 10) -> str:
    """Take the one request waiting in the client's mailbox and accept it with `answer`."""
    got = await client.call_tool("wait_for_messages", {"timeout_s": timeout_s})
    [item] = [m for m in got.structured_content["messages"] if m["kind"] == "request"]
    await client.call_tool(
        "respond",
        {"request_id": item["request_id"], "action": "accept", "content": {"answer": answer}},
    )
    return item["request_id"]
